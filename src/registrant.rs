//! The other side of [`crate::registry`] (chapter 14): a server that registers itself with
//! one or more balancers and keeps its lease alive.
//!
//! Every [`Lease::ttl`] / 3 it sends the same `PUT /backends/NAME` to each balancer. The call
//! is idempotent, so one request covers both cases: a renewal while the balancer remembers
//! the server, a fresh registration after the balancer restarted and forgot it. Two missed
//! renewals in a row are still within the lease. On the way out (SIGTERM) it deregisters
//! first, so the balancers stop sending clients before the server starts draining.

use std::io;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::backend::HostPort;
use crate::http::client;

/// How long one call to a balancer may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// The longest wait between tries while a balancer is unreachable.
const MAX_RETRY: Duration = Duration::from_secs(2);

/// A balancer's admin listener: `http://HOST:PORT`, as given to `--register`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminUrl(pub HostPort);

impl std::str::FromStr for AdminUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let rest = s
            .strip_prefix("http://")
            .ok_or_else(|| format!("`{s}` is not a balancer's admin URL (http://HOST:PORT)"))?;
        let rest = rest.trim_end_matches('/');
        if rest.contains('/') {
            return Err(format!(
                "`{s}`: give the admin listener's base URL, without a path"
            ));
        }
        rest.parse().map(AdminUrl)
    }
}

impl std::fmt::Display for AdminUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}", self.0)
    }
}

/// Where a server registers: a balancer's admin listener (chapter 14), or an etcd prefix
/// (chapter 15) that every balancer watches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Registrar {
    Balancer(AdminUrl),
    /// `etcd://HOST:PORT/PREFIX/NAME`: the key `PREFIX/NAME`, or `PREFIX/` + the server's
    /// name when the URL ends with `/`.
    Etcd {
        endpoint: HostPort,
        prefix: String,
        name: Option<String>,
    },
}

impl std::str::FromStr for Registrar {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let Some(rest) = s.strip_prefix("etcd://") else {
            return s.parse().map(Registrar::Balancer);
        };
        let (authority, path) = rest
            .split_once('/')
            .ok_or_else(|| format!("`{s}` has no key: etcd://HOST:PORT/PREFIX/NAME"))?;
        let endpoint: HostPort = authority.parse()?;
        let (prefix, name) = path.rsplit_once('/').unwrap_or(("", path));
        let name = (!name.is_empty()).then(|| name.to_owned());
        if let Some(name) = &name {
            crate::registry::check_name(name)?;
        }
        Ok(Registrar::Etcd {
            endpoint,
            prefix: format!("/{prefix}/").replace("//", "/"),
            name,
        })
    }
}

impl std::fmt::Display for Registrar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Registrar::Balancer(url) => write!(f, "{url}"),
            Registrar::Etcd {
                endpoint,
                prefix,
                name,
            } => write!(
                f,
                "etcd://{endpoint}{prefix}{}",
                name.as_deref().unwrap_or("")
            ),
        }
    }
}

/// One server's registration: its name, the JSON body, the token, the TTL.
#[derive(Clone)]
pub struct Lease {
    pub name: String,
    pub body: String,
    pub token: String,
    pub ttl: Duration,
}

impl Lease {
    /// The body of `PUT /backends/NAME`.
    pub fn new(
        name: &str,
        address: &str,
        url: &str,
        tls: bool,
        ttl: Duration,
        token: String,
    ) -> Lease {
        let body = serde_json::json!({
            "address": address,
            "url": url,
            "ttl": ttl.as_secs_f64(),
            "tls": tls,
            "check": "http",
        });
        Lease {
            name: name.to_owned(),
            body: body.to_string(),
            token,
            ttl,
        }
    }
}

/// Keeps `lease` registered with `registrar` until `stop` says so, then deregisters.
pub async fn keep_with(registrar: Registrar, lease: Lease, stop: watch::Receiver<bool>) {
    match registrar {
        Registrar::Balancer(url) => keep(url, lease, stop).await,
        Registrar::Etcd {
            endpoint,
            prefix,
            name,
        } => {
            let key = format!("{prefix}{}", name.as_deref().unwrap_or(&lease.name));
            keep_in_etcd(endpoint, key, lease, stop).await
        }
    }
}

/// Chapter 15: the server's key in etcd, attached to a lease of its TTL, which it keeps alive
/// every third of the TTL. If it dies, the lease expires and etcd deletes the key, and every
/// watching balancer drops the server; on SIGTERM it revokes the lease, which deletes the key
/// at once. A lease that expired anyway (etcd was away longer than the TTL) is granted again
/// and the key put again.
async fn keep_in_etcd(
    endpoint: HostPort,
    key: String,
    lease: Lease,
    mut stop: watch::Receiver<bool>,
) {
    let etcd = match crate::etcd::Etcd::new(&[format!("http://{endpoint}")]) {
        Ok(etcd) => etcd,
        Err(e) => {
            tracing::error!(server = %lease.name, "cannot register in etcd: {e}");
            return;
        }
    };
    let ttl = lease.ttl.as_secs().max(1) as i64;
    let value = lease.body.as_bytes();
    let mut id: Option<i64> = None;
    let mut failing = false;
    loop {
        let result = async {
            match id {
                Some(current) => match etcd.keep_alive(current).await? {
                    0 => {
                        tracing::warn!(server = %lease.name, %key, "etcd lease expired: registering again");
                        id = None;
                        Ok(false)
                    }
                    _ => Ok(true),
                },
                None => {
                    let granted = etcd.grant(ttl).await?;
                    etcd.put(&key, value, granted).await?;
                    id = Some(granted);
                    tracing::info!(server = %lease.name, %key, "registered in etcd");
                    Ok(true)
                }
            }
        }
        .await;
        let wait = match result {
            Ok(true) => {
                failing = false;
                lease.ttl / 3
            }
            Ok(false) => continue,
            Err::<bool, io::Error>(e) => {
                if !failing {
                    tracing::warn!(server = %lease.name, %key, "etcd: {e}; retrying");
                }
                failing = true;
                (lease.ttl / 3).min(MAX_RETRY)
            }
        };
        tokio::select! {
            _ = stop.wait_for(|&s| s) => break,
            () = tokio::time::sleep(wait) => {}
        }
    }
    if let Some(id) = id {
        match tokio::time::timeout(CALL_TIMEOUT, etcd.revoke(id)).await {
            Ok(Ok(())) => tracing::info!(server = %lease.name, %key, "deregistered from etcd"),
            _ => {
                tracing::warn!(server = %lease.name, %key, "cannot revoke the etcd lease; it will run out")
            }
        }
    }
}

/// Keeps `lease` registered with `balancer` until `stop` says so, then deregisters (bounded
/// by `CALL_TIMEOUT`). Failures are logged once per outage, and retried.
pub async fn keep(balancer: AdminUrl, lease: Lease, mut stop: watch::Receiver<bool>) {
    let mut failing = false;
    loop {
        let wait = match call(&balancer, "PUT", &lease).await {
            Ok(200 | 201) => {
                if failing {
                    tracing::info!(server = %lease.name, %balancer, "registered again");
                } else {
                    tracing::debug!(server = %lease.name, %balancer, "lease renewed");
                }
                failing = false;
                lease.ttl / 3
            }
            Ok(status) => {
                // A refusal (401, 403, 400) will not go away by asking faster.
                if !failing {
                    tracing::error!(server = %lease.name, %balancer, "registration refused with {status}");
                }
                failing = true;
                lease.ttl / 3
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(server = %lease.name, %balancer, "cannot register: {e}; retrying");
                }
                failing = true;
                (lease.ttl / 3).min(MAX_RETRY)
            }
        };
        tokio::select! {
            _ = stop.wait_for(|&s| s) => break,
            () = tokio::time::sleep(wait) => {}
        }
    }
    match call(&balancer, "DELETE", &lease).await {
        Ok(204 | 404) => {
            tracing::info!(server = %lease.name, %balancer, "deregistered")
        }
        Ok(status) => {
            tracing::warn!(server = %lease.name, %balancer, "deregistration answered {status}")
        }
        Err(e) => {
            tracing::warn!(server = %lease.name, %balancer, "cannot deregister: {e}; the lease will run out")
        }
    }
}

/// One call to the registry; the response's status.
async fn call(balancer: &AdminUrl, method: &str, lease: &Lease) -> io::Result<u16> {
    let exchange = async {
        let host = &balancer.0;
        let tcp = TcpStream::connect((host.host.as_str(), host.port)).await?;
        let body = match method {
            "PUT" => lease.body.clone(),
            _ => String::new(),
        };
        let request = hyper::Request::builder()
            .method(method)
            .uri(format!("/backends/{}", lease.name))
            .header(hyper::header::HOST, host.to_string())
            .header(
                hyper::header::AUTHORIZATION,
                format!("Bearer {}", lease.token),
            )
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(client::body(body))
            .map_err(io::Error::other)?;
        let answer = client::fetch(tcp, request, MAX_ANSWER).await?;
        Ok(answer.status.as_u16())
    };
    tokio::time::timeout(CALL_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "no answer in time")))
}

/// The registry answers a line of JSON at most; anything past this is not a registry.
const MAX_ANSWER: usize = 64 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registrars_are_balancers_or_etcd_keys() {
        let r: Registrar = "etcd://127.0.0.1:2379/lb/web/s1".parse().unwrap();
        assert_eq!(
            r,
            Registrar::Etcd {
                endpoint: "127.0.0.1:2379".parse().unwrap(),
                prefix: "/lb/web/".into(),
                name: Some("s1".into())
            }
        );
        assert_eq!(r.to_string(), "etcd://127.0.0.1:2379/lb/web/s1");
        let r: Registrar = "etcd://127.0.0.1:2379/lb/web/".parse().unwrap();
        assert!(matches!(r, Registrar::Etcd { name: None, .. }));
        assert!("etcd://127.0.0.1:2379".parse::<Registrar>().is_err());
        assert!("etcd://127.0.0.1:2379/lb/a b".parse::<Registrar>().is_err());
        assert!(matches!(
            "http://127.0.0.1:9000".parse::<Registrar>().unwrap(),
            Registrar::Balancer(_)
        ));
    }

    #[test]
    fn admin_urls_are_a_scheme_and_an_address() {
        let u: AdminUrl = "http://127.0.0.1:9000/".parse().unwrap();
        assert_eq!(u.to_string(), "http://127.0.0.1:9000");
        assert!("127.0.0.1:9000".parse::<AdminUrl>().is_err());
        assert!("https://127.0.0.1:9000".parse::<AdminUrl>().is_err());
        assert!(
            "http://127.0.0.1:9000/backends"
                .parse::<AdminUrl>()
                .is_err()
        );
    }
}

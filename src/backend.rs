//! Backends: what the user typed, resolved once, dialled with a timeout.
//!
//! The Go tutorial dials `"localhost:4444"` on every request, which resolves the name each time
//! and panics when the dial fails. Here an address is validated when the flag is parsed (a typo
//! is a one-line error at start-up, not a failure on the first request), resolved once at
//! start-up like HAProxy does by default, and a failed dial costs one client its connection.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context as _;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use crate::strategy::{MAX_WEIGHT, Member};
use crate::{net, proxy_protocol};

/// How long we wait for a backend to accept a TCP connection (and, for TLS backends, to finish
/// the handshake) before giving up on it for this client.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// `host:port` as typed, checked but not resolved: `127.0.0.1:4444`, `localhost:4444`,
/// `[::1]:4444`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct HostPort {
    /// A DNS name or an IP address, without brackets.
    pub host: String,
    pub port: u16,
}

/// A host as a backend address may name it: an IP address (IPv6 only in brackets), or a DNS
/// name (labels of letters, digits, `-` and `_`, 1 to 63 bytes each, not starting or ending
/// with `-`, 253 in all). Nothing
/// else: an address also goes into logs, URLs (chapter 14's assignment) and `Host` fields, where
/// a space, a CR/LF, an `@` or a `/` would forge a line or change what it means.
fn valid_host(host: &str, bracketed: bool) -> bool {
    if bracketed {
        return host.parse::<std::net::Ipv6Addr>().is_ok();
    }
    if host.parse::<std::net::Ipv4Addr>().is_ok() {
        return true;
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

impl FromStr for HostPort {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("`{s}` is not HOST:PORT"))?;
        let port = port
            .parse::<u16>()
            .map_err(|_| format!("`{port}` in `{s}` is not a port number (0-65535)"))?;
        let bracketed = host.starts_with('[');
        let host = match host.strip_prefix('[') {
            Some(inner) => inner
                .strip_suffix(']')
                .ok_or_else(|| format!("unbalanced `[` in `{s}`"))?,
            // An IPv6 address must be bracketed, or `::1:80` would be ambiguous.
            None if host.contains(':') => {
                return Err(format!(
                    "write an IPv6 address in brackets: `[{host}]:{port}`"
                ));
            }
            None => host,
        };
        if host.is_empty() {
            return Err(format!("`{s}` has no host"));
        }
        if !valid_host(host, bracketed) {
            return Err(format!(
                "`{}` in `{}` is not a DNS name or an IP address",
                host.escape_debug(),
                s.escape_debug()
            ));
        }
        Ok(HostPort {
            host: host.to_owned(),
            port,
        })
    }
}

impl TryFrom<String> for HostPort {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// A backend as given on the command line: `HOST:PORT` for plain TCP, `tls://HOST:PORT` for a
/// backend we must speak TLS to (chapter 7), `h2c://HOST:PORT` and `h2://HOST:PORT` for
/// `http-lb` to speak HTTP/2 to it, in clear text or over TLS (chapter 17), optionally
/// followed by `,weight=N` (chapter 9), `,check=http` (chapter 8), `,proxy=v1|v2` (chapter 10)
/// and `,retry-unanswered` (chapter 13): `tls://10.0.0.5:443,weight=3,check=http`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendSpec {
    pub addr: HostPort,
    pub tls: bool,
    /// Relative share for the weighted strategies, 1 to [`MAX_WEIGHT`]; 1 by default.
    pub weight: u32,
    /// How active health checks probe this backend.
    pub check: HealthCheck,
    /// Send this PROXY protocol header before anything else.
    pub proxy: Option<proxy_protocol::Version>,
    /// The name it goes by: a server that registered itself (chapter 14), or a `name` in the
    /// config. Where it has one, the affinity cookie names it by it, so the cookie survives
    /// the server coming back on another port.
    pub name: Option<String>,
    /// Where clients reach it themselves, for `http-lb --mode assign` (chapter 14):
    /// `https://s1.apps.example`. Default: `http://` (or `https://`) and its address.
    pub url: Option<String>,
    /// A connection this backend closes or resets before sending a byte goes to another
    /// backend with the client's bytes (`tcp-lb`, chapter 13; see
    /// [`relay::until_answered`](crate::relay::until_answered) for when that is safe).
    pub retry_unanswered: bool,
    /// What `http-lb` speaks to it (chapter 17).
    pub protocol: Protocol,
}

/// The HTTP version `http-lb` speaks to a backend (chapter 17): the config's
/// `protocol = "http1" | "h2" | "h2c"`, the flags' `h2://` and `h2c://`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// HTTP/1.1, one request at a time per pooled connection.
    #[default]
    Http1,
    /// HTTP/2 over TLS, agreed in ALPN: many requests on one connection.
    H2,
    /// HTTP/2 in clear text, by prior knowledge (a gRPC server inside the network).
    H2c,
}

impl Protocol {
    pub fn is_h2(self) -> bool {
        self != Protocol::Http1
    }
}

/// How the active health checker of chapter 8 probes a backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HealthCheck {
    /// A TCP connect (and TLS handshake for a TLS backend) that succeeds.
    #[default]
    Tcp,
    /// `GET /health` answered with a 2xx status: the process is not only listening but
    /// serving.
    Http,
    /// gRPC's health protocol (`grpc.health.v1.Health/Check`) answered `SERVING`: for an
    /// HTTP/2 backend (`h2c://`, `h2://`; chapter 17).
    Grpc,
}

impl BackendSpec {
    /// A plain backend of weight 1 checked by TCP connect.
    pub fn plain(addr: HostPort) -> BackendSpec {
        BackendSpec {
            addr,
            tls: false,
            weight: 1,
            check: HealthCheck::Tcp,
            proxy: None,
            name: None,
            url: None,
            retry_unanswered: false,
            protocol: Protocol::Http1,
        }
    }

    /// What the affinity cookie is keyed on: the name where it has one, else the address as
    /// configured (`tls://host:port` or `host:port`), never its position or resolved address.
    pub fn identity(&self) -> String {
        match &self.name {
            Some(name) => format!("name:{name}"),
            None => self.to_string(),
        }
    }

    /// The URL clients are sent to in assign mode.
    pub fn public_url(&self) -> String {
        match &self.url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => format!(
                "{}://{}",
                if self.tls { "https" } else { "http" },
                self.addr
            ),
        }
    }

    /// The same server, spoken to the same way: what keeps a backend's state across a reload
    /// (its weight may change).
    pub fn same_target(&self, other: &BackendSpec) -> bool {
        self.addr == other.addr
            && self.tls == other.tls
            && self.proxy == other.proxy
            && self.protocol == other.protocol
    }
}

/// Checks a `weight=` value, from a flag or the config file.
pub fn check_weight(weight: u32) -> Result<u32, String> {
    if (1..=MAX_WEIGHT).contains(&weight) {
        Ok(weight)
    } else {
        Err(format!(
            "weight must be from 1 to {MAX_WEIGHT}, not {weight} (to send a backend nothing, \
             remove it)"
        ))
    }
}

impl FromStr for BackendSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut parts = s.split(',');
        let address = parts.next().unwrap_or_default();
        let (tls, protocol, rest) = match address.split_once("://") {
            None => (false, Protocol::Http1, address),
            Some(("tls", rest)) => (true, Protocol::Http1, rest),
            Some(("tcp", rest)) => (false, Protocol::Http1, rest),
            Some(("h2", rest)) => (true, Protocol::H2, rest),
            Some(("h2c", rest)) => (false, Protocol::H2c, rest),
            Some((scheme, _)) => {
                return Err(format!(
                    "unknown scheme `{scheme}://` (use tls://, h2:// or h2c://, or none)"
                ));
            }
        };
        let mut spec = BackendSpec {
            tls,
            protocol,
            ..BackendSpec::plain(rest.parse()?)
        };
        for option in parts {
            match option.split_once('=') {
                Some(("weight", w)) => {
                    let w = w
                        .parse()
                        .map_err(|_| format!("`{w}` in `{s}` is not a weight"))?;
                    spec.weight = check_weight(w)?;
                }
                Some(("check", "tcp")) => spec.check = HealthCheck::Tcp,
                Some(("check", "http")) => spec.check = HealthCheck::Http,
                Some(("check", "grpc")) => spec.check = HealthCheck::Grpc,
                Some(("check", other)) => {
                    return Err(format!("unknown check `{other}` (use tcp, http or grpc)"));
                }
                Some(("proxy", version)) => spec.proxy = Some(version.parse()?),
                None if option == "retry-unanswered" => spec.retry_unanswered = true,
                _ => {
                    return Err(format!(
                        "unknown option `{option}` in `{s}` (use weight=N, check=http, \
                         proxy=v2 or retry-unanswered)"
                    ));
                }
            }
        }
        Ok(spec)
    }
}

/// The address as typed with its scheme (`tls://host:port`): how logs name a backend. Weight
/// and check are left out; they are in the start-up line.
impl fmt::Display for BackendSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.protocol, self.tls) {
            (Protocol::H2, _) => write!(f, "h2://{}", self.addr),
            (Protocol::H2c, _) => write!(f, "h2c://{}", self.addr),
            (Protocol::Http1, true) => write!(f, "tls://{}", self.addr),
            (Protocol::Http1, false) => write!(f, "{}", self.addr),
        }
    }
}

/// A backend ready to dial: its addresses resolved, its TLS server name checked.
#[derive(Clone, Debug)]
pub struct Backend {
    spec: BackendSpec,
    addrs: Vec<SocketAddr>,
    /// `Some` for a TLS backend: the name its certificate must carry.
    server_name: Option<ServerName<'static>>,
}

impl Backend {
    /// Resolves `spec` (a DNS lookup for names). A TLS backend's certificate is checked against
    /// `sni` if given, else against the host of its public `https://` URL (a server that
    /// registered as `https://s1.apps.example` holds a certificate for that name, not for the
    /// address it was dialled at: chapter 14), else against the host as typed (`localhost`, or
    /// an IP address, which rustls matches against the certificate's IP SANs).
    pub async fn resolve(spec: BackendSpec, sni: Option<&str>) -> anyhow::Result<Backend> {
        let addrs: Vec<SocketAddr> =
            tokio::net::lookup_host((spec.addr.host.as_str(), spec.addr.port))
                .await
                .with_context(|| format!("cannot resolve backend {spec}"))?
                .collect();
        if addrs.is_empty() {
            anyhow::bail!("backend {spec} resolves to no address");
        }
        let server_name = if spec.tls {
            let name = sni
                .or_else(|| spec.url.as_deref().and_then(https_host))
                .unwrap_or(&spec.addr.host)
                .to_owned();
            Some(
                ServerName::try_from(name.clone())
                    .map_err(|_| anyhow::anyhow!("`{name}` is not a valid TLS server name"))?,
            )
        } else {
            None
        };
        Ok(Backend {
            spec,
            addrs,
            server_name,
        })
    }

    /// A backend at a known socket address, no lookup needed (tests, benches, built-in servers).
    pub fn from_addr(addr: SocketAddr, tls: bool) -> Backend {
        let spec = BackendSpec {
            tls,
            ..BackendSpec::plain(HostPort {
                host: addr.ip().to_string(),
                port: addr.port(),
            })
        };
        let server_name = tls.then(|| ServerName::IpAddress(addr.ip().into()));
        Backend {
            spec,
            addrs: vec![addr],
            server_name,
        }
    }

    /// The same backend with `weight` (1 to [`MAX_WEIGHT`]) for the weighted strategies.
    pub fn with_weight(mut self, weight: u32) -> Backend {
        self.spec.weight = weight.clamp(1, MAX_WEIGHT);
        self
    }

    pub fn spec(&self) -> &BackendSpec {
        &self.spec
    }

    /// What a strategy knows of this backend: its address (the key consistent hashing uses)
    /// and its weight.
    pub fn member(&self) -> Member {
        Member {
            key: self.spec.addr.to_string(),
            weight: self.spec.weight,
        }
    }

    /// `Some(name to verify)` when this backend speaks TLS.
    pub fn server_name(&self) -> Option<&ServerName<'static>> {
        self.server_name.as_ref()
    }

    /// Dials the backend's addresses in turn (a name such as `localhost` may resolve to `::1`
    /// and `127.0.0.1` while the server listens on only one of them), each with `timeout`.
    pub async fn connect(&self, timeout: Duration) -> io::Result<TcpStream> {
        let mut last = None;
        for &addr in &self.addrs {
            match net::connect(addr, timeout).await {
                Ok(stream) => return Ok(stream),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address")))
    }
}

/// The host of an `https://` URL, without brackets or port: `s1.apps.example` in
/// `https://s1.apps.example:8443/`. `None` for another scheme.
fn https_host(url: &str) -> Option<&str> {
    let rest = url.strip_prefix("https://")?;
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    let host = match authority.strip_prefix('[') {
        Some(v6) => &v6[..v6.find(']')?],
        None => authority.split(':').next()?,
    };
    (!host.is_empty()).then_some(host)
}

/// The strategy's view of `backends`, in order.
pub fn members(backends: &[Backend]) -> Vec<Member> {
    backends.iter().map(Backend::member).collect()
}

/// Resolves every spec, in order; the first failure names its backend.
pub async fn resolve_all(
    specs: impl IntoIterator<Item = BackendSpec>,
    sni: Option<&str>,
) -> anyhow::Result<Vec<Backend>> {
    let mut backends = Vec::new();
    for spec in specs {
        backends.push(Backend::resolve(spec, sni).await?);
    }
    Ok(backends)
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.spec.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_users_type() {
        let p: HostPort = "localhost:4444".parse().unwrap();
        assert_eq!((p.host.as_str(), p.port), ("localhost", 4444));
        let p: HostPort = "[::1]:80".parse().unwrap();
        assert_eq!(
            (p.host.as_str(), p.port, p.to_string()),
            ("::1", 80, "[::1]:80".into())
        );
        let b: BackendSpec = "tls://127.0.0.1:4446".parse().unwrap();
        assert!(b.tls);
        assert_eq!(b.to_string(), "tls://127.0.0.1:4446");
        let b: BackendSpec = "tls://h:1,weight=3,check=http".parse().unwrap();
        assert_eq!(
            (b.tls, b.weight, b.check, b.to_string()),
            (true, 3, HealthCheck::Http, "tls://h:1".into())
        );
        assert_eq!("h:1".parse::<BackendSpec>().unwrap().weight, 1);
        let b: BackendSpec = "h:1,proxy=v2".parse().unwrap();
        assert_eq!(b.proxy, Some(proxy_protocol::Version::V2));
    }

    /// Issue 27, item 8: a host is a DNS name or an IP address, nothing that could forge a
    /// log line or a `Host` field, wherever the address comes from (flags, config,
    /// registrations, etcd values).
    #[test]
    fn a_host_is_a_name_or_an_address_and_nothing_else() {
        for good in [
            "localhost:1",
            "s1.apps.internal:8080",
            "my_host-2.example.:80",
            "10.0.0.1:80",
            "[fe80::1]:80",
        ] {
            assert!(good.parse::<HostPort>().is_ok(), "{good}");
        }
        for bad in [
            "evil\r\nX-Injected-yes:80",
            "a b:80",
            "user@host:80",
            "host/path:80",
            "ho\0st:80",
            "[not-ipv6]:80",
            "-.:80",
            "a..b:80",
        ] {
            let error = bad.parse::<HostPort>().unwrap_err();
            assert!(!error.contains('\n') && !error.contains('\r'), "{error}");
        }
        let long = format!("{}:80", "a".repeat(64));
        assert!(long.parse::<HostPort>().is_err());
    }

    #[test]
    fn a_tls_backend_with_a_public_https_url_is_verified_under_that_name() {
        assert_eq!(
            https_host("https://s1.apps.localhost:8443/x"),
            Some("s1.apps.localhost")
        );
        assert_eq!(https_host("https://[::1]:8443"), Some("::1"));
        assert_eq!(https_host("https://h"), Some("h"));
        assert_eq!(https_host("http://h"), None);
        assert_eq!(https_host("https://:1"), None);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let spec = BackendSpec {
            tls: true,
            url: Some("https://s1.apps.localhost:8443".into()),
            ..BackendSpec::plain("127.0.0.1:8443".parse().unwrap())
        };
        let b = rt.block_on(Backend::resolve(spec.clone(), None)).unwrap();
        assert_eq!(
            b.server_name(),
            Some(&ServerName::try_from("s1.apps.localhost").unwrap())
        );
        // A configured `sni` still wins.
        let b = rt.block_on(Backend::resolve(spec, Some("other"))).unwrap();
        assert_eq!(
            b.server_name(),
            Some(&ServerName::try_from("other").unwrap())
        );
    }

    #[test]
    fn rejects_what_cannot_be_dialled() {
        for bad in [
            "4444",
            "host:",
            "host:99999",
            ":80",
            "::1:80",
            "[::1:80",
            "http://a:1",
            "h:1,weight=0",
            "h:1,weight=257",
            "h:1,weight=x",
            "h:1,check=icmp",
            "h:1,wieght=2",
            "h:1,proxy=v3",
            "h:1,",
        ] {
            assert!(
                bad.parse::<BackendSpec>().is_err(),
                "{bad} should be refused"
            );
        }
    }
}

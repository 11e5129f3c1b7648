//! Forwarding a request and its response as RFC 9110 asks of an intermediary (chapter 12).
//!
//! Two kinds of header fields travel through a proxy:
//!
//! * **end-to-end** fields are the application's and pass untouched, repeated ones included
//!   (several `Set-Cookie` lines stay several lines: folding them into one would break them);
//! * **hop-by-hop** fields describe one connection only, and must not be forwarded
//!   (RFC 9110 §7.6.1): `Connection` and every field it names, plus `Keep-Alive`,
//!   `Proxy-Connection`, `TE`, `Transfer-Encoding` and `Upgrade` (which an upgrade carries on
//!   purposely). `Trailer` is *not* one of them: it announces end-to-end trailer fields.
//!   Forwarding `Connection: close` from a client would close our pooled connection to the
//!   backend; forwarding `Transfer-Encoding` would describe a framing we may have changed.
//!
//! Then the proxy says who the client is, since the backend now sees only the proxy's address:
//! `X-Forwarded-For` (the de-facto list of addresses, client first), `X-Forwarded-Proto` and
//! `X-Forwarded-Host`, and optionally the standard `Forwarded` (RFC 7239) and `Via`. These are
//! trusted only from proxies the operator names (`trusted-proxies`): from anyone else an
//! incoming `X-Forwarded-For: 1.2.3.4` is a client lying about its address, and the chain
//! starts again from the address we saw.

use std::net::IpAddr;

use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::limits::Cidr;

/// The hop-by-hop fields every hop removes, besides those `Connection` names.
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes the hop-by-hop fields of `headers`. With `keep_upgrade`, an upgrade request (or
/// its `101` answer) keeps `Upgrade` and a `Connection: upgrade`, which the next hop needs to
/// switch protocols.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // The fields `Connection` names, collected before it goes.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in named {
        if keep_upgrade && name == header::UPGRADE {
            continue;
        }
        headers.remove(name);
    }
    let upgrade = match keep_upgrade {
        true => headers.remove(header::UPGRADE),
        false => None,
    };
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    if let Some(protocol) = upgrade {
        headers.insert(header::UPGRADE, protocol);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// [`strip_hop_by_hop`]'s rule for one field of a head read as bytes (chapter 12's own
/// HTTP/1 path): `connection` holds the values of the head's `Connection` fields.
pub fn is_hop_by_hop(name: &str, connection: &[&[u8]]) -> bool {
    HOP_BY_HOP
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h.as_str()))
        || connection.iter().any(|value| {
            value
                .split(|&b| b == b',')
                .any(|token| token.trim_ascii().eq_ignore_ascii_case(name.as_bytes()))
        })
}

/// Whether a request (or response) asks to switch protocols: `Connection` lists `upgrade`
/// and `Upgrade` names the protocol.
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

/// The operator's choices for the client-identifying fields.
#[derive(Clone, Debug, Default)]
pub struct Forwarding {
    /// Peers whose `X-Forwarded-*` and `Forwarded` fields are believed and extended.
    pub trusted: Vec<Cidr>,
    /// Add the standard `Forwarded` field (RFC 7239) too.
    pub forwarded: bool,
    /// Add `Via: 1.1 http-lb` to requests and responses.
    pub via: bool,
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// What `Via` names this hop as.
pub const VIA_VALUE: &str = "1.1 http-lb";

impl Forwarding {
    /// Whether the fields sent by a client at `ip` are to be believed.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|c| c.contains(ip))
    }

    /// Adds (or starts) the client-identifying fields of a request from `client`, which came
    /// over TLS when `tls`.
    pub fn apply(&self, headers: &mut HeaderMap, client: IpAddr, tls: bool) {
        let trusted = self.trusts(client);
        let client_text = client.to_canonical().to_string();
        // X-Forwarded-For: one list, however many lines it came in.
        let chain = match trusted {
            true => {
                let before: Vec<&str> = headers
                    .get_all(&X_FORWARDED_FOR)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .map(str::trim)
                    .filter(|v| !v.is_empty())
                    .collect();
                match before.is_empty() {
                    true => client_text,
                    false => format!("{}, {client_text}", before.join(", ")),
                }
            }
            false => client_text,
        };
        // `try_from(String)` keeps the string's buffer instead of copying it.
        if let Ok(v) = HeaderValue::try_from(chain) {
            headers.insert(X_FORWARDED_FOR, v);
        }
        let proto = if tls { "https" } else { "http" };
        if !(trusted && headers.contains_key(&X_FORWARDED_PROTO)) {
            headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
        }
        if !(trusted && headers.contains_key(&X_FORWARDED_HOST)) {
            match headers.get(header::HOST).cloned() {
                Some(host) => headers.insert(X_FORWARDED_HOST, host),
                None => headers.remove(&X_FORWARDED_HOST),
            };
        }
        if self.forwarded {
            let node = match client {
                IpAddr::V6(v6) if client.to_canonical().is_ipv6() => format!("\"[{v6}]\""),
                other => other.to_canonical().to_string(),
            };
            let mut element = format!("for={node};proto={proto}");
            if let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) {
                element += &format!(";host=\"{}\"", host.replace(['"', '\\'], ""));
            }
            let value = match (trusted, headers.get(header::FORWARDED)) {
                (true, Some(before)) => match before.to_str() {
                    Ok(before) => format!("{before}, {element}"),
                    Err(_) => element,
                },
                _ => element,
            };
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(header::FORWARDED, v);
            }
        } else if !trusted {
            headers.remove(header::FORWARDED);
        }
        if self.via {
            headers.append(header::VIA, HeaderValue::from_static(VIA_VALUE));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_fields_go_and_end_to_end_ones_stay() {
        let mut h = map(&[
            ("connection", "close, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("trailer", "x-checksum"),
            ("set-cookie", "a=1"),
            ("set-cookie", "b=2"),
        ]);
        let values: Vec<Vec<u8>> = h
            .get_all("connection")
            .iter()
            .map(|v| v.as_bytes().to_vec())
            .collect();
        let connection: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
        let by_bytes: Vec<String> = h
            .keys()
            .map(|k| k.as_str())
            .filter(|k| !is_hop_by_hop(k, &connection))
            .map(str::to_owned)
            .collect();
        strip_hop_by_hop(&mut h, false);
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["trailer", "set-cookie"]);
        assert_eq!(by_bytes, names, "the byte-level rule is the same rule");
        assert_eq!(h.get_all("set-cookie").iter().count(), 2);
    }

    #[test]
    fn an_upgrade_keeps_what_the_next_hop_needs() {
        let mut h = map(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "x"),
        ]);
        assert!(wants_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get("upgrade").unwrap(), "websocket");
        assert_eq!(h.get("connection").unwrap(), "upgrade");
        assert_eq!(h.get("sec-websocket-key").unwrap(), "x");
        assert!(!wants_upgrade(&map(&[("upgrade", "websocket")])));
    }

    #[test]
    fn forwarded_for_is_extended_only_for_trusted_peers() {
        let f = Forwarding {
            trusted: vec!["10.0.0.0/8".parse().unwrap()],
            forwarded: true,
            via: true,
        };
        let mut h = map(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "https"),
            ("host", "example.com"),
            ("forwarded", "for=1.2.3.4"),
        ]);
        f.apply(&mut h, "10.1.1.1".parse().unwrap(), false);
        assert_eq!(h.get("x-forwarded-for").unwrap(), "1.2.3.4, 10.1.1.1");
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "https");
        assert_eq!(h.get("x-forwarded-host").unwrap(), "example.com");
        assert_eq!(
            h.get("forwarded").unwrap(),
            "for=1.2.3.4, for=10.1.1.1;proto=http;host=\"example.com\""
        );
        assert_eq!(h.get("via").unwrap(), VIA_VALUE);

        let mut h = map(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil"),
        ]);
        let plain = Forwarding::default();
        plain.apply(&mut h, "192.0.2.7".parse().unwrap(), true);
        assert_eq!(h.get("x-forwarded-for").unwrap(), "192.0.2.7");
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "https");
        assert!(h.get("x-forwarded-host").is_none());
        let mut h = map(&[("forwarded", "for=1.2.3.4")]);
        plain.apply(&mut h, "::ffff:192.0.2.7".parse().unwrap(), false);
        assert!(h.get("forwarded").is_none() && h.get("via").is_none());
        assert_eq!(h.get("x-forwarded-for").unwrap(), "192.0.2.7");
    }
}

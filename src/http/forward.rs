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

use crate::http::exchange::PROTECTED;
use crate::http::fields::Fields;
use crate::limits::Cidr;

/// The hop-by-hop fields every hop removes, besides those `Connection` names.
const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "transfer-encoding",
    "upgrade",
];

/// Removes the hop-by-hop fields of a head. With `keep_upgrade`, an upgrade request (or its
/// `101` answer) keeps `Upgrade` and a `Connection: upgrade`, which the next hop needs to
/// switch protocols.
pub fn strip_hop_by_hop(fields: &mut impl Fields, keep_upgrade: bool) {
    // The fields `Connection` names, collected before it goes (nothing to collect, and no
    // allocation, without one).
    if fields.contains("connection") {
        let named: Vec<String> = fields
            .values("connection")
            .flat_map(|v| v.split(|&b| b == b','))
            .filter_map(|token| std::str::from_utf8(token.trim_ascii()).ok())
            .filter(|token| !token.is_empty())
            .map(str::to_ascii_lowercase)
            .collect();
        let named: Vec<&str> = named
            .iter()
            .map(String::as_str)
            .filter(|name| !(keep_upgrade && *name == "upgrade"))
            // `Connection: Content-Length` would otherwise unframe the message it is on, and
            // `Connection: Host` unroute it (RFC 9112 §6.1, request smuggling).
            .filter(|name| !PROTECTED.contains(name))
            .collect();
        fields.remove_all(&named);
    }
    let upgrade = match keep_upgrade {
        true => fields
            .values("upgrade")
            .next()
            .and_then(|v| HeaderValue::from_bytes(v).ok()),
        false => None,
    };
    fields.remove_all(&HOP_BY_HOP);
    if let Some(protocol) = upgrade {
        fields.insert(header::UPGRADE, protocol);
        fields.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// [`strip_hop_by_hop`]'s rule for one field of a head read as bytes (chapter 12's own
/// HTTP/1 path): `connection` holds the values of the head's `Connection` fields.
pub fn is_hop_by_hop(name: &str, connection: &[&[u8]]) -> bool {
    HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
        || !PROTECTED.iter().any(|p| name.eq_ignore_ascii_case(p))
            && connection.iter().any(|value| {
                value
                    .split(|&b| b == b',')
                    .any(|token| token.trim_ascii().eq_ignore_ascii_case(name.as_bytes()))
            })
}

/// Whether a field a backend sent in its trailers is one that cannot be acted on once the
/// content has gone: what frames or routes a message (`Content-Length`, `Host`, the
/// `PROTECTED` ones), `Trailer` itself, and the connection's own fields (RFC 9110 §6.5.1; on
/// an HTTP/2 stream they are malformed, RFC 9113 §8.2.2). A client that believed a
/// `Content-Length` there could frame what comes next differently from us: it is dropped.
pub fn is_unfit_trailer(name: &str) -> bool {
    is_hop_by_hop(name, &[])
        || PROTECTED.iter().any(|p| name.eq_ignore_ascii_case(p))
        || name.eq_ignore_ascii_case("trailer")
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
    pub fn apply(&self, fields: &mut impl Fields, client: &ClientAddr, tls: bool) {
        let trusted = self.trusts(client.ip);
        // X-Forwarded-For: one list, however many lines it came in.
        let before: Vec<&str> = match trusted {
            true => fields
                .values("x-forwarded-for")
                .filter_map(|v| std::str::from_utf8(v).ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .collect(),
            false => Vec::new(),
        };
        let chain = match before.is_empty() {
            // The connection's own text, made once: no formatting per request.
            true => Some(client.text.clone()),
            false => {
                let chain = format!("{}, {}", before.join(", "), client.text_str());
                // `try_from(String)` keeps the string's buffer instead of copying it.
                HeaderValue::try_from(chain).ok()
            }
        };
        if let Some(v) = chain {
            fields.insert(X_FORWARDED_FOR, v);
        }
        let proto = if tls { "https" } else { "http" };
        if !(trusted && fields.contains("x-forwarded-proto")) {
            fields.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
        }
        if !(trusted && fields.contains("x-forwarded-host")) {
            fields.copy("host", X_FORWARDED_HOST);
        }
        if self.forwarded {
            let node = match client.ip.to_canonical() {
                IpAddr::V6(_) => format!("\"[{}]\"", client.text_str()),
                IpAddr::V4(_) => client.text_str().to_owned(),
            };
            let mut element = format!("for={node};proto={proto}");
            if let Some(host) = fields
                .values("host")
                .next()
                .and_then(|h| std::str::from_utf8(h).ok())
            {
                element += &format!(";host=\"{}\"", host.replace(['"', '\\'], ""));
            }
            let before = match trusted {
                true => fields
                    .values("forwarded")
                    .next()
                    .and_then(|v| std::str::from_utf8(v).ok()),
                false => None,
            };
            let value = match before {
                Some(before) => format!("{before}, {element}"),
                None => element,
            };
            if let Ok(v) = HeaderValue::from_str(&value) {
                fields.insert(header::FORWARDED, v);
            }
        } else if !trusted {
            fields.remove("forwarded");
        }
        // Other fields that name the client, which applications read as readily: from a
        // client we do not trust they are lies too. `X-Real-IP` is set to the address we saw
        // (what nginx configurations conventionally send), the rest removed.
        if !trusted {
            fields.insert(X_REAL_IP, client.text.clone());
            fields.remove_all(&CLIENT_IDENTITY);
        }
        if self.via {
            fields.append(header::VIA, HeaderValue::from_static(VIA_VALUE));
        }
    }
}

const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
/// Fields some CDNs and proxies use to name the client, removed from untrusted requests.
const CLIENT_IDENTITY: [&str; 5] = [
    "x-client-ip",
    "true-client-ip",
    "x-cluster-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
];

/// A client's address, and its text as `X-Forwarded-For` carries it: made once per
/// connection, not per request.
#[derive(Clone, Debug)]
pub struct ClientAddr {
    /// As the connection came (an IPv4 client of a dual-stack listener is `::ffff:a.b.c.d`).
    pub ip: IpAddr,
    /// The canonical text: `a.b.c.d` for such a client.
    text: HeaderValue,
}

impl ClientAddr {
    pub fn new(ip: IpAddr) -> ClientAddr {
        ClientAddr {
            ip,
            // An address's text is always a valid field value.
            text: HeaderValue::try_from(ip.to_canonical().to_string())
                .unwrap_or(HeaderValue::from_static("unknown")),
        }
    }

    fn text_str(&self) -> &str {
        self.text.to_str().unwrap_or("unknown")
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

    /// RFC 9112 §6.1: `Connection` cannot take away what frames or routes the message.
    #[test]
    fn connection_cannot_name_the_framing_or_the_host() {
        let mut h = map(&[
            ("connection", "Content-Length, host, transfer-encoding, x-a"),
            ("content-length", "58"),
            ("host", "x"),
            ("x-a", "1"),
        ]);
        assert!(!is_hop_by_hop("content-length", &[b"content-length"]));
        assert!(!is_hop_by_hop("Host", &[b"host"]));
        assert!(is_hop_by_hop("x-a", &[b"x-a"]));
        strip_hop_by_hop(&mut h, false);
        let mut names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["content-length", "host"]);
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
        f.apply(&mut h, &ClientAddr::new("10.1.1.1".parse().unwrap()), false);
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
            ("x-real-ip", "6.6.6.6"),
            ("true-client-ip", "6.6.6.6"),
            ("cf-connecting-ip", "6.6.6.6"),
        ]);
        let plain = Forwarding::default();
        plain.apply(&mut h, &ClientAddr::new("192.0.2.7".parse().unwrap()), true);
        assert_eq!(h.get("x-forwarded-for").unwrap(), "192.0.2.7");
        assert_eq!(h.get("x-real-ip").unwrap(), "192.0.2.7");
        assert!(h.get("true-client-ip").is_none() && h.get("cf-connecting-ip").is_none());
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "https");
        assert!(h.get("x-forwarded-host").is_none());
        let mut h = map(&[("forwarded", "for=1.2.3.4")]);
        plain.apply(
            &mut h,
            &ClientAddr::new("::ffff:192.0.2.7".parse().unwrap()),
            false,
        );
        assert!(h.get("forwarded").is_none() && h.get("via").is_none());
        assert_eq!(h.get("x-forwarded-for").unwrap(), "192.0.2.7");
    }
}

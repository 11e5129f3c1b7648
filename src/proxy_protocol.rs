//! The PROXY protocol (HAProxy's, versions 1 and 2): how a layer-4 proxy tells the server
//! behind it who the client really is (chapter 10).
//!
//! A byte proxy dials the backend itself, so the backend sees *our* address as its peer: its
//! logs, rate limits and allow lists all see one client. The PROXY protocol fixes that by
//! sending, before the first byte of the client's data, one header naming the client's address
//! and the address it connected to:
//!
//! * v1 is one line of text: `PROXY TCP4 192.0.2.7 198.51.100.1 51234 443\r\n`;
//! * v2 is binary: a 12-byte signature, version and command, address family, a length, then
//!   the addresses and optional TLVs (type, length, value). We send and read two of them. The
//!   SSL TLV: "the client spoke TLS to the first proxy". A TLS offloader (chapter 13) decrypts
//!   and forwards plain HTTP, so the HTTP balancer behind it would otherwise believe the
//!   client came over plain HTTP: it would say `X-Forwarded-Proto: http` and leave `Secure`
//!   off its cookie. And the ALPN TLV, `h2`: "the client and the first proxy agreed on
//!   HTTP/2", so the balancer behind reads the bytes that follow as HTTP/2 (chapter 17). v1
//!   has no room for either.
//!
//! The backend must be configured to expect it (nginx `listen … proxy_protocol`, HAProxy
//! `accept-proxy`, PostgreSQL behind pgbouncer …): a server that does not expect it sees the
//! header as garbage. So it is per backend: `proxy-protocol = "v2"`.
//!
//! The other direction, [`read_header`], is for when *this* balancer sits behind another
//! (a cloud load balancer, HAProxy): with `accept-proxy` the listener reads the header first and
//! everything after it (allow lists, per-client limits, logs, the header we send on) uses the
//! real client's address.
//!
//! Health probes send `LOCAL` (v2) or `UNKNOWN` (v1): "this connection is the proxy's own".

use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use tokio::io::AsyncReadExt as _;
use tokio::net::TcpStream;

/// Which header to send a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Version {
    V1,
    V2,
}

impl std::str::FromStr for Version {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "v1" => Ok(Version::V1),
            "v2" => Ok(Version::V2),
            other => Err(format!(
                "unknown PROXY protocol version `{other}` (use v1 or v2)"
            )),
        }
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Version::V1 => "v1",
            Version::V2 => "v2",
        })
    }
}

/// v2's signature: chosen so that it can never start a valid v1 header, HTTP request or TLS
/// record.
const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// v1's longest header, `\r\n` included (the spec's own bound).
const V1_MAX: usize = 107;

/// v2's TLV type for "the client connected over SSL/TLS" (`PP2_TYPE_SSL`).
const PP2_TYPE_SSL: u8 = 0x20;
/// Its `client` bit saying TLS was used (`PP2_CLIENT_SSL`).
const PP2_CLIENT_SSL: u8 = 0x01;

/// Where a connection really comes from, as a PROXY header carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Origin {
    /// The client's address.
    pub client: SocketAddr,
    /// The address the client dialled (the first proxy's listener).
    pub dialled: SocketAddr,
    /// Whether the client spoke TLS to the first proxy (v2's SSL TLV).
    pub tls: bool,
    /// Whether the client and the first proxy agreed on HTTP/2 in ALPN (v2's ALPN TLV, `h2`):
    /// the bytes that follow are HTTP/2 (chapter 17).
    pub h2: bool,
}

/// The header announcing a connection from `client` to `local` (the address the client dialled).
/// `None` is the proxy's own connection (a health probe): `LOCAL` / `UNKNOWN`.
pub fn header(version: Version, addrs: Option<(SocketAddr, SocketAddr)>) -> Vec<u8> {
    encode(
        version,
        addrs.map(|(client, dialled)| Origin {
            client,
            dialled,
            tls: false,
            h2: false,
        }),
    )
}

/// The header for `origin`; v2 adds the SSL TLV when the client spoke TLS. `None` is the
/// proxy's own connection: `LOCAL` / `UNKNOWN`.
pub fn encode(version: Version, origin: Option<Origin>) -> Vec<u8> {
    let tls = origin.is_some_and(|o| o.tls);
    let h2 = origin.is_some_and(|o| o.h2);
    let addrs = origin.map(|o| same_family((o.client, o.dialled)));
    match version {
        Version::V1 => match addrs {
            None => b"PROXY UNKNOWN\r\n".to_vec(),
            Some((src, dst)) => {
                let family = if src.is_ipv4() { "TCP4" } else { "TCP6" };
                format!(
                    "PROXY {family} {} {} {} {}\r\n",
                    src.ip(),
                    dst.ip(),
                    src.port(),
                    dst.port()
                )
                .into_bytes()
            }
        },
        Version::V2 => {
            let mut out = Vec::with_capacity(16 + 36 + SSL_TLV.len());
            out.extend_from_slice(&SIGNATURE);
            match addrs {
                None => out.extend_from_slice(&[0x20, 0x00, 0, 0]),
                Some((src, dst)) => {
                    let (family, len): (u8, u16) = if src.is_ipv4() {
                        (0x11, 12)
                    } else {
                        (0x21, 36)
                    };
                    let len = len
                        + if tls { SSL_TLV.len() as u16 } else { 0 }
                        + if h2 { ALPN_H2_TLV.len() as u16 } else { 0 };
                    out.extend_from_slice(&[0x21, family]);
                    out.extend_from_slice(&len.to_be_bytes());
                    for ip in [src.ip(), dst.ip()] {
                        match ip {
                            IpAddr::V4(ip) => out.extend_from_slice(&ip.octets()),
                            IpAddr::V6(ip) => out.extend_from_slice(&ip.octets()),
                        }
                    }
                    out.extend_from_slice(&src.port().to_be_bytes());
                    out.extend_from_slice(&dst.port().to_be_bytes());
                    if tls {
                        out.extend_from_slice(&SSL_TLV);
                    }
                    if h2 {
                        out.extend_from_slice(&ALPN_H2_TLV);
                    }
                }
            }
            out
        }
    }
}

/// The SSL TLV we send: type, length 5, `client` = TLS used, then `verify` = 1. `verify` is 0
/// only for "a client certificate was presented and verified"; we ask for none, so a receiver
/// that checks it must not read our header as a verified client.
const SSL_TLV: [u8; 8] = [PP2_TYPE_SSL, 0, 5, PP2_CLIENT_SSL, 0, 0, 0, 1];

/// v2's TLV type for the protocol agreed in ALPN (`PP2_TYPE_ALPN`).
const PP2_TYPE_ALPN: u8 = 0x01;

/// The ALPN TLV we send when the client chose HTTP/2 (chapter 17).
const ALPN_H2_TLV: [u8; 5] = [PP2_TYPE_ALPN, 0, 2, b'h', b'2'];

/// What v2's TLVs (what follows the addresses) say: whether an SSL TLV's `client` field says
/// TLS, and whether the ALPN TLV names `h2`. Others are skipped. A TLV that runs past the
/// header is an error: the header is corrupt.
fn read_tlvs(mut tlvs: &[u8]) -> io::Result<(bool, bool)> {
    let (mut tls, mut h2) = (false, false);
    while !tlvs.is_empty() {
        let [kind, hi, lo, rest @ ..] = tlvs else {
            return Err(invalid("PROXY v2 TLV cut short"));
        };
        let len = u16::from_be_bytes([*hi, *lo]) as usize;
        let Some(value) = rest.get(..len) else {
            return Err(invalid("PROXY v2 TLV longer than its header"));
        };
        if *kind == PP2_TYPE_SSL && value.first().is_some_and(|c| c & PP2_CLIENT_SSL != 0) {
            tls = true;
        }
        if *kind == PP2_TYPE_ALPN && value == b"h2" {
            h2 = true;
        }
        tlvs = &rest[len..];
    }
    Ok((tls, h2))
}

/// Both addresses in one family, as the header requires: IPv4 when both are (or map to) IPv4,
/// else both as IPv6 (an IPv4 one as `::ffff:a.b.c.d`).
fn same_family((src, dst): (SocketAddr, SocketAddr)) -> (SocketAddr, SocketAddr) {
    let canon = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    let (src, dst) = (canon(src), canon(dst));
    if src.is_ipv4() == dst.is_ipv4() {
        return (src, dst);
    }
    let v6 = |a: SocketAddr| match a.ip() {
        IpAddr::V4(ip) => SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), a.port()),
        IpAddr::V6(_) => a,
    };
    (v6(src), v6(dst))
}

/// Reads one PROXY header (v1 or v2) from the start of `stream`, consuming exactly the header
/// and not one byte of what follows it. Returns where the connection comes from, or `None`
/// for `LOCAL`/`UNKNOWN` (the sender's own connection: keep the TCP peer's address).
///
/// Bound it with a timeout: a client that sends nothing would otherwise wait here forever.
pub async fn read_header(stream: &mut TcpStream) -> io::Result<Option<Origin>> {
    let mut first = [0u8; 1];
    if stream.peek(&mut first).await? == 0 {
        return Err(invalid("connection closed before the PROXY header"));
    }
    match first[0] {
        b'\r' => read_v2(stream).await,
        b'P' => read_v1(stream).await,
        _ => Err(invalid(
            "no PROXY header (is the proxy in front sending one?)",
        )),
    }
}

async fn read_v2(stream: &mut TcpStream) -> io::Result<Option<Origin>> {
    let mut head = [0u8; 16];
    stream.read_exact(&mut head).await?;
    if head[..12] != SIGNATURE {
        return Err(invalid("bad PROXY v2 signature"));
    }
    if head[12] >> 4 != 2 {
        return Err(invalid("unsupported PROXY protocol version"));
    }
    let len = u16::from_be_bytes([head[14], head[15]]) as usize;
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await?;
    let ip6 = |b: &[u8]| {
        let mut octets = [0u8; 16];
        octets.copy_from_slice(b);
        IpAddr::V6(Ipv6Addr::from(octets))
    };
    let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
    let origin = |client, dialled, tlvs| {
        let (tls, h2) = read_tlvs(tlvs)?;
        Ok(Some(Origin {
            client,
            dialled,
            tls,
            h2,
        }))
    };
    match (head[12] & 0x0f, head[13] >> 4) {
        // LOCAL: a health check or the proxy's own traffic.
        (0, _) => Ok(None),
        (1, 1) if len >= 12 => {
            let ip = |b: &[u8]| IpAddr::from([b[0], b[1], b[2], b[3]]);
            origin(
                SocketAddr::new(ip(&body[0..4]), port(&body[8..10])),
                SocketAddr::new(ip(&body[4..8]), port(&body[10..12])),
                &body[12..],
            )
        }
        (1, 2) if len >= 36 => origin(
            SocketAddr::new(ip6(&body[0..16]), port(&body[32..34])),
            SocketAddr::new(ip6(&body[16..32]), port(&body[34..36])),
            &body[36..],
        ),
        // UNSPEC or a UNIX socket: nothing we can use; keep the TCP peer's address.
        (1, 0 | 3) => Ok(None),
        (1, _) => Err(invalid("PROXY v2 header too short for its address family")),
        _ => Err(invalid("unknown PROXY v2 command")),
    }
}

/// v1 is a line of at most 107 bytes. We peek, and consume only up to the `\r\n`: what comes
/// after it is the client's data. Peeked bytes with no `\r\n` among them are all header, so we
/// consume them and peek again (a peek with data pending would return at once, forever).
async fn read_v1(stream: &mut TcpStream) -> io::Result<Option<Origin>> {
    let mut line = Vec::with_capacity(V1_MAX);
    let mut buf = [0u8; V1_MAX];
    loop {
        let room = V1_MAX - line.len();
        let n = stream.peek(&mut buf[..room]).await?;
        if n == 0 {
            return Err(invalid("connection closed inside the PROXY header"));
        }
        // The `\r` may have been the last byte of the previous peek.
        let seen = line.len();
        line.extend_from_slice(&buf[..n]);
        let from = seen.saturating_sub(1);
        if let Some(pos) = line[from..].windows(2).position(|w| w == b"\r\n") {
            let end = from + pos + 2;
            line.truncate(end);
            let mut consume = vec![0u8; end - seen];
            stream.read_exact(&mut consume).await?;
            return parse_v1(&line);
        }
        if line.len() >= V1_MAX {
            return Err(invalid("PROXY v1 header longer than 107 bytes"));
        }
        let mut consume = vec![0u8; n];
        stream.read_exact(&mut consume).await?;
    }
}

fn parse_v1(line: &[u8]) -> io::Result<Option<Origin>> {
    let text = std::str::from_utf8(line).map_err(|_| invalid("PROXY v1 header is not text"))?;
    let text = text.trim_end_matches("\r\n");
    let fields: Vec<&str> = text.split(' ').collect();
    match fields.as_slice() {
        ["PROXY", "UNKNOWN", ..] => Ok(None),
        ["PROXY", family @ ("TCP4" | "TCP6"), src, dst, sport, dport] => {
            let ip = |s: &str| -> io::Result<IpAddr> {
                let ip: IpAddr = s
                    .parse()
                    .map_err(|_| invalid("bad address in PROXY v1 header"))?;
                if ip.is_ipv4() != (*family == "TCP4") {
                    return Err(invalid("PROXY v1 address does not match its family"));
                }
                Ok(ip)
            };
            let port = |s: &str| -> io::Result<u16> {
                s.parse()
                    .map_err(|_| invalid("bad port in PROXY v1 header"))
            };
            Ok(Some(Origin {
                client: SocketAddr::new(ip(src)?, port(sport)?),
                dialled: SocketAddr::new(ip(dst)?, port(dport)?),
                tls: false,
                h2: false,
            }))
        }
        _ => Err(invalid("malformed PROXY v1 header")),
    }
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt as _;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_headers_match_the_spec() {
        let h = header(
            Version::V1,
            Some((addr("192.0.2.7:51234"), addr("198.51.100.1:443"))),
        );
        assert_eq!(h, b"PROXY TCP4 192.0.2.7 198.51.100.1 51234 443\r\n");
        let h = header(Version::V1, Some((addr("[::1]:5"), addr("127.0.0.1:6"))));
        assert_eq!(h, b"PROXY TCP6 ::1 ::ffff:127.0.0.1 5 6\r\n");
        // A client of a dual-stack listener appears as ::ffff:a.b.c.d; it is sent as IPv4.
        let h = header(
            Version::V1,
            Some((addr("[::ffff:10.0.0.1]:5"), addr("[::ffff:10.0.0.2]:6"))),
        );
        assert_eq!(h, b"PROXY TCP4 10.0.0.1 10.0.0.2 5 6\r\n");
        assert_eq!(header(Version::V1, None), b"PROXY UNKNOWN\r\n");
    }

    #[test]
    fn v2_headers_match_the_spec() {
        let h = header(
            Version::V2,
            Some((addr("10.0.0.1:1000"), addr("10.0.0.2:443"))),
        );
        let mut want = SIGNATURE.to_vec();
        want.extend_from_slice(&[
            0x21, 0x11, 0, 12, 10, 0, 0, 1, 10, 0, 0, 2, 0x03, 0xe8, 1, 0xbb,
        ]);
        assert_eq!(h, want);
        assert_eq!(header(Version::V2, None)[12..], [0x20, 0, 0, 0]);
        assert_eq!(
            header(Version::V2, Some((addr("[::1]:1"), addr("[::2]:2")))).len(),
            16 + 36
        );
    }

    /// Writes `bytes` to a loopback connection and runs `read_header` on the other end;
    /// returns its result and what the stream yields after it.
    async fn read_back(bytes: Vec<u8>) -> (io::Result<Option<Origin>>, Vec<u8>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let writer = tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            // One byte at a time: the reader must cope with a header split anywhere.
            for b in bytes {
                s.write_all(&[b]).await.unwrap();
                s.flush().await.unwrap();
            }
            s.shutdown().await.unwrap();
        });
        let (mut s, _) = listener.accept().await.unwrap();
        let result = read_header(&mut s).await;
        let mut rest = Vec::new();
        if result.is_ok() {
            s.read_to_end(&mut rest).await.unwrap();
        }
        writer.await.unwrap();
        (result, rest)
    }

    #[tokio::test]
    async fn both_versions_round_trip_and_leave_the_data_after_them() {
        for version in [Version::V1, Version::V2] {
            for (src, dst) in [
                (addr("192.0.2.7:51234"), addr("198.51.100.1:443")),
                (addr("[2001:db8::1]:7"), addr("[2001:db8::2]:8")),
            ] {
                let mut bytes = header(version, Some((src, dst)));
                bytes.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
                let (result, rest) = read_back(bytes).await;
                let origin = result.unwrap().unwrap();
                assert_eq!((origin.client, origin.dialled), (src, dst), "{version}");
                assert!(!origin.tls);
                assert_eq!(rest, b"GET / HTTP/1.1\r\n\r\n");
            }
            let mut bytes = header(version, None);
            bytes.extend_from_slice(b"x");
            let (result, rest) = read_back(bytes).await;
            assert_eq!(result.unwrap(), None);
            assert_eq!(rest, b"x");
        }
    }

    #[tokio::test]
    async fn v2_carries_the_clients_tls_and_skips_other_tlvs() {
        let origin = Origin {
            client: addr("192.0.2.7:51234"),
            dialled: addr("198.51.100.1:443"),
            tls: true,
            h2: false,
        };
        let bytes = encode(Version::V2, Some(origin));
        assert_eq!(&bytes[16 + 12..], &SSL_TLV);
        assert_eq!(u16::from_be_bytes([bytes[14], bytes[15]]), 12 + 8);
        let (result, rest) = read_back([&bytes[..], b"x"].concat()).await;
        assert_eq!(result.unwrap(), Some(origin));
        assert_eq!(rest, b"x");
        // HAProxy's TLVs before ours: its ALPN (0x01) says h2 (chapter 17), its authority
        // (0x02) and a CRC (0x03) are skipped.
        let mut bytes = encode(
            Version::V2,
            Some(Origin {
                tls: false,
                ..origin
            }),
        );
        let others = [0x01, 0, 2, b'h', b'2', 0x02, 0, 1, b'a', 0x03, 0, 0];
        bytes.extend_from_slice(&others);
        bytes.extend_from_slice(&SSL_TLV);
        let len = (12 + others.len() + SSL_TLV.len()) as u16;
        bytes[14..16].copy_from_slice(&len.to_be_bytes());
        let (result, _) = read_back(bytes).await;
        assert_eq!(result.unwrap(), Some(Origin { h2: true, ..origin }));
        // Ours, both ways: the ALPN TLV after the SSL one.
        let h2 = Origin { h2: true, ..origin };
        let bytes = encode(Version::V2, Some(h2));
        assert_eq!(&bytes[16 + 12 + 8..], &ALPN_H2_TLV);
        let (result, _) = read_back(bytes).await;
        assert_eq!(result.unwrap(), Some(h2));
        // v1 cannot say it: the bit is lost, not invented.
        let (result, _) = read_back(encode(Version::V1, Some(origin))).await;
        assert!(!result.unwrap().unwrap().tls);
    }

    #[tokio::test]
    async fn garbage_is_refused() {
        for bad in [
            b"GET / HTTP/1.1\r\n\r\n".to_vec(),
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n".to_vec(),
            b"PROXY TCP4 ::1 ::1 1 2\r\n".to_vec(),
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n".to_vec(),
            vec![b'P'; 200],
            b"\r\n\r\n\0\r\nQUIT\n\x31\x11\0\0".to_vec(),
            b"\r\n\r\n\0\r\nQUIT\n\x21\x11\0\x04abcd".to_vec(),
            // A TLV that claims more bytes than the header holds, and one cut short.
            [&SIGNATURE[..], b"\x21\x11\0\x0f", &[1; 12], b"\x20\0\x09"].concat(),
            [&SIGNATURE[..], b"\x21\x11\0\x0e", &[1; 12], b"\x20\0"].concat(),
            b"PROXY TCP4 1.2".to_vec(),
            Vec::new(),
        ] {
            let (result, _) = read_back(bad.clone()).await;
            assert!(
                result.is_err(),
                "{:?} accepted",
                String::from_utf8_lossy(&bad)
            );
        }
    }
}

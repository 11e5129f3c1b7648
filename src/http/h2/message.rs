//! An HTTP/2 request's head, from the fields its header block decoded to, into the request the
//! exchange's rules then judge (RFC 9113 §8); and an answer's head into a header block.
//!
//! HTTP/2 carries HTTP's semantics in other clothes: the request line becomes pseudo-header
//! fields (`:method`, `:scheme`, `:authority`, `:path`), framing is the frames' own, and
//! HTTP/1's connection-specific fields have no meaning. Each rule below is one a proxy
//! must hold for the request it forwards to mean one thing on both sides: a field HTTP/1.1
//! would read differently (`Transfer-Encoding`, `Connection`, a value with a line break in
//! it) is how requests were smuggled through HTTP/2 front ends in 2021. A request that breaks
//! one is *malformed* (§8.1.1): never forwarded, and answered `400`, then its stream reset.
//!
//! The fields are kept as they decode, in one buffer, and go one of two ways:
//!
//! * the common request (no body, a plain `http(s)` target, every exchange check passed) goes
//!   to the own HTTP/1.1 hop as it is ([`Plain`]): chapter 12's rules run on the fields where
//!   they are, and no map is built (a map and its edits were about a fifth of an HTTP/2 `GET`'s
//!   instructions);
//! * any other becomes the request hyper's HTTP/2 server hands on: an absolute target
//!   (`http://authority/path`) when `:authority` is there, version HTTP/2, its fields in a map
//!   whose values share the buffer. So
//!   [`HttpServer::request`](crate::http::balancer::HttpServer)'s checks (RFC 9110's target and
//!   `Host` rules, the framing fields) run on it as on any other, and refuse what is wrong.

use bytes::Bytes;
use hyper::header::{HeaderName, HeaderValue};
use hyper::http::uri::{Authority, PathAndQuery, Scheme};
use hyper::{HeaderMap, Method, Request, StatusCode, Uri, Version};

use super::hpack;
use crate::http::exchange::{self, Target};
use crate::http::fields::{ReadList, Span};
use crate::http::grpc;
use crate::http::h1::spare;

/// A head refused: its status, and why (for the log).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Malformed {
    pub status: StatusCode,
    pub why: &'static str,
}

fn malformed(why: &'static str) -> Malformed {
    Malformed {
        status: StatusCode::BAD_REQUEST,
        why,
    }
}

/// RFC 9113 §8.2.2: fields that only mean something to one HTTP/1 connection. A request with
/// one is malformed; an answer from an HTTP/1 backend loses them on the way to the client.
pub const CONNECTION_SPECIFIC: [&str; 5] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "transfer-encoding",
    "upgrade",
];

/// One request head's fields, taken in order as the block decodes: [`Head::field`] for each,
/// then [`Head::plain`] or [`Head::into_request`]. The first rule broken is kept and the rest
/// ignored, but every field must still be passed, as the HPACK table depends on decoding the
/// whole block.
///
/// The fields are kept as they decoded, one after another in one buffer, and checked byte by
/// byte against the rules `HeaderName` and `HeaderValue` hold: no map, and no allocation per
/// field. A map is built only for the requests that go through hyper's code ([`Head::into_request`],
/// whose values then share that one buffer); the common `GET` goes to chapter 12's rules as it
/// is ([`Head::plain`]).
pub struct Head {
    method: Option<Method>,
    scheme: Option<Scheme>,
    /// Where `:authority` and `:path` are in `text`.
    authority: Option<Span>,
    path: Option<Span>,
    /// The decoded names and values the head keeps.
    text: Vec<u8>,
    /// The regular fields, by position in `text`, in the client's order.
    fields: ReadList,
    /// Values of `cookie` fields, joined when the head ends (§8.2.3).
    cookies: Vec<u8>,
    /// A regular field came: a pseudo-header after it is malformed (§8.3).
    regular: bool,
    /// RFC 9113 §6.5.2's size of the list so far, and its bound.
    size: usize,
    max: usize,
    wrong: Option<Malformed>,
    /// The head is a trailer section: no pseudo-header may appear (§8.1).
    trailers: bool,
}

/// A request's head for the own HTTP/1.1 hop, as it decoded: nothing an HTTP/1.1 head would
/// read differently, and every check of the exchange passed ([`Head::plain`]).
pub struct Plain {
    pub method: Method,
    /// The request line's target (`:path`), in `text`.
    pub target: Span,
    pub text: Vec<u8>,
    /// `host` first, with `:authority`'s value (RFC 9113 §8.3.1 puts the authority there, and
    /// RFC 9112 §3.2 asks for it first); then the client's fields, in its order, but `host`
    /// (one equal to `:authority`, if any) and with its cookie crumbs joined at the end.
    pub fields: ReadList,
}

impl Head {
    /// A request head whose fields may add up to `max` bytes (§6.5.2's size: each name and
    /// value, and 32 bytes more), the bound a head of HTTP/1 gets (`max-head`); past it, 431.
    pub fn request(max: usize) -> Head {
        Head {
            method: None,
            scheme: None,
            authority: None,
            path: None,
            text: Vec::new(),
            fields: Vec::new(),
            cookies: Vec::new(),
            regular: false,
            size: 0,
            max,
            wrong: None,
            trailers: false,
        }
    }

    /// A trailer section (HEADERS after a request's DATA): regular fields only.
    pub fn trailers(max: usize) -> Head {
        Head {
            trailers: true,
            ..Head::request(max)
        }
    }

    /// The next decoded field.
    pub fn field(&mut self, name: &[u8], value: &[u8]) {
        if self.wrong.is_some() {
            return;
        }
        self.size = self.size.saturating_add(name.len() + value.len() + 32);
        if self.size > self.max {
            self.wrong = Some(Malformed {
                status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                why: "header list larger than max-head",
            });
            // What is held goes now: the rest of the block is decoded only to keep HPACK's
            // table in step.
            self.text = Vec::new();
            self.fields = Vec::new();
            self.cookies = Vec::new();
            return;
        }
        if let Err(why) = self.take(name, value) {
            self.wrong = Some(malformed(why));
        }
    }

    /// The method, once its field has come.
    pub fn method(&self) -> Option<&Method> {
        self.method.as_ref()
    }

    fn keep(&mut self, bytes: &[u8]) -> Span {
        if self.text.capacity() == 0 {
            // Most heads fit; the own hop gives it back once its head for the backend is
            // written.
            self.text = spare::small();
        }
        let start = self.text.len();
        self.text.extend_from_slice(bytes);
        (start, self.text.len())
    }

    fn take(&mut self, name: &[u8], value: &[u8]) -> Result<(), &'static str> {
        // §8.2.1: no NUL, CR or LF anywhere in a value, and no whitespace at either end: once
        // written as HTTP/1, any of them would end the field, or the head, elsewhere. (One
        // pass over the value for what HeaderValue takes, which excludes those three too; a
        // second only for a value it refuses, for the reason's sake.)
        let valid = is_field_value(value);
        if (!valid && value.iter().any(|&b| matches!(b, 0 | b'\r' | b'\n')))
            || value.first().is_some_and(|b| matches!(b, b' ' | b'\t'))
            || value.last().is_some_and(|b| matches!(b, b' ' | b'\t'))
        {
            return Err("a field value with NUL, CR, LF or whitespace at an end");
        }
        if let Some(pseudo) = name.strip_prefix(b":") {
            if self.trailers {
                return Err("a pseudo-header field in trailers");
            }
            if self.regular {
                return Err("a pseudo-header field after a regular one");
            }
            return self.pseudo(pseudo, value);
        }
        self.regular = true;
        // §8.2.1: names are lowercase tokens; HeaderName would lowercase an uppercase one
        // silently, which is not what the client sent.
        if name.iter().any(u8::is_ascii_uppercase) {
            return Err("an uppercase field name");
        }
        // The rules `HeaderName` and `HeaderValue` check, here, so that the map built from
        // these (hyper's path) and the head written from them (the own hop) hold the same.
        if !is_field_name(name) {
            return Err("an invalid field name");
        }
        if !valid {
            return Err("an invalid field value");
        }
        if CONNECTION_SPECIFIC.iter().any(|c| c.as_bytes() == name) {
            return Err("a connection-specific field");
        }
        // §8.2.2: TE may only say "trailers".
        if name == b"te" && value != b"trailers" {
            return Err("TE other than trailers");
        }
        if name == b"cookie" {
            // §8.2.3: cookie crumbs are joined with "; " for an HTTP/1 hop.
            if !self.cookies.is_empty() {
                self.cookies.extend_from_slice(b"; ");
            }
            self.cookies.extend_from_slice(value);
            return Ok(());
        }
        let name = self.keep(name);
        let value = self.keep(value);
        if self.fields.capacity() == 0 {
            self.fields = spare::fields();
        }
        self.fields.push((name, value));
        Ok(())
    }

    /// §8.3.1: each request pseudo-header once; any other pseudo-header is malformed.
    fn pseudo(&mut self, name: &[u8], value: &[u8]) -> Result<(), &'static str> {
        fn once<T>(slot: &mut Option<T>, value: T) -> Result<(), &'static str> {
            match slot {
                Some(_) => Err("a pseudo-header field twice"),
                None => {
                    *slot = Some(value);
                    Ok(())
                }
            }
        }
        match name {
            b"method" => {
                let method = Method::from_bytes(value).map_err(|_| "an invalid :method")?;
                once(&mut self.method, method)
            }
            b"scheme" => {
                let scheme = Scheme::try_from(value).map_err(|_| "an invalid :scheme")?;
                once(&mut self.scheme, scheme)
            }
            b"authority" => {
                // §8.3.1: no userinfo; the exchange checks the rest as it checks a Host.
                if value.contains(&b'@') {
                    return Err("userinfo in :authority");
                }
                if self.authority.is_some() {
                    return Err("a pseudo-header field twice");
                }
                // Parsed as a URI's authority when the head becomes a request.
                self.authority = Some(self.keep(value));
                Ok(())
            }
            b"path" => {
                if value.is_empty() {
                    return Err("an empty :path");
                }
                if self.path.is_some() {
                    return Err("a pseudo-header field twice");
                }
                self.path = Some(self.keep(value));
                Ok(())
            }
            // `:protocol` (RFC 8441) is only for a server that announced extended CONNECT,
            // which this one does not; `:status` is an answer's.
            _ => Err("an unknown pseudo-header field"),
        }
    }

    /// The joined cookie crumbs become one field, at the end (§8.2.3).
    fn join_cookies(&mut self) {
        if self.cookies.is_empty() {
            return;
        }
        let cookies = std::mem::take(&mut self.cookies);
        let name = self.keep(b"cookie");
        let value = self.keep(&cookies);
        self.fields.push((name, value));
    }

    /// The head as the own HTTP/1.1 hop takes it (taken out of this one), or `None`, this one
    /// untouched, when it is not one the hop takes as it is: then [`Head::into_request`] makes
    /// the request hyper's code judges
    /// (and refuses, when it is malformed). The hop takes a request with no body, an `http` or
    /// `https` target whose `:authority` and `:path` are plain (below), and fields the
    /// exchange's rules accept: the same [`exchange::check_target`] and
    /// [`exchange::request_framing`] `HttpServer::request` runs, and §8.3.1's `Host` equal to
    /// `:authority`. What is unusual takes the longer way, and is judged there.
    pub fn plain(&mut self, end_stream: bool) -> Option<Plain> {
        let (Some(method), Some(scheme), Some(authority), Some(path)) =
            (&self.method, &self.scheme, self.authority, self.path)
        else {
            return None;
        };
        if !end_stream
            || self.wrong.is_some()
            || *method == Method::CONNECT
            || !(*scheme == Scheme::HTTP || *scheme == Scheme::HTTPS)
            || !plain_path(&self.text[path.0..path.1])
        {
            return None;
        }
        let text = &self.text;
        let bytes = |(start, end): Span| &text[start..end];
        let host = bytes(authority);
        let hosts = self
            .fields
            .iter()
            .filter(|&&(n, _)| bytes(n) == b"host")
            .map(|&(_, v)| bytes(v));
        // `http`'s authority parser refuses a percent escape, which RFC 3986 allows in a host
        // (and `exchange::valid_host` too): such a request takes the longer way, and is
        // refused there, as before.
        let checked = exchange::check_target(method, Target::Absolute(host), hosts, false).is_ok()
            && !host.is_empty()
            && !host.contains(&b'%')
            && self
                .fields
                .iter()
                .all(|&(n, v)| bytes(n) != b"host" || bytes(v).eq_ignore_ascii_case(host));
        // A body's length other than none: §8.1.1 makes it malformed without DATA.
        let framing =
            exchange::request_framing(self.fields.iter().map(|&(n, v)| (bytes(n), bytes(v))));
        // gRPC's failures are answered in gRPC's terms, by `HttpServer::request`.
        let grpc = self
            .fields
            .iter()
            .any(|&(n, v)| bytes(n) == b"content-type" && grpc::is_grpc_type(bytes(v)));
        if !checked || !matches!(framing, Ok(exchange::BodyLength::Empty)) || grpc {
            return None;
        }
        self.join_cookies();
        let text = &self.text;
        self.fields.retain(|&(n, _)| &text[n.0..n.1] != b"host");
        let host = self.keep(b"host");
        self.fields.insert(0, (host, authority));
        Some(Plain {
            method: self.method.take().unwrap_or_default(),
            target: path,
            text: std::mem::take(&mut self.text),
            fields: std::mem::take(&mut self.fields),
        })
    }

    /// The request, once the whole block has been passed.
    pub fn into_request(mut self) -> Result<Request<()>, Malformed> {
        if let Some(wrong) = self.wrong {
            return Err(wrong);
        }
        self.join_cookies();
        let (headers, text) = self.map()?;
        let method = self.method.ok_or(malformed("no :method"))?;
        let authority = match self.authority {
            Some((start, end)) => Some(
                Authority::from_maybe_shared(text.slice(start..end))
                    .map_err(|_| malformed("an invalid :authority"))?,
            ),
            None => None,
        };
        let path = match self.path {
            Some((start, end)) => Some(
                PathAndQuery::from_maybe_shared(text.slice(start..end))
                    .map_err(|_| malformed("an invalid :path"))?,
            ),
            None => None,
        };
        let mut parts = hyper::http::uri::Parts::default();
        if method == Method::CONNECT {
            // §8.5: CONNECT has only `:method` and `:authority`. It is well formed, and the
            // exchange answers it 501 (a balancer offers no tunnels).
            if self.scheme.is_some() || path.is_some() {
                return Err(malformed(":scheme or :path in a CONNECT"));
            }
            parts.authority = Some(authority.ok_or(malformed("no :authority"))?);
        } else {
            let scheme = self.scheme.ok_or(malformed("no :scheme"))?;
            let path = path.ok_or(malformed("no :path"))?;
            // §8.3.1: an http or https target is a path from the root, or `*` for OPTIONS.
            let is_http = scheme == Scheme::HTTP || scheme == Scheme::HTTPS;
            let asterisk = path.as_str() == "*" && method == Method::OPTIONS;
            if is_http && !path.as_str().starts_with('/') && !asterisk {
                return Err(malformed("a :path that is not absolute"));
            }
            if let Some(authority) = authority {
                parts.scheme = Some(scheme);
                parts.authority = Some(authority);
            }
            parts.path_and_query = Some(path);
        }
        let uri = Uri::from_parts(parts).map_err(|_| malformed("an invalid target"))?;
        let mut request = Request::new(());
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        *request.version_mut() = Version::HTTP_2;
        *request.headers_mut() = headers;
        Ok(request)
    }

    /// A trailer section's fields, once the whole block has been passed.
    pub fn into_trailers(mut self) -> Result<HeaderMap, Malformed> {
        if let Some(wrong) = self.wrong {
            return Err(wrong);
        }
        self.join_cookies();
        Ok(self.map()?.0)
    }

    /// The fields as a map, whose values share one copy of the text (also returned).
    fn map(&mut self) -> Result<(HeaderMap, Bytes), Malformed> {
        let text = Bytes::from(std::mem::take(&mut self.text));
        let mut map = HeaderMap::with_capacity(self.fields.len());
        for &((n0, n1), (v0, v1)) in &self.fields {
            // Checked by the same rules as each field came: neither fails.
            let name = HeaderName::from_bytes(&text[n0..n1])
                .map_err(|_| malformed("an invalid field name"))?;
            let value = HeaderValue::from_maybe_shared(text.slice(v0..v1))
                .map_err(|_| malformed("an invalid field value"))?;
            map.append(name, value);
        }
        spare::give_fields(std::mem::take(&mut self.fields));
        Ok((map, text))
    }
}

/// A table of the bytes `extra` names, with ASCII letters (lower case only, or both) and
/// digits: one lookup a byte.
const fn table(extra: &[u8], upper: bool) -> [bool; 256] {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_lowercase() || c.is_ascii_digit() || (upper && c.is_ascii_uppercase());
        b += 1;
    }
    let mut i = 0;
    while i < extra.len() {
        t[extra[i] as usize] = true;
        i += 1;
    }
    t
}

/// RFC 9110 §5.6.2's `tchar`, in lower case.
const NAME: [bool; 256] = table(b"!#$%&'*+-.^_`|~", false);
/// RFC 3986's unreserved and sub-delimiter characters, `:`, `@`, `/`, `?` and `%`.
const PATH: [bool; 256] = table(b"-._~!$&'()*+,;=:@/?%", true);

/// RFC 9110 §5.1's token, in lower case (what `HeaderName` accepts from HTTP/2, §8.2.1).
fn is_field_name(name: &[u8]) -> bool {
    !name.is_empty() && name.len() <= u16::MAX as usize && name.iter().all(|&b| NAME[b as usize])
}

/// RFC 9110 §5.5's field value as `HeaderValue` takes it: visible characters, space, tab and
/// obs-text; no other control character.
fn is_field_value(value: &[u8]) -> bool {
    const VALUE: [bool; 256] = {
        let mut t = [false; 256];
        let mut b = 0;
        while b < 256 {
            t[b] = (b >= 0x20 && b != 0x7f) || b == b'\t' as usize;
            b += 1;
        }
        t
    };
    value.iter().all(|&b| VALUE[b as usize])
}

/// A `:path` the own hop writes as it came: from the root, of RFC 3986's unreserved and
/// sub-delimiter characters, `:`, `@`, `/`, `?` and percent escapes only. `http`'s URI parser
/// accepts a few more (`"`, `{`, `}`, bytes above 127) and cuts a `#` off: those requests go
/// through it.
fn plain_path(path: &[u8]) -> bool {
    path.first() == Some(&b'/')
        && path.len() < u16::MAX as usize
        && path.iter().all(|&b| PATH[b as usize])
}

/// An answer's head as an HTTP/2 header block: `:status`, then its fields, less those that
/// belong to an HTTP/1 connection (§8.2.2: `Connection`, the fields it names, and the fixed
/// list). The `HeaderMap`'s names are lowercase already, as HTTP/2 requires (§8.2.1).
pub fn answer_block(out: &mut Vec<u8>, status: StatusCode, headers: &HeaderMap) {
    hpack::encode_status(out, status.as_u16());
    // RFC 9110 §6.6.1: an answer forwarded without `Date` gets one (hyper's HTTP/2 server
    // adds it too; the own hop adds it as it writes the fields).
    if !headers.contains_key(hyper::header::DATE) {
        hpack::encode_field(out, b"date", &crate::http::exchange::date_now());
    }
    let named: Vec<&[u8]> = headers
        .get_all(hyper::header::CONNECTION)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    for (name, value) in headers {
        let name = name.as_str();
        let listed = named.iter().any(|v| {
            v.split(|&b| b == b',')
                .any(|token| token.trim_ascii().eq_ignore_ascii_case(name.as_bytes()))
        });
        if CONNECTION_SPECIFIC.contains(&name) || listed {
            continue;
        }
        hpack::encode_field(out, name.as_bytes(), value.as_bytes());
    }
}

/// A trailer section as a header block: regular fields only.
pub fn trailers_block(out: &mut Vec<u8>, trailers: &HeaderMap) {
    for (name, value) in trailers {
        if !CONNECTION_SPECIFIC.contains(&name.as_str()) {
            hpack::encode_field(out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 64 * 1024;

    fn head(fields: &[(&str, &str)]) -> Result<Request<()>, Malformed> {
        let mut head = Head::request(MAX);
        for (n, v) in fields {
            head.field(n.as_bytes(), v.as_bytes());
        }
        head.into_request()
    }

    const GET: [(&str, &str); 4] = [
        (":method", "GET"),
        (":scheme", "https"),
        (":authority", "example.com"),
        (":path", "/a?b=c"),
    ];

    fn with(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
        GET.iter().chain(extra).copied().collect()
    }

    fn why(fields: &[(&str, &str)]) -> &'static str {
        head(fields).unwrap_err().why
    }

    #[test]
    fn a_request_becomes_what_hyper_would_hand_on() {
        let req = head(&with(&[
            ("accept", "*/*"),
            ("cookie", "a=1"),
            ("x-two", "1"),
            ("cookie", "b=2"),
            ("x-two", "2"),
            ("te", "trailers"),
        ]))
        .unwrap();
        assert_eq!(req.method(), Method::GET);
        assert_eq!(req.uri(), "https://example.com/a?b=c");
        assert_eq!(req.version(), Version::HTTP_2);
        // §8.2.3: the cookie crumbs joined for the HTTP/1 hop.
        assert_eq!(req.headers()["cookie"], "a=1; b=2");
        let twos: Vec<_> = req.headers().get_all("x-two").iter().collect();
        assert_eq!(twos, ["1", "2"]);
        // Without :authority, the target is the path alone (Host, if any, names the server).
        let req = head(&[(":method", "GET"), (":scheme", "http"), (":path", "/")]).unwrap();
        assert_eq!(req.uri(), "/");
        // OPTIONS * and CONNECT have their own forms (§8.3.1, §8.5).
        let options = [(":method", "OPTIONS"), (":scheme", "http"), (":path", "*")];
        assert_eq!(head(&options).unwrap().uri(), "*");
        let connect = [(":method", "CONNECT"), (":authority", "example.com:443")];
        assert_eq!(head(&connect).unwrap().uri(), "example.com:443");
    }

    /// RFC 9113 §8.2.1 and §8.2.2: what HTTP/1.1 would read as framing or as the end of a
    /// field never reaches it.
    #[test]
    fn fields_http1_would_read_otherwise_are_malformed() {
        for name in CONNECTION_SPECIFIC {
            assert_eq!(why(&with(&[(name, "x")])), "a connection-specific field");
        }
        assert_eq!(why(&with(&[("te", "gzip")])), "TE other than trailers");
        assert_eq!(why(&with(&[("Accept", "x")])), "an uppercase field name");
        assert_eq!(why(&with(&[("bad name", "x")])), "an invalid field name");
        for value in ["a\r\nx-injected: 1", "a\nb", "a\0b", " a", "a\t"] {
            let fields = with(&[("x-v", value)]);
            assert_eq!(
                why(&fields),
                "a field value with NUL, CR, LF or whitespace at an end"
            );
        }
        // The same rule holds for pseudo-header values.
        let mut fields = GET.to_vec();
        fields[3] = (":path", "/a\r\nHost: evil");
        assert_eq!(
            why(&fields),
            "a field value with NUL, CR, LF or whitespace at an end"
        );
    }

    /// RFC 9113 §8.3: pseudo-header fields first, each once, the request ones only.
    #[test]
    fn pseudo_header_fields_out_of_place_are_malformed() {
        let after = [("accept", "x"), (":path", "/")];
        assert_eq!(
            why(&[GET[0], GET[1], after[0], after[1]]),
            "a pseudo-header field after a regular one"
        );
        assert_eq!(
            why(&with(&[(":path", "/b")])),
            "a pseudo-header field twice"
        );
        let mut status = GET.to_vec();
        status.insert(0, (":status", "200"));
        assert_eq!(why(&status), "an unknown pseudo-header field");
        let mut protocol = GET.to_vec();
        protocol.insert(0, (":protocol", "websocket"));
        assert_eq!(why(&protocol), "an unknown pseudo-header field");
        assert_eq!(why(&GET[1..]), "no :method");
        assert_eq!(why(&[GET[0], GET[2], GET[3]]), "no :scheme");
        assert_eq!(why(&GET[..3]), "no :path");
        assert_eq!(why(&[GET[0], GET[1], (":path", "")]), "an empty :path");
        // A relative path is refused, by the URI parser or by §8.3.1's rule.
        let relative = head(&[GET[0], GET[1], (":path", "a")]).unwrap_err();
        assert_eq!(relative.status, StatusCode::BAD_REQUEST);
        assert_eq!(
            why(&[GET[0], GET[1], (":path", "*")]),
            "a :path that is not absolute"
        );
        let userinfo = [GET[0], GET[1], (":authority", "me@example.com"), GET[3]];
        assert_eq!(why(&userinfo), "userinfo in :authority");
        let connect = [
            (":method", "CONNECT"),
            (":authority", "a:1"),
            (":path", "/"),
        ];
        assert_eq!(why(&connect), ":scheme or :path in a CONNECT");
        // Trailers carry no pseudo-header field (§8.1).
        let mut trailers = Head::trailers(MAX);
        trailers.field(b"grpc-status", b"0");
        trailers.field(b":status", b"200");
        assert_eq!(
            trailers.into_trailers().unwrap_err().why,
            "a pseudo-header field in trailers"
        );
        let mut trailers = Head::trailers(MAX);
        trailers.field(b"grpc-status", b"0");
        assert_eq!(trailers.into_trailers().unwrap()["grpc-status"], "0");
    }

    /// The hop's head, or the head it left for the longer way.
    fn plain(fields: &[(&str, &str)], end_stream: bool) -> Result<Plain, Box<Head>> {
        let mut head = Head::request(MAX);
        for (n, v) in fields {
            head.field(n.as_bytes(), v.as_bytes());
        }
        head.plain(end_stream).ok_or(Box::new(head))
    }

    /// The own hop's head: the fields as they decoded, `host` first with `:authority`'s
    /// value (RFC 9113 §8.3.1), the client's `host` (equal to it) gone, the cookie crumbs
    /// joined at the end (§8.2.3), the rest in the client's order.
    #[test]
    fn a_plain_head_keeps_the_fields_as_they_decoded() {
        let got = plain(
            &with(&[
                ("x-two", "1"),
                ("cookie", "a=1"),
                ("host", "Example.com"),
                ("x-two", "2"),
                ("cookie", "b=2"),
                ("content-length", "0"),
                ("te", "trailers"),
            ]),
            true,
        )
        .ok()
        .expect("a plain head");
        let text = |(a, b): Span| std::str::from_utf8(&got.text[a..b]).unwrap();
        assert_eq!(got.method, Method::GET);
        assert_eq!(text(got.target), "/a?b=c");
        let fields: Vec<(&str, &str)> = got
            .fields
            .iter()
            .map(|&(n, v)| (text(n), text(v)))
            .collect();
        assert_eq!(
            fields,
            [
                ("host", "example.com"),
                ("x-two", "1"),
                ("x-two", "2"),
                ("content-length", "0"),
                ("te", "trailers"),
                ("cookie", "a=1; b=2"),
            ]
        );
    }

    /// What the hop leaves to hyper's way, where it is judged by the same rules as before: a
    /// body; CONNECT; a target that is not `http(s)://authority/path` in plain characters; a
    /// `Host` §8.3.1 or RFC 9110 §7.2 refuses; a length without DATA; a gRPC call (its
    /// failures are answered in gRPC's terms); and any malformed head.
    #[test]
    fn heads_the_hop_does_not_take_go_the_longer_way() {
        let longer = |fields: &[(&str, &str)], end_stream: bool| {
            plain(fields, end_stream)
                .err()
                .map(|head| head.into_request())
        };
        let carried = |fields: &[(&str, &str)], end_stream| {
            let request = longer(fields, end_stream).expect("the longer way");
            request.map(|r| r.uri().to_string()).map_err(|m| m.why)
        };
        assert!(plain(&GET, true).is_ok());
        assert_eq!(carried(&GET, false), Ok("https://example.com/a?b=c".into()));
        let mut path = GET.to_vec();
        for (p, uri) in [
            ("/json/{\"a\"}", "https://example.com/json/{\"a\"}"),
            ("/a#frag", "https://example.com/a"),
            ("/caf\u{e9}", "https://example.com/caf\u{e9}"),
            ("*", ""),
        ] {
            path[3] = (":path", p);
            match uri.is_empty() {
                true => assert_eq!(carried(&path, true), Err("a :path that is not absolute")),
                false => assert_eq!(carried(&path, true), Ok(uri.into())),
            }
        }
        let mut scheme = GET.to_vec();
        scheme[1] = (":scheme", "ftp");
        assert_eq!(carried(&scheme, true), Ok("ftp://example.com/a?b=c".into()));
        let connect = [(":method", "CONNECT"), (":authority", "example.com:443")];
        assert_eq!(carried(&connect, true), Ok("example.com:443".into()));
        // Judged by `HttpServer::request` (400), not here.
        for extra in [
            [("host", "other.example")],
            [("content-length", "5")],
            [("content-length", "x")],
            [("content-type", "application/grpc")],
        ] {
            assert!(carried(&with(&extra), true).is_ok(), "{extra:?}");
        }
        let two = with(&[("host", "example.com"), ("host", "example.com")]);
        assert!(carried(&two, true).is_ok());
        let mut authority = GET.to_vec();
        // `%`: RFC 3986 allows an escape in a host, `http`'s parser does not.
        for a in ["", "a b", "a/b", "t%20"] {
            authority[2] = (":authority", a);
            assert!(longer(&authority, true).is_some(), "{a:?}");
        }
        let no_authority = [GET[0], GET[1], GET[3], ("host", "example.com")];
        assert_eq!(carried(&no_authority, true), Ok("/a?b=c".into()));
        // Malformed: refused on the longer way, as before.
        assert_eq!(
            carried(&with(&[("x-v", "a\x7fb")]), true),
            Err("an invalid field value")
        );
        assert_eq!(
            carried(&with(&[("connection", "close")]), true),
            Err("a connection-specific field")
        );
    }

    /// §6.5.2's size of a list over `max-head`: 431, as an HTTP/1 head that large gets, and
    /// nothing more is kept of it while the block decodes to its end.
    #[test]
    fn a_list_over_the_bound_is_431() {
        let mut head = Head::request(200);
        for (n, v) in GET {
            head.field(n.as_bytes(), v.as_bytes());
        }
        for _ in 0..100 {
            head.field(b"x-big", &[b'v'; 50]);
        }
        assert!(head.text.is_empty() && head.fields.is_empty());
        let refused = head.into_request().unwrap_err();
        assert_eq!(refused.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    }

    #[test]
    fn an_answer_loses_what_belonged_to_its_http1_connection() {
        let mut headers = HeaderMap::new();
        for (n, v) in [
            ("content-type", "text/plain"),
            ("connection", "keep-alive, x-hop"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("x-hop", "1"),
            ("upgrade", "h2c"),
            ("proxy-connection", "close"),
            ("x-served-by", "b1"),
            ("date", "Mon, 07 Dec 2026 00:00:00 GMT"),
        ] {
            headers.append(n, HeaderValue::from_static(v));
        }
        assert_eq!(
            decoded(&headers),
            [
                ":status: 200",
                "content-type: text/plain",
                "x-served-by: b1",
                "date: Mon, 07 Dec 2026 00:00:00 GMT",
            ]
        );
    }

    fn decoded(headers: &HeaderMap) -> Vec<String> {
        let mut block = Vec::new();
        answer_block(&mut block, StatusCode::OK, headers);
        let mut decoded = Vec::new();
        hpack::Decoder::new(hpack::DEFAULT_TABLE_SIZE)
            .decode(&block, |n, v| {
                decoded.push(format!(
                    "{}: {}",
                    String::from_utf8_lossy(n),
                    String::from_utf8_lossy(v)
                ))
            })
            .unwrap();
        decoded
    }

    /// RFC 9110 §6.6.1: an answer forwarded without `Date` gets one, once.
    #[test]
    fn an_answer_without_a_date_gets_one() {
        let got = decoded(&HeaderMap::new());
        assert_eq!(got.len(), 2, "{got:?}");
        let date = got[1].strip_prefix("date: ").expect("a date");
        assert!(httpdate::parse_http_date(date).is_ok(), "{date}");
    }
}

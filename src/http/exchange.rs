//! The decisions of one HTTP exchange, made once for both of `http-lb`'s HTTP/1 codecs
//! (chapter 12): hyper's, and the balancer's own (`http::h1`).
//!
//! A proxy that reads HTTP and a backend that reads HTTP must agree, byte for byte, on where
//! each message ends. Where they disagree, an attacker gets a request past the proxy inside
//! another one's body (*request smuggling*), or makes the backend's answers shift by one so
//! that a user receives someone else's (*response desync*). Every rule here closes one such
//! gap, and cites the RFC section it comes from:
//!
//! * **framing is decided once, from what was received, before any field is edited**
//!   ([`request_framing`], [`response_framing`]; RFC 9112 §6.1–6.3): `Content-Length` is digits
//!   and nothing else (`+5`, `5 `+U+00A0 and `0x5` are refused), two different lengths are
//!   refused, a length beside `Transfer-Encoding` is refused, and a transfer coding other than
//!   a final `chunked` is refused in a request. What the next hop receives is then framed by
//!   us: no field the client names in `Connection` can take its length away
//!   ([`PROTECTED`]);
//! * **the target and `Host` are checked** ([`check_target`]; RFC 9112 §3.2): exactly one
//!   valid `Host`, no userinfo, an authority-form target only for `CONNECT`, which a balancer
//!   does not tunnel (501);
//! * **a request is sent twice only when that is safe** ([`after`]; RFC 9110 §9.2.2, RFC 9112
//!   §9.3.1): one that was never written may go again; one that was written may have been acted
//!   on, and only an idempotent request without a body is repeated;
//! * **each failure is one status**, in one place ([`Failure::status`]): the client's errors
//!   are 4xx, the backend's 5xx.

use std::cell::Cell;
use std::time::{SystemTime, UNIX_EPOCH};

use hyper::{Method, StatusCode};

/// Fields that `Connection` can never remove (RFC 9110 §7.6.1 lets a sender name any field
/// as hop-by-hop, but these frame and route the message, so naming them is an attack, not a
/// wish): the framing fields are removed and written again by us in any case.
pub const PROTECTED: [&str; 3] = ["host", "content-length", "transfer-encoding"];

/// How a message's body ends (RFC 9112 §6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyLength {
    /// No body: a request without framing fields, or an answer that never has one (to
    /// `HEAD`, 1xx, 204, 304).
    Empty,
    Length(u64),
    Chunked,
    /// Until the connection closes: an answer without a length, or whose last transfer
    /// coding is not `chunked`.
    UntilClose,
}

/// A request refused before it reached a backend: the client's error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refused {
    pub status: StatusCode,
    pub why: &'static str,
}

fn bad(why: &'static str) -> Refused {
    Refused {
        status: StatusCode::BAD_REQUEST,
        why,
    }
}

/// RFC 9110 §8.6: `Content-Length = 1*DIGIT`, with optional whitespace (SP, HTAB) around
/// it. Rust's `u64::from_str` accepts `+5`, so it is not used here.
pub fn content_length(value: &[u8]) -> Option<u64> {
    let digits = trim_ows(value);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    digits.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// What a message's framing fields say, before any rule for requests or answers.
#[derive(Default)]
struct Framing {
    /// The one length all `Content-Length` values agree on; `Err` when they do not, or one is
    /// not a length.
    length: Option<Result<u64, ()>>,
    /// `Transfer-Encoding` was present.
    coded: bool,
    /// Its last coding is `chunked`, and `chunked` appears only there.
    chunked_last: bool,
    /// `chunked` appears other than last, or more than once.
    chunked_misplaced: bool,
    /// A coding other than chunked is named (`gzip, chunked`).
    other_coding: bool,
}

fn framing<'a>(fields: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> Framing {
    let mut f = Framing::default();
    let mut codings: Vec<&[u8]> = Vec::new();
    for (name, value) in fields {
        if name.eq_ignore_ascii_case(b"content-length") {
            // Field lines that repeat one length are that length (RFC 9110 §8.6 allows it, and
            // hyper does it); any other pair is an error. So is a list in one line (`5, 5`):
            // §8.6 lets a recipient take it as one length or refuse it, and hyper refuses
            // it, so every path here does too (a hand-written path is at least as strict as
            // the library beside it).
            let n = content_length(value).ok_or(());
            f.length = Some(match (f.length, n) {
                (None, n) => n,
                (Some(Ok(a)), Ok(b)) if a == b => Ok(a),
                _ => Err(()),
            });
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            f.coded = true;
            codings.extend(value.split(|&b| b == b',').map(trim_ows));
        }
    }
    let chunked: Vec<usize> = (0..codings.len())
        .filter(|&i| codings[i].eq_ignore_ascii_case(b"chunked"))
        .collect();
    f.chunked_last = chunked.len() == 1 && chunked[0] + 1 == codings.len();
    f.chunked_misplaced = !chunked.is_empty() && !f.chunked_last;
    // Empty list items are allowed (RFC 9110 §5.6.1) and name nothing.
    f.other_coding = codings
        .iter()
        .any(|c| !c.is_empty() && !c.eq_ignore_ascii_case(b"chunked"));
    f
}

/// The one length a message's `Content-Length` fields agree on, if they do (field lines that
/// repeat one length are that length, RFC 9110 §8.6). Whether the framing is valid at all is
/// [`request_framing`]'s question; this is the length every hop must then read alike.
pub fn declared_length<'a>(fields: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> Option<u64> {
    framing(fields).length?.ok()
}

/// A request's framing, from its fields as received (RFC 9112 §6.1–6.3). Every ambiguity is
/// refused with 400, and RFC 9112 §6.1 asks that such a connection be closed after the answer.
pub fn request_framing<'a>(
    fields: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
) -> Result<BodyLength, Refused> {
    let f = framing(fields);
    match (f.coded, f.length) {
        // RFC 9112 §6.1: a server MAY reject a request with both; one in front of another
        // server must, or forward only one of them and hope both hops read it alike.
        (true, Some(_)) => Err(bad("both Content-Length and Transfer-Encoding")),
        // RFC 9112 §6.3 (rule 4): a request whose last coding is not chunked cannot be framed.
        (true, None) if !f.chunked_last => Err(bad("Transfer-Encoding without a final chunked")),
        (true, None) => Ok(BodyLength::Chunked),
        (false, Some(Err(()))) => Err(bad("invalid Content-Length")),
        (false, Some(Ok(0))) | (false, None) => Ok(BodyLength::Empty),
        (false, Some(Ok(n))) => Ok(BodyLength::Length(n)),
    }
}

/// An answer's framing (RFC 9112 §6.3), for a request with `method`. `Err` is the backend's
/// error: 502, and its connection is not used again.
pub fn response_framing<'a>(
    status: StatusCode,
    method: &Method,
    fields: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
) -> Result<BodyLength, &'static str> {
    let f = framing(fields);
    // Checked even where the length is not used (HEAD, 304): a backend that writes an
    // invalid length is not one to trust with the next request either.
    let length = match (f.coded, f.length) {
        // RFC 9112 §6.3 (rule 3) lets Transfer-Encoding win, "but ought to be handled as an
        // error": a backend that sends both is broken or being used for response splitting.
        (true, Some(_)) => return Err("both Content-Length and Transfer-Encoding"),
        (_, Some(Err(()))) => return Err("invalid Content-Length"),
        (true, None) if f.chunked_misplaced => return Err("chunked is not the last coding"),
        (_, Some(Ok(n))) => Some(n),
        (_, None) => None,
    };
    if *method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(BodyLength::Empty);
    }
    Ok(match (f.coded, length) {
        // Only chunked is undone on the way: hyper's server and HTTP/2 (RFC 9113 §8.2.2) frame
        // the content anew, and it would reach the client still coded, with nothing left to
        // say so (RFC 9112 §6.1). nginx refuses the same ("upstream sent unknown
        // Transfer-Encoding"); so do both paths, for every client alike.
        (true, _) if f.other_coding => return Err("a transfer coding other than chunked"),
        (true, _) if f.chunked_last => BodyLength::Chunked,
        (true, _) | (false, None) => BodyLength::UntilClose,
        (false, Some(0)) => BodyLength::Empty,
        (false, Some(n)) => BodyLength::Length(n),
    })
}

/// A request target's form (RFC 9112 §3.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target<'a> {
    /// `/path?query`
    Origin,
    /// `http://authority/path`: the authority as written (userinfo included, to be refused).
    Absolute(&'a [u8]),
    /// `host:port`: only `CONNECT` uses it.
    Authority,
    /// `*`: only `OPTIONS` uses it.
    Asterisk,
    /// Anything else (`GET f515`).
    Invalid,
}

impl<'a> Target<'a> {
    /// The form of a target as the request line wrote it.
    pub fn of(target: &'a str) -> Target<'a> {
        if target.starts_with('/') {
            return Target::Origin;
        }
        if target == "*" {
            return Target::Asterisk;
        }
        if let Some((scheme, rest)) = target.split_once("://") {
            let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
            if scheme_ok {
                let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
                return Target::Absolute(&rest.as_bytes()[..end]);
            }
            return Target::Invalid;
        }
        // host:port with nothing else
        if target.contains(':') && !target.contains(['/', '?', '#', '@']) {
            return Target::Authority;
        }
        Target::Invalid
    }
}

/// RFC 9112 §3.2 and RFC 9110 §7.2: the request's target and its `Host` fields (`http11`:
/// the request is HTTP/1.1, for which `Host` is required).
pub fn check_target<'a>(
    method: &Method,
    target: Target<'_>,
    hosts: impl IntoIterator<Item = &'a [u8]>,
    http11: bool,
) -> Result<(), Refused> {
    // RFC 9110 §9.3.6: CONNECT asks for a tunnel to any address, which a balancer in front
    // of its own backends does not offer (HAProxy and nginx refuse it too).
    if *method == Method::CONNECT {
        return Err(Refused {
            status: StatusCode::NOT_IMPLEMENTED,
            why: "CONNECT is not supported",
        });
    }
    match target {
        Target::Origin => {}
        Target::Asterisk if *method == Method::OPTIONS => {}
        Target::Absolute(authority) => {
            // RFC 9110 §4.2.4: userinfo in an http(s) URI is an error; forwarded, it would
            // become the Host the backend reads.
            if authority.contains(&b'@') || !valid_host(authority) || authority.is_empty() {
                return Err(bad("invalid authority in the request target"));
            }
        }
        Target::Asterisk | Target::Authority | Target::Invalid => {
            return Err(bad("invalid request target"));
        }
    }
    let mut count = 0;
    for host in hosts {
        count += 1;
        if count > 1 {
            return Err(bad("more than one Host"));
        }
        if !valid_host(trim_ows(host)) {
            return Err(bad("invalid Host"));
        }
    }
    if count == 0 && http11 {
        return Err(bad("no Host in an HTTP/1.1 request"));
    }
    Ok(())
}

/// `Host = uri-host [ ":" port ]` (RFC 9110 §7.2, RFC 3986 §3.2.2): a registered name of
/// unreserved, percent-encoded and sub-delimiter characters, or an IP literal in brackets,
/// and digits after the colon. No `/`, `@`, space or anything else that would make the next
/// hop read another host. Empty is valid (a target without an authority).
pub fn valid_host(host: &[u8]) -> bool {
    let (name, port) = match host.first() {
        Some(b'[') => match host.iter().position(|&b| b == b']') {
            Some(end) => {
                let literal = &host[1..end];
                if literal.is_empty()
                    || !literal
                        .iter()
                        .all(|&b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'))
                {
                    return false;
                }
                (&host[..0], &host[end + 1..])
            }
            None => return false,
        },
        _ => match host.iter().position(|&b| b == b':') {
            Some(colon) => (&host[..colon], &host[colon..]),
            None => (host, &host[..0]),
        },
    };
    let name_ok = name.iter().all(|&b| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'%'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            )
    });
    let port_ok = match port {
        [] => true,
        [b':', digits @ ..] => digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit),
        _ => false,
    };
    name_ok && port_ok
}

/// RFC 9110 §9.2.2: methods whose effect is the same sent once or twice.
pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// What went wrong on one attempt to get an answer from a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The backend could not be reached: nothing was sent.
    Dial,
    /// A pooled connection was found closed before any byte of the request was written.
    Unsent,
    /// The connection closed or reset after the request (or part of it) was written and
    /// before any byte of an answer came back.
    NoAnswer,
    /// An answer that is not HTTP, is framed ambiguously, or was cut short.
    BadAnswer,
    /// No answer within `response-timeout` of the request's end.
    Timeout,
    /// The client's body broke its own framing (a bad chunk), or ended early.
    ClientBody,
    /// The client paused in the middle of its body for longer than the body's idle limit.
    ClientStalled,
    /// The client's body went past `max-body`.
    TooLarge,
}

impl Failure {
    /// The one status each failure is answered with, when no attempt is left: the client's
    /// errors are 4xx, the backend's 5xx (RFC 9110 §15.5, §15.6).
    pub fn status(self) -> StatusCode {
        match self {
            Failure::Dial | Failure::Unsent | Failure::NoAnswer | Failure::BadAnswer => {
                StatusCode::BAD_GATEWAY
            }
            Failure::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Failure::ClientBody => StatusCode::BAD_REQUEST,
            Failure::ClientStalled => StatusCode::REQUEST_TIMEOUT,
            Failure::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        }
    }
}

/// What one request does after a failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// The same backend again, on a connection dialled now (not one from the pool).
    Fresh,
    /// Another backend, if the strategy has one left.
    Another,
    /// No more attempts: answer with this status.
    Answer(StatusCode),
}

/// The retry rule, for both codecs. `reused`: the attempt was on a pooled connection;
/// `replayable`: the request is idempotent and has no body we would have had to keep.
///
/// * Nothing was sent (a dial failed, a pooled connection was found closed): any request may
///   go again, as nothing reached a backend.
/// * The request was written and nothing came back: RFC 9112 §9.3.1 says a proxy MUST NOT
///   automatically retry a request that is not idempotent, since the backend may have acted on
///   it before it closed; an idempotent one goes again, on a fresh connection to the same
///   backend when the one that failed was pooled (the keep-alive race: a backend closing an
///   idle connection as we reuse it), else to another backend.
/// * Anything else is final.
pub fn after(failure: Failure, reused: bool, replayable: bool) -> Next {
    match failure {
        Failure::Dial => Next::Another,
        Failure::Unsent if reused => Next::Fresh,
        Failure::NoAnswer if replayable && reused => Next::Fresh,
        Failure::NoAnswer if replayable => Next::Another,
        other => Next::Answer(other.status()),
    }
}

thread_local! {
    /// The `Date` of the current second, and that second.
    static DATE: Cell<(u64, [u8; 29])> = const { Cell::new((0, [0; 29])) };
}

/// Now as a `Date` value (RFC 9110 §5.6.7's IMF-fixdate), which a recipient with a clock adds
/// to an answer it forwards without one (§6.6.1). Formatted once a second on each thread, as
/// hyper's server does, rather than for every answer.
pub fn date_now() -> [u8; 29] {
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with(|date| {
        let (at, text) = date.get();
        if at == second && at != 0 {
            return text;
        }
        // IMF-fixdate is 29 bytes until the year 9999.
        let text = <[u8; 29]>::try_from(httpdate::fmt_http_date(now).as_bytes()).unwrap_or(text);
        date.set((second, text));
        text
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields<'a>(pairs: &'a [(&'a str, &'a str)]) -> Vec<(&'a [u8], &'a [u8])> {
        pairs
            .iter()
            .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
            .collect()
    }

    /// RFC 9110 §8.6: digits only.
    #[test]
    fn a_content_length_is_digits_and_nothing_else() {
        assert_eq!(content_length(b"35"), Some(35));
        assert_eq!(content_length(b" 35\t"), Some(35));
        assert_eq!(content_length(b"0"), Some(0));
        for bad in [
            &b"+35"[..],
            b"-1",
            b"35 35",
            b"0x10",
            b"3_5",
            b"",
            b" ",
            "35\u{a0}".as_bytes(),
            "\u{a0}35".as_bytes(),
            b"18446744073709551616",
        ] {
            assert_eq!(
                content_length(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(content_length(b"18446744073709551615"), Some(u64::MAX));
    }

    /// RFC 9112 §6.1–6.3, requests.
    #[test]
    fn a_request_is_framed_one_way_or_refused() {
        let f = |pairs: &[(&str, &str)]| request_framing(fields(pairs));
        assert_eq!(f(&[]), Ok(BodyLength::Empty));
        assert_eq!(f(&[("Content-Length", "5")]), Ok(BodyLength::Length(5)));
        assert_eq!(
            f(&[("content-length", "5"), ("content-length", "5")]),
            Ok(BodyLength::Length(5))
        );
        // RFC 9110 §8.6 allows refusing a list in one line; hyper does, and so do we.
        assert!(f(&[("content-length", "5, 5")]).is_err());
        assert!(f(&[("content-length", "5,5")]).is_err());
        assert_eq!(
            f(&[("transfer-encoding", "chunked")]),
            Ok(BodyLength::Chunked)
        );
        assert_eq!(
            f(&[
                ("transfer-encoding", "gzip"),
                ("transfer-encoding", "chunked")
            ]),
            Ok(BodyLength::Chunked)
        );
        for refused in [
            &[("content-length", "5"), ("content-length", "6")][..],
            &[("content-length", "5, 6")],
            &[("content-length", "+5")],
            &[("content-length", "5"), ("transfer-encoding", "chunked")],
            &[("transfer-encoding", "gzip")],
            &[("transfer-encoding", "chunked, gzip")],
            &[("transfer-encoding", "chunked, chunked")],
            &[("transfer-encoding", "xchunked")],
        ] {
            let got = f(refused);
            assert!(
                got.as_ref().is_err_and(|r| r.status == 400),
                "{refused:?}: {got:?}"
            );
        }
    }

    /// RFC 9112 §6.3, answers.
    #[test]
    fn an_answer_is_framed_one_way_or_is_the_backends_error() {
        let get = Method::GET;
        let ok = StatusCode::OK;
        let f = |status, method: &Method, pairs: &[(&str, &str)]| {
            response_framing(status, method, fields(pairs))
        };
        assert_eq!(
            f(ok, &get, &[("content-length", "5")]),
            Ok(BodyLength::Length(5))
        );
        assert_eq!(f(ok, &get, &[]), Ok(BodyLength::UntilClose));
        assert_eq!(
            f(ok, &get, &[("transfer-encoding", "chunked")]),
            Ok(BodyLength::Chunked)
        );
        // An empty list item names nothing (RFC 9110 §5.6.1).
        assert_eq!(
            f(ok, &get, &[("transfer-encoding", ", chunked")]),
            Ok(BodyLength::Chunked)
        );
        // Only chunked is undone on the way (RFC 9112 §6.1): another coding is 502, where
        // RFC 9112 §6.3 would read `gzip` alone until the close.
        for coded in ["gzip, chunked", "gzip", "chunked\u{ff}"] {
            assert!(
                f(ok, &get, &[("transfer-encoding", coded)]).is_err(),
                "{coded}"
            );
            assert_eq!(
                f(ok, &Method::HEAD, &[("transfer-encoding", coded)]),
                Ok(BodyLength::Empty),
                "HEAD {coded}"
            );
        }
        assert_eq!(
            f(ok, &Method::HEAD, &[("content-length", "1000")]),
            Ok(BodyLength::Empty)
        );
        assert_eq!(
            f(StatusCode::NOT_MODIFIED, &get, &[("content-length", "9")]),
            Ok(BodyLength::Empty)
        );
        assert_eq!(f(StatusCode::NO_CONTENT, &get, &[]), Ok(BodyLength::Empty));
        for bad in [
            &[("content-length", "5"), ("transfer-encoding", "chunked")][..],
            &[("content-length", "+5")],
            &[("content-length", "5"), ("content-length", "6")],
            &[("transfer-encoding", "chunked, gzip")],
        ] {
            assert!(f(ok, &get, bad).is_err(), "{bad:?}");
            assert!(f(ok, &Method::HEAD, bad).is_err(), "HEAD {bad:?}");
        }
    }

    /// RFC 9112 §3.2.
    #[test]
    fn a_target_and_its_host_are_checked() {
        let get = Method::GET;
        let one = |h: &'static str| vec![h.as_bytes()];
        let check = |method: &Method, target: &str, hosts: Vec<&[u8]>| {
            check_target(method, Target::of(target), hosts, true).map_err(|r| r.status.as_u16())
        };
        assert_eq!(check(&get, "/a?b", one("example.com")), Ok(()));
        assert_eq!(check(&get, "/", one("example.com:8080")), Ok(()));
        assert_eq!(check(&get, "/", one("[::1]:80")), Ok(()));
        assert_eq!(check(&get, "/", one("127.0.0.1")), Ok(()));
        assert_eq!(check(&get, "/", one("")), Ok(()));
        assert_eq!(check(&get, "http://example.com/x", one("other")), Ok(()));
        assert_eq!(check(&Method::OPTIONS, "*", one("x")), Ok(()));
        // Missing, twice, or not a host.
        assert_eq!(check(&get, "/", vec![]), Err(400));
        assert!(check_target(&get, Target::Origin, Vec::<&[u8]>::new(), false).is_ok());
        assert_eq!(check(&get, "/", vec![b"a", b"b"]), Err(400));
        assert_eq!(check(&get, "/", vec![b"a", b"a"]), Err(400));
        for host in [
            "evil.example/x@good",
            "a b",
            "user@host",
            "host:port",
            "host:123456",
            "[::1",
            "[zz]",
        ] {
            assert_eq!(check(&get, "/", one(host)), Err(400), "{host}");
        }
        // Targets: userinfo, authority form, garbage, asterisk for GET.
        assert_eq!(check(&get, "http://user@good/", one("good")), Err(400));
        assert_eq!(check(&get, "http:///x", one("good")), Err(400));
        assert_eq!(check(&get, "f515", one("x")), Err(400));
        assert_eq!(check(&get, "example.com:80", one("x")), Err(400));
        assert_eq!(check(&get, "*", one("x")), Err(400));
        assert_eq!(
            check(&Method::CONNECT, "example.com:443", one("x")),
            Err(501)
        );
    }

    /// The retry rule as a table: fresh or reused connection × written or not × replayable.
    #[test]
    fn a_request_goes_twice_only_when_that_is_safe() {
        use Failure::*;
        let gateway = Next::Answer(StatusCode::BAD_GATEWAY);
        let table = [
            // failure, reused, replayable (idempotent, no body) → next
            (Dial, false, false, Next::Another),
            (Dial, false, true, Next::Another),
            (Unsent, true, false, Next::Fresh),
            (Unsent, true, true, Next::Fresh),
            (Unsent, false, true, gateway),
            // Written, nothing came back: never again unless replayable (RFC 9112 §9.3.1).
            (NoAnswer, true, false, gateway),
            (NoAnswer, false, false, gateway),
            (NoAnswer, true, true, Next::Fresh),
            (NoAnswer, false, true, Next::Another),
            (BadAnswer, true, true, gateway),
            (
                Timeout,
                true,
                true,
                Next::Answer(StatusCode::GATEWAY_TIMEOUT),
            ),
            (
                ClientBody,
                false,
                false,
                Next::Answer(StatusCode::BAD_REQUEST),
            ),
            (
                ClientStalled,
                true,
                false,
                Next::Answer(StatusCode::REQUEST_TIMEOUT),
            ),
            (
                TooLarge,
                false,
                false,
                Next::Answer(StatusCode::PAYLOAD_TOO_LARGE),
            ),
        ];
        for (failure, reused, replayable, next) in table {
            assert_eq!(
                after(failure, reused, replayable),
                next,
                "{failure:?} reused={reused} replayable={replayable}"
            );
        }
        assert!(!is_idempotent(&Method::POST) && !is_idempotent(&Method::PATCH));
        assert!(is_idempotent(&Method::PUT) && is_idempotent(&Method::GET));
    }
}

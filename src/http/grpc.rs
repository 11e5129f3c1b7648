//! gRPC through the balancer (chapter 17). A gRPC call is an HTTP/2 request (`POST
//! /package.Service/Method`, `content-type: application/grpc`) whose outcome is in its
//! trailers (`grpc-status`, `grpc-message`), not in its HTTP status. Most of it needs nothing
//! from us but HTTP/2 end to end: bodies stream both ways and trailers pass (`h2c://` or
//! `h2://` backends). Two things do:
//!
//! * **a failure of ours is a gRPC status**, not an HTML page or a 502 a gRPC client would
//!   report as "protocol error": a 200 with `grpc-status` and `grpc-message` in its head and no
//!   body (gRPC's "Trailers-Only" answer), by gRPC's own table from HTTP statuses
//!   (`doc/http-grpc-status-mapping.md` in gRPC's repository): 503, 502 and 504 are
//!   `UNAVAILABLE` (14), which gRPC clients may retry;
//! * **the call's deadline** (`grpc-timeout`) bounds our wait for the backend too, when it is
//!   shorter than `response-timeout`: past it the caller has given up, and the answer is
//!   `DEADLINE_EXCEEDED` (4).

use std::time::Duration;

use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Response, StatusCode};

use super::body::Download;

/// Whether a request is a gRPC call: `application/grpc`, alone or with a `+format` suffix
/// (gRPC-Web, `application/grpc-web`, is another protocol and is left alone).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .map(HeaderValue::as_bytes)
        .is_some_and(is_grpc_type)
}

/// Whether a `Content-Type` value is gRPC's (see [`is_grpc`]).
pub fn is_grpc_type(value: &[u8]) -> bool {
    let v = value
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    v.eq_ignore_ascii_case(b"application/grpc")
        || (v.len() > 17 && v[..17].eq_ignore_ascii_case(b"application/grpc+"))
}

/// `grpc-timeout`: at most 8 digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`); `None` for
/// anything else, which gRPC servers treat as no deadline too.
pub fn deadline(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.as_bytes();
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// gRPC's status for an HTTP status of ours (gRPC's mapping table; a 504 under the call's own
/// deadline is `DEADLINE_EXCEEDED`).
fn status_for(status: StatusCode, had_deadline: bool) -> u8 {
    match status.as_u16() {
        504 if had_deadline => 4,
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        413 | 431 => 8,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    }
}

/// Turns an answer of the balancer's own (`HttpServer::local`) to a gRPC call into gRPC's
/// Trailers-Only form: 200, `content-type: application/grpc`, the status and message in the
/// head, no body.
pub fn answer_in_grpc(response: &mut Response<Download>, had_deadline: bool) {
    let status = response.status();
    let code = status_for(status, had_deadline);
    let message = super::balancer::local_text(status).trim_end();
    *response.status_mut() = StatusCode::OK;
    response.body_mut().empty();
    let headers = response.headers_mut();
    headers.remove(header::CONTENT_LENGTH);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", HeaderValue::from(u16::from(code)));
    // Percent-encoding is for bytes outside printable ASCII: these texts have none.
    if let Ok(message) = HeaderValue::from_str(message) {
        headers.insert("grpc-message", message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(name: &'static str, value: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_static(value));
        h
    }

    #[test]
    fn calls_and_deadlines_are_read_as_grpc_writes_them() {
        assert!(is_grpc(&fields("content-type", "application/grpc")));
        assert!(is_grpc(&fields("content-type", "application/grpc+proto")));
        assert!(is_grpc(&fields(
            "content-type",
            "Application/GRPC; charset=x"
        )));
        assert!(!is_grpc(&fields("content-type", "application/grpc-web")));
        assert!(!is_grpc(&fields("content-type", "application/json")));
        assert!(!is_grpc(&HeaderMap::new()));
        let d = |v| deadline(&fields("grpc-timeout", v));
        assert_eq!(d("100m"), Some(Duration::from_millis(100)));
        assert_eq!(d("2S"), Some(Duration::from_secs(2)));
        assert_eq!(d("1H"), Some(Duration::from_secs(3600)));
        for bad in ["", "m", "123456789m", "10x", "-1S", "1.5S", " 1S"] {
            assert_eq!(d(bad), None, "{bad:?}");
        }
        assert_eq!(status_for(StatusCode::SERVICE_UNAVAILABLE, false), 14);
        assert_eq!(status_for(StatusCode::GATEWAY_TIMEOUT, true), 4);
        assert_eq!(status_for(StatusCode::GATEWAY_TIMEOUT, false), 14);
    }
}

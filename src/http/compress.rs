//! Compressing responses on their way to the client (chapter 16, seed 002's "compression"):
//! gzip, brotli or zstd, whichever the client prefers, streamed frame by frame.
//!
//! A backend that sends text uncompressed (many do: compression is left to the front) costs
//! the user bandwidth and time; the proxy compresses once for every backend. The rules are
//! nginx's `gzip` module's, and each guards against a real breakage:
//!
//! * only what the client accepts, by its `Accept-Encoding` q-values (`br;q=1, gzip;q=0.5`);
//!   on a tie, brotli, then zstd, then gzip (smallest text first);
//! * only compressible types (text, JSON, JavaScript, XML, SVG, WebAssembly): a JPEG or a zip
//!   only grows;
//! * never a body already encoded, never under `Cache-Control: no-transform`, never a `206` or
//!   a request with `Range` (the byte offsets would be of the wrong representation), never a
//!   body known to be smaller than the minimum (the headers outweigh the gain);
//! * `Vary: Accept-Encoding` on every response that could have been compressed, so a cache in
//!   between keeps the two versions apart; a strong `ETag` made weak, since the bytes differ;
//! * streamed: each frame from the backend goes through the encoder as it arrives, and what
//!   the encoder has produced goes out; when the backend pauses, the encoder is flushed, so a
//!   slow stream (server-sent events) is not held back. Memory does not grow with the body.

use std::io::{self, Write as _};

use bytes::Bytes;
use hyper::HeaderMap;
use hyper::header::{self, HeaderValue};

use super::body::{Compressing, Payload};

/// What a request allows its answer to be compressed with: decided from the request before it
/// is passed on, applied to the answer's head once it comes ([`Wanted::payload`]).
#[derive(Clone, Copy)]
pub struct Wanted {
    coding: Option<Coding>,
    range: bool,
    head: bool,
    min: u64,
}

impl Wanted {
    /// For `request`, with `--compress`'s smallest size `min`.
    pub fn of(request: &hyper::http::request::Parts, min: u64) -> Wanted {
        Wanted {
            coding: negotiate(request.headers.get(header::ACCEPT_ENCODING)),
            range: request.headers.contains_key(header::RANGE),
            head: request.method == hyper::Method::HEAD,
            min,
        }
    }

    /// The backend's `body` as the client gets it: compressed as it streams where the rules
    /// allow (its head then says so: `Content-Encoding`, `Vary`, no length), else as it is.
    pub fn payload(
        self,
        head: &mut hyper::http::response::Parts,
        body: hyper::body::Incoming,
        tally: &std::sync::Arc<super::metrics::Compression>,
    ) -> Payload {
        if !applies(head.status, &head.headers, self.range, self.head, self.min) {
            return Payload::Upstream(body);
        }
        vary(&mut head.headers);
        match self.coding.map(|coding| (coding, Encoder::new(coding))) {
            Some((coding, Ok(encoder))) => {
                encode_headers(&mut head.headers, coding);
                Payload::Compressed(Box::new(Compressing::new(
                    body,
                    encoder,
                    std::sync::Arc::clone(tally),
                )))
            }
            _ => Payload::Upstream(body),
        }
    }
}

/// The codings offered, in the order preferred on a tie.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Coding {
    Brotli,
    Zstd,
    Gzip,
}

impl Coding {
    pub fn token(self) -> &'static str {
        match self {
            Coding::Brotli => "br",
            Coding::Zstd => "zstd",
            Coding::Gzip => "gzip",
        }
    }
}

/// Bodies known to be smaller than this are sent as they are, unless configured.
pub const DEFAULT_MIN_SIZE: u64 = 256;

/// The coding the client prefers among those offered, by `Accept-Encoding`; `None` for none
/// acceptable (or no header: identity only).
pub fn negotiate(accept: Option<&HeaderValue>) -> Option<Coding> {
    let accept = accept?.to_str().ok()?;
    let mut star: Option<f32> = None;
    let mut q = [None::<f32>; 3];
    for item in accept.split(',') {
        let mut parts = item.split(';');
        let token = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let weight = parts
            // The parameter's name is case-insensitive (RFC 9110 §12.4.2): `Q=0` is `q=0`.
            .find_map(|p| {
                let p = p.trim();
                let q = p.get(..2).filter(|n| n.eq_ignore_ascii_case("q="))?;
                Some(p[q.len()..].trim())
            })
            .map_or(Some(1.0), |v| v.parse::<f32>().ok())
            .unwrap_or(0.0);
        match token.as_str() {
            "br" => q[0] = Some(weight),
            "zstd" => q[1] = Some(weight),
            "gzip" | "x-gzip" => q[2] = Some(weight),
            "*" => star = Some(weight),
            _ => {}
        }
    }
    let codings = [Coding::Brotli, Coding::Zstd, Coding::Gzip];
    let mut best: Option<(Coding, f32)> = None;
    for (coding, weight) in codings.iter().zip(q) {
        let weight = weight.or(star).unwrap_or(0.0);
        if weight > 0.0 && best.is_none_or(|(_, b)| weight > b) {
            best = Some((*coding, weight));
        }
    }
    best.map(|(c, _)| c)
}

/// Whether a response with these headers may be compressed for a request that asked for a
/// `range` or not. `min_size` applies when the length is known.
pub fn applies(
    status: hyper::StatusCode,
    headers: &HeaderMap,
    range: bool,
    head: bool,
    min_size: u64,
) -> bool {
    if head || range || status != hyper::StatusCode::OK {
        return false;
    }
    if headers.contains_key(header::CONTENT_ENCODING) || headers.contains_key(header::CONTENT_RANGE)
    {
        return false;
    }
    let no_transform = headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("no-transform"));
    if no_transform {
        return false;
    }
    let small = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .is_some_and(|len| len < min_size);
    !small && headers.get(header::CONTENT_TYPE).is_some_and(compressible)
}

/// Text and the structured formats that compress well; not images, audio, video or archives,
/// which are compressed already.
fn compressible(content_type: &HeaderValue) -> bool {
    let Ok(t) = content_type.to_str() else {
        return false;
    };
    let t = t
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    t.starts_with("text/")
        || t.ends_with("+json")
        || t.ends_with("+xml")
        || matches!(
            t.as_str(),
            "application/json"
                | "application/javascript"
                | "application/x-javascript"
                | "application/xml"
                | "application/wasm"
                | "image/svg+xml"
                | "application/manifest+json"
        )
}

/// Rewrites the response head for `coding`: `Content-Encoding`, no `Content-Length` (the
/// length is not known until the end; the body goes chunked), a weak `ETag`.
pub fn encode_headers(headers: &mut HeaderMap, coding: Coding) {
    headers.insert(
        header::CONTENT_ENCODING,
        HeaderValue::from_static(coding.token()),
    );
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::ACCEPT_RANGES);
    if let Some(etag) = headers.get(header::ETAG)
        && !etag.as_bytes().starts_with(b"W/")
        && let Ok(weak) = HeaderValue::from_bytes(&[b"W/", etag.as_bytes()].concat())
    {
        headers.insert(header::ETAG, weak);
    }
}

/// Adds `Accept-Encoding` to `Vary` (once).
pub fn vary(headers: &mut HeaderMap) {
    let present = headers
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| {
            let v = v.trim();
            v == "*" || v.eq_ignore_ascii_case("accept-encoding")
        });
    if !present {
        headers.append(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
}

/// A streaming encoder: bytes in, compressed bytes out as the encoder produces them.
pub enum Encoder {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Brotli(Box<brotli::CompressorWriter<Vec<u8>>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

impl Encoder {
    /// An encoder at a level that suits compressing on the fly: gzip 6 (zlib's default),
    /// brotli 5, zstd 3 (its default); the highest levels cost many times the CPU for a few
    /// percent.
    pub fn new(coding: Coding) -> io::Result<Encoder> {
        Ok(match coding {
            Coding::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::new(6),
            )),
            Coding::Brotli => Encoder::Brotli(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                16 * 1024,
                5,
                22,
            ))),
            Coding::Zstd => Encoder::Zstd(zstd::stream::write::Encoder::new(Vec::new(), 3)?),
        })
    }

    /// Feeds `data`; what is ready to send (possibly nothing yet).
    pub fn push(&mut self, data: &[u8]) -> io::Result<Bytes> {
        match self {
            Encoder::Gzip(e) => e.write_all(data)?,
            Encoder::Brotli(e) => e.write_all(data)?,
            Encoder::Zstd(e) => e.write_all(data)?,
        }
        Ok(self.take())
    }

    /// Flushes what was fed so far into output the client can decode now.
    pub fn flush(&mut self) -> io::Result<Bytes> {
        match self {
            Encoder::Gzip(e) => e.flush()?,
            Encoder::Brotli(e) => e.flush()?,
            Encoder::Zstd(e) => e.flush()?,
        }
        Ok(self.take())
    }

    /// Ends the stream; the last bytes.
    pub fn finish(self) -> io::Result<Bytes> {
        let last = match self {
            Encoder::Gzip(e) => e.finish()?,
            Encoder::Brotli(e) => e.into_inner(),
            Encoder::Zstd(e) => e.finish()?,
        };
        Ok(Bytes::from(last))
    }

    fn take(&mut self) -> Bytes {
        let out = match self {
            Encoder::Gzip(e) => e.get_mut(),
            Encoder::Brotli(e) => e.get_mut(),
            Encoder::Zstd(e) => e.get_mut(),
        };
        Bytes::from(std::mem::take(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    fn accept(s: &str) -> Option<Coding> {
        negotiate(Some(&HeaderValue::from_str(s).unwrap()))
    }

    #[test]
    fn the_clients_q_values_decide_and_ties_prefer_brotli() {
        assert_eq!(accept("gzip, deflate, br, zstd"), Some(Coding::Brotli));
        assert_eq!(accept("gzip;q=1, br;q=0.5"), Some(Coding::Gzip));
        assert_eq!(accept("zstd, gzip;q=0.9"), Some(Coding::Zstd));
        assert_eq!(accept("br;q=0, gzip"), Some(Coding::Gzip));
        assert_eq!(accept("*"), Some(Coding::Brotli));
        assert_eq!(accept("*;q=0.5, gzip;q=0"), Some(Coding::Brotli));
        assert_eq!(accept("identity"), None);
        assert_eq!(accept("gzip;q=0"), None);
        assert_eq!(accept("gzip;Q=0"), None);
        assert_eq!(accept("gzip; Q=0.5, br;q=0.4"), Some(Coding::Gzip));
        assert_eq!(accept("deflate"), None);
        assert_eq!(negotiate(None), None);
    }

    #[test]
    fn only_whole_compressible_unencoded_bodies_qualify() {
        let ok = hyper::StatusCode::OK;
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        assert!(applies(ok, &h, false, false, 256));
        assert!(!applies(ok, &h, true, false, 256), "a range request");
        assert!(!applies(ok, &h, false, true, 256), "HEAD");
        assert!(!applies(
            hyper::StatusCode::PARTIAL_CONTENT,
            &h,
            false,
            false,
            256
        ));
        let mut small = h.clone();
        small.insert(header::CONTENT_LENGTH, HeaderValue::from_static("100"));
        assert!(!applies(ok, &small, false, false, 256));
        let mut encoded = h.clone();
        encoded.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        assert!(!applies(ok, &encoded, false, false, 256));
        let mut keep = h.clone();
        keep.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, no-transform"),
        );
        assert!(!applies(ok, &keep, false, false, 256));
        let mut jpeg = HeaderMap::new();
        jpeg.insert(header::CONTENT_TYPE, HeaderValue::from_static("image/jpeg"));
        assert!(!applies(ok, &jpeg, false, false, 256));
    }

    #[test]
    fn each_coding_round_trips_in_pieces() {
        let text: Vec<u8> = (0..200_000u32)
            .flat_map(|i| format!("line {i}\n").into_bytes())
            .collect();
        for coding in [Coding::Gzip, Coding::Brotli, Coding::Zstd] {
            let mut e = Encoder::new(coding).unwrap();
            let mut out = Vec::new();
            for chunk in text.chunks(7_000) {
                out.extend_from_slice(&e.push(chunk).unwrap());
            }
            out.extend_from_slice(&e.flush().unwrap());
            out.extend_from_slice(&e.finish().unwrap());
            assert!(
                out.len() < text.len() / 4,
                "{coding:?}: {} bytes",
                out.len()
            );
            let mut back = Vec::new();
            match coding {
                Coding::Gzip => flate2::read::GzDecoder::new(&out[..])
                    .read_to_end(&mut back)
                    .unwrap(),
                Coding::Brotli => brotli::Decompressor::new(&out[..], 4096)
                    .read_to_end(&mut back)
                    .unwrap(),
                Coding::Zstd => zstd::stream::read::Decoder::new(&out[..])
                    .unwrap()
                    .read_to_end(&mut back)
                    .unwrap(),
            };
            assert!(back == text, "{coding:?} did not round-trip");
        }
    }

    #[test]
    fn vary_and_etag_are_rewritten_once() {
        let mut h = HeaderMap::new();
        h.insert(header::ETAG, HeaderValue::from_static("\"abc\""));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("1000"));
        encode_headers(&mut h, Coding::Gzip);
        vary(&mut h);
        vary(&mut h);
        assert_eq!(h[header::ETAG], "W/\"abc\"");
        assert_eq!(h[header::CONTENT_ENCODING], "gzip");
        assert!(h.get(header::CONTENT_LENGTH).is_none());
        assert_eq!(h.get_all(header::VARY).iter().count(), 1);
    }
}

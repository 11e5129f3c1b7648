//! The status page of the admin listener (chapter 10): `GET /` is one page a person reads,
//! where `/metrics` is for Prometheus. The page is embedded in the binary (no CDN, no font or
//! script from elsewhere: the machines that run a balancer may have no internet) and is a pure
//! client of `/metrics`: it polls it every second and shows what it says per backend (state,
//! connections or requests, their rate and a sparkline of the last minute, errors, latency for
//! http-lb), for the listener, and for http-lb's cache and affinity. Nothing new is counted
//! for it, and it can never disagree with the metrics.
//!
//! What keeps it safe to open:
//!
//! * the same rule as `/metrics`: with an admin token configured, the page itself holds no
//!   data, and asks for the token in a form; the token stays in the tab's memory and goes out
//!   in an `Authorization` header, never in an address (which ends up in logs and history);
//! * a strict `Content-Security-Policy`: scripts and styles from this listener only, none
//!   inline, no frames, no form posting anywhere, fetches to this listener only;
//! * every value is put into the page as text, never as markup: backend names come from
//!   configs, registrations and etcd.

use hyper::header::HeaderValue;

/// What both pages' scripts share (`$`, `el`), loaded before each page's own.
const COMMON_JS: (&str, &str) = (
    "text/javascript; charset=utf-8",
    include_str!("status/common.js"),
);

/// One file of the page: its path, content type, and bytes.
pub struct Asset {
    pub content_type: &'static str,
    pub body: &'static str,
}

/// The page's files by path: `/`, `/common.js`, `/status.js`, `/status.css`.
pub fn asset(path: &str) -> Option<Asset> {
    let (content_type, body) = match path {
        "/" => ("text/html; charset=utf-8", include_str!("status/page.html")),
        "/status.js" => (
            "text/javascript; charset=utf-8",
            include_str!("status/page.js"),
        ),
        "/status.css" => ("text/css; charset=utf-8", include_str!("status/page.css")),
        "/common.js" => COMMON_JS,
        _ => return None,
    };
    Some(Asset { content_type, body })
}

/// The files of `ssl-farm`'s page (chapter 13, `--dashboard`): `/`, `/farm.js`, and the
/// same `/common.js` and stylesheet. Its data is the farm's own `GET /farm.json`, which it
/// polls every second.
pub fn farm_asset(path: &str) -> Option<Asset> {
    let (content_type, body) = match path {
        "/" => ("text/html; charset=utf-8", include_str!("status/farm.html")),
        "/farm.js" => (
            "text/javascript; charset=utf-8",
            include_str!("status/farm.js"),
        ),
        "/status.css" => ("text/css; charset=utf-8", include_str!("status/page.css")),
        "/common.js" => COMMON_JS,
        _ => return None,
    };
    Some(Asset { content_type, body })
}

/// The headers every file of the page goes out with (see the module's header).
pub fn security_headers() -> [(&'static str, HeaderValue); 5] {
    [
        (
            "content-security-policy",
            HeaderValue::from_static(
                "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                 img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            ),
        ),
        (
            "x-content-type-options",
            HeaderValue::from_static("nosniff"),
        ),
        ("referrer-policy", HeaderValue::from_static("no-referrer")),
        ("cache-control", HeaderValue::from_static("no-store")),
        ("x-frame-options", HeaderValue::from_static("DENY")),
    ]
}

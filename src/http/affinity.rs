//! Cookie affinity (chapter 12): a user's requests keep going to the backend that served the
//! first one, whichever `http-lb` instance they cross.
//!
//! The first response to a user carries `Set-Cookie: lb=<value>`; the browser sends the cookie
//! back, and the balancer sends the request to the backend the value names. What the value
//! holds decides what the tier can do:
//!
//! * **Not the backend's address**: that tells anyone who looks at their cookies how the
//!   farm is laid out, and lets them pick a backend by editing it (seed 002: hide the
//!   backends).
//! * **Not its position in the list**: two balancers that list the backends in another order
//!   (or one after a reload that removed a backend) would send the same user to different
//!   places.
//! * **A keyed hash of the backend's identity** (its address as configured): HMAC-SHA256 with
//!   a secret every instance shares, cut to 128 bits and written in hex. Any number of
//!   instances with the same secret and backends compute the same value for the same
//!   backend, with no state shared between them: that is how the tier scales out. Without the
//!   secret nobody can compute the value of a backend they have not been sent to. HAProxy's
//!   `dynamic-cookie-key` works the same way.
//!
//! The value depends only on (secret, backend), so each backend's value is computed once per
//! configuration, and a request costs a parse of its `Cookie` header and one hash-map lookup:
//! no cryptography per request. A forged, stale (a backend since removed, an old secret) or
//! garbage value simply finds nothing and is treated as no cookie.

use std::collections::HashMap;

use hyper::header::{COOKIE, HeaderValue};
use ring::hmac;

use crate::http::fields::Fields;

/// The cookie's name unless configured.
pub const DEFAULT_COOKIE: &str = "lb";

/// The shortest secret accepted: 256 bits, the HMAC-SHA256 key size.
pub const MIN_SECRET: usize = 32;

/// How the cookie is written.
#[derive(Clone, Debug)]
pub struct CookieSettings {
    pub name: String,
    /// `Max-Age`: seconds the browser keeps it; `None` for a session cookie.
    pub max_age: Option<u64>,
    /// `Domain`: to share it across subdomains.
    pub domain: Option<String>,
}

impl Default for CookieSettings {
    fn default() -> Self {
        CookieSettings {
            name: DEFAULT_COOKIE.to_owned(),
            max_age: None,
            domain: None,
        }
    }
}

/// What a request's cookie said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Found {
    /// No affinity cookie.
    None,
    /// A value that names `backends[i]`.
    Backend(usize),
    /// A value that names no backend of this configuration: forged, stale or garbage.
    Unknown,
}

/// The cookie values of one configuration's backends.
pub struct Affinity {
    settings: CookieSettings,
    /// `name=`, to find the cookie in a `Cookie` header.
    prefix: String,
    by_value: HashMap<String, usize>,
    /// The `Set-Cookie` of each backend, without and with `Secure`.
    set_cookie: Vec<[HeaderValue; 2]>,
}

/// The cookie value of the backend known as `identity`, under `secret`.
pub fn seal(secret: &[u8], identity: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    // A label first, so that the same secret used for something else never yields these tags.
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(b"lb-affinity-v1\0");
    ctx.update(identity.as_bytes());
    let tag = ctx.sign();
    hex(&tag.as_ref()[..16])
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

impl Affinity {
    /// The values of `identities` (one per backend, in the configuration's order).
    pub fn new(secret: &[u8], settings: CookieSettings, identities: &[String]) -> Affinity {
        let mut by_value = HashMap::with_capacity(identities.len());
        let mut set_cookie = Vec::with_capacity(identities.len());
        for (i, identity) in identities.iter().enumerate() {
            let value = seal(secret, identity);
            let mut text = format!("{}={value}; Path=/; HttpOnly; SameSite=Lax", settings.name);
            if let Some(age) = settings.max_age {
                text += &format!("; Max-Age={age}");
            }
            if let Some(domain) = &settings.domain {
                text += &format!("; Domain={domain}");
            }
            let secure = format!("{text}; Secure");
            // Names and domains are checked when the configuration is read.
            set_cookie.push([
                HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static("")),
                HeaderValue::from_str(&secure).unwrap_or(HeaderValue::from_static("")),
            ]);
            by_value.insert(value, i);
        }
        Affinity {
            prefix: format!("{}=", settings.name),
            settings,
            by_value,
            set_cookie,
        }
    }

    pub fn cookie_name(&self) -> &str {
        &self.settings.name
    }

    /// Finds the affinity cookie in the request's `Cookie` headers and removes it, so the
    /// backend never sees it (it is ours, not the application's). Other cookies stay, in
    /// order.
    pub fn take(&self, fields: &mut impl Fields) -> Found {
        // `str::contains` is the fast substring search; a line that is not UTF-8 (another
        // cookie's value may hold any byte, RFC 6265 §5.4 reads them as bytes) is searched
        // byte by byte, which only such lines pay for.
        let prefix = self.prefix.as_bytes();
        let ours = |line: &[u8]| match std::str::from_utf8(line) {
            Ok(text) => text.contains(&self.prefix),
            Err(_) => line.windows(prefix.len()).any(|w| w == prefix),
        };
        // The common cases cost little: no `Cookie` field, or none that holds our name, is
        // one scan and no allocation.
        if !fields.values("cookie").any(ours) {
            return Found::None;
        }
        let mut found = Found::None;
        let mut lines: Vec<HeaderValue> = Vec::new();
        for line in fields.values("cookie") {
            if !ours(line) {
                // Not ours to change: kept as it came.
                lines.extend(HeaderValue::from_bytes(line).ok());
                continue;
            }
            let mut kept: Vec<u8> = Vec::with_capacity(line.len());
            for pair in line.split(|&b| b == b';').map(<[u8]>::trim_ascii) {
                match pair.strip_prefix(prefix) {
                    // The first valid one wins; a later duplicate cannot override it.
                    Some(v) if !matches!(found, Found::Backend(_)) => {
                        let known = std::str::from_utf8(v)
                            .ok()
                            .and_then(|v| self.by_value.get(v));
                        found = match known {
                            Some(&i) => Found::Backend(i),
                            None => Found::Unknown,
                        };
                    }
                    Some(_) => {}
                    None if pair.is_empty() => {}
                    None => {
                        if !kept.is_empty() {
                            kept.extend_from_slice(b"; ");
                        }
                        kept.extend_from_slice(pair);
                    }
                }
            }
            // A line that held only our cookie goes altogether; what was a valid field
            // value stays one with a cookie taken out.
            if !kept.is_empty() {
                lines.extend(HeaderValue::from_bytes(&kept).ok());
            }
        }
        fields.set_all(COOKIE, lines);
        found
    }

    /// The `Set-Cookie` that pins a user to `backends[i]`; `secure` when the client came over
    /// TLS, so the browser never sends it in clear.
    pub fn set_cookie(&self, i: usize, secure: bool) -> Option<&HeaderValue> {
        self.set_cookie.get(i).map(|v| &v[usize::from(secure)])
    }
}

/// Whether `name` can be a cookie name (RFC 6265's token): checked when the configuration is
/// read.
pub fn check_cookie_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    match ok {
        true => Ok(()),
        false => Err(format!(
            "`{name}` cannot be a cookie name (letters, digits and !#$%&'*+-.^_`|~ only)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderMap;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn affinity(ids: &[&str]) -> Affinity {
        let ids: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
        Affinity::new(SECRET, CookieSettings::default(), &ids)
    }

    fn headers(cookies: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for c in cookies {
            h.append(COOKIE, HeaderValue::from_str(c).unwrap());
        }
        h
    }

    #[test]
    fn values_depend_on_the_secret_and_the_identity_not_the_order() {
        let a = affinity(&["10.0.0.1:80", "10.0.0.2:80"]);
        let b = affinity(&["10.0.0.2:80", "10.0.0.1:80"]);
        let v = seal(SECRET, "10.0.0.1:80");
        assert_eq!(v.len(), 32);
        assert!(!v.contains("10.0.0.1"));
        let mut h = headers(&[&format!("lb={v}")]);
        assert_eq!(a.take(&mut h), Found::Backend(0));
        let mut h = headers(&[&format!("lb={v}")]);
        assert_eq!(b.take(&mut h), Found::Backend(1));
        assert_ne!(seal(b"another secret, another value....", "10.0.0.1:80"), v);
    }

    #[test]
    fn the_cookie_is_taken_out_and_the_others_kept() {
        let a = affinity(&["h:1"]);
        let v = seal(SECRET, "h:1");
        let mut h = headers(&[&format!("a=1; lb={v}; b=2")]);
        assert_eq!(a.take(&mut h), Found::Backend(0));
        assert_eq!(h.get(COOKIE).unwrap(), "a=1; b=2");
        let mut h = headers(&[&format!("lb={v}")]);
        a.take(&mut h);
        assert!(h.get(COOKIE).is_none());
        let mut h = headers(&["lbx=1; xlb=2"]);
        assert_eq!(a.take(&mut h), Found::None);
        assert_eq!(h.get(COOKIE).unwrap(), "lbx=1; xlb=2");
    }

    /// Another cookie's value may hold any byte (RFC 6265 §5.4): ours is still found, taken
    /// out, and the line's other bytes kept as they came.
    #[test]
    fn the_cookie_is_found_on_a_line_that_is_not_utf8() {
        let a = affinity(&["h:1"]);
        let v = seal(SECRET, "h:1");
        let mut line = b"a=\xff\xfe; ".to_vec();
        line.extend_from_slice(format!("lb={v}").as_bytes());
        let mut h = HeaderMap::new();
        h.insert(COOKIE, HeaderValue::from_bytes(&line).unwrap());
        assert_eq!(a.take(&mut h), Found::Backend(0));
        assert_eq!(h.get(COOKIE).unwrap().as_bytes(), b"a=\xff\xfe");
    }

    #[test]
    fn forged_and_garbage_values_name_no_backend() {
        let a = affinity(&["h:1"]);
        let mut v = seal(SECRET, "h:1");
        v.replace_range(0..1, if v.starts_with('0') { "1" } else { "0" });
        for bad in [v.as_str(), "", "h:1", "../../etc", "\u{7f}"] {
            let mut h = HeaderMap::new();
            if let Ok(value) = HeaderValue::from_str(&format!("lb={bad}")) {
                h.insert(COOKIE, value);
                assert_eq!(a.take(&mut h), Found::Unknown, "{bad:?}");
            }
        }
    }

    #[test]
    fn set_cookie_carries_the_attributes() {
        let settings = CookieSettings {
            name: "srv".into(),
            max_age: Some(3600),
            domain: Some("example.com".into()),
        };
        let a = Affinity::new(SECRET, settings, &["h:1".to_owned()]);
        let plain = a.set_cookie(0, false).unwrap().to_str().unwrap();
        assert!(plain.starts_with(&format!(
            "srv={}; Path=/; HttpOnly; SameSite=Lax",
            seal(SECRET, "h:1")
        )));
        assert!(plain.contains("Max-Age=3600") && plain.contains("Domain=example.com"));
        assert!(!plain.contains("Secure"));
        assert!(
            a.set_cookie(0, true)
                .unwrap()
                .to_str()
                .unwrap()
                .ends_with("; Secure")
        );
        assert!(check_cookie_name("lb").is_ok() && check_cookie_name("a b").is_err());
    }
}

//! Routes (chapter 16): which requests go where, by path prefix and, optionally, host.
//!
//! An ordered list; the first route whose prefix (and host, if it names one) matches takes the
//! request, and a request no route takes goes to every backend (chapter 12's pool):
//!
//! ```toml
//! [[http.route]]
//! prefix = "/api/"
//! backends = ["api1", "api2"]        # [[backend]] names (or addresses): a pool of its own
//! [[http.route]]
//! prefix = "/old/"
//! redirect = "https://new.example"   # 308 to https://new.example/… with the rest and query
//! [[http.route]]
//! prefix = "/assets/"
//! host = "www.example.com"
//! static = "public"                  # a folder, served directly (`super::static_files`)
//! ```
//!
//! A route's pool is a part of the balancer's backends: the strategy chooses among them only
//! (the others count as already tried), health and affinity work as everywhere. A route that
//! does not make sense is refused while the file is read, with its line and column.

use std::path::PathBuf;

use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};
use serde::Deserialize;

use super::body::Download;
use super::static_files::StaticDir;

/// A route ready to use: as written, its folder opened.
#[derive(Clone, Debug)]
pub struct Routed {
    pub route: Route,
    pub target: RoutedTarget,
    /// Requests it took since the config that made it was loaded (the status page's "routes
    /// with their hits"; `httplb_route_requests_total`).
    pub hits: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// What a route does, its folder opened.
#[derive(Clone, Debug)]
pub enum RoutedTarget {
    /// Balance among these backends (names or addresses); see `Upstreams::pools`.
    Pool,
    Static(StaticDir),
    Redirect {
        to: String,
        status: StatusCode,
    },
}

/// What a route did with a request.
// Returned once and taken apart at once by the caller: never stored, so the size of the
// answer variant costs nothing a box would save.
#[allow(clippy::large_enum_variant)]
pub enum Taken {
    /// Balance it among the route's own pool.
    Pool,
    /// Answered here (a file, a redirect), and what the access log names as its backend.
    Answer(Response<Download>, &'static str),
}

impl Routed {
    /// The request `parts`, taken by this route.
    pub async fn take(&self, parts: &hyper::http::request::Parts) -> Taken {
        match &self.target {
            RoutedTarget::Pool => Taken::Pool,
            RoutedTarget::Static(dir) => {
                let path = parts.uri.path();
                let response =
                    super::static_files::serve(dir, &parts.method, path, &parts.headers).await;
                Taken::Answer(response, "static")
            }
            RoutedTarget::Redirect { to, status } => {
                let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
                let location = redirect_location(to, &self.route.prefix, pq);
                let mut response = Response::new(Download::text(""));
                *response.status_mut() = *status;
                if let Ok(value) = HeaderValue::from_str(&location) {
                    response.headers_mut().insert(header::LOCATION, value);
                }
                Taken::Answer(response, "redirect")
            }
        }
    }
}

/// One `[[http.route]]`, as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, try_from = "RawRoute")]
pub struct Route {
    pub prefix: String,
    pub host: Option<String>,
    pub target: Target,
}

/// Where a route sends its requests.
#[derive(Clone, Debug)]
pub enum Target {
    /// These backends (names or addresses), balanced among themselves.
    Backends(Vec<String>),
    /// A folder served directly.
    Static(PathBuf),
    /// A redirect: to this URL, with the path after the prefix and the query, with `status`.
    Redirect { to: String, status: u16 },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    prefix: String,
    host: Option<String>,
    backends: Option<Vec<String>>,
    #[serde(rename = "static")]
    static_dir: Option<PathBuf>,
    redirect: Option<String>,
    status: Option<u16>,
}

impl TryFrom<RawRoute> for Route {
    type Error = String;

    fn try_from(raw: RawRoute) -> Result<Route, String> {
        if !raw.prefix.starts_with('/') {
            return Err(format!("route prefix `{}` must start with /", raw.prefix));
        }
        let target = match (raw.backends, raw.static_dir, raw.redirect) {
            (Some(backends), None, None) if !backends.is_empty() => Target::Backends(backends),
            (Some(_), None, None) => return Err("a route's backends list is empty".to_owned()),
            (None, Some(dir), None) => Target::Static(dir),
            (None, None, Some(to)) => {
                crate::registry::check_url(to.trim_end_matches('/'))?;
                let status = raw.status.unwrap_or(308);
                if ![301, 302, 303, 307, 308].contains(&status) {
                    return Err(format!(
                        "a redirect's status is 301, 302, 303, 307 or 308, not {status}"
                    ));
                }
                Target::Redirect {
                    to: to.trim_end_matches('/').to_owned(),
                    status,
                }
            }
            _ => {
                return Err(format!(
                    "route {} needs exactly one of backends, static or redirect",
                    raw.prefix
                ));
            }
        };
        if raw.status.is_some() && !matches!(target, Target::Redirect { .. }) {
            return Err("status is for a redirect route".to_owned());
        }
        Ok(Route {
            prefix: raw.prefix,
            host: raw.host.map(|h| h.to_ascii_lowercase()),
            target,
        })
    }
}

impl Route {
    /// How metrics and the status page name it: `host/prefix`, or the prefix alone.
    pub fn label(&self) -> String {
        match &self.host {
            Some(host) => format!("{host}{}", self.prefix),
            None => self.prefix.clone(),
        }
    }

    /// `pool`, `static` or `redirect`.
    pub fn kind(&self) -> &'static str {
        match self.target {
            Target::Backends(_) => "pool",
            Target::Static(_) => "static",
            Target::Redirect { .. } => "redirect",
        }
    }

    /// Whether this route takes a request for `path` on `host` (the `Host` field, port
    /// ignored).
    pub fn matches(&self, host: Option<&str>, path: &str) -> bool {
        let host_ok = match (&self.host, host) {
            (None, _) => true,
            (Some(want), Some(got)) => {
                let got = got.rsplit_once(':').map_or(got, |(h, port)| {
                    if port.bytes().all(|b| b.is_ascii_digit()) {
                        h
                    } else {
                        got
                    }
                });
                got.eq_ignore_ascii_case(want)
            }
            (Some(_), None) => false,
        };
        host_ok && (path.starts_with(&self.prefix) || path == self.prefix.trim_end_matches('/'))
    }
}

/// The `Location` a redirect route answers `path_and_query` with.
pub fn redirect_location(to: &str, prefix: &str, path_and_query: &str) -> String {
    let rest = path_and_query
        .strip_prefix(prefix)
        .or_else(|| path_and_query.strip_prefix(prefix.trim_end_matches('/')))
        .unwrap_or(path_and_query);
    let rest = rest.trim_start_matches('/');
    format!("{to}/{rest}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<Route>, String> {
        #[derive(Deserialize)]
        struct Doc {
            route: Vec<Route>,
        }
        toml::from_str::<Doc>(text)
            .map(|d| d.route)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn routes_name_exactly_one_target() {
        let routes = parse(
            "[[route]]\nprefix = \"/api/\"\nbackends = [\"a\"]\n\
             [[route]]\nprefix = \"/old/\"\nredirect = \"https://new.example/\"\nstatus = 301\n",
        )
        .unwrap();
        assert!(matches!(&routes[0].target, Target::Backends(b) if b == &["a"]));
        assert!(matches!(
            &routes[1].target,
            Target::Redirect { status: 301, .. }
        ));
        for bad in [
            "[[route]]\nprefix = \"/x/\"\n",
            "[[route]]\nprefix = \"x/\"\nstatic = \"d\"\n",
            "[[route]]\nprefix = \"/x/\"\nstatic = \"d\"\nredirect = \"https://a\"\n",
            "[[route]]\nprefix = \"/x/\"\nredirect = \"ftp://a\"\n",
            "[[route]]\nprefix = \"/x/\"\nredirect = \"https://a\"\nstatus = 200\n",
            "[[route]]\nprefix = \"/x/\"\nbackends = []\n",
            "[[route]]\nprefix = \"/x/\"\nstatic = \"d\"\nstatus = 301\n",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hosts_ignore_ports_and_case_and_redirects_keep_the_rest() {
        let r = Route {
            prefix: "/api/".into(),
            host: Some("api.example".into()),
            target: Target::Backends(vec!["a".into()]),
        };
        assert!(r.matches(Some("API.example:8080"), "/api/x"));
        assert!(r.matches(Some("api.example"), "/api"));
        assert!(!r.matches(Some("www.example"), "/api/x"));
        assert!(!r.matches(None, "/api/x"));
        assert!(!r.matches(Some("api.example"), "/apix"));
        assert_eq!(
            redirect_location("https://n.example", "/old/", "/old/a/b?x=1"),
            "https://n.example/a/b?x=1"
        );
        assert_eq!(
            redirect_location("https://n.example", "/old/", "/old"),
            "https://n.example/"
        );
    }
}

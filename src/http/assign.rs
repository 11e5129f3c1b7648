//! Assignment mode (chapter 14, seed 001): instead of carrying each request to a backend,
//! tell the client which backend to use, and let it go there itself.
//!
//! `http-lb --mode assign` picks a backend as in proxy mode (the affinity cookie's while it
//! is up, else the strategy's) and answers:
//!
//! * any path: `307 Temporary Redirect` to the backend's public URL with the request's path
//!   and query (307, not 302: the client repeats the same method and body there);
//! * `GET /assign`: `200` with `{"name", "url", "address"}`, for programs (`assign-client`).
//!
//! Both carry the affinity cookie when the user was (re)assigned, so a client that asks again
//! while its server lives gets the same one, and another once it is gone; and `Cache-Control:
//! no-store`, since an assignment is one user's. The response bandwidth never crosses the
//! balancer: this is HAProxy's `redir` server option, WebHDFS's 307 to a data node, a CDN
//! request router's 302 to a cache.

use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};

use std::sync::Arc;

use hyper::Uri;
use hyper::http::uri::PathAndQuery;

use super::balancer::{HttpServer, Line, Upstreams};
use super::body::Download;
use super::metrics::AffinityOutcome;

/// What `http-lb` does with a request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Carry it to a backend and its answer back (chapter 12).
    #[default]
    Proxy,
    /// Answer with the backend the client should use (chapter 14).
    Assign,
}

/// The name in `?exclude=NAME`, if the query has one: the server the client could not reach.
pub fn excluded(uri: &hyper::Uri) -> Option<&str> {
    uri.query()?
        .split('&')
        .find_map(|pair| pair.strip_prefix("exclude="))
        .filter(|name| !name.is_empty())
}

/// The path that answers JSON instead of a redirect.
pub const ASSIGN_PATH: &str = "/assign";

/// The answer that sends a client to `url` (a backend's public URL, no trailing `/`) for
/// `path_and_query`, or tells it where to go for [`ASSIGN_PATH`]. `name` and `address`
/// identify the backend in the JSON.
pub fn answer(
    url: &str,
    name: &str,
    address: &str,
    path_and_query: &str,
    cookie: Option<&HeaderValue>,
) -> Response<Download> {
    let path = path_and_query.split('?').next().unwrap_or("/");
    let (status, text, location) = if path == ASSIGN_PATH {
        let json = serde_json::json!({ "name": name, "url": url, "address": address });
        (StatusCode::OK, json.to_string() + "\n", None)
    } else {
        let target = format!("{url}{path_and_query}");
        (
            StatusCode::TEMPORARY_REDIRECT,
            format!("see {target}\n"),
            HeaderValue::from_str(&target).ok(),
        )
    };
    let mut response = Response::new(Download::text_owned(text));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    let content_type = match location {
        Some(location) => {
            headers.insert(header::LOCATION, location);
            "text/plain"
        }
        None => "application/json",
    };
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(cookie) = cookie {
        headers.append(header::SET_COOKIE, cookie.clone());
    }
    response
}

impl HttpServer {
    /// Assignment mode (chapter 14): the client is told to use `backends[i]` itself.
    pub(super) fn assign(
        &self,
        up: &Upstreams,
        i: usize,
        outcome: AffinityOutcome,
        uri: &Uri,
        tls: bool,
        mut line: Line,
    ) -> Response<Download> {
        let spec = up.balancer.backends()[i].spec();
        let cookie = match (outcome, &up.affinity) {
            (AffinityOutcome::Hit, _) | (_, None) => None,
            (_, Some(affinity)) => affinity.set_cookie(i, tls),
        };
        let path = uri.path_and_query().map_or("/", PathAndQuery::as_str);
        let mut response = answer(
            &up.urls[i],
            &up.names[i],
            &spec.addr.to_string(),
            path,
            cookie,
        );
        self.counters.affinity(outcome);
        up.backends[i].counters.assigned();
        line.backend = Some(Arc::clone(&up.names[i]));
        let status = response.status();
        let len = hyper::body::Body::size_hint(response.body())
            .exact()
            .unwrap_or(0);
        response
            .body_mut()
            .set_on_end(Box::new(move |_, complete| line.log(status, len, complete)));
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclude_names_the_server_that_failed() {
        let uri: hyper::Uri = "/assign?x=1&exclude=s2".parse().unwrap();
        assert_eq!(excluded(&uri), Some("s2"));
        let uri: hyper::Uri = "/assign?exclude=".parse().unwrap();
        assert_eq!(excluded(&uri), None);
        assert_eq!(excluded(&"/".parse().unwrap()), None);
    }

    #[test]
    fn a_redirect_keeps_the_path_and_query_and_json_names_the_server() {
        let r = answer(
            "https://s1.apps.localhost:8443",
            "s1",
            "127.0.0.1:8443",
            "/a/b?x=1&y=2",
            None,
        );
        assert_eq!(r.status(), StatusCode::TEMPORARY_REDIRECT);
        assert_eq!(
            r.headers()[header::LOCATION],
            "https://s1.apps.localhost:8443/a/b?x=1&y=2"
        );
        assert_eq!(r.headers()[header::CACHE_CONTROL], "no-store");
        let cookie = HeaderValue::from_static("lb=abc; Path=/");
        let r = answer(
            "http://10.0.0.1:80",
            "s1",
            "10.0.0.1:80",
            "/assign?x",
            Some(&cookie),
        );
        assert_eq!(r.status(), StatusCode::OK);
        assert!(r.headers().get(header::LOCATION).is_none());
        assert_eq!(r.headers()[header::SET_COOKIE], "lb=abc; Path=/");
    }
}

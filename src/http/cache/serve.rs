//! Chapter 16's cache in front of the balancer: what a request does with it (a hit answered
//! from memory, collapsed misses, revalidation, stale on error, a storable answer copied into
//! the cache as it streams, invalidation by unsafe requests). The cache itself, and the rules
//! of RFC 9111, are in [`super`]; the request to a backend is chapter 12's
//! `HttpServer::proxied`.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use hyper::body::Body as _;
use hyper::header::{self, HeaderMap};
use hyper::http::request::Parts;
use hyper::{Method, Request, Response, StatusCode};

use crate::http::balancer::{ConnInfo, HttpServer, Line, Upstreams};
use crate::http::body::{self, Download, Payload};
use crate::http::cache::{self, Cache, Outcome as CacheOutcome};
use crate::http::compress;
use crate::http::forward;
use crate::http::metrics::AffinityOutcome;

impl HttpServer {
    /// Chapter 16: the cache in front of [`HttpServer::proxied`]. A fresh entry answers at
    /// once; a miss for a key another request is already fetching waits for it; an expired
    /// entry is revalidated, and served if the backend then fails within `stale-if-error`; a
    /// storable answer is copied into the cache as it streams to the client.
    pub(in crate::http) async fn cached(
        self: &Arc<Self>,
        up: &Arc<Upstreams>,
        cache: &Arc<Cache>,
        req: Request<crate::http::body::Inbound>,
        info: &ConnInfo,
    ) -> Response<Download> {
        if !Cache::serves(req.method()) || forward::wants_upgrade(req.headers()) {
            cache.count(CacheOutcome::Bypass);
            // RFC 9111 §4.4: what an unsafe request changes is no longer what is stored.
            let changes = !matches!(
                *req.method(),
                Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
            );
            let (parts, body) = req.into_parts();
            let invalidates = changes.then(|| {
                let host = parts.uri.authority().map(|a| a.as_str().to_owned());
                let host = host.or_else(|| {
                    let h = parts.headers.get(header::HOST)?;
                    Some(h.to_str().ok()?.to_owned())
                });
                (Cache::key(&parts), host.unwrap_or_default())
            });
            let mut response = self
                .proxied(up, Request::from_parts(parts, Some(body)), info, None)
                .await;
            let status = response.status();
            if let Some((key, host)) = invalidates
                && (status.is_success() || status.is_redirection())
            {
                cache.invalidate(&key, &host, response.headers());
            }
            response
                .headers_mut()
                .insert(cache::X_CACHE, CacheOutcome::Bypass.header());
            return response;
        }
        let (mut parts, body) = req.into_parts();
        let key = Cache::key(&parts);
        // A HEAD is answered from what a GET stored.
        let as_get = (parts.method == Method::HEAD).then(|| {
            let mut get = parts.clone();
            get.method = Method::GET;
            get
        });
        let mut waited = false;
        let (fetching, expired) = loop {
            let now = SystemTime::now();
            let found = match cache.lookup(&key, as_get.as_ref().unwrap_or(&parts), now) {
                // A part answers only the ranges it holds (RFC 9111 §3.3); for the rest it is
                // as if nothing were stored, and what the backend sends may complete it.
                cache::Found::Fresh(entry, _) | cache::Found::Expired(entry, _)
                    if !entry.answers(&parts) =>
                {
                    cache::Found::Nothing
                }
                found => found,
            };
            match found {
                cache::Found::Fresh(entry, head) => {
                    return self.answer_from_cache(
                        up,
                        &entry,
                        head,
                        &parts,
                        true,
                        info,
                        CacheOutcome::Hit,
                    );
                }
                cache::Found::Expired(entry, conditional) => {
                    // RFC 5861 §3: served as it is, and revalidated once, in the background
                    // (a request already doing that is left to it).
                    if cache.usable_while_revalidating(&entry, &parts.headers, now) {
                        if let Ok(fetching) = cache.fetch(&key) {
                            let request = as_get.as_ref().unwrap_or(&parts);
                            self.revalidate_in_background(
                                up,
                                cache,
                                (key, request, &entry, conditional),
                                fetching,
                                info,
                            );
                        }
                        let conditional = parts.headers.contains_key(header::IF_NONE_MATCH)
                            || parts.headers.contains_key(header::IF_MODIFIED_SINCE);
                        return self.answer_from_cache(
                            up,
                            &entry,
                            Cache::stale_head(&entry, now),
                            &parts,
                            conditional,
                            info,
                            CacheOutcome::Updating,
                        );
                    }
                    if waited {
                        break (None, Some((entry, conditional)));
                    }
                    match cache.fetch(&key) {
                        Ok(fetching) => break (Some(fetching), Some((entry, conditional))),
                        Err(mut other) => {
                            let _ =
                                tokio::time::timeout(cache::COLLAPSE_WAIT, other.changed()).await;
                            waited = true;
                        }
                    }
                }
                cache::Found::Nothing => {
                    if waited {
                        break (None, None);
                    }
                    match cache.fetch(&key) {
                        Ok(fetching) => break (Some(fetching), None),
                        Err(mut other) => {
                            let _ =
                                tokio::time::timeout(cache::COLLAPSE_WAIT, other.changed()).await;
                            waited = true;
                        }
                    }
                }
            }
        };
        // Revalidation: the entry's validators, unless the client sent its own.
        let client_conditional = parts.headers.contains_key(header::IF_NONE_MATCH)
            || parts.headers.contains_key(header::IF_MODIFIED_SINCE);
        let revalidating = expired.is_some() && !client_conditional;
        if revalidating && let Some((_, conditional)) = &expired {
            for name in [header::IF_NONE_MATCH, header::IF_MODIFIED_SINCE] {
                if let Some(v) = conditional.get(&name) {
                    parts.headers.insert(name, v.clone());
                }
            }
        }
        let original = parts.clone();
        let mut origin = None;
        let mut response = self
            .proxied(
                up,
                Request::from_parts(parts, Some(body)),
                info,
                Some(&mut origin),
            )
            .await;
        let now = SystemTime::now();
        let status = response.status();
        if let Some((entry, _)) = &expired {
            if revalidating && status == StatusCode::NOT_MODIFIED {
                // The client asked for the whole answer: a 304 meant for our conditional must
                // not reach it. One that does not match the entry (other validators) still says
                // "what you have is current": serve it as stored, with its age now.
                let head = origin
                    .as_ref()
                    .map(|head| cache.refresh(&key, entry, &original, head, now))
                    .unwrap_or_else(|| Cache::stale_head(entry, now));
                return self.answer_from_cache(
                    up,
                    entry,
                    head,
                    &original,
                    client_conditional,
                    info,
                    CacheOutcome::Expired,
                );
            }
            if status.is_server_error() && cache.usable_on_error(entry, now) {
                tracing::warn!(key = %key, %status, "backend failed: serving the stale cached answer");
                // Its age now, as every answer from the cache (RFC 9111 §4, §5.1).
                let head = Cache::stale_head(entry, now);
                return self.answer_from_cache(
                    up,
                    entry,
                    head,
                    &original,
                    client_conditional,
                    info,
                    CacheOutcome::Stale,
                );
            }
        }
        let outcome = if expired.is_some() {
            CacheOutcome::Expired
        } else {
            CacheOutcome::Miss
        };
        cache.count(outcome);
        response
            .headers_mut()
            .insert(cache::X_CACHE, outcome.header());
        store_as_it_streams(cache, &mut response, key, original, origin, fetching, now);
        response
    }

    /// RFC 5861 §3's other half: `entry`, just served stale for `request` under `key`, is
    /// revalidated with its `conditional` fields by a request of the balancer's own, in a task
    /// of its own: a `304` freshens it, a storable answer replaces it, anything else leaves it
    /// (the next request past the window revalidates as usual). `fetching` is held until then,
    /// so that it happens once per key.
    fn revalidate_in_background(
        self: &Arc<Self>,
        up: &Arc<Upstreams>,
        cache: &Arc<Cache>,
        (key, request, entry, conditional): (String, &Parts, &Arc<cache::Entry>, HeaderMap),
        fetching: cache::Fetching,
        info: &ConnInfo,
    ) {
        let mut parts = request.clone();
        // The whole answer, validated against what is stored: none of the client's own
        // preconditions or ranges.
        for name in [
            header::IF_NONE_MATCH,
            header::IF_MODIFIED_SINCE,
            header::IF_MATCH,
            header::IF_UNMODIFIED_SINCE,
            header::IF_RANGE,
            header::RANGE,
        ] {
            parts.headers.remove(name);
        }
        for (name, value) in &conditional {
            parts.headers.insert(name.clone(), value.clone());
        }
        let info = ConnInfo {
            client: info.client,
            forwarded_for: info.forwarded_for.clone(),
            tls: info.tls,
            body_left: Default::default(),
            // Nobody waits for this answer: its hints have nowhere to go.
            hints: None,
        };
        let (this, up, cache, entry) = (
            Arc::clone(self),
            Arc::clone(up),
            Arc::clone(cache),
            Arc::clone(entry),
        );
        tokio::spawn(async move {
            let original = parts.clone();
            let mut origin = None;
            let request = Request::from_parts(parts, None);
            let mut response = this.proxied(&up, request, &info, Some(&mut origin)).await;
            let now = SystemTime::now();
            match (response.status(), &origin) {
                (StatusCode::NOT_MODIFIED, Some(head)) => {
                    cache.refresh(&key, &entry, &original, head, now);
                }
                (status, _) if status.is_success() => {
                    let fetching = Some(fetching);
                    let storing = store_as_it_streams(
                        &cache,
                        &mut response,
                        key,
                        original,
                        origin,
                        fetching,
                        now,
                    );
                    if !storing {
                        // Not storable after all: nothing to read it for.
                        return;
                    }
                    // Nobody reads this answer: read it here, so that the copy completes.
                    let mut body = response.into_body();
                    while let Some(Ok(_)) =
                        std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
                    {
                    }
                }
                (status, _) => {
                    tracing::info!(key = %key, %status, "background revalidation failed: the entry stays stale");
                }
            }
        });
    }

    /// An answer from the cache: the stored body with the head the policy gives (its `Age`
    /// updated), what the backends run hidden, `X-Cache` saying how it was found.
    /// `conditional`: the request's `If-None-Match` and `If-Modified-Since` are the client's
    /// own (not the ones a revalidation put there).
    #[allow(clippy::too_many_arguments)]
    fn answer_from_cache(
        &self,
        up: &Upstreams,
        entry: &cache::Entry,
        head: hyper::http::response::Parts,
        request: &hyper::http::request::Parts,
        conditional: bool,
        info: &ConnInfo,
        outcome: CacheOutcome,
    ) -> Response<Download> {
        // Counted here, where every answer from the cache passes: `up.cache` is the cache the
        // request was looked up in (one configuration per request).
        if let Some(cache) = &up.cache {
            cache.count(outcome);
        }
        let mut head = head;
        // RFC 9111 §4.3.2: a client's own conditional request that the stored answer satisfies
        // is answered 304, without the body it already has.
        let unchanged = conditional
            && entry.status == StatusCode::OK
            && cache::not_modified(&request.headers, &head.headers);
        if unchanged {
            head.headers = cache::not_modified_fields(&head.headers);
        }
        let mut response = Response::from_parts(head, Download::new(Payload::Full(None), None));
        *response.status_mut() = match unchanged {
            true => StatusCode::NOT_MODIFIED,
            false => entry.status,
        };
        if request.method != Method::HEAD && !unchanged {
            *response.body_mut() = Download::new(Payload::Full(Some(entry.body.clone())), None);
        }
        if !unchanged && (entry.status == StatusCode::OK || entry.partial.is_some()) {
            answer_range(&mut response, request, entry);
        }
        up.hide(response.headers_mut());
        // Compressed on the way out as any answer is (the entry is stored as the backend sent
        // it, so one entry serves every client whatever it accepts), as nginx's gzip does.
        if let Some(min) = up.settings.compress
            && !unchanged
            && compress::applies(
                entry.status,
                response.headers(),
                request.headers.contains_key(header::RANGE),
                request.method == Method::HEAD,
                min,
            )
        {
            compress::vary(response.headers_mut());
            let coding = compress::negotiate(request.headers.get(header::ACCEPT_ENCODING));
            if let Some(coding) = coding
                && let Ok(mut encoder) = compress::Encoder::new(coding)
                && let Ok(head) = encoder.push(&entry.body)
                && let Ok(tail) = encoder.finish()
            {
                compress::encode_headers(response.headers_mut(), coding);
                let body = [head, tail].concat();
                *response.body_mut() = Download::new(Payload::Full(Some(body.into())), None);
            }
        }
        response
            .headers_mut()
            .insert(cache::X_CACHE, outcome.header());
        let line = Line {
            client: info.client,
            method: request.method.clone(),
            path: request
                .uri
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
            backend: Some(Arc::from("cache")),
            affinity: AffinityOutcome::Off,
            started: Instant::now(),
        };
        let status = response.status();
        response
            .body_mut()
            .set_on_end(Box::new(move |bytes, complete| {
                line.log(status, bytes, complete)
            }));
        response
    }
}

/// When the backend's answer (`origin`, its head as received) to `original` may be stored
/// under `key`, copies its body into the cache as it streams through `response`; `fetching`
/// is held until it is stored, so that requests waiting for this key look again only then.
/// Whether it is being copied.
fn store_as_it_streams(
    cache: &Arc<Cache>,
    response: &mut Response<Download>,
    key: String,
    original: Parts,
    origin: Option<hyper::http::response::Parts>,
    fetching: Option<cache::Fetching>,
    now: SystemTime,
) -> bool {
    let Some(head) = origin else {
        return false;
    };
    let Some(storing) = cache.policy_for(&original, &head, now) else {
        return false;
    };
    let store = Arc::clone(cache);
    let cache::Storing {
        policy,
        reservation,
    } = storing;
    response.body_mut().set_tap(body::Tap::new(
        reservation,
        Box::new(move |bytes, reservation| {
            let now = SystemTime::now();
            store.store(
                &key,
                policy,
                &original,
                &head,
                bytes,
                now,
                Some(reservation),
            );
            // Waiters look again only once it is stored.
            drop(fetching);
        }),
    ));
    true
}

/// RFC 9110 §14: a `Range` request answered from a stored answer, as the backend would have:
/// one `bytes=` range is a `206` with that part and its `Content-Range`; a range past the end
/// is a `416`; several ranges, an unparsable one, or an `If-Range` that no longer names this
/// answer (§13.1.5: a strong `ETag` match, or exactly its `Last-Modified`) get the whole
/// answer, which a server may always send. A stored part (RFC 9111 §3.3) is here only for a
/// range it holds (`Entry::answers`). Compression is left out for a range already
/// (`compress::applies`).
fn answer_range(response: &mut Response<Download>, request: &Parts, entry: &cache::Entry) {
    use crate::http::static_files::{Ranged, byte_range};
    let Some(range) = request.headers.get(header::RANGE) else {
        return;
    };
    let stored = response.headers();
    if request.method != Method::GET || !cache::if_range_holds(&request.headers, stored) {
        return;
    }
    let (span, body) = (entry.span(), &entry.body);
    let (len, held) = (span.complete, span.first..span.first + body.len() as u64);
    let (status, content_range, part) = match byte_range(range, len) {
        Ranged::Whole if entry.partial.is_none() => return,
        Ranged::Part(first, last) if held.contains(&first) && held.contains(&last) => (
            StatusCode::PARTIAL_CONTENT,
            format!("bytes {first}-{last}/{len}"),
            body.slice((first - span.first) as usize..=(last - span.first) as usize),
        ),
        // What a part does not hold never comes here (`Entry::answers`).
        Ranged::Whole | Ranged::Part(..) => return,
        Ranged::Unsatisfiable => (
            StatusCode::RANGE_NOT_SATISFIABLE,
            format!("bytes */{len}"),
            bytes::Bytes::new(),
        ),
    };
    let headers = response.headers_mut();
    if let Ok(value) = header::HeaderValue::from_str(&content_range) {
        headers.insert(header::CONTENT_RANGE, value);
    }
    headers.insert(
        header::CONTENT_LENGTH,
        header::HeaderValue::from(part.len()),
    );
    *response.status_mut() = status;
    *response.body_mut() = Download::new(Payload::Full(Some(part)), None);
}

//! A small etcd v3 client over etcd's JSON gateway (chapter 15): what discovery and
//! self-registration need, and nothing else.
//!
//! etcd speaks gRPC; it also serves every call as JSON over HTTP/1.1 (`POST /v3/kv/range`,
//! `/v3/watch`, `/v3/lease/grant` …), bytes in base64, 64-bit numbers as strings. Going through
//! the gateway with the HTTP client we already have (hyper) costs no new build step, where the
//! usual crate, `etcd-client`, needs `protoc` and tonic's code generation at build time (the
//! README's chapter 15 gives the numbers). A watch is one long response whose body is a stream
//! of JSON objects, one per line.
//!
//! Several endpoints fail over: each call goes to the endpoint that last answered, then to
//! the others in turn.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::BytesMut;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde_json::{Value, json};
use tokio::net::TcpStream;

use crate::backend::HostPort;
use crate::http::client::{self, next_chunk};

/// How long a unary call (range, put, grant …) may take on one endpoint.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// An etcd cluster, by its client endpoints.
#[derive(Debug)]
pub struct Etcd {
    endpoints: Vec<HostPort>,
    /// The endpoint that last answered: tried first.
    preferred: AtomicUsize,
}

/// One change under a watched prefix. Keys are bytes, as etcd stores them: one that is not
/// UTF-8 is the caller's to skip, never a reason to fail the whole listing or watch (a single
/// such key used to stop discovery for good).
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    Put { key: Vec<u8>, value: Vec<u8> },
    Delete { key: Vec<u8> },
}

/// What every etcd answer says about the store it came from: its revision, and the cluster's
/// id. A revision lower than one already seen, or another id, means the store was replaced
/// (data lost, a new cluster on the same address): nothing learnt from the old one holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub revision: i64,
    /// A u64 the gateway writes as a string; kept as text, it is only compared.
    pub cluster_id: String,
}

impl Header {
    /// Why `self`, read now, cannot come from the store `earlier` was read from; `None` when
    /// it can.
    pub fn replaces(&self, earlier: &Header) -> Option<String> {
        if !earlier.cluster_id.is_empty()
            && !self.cluster_id.is_empty()
            && self.cluster_id != earlier.cluster_id
        {
            return Some(format!(
                "its cluster id changed from {} to {}",
                earlier.cluster_id, self.cluster_id
            ));
        }
        (self.revision < earlier.revision).then(|| {
            format!(
                "its revision went back from {} to {}",
                earlier.revision, self.revision
            )
        })
    }
}

/// What a watch delivers: changes, and the revision they bring the prefix to.
#[derive(Debug)]
pub enum Watched {
    Events {
        revision: i64,
        events: Vec<Event>,
    },
    /// The revision asked for was compacted away: list the prefix again.
    Compacted,
}

impl Etcd {
    /// `urls` as given to `--etcd`: `http://HOST:PORT`, at least one.
    pub fn new(urls: &[String]) -> Result<Etcd, String> {
        let endpoints = urls
            .iter()
            .map(|u| parse_endpoint(u))
            .collect::<Result<Vec<_>, _>>()?;
        if endpoints.is_empty() {
            return Err("no etcd endpoint".to_owned());
        }
        Ok(Etcd {
            endpoints,
            preferred: AtomicUsize::new(0),
        })
    }

    /// The endpoints, for logs.
    pub fn endpoints(&self) -> String {
        self.endpoints
            .iter()
            .map(|e| format!("http://{e}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Every key under `prefix` and its value, with the header of the store they were read
    /// from.
    pub async fn range(&self, prefix: &str) -> io::Result<(Header, Vec<(Vec<u8>, Vec<u8>)>)> {
        let body =
            json!({ "key": B64.encode(prefix), "range_end": B64.encode(prefix_end(prefix)) });
        let answer = self.call("/v3/kv/range", body).await?;
        let mut kvs = Vec::new();
        for kv in answer["kvs"].as_array().into_iter().flatten() {
            kvs.push((bytes(&kv["key"])?, bytes(&kv["value"])?));
        }
        Ok((header(&answer)?, kvs))
    }

    /// The store's header, from the cheapest read there is (a count of the keys under
    /// `prefix`), asked of the endpoint `watch` is open on and no other: proof that this
    /// endpoint answers now (another one answering would prove nothing about the watch), and
    /// of which store it is.
    pub async fn probe(&self, prefix: &str, watch: &Watch) -> io::Result<Header> {
        let body = json!({
            "key": B64.encode(prefix),
            "range_end": B64.encode(prefix_end(prefix)),
            "count_only": true,
        });
        header(
            &self
                .call_on(Some(watch.endpoint), "/v3/kv/range", body)
                .await?,
        )
    }

    /// Puts `key` = `value`, attached to `lease` (0: none).
    pub async fn put(&self, key: &str, value: &[u8], lease: i64) -> io::Result<()> {
        let mut body = json!({ "key": B64.encode(key), "value": B64.encode(value) });
        if lease != 0 {
            body["lease"] = json!(lease.to_string());
        }
        self.call("/v3/kv/put", body).await.map(drop)
    }

    /// Deletes `key`.
    pub async fn delete(&self, key: &str) -> io::Result<()> {
        self.call("/v3/kv/deleterange", json!({ "key": B64.encode(key) }))
            .await
            .map(drop)
    }

    /// A new lease of `ttl` seconds; its id.
    pub async fn grant(&self, ttl: i64) -> io::Result<i64> {
        let answer = self
            .call("/v3/lease/grant", json!({ "TTL": ttl.to_string() }))
            .await?;
        number(&answer["ID"])
    }

    /// Renews `lease`; the seconds it has left, 0 when it is gone (expired or revoked).
    pub async fn keep_alive(&self, lease: i64) -> io::Result<i64> {
        let answer = self
            .call("/v3/lease/keepalive", json!({ "ID": lease.to_string() }))
            .await?;
        // A stream of answers; one is enough. A missing TTL means 0: the lease is gone.
        let result = answer.get("result").unwrap_or(&answer);
        Ok(number(&result["TTL"]).unwrap_or(0))
    }

    /// Revokes `lease`: every key attached to it is deleted at once.
    pub async fn revoke(&self, lease: i64) -> io::Result<()> {
        self.call("/v3/lease/revoke", json!({ "ID": lease.to_string() }))
            .await
            .map(drop)
    }

    /// Watches `prefix` from `revision` (inclusive) on the first endpoint that accepts.
    pub async fn watch(&self, prefix: &str, revision: i64) -> io::Result<Watch> {
        let body = json!({ "create_request": {
            "key": B64.encode(prefix),
            "range_end": B64.encode(prefix_end(prefix)),
            "start_revision": revision.to_string(),
        }});
        let (endpoint, status, body) = self.send(None, "/v3/watch", body).await?;
        if status != StatusCode::OK {
            return Err(io::Error::other(format!(
                "etcd answered the watch with {status}"
            )));
        }
        Ok(Watch {
            body,
            buffered: BytesMut::new(),
            endpoint,
        })
    }

    /// A unary call: the answer, parsed.
    async fn call(&self, path: &str, body: Value) -> io::Result<Value> {
        self.call_on(None, path, body).await
    }

    /// A unary call to endpoint `only`, or to any (see [`Etcd::send`]).
    async fn call_on(&self, only: Option<usize>, path: &str, body: Value) -> io::Result<Value> {
        let (_, status, mut body) = self.send(only, path, body).await?;
        let read = async {
            let mut all = BytesMut::new();
            while let Some(chunk) = next_chunk(&mut body).await? {
                all.extend_from_slice(&chunk);
                // A keep-alive stream never ends: its first line is the answer.
                if path == "/v3/lease/keepalive" && all.contains(&b'\n') {
                    break;
                }
            }
            io::Result::Ok(all)
        };
        let all = tokio::time::timeout(CALL_TIMEOUT, read)
            .await
            .map_err(|_| {
                io::Error::new(io::ErrorKind::TimedOut, "etcd did not answer in time")
            })??;
        let line = all[..].split(|&b| b == b'\n').next().unwrap_or_default();
        let answer: Value = serde_json::from_slice(line)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("etcd: {e}")))?;
        if status != StatusCode::OK {
            let message = answer["message"].as_str().or(answer["error"].as_str());
            return Err(io::Error::other(format!(
                "etcd answered {status}: {}",
                message.unwrap_or("(no message)")
            )));
        }
        Ok(answer)
    }

    /// Sends `body` to `path` on the preferred endpoint, failing over to the others (or on
    /// endpoint `only`, by its index, and no other); which endpoint answered, the status, and
    /// the body to read. Each endpoint has [`CALL_TIMEOUT`] to answer with a head (a watch's
    /// body then lasts as long as it runs).
    async fn send(
        &self,
        only: Option<usize>,
        path: &str,
        body: Value,
    ) -> io::Result<(usize, StatusCode, Incoming)> {
        let first = only.unwrap_or_else(|| self.preferred.load(Ordering::Relaxed));
        let tries = if only.is_some() {
            1
        } else {
            self.endpoints.len()
        };
        let mut last = io::Error::other("no endpoint");
        for k in 0..tries {
            let i = (first + k) % self.endpoints.len();
            let endpoint = &self.endpoints[i];
            let attempt = tokio::time::timeout(CALL_TIMEOUT, request(endpoint, path, &body)).await;
            match attempt {
                Ok(Ok((status, body))) => {
                    self.preferred.store(i, Ordering::Relaxed);
                    return Ok((i, status, body));
                }
                Ok(Err(e)) => last = io::Error::new(e.kind(), format!("http://{endpoint}: {e}")),
                Err(_) => {
                    last = io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("http://{endpoint}: no answer in time"),
                    )
                }
            }
        }
        Err(last)
    }
}

/// An open watch: call [`Watch::next`] for each batch of changes.
pub struct Watch {
    body: Incoming,
    buffered: BytesMut,
    endpoint: usize,
}

impl Watch {
    /// The next batch of changes; `Ok(None)` when etcd ended the stream (it is restarting,
    /// the connection broke): watch again from the last revision.
    pub async fn next(&mut self) -> io::Result<Option<Watched>> {
        loop {
            if let Some(end) = self.buffered.iter().position(|&b| b == b'\n') {
                let line = self.buffered.split_to(end + 1);
                let line = &line[..end];
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let value: Value = serde_json::from_slice(line).map_err(|e| {
                    io::Error::new(io::ErrorKind::InvalidData, format!("etcd watch: {e}"))
                })?;
                if let Some(watched) = parse_watch(&value)? {
                    return Ok(Some(watched));
                }
                continue;
            }
            match next_chunk(&mut self.body).await? {
                Some(chunk) => self.buffered.extend_from_slice(&chunk),
                None => return Ok(None),
            }
        }
    }
}

/// One line of a watch stream: changes, a compaction, or nothing to report (the `created`
/// acknowledgement, a progress notice).
fn parse_watch(value: &Value) -> io::Result<Option<Watched>> {
    if let Some(error) = value.get("error") {
        return Err(io::Error::other(format!("etcd watch failed: {error}")));
    }
    let result = &value["result"];
    if number(&result["compact_revision"]).unwrap_or(0) > 0 {
        return Ok(Some(Watched::Compacted));
    }
    if result["canceled"].as_bool() == Some(true) {
        return Err(io::Error::other(format!(
            "etcd canceled the watch: {}",
            result["cancel_reason"]
                .as_str()
                .unwrap_or("no reason given")
        )));
    }
    let Some(events) = result["events"].as_array() else {
        return Ok(None);
    };
    let mut out = Vec::with_capacity(events.len());
    for event in events {
        let kv = &event["kv"];
        let key = bytes(&kv["key"])?;
        // PUT is the enum's default, so the JSON leaves it out.
        out.push(match event["type"].as_str() {
            Some("DELETE") => Event::Delete { key },
            _ => Event::Put {
                key,
                value: bytes(&kv["value"])?,
            },
        });
    }
    Ok(Some(Watched::Events {
        revision: revision(result)?,
        events: out,
    }))
}

/// One HTTP/1.1 exchange with `endpoint`: the status and the body, still streaming.
async fn request(
    endpoint: &HostPort,
    path: &str,
    body: &Value,
) -> io::Result<(StatusCode, Incoming)> {
    let tcp = TcpStream::connect((endpoint.host.as_str(), endpoint.port)).await?;
    tcp.set_nodelay(true)?;
    let request = Request::post(path)
        .header(hyper::header::HOST, endpoint.to_string())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(client::body(body.to_string()))
        .map_err(io::Error::other)?;
    let response = client::send(tcp, request).await?;
    Ok((response.status(), response.into_body()))
}

/// The first key after every key that starts with `prefix`: a range's end.
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte 0xff (or empty): to the end of the keyspace.
    vec![0]
}

fn parse_endpoint(url: &str) -> Result<HostPort, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("`{url}` is not an etcd endpoint (http://HOST:PORT)"))?;
    rest.trim_end_matches('/').parse()
}

fn revision(value: &Value) -> io::Result<i64> {
    number(&value["header"]["revision"])
}

fn header(value: &Value) -> io::Result<Header> {
    Ok(Header {
        revision: revision(value)?,
        cluster_id: match &value["header"]["cluster_id"] {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => String::new(),
        },
    })
}

/// A 64-bit number as the gateway writes it: a string (or, for small ones, a number).
fn number(value: &Value) -> io::Result<i64> {
    match value {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_i64(),
        _ => None,
    }
    .ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("etcd: `{value}` is not a number"),
        )
    })
}

fn bytes(value: &Value) -> io::Result<Vec<u8>> {
    match value.as_str() {
        // An empty value is left out of the JSON.
        None => Ok(Vec::new()),
        Some(s) => B64
            .decode(s)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("etcd: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_ends_after_its_last_key() {
        assert_eq!(prefix_end("/lb/"), b"/lb0");
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80");
        assert_eq!(prefix_end(""), vec![0]);
    }

    #[test]
    fn watch_lines_are_changes_compactions_or_nothing() {
        let created: Value =
            serde_json::from_str(r#"{"result":{"header":{"revision":"2"},"created":true}}"#)
                .unwrap();
        assert!(parse_watch(&created).unwrap().is_none());
        let events: Value = serde_json::from_str(
            r#"{"result":{"header":{"revision":"3"},"events":[
                {"kv":{"key":"L2xiL2E=","value":"eA=="}},
                {"type":"DELETE","kv":{"key":"L2xiL2E="}}]}}"#,
        )
        .unwrap();
        match parse_watch(&events).unwrap() {
            Some(Watched::Events { revision, events }) => {
                assert_eq!(revision, 3);
                assert_eq!(
                    events,
                    [
                        Event::Put {
                            key: b"/lb/a".to_vec(),
                            value: b"x".to_vec()
                        },
                        Event::Delete {
                            key: b"/lb/a".to_vec()
                        }
                    ]
                );
            }
            other => panic!("{other:?}"),
        }
        let compacted: Value = serde_json::from_str(
            r#"{"result":{"header":{"revision":"9"},"compact_revision":"5","canceled":true}}"#,
        )
        .unwrap();
        assert!(matches!(
            parse_watch(&compacted).unwrap(),
            Some(Watched::Compacted)
        ));
        let bad: Value =
            serde_json::from_str(r#"{"result":{"header":{"revision":"x"},"events":[]}}"#).unwrap();
        assert!(parse_watch(&bad).is_err());
    }

    #[test]
    fn a_key_that_is_not_utf8_is_an_event_like_any_other() {
        // "L2xiL//+" is `/lb/` followed by the bytes ff fe.
        let events: Value = serde_json::from_str(
            r#"{"result":{"header":{"revision":"4"},"events":[{"kv":{"key":"L2xiL//+","value":"eA=="}}]}}"#,
        )
        .unwrap();
        match parse_watch(&events).unwrap() {
            Some(Watched::Events { events, .. }) => assert_eq!(
                events,
                [Event::Put {
                    key: b"/lb/\xff\xfe".to_vec(),
                    value: b"x".to_vec()
                }]
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_store_is_replaced_when_its_revision_goes_back_or_its_id_changes() {
        let at = |revision, id: &str| Header {
            revision,
            cluster_id: id.to_owned(),
        };
        assert_eq!(at(30, "7").replaces(&at(27, "7")), None);
        assert_eq!(at(27, "7").replaces(&at(27, "7")), None);
        assert!(at(3, "7").replaces(&at(27, "7")).is_some());
        assert!(at(30, "8").replaces(&at(27, "7")).is_some());
        // An answer without an id (an old gateway) is judged by its revision alone.
        assert_eq!(at(30, "").replaces(&at(27, "7")), None);
    }

    #[test]
    fn endpoints_are_http_urls() {
        assert!(Etcd::new(&["http://127.0.0.1:2379".into()]).is_ok());
        assert!(Etcd::new(&["127.0.0.1:2379".into()]).is_err());
        assert!(Etcd::new(&[]).is_err());
    }
}

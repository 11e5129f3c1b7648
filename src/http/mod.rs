//! Layer 7: the HTTP balancer of chapter 12 (`http-lb`), and what the chapters after it build
//! on (the SSL farm's third tier, assign-and-register, caching).
//!
//! Up to chapter 11 the balancer moves bytes and never reads them. Reading each HTTP request
//! lets it balance every request on its own over kept-alive backend connections, pin a user to
//! a backend by a cookie, tell the backend who the client is, and answer errors in the
//! protocol the client speaks. What it shares with `tcp-lb` stays one level up in the library
//! (strategies, health, limits, TLS, metrics, the admin listener, the listener's admission);
//! only what is HTTP lives here:
//!
//! | module | what it holds |
//! |---|---|
//! | [`affinity`] | the affinity cookie: a keyed hash of the backend, never its address |
//! | [`fields`] | a head's fields, as a map (hyper's path) or where they were read (the own path) |
//! | [`exchange`] | one exchange's decisions for both codecs: framing, target and Host, retries, failures |
//! | [`forward`] | RFC 9110's forwarding rules: hop-by-hop fields, `X-Forwarded-*`, `Via` |
//! | [`body`] | bodies streamed both ways, the `max-body` cap |
//! | [`pool`] | keep-alive connections to each backend |
//! | [`metrics`] | per-request counters and the latency histogram |
//! | [`balancer`] | the per-request balancer: pick, send (through hyper), retry, upgrade, answer errors |
//! | `h1` | the own HTTP/1 codec for the common request: wire work over the same decisions; and (`h1/hop.rs`) the own HTTP/1.1 hop to a backend for an HTTP/2 stream without a body |
//! | [`h2`] | chapter 17: HTTP/2 from clients (ALPN `h2`, or `--h2c`), each stream a request through the shared decisions, with the HTTP/2 attacks bounded: the own codec (`h2/`: frames, HPACK, heads, the connection), or hyper's server with `LB_H2_OWN=off` |
//! | [`grpc`] | chapter 17: gRPC calls: our failures as gRPC statuses, the call's deadline as ours |
//! | `early_hints` | a backend's `103 Early Hints` to the client on hyper's path, written under hyper's server |
//! | [`app`] | `http-lb`'s flags, its `[http]` config section, start-up and reload |
//! | [`assign`] | chapter 14's assignment mode: a 307 to the chosen server, or JSON |
//! | [`cache`] | chapter 16: a shared response cache (RFC 9111), bounded, collapsed, stale-if-error; `cache/serve.rs`, a request's way through it |
//! | [`compress`] | chapter 16: gzip, brotli, zstd by the client's q-values, streamed |
//! | [`route`] | chapter 16: routes by path prefix and host, to a pool, a folder or a redirect |
//! | [`static_files`] | chapter 16: a folder served directly, ETags, ranges, no escape |
//! | [`client`] | the project's own calls as a client: registration, `assign-client`, `/metrics`, etcd |

pub mod affinity;
pub mod app;
pub mod assign;
pub mod balancer;
pub mod body;
pub mod cache;
pub mod client;
pub mod compress;
mod early_hints;
pub mod exchange;
pub mod fields;
pub mod forward;
pub mod grpc;
mod h1;
pub mod h2;
pub mod metrics;
pub mod pool;
pub mod route;
pub mod static_files;

/// Where `http-lb` listens unless told otherwise: beside `tcp-lb`'s 3000.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

//! Chapter 15: backends from etcd, shared by every balancer. Each test starts its own etcd
//! (Debian's `etcd-server`; `.ci/run` installs it) on free loopback ports with a temporary
//! data folder, and stops it by PID.
//!
//! Without an `etcd` on the PATH when they are built, these tests are *ignored*, with the
//! reason, so that `cargo test` stays green on a machine that has only the Rust toolchain and
//! says so in its summary (`build.rs` looks for it). `.ci/run` installs etcd and sets
//! `LB_REQUIRE_ETCD=1`, which makes a missing etcd a build failure there.

mod common;

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use common::{PATIENCE, Proc, connect, eventually, temp_dir};

/// An etcd server of our own, killed when dropped.
struct Etcd {
    child: Option<Child>,
    client: SocketAddr,
    peer: SocketAddr,
    dir: PathBuf,
    /// Its two ports, kept from every other socket for its whole life, stopped or running
    /// (see `common::refusing_port`).
    _reserved: [tokio::net::TcpSocket; 2],
}

/// Whether the tests can run: an `etcd` on the PATH, or a failure if CI requires one.
fn have_etcd() -> bool {
    let found = Command::new("etcd")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var_os("LB_REQUIRE_ETCD").is_none(),
            "etcd is not installed (apt-get install etcd-server)"
        );
        eprintln!(
            "SKIPPED: no etcd on the PATH (apt-get install etcd-server to run chapter 15's tests)"
        );
    }
    found
}

impl Etcd {
    fn start() -> Etcd {
        let dir = temp_dir("etcd");
        let ((client, client_guard), (peer, peer_guard)) =
            (common::refusing_port(), common::refusing_port());
        let mut etcd = Etcd {
            child: None,
            client,
            peer,
            dir,
            _reserved: [client_guard, peer_guard],
        };
        etcd.run();
        etcd
    }

    /// Starts (or restarts) the server on its ports and data folder, and waits for its
    /// readiness line (`ready to serve client requests`), copying its log to `etcd.log`.
    fn run(&mut self) {
        use std::io::{BufRead as _, Write as _};
        let client = format!("http://{}", self.client);
        let peer = format!("http://{}", self.peer);
        let mut log = std::fs::File::create(self.dir.join("etcd.log")).unwrap();
        let mut child = Command::new("etcd")
            .args(["--name", "test", "--data-dir"])
            .arg(self.dir.join("data"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("test={peer}")])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("etcd (Debian's etcd-server) must be installed: .ci/run installs it");
        let (ready, is_ready) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let _ = writeln!(log, "{line}");
                if line.contains("ready to serve client requests") {
                    let _ = ready.send(());
                }
            }
        });
        self.child = Some(child);
        is_ready.recv_timeout(PATIENCE).unwrap_or_else(|_| {
            panic!(
                "etcd did not start; see {}",
                self.dir.join("etcd.log").display()
            )
        });
    }

    /// Stops it (SIGTERM, by PID), keeping its data.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
    }

    /// Sends it a signal by PID (`STOP` freezes it with every connection left open: a
    /// partition, as a client sees one).
    fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            let status = Command::new("kill")
                .args([format!("-{signal}"), child.id().to_string()])
                .status()
                .unwrap();
            assert!(status.success());
        }
    }

    /// Stops it, loses its data, and starts a fresh store on the same address: revisions
    /// start again from 1.
    fn replace(&mut self) {
        self.stop();
        std::fs::remove_dir_all(self.dir.join("data")).unwrap();
        self.run();
    }

    /// The store's revision now.
    fn revision(&self) -> u64 {
        let text = post(
            self.client,
            "/v3/kv/range",
            &format!(r#"{{"key":"{}","count_only":true}}"#, B64.encode("/")),
        )
        .expect("etcd range");
        let at = text.find(r#""revision":""#).expect("a revision") + 12;
        text[at..].split('"').next().unwrap().parse().unwrap()
    }

    fn url(&self) -> String {
        format!("http://{}", self.client)
    }

    fn put(&self, key: &str, value: &str) {
        self.put_bytes(key.as_bytes(), value);
    }

    /// A put whose key may be any bytes, as etcd allows.
    fn put_bytes(&self, key: &[u8], value: &str) {
        let body = format!(
            r#"{{"key":"{}","value":"{}"}}"#,
            B64.encode(key),
            B64.encode(value)
        );
        post(self.client, "/v3/kv/put", &body).expect("etcd put");
    }

    fn delete(&self, key: &str) {
        post(
            self.client,
            "/v3/kv/deleterange",
            &format!(r#"{{"key":"{}"}}"#, B64.encode(key)),
        )
        .expect("etcd delete");
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
        // etcd preallocates its write-ahead log (64 MiB a segment): left behind, a few dozen
        // test runs fill a disk.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One JSON call to etcd's gateway; the answer's body, or `None` if it did not answer 200.
fn post(addr: SocketAddr, path: &str, body: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "POST {path} HTTP/1.1\r\nhost: etcd\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.starts_with("HTTP/1.1 200").then_some(text)
}

/// A balancer (`tcp-lb` or `http-lb`) discovering its backends under `prefix`.
fn balancer(bin: &str, etcd: &Etcd, prefix: &str) -> Proc {
    balancer_with(bin, &[&etcd.url()], prefix, &[])
}

/// [`balancer`] with these etcd endpoints and more flags.
fn balancer_with(bin: &str, endpoints: &[&str], prefix: &str, extra: &[&str]) -> Proc {
    let mut args = vec!["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"];
    for e in endpoints {
        args.extend(["--etcd", e]);
    }
    args.extend(["--etcd-prefix", prefix, "--health-interval", "0"]);
    args.extend_from_slice(extra);
    Proc::start(bin, &args, 2)
}

/// A server registering in etcd under `prefix` with a `ttl`.
fn server(name: &str, etcd: &Etcd, prefix: &str, ttl: &str) -> Proc {
    let register = format!("etcd://{}{prefix}", etcd.client);
    Proc::start(
        bin!("dummy-server"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--name",
            name,
            "--register",
            &register,
            "--register-ttl",
            ttl,
        ],
        1,
    )
}

/// The `x-served-by` of one request through `lb`, or `None` if no backend answered.
fn served_by(lb: SocketAddr) -> Option<String> {
    let mut s = connect(lb);
    write!(s, "GET / HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.lines()
        .find_map(|l| l.strip_prefix("x-served-by: "))
        .map(|s| s.trim().to_owned())
}

/// A metric's value from `admin`'s `/metrics`.
fn metric(admin: SocketAddr, name: &str) -> Option<u64> {
    let text = common::get(admin, "/metrics").text();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// A server that registers in etcd is balanced to by two `tcp-lb` and one `http-lb` watching
/// the prefix; killed with SIGKILL it is gone from all three within its TTL (plus a second);
/// stopped with SIGTERM it is gone at once (its lease revoked).
#[test]
#[cfg_attr(
    etcd_missing,
    ignore = "no etcd on the PATH when built: apt-get install etcd-server, then touch build.rs"
)]
fn every_balancer_follows_the_servers_in_etcd() {
    if !have_etcd() {
        return;
    }
    let etcd = Etcd::start();
    let prefix = "/lb/web/";
    // The second knows a dead member first: it fails over to the live one.
    let (dead, _keep) = common::refusing_port();
    let dead = format!("http://{dead}");
    let lbs = [
        balancer(bin!("tcp-lb"), &etcd, prefix),
        balancer_with(bin!("tcp-lb"), &[&dead, &etcd.url()], prefix, &[]),
        balancer(bin!("http-lb"), &etcd, prefix),
    ];
    for lb in &lbs {
        assert_eq!(
            served_by(lb.addr()),
            None,
            "no backend yet, and no demo servers"
        );
        assert!(!lb.stderr().contains("Go finale"));
    }
    let started = Instant::now();
    let crashing = server("s1", &etcd, prefix, "2");
    for lb in &lbs {
        eventually("s1 reaches every balancer", PATIENCE, || {
            served_by(lb.addr()).as_deref() == Some("s1")
        });
    }
    eprintln!(
        "s1 served by all three {:?} after its start",
        started.elapsed()
    );

    crashing.signal("KILL");
    let killed = Instant::now();
    for (lb, gauge) in lbs.iter().zip(["tcplb", "tcplb", "httplb"]) {
        // TTL 2 s, plus a second.
        let gauge = format!("{gauge}_etcd_backends");
        eventually("s1 gone after its lease", Duration::from_secs(3), || {
            metric(lb.addrs[1], &gauge) == Some(0)
        });
    }
    eprintln!(
        "s1 gone everywhere {:?} after SIGKILL (TTL 2 s)",
        killed.elapsed()
    );

    let leaving = server("s2", &etcd, prefix, "60");
    for lb in &lbs {
        eventually("s2 reaches every balancer", PATIENCE, || {
            served_by(lb.addr()).as_deref() == Some("s2")
        });
    }
    leaving.signal("TERM");
    for lb in &lbs {
        // A 60 s lease: only the revocation explains it leaving now.
        eventually("s2 gone at once", Duration::from_secs(5), || {
            served_by(lb.addr()).is_none()
        });
    }
}

/// etcd stopped: every balancer keeps serving the last set, and says discovery is stale;
/// a server that registers meanwhile keeps trying; etcd restarted with its data: the
/// balancers resync from the revision they saw, and the newcomer appears.
#[test]
#[cfg_attr(
    etcd_missing,
    ignore = "no etcd on the PATH when built: apt-get install etcd-server, then touch build.rs"
)]
fn balancers_serve_through_an_etcd_outage_and_resync() {
    if !have_etcd() {
        return;
    }
    let mut etcd = Etcd::start();
    let prefix = "/lb/outage/";
    let lb = balancer(bin!("tcp-lb"), &etcd, prefix);
    let _s1 = server("s1", &etcd, prefix, "30");
    eventually("s1 served", PATIENCE, || {
        served_by(lb.addr()).as_deref() == Some("s1")
    });

    etcd.stop();
    eventually("stale", PATIENCE, || {
        metric(lb.addrs[1], "tcplb_etcd_stale") == Some(1)
    });
    let health = common::get(lb.addrs[1], "/health");
    assert_eq!(health.status, 200);
    assert!(health.text().contains("stale"), "{}", health.text());
    for _ in 0..10 {
        assert_eq!(served_by(lb.addr()).as_deref(), Some("s1"));
    }
    let _s2 = server("s2", &etcd, prefix, "30");

    etcd.run();
    eventually("resynced", PATIENCE, || {
        metric(lb.addrs[1], "tcplb_etcd_stale") == Some(0)
    });
    eventually("s2 appears", PATIENCE, || {
        metric(lb.addrs[1], "tcplb_etcd_backends") == Some(2)
    });
    let seen: std::collections::HashSet<String> =
        (0..10).filter_map(|_| served_by(lb.addr())).collect();
    assert_eq!(seen.len(), 2, "{seen:?}");
}

/// etcd down when the balancer starts: it starts with its config's backends, retries, and
/// picks up etcd's once it answers.
#[test]
#[cfg_attr(
    etcd_missing,
    ignore = "no etcd on the PATH when built: apt-get install etcd-server, then touch build.rs"
)]
fn a_balancer_starts_without_etcd_and_catches_up() {
    if !have_etcd() {
        return;
    }
    let mut etcd = Etcd::start();
    let prefix = "/lb/late/";
    etcd.stop();
    let (_dummy, backends) = common::dummies(1);
    let url = etcd.url();
    let mut args = vec![
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--etcd",
        &url,
        "--etcd-prefix",
        prefix,
        "--health-interval",
        "0",
    ];
    args.extend(backends.iter().map(String::as_str));
    let lb = Proc::start(bin!("tcp-lb"), &args, 2);
    assert_eq!(served_by(lb.addr()).as_deref(), Some("server1"));
    assert_eq!(metric(lb.addrs[1], "tcplb_etcd_stale"), Some(1));
    etcd.run();
    let _s = server("s1", &etcd, prefix, "30");
    eventually("etcd's backend added", PATIENCE, || {
        metric(lb.addrs[1], "tcplb_etcd_backends") == Some(1)
    });
    let seen: std::collections::HashSet<String> =
        (0..10).filter_map(|_| served_by(lb.addr())).collect();
    assert!(seen.contains("s1") && seen.contains("server1"), "{seen:?}");
}

/// A malformed key is skipped with one log line and never takes the others with it; 1,000
/// keys load at start-up and keep being watched.
#[test]
#[cfg_attr(
    etcd_missing,
    ignore = "no etcd on the PATH when built: apt-get install etcd-server, then touch build.rs"
)]
fn bad_keys_are_skipped_and_a_thousand_load() {
    if !have_etcd() {
        return;
    }
    let etcd = Etcd::start();
    let prefix = "/lb/many/";
    for i in 0..1000 {
        etcd.put(
            &format!("{prefix}b{i}"),
            &format!(r#"{{"address": "127.0.0.1:{}"}}"#, 20000 + i),
        );
    }
    etcd.put(&format!("{prefix}garbage"), "not json");
    etcd.put(&format!("{prefix}no-port"), r#"{"address": "127.0.0.1"}"#);
    etcd.put(
        &format!("{prefix}deeper/x"),
        r#"{"address": "127.0.0.1:1"}"#,
    );
    let lb = balancer(bin!("tcp-lb"), &etcd, prefix);
    assert_eq!(metric(lb.addrs[1], "tcplb_etcd_backends"), Some(1000));
    lb.wait_stderr("etcd key /lb/many/garbage skipped", 1);
    lb.wait_stderr("etcd key /lb/many/no-port skipped", 1);
    // Watched: one more, one fewer, one turned bad.
    etcd.put(
        &format!("{prefix}b1000"),
        r#"{"address": "127.0.0.1:21000"}"#,
    );
    etcd.delete(&format!("{prefix}b0"));
    etcd.put(&format!("{prefix}b1"), "{");
    eventually("the watch applied all three", PATIENCE, || {
        metric(lb.addrs[1], "tcplb_etcd_backends") == Some(999)
    });
    lb.wait_stderr("etcd key /lb/many/b1 skipped", 1);
}

/// A key under the prefix that is not UTF-8 is skipped with one escaped log line and a
/// count; it neither stops the watch of a running balancer nor the listing of one that
/// starts while it exists (issue 27, item 1: it used to stop discovery for good).
#[test]
#[cfg_attr(
    etcd_missing,
    ignore = "no etcd on the PATH when built: apt-get install etcd-server, then touch build.rs"
)]
fn a_key_that_is_not_utf8_stops_nothing() {
    if !have_etcd() {
        return;
    }
    let etcd = Etcd::start();
    let prefix = "/lb/bytes/";
    let (dummies, _) = common::dummies(2);
    let address = |i: usize| format!(r#"{{"address": "{}"}}"#, dummies.addrs[i]);
    etcd.put(&format!("{prefix}s1"), &address(0));
    let running = balancer(bin!("tcp-lb"), &etcd, prefix);
    assert_eq!(served_by(running.addr()).as_deref(), Some("server1"));

    let mut bad = prefix.as_bytes().to_vec();
    bad.extend_from_slice(&[0xff, 0xfe]);
    etcd.put_bytes(&bad, &address(0));
    etcd.put(&format!("{prefix}s2"), &address(1));
    eventually("the watch goes on past the bad key", PATIENCE, || {
        metric(running.addrs[1], "tcplb_etcd_backends") == Some(2)
    });
    running.wait_stderr(
        r"etcd key /lb/bytes/\xff\xfe skipped: a key that is not UTF-8",
        1,
    );
    assert_eq!(
        metric(running.addrs[1], "tcplb_etcd_skipped_total"),
        Some(1)
    );
    assert_eq!(metric(running.addrs[1], "tcplb_etcd_stale"), Some(0));

    let started = balancer(bin!("tcp-lb"), &etcd, prefix);
    assert_eq!(metric(started.addrs[1], "tcplb_etcd_backends"), Some(2));
    assert_eq!(
        metric(started.addrs[1], "tcplb_etcd_skipped_total"),
        Some(1)
    );
    let seen: std::collections::HashSet<String> =
        (0..10).filter_map(|_| served_by(started.addr())).collect();
    assert_eq!(seen.len(), 2, "{seen:?}");
}

/// etcd replaced by a fresh store on the same address (its data lost, revisions restarting
/// at 1): the balancer lists it again from scratch, drops what only the old store had, and
/// follows the new one (issue 27, item 2: it used to wait for its old revision forever).
#[test]
#[cfg_attr(
    etcd_missing,
    ignore = "no etcd on the PATH when built: apt-get install etcd-server, then touch build.rs"
)]
fn a_replaced_store_is_listed_again() {
    if !have_etcd() {
        return;
    }
    let mut etcd = Etcd::start();
    let prefix = "/lb/replaced/";
    let (dummies, _) = common::dummies(2);
    let address = |i: usize| format!(r#"{{"address": "{}"}}"#, dummies.addrs[i]);
    // Revisions well past where the fresh store will be when it is watched.
    for i in 0..30 {
        etcd.put(&format!("/elsewhere/{i}"), "x");
    }
    etcd.put(&format!("{prefix}s1"), &address(0));
    let lb = balancer(bin!("tcp-lb"), &etcd, prefix);
    assert_eq!(served_by(lb.addr()).as_deref(), Some("server1"));
    let old = etcd.revision();

    etcd.replace();
    assert!(etcd.revision() < old, "the fresh store starts again");
    etcd.put(&format!("{prefix}s6"), &address(1));
    eventually("only the new store's server", PATIENCE, || {
        served_by(lb.addr()).as_deref() == Some("server2")
            && metric(lb.addrs[1], "tcplb_etcd_backends") == Some(1)
    });
    lb.wait_stderr("the store was replaced (its revision went back", 1);
    assert_eq!(metric(lb.addrs[1], "tcplb_etcd_stale"), Some(0));
    etcd.put(&format!("{prefix}s7"), &address(0));
    eventually("and then its changes", PATIENCE, || {
        metric(lb.addrs[1], "tcplb_etcd_backends") == Some(2)
    });
}

/// A watch that stays open but says nothing (etcd frozen with SIGSTOP: every connection
/// open, nothing answered, as in a partition) is found out and reported stale, while the
/// last set keeps serving; once etcd answers again, discovery resumes (issue 27, item 3).
#[test]
#[cfg_attr(
    etcd_missing,
    ignore = "no etcd on the PATH when built: apt-get install etcd-server, then touch build.rs"
)]
fn a_silent_watch_is_found_out() {
    if !have_etcd() {
        return;
    }
    let etcd = Etcd::start();
    let prefix = "/lb/silent/";
    let (dummies, _) = common::dummies(2);
    let address = |i: usize| format!(r#"{{"address": "{}"}}"#, dummies.addrs[i]);
    etcd.put(&format!("{prefix}s1"), &address(0));
    let lb = balancer(bin!("http-lb"), &etcd, prefix);
    assert_eq!(metric(lb.addrs[1], "httplb_etcd_backends"), Some(1));
    // A change applied proves the watch is open: frozen any earlier, etcd would be caught
    // not answering the watch's creation instead.
    etcd.put(&format!("{prefix}s2"), &address(1));
    eventually("watching", PATIENCE, || {
        metric(lb.addrs[1], "httplb_etcd_backends") == Some(2)
    });

    etcd.signal("STOP");
    eventually("stale", PATIENCE, || {
        metric(lb.addrs[1], "httplb_etcd_stale") == Some(1)
    });
    lb.wait_stderr("the watch is open but etcd did not answer a check", 1);
    assert!(common::get(lb.addrs[1], "/health").text().contains("stale"));
    assert!(served_by(lb.addr()).is_some(), "the last set keeps serving");

    etcd.signal("CONT");
    eventually("fresh again", PATIENCE, || {
        metric(lb.addrs[1], "httplb_etcd_stale") == Some(0)
    });
    etcd.delete(&format!("{prefix}s2"));
    eventually("and watching", PATIENCE, || {
        metric(lb.addrs[1], "httplb_etcd_backends") == Some(1)
    });
}

/// Bad etcd flags are one-line errors.
#[test]
fn bad_etcd_flags_are_one_line_errors() {
    common::assert_one_line_error(
        bin!("tcp-lb"),
        &["--listen", "127.0.0.1:0", "--etcd", "127.0.0.1:2379"],
        &["etcd endpoint"],
    );
    common::assert_one_line_error(
        bin!("dummy-server"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--register",
            "etcd://127.0.0.1:2379",
        ],
        &["etcd://HOST:PORT/PREFIX/NAME"],
    );
    common::assert_one_line_error(
        bin!("dummy-server"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--listen",
            "127.0.0.1:0",
            "--register",
            "etcd://127.0.0.1:2379/lb/s1",
        ],
        &["end the URL with /"],
    );
}

/// Backends from the config file, from chapter 14's registry and from etcd side by side, and
/// `GET /backends` says where each came from.
#[test]
#[cfg_attr(
    etcd_missing,
    ignore = "no etcd on the PATH when built: apt-get install etcd-server, then touch build.rs"
)]
fn config_registry_and_etcd_backends_live_side_by_side() {
    if !have_etcd() {
        return;
    }
    use std::os::unix::fs::PermissionsExt as _;
    const TOKEN: &str = "0123456789abcdef0123456789abcdef";
    let etcd = Etcd::start();
    let prefix = "/lb/mixed/";
    let token = temp_dir("mixed").join("token");
    std::fs::write(&token, TOKEN).unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (_dummy, backends) = common::dummies(1);
    let mut extra = vec!["--admin-token-file", token.to_str().unwrap()];
    extra.extend(backends.iter().map(String::as_str));
    let lb = balancer_with(bin!("tcp-lb"), &[&etcd.url()], prefix, &extra);
    let _from_etcd = server("e1", &etcd, prefix, "30");
    let admin = format!("http://{}", lb.addrs[1]);
    let _registered = Proc::start(
        bin!("dummy-server"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--name",
            "r1",
            "--register",
            &admin,
            "--register-token-file",
            token.to_str().unwrap(),
        ],
        1,
    );
    let sources = || -> Vec<(String, String)> {
        let mut s = connect(lb.addrs[1]);
        let auth = format!("authorization: Bearer {TOKEN}");
        write!(
            s,
            "GET /backends HTTP/1.1\r\nhost: t\r\n{auth}\r\nconnection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        let json: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        let field = |b: &serde_json::Value, k: &str| b[k].as_str().unwrap_or("").to_owned();
        let mut out: Vec<(String, String)> = json
            .as_array()
            .into_iter()
            .flatten()
            .map(|b| (field(b, "name"), field(b, "source")))
            .collect();
        out.sort();
        out
    };
    eventually("three sources listed", PATIENCE, || sources().len() == 3);
    let listed = sources();
    let source = |name: &str| {
        listed
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s.as_str())
    };
    assert_eq!(source("e1"), Some("etcd"), "{listed:?}");
    assert_eq!(source("r1"), Some("registered"), "{listed:?}");
    assert!(listed.iter().any(|(_, s)| s == "config"), "{listed:?}");
    let seen: std::collections::HashSet<String> =
        (0..12).filter_map(|_| served_by(lb.addr())).collect();
    assert_eq!(seen.len(), 3, "{seen:?}");
    // Each source counts its own: the registered gauge once counted etcd's too.
    let mut s = connect(lb.addrs[1]);
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nhost: t\r\nauthorization: Bearer {TOKEN}\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut metrics = String::new();
    let _ = s.read_to_string(&mut metrics);
    assert!(
        metrics.contains("\ntcplb_registered_backends 1\n"),
        "{metrics}"
    );
    assert!(metrics.contains("\ntcplb_etcd_backends 1\n"), "{metrics}");
}

//! Step 7: mixed plain/TLS backends, TLS listener, config file, the tutorial's strategies.

mod common;

use std::io::Write as _;
use std::path::Path;

use common::tls as tlsc;
use common::*;

/// A plain dummy named `plain` and an HTTPS dummy named `secure`, with certs from `certs`.
fn mixed_backends(certs: &Path) -> (Proc, Proc) {
    let (cert, key) = (certs.join("localhost.pem"), certs.join("localhost-key.pem"));
    let secure = Proc::start(
        bin!("dummy-server"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--name",
            "secure",
            "--tls",
            "--cert",
            path_str(&cert),
            "--key",
            path_str(&key),
        ],
        1,
    );
    let plain = Proc::start(
        bin!("dummy-server"),
        &["--listen", "127.0.0.1:0", "--name", "plain"],
        1,
    );
    (plain, secure)
}

/// With nothing configured it runs the Go finale's three servers in-process (two of them
/// HTTPS, from a CA made in memory): what `cargo run --release` shows a newcomer.
#[test]
fn with_no_backend_it_runs_the_finale_topology() {
    let lb = Proc::start(bin!("07-final"), &["--listen", "127.0.0.1:0"], 1);
    assert_eq!(
        served_by(lb.addr(), 4),
        ["server1", "server2", "server3", "server1"]
    );
    let log = lb.wait_stderr("started built-in dummy backend", 3);
    assert!(
        log.contains("server1 at https://") && log.contains("server2 at http://"),
        "{log}"
    );
}

/// `tls://` and plain backends given as flags take their turns; --strategy least-called (the
/// Go algorithm) matches round robin from a fresh start.
#[test]
fn mixed_plain_and_tls_backends_rotate() {
    let certs = make_certs("t07-mixed");
    let (plain, secure) = mixed_backends(&certs);
    let (s, p) = (format!("tls://{}", secure.addr()), plain.addr().to_string());
    for strategy in ["round-robin", "least-called"] {
        let lb = Proc::start(
            bin!("07-final"),
            &[
                "--listen",
                "127.0.0.1:0",
                "--backend",
                &s,
                "--backend",
                &p,
                "--ca",
                path_str(&certs.join("ca.pem")),
                "--strategy",
                strategy,
            ],
            1,
        );
        assert_eq!(
            served_by(lb.addr(), 4),
            ["secure", "plain", "secure", "plain"],
            "{strategy}"
        );
    }
}

/// The config file's shape from the issue works: TLS listener, TLS and plain backends, CA;
/// a flag overrides the file's strategy.
#[test]
fn config_file_with_tls_listener_and_flag_override() {
    let certs = make_certs("t07-config");
    let (plain, secure) = mixed_backends(&certs);
    let dir = temp_dir("t07-config-file");
    let file = dir.join("lb.toml");
    let mut f = std::fs::File::create(&file).unwrap();
    writeln!(
        f,
        "listen = \"127.0.0.1:0\"\nstrategy = \"random\"\nca = {:?}\ninsecure = false\n\
         [tls]\ncert = {:?}\nkey = {:?}\n\
         [[backend]]\naddress = \"localhost:{}\"\ntls = true\n\
         [[backend]]\naddress = \"{}\"",
        certs.join("ca.pem"),
        certs.join("localhost.pem"),
        certs.join("localhost-key.pem"),
        secure.addr().port(),
        plain.addr(),
    )
    .unwrap();
    drop(f);
    let lb = Proc::start(
        bin!("07-final"),
        &["--config", path_str(&file), "--strategy", "round-robin"],
        1,
    );
    let config = tlsc::config_trusting(&certs.join("ca.pem"));
    let mut seen = Vec::new();
    for _ in 0..4 {
        let mut tls = tlsc::connect(lb.addr(), config.clone(), "localhost").unwrap();
        seen.push(get_on(&mut tls, "/").served_by());
    }
    assert_eq!(seen, ["secure", "plain", "secure", "plain"]);
    lb.wait_stderr("TLS listener", 1);
}

/// A broken config names the file, line and column on one line; missing files are named.
#[test]
fn config_errors_are_one_line() {
    let dir = temp_dir("t07-bad");
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "listen = \"127.0.0.1:0\"\nstratgy = \"random\"\n").unwrap();
    let b = bin!("07-final");
    let at = format!("{}:2:1:", bad.display());
    assert_one_line_error(
        b,
        &["--config", path_str(&bad)],
        &[&at, "unknown field `stratgy`", "`strategy`"],
    );
    // The keys it suggests are the ones this step reads: not chapter 10's or 15's, which it
    // would then refuse.
    let said = assert_cmd::Command::new(b)
        .args(["--config", path_str(&bad)])
        .timeout(PATIENCE)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&said.stderr);
    for later in ["`idle-timeout`", "`etcd`", "`http`", "`health`"] {
        assert!(!said.contains(later), "{later} suggested: {said}");
    }
    std::fs::write(
        &bad,
        "[[backend]]\naddress = \"127.0.0.1:4444\"\ntls = \"yes\"\n",
    )
    .unwrap();
    assert_one_line_error(b, &["--config", path_str(&bad)], &[":3:7:"]);
    std::fs::write(
        &bad,
        "[tls]\ncert = \"/nope/c.pem\"\nkey = \"/nope/k.pem\"\n",
    )
    .unwrap();
    assert_one_line_error(b, &["--config", path_str(&bad)], &["/nope/c.pem"]);
    assert_one_line_error(b, &["--config", "/nope/lb.toml"], &["/nope/lb.toml"]);
    assert_one_line_error(b, &["--cert", "c.pem"], &["--key"]);
    assert_one_line_error(
        b,
        &["--backend", "tls://127.0.0.1:1", "--ca", "/nope/ca.pem"],
        &["/nope/ca.pem"],
    );
    assert_one_line_error(b, &["--backend", "udp://127.0.0.1:1"], &["udp://"]);
}

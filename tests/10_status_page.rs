//! Chapter 10's status page (`GET /` on the admin listener), in a real browser: Debian's
//! chromium, headless, which loads the page, runs its script against the running balancer's
//! `/metrics`, and hands back the page as a person would see it (`--dump-dom`, after some
//! seconds of the page's own time) or as a picture (`--screenshot`). No mock browser.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

/// The page at `url` after chromium has run its script for `ms` of the page's time.
fn browse(url: &str, profile: &Path, extra: &[&str]) -> String {
    let out = Command::new("chromium")
        .args([
            "--headless",
            // Root in a container has no user namespaces for the sandbox.
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--virtual-time-budget=3000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .output()
        .expect("chromium runs (apt-get install chromium)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An admin token (32 bytes, as the admin listener asks).
const SECRET: &str = "0123456789abcdef0123456789abcdef";

/// `secret` in a file of `dir` only its owner reads, as `--admin-token-file` wants it.
fn token_file(dir: &Path, secret: &str) -> std::path::PathBuf {
    let token = dir.join("token");
    std::fs::write(&token, format!("{secret}\n")).unwrap();
    let mut perms = std::fs::metadata(&token).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o600);
    std::fs::set_permissions(&token, perms).unwrap();
    token
}

/// The `<tr>` of `backend` in the page's backends table, as chromium left it.
fn row_of<'a>(page: &'a str, backend: &str) -> &'a str {
    let cell = format!("<td>{backend}</td>");
    let at = page
        .find(&cell)
        .unwrap_or_else(|| panic!("no row for {backend} in:\n{page}"));
    let start = page[..at].rfind("<tr").unwrap();
    let end = at + page[at..].find("</tr>").unwrap();
    &page[start..end]
}

/// What a person sees: the balancer's own numbers, each backend a row, green when up and red
/// when down; a backend that goes down turns red on the next look. The page comes with a
/// strict Content-Security-Policy, and puts values in as text, never markup.
#[test]
#[cfg_attr(
    chromium_missing,
    ignore = "needs chromium on the PATH (apt-get install chromium; then touch build.rs)"
)]
fn the_status_page_shows_each_backend_live_in_a_real_browser() {
    let mut dummy = Proc::start(bin!("dummy-server"), &["--listen", "127.0.0.1:0"], 1);
    let (refusing, _guard) = refusing_port();
    let (live, dead) = (dummy.addr().to_string(), refusing.to_string());
    let lb = Proc::start(
        bin!("tcp-lb"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--backend",
            &live,
            "--backend",
            &dead,
            "--health-interval",
            "0.2",
            "--fall",
            "1",
        ],
        2,
    );
    for _ in 0..3 {
        assert_eq!(get(lb.addr(), "/").status, 200);
    }
    let admin = format!("http://{}/", lb.addrs[1]);
    let page = get(lb.addrs[1], "/");
    let csp = page.header("content-security-policy").unwrap_or_default();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("default-src 'none'"),
        "{csp}"
    );
    let profile = temp_dir("status-page-chromium");

    eventually("the dead backend marked down", PATIENCE, || {
        metric(
            &admin_get(lb.addrs[1], "/metrics").1,
            &format!("tcplb_backend_up{{backend=\"{dead}\"}}"),
        ) == 0
    });
    let seen = browse(&admin, &profile, &["--dump-dom"]);
    assert!(seen.contains("tcp-lb status"), "{seen}");
    let up = row_of(&seen, &live);
    assert!(up.starts_with("<tr class=\"up\""), "{up}");
    assert!(up.contains("<td>3</td>"), "three connections counted: {up}");
    let down = row_of(&seen, &dead);
    assert!(down.starts_with("<tr class=\"down\""), "{down}");
    // Since when, and why: the health module's last change, from the metrics.
    assert!(
        down.contains("down since ") && down.contains("health checks failed"),
        "{down}"
    );

    // The live backend dies: on the next look its row is red too.
    dummy.signal("KILL");
    dummy.wait_exit();
    eventually("the killed backend marked down", PATIENCE, || {
        metric(
            &admin_get(lb.addrs[1], "/metrics").1,
            &format!("tcplb_backend_up{{backend=\"{live}\"}}"),
        ) == 0
    });
    let seen = browse(&admin, &profile, &["--dump-dom"]);
    let killed = row_of(&seen, &live);
    assert!(killed.starts_with("<tr class=\"down\""), "{seen}");
    assert!(killed.contains("health checks failed"), "{killed}");

    // And as a picture (the README's is one of these).
    let png = profile.join("status.png");
    let shot = format!("--screenshot={}", png.display());
    browse(&admin, &profile, &["--window-size=1000,620", &shot]);
    let bytes = std::fs::read(&png).unwrap();
    assert!(
        bytes.starts_with(b"\x89PNG") && bytes.len() > 10_000,
        "{} bytes",
        bytes.len()
    );
    let _ = std::fs::remove_dir_all(&profile);
}

/// With an admin token, the page holds no data until the person gives the token in its form
/// (which keeps it in the tab's memory; the page never puts it in an address): the browser
/// shows the form and none of the tables.
#[test]
#[cfg_attr(
    chromium_missing,
    ignore = "needs chromium on the PATH (apt-get install chromium; then touch build.rs)"
)]
fn with_a_token_the_page_asks_for_it_and_shows_nothing_else() {
    let dir = temp_dir("status-page-token");
    let token = token_file(&dir, SECRET);
    let lb = Proc::start(
        bin!("tcp-lb"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--backend",
            "127.0.0.1:9",
            "--admin-token-file",
            path_str(&token),
            "--health-interval",
            "0",
        ],
        2,
    );
    let seen = browse(
        &format!("http://{}/", lb.addrs[1]),
        &dir.join("profile"),
        &["--dump-dom"],
    );
    assert!(
        seen.contains("<form id=\"login\">"),
        "the form is shown: {seen}"
    );
    assert!(
        seen.contains("<main id=\"main\" hidden=\"\">"),
        "no data shown: {seen}"
    );
    assert!(seen.contains("a token is needed"), "{seen}");
    assert!(
        !seen.contains("127.0.0.1:9"),
        "no backend named without the token: {seen}"
    );
    let script = get(lb.addrs[1], "/status.js").text();
    assert!(
        !script.contains("location") && script.contains("Authorization"),
        "the token goes in a header"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Live, without reloading: the page open in the browser (driven through its DevTools
/// protocol, `common::cdp`) turns a backend's row red by itself once the backend dies, from
/// its next poll of `/metrics` (every second).
#[test]
#[cfg_attr(
    chromium_missing,
    ignore = "needs chromium on the PATH (apt-get install chromium; then touch build.rs)"
)]
fn the_open_page_turns_a_dying_backends_row_red_by_itself() {
    let mut dummy = Proc::start(bin!("dummy-server"), &["--listen", "127.0.0.1:0"], 1);
    let live = dummy.addr().to_string();
    let lb = Proc::start(
        bin!("tcp-lb"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--backend",
            &live,
            "--health-interval",
            "0.2",
            "--fall",
            "1",
        ],
        2,
    );
    let admin = format!("http://{}/", lb.addrs[1]);
    let mut page = common::cdp::Browser::open(&admin, &temp_dir("status-page-live"));
    let class_of = format!(
        "(() => {{ for (const tr of document.querySelectorAll('#backends tbody tr')) \
         if (tr.cells[0].textContent === '{live}') return tr.className; return null; }})()"
    );
    eventually("the page shows the backend up", PATIENCE, || {
        page.evaluate(&class_of) == "up"
    });
    dummy.signal("KILL");
    dummy.wait_exit();
    eventually("the open page turns its row red", PATIENCE, || {
        page.evaluate(&class_of) == "down"
    });
    let state = page.evaluate(&format!(
        "(() => {{ for (const tr of document.querySelectorAll('#backends tbody tr')) \
         if (tr.cells[0].textContent === '{live}') return tr.cells[1].textContent; }})()"
    ));
    assert!(
        state
            .as_str()
            .is_some_and(|s| s.contains("health checks failed")),
        "{state}"
    );
}

/// With a token: the person types it into the page's form (through the browser), and the page
/// then shows the balancer, and the servers that registered themselves (chapter 14) with the
/// time left on their lease, counting down.
#[test]
#[cfg_attr(
    chromium_missing,
    ignore = "needs chromium on the PATH (apt-get install chromium; then touch build.rs)"
)]
fn after_the_token_the_page_shows_registrations_and_their_leases() {
    let dir = temp_dir("status-page-registered");
    let (token, secret) = (token_file(&dir, SECRET), SECRET);
    let lb = Proc::start(
        bin!("tcp-lb"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--admin-token-file",
            path_str(&token),
            "--health-interval",
            "0",
        ],
        2,
    );
    let server = Proc::start(
        bin!("dummy-server"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--name",
            "alpha",
            "--register",
            &format!("http://{}", lb.addrs[1]),
            "--register-token-file",
            path_str(&token),
            "--register-ttl",
            "30",
        ],
        1,
    );
    let mut page =
        common::cdp::Browser::open(&format!("http://{}/", lb.addrs[1]), &dir.join("profile"));
    eventually("the login form", PATIENCE, || {
        page.evaluate("document.getElementById('login').hidden") == false
    });
    page.evaluate(&format!(
        "document.getElementById('token').value = '{secret}'; \
         document.getElementById('login').requestSubmit(); true"
    ));
    let registered = "(() => { const r = document.querySelector('#registered tbody tr'); \
                      return r ? [...r.cells].map((c) => c.textContent) : null; })()";
    let mut first = None;
    eventually("the registration shown with its lease", PATIENCE, || {
        let cells = page.evaluate(registered);
        let ok = cells[0] == "alpha" && cells[1] == server.addr().to_string();
        if ok {
            first = cells[4]
                .as_str()
                .and_then(|s| s.trim_end_matches(" s").parse::<f64>().ok());
        }
        ok && first.is_some()
    });
    let first = first.unwrap();
    assert!(first <= 30.0, "{first}");
    eventually("the lease counting down on the page", PATIENCE, || {
        let cells = page.evaluate(registered);
        let left = cells[4]
            .as_str()
            .and_then(|s| s.trim_end_matches(" s").parse::<f64>().ok());
        left.is_some_and(|left| left < first)
    });
    assert_eq!(
        page.evaluate("document.getElementById('token').value"),
        "",
        "the token does not stay in the form"
    );
    assert!(
        !page
            .evaluate("location.href")
            .as_str()
            .unwrap_or("")
            .contains(secret),
        "never in the address"
    );
    drop(page);
    let _ = std::fs::remove_dir_all(&dir);
}

/// http-lb's page: each route (chapter 16) with the requests it took, and what `--compress`
/// saved, from the metrics that count them.
#[test]
#[cfg_attr(
    chromium_missing,
    ignore = "needs chromium on the PATH (apt-get install chromium; then touch build.rs)"
)]
fn http_lb_s_page_shows_routes_with_their_hits_and_what_compression_saved() {
    let dummy = Proc::start(bin!("dummy-server"), &["--listen", "127.0.0.1:0"], 1);
    let dir = temp_dir("status-page-routes");
    let config = dir.join("lb.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\
             [http]\ncompress = true\n\
             [[http.route]]\nprefix = \"/api/\"\nbackends = [\"one\"]\n\
             [[http.route]]\nprefix = \"/old/\"\nredirect = \"https://new.example\"\n\
             [[backend]]\naddress = \"{}\"\nname = \"one\"\n",
            dummy.addr()
        ),
    )
    .unwrap();
    let lb = Proc::start(bin!("http-lb"), &["--config", path_str(&config)], 2);
    for _ in 0..3 {
        assert_eq!(get(lb.addr(), "/api/x").status, 200);
    }
    let mut s = connect(lb.addr());
    std::io::Write::write_all(
        &mut s,
        b"GET /text/100000 HTTP/1.1\r\nhost: x\r\naccept-encoding: gzip\r\nconnection: close\r\n\r\n",
    )
    .unwrap();
    // Compressed as it streams: chunked, read to the end.
    let mut answer = Vec::new();
    std::io::Read::read_to_end(&mut s, &mut answer).unwrap();
    let head = String::from_utf8_lossy(&answer[..answer.len().min(400)]).to_lowercase();
    assert!(head.contains("content-encoding: gzip"), "{head}");

    let seen = browse(
        &format!("http://{}/", lb.addrs[1]),
        &dir.join("profile"),
        &["--dump-dom"],
    );
    let api = row_of(&seen, "/api/");
    assert!(api.contains("<td>pool</td><td>3</td>"), "{api}");
    let old = row_of(&seen, "/old/");
    assert!(old.contains("<td>redirect</td><td>0</td>"), "{old}");
    let compression = row_of(&seen, "compression");
    assert!(
        compression.contains("100000 bytes in") && compression.contains("% saved"),
        "{compression}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

//! Looks for `etcd` (chapter 15's tests) and `chromium` (chapter 10's status page) on the PATH
//! when the tests are built, so that those tests can say plainly what they did: without the
//! program they show as *ignored* in `cargo test`'s summary, with the reason, instead of
//! passing without having run.
//!
//! It changes nothing in what the binaries do, and it runs again only when `LB_REQUIRE_ETCD`
//! or the etcd it found changes: not on every change of `PATH`, which would rebuild the whole
//! crate whenever two shells differ. An etcd installed after a build: `touch build.rs`.

fn main() {
    // Chapter 10's status page is tested in a real browser, Debian's chromium: the same rule.
    println!("cargo::rustc-check-cfg=cfg(chromium_missing)");
    println!("cargo::rerun-if-env-changed=LB_REQUIRE_CHROMIUM");
    match on_path("chromium") {
        Some(found) => println!("cargo::rerun-if-changed={}", found.display()),
        None if std::env::var_os("LB_REQUIRE_CHROMIUM").is_some() => {
            panic!(
                "LB_REQUIRE_CHROMIUM is set but no chromium is on the PATH (apt-get install chromium)"
            )
        }
        None => println!("cargo::rustc-cfg=chromium_missing"),
    }
    println!("cargo::rustc-check-cfg=cfg(etcd_missing)");
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=LB_REQUIRE_ETCD");
    match on_path("etcd") {
        Some(etcd) => println!("cargo::rerun-if-changed={}", etcd.display()),
        // CI must not pass by ignoring them: it installs etcd, and says it requires it.
        None if std::env::var_os("LB_REQUIRE_ETCD").is_some() => {
            panic!(
                "LB_REQUIRE_ETCD is set but no etcd is on the PATH (apt-get install etcd-server)"
            )
        }
        None => println!("cargo::rustc-cfg=etcd_missing"),
    }
}

/// The first `name` on the PATH.
fn on_path(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|path| path.is_file())
    })
}

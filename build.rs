//! Looks for `etcd` on the PATH when the tests are built, so that chapter 15's tests can say
//! plainly what they did: without an etcd they show as *ignored* in `cargo test`'s summary,
//! with the reason, instead of passing without having run.
//!
//! It changes nothing in what the binaries do, and it runs again only when `LB_REQUIRE_ETCD`
//! or the etcd it found changes: not on every change of `PATH`, which would rebuild the whole
//! crate whenever two shells differ. An etcd installed after a build: `touch build.rs`.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(etcd_missing)");
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=LB_REQUIRE_ETCD");
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("etcd"))
            .find(|etcd| etcd.is_file())
    });
    match found {
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

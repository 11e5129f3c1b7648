//! # certs: a local CA and a `localhost` certificate
//!
//! Mirrors the openssl gist the Go tutorial follows before "Accepting HTTPS connections", done
//! in Rust with rcgen so it runs anywhere `cargo` does.
//!
//! **What it makes** (in `certs/`, or `--out DIR`):
//!
//! | file | what | who uses it |
//! |---|---|---|
//! | `ca.pem` | the CA certificate | clients: `curl --cacert`, the balancer's `--ca` |
//! | `ca-key.pem` | the CA's private key (mode 0600) | nobody, unless you sign more leaves |
//! | `localhost.pem` | the leaf, SANs `localhost`, `127.0.0.1`, `::1`, not a CA | servers |
//! | `localhost-key.pem` | the leaf's private key (mode 0600) | servers |
//!
//! Run again, it keeps files that are already a valid set for the names asked (it says so and
//! succeeds, so a reader who follows chapters 5, 6 and 7 in order can type the same command
//! each time), and refuses to touch a set that is incomplete or does not fit unless `--force`:
//! regenerating the CA silently would break every client that trusts the old one. The files
//! are git-ignored; private keys never belong in a repository.
//!
//! **What the Go version got wrong:** its recipe makes one self-signed certificate with only a
//! Common Name. rustls refuses it (no subjectAltName, and a CA certificate used as a server
//! certificate); see [`lb::certs`] for the exact errors.
//!
//! **Try it:**
//!
//! ```text
//! cargo run --bin certs
//! openssl x509 -in certs/localhost.pem -noout -text | grep -A1 'Alternative Name'
//! openssl verify -CAfile certs/ca.pem certs/localhost.pem      # certs/localhost.pem: OK
//! ```

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use lb::cli;

/// Make a local CA and a certificate for localhost, signed by it.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Folder to write the four PEM files to.
    #[arg(long, value_name = "DIR", default_value = "certs")]
    out: PathBuf,
    /// Overwrite existing files.
    #[arg(long)]
    force: bool,
    /// A DNS name or IP address for the certificate; repeat for several.
    #[arg(long = "name", value_name = "NAME", default_values = lb::certs::DEFAULT_NAMES)]
    names: Vec<String>,
    /// Also write wildcard.pem and wildcard.key: a certificate for *.DOMAIN (and DOMAIN),
    /// signed by the CA in --out, that every server of a fleet presents on its own name
    /// (chapter 14).
    #[arg(long, value_name = "DOMAIN", value_parser = wildcard_domain)]
    wildcard: Option<String>,
}

fn wildcard_domain(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && !s.starts_with('.')
        && !s.starts_with('*')
        && s.contains('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
    match ok {
        true => Ok(s.to_ascii_lowercase()),
        false => Err(format!(
            "`{s}` is not a domain to put a wildcard under (for example apps.localhost)"
        )),
    }
}

fn main() -> ExitCode {
    let args: Args = cli::parse();
    cli::report(run(args))
}

fn run(args: Args) -> anyhow::Result<()> {
    ca_and_localhost(&args)?;
    if let Some(domain) = &args.wildcard {
        let read = |name: &str| {
            let path = args.out.join(name);
            lb::files::read_capped_text(&path, "CA file", lb::files::MAX_PEM)
        };
        let (cert, key) = lb::certs::wildcard(&read("ca.pem")?, &read("ca-key.pem")?, domain)
            .with_context(|| {
                format!(
                    "cannot sign *.{domain} with the CA in {}",
                    args.out.display()
                )
            })?;
        for (name, contents, private) in
            [("wildcard.pem", &cert, false), ("wildcard.key", &key, true)]
        {
            let path = args.out.join(name);
            write(&path, contents.as_bytes(), private)
                .with_context(|| format!("cannot write {}", path.display()))?;
            println!("wrote {}", path.display());
        }
        println!("wildcard names: *.{domain}, {domain}");
    }
    Ok(())
}

/// The CA and the `localhost` certificate: kept when valid, made otherwise.
fn ca_and_localhost(args: &Args) -> anyhow::Result<()> {
    let names = ["ca.pem", "ca-key.pem", "localhost.pem", "localhost-key.pem"];
    if !args.force && names.iter().all(|n| args.out.join(n).exists()) {
        return match lb::certs::check_existing(&args.out, &args.names) {
            Ok(()) => {
                println!(
                    "kept the certificates already in {} (valid for {}); --force makes new ones",
                    args.out.display(),
                    args.names.join(", ")
                );
                Ok(())
            }
            Err(e) => Err(e.context(format!(
                "the certificates in {} cannot be kept; pass --force to replace all four files",
                args.out.display()
            ))),
        };
    }
    let bundle = lb::certs::generate(&args.names).context("cannot generate the certificates")?;
    let files = [
        ("ca.pem", &bundle.ca_cert_pem, false),
        ("ca-key.pem", &bundle.ca_key_pem, true),
        ("localhost.pem", &bundle.leaf_cert_pem, false),
        ("localhost-key.pem", &bundle.leaf_key_pem, true),
    ];
    let paths: Vec<PathBuf> = files.iter().map(|(name, ..)| args.out.join(name)).collect();
    if !args.force
        && let Some(existing) = paths.iter().find(|p| p.exists())
    {
        anyhow::bail!(
            "{} already exists; pass --force to replace all four files",
            existing.display()
        );
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create folder {}", args.out.display()))?;
    for ((_, contents, private), path) in files.iter().zip(&paths) {
        write(path, contents.as_bytes(), *private)
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    println!("certificate names: {}", args.names.join(", "));
    Ok(())
}

/// Writes `contents`; a private key is created readable by its owner only (0600), and made so
/// if it already existed with wider permissions.
fn write(path: &Path, contents: &[u8], private: bool) -> std::io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
        if private {
            options.mode(0o600);
        }
        let mut file = options.open(path)?;
        if private {
            file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        }
        file.write_all(contents)
    }
    #[cfg(not(unix))]
    {
        let _ = private;
        options.open(path)?.write_all(contents)
    }
}

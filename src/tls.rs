//! TLS with rustls: loading PEM files, and building each configuration once per process.
//!
//! Three rules from the chapters 5–7:
//!
//! * **One crypto provider, named.** rustls can run on `ring` or `aws-lc-rs`; each crate that
//!   depends on rustls may enable its own, and with two in one build `ServerConfig::builder()`
//!   cannot pick a default and panics at the first connection. This build has both on purpose:
//!   [`provider`] takes each primitive from whichever crate does it faster, and every config
//!   here is built with it explicitly (`builder_with_provider`).
//! * **Build configs once.** Parsing certificates and keys, building the root store and the
//!   session caches costs far more than a handshake; a `ServerConfig`/`ClientConfig` is built at
//!   start-up and shared behind an `Arc` by every connection. Sharing the client config is also
//!   what lets the balancer *resume* TLS sessions to its backends.
//! * **Verification is on unless asked off.** `--insecure` goes through [`danger`], whose name
//!   says what it is, and the binaries warn about it at every start.

use std::io;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context as _;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::ProducesTickets;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::files;

/// The certificate chain `cargo run --bin certs` writes, presented by our TLS listeners.
pub const DEFAULT_CERT: &str = "certs/localhost.pem";
/// Its private key.
pub const DEFAULT_KEY: &str = "certs/localhost-key.pem";
/// The CA that signed it, which our TLS clients trust.
pub const DEFAULT_CA: &str = "certs/ca.pem";

/// How long a client may take to complete its TLS handshake. Without a limit, a client that
/// connects and says nothing holds a task and a file descriptor forever.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The crypto provider of the whole build, assembled from `ring` and `aws-lc-rs`, with the
/// AES-128-GCM suites first.
///
/// A [`CryptoProvider`] is a table of primitives, and chapter 11 measured each one on this
/// machine. `ring` seals and opens records twice as fast (its AES-GCM uses VAES: 16 KiB records
/// at 5,070 against 2,720 MiB/s), signs with ECDSA P-256 in 20 µs against 33, and hashes as
/// fast. aws-lc-rs does the X25519 key exchange of every handshake in half the time (43 µs
/// against 87: formally verified assembly from s2n-bignum), and draws random bytes from a
/// user-space generator where `ring` makes a `getrandom` system call per value (8 per
/// handshake).
///
/// AES-128-GCM brings SHA-256 for the handshake's hashing and key schedule, three times faster
/// here than the SHA-384 of AES-256-GCM: x86 CPUs have SHA-256 instructions, while SHA-512 runs
/// as plain code (`ring` has vector code for it on Intel CPUs only, and aws-lc's was no faster
/// on this AMD one). Go's `crypto/tls` and Mozilla's server guidelines put AES-128-GCM first.
pub fn provider() -> Arc<CryptoProvider> {
    let aws_lc = rustls::crypto::aws_lc_rs::default_provider();
    let mut provider = CryptoProvider {
        kx_groups: aws_lc.kx_groups,
        secure_random: aws_lc.secure_random,
        // Cipher suites (AEAD, hash, HMAC), signing keys and signature verification.
        ..rustls::crypto::ring::default_provider()
    };
    // A stable sort: TLS 1.3 suites stay ahead of TLS 1.2 ones, and within each version
    // AES-128-GCM moves to the front with the rest in the provider's order.
    provider
        .cipher_suites
        .sort_by_key(|suite| (suite.tls13().is_none(), !is_aes_128_gcm(suite.suite())));
    Arc::new(provider)
}

fn is_aes_128_gcm(suite: rustls::CipherSuite) -> bool {
    use rustls::CipherSuite as S;
    matches!(
        suite,
        S::TLS13_AES_128_GCM_SHA256
            | S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            | S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
    )
}

/// A PEM file, read through [`files::read_capped`] (regular files only, at most
/// [`files::MAX_PEM`]).
fn read(path: &Path, what: &'static str) -> anyhow::Result<Vec<u8>> {
    files::read_capped(path, what, files::MAX_PEM).map_err(|e| {
        let hint = if e.is_not_found() {
            " (run `cargo run --bin certs` to create the tutorial's certificates)"
        } else {
            ""
        };
        anyhow::anyhow!("{e}{hint}")
    })
}

/// Every certificate in a PEM file, in order (leaf first for a chain).
pub fn load_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = read(path, "certificate file")?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("cannot parse certificate file {}", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("no certificate found in {}", path.display());
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in a PEM file.
pub fn load_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    let pem = read(path, "private key file")?;
    PrivateKeyDer::from_pem_slice(&pem)
        .with_context(|| format!("no usable private key in {}", path.display()))
}

/// A server config presenting `certs` (leaf first): TLS 1.2 and 1.3, no client certificates,
/// [`provider`]'s suite order over the client's, and stateless session tickets under the
/// process's own random key ([`process_ticketer`]).
pub fn server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> anyhow::Result<Arc<ServerConfig>> {
    server_config_with_tickets(certs, key, process_ticketer()?)
}

/// [`server_config`] with tickets from `ticketer`: a key file shared by a farm of offloaders
/// (chapter 13, [`crate::tickets`]).
pub fn server_config_with_tickets(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    ticketer: Arc<dyn ProducesTickets>,
) -> anyhow::Result<Arc<ServerConfig>> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("certificate and key do not form a usable pair")?;
    // OpenSSL clients (curl, wrk, nginx as a client) list AES-256-GCM first; following them
    // would make every handshake hash with SHA-384. Clients without AES instructions, which
    // would rather have ChaCha20, are the price: they get AES-128-GCM too.
    config.ignore_client_order = true;
    // Resumption keeps working however many clients there are: the ticket carries the session,
    // encrypted under the ticketer's key, where rustls' default keeps sessions in a 256-entry
    // cache (about 128 clients, at 2 tickets each). HAProxy and nginx do the same.
    config.ticketer = ticketer;
    Ok(Arc::new(config))
}

/// The process's own ticket key, random, rotating every 6 hours: made once, so that a config
/// rebuilt by a reload (SIGHUP) still reads the tickets the old one issued. A new key per
/// reload made every returning client pay a full handshake after each one.
pub fn process_ticketer() -> anyhow::Result<Arc<dyn ProducesTickets>> {
    static TICKETER: OnceLock<Arc<dyn ProducesTickets>> = OnceLock::new();
    if let Some(ticketer) = TICKETER.get() {
        return Ok(Arc::clone(ticketer));
    }
    let made =
        rustls::crypto::aws_lc_rs::Ticketer::new().context("cannot make the session-ticket key")?;
    Ok(Arc::clone(TICKETER.get_or_init(|| made)))
}

/// [`server_config`] from PEM files.
pub fn server_config_from_files(cert: &Path, key: &Path) -> anyhow::Result<Arc<ServerConfig>> {
    server_config_from_files_with(cert, key, None)
}

/// [`server_config_from_files`], with tickets from a shared key file when `ticket_keys` names
/// one (chapter 13).
pub fn server_config_from_files_with(
    cert: &Path,
    key: &Path,
    ticket_keys: Option<&Path>,
) -> anyhow::Result<Arc<ServerConfig>> {
    let ticketer: Arc<dyn ProducesTickets> = match ticket_keys {
        Some(path) => crate::tickets::TicketKeys::load(path)?,
        None => process_ticketer()?,
    };
    server_config_with_tickets(load_certs(cert)?, load_key(key)?, ticketer)
        .with_context(|| format!("{} and {}", cert.display(), key.display()))
}

/// The trust anchors in a PEM file: the CAs whose signatures we accept from backends.
pub fn load_roots(path: &Path) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots
            .add(cert)
            .with_context(|| format!("unusable CA certificate in {}", path.display()))?;
    }
    Ok(roots)
}

/// A client config that verifies servers against `roots`.
pub fn client_config(roots: RootCertStore) -> anyhow::Result<Arc<ClientConfig>> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A client config that accepts any server certificate. See [`danger`].
pub fn insecure_client_config() -> anyhow::Result<Arc<ClientConfig>> {
    let provider = provider();
    let config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(danger::NoCertificateVerification::new(
            provider,
        )))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The server side of a handshake on `stream`, given at most `timeout` to complete.
pub async fn accept(
    acceptor: &tokio_rustls::TlsAcceptor,
    stream: tokio::net::TcpStream,
    timeout: Duration,
) -> io::Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>> {
    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("timed out after {timeout:?}"),
        )),
    }
}

/// Checks that `name` can be sent as a TLS server name (a DNS name or an IP address), for
/// flags such as `--sni`, so a typo fails when the flag is parsed.
pub fn check_server_name(name: &str) -> Result<String, String> {
    rustls::pki_types::ServerName::try_from(name)
        .map(|_| name.to_owned())
        .map_err(|_| format!("`{name}` is not a valid TLS server name"))
}

/// The warning every binary prints at start when `--insecure` is on.
pub const INSECURE_WARNING: &str = "--insecure: backend certificates are NOT verified; anyone \
     on the path to a backend can read and change the traffic. Use it only to test.";

/// Turning certificate verification off, for tests against backends with throw-away certificates.
///
/// What this skips: checking that the backend's certificate chains to a CA we trust, that it
/// is valid now, and that it names the server we meant to reach. What it keeps: the handshake
/// signature checks, so the session is still encrypted to whoever holds the presented key. That
/// stops a passive eavesdropper and nobody else: an active attacker simply presents their own.
pub mod danger {
    use std::sync::Arc;

    use rustls::DigitallySignedStruct;
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

    /// Accepts any certificate; still verifies handshake signatures.
    #[derive(Debug)]
    pub struct NoCertificateVerification {
        provider: Arc<CryptoProvider>,
    }

    impl NoCertificateVerification {
        pub fn new(provider: Arc<CryptoProvider>) -> Self {
            NoCertificateVerification { provider }
        }
    }

    impl ServerCertVerifier for NoCertificateVerification {
        fn verify_server_cert(
            &self,
            _end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp_response: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls12_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls13_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::{CipherSuite, HandshakeKind};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    /// A client that lists its suites as OpenSSL does, AES-256-GCM first (aws-lc-rs' own order).
    fn openssl_like_client(roots: RootCertStore) -> Arc<ClientConfig> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        assert_eq!(
            provider.cipher_suites[0].suite(),
            CipherSuite::TLS13_AES_256_GCM_SHA384
        );
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    }

    /// One handshake over an in-memory pipe, and one byte each way so that the client has read
    /// the server's session tickets; returns what the client negotiated.
    async fn connect(
        client: &Arc<ClientConfig>,
        server: &Arc<ServerConfig>,
    ) -> (CipherSuite, HandshakeKind) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let (near, far) = tokio::io::duplex(64 * 1024);
        let acceptor = TlsAcceptor::from(server.clone());
        let serving = tokio::spawn(async move {
            let mut tls = acceptor.accept(far).await.unwrap();
            let mut byte = [0u8; 1];
            tls.read_exact(&mut byte).await.unwrap();
            tls.write_all(&byte).await.unwrap();
            tls.flush().await.unwrap();
            tls
        });
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = TlsConnector::from(client.clone())
            .connect(name, near)
            .await
            .unwrap();
        tls.write_all(b"x").await.unwrap();
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte).await.unwrap();
        let _server_side = serving.await.unwrap();
        let (_, conn) = tls.get_ref();
        (
            conn.negotiated_cipher_suite().unwrap().suite(),
            conn.handshake_kind().unwrap(),
        )
    }

    #[test]
    fn aes_128_gcm_leads_each_protocol_version() {
        let suites: Vec<_> = provider().cipher_suites.clone();
        assert_eq!(suites[0].suite(), CipherSuite::TLS13_AES_128_GCM_SHA256);
        let first_tls12 = suites.iter().position(|s| s.tls13().is_none()).unwrap();
        assert!(is_aes_128_gcm(suites[first_tls12].suite()));
        // Nothing lost or repeated by the sort.
        let mut sorted = suites
            .iter()
            .map(|s| u16::from(s.suite()))
            .collect::<Vec<_>>();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(
            sorted.len(),
            rustls::crypto::aws_lc_rs::default_provider()
                .cipher_suites
                .len()
        );
    }

    #[tokio::test]
    async fn the_server_picks_aes_128_gcm_and_resumes_any_number_of_clients() {
        let bundle = crate::certs::generate_localhost().unwrap();
        let server = bundle.server_config().unwrap();
        // More clients than rustls' default session cache has room for (256 entries, 2 per
        // client): with it, the first clients' sessions are forgotten by the time they return.
        let clients: Vec<_> = (0..200)
            .map(|_| openssl_like_client(bundle.roots()))
            .collect();
        for client in &clients {
            let (suite, kind) = connect(client, &server).await;
            assert_eq!(suite, CipherSuite::TLS13_AES_128_GCM_SHA256);
            assert_eq!(kind, HandshakeKind::Full);
        }
        for client in &clients {
            let (suite, kind) = connect(client, &server).await;
            assert_eq!(suite, CipherSuite::TLS13_AES_128_GCM_SHA256);
            assert_eq!(kind, HandshakeKind::Resumed);
        }
    }

    #[tokio::test]
    async fn a_server_following_the_client_would_have_picked_aes_256() {
        // The control for the test above: without `ignore_client_order` this client gets the
        // SHA-384 suite, so the test above shows the server's order at work.
        let bundle = crate::certs::generate_localhost().unwrap();
        let mut server = (*bundle.server_config().unwrap()).clone();
        server.ignore_client_order = false;
        let client = openssl_like_client(bundle.roots());
        let (suite, _) = connect(&client, &Arc::new(server)).await;
        assert_eq!(suite, CipherSuite::TLS13_AES_256_GCM_SHA384);
    }
}

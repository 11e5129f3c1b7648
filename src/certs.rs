//! A local certificate authority and a `localhost` certificate signed by it, made with rcgen.
//!
//! # Why not the Go tutorial's openssl recipe
//!
//! The gist the Go tutorial follows runs `openssl req -new -x509 -key server.key -out
//! server.crt`: one *self-signed* certificate with only a Common Name. rustls (through webpki)
//! refuses it twice over:
//!
//! * **No subjectAltName.** Matching a host name against the Common Name was deprecated in 2000
//!   (RFC 2818) and is not done by rustls, Chrome or Go since 1.15; only the SAN counts, so the
//!   certificate is valid for no name at all: `invalid peer certificate: NotValidForName`.
//! * **A CA certificate used as a server certificate.** `openssl req -x509` marks the result
//!   `CA:TRUE`, and trusting it as a root while the server presents it as its own certificate is
//!   refused: `invalid peer certificate: Other(OtherError(CaUsedAsEndEntity))`.
//!
//! What works, and what real deployments look like, is two certificates: a CA (kept
//! private, trusted by clients) and a leaf for the server, signed by the CA, naming the server
//! in its SANs and marked as *not* a CA. That is what [`generate`] makes.

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{RootCertStore, ServerConfig};
use time::{Duration, OffsetDateTime};

/// The names the tutorial's certificate is valid for: every way a learner may reach the
/// balancer on this machine.
pub const DEFAULT_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// A CA and a leaf certificate signed by it, with their keys.
pub struct Bundle {
    pub ca_cert_pem: String,
    pub ca_key_pem: String,
    pub leaf_cert_pem: String,
    pub leaf_key_pem: String,
    ca_der: CertificateDer<'static>,
    leaf_der: CertificateDer<'static>,
    leaf_key_der: Vec<u8>,
}

/// The leaf certificate's key: what every full TLS handshake signs with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LeafKey {
    /// ECDSA P-256: a signature costs about 20 µs.
    #[default]
    Ecdsa,
    /// RSA 2048: about 1 ms a signature, fifty times more; what most sites served when seed
    /// 000 was written, and the reason TLS offload farms existed (chapter 13 measures both).
    Rsa,
}

/// Makes a fresh CA (valid 10 years) and a leaf for `names` (DNS names or IP addresses, valid
/// 1 year), both on ECDSA P-256 keys: fast handshakes and small certificates.
pub fn generate(names: &[String]) -> Result<Bundle, rcgen::Error> {
    generate_with(names, LeafKey::Ecdsa)
}

/// [`generate`] with the leaf on the key type `leaf_key`.
pub fn generate_with(names: &[String], leaf_key: LeafKey) -> Result<Bundle, rcgen::Error> {
    let now = OffsetDateTime::now_utc();
    // Backdated a day so that a clock slightly behind on another machine still accepts them.
    let yesterday = now - Duration::days(1);

    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    // A random suffix makes every CA's name unique: a client holding the CA of an earlier run
    // then reports `UnknownIssuer` (clear) instead of `BadSignature` (same name, other key).
    let ca_name = format!("tcp-lb tutorial CA {:08x}", rand::random::<u32>());
    ca.distinguished_name.push(DnType::CommonName, ca_name);
    ca.distinguished_name
        .push(DnType::OrganizationName, "tcp-lb tutorial");
    // Path length 0: this CA may sign leaves, not other CAs.
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = yesterday;
    ca.not_after = now + Duration::days(3650);
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca.self_signed(&ca_key)?;
    let ca_cert_pem = ca_cert.pem();
    let ca_key_pem = ca_key.serialize_pem();
    let issuer = Issuer::new(ca, ca_key);

    let mut leaf = CertificateParams::new(names.to_vec())?;
    let common_name = names.first().map_or("localhost", String::as_str);
    leaf.distinguished_name
        .push(DnType::CommonName, common_name);
    // Says "CA:FALSE" explicitly, the opposite of the openssl recipe.
    leaf.is_ca = IsCa::ExplicitNoCa;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.use_authority_key_identifier_extension = true;
    leaf.not_before = yesterday;
    leaf.not_after = now + Duration::days(365);
    let leaf_key = match leaf_key {
        LeafKey::Ecdsa => KeyPair::generate()?,
        LeafKey::Rsa => {
            KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)?
        }
    };
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer)?;

    Ok(Bundle {
        ca_cert_pem,
        ca_key_pem,
        leaf_cert_pem: leaf_cert.pem(),
        leaf_key_pem: leaf_key.serialize_pem(),
        ca_der: ca_cert.der().clone(),
        leaf_der: leaf_cert.der().clone(),
        leaf_key_der: leaf_key.serialize_der(),
    })
}

/// A leaf for `*.DOMAIN` and `DOMAIN`, signed by an existing CA (its certificate and key in
/// PEM, as `certs` writes them): one certificate every server of a fleet can present on its
/// own name (`s1.apps.example`, `s2.apps.example`, …; chapter 14). Returns the leaf and its
/// key, in PEM.
pub fn wildcard(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    domain: &str,
) -> Result<(String, String), rcgen::Error> {
    let ca_key = KeyPair::from_pem(ca_key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(ca_cert_pem, ca_key)?;
    let now = OffsetDateTime::now_utc();
    let mut leaf = CertificateParams::new(vec![format!("*.{domain}"), domain.to_owned()])?;
    leaf.distinguished_name
        .push(DnType::CommonName, format!("*.{domain}"));
    leaf.is_ca = IsCa::ExplicitNoCa;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.use_authority_key_identifier_extension = true;
    leaf.not_before = now - Duration::days(1);
    leaf.not_after = now + Duration::days(365);
    let key = KeyPair::generate()?;
    let cert = leaf.signed_by(&key, &issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// [`generate`] for [`DEFAULT_NAMES`].
pub fn generate_localhost() -> Result<Bundle, rcgen::Error> {
    let names: Vec<String> = DEFAULT_NAMES.iter().map(|n| n.to_string()).collect();
    generate(&names)
}

impl Bundle {
    /// A server config presenting the leaf, for in-process TLS servers.
    pub fn server_config(&self) -> anyhow::Result<Arc<ServerConfig>> {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.leaf_key_der.clone()));
        crate::tls::server_config(vec![self.leaf_der.clone()], key)
    }

    /// A root store trusting only this CA.
    pub fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        // Cannot fail: the certificate was made just above, by rcgen.
        let _ = roots.add(self.ca_der.clone());
        roots
    }
}

/// Whether the files in `dir` are a set `certs` would have made for `names`: the CA and the
/// leaf load, the leaf's key loads, and the leaf verifies against the CA for every name today.
/// `Err` says what is wrong, for a message that tells the user to pass `--force`.
pub fn check_existing(dir: &std::path::Path, names: &[String]) -> anyhow::Result<()> {
    use rustls::client::danger::ServerCertVerifier as _;
    let roots = crate::tls::load_roots(&dir.join("ca.pem"))?;
    crate::tls::load_key(&dir.join("ca-key.pem"))?;
    crate::tls::load_key(&dir.join("localhost-key.pem"))?;
    let chain = crate::tls::load_certs(&dir.join("localhost.pem"))?;
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        crate::tls::provider(),
    )
    .build()?;
    let now = rustls::pki_types::UnixTime::now();
    for name in names {
        let server_name = rustls::pki_types::ServerName::try_from(name.as_str())?;
        verifier
            .verify_server_cert(&chain[0], &chain[1..], &server_name, &[], now)
            .map_err(|e| anyhow::anyhow!("the certificate does not fit {name}: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier as _;

    #[test]
    fn the_leaf_verifies_against_the_ca_for_every_default_name() {
        let bundle = generate_localhost().unwrap();
        let roots = Arc::new(bundle.roots());
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            roots,
            crate::tls::provider(),
        )
        .build()
        .unwrap();
        let now = rustls::pki_types::UnixTime::now();
        for name in DEFAULT_NAMES {
            let server_name = rustls::pki_types::ServerName::try_from(name).unwrap();
            verifier
                .verify_server_cert(&bundle.leaf_der, &[], &server_name, &[], now)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let other = rustls::pki_types::ServerName::try_from("example.com").unwrap();
        assert!(
            verifier
                .verify_server_cert(&bundle.leaf_der, &[], &other, &[], now)
                .is_err()
        );
    }
}

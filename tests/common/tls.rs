//! A blocking rustls client for the TLS tests.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};

pub type TlsClient = StreamOwned<ClientConnection, TcpStream>;

/// A client config trusting the CA in `ca_pem`.
pub fn config_trusting(ca_pem: &Path) -> Arc<ClientConfig> {
    lb::tls::client_config(lb::tls::load_roots(ca_pem).unwrap()).unwrap()
}

/// Connects and completes the handshake (or returns its error) for `name` at `addr`.
pub fn connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    name: &str,
) -> Result<TlsClient, rustls::Error> {
    let tcp = super::connect(addr);
    let conn = ClientConnection::new(config, ServerName::try_from(name.to_owned()).unwrap())?;
    let mut tls = StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        if let Err(e) = tls.conn.complete_io(&mut tls.sock) {
            return Err(
                match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                    Some(inner) => inner.clone(),
                    None => rustls::Error::General(e.to_string()),
                },
            );
        }
    }
    Ok(tls)
}

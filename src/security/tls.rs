//! TLS settings read from PEM files, and re-read on demand.
//!
//! [`ServerTls`] is what a listener accepts with: a certificate and key,
//! and optionally a CA whose certificates clients must present.
//! [`PeerTls`] is both sides of mutual TLS between nodes: the peer
//! listener requires a certificate from the cluster's CA, and outgoing
//! peer connections present this node's certificate and accept only a
//! server certificate that names the node they meant to reach.
//!
//! Every configuration uses the ring crypto provider explicitly: the tree
//! holds no other, and nothing depends on a process-wide default.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use thiserror::Error;
use tokio_rustls::rustls::crypto::{ring, CryptoProvider};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use super::identity::node_dns_name;

/// Why TLS settings could not be loaded.
#[derive(Debug, Error)]
pub enum TlsError {
    /// A file could not be read or holds no usable PEM item.
    #[error("{what} {path}: {reason}")]
    File {
        /// What the file was meant to hold.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// rustls refused the combination (a key that does not match its
    /// certificate, a CA that is not a CA...).
    #[error("TLS configuration refused: {0}")]
    Config(String),
}

/// The crypto provider every configuration uses: ring, as tonic's
/// `tls-ring` feature uses for its client side. rustls 0.23.48 marks it
/// deprecated for lacking post-quantum key exchange; aws-lc-rs has it but
/// needs a C toolchain and CMake to build, and the whole tree must use one
/// provider (docs/security.md).
#[allow(deprecated)]
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::File {
        what,
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// The certificates of a PEM file, in order; at least one.
pub fn load_certs(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::File {
            what,
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::File {
            what,
            path: path.to_path_buf(),
            reason: "no PEM certificate in it".into(),
        });
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read("key", path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::File {
        what: "key",
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs("CA certificate", path)? {
        roots
            .add(cert)
            .map_err(|e| TlsError::Config(format!("CA {}: {e}", path.display())))?;
    }
    Ok(roots)
}

/// A server's TLS configuration, re-read from its files by
/// [`ServerTls::reload`]; connections accepted afterwards use the new one.
pub struct ServerTls {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
    current: RwLock<Arc<ServerConfig>>,
}

impl ServerTls {
    /// Reads `cert` and `key`; with `client_ca`, every client must present
    /// a certificate signed by that CA.
    pub fn load(cert: PathBuf, key: PathBuf, client_ca: Option<PathBuf>) -> Result<Self, TlsError> {
        let config = Self::build(&cert, &key, client_ca.as_deref())?;
        Ok(Self {
            cert,
            key,
            client_ca,
            current: RwLock::new(config),
        })
    }

    fn build(
        cert: &Path,
        key: &Path,
        client_ca: Option<&Path>,
    ) -> Result<Arc<ServerConfig>, TlsError> {
        let certs = load_certs("certificate", cert)?;
        let key = load_key(key)?;
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = match client_ca {
            Some(ca) => {
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider())
                        .build()
                        .map_err(|e| TlsError::Config(e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(certs, key)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }

    /// The configuration new connections are accepted with.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Re-reads the files; on an error the configuration in force stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = Self::build(&self.cert, &self.key, self.client_ca.as_deref())?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = config;
        Ok(())
    }
}

/// Mutual TLS between nodes: this node's certificate and key (which must
/// name it, see [`node_dns_name`]) and the cluster's CA.
pub struct PeerTls {
    server: Arc<ServerTls>,
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
    client: RwLock<ClientTlsConfig>,
}

impl PeerTls {
    /// Reads the three files.
    pub fn load(cert: PathBuf, key: PathBuf, ca: PathBuf) -> Result<Self, TlsError> {
        let server = Arc::new(ServerTls::load(
            cert.clone(),
            key.clone(),
            Some(ca.clone()),
        )?);
        let client = Self::build_client(&cert, &key, &ca)?;
        Ok(Self {
            server,
            cert,
            key,
            ca,
            client: RwLock::new(client),
        })
    }

    fn build_client(cert: &Path, key: &Path, ca: &Path) -> Result<ClientTlsConfig, TlsError> {
        // Parse everything here, so that a bad file is reported at start
        // or at reload, not at the first connection.
        load_certs("certificate", cert)?;
        load_key(key)?;
        roots(ca)?;
        let identity = Identity::from_pem(read("certificate", cert)?, read("key", key)?);
        Ok(ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read("CA certificate", ca)?))
            .identity(identity))
    }

    /// What the peer listener accepts with.
    pub fn server(&self) -> Arc<ServerTls> {
        self.server.clone()
    }

    /// The configuration to connect to node `peer` with: it presents this
    /// node's certificate and accepts only a server certificate that the
    /// cluster's CA signed for `peer`.
    pub fn client_for(&self, peer: &str) -> ClientTlsConfig {
        self.client
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .domain_name(node_dns_name(peer))
    }

    /// Re-reads the files for both sides; on an error the configuration in
    /// force stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let client = Self::build_client(&self.cert, &self.key, &self.ca)?;
        self.server.reload()?;
        *self.client.write().unwrap_or_else(PoisonError::into_inner) = client;
        Ok(())
    }
}

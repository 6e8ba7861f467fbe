//! The client side, for `kilovolt-cli` and `kilovolt-bench`: TLS settings
//! and the bearer token, as command-line flags, turned into a tonic
//! endpoint and an interceptor that sends the token with every request.

use std::path::{Path, PathBuf};

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// How a client authenticates the server and itself.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ClientSecurity {
    /// PEM CA certificate that signed the server's certificate; turns TLS
    /// on.
    #[arg(long, env = "KILOVOLT_TLS_CA", global = true)]
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate, for servers started with --tls-client-ca.
    #[arg(long, requires_all = ["tls_key", "tls_ca"], global = true)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert", global = true)]
    pub tls_key: Option<PathBuf>,
    /// Token sent as `authorization: Bearer TOKEN` (servers started with
    /// --auth-file).
    #[arg(long, env = "KILOVOLT_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
}

fn read(what: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {what} {}: {e}", path.display()))
}

impl ClientSecurity {
    /// An endpoint for `addr` (host:port, or a URI): https with the TLS
    /// settings when --tls-ca is given, else http.
    pub fn endpoint(&self, addr: &str) -> Result<Endpoint, String> {
        let tls = self.tls_ca.is_some();
        let uri = if addr.contains("://") {
            addr.to_string()
        } else if tls {
            format!("https://{addr}")
        } else {
            format!("http://{addr}")
        };
        let endpoint =
            Endpoint::from_shared(uri).map_err(|e| format!("{addr:?} is not host:port: {e}"))?;
        let Some(ca) = &self.tls_ca else {
            return Ok(endpoint);
        };
        let mut config =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read("CA", ca)?));
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            config = config.identity(Identity::from_pem(
                read("certificate", cert)?,
                read("key", key)?,
            ));
        }
        endpoint
            .tls_config(config)
            .map_err(|e| format!("TLS settings refused: {e}"))
    }

    /// The interceptor that sends the token (or nothing).
    pub fn interceptor(&self) -> Result<BearerToken, String> {
        let value = match &self.token {
            Some(token) => Some(
                format!("Bearer {token}")
                    .parse()
                    .map_err(|_| "the token holds characters a header cannot carry".to_string())?,
            ),
            None => None,
        };
        Ok(BearerToken(value))
    }
}

/// Adds `authorization: Bearer TOKEN` to every request, when there is a
/// token.
#[derive(Clone)]
pub struct BearerToken(Option<MetadataValue<Ascii>>);

impl Interceptor for BearerToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

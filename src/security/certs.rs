//! A development certificate authority (rcgen): the CA, node certificates
//! (which name their node id, see [`node_dns_name`], and serve both the
//! peer listener and the client API) and client certificates.
//! `kilovolt-cli cert` writes them to files; tests make them in memory.
//! For production, use your own PKI: docs/security.md says what each
//! certificate must carry.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use thiserror::Error;

use super::identity::{check_node_id, node_dns_name};

/// The subject of the development CA. A CA is recreated from its key and
/// this name (see [`DevCa::from_key_pem`]).
pub const CA_NAME: &str = "Kilovolt-DB development CA";

/// Why a certificate could not be made.
#[derive(Debug, Error)]
pub enum CertError {
    /// rcgen refused (an invalid name, a bad key...).
    #[error("cannot make the certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// A node id that no certificate can name.
    #[error("{0}")]
    NodeId(String),
}

/// A certificate and its private key, both PEM.
#[derive(Clone, Debug)]
pub struct Pem {
    /// The certificate.
    pub cert: String,
    /// The private key (PKCS#8).
    pub key: String,
}

/// A development CA that signs node and client certificates.
pub struct DevCa {
    params: CertificateParams,
    key: KeyPair,
    cert: String,
}

fn ca_params() -> Result<CertificateParams, CertError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, CA_NAME);
    params.distinguished_name = name;
    Ok(params)
}

impl DevCa {
    /// A new CA with a fresh key.
    pub fn new() -> Result<Self, CertError> {
        Self::from_key(KeyPair::generate()?)
    }

    /// The CA of a key written before (its PEM), so that more certificates
    /// can be signed later by the same CA.
    pub fn from_key_pem(key_pem: &str) -> Result<Self, CertError> {
        Self::from_key(KeyPair::from_pem(key_pem)?)
    }

    fn from_key(key: KeyPair) -> Result<Self, CertError> {
        let params = ca_params()?;
        let cert = params.self_signed(&key)?.pem();
        Ok(Self { params, key, cert })
    }

    /// The CA's certificate and key.
    pub fn pem(&self) -> Pem {
        Pem {
            cert: self.cert.clone(),
            key: self.key.serialize_pem(),
        }
    }

    fn sign(
        &self,
        common_name: &str,
        names: Vec<String>,
        usages: Vec<ExtendedKeyUsagePurpose>,
    ) -> Result<Pem, CertError> {
        let mut params = CertificateParams::new(names)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.extended_key_usages = usages;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let key = KeyPair::generate()?;
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer)?;
        Ok(Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }

    /// A certificate for node `id`, valid as server and client between
    /// nodes, and as the client API's server certificate for `hosts`
    /// (names or IP addresses clients connect to).
    pub fn node(&self, id: &str, hosts: &[String]) -> Result<Pem, CertError> {
        check_node_id(id).map_err(CertError::NodeId)?;
        let mut names = vec![node_dns_name(id)];
        names.extend(hosts.iter().cloned());
        self.sign(
            id,
            names,
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        )
    }

    /// A client certificate named `name` (for `--tls-client-ca`).
    pub fn client(&self, name: &str) -> Result<Pem, CertError> {
        self.sign(name, Vec::new(), vec![ExtendedKeyUsagePurpose::ClientAuth])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::identity::certifies;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::CertificateDer;

    #[test]
    fn a_node_certificate_names_its_node_and_a_ca_reloads_from_its_key() {
        let ca = DevCa::new().unwrap();
        let node = ca
            .node("n1", &["localhost".into(), "127.0.0.1".into()])
            .unwrap();
        let der = CertificateDer::from_pem_slice(node.cert.as_bytes()).unwrap();
        assert!(certifies(&der, "n1"));
        assert!(!certifies(&der, "n2"));
        let again = DevCa::from_key_pem(&ca.pem().key).unwrap();
        assert_eq!(again.pem().key, ca.pem().key);
        assert!(ca.node(&"x".repeat(200), &[]).is_err());
    }
}

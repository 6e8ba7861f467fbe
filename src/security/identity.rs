//! A node's identity in its certificate.
//!
//! Node ids are free text (by default the advertised `host:port`), which a
//! certificate's DNS names cannot carry as they are. A node's certificate
//! therefore names it by a DNS name derived from its id: the id's bytes in
//! lowercase hex, cut into labels of at most 62 characters, followed by
//! `.node.kilovolt` (`127.0.0.1:50051` is
//! `3132372e302e302e313a3530303531.node.kilovolt`). TLS clients verify it
//! as the server name, and the peer service checks a caller's certificate
//! against the id its requests claim, with the same standard name check.

use tokio_rustls::rustls::pki_types::{CertificateDer, DnsName, ServerName};

/// The suffix every node name ends with.
pub const NODE_NAME_SUFFIX: &str = "node.kilovolt";

/// The longest node id a certificate can name: a DNS name holds at most
/// 253 characters, and each byte of the id takes two.
pub const MAX_NODE_ID_BYTES: usize = 115;

/// The DNS name that stands for node `id` in certificates (see the module
/// documentation).
pub fn node_dns_name(id: &str) -> String {
    let hex: String = id.bytes().map(|b| format!("{b:02x}")).collect();
    let mut labels: Vec<&str> = Vec::new();
    let mut rest = hex.as_str();
    while !rest.is_empty() {
        let (label, tail) = rest.split_at(rest.len().min(62));
        labels.push(label);
        rest = tail;
    }
    labels.push(NODE_NAME_SUFFIX);
    labels.join(".")
}

/// Whether `id` fits in a certificate's name ([`MAX_NODE_ID_BYTES`]).
pub fn check_node_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_NODE_ID_BYTES {
        return Err(format!(
            "node id is {} bytes; with peer TLS the limit is 1 to {MAX_NODE_ID_BYTES}",
            id.len()
        ));
    }
    Ok(())
}

/// Whether `cert` (already verified against the cluster's CA) names node
/// `id`.
pub fn certifies(cert: &CertificateDer<'_>, id: &str) -> bool {
    let Ok(name) = DnsName::try_from(node_dns_name(id)) else {
        return false;
    };
    let Ok(end_entity) = webpki::EndEntityCert::try_from(cert) else {
        return false;
    };
    end_entity
        .verify_is_valid_for_subject_name(&ServerName::DnsName(name))
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_valid_dns_names_and_distinct() {
        let a = node_dns_name("127.0.0.1:50051");
        assert_eq!(a, "3132372e302e302e313a3530303531.node.kilovolt");
        let long = "x".repeat(MAX_NODE_ID_BYTES);
        for id in ["n1", "127.0.0.1:50051", long.as_str()] {
            assert!(DnsName::try_from(node_dns_name(id)).is_ok(), "{id}");
        }
        assert_ne!(node_dns_name("n1"), node_dns_name("n2"));
        assert!(check_node_id(&long).is_ok());
        let too_long = "x".repeat(MAX_NODE_ID_BYTES + 1);
        assert!(check_node_id(&too_long)
            .unwrap_err()
            .contains("the limit is 1 to 115"));
    }

    #[test]
    fn a_certificate_names_only_its_own_node() {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec![node_dns_name("n1")]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let der = cert.der().clone();
        assert!(certifies(&der, "n1"));
        assert!(!certifies(&der, "n2"));
    }
}

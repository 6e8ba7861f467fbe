//! Who may talk to a node: TLS for the client API and between nodes
//! (`tls`, with the accept loop in `incoming`), node identities in
//! certificates (`identity`), and client tokens with roles (`auth`).
//! Everything here can be reloaded without a restart (SIGHUP): the next
//! connection or request uses what was read last.
//!
//! This module depends on nothing else in the crate: the node wires it in.

pub mod auth;
pub mod certs;
pub mod client;
pub mod identity;
pub mod incoming;
pub mod tls;

pub use auth::{AuthFile, AuthLayer, Caller, Role};
pub use identity::node_dns_name;
pub use incoming::tls_incoming;
pub use tls::{PeerTls, ServerTls, TlsError};

//! The gRPC edge: validates requests, maps the contract's messages to the
//! node's own types and back, and calls the coordinator. No logic lives here.

mod admin;
mod faults;
mod kilovolt;
mod status;
mod validate;

pub use admin::AdminService;
pub use faults::FaultsService;
pub use kilovolt::KilovoltService;

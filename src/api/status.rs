//! The one mapping from the node's errors to gRPC status codes.

use tonic::{Code, Status};

use crate::crdt::ops::TypeError;
use crate::error::Error;

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        let code = match &e {
            Error::EmptyKey { .. }
            | Error::KeyTooLong { .. }
            | Error::ValueTooLarge { .. }
            | Error::TtlTooLong { .. }
            | Error::UnknownConsistency(_)
            | Error::BatchTooLarge { .. }
            | Error::EmptyBatchOp
            | Error::LocalWrite => Code::InvalidArgument,
            Error::Unavailable(_) => Code::Unavailable,
            Error::Clock(_) => Code::FailedPrecondition,
            Error::Type(TypeError::WrongKind { .. } | TypeError::MapTooLarge { .. }) => {
                Code::FailedPrecondition
            }
            Error::Type(TypeError::CounterOverflow { .. }) => Code::OutOfRange,
        };
        Status::new(code, e.to_string())
    }
}

/// The answer of an RPC that the contract names but this release does not
/// serve yet.
pub fn not_yet(rpc: &str, feature: &str) -> Status {
    Status::unimplemented(format!(
        "{rpc} is not implemented in this release of Kilovolt-DB: {feature} are not available yet"
    ))
}

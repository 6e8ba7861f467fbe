//! The one mapping from the node's errors to gRPC status codes.

use tonic::{Code, Status};

use crate::clock::ClockError;
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
            | Error::TooManyFields { .. }
            | Error::NoFields { .. }
            | Error::EmptyFieldName { .. }
            | Error::FieldNameTooLong { .. }
            | Error::FieldValueTooLarge { .. }
            | Error::FieldsTooLarge { .. }
            | Error::LocalWrite => Code::InvalidArgument,
            Error::Unavailable(_) | Error::Clock(ClockError::Offset { .. }) => Code::Unavailable,
            Error::AnswerTooLarge { .. } => Code::ResourceExhausted,
            Error::Clock(_) => Code::FailedPrecondition,
            Error::Type(TypeError::WrongKind { .. } | TypeError::MapTooLarge { .. }) => {
                Code::FailedPrecondition
            }
            Error::Type(TypeError::CounterOverflow { .. }) => Code::OutOfRange,
        };
        Status::new(code, e.to_string())
    }
}

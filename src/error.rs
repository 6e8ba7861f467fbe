//! What can go wrong with a request, as the code inside the node sees it.
//! The gRPC edge (`api`) maps each kind to one status code.

use thiserror::Error;

use crate::clock::ClockError;
use crate::crdt::ops::TypeError;

/// Why a request was refused or could not be carried out.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum Error {
    /// The key is the empty string.
    #[error("key is empty; a key needs 1 to {limit} bytes")]
    EmptyKey {
        /// The longest key accepted.
        limit: usize,
    },
    /// The key is longer than the limit.
    #[error("key is {size} bytes; the limit is {limit}")]
    KeyTooLong {
        /// The key's length in bytes.
        size: usize,
        /// The longest key accepted.
        limit: usize,
    },
    /// The value is larger than `--max-value-bytes`.
    #[error("value is {size} bytes; the limit is {limit} (--max-value-bytes)")]
    ValueTooLarge {
        /// The value's length in bytes.
        size: usize,
        /// The largest value accepted.
        limit: usize,
    },
    /// The expiry would fall past the end of the clock's range (year 2106).
    #[error("ttl_ms is {ttl_ms}; the limit is {limit} (expiry must fall before the clock's range ends in 2106)")]
    TtlTooLong {
        /// The requested time to live.
        ttl_ms: u64,
        /// The longest time to live accepted now.
        limit: u64,
    },
    /// A consistency number the contract does not define.
    #[error(
        "consistency is {0}, which the contract does not define; use 0 (DEFAULT) to 7 (LOCAL_ONE)"
    )]
    UnknownConsistency(i32),
    /// A batch carries more operations than the limit.
    #[error("batch has {size} operations; the limit is {limit}")]
    BatchTooLarge {
        /// The operations in the batch.
        size: usize,
        /// The most operations accepted.
        limit: usize,
    },
    /// A map request names more fields than the limit.
    #[error("request names {size} fields; the limit is {limit}")]
    TooManyFields {
        /// The fields named.
        size: usize,
        /// The most fields accepted.
        limit: usize,
    },
    /// A map write names no field.
    #[error("{op} needs at least one field")]
    NoFields {
        /// The operation, as the contract names it.
        op: &'static str,
    },
    /// A field name is the empty string.
    #[error("field name is empty; a field name needs 1 to {limit} bytes")]
    EmptyFieldName {
        /// The longest field name accepted.
        limit: usize,
    },
    /// A field name is longer than the limit.
    #[error("field name is {size} bytes; the limit is {limit}")]
    FieldNameTooLong {
        /// The name's length in bytes.
        size: usize,
        /// The longest field name accepted.
        limit: usize,
    },
    /// A field value is larger than `--max-value-bytes`.
    #[error("value of field {field:?} is {size} bytes; the limit is {limit} (--max-value-bytes)")]
    FieldValueTooLarge {
        /// The field.
        field: String,
        /// The value's length in bytes.
        size: usize,
        /// The largest value accepted.
        limit: usize,
    },
    /// The fields of one request add up to more than `--max-value-bytes`.
    #[error("fields are {size} bytes in all (names, values and 16 per field); the limit is {limit} (--max-value-bytes)")]
    FieldsTooLarge {
        /// The size of the fields, as a map counts it.
        size: usize,
        /// The most bytes accepted.
        limit: usize,
    },
    /// An operation of a batch names none of set, get or delete.
    #[error("batch operation is empty; set one of set, get or delete")]
    EmptyBatchOp,
    /// The answer would be larger than one message may carry: the work
    /// stopped as soon as it passed the limit, before it was all done.
    #[error("{what} reached {size} bytes; the limit is {limit} ({why})")]
    AnswerTooLarge {
        /// What was being answered, and how far it got.
        what: String,
        /// The size the answer reached when the work stopped.
        size: usize,
        /// The largest answer accepted.
        limit: usize,
        /// Where the limit comes from.
        why: &'static str,
    },
    /// LOCAL was asked of a write.
    #[error("consistency LOCAL is for reads only; a write needs DEFAULT, ONE, QUORUM or ALL")]
    LocalWrite,
    /// The consistency level could not be met; says which replicas answered
    /// and what happened to each of the others.
    #[error("{0}")]
    Unavailable(String),
    /// No version could be issued for the write.
    #[error(transparent)]
    Clock(#[from] ClockError),
    /// The operation does not fit the value the key holds: another kind, a
    /// map that would grow past the limit, a counter that would overflow.
    #[error(transparent)]
    Type(#[from] TypeError),
}

//! Checks on client input, applied before anything else touches it.

use crate::config::{MAX_BATCH_OPS, MAX_KEY_BYTES};
use crate::coordinator::Consistency;
use crate::error::Error;
use crate::proto;

/// A key must have 1 to [`MAX_KEY_BYTES`] bytes.
pub fn key(key: &str) -> Result<&str, Error> {
    match key.len() {
        0 => Err(Error::EmptyKey {
            limit: MAX_KEY_BYTES,
        }),
        size if size > MAX_KEY_BYTES => Err(Error::KeyTooLong {
            size,
            limit: MAX_KEY_BYTES,
        }),
        _ => Ok(key),
    }
}

/// A batch must carry at most [`MAX_BATCH_OPS`] operations.
pub fn batch_size(size: usize) -> Result<(), Error> {
    if size > MAX_BATCH_OPS {
        return Err(Error::BatchTooLarge {
            size,
            limit: MAX_BATCH_OPS,
        });
    }
    Ok(())
}

/// A value must fit `--max-value-bytes`.
pub fn value(value: &str, limit: usize) -> Result<&str, Error> {
    if value.len() > limit {
        return Err(Error::ValueTooLarge {
            size: value.len(),
            limit,
        });
    }
    Ok(value)
}

/// The consistency level a request asks for, with DEFAULT resolved to the
/// node's configured level. The raw number is checked because prost maps an
/// unknown enum value to the default silently.
pub fn consistency(raw: i32, default: Consistency) -> Result<Consistency, Error> {
    use proto::Consistency as P;
    match P::try_from(raw).map_err(|_| Error::UnknownConsistency(raw))? {
        P::Default => Ok(default),
        P::One => Ok(Consistency::One),
        P::Quorum => Ok(Consistency::Quorum),
        P::All => Ok(Consistency::All),
        P::Local => Ok(Consistency::Local),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_inclusive_and_named() {
        assert!(key(&"k".repeat(MAX_KEY_BYTES)).is_ok());
        let err = key(&"k".repeat(MAX_KEY_BYTES + 1)).unwrap_err();
        assert_eq!(err.to_string(), "key is 4097 bytes; the limit is 4096");
        assert!(value("abc", 3).is_ok());
        assert_eq!(
            value("abcd", 3).unwrap_err().to_string(),
            "value is 4 bytes; the limit is 3 (--max-value-bytes)"
        );
    }

    #[test]
    fn batch_limit_is_inclusive_and_named() {
        assert!(batch_size(MAX_BATCH_OPS).is_ok());
        assert_eq!(
            batch_size(1500).unwrap_err().to_string(),
            "batch has 1500 operations; the limit is 1000"
        );
    }

    #[test]
    fn unknown_consistency_is_refused_and_default_resolved() {
        assert_eq!(consistency(0, Consistency::Quorum), Ok(Consistency::Quorum));
        assert_eq!(consistency(4, Consistency::One), Ok(Consistency::Local));
        assert_eq!(
            consistency(5, Consistency::One),
            Err(Error::UnknownConsistency(5))
        );
        assert_eq!(
            consistency(-1, Consistency::One),
            Err(Error::UnknownConsistency(-1))
        );
    }
}

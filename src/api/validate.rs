//! Checks on client input, applied before anything else touches it.

use crate::config::{MAX_BATCH_OPS, MAX_FIELD_NAME_BYTES, MAX_KEY_BYTES, MAX_MAP_FIELDS};
use crate::coordinator::Consistency;
use crate::crdt::FIELD_OVERHEAD;
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

/// A map request may name at most [`MAX_MAP_FIELDS`] fields, and a write
/// (`op`) at least one.
pub fn field_count(size: usize, op: Option<&'static str>) -> Result<(), Error> {
    if size > MAX_MAP_FIELDS {
        return Err(Error::TooManyFields {
            size,
            limit: MAX_MAP_FIELDS,
        });
    }
    match op {
        Some(op) if size == 0 => Err(Error::NoFields { op }),
        _ => Ok(()),
    }
}

/// A field name must have 1 to [`MAX_FIELD_NAME_BYTES`] bytes.
pub fn field_name(name: &str) -> Result<&str, Error> {
    match name.len() {
        0 => Err(Error::EmptyFieldName {
            limit: MAX_FIELD_NAME_BYTES,
        }),
        size if size > MAX_FIELD_NAME_BYTES => Err(Error::FieldNameTooLong {
            size,
            limit: MAX_FIELD_NAME_BYTES,
        }),
        _ => Ok(name),
    }
}

/// The fields of a `MapSet`: between 1 and [`MAX_MAP_FIELDS`], names of 1
/// to [`MAX_FIELD_NAME_BYTES`] bytes, each value within `limit`
/// (`--max-value-bytes`, which bounds the whole map too), and their size as
/// a map counts it (names, values, [`FIELD_OVERHEAD`] each) within it too. Returned by name, so the write does not depend on the order
/// the request listed them in.
pub fn map_fields(
    fields: &std::collections::HashMap<String, String>,
    limit: usize,
) -> Result<Vec<(&str, &str)>, Error> {
    field_count(fields.len(), Some("MapSet"))?;
    let mut pairs = Vec::with_capacity(fields.len());
    let mut total = 0usize;
    for (name, value) in fields {
        field_name(name)?;
        if value.len() > limit {
            return Err(Error::FieldValueTooLarge {
                field: name.clone(),
                size: value.len(),
                limit,
            });
        }
        total = total.saturating_add(name.len() + value.len() + FIELD_OVERHEAD);
        pairs.push((name.as_str(), value.as_str()));
    }
    if total > limit {
        return Err(Error::FieldsTooLarge { size: total, limit });
    }
    pairs.sort_unstable();
    Ok(pairs)
}

/// The field names of a `MapGet` (`op` None: may be empty, for all) or a
/// `MapRemove`: checked, deduplicated, by name.
pub fn field_names<'a>(
    names: &'a [String],
    op: Option<&'static str>,
) -> Result<Vec<&'a str>, Error> {
    field_count(names.len(), op)?;
    let mut out = names
        .iter()
        .map(|n| field_name(n))
        .collect::<Result<Vec<_>, _>>()?;
    out.sort_unstable();
    out.dedup();
    Ok(out)
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
        P::LocalOne => Ok(Consistency::LocalOne),
        P::LocalQuorum => Ok(Consistency::LocalQuorum),
        P::EachQuorum => Ok(Consistency::EachQuorum),
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
    fn map_limits_are_inclusive_and_named() {
        use std::collections::HashMap;
        let fields = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let two = fields(&[("b", "2"), ("a", "1")]);
        assert_eq!(map_fields(&two, 36).unwrap(), vec![("a", "1"), ("b", "2")]);
        assert_eq!(
            map_fields(&fields(&[]), 4).unwrap_err().to_string(),
            "MapSet needs at least one field"
        );
        let long = "n".repeat(5000);
        assert_eq!(
            map_fields(&fields(&[(&long, "v")]), 1 << 20)
                .unwrap_err()
                .to_string(),
            "field name is 5000 bytes; the limit is 4096"
        );
        assert!(map_fields(&fields(&[(&"n".repeat(4096), "v")]), 1 << 20).is_ok());
        assert_eq!(
            map_fields(&fields(&[("", "v")]), 4)
                .unwrap_err()
                .to_string(),
            "field name is empty; a field name needs 1 to 4096 bytes"
        );
        assert_eq!(
            map_fields(&fields(&[("f", "12345")]), 4)
                .unwrap_err()
                .to_string(),
            "value of field \"f\" is 5 bytes; the limit is 4 (--max-value-bytes)"
        );
        assert_eq!(
            map_fields(&fields(&[("a", "12"), ("b", "12")]), 37)
                .unwrap_err()
                .to_string(),
            "fields are 38 bytes in all (names, values and 16 per field); the limit is 37 (--max-value-bytes)"
        );
        let many: Vec<String> = (0..1001).map(|i| format!("f{i}")).collect();
        assert_eq!(
            field_names(&many, None).unwrap_err().to_string(),
            "request names 1001 fields; the limit is 1000"
        );
        assert!(field_names(&many[..1000], Some("MapRemove")).is_ok());
        assert!(field_names(&[], None).unwrap().is_empty());
        assert_eq!(
            field_names(&[], Some("MapRemove")).unwrap_err().to_string(),
            "MapRemove needs at least one field"
        );
        let dup = vec!["b".to_string(), "a".to_string(), "b".to_string()];
        assert_eq!(field_names(&dup, None).unwrap(), vec!["a", "b"]);
    }

    #[test]
    fn unknown_consistency_is_refused_and_default_resolved() {
        assert_eq!(consistency(0, Consistency::Quorum), Ok(Consistency::Quorum));
        assert_eq!(consistency(4, Consistency::One), Ok(Consistency::Local));
        assert_eq!(
            consistency(5, Consistency::One),
            Ok(Consistency::LocalQuorum)
        );
        assert_eq!(
            consistency(6, Consistency::One),
            Ok(Consistency::EachQuorum)
        );
        assert_eq!(consistency(7, Consistency::One), Ok(Consistency::LocalOne));
        assert_eq!(
            consistency(8, Consistency::One),
            Err(Error::UnknownConsistency(8))
        );
        assert_eq!(
            consistency(-1, Consistency::One),
            Err(Error::UnknownConsistency(-1))
        );
    }
}

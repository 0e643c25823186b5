//! A replay body: corrected records, each keyed by the index it had in the batch it corrects.

use std::collections::HashMap;

use serde_json::Value;

use super::decode::Decoded;

/// What is wrong with a replay body's items; the whole request is refused (nothing is stored).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplayItemError {
    /// Item `item` (0-based, in body order) is not `{"index": n, "record": {...}}`; `pointer`
    /// is a JSON pointer into the list of items.
    #[error("replay item {item} ({pointer}): {reason}")]
    Malformed { item: usize, pointer: String, reason: String },
    /// Two items correct the same record.
    #[error("record {index} is corrected twice in this replay (items {first} and {second})")]
    Repeated { index: u64, first: usize, second: usize },
}

/// Splits replay items into the original indexes and the records, in body order. Every item
/// must be an object with exactly `index` (a non-negative integer) and `record`; an item the
/// decoder already refused (too large, too deep, not JSON) cannot be tied to a record and
/// refuses the request.
pub fn split_items(items: Vec<Decoded>) -> Result<(Vec<u64>, Vec<Decoded>), ReplayItemError> {
    let mut indexes = Vec::with_capacity(items.len());
    let mut records = Vec::with_capacity(items.len());
    let mut seen: HashMap<u64, usize> = HashMap::with_capacity(items.len());
    for (item, decoded) in items.into_iter().enumerate() {
        let malformed = |field: &str, reason: String| ReplayItemError::Malformed {
            item,
            pointer: if field.is_empty() { format!("/{item}") } else { format!("/{item}/{field}") },
            reason,
        };
        let value = match decoded {
            Decoded::Value(value) => *value,
            Decoded::Rejected { error, .. } => return Err(malformed("", error.message)),
            // Items are never read as table rows; one that was is not an item.
            Decoded::Row { .. } => Value::Null,
        };
        let Value::Object(mut fields) = value else {
            return Err(malformed("", "an item must be an object {\"index\": n, \"record\": {...}}".into()));
        };
        let index = match fields.remove("index") {
            Some(Value::Number(n)) if n.as_u64().is_some() => n.as_u64().unwrap_or_default(),
            Some(other) => {
                return Err(malformed("index", format!("index must be a non-negative integer, not {other}")))
            }
            None => return Err(malformed("index", "index is missing".into())),
        };
        let Some(record) = fields.remove("record") else {
            return Err(malformed("record", "record is missing".into()));
        };
        if let Some(extra) = fields.keys().next() {
            let pointer_field = extra.replace('~', "~0").replace('/', "~1");
            return Err(malformed(&pointer_field, format!("unknown field {extra:?}; an item has index and record")));
        }
        if let Some(first) = seen.insert(index, item) {
            return Err(ReplayItemError::Repeated { index, first, second: item });
        }
        indexes.push(index);
        records.push(Decoded::value(record));
    }
    Ok((indexes, records))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::ingest::reject::{FieldError, RejectCode};

    fn items(values: Vec<Value>) -> Vec<Decoded> {
        values.into_iter().map(Decoded::value).collect()
    }

    #[test]
    fn items_split_into_indexes_and_records_in_order() {
        let (indexes, records) = split_items(items(vec![
            json!({"index": 7, "record": {"a": 1}}),
            json!({"record": "not an object", "index": 2}),
        ]))
        .unwrap();
        assert_eq!(indexes, vec![7, 2]);
        assert!(matches!(&records[0], Decoded::Value(v) if **v == json!({"a": 1})));
        assert!(matches!(&records[1], Decoded::Value(v) if **v == json!("not an object")));
    }

    #[test]
    fn a_malformed_item_names_where() {
        let cases = [
            (json!([1]), "/0"),
            (json!({"record": {}}), "/0/index"),
            (json!({"index": -1, "record": {}}), "/0/index"),
            (json!({"index": 1.5, "record": {}}), "/0/index"),
            (json!({"index": "3", "record": {}}), "/0/index"),
            (json!({"index": 3}), "/0/record"),
            (json!({"index": 3, "record": {}, "a/b": 1}), "/0/a~1b"),
        ];
        for (item, pointer) in cases {
            match split_items(items(vec![item.clone()])) {
                Err(ReplayItemError::Malformed { item: 0, pointer: p, .. }) => assert_eq!(p, pointer, "{item}"),
                other => panic!("{item}: {other:?}"),
            }
        }
        let refused = Decoded::Rejected {
            record: Box::new(json!("{")),
            error: Box::new(FieldError {
                path: String::new(),
                column: None,
                code: RejectCode::InvalidJson,
                message: "bad".into(),
            }),
        };
        let ok = Decoded::value(json!({"index": 1, "record": {}}));
        assert!(matches!(split_items(vec![ok, refused]), Err(ReplayItemError::Malformed { item: 1, .. })));
    }

    #[test]
    fn an_index_corrected_twice_is_refused() {
        let result = split_items(items(vec![
            json!({"index": 4, "record": {}}),
            json!({"index": 5, "record": {}}),
            json!({"index": 4, "record": {}}),
        ]));
        assert_eq!(result.err(), Some(ReplayItemError::Repeated { index: 4, first: 0, second: 2 }));
    }
}

//! Schema drift: what to do with fields the table does not have yet.

use serde_json::Value;

use super::decode::Decoded;
use std::collections::BTreeMap;

use super::validate::{unknown_fields, KeyResolver, KeyTarget, Unknown, Validator};
use crate::schema::TableSchema;
use crate::schema::{Column, ColumnType};

pub use crate::schema::DriftPolicy;

/// The type a new column gets from one JSON value.
pub fn infer_type(value: &Value) -> Option<ColumnType> {
    match value {
        Value::Null => None,
        Value::Bool(_) => Some(ColumnType::Boolean),
        Value::Number(n) if integral(n) => Some(ColumnType::INTEGER),
        Value::Number(_) => Some(ColumnType::Float),
        Value::String(_) => Some(ColumnType::VARCHAR),
        Value::Array(_) | Value::Object(_) => Some(ColumnType::Variant),
    }
}

/// Whether a JSON number is an integer that NUMBER(38,0) holds: numbers keep their text, so one
/// beyond 64 bits is still an integer (and lands exactly), not a double.
fn integral(n: &serde_json::Number) -> bool {
    if n.is_i64() || n.is_u64() {
        return true;
    }
    let text = n.to_string();
    let digits = text.strip_prefix('-').unwrap_or(&text);
    digits.len() <= 38 && digits.bytes().all(|b| b.is_ascii_digit())
}

/// The narrowest type that holds values of both types.
pub fn widen(a: ColumnType, b: ColumnType) -> ColumnType {
    use ColumnType::*;
    match (a, b) {
        _ if a == b => a,
        (Variant, _) | (_, Variant) => Variant,
        (Number { .. }, Float) | (Float, Number { .. }) => Float,
        _ => ColumnType::VARCHAR,
    }
}

/// Columns that `evolve` adds for a batch: every unknown field with a non-null value, in order of
/// first appearance, typed by widening over all its values.
pub fn plan_new_columns<'r>(keys: &mut KeyResolver<'_>, records: impl IntoIterator<Item = &'r Decoded>) -> Vec<Column> {
    let mut planned: Vec<Column> = Vec::new();
    for record in records {
        let Decoded::Value(value) = record else { continue };
        let Value::Object(object) = &**value else { continue };
        for (name, value) in unknown_fields(keys, object) {
            let Some(ty) = infer_type(value) else { continue };
            match planned.iter_mut().find(|c| c.name == name) {
                Some(column) => column.ty = widen(column.ty, ty),
                None => planned.push(Column { name, ty, nullable: true }),
            }
        }
    }
    planned
}

/// Columns `evolve` adds for a batch, planned only from the records that would be accepted: a
/// field that appears only on records rejected for other reasons adds no column. Records are
/// checked a second time only when the batch has new fields at all.
pub fn plan_from_accepted(
    schema: &TableSchema,
    aliases: &BTreeMap<String, String>,
    records: &[Decoded],
    max_depth: usize,
) -> Vec<Column> {
    let planned = plan_new_columns(&mut KeyResolver::new(schema).with_aliases(aliases), records);
    if planned.is_empty() {
        return planned;
    }
    // New columns are nullable, so a record that passes with its unknown fields dropped passes
    // with them as columns too.
    let mut validator = Validator::new(schema, max_depth).aliases(aliases).unknown_fields(Unknown::Drop);
    let accepted = records.iter().filter(|r| matches!(r, Decoded::Value(v) if validator.validate(v).is_ok()));
    plan_new_columns(&mut KeyResolver::new(schema).with_aliases(aliases), accepted)
}

/// The keys of a batch that name no column (nulls aside), as sent, each once, in order of first
/// appearance: what a `freeze` policy refuses.
pub fn unknown_keys(keys: &mut KeyResolver<'_>, records: &[Decoded]) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    for record in records {
        let Decoded::Value(value) = record else { continue };
        let Value::Object(object) = &**value else { continue };
        for (key, value) in object {
            if !value.is_null() && matches!(keys.resolve(key), KeyTarget::Unknown(_)) && !found.contains(key) {
                found.push(key.clone());
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::ColumnName;
    use crate::schema::TableSchema;
    use serde_json::json;

    #[test]
    fn integers_beyond_64_bits_are_integers() {
        let value: Value = serde_json::from_str("123456789012345678901234567890").unwrap();
        assert_eq!(infer_type(&value), Some(ColumnType::INTEGER));
        let value: Value = serde_json::from_str("-18446744073709551617").unwrap();
        assert_eq!(infer_type(&value), Some(ColumnType::INTEGER));
        let value: Value = serde_json::from_str(&"9".repeat(39)).unwrap();
        assert_eq!(infer_type(&value), Some(ColumnType::Float), "more digits than NUMBER(38,0) holds");
        let value: Value = serde_json::from_str("1.5").unwrap();
        assert_eq!(infer_type(&value), Some(ColumnType::Float));
        let value: Value = serde_json::from_str("1e3").unwrap();
        assert_eq!(infer_type(&value), Some(ColumnType::Float));
    }

    #[test]
    fn widening_rules() {
        use ColumnType::*;
        assert_eq!(widen(ColumnType::INTEGER, Float), Float);
        assert_eq!(widen(Boolean, ColumnType::INTEGER), ColumnType::VARCHAR);
        assert_eq!(widen(ColumnType::VARCHAR, Variant), Variant);
        assert_eq!(widen(Boolean, Boolean), Boolean);
    }

    #[test]
    fn plans_typed_nullable_columns_from_a_batch() {
        let schema = TableSchema {
            name: "T".into(),
            columns: vec![Column {
                name: ColumnName::normalize("ID").unwrap(),
                ty: ColumnType::INTEGER,
                nullable: false,
            }],
        };
        let mut keys = KeyResolver::new(&schema);
        let records: Vec<Decoded> = [
            json!({"id": 1, "score": 1, "ref": "a", "only_null": null}),
            json!({"id": 2, "Score": 2.5, "tags": ["x"], "flag": true}),
            json!("not an object"),
        ]
        .into_iter()
        .map(Decoded::value)
        .collect();
        let planned = plan_new_columns(&mut keys, &records);
        let got: Vec<_> = planned.iter().map(|c| (c.name.as_str(), c.ty.to_string(), c.nullable)).collect();
        assert_eq!(
            got,
            vec![
                ("SCORE", "FLOAT".to_string(), true),
                ("REF", "VARCHAR".to_string(), true),
                ("TAGS", "VARIANT".to_string(), true),
                ("FLAG", "BOOLEAN".to_string(), true),
            ]
        );
    }

    #[test]
    fn parses_policy_names() {
        assert_eq!("Evolve".parse::<DriftPolicy>().unwrap(), DriftPolicy::Evolve);
        assert_eq!("discard_row".parse::<DriftPolicy>().unwrap(), DriftPolicy::DiscardRow);
        assert_eq!("freeze".parse::<DriftPolicy>().unwrap(), DriftPolicy::Freeze);
        assert_eq!(" Discard_Value".parse::<DriftPolicy>().unwrap(), DriftPolicy::DiscardValue);
        assert!("thaw".parse::<DriftPolicy>().is_err());
    }
}

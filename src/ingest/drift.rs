//! Schema drift: what to do with fields the table does not have yet.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::decode::Decoded;
use super::validate::{unknown_fields, KeyResolver};
use crate::schema::{Column, ColumnType};

/// Per-table policy for unknown fields.
///
/// Only `evolve` exists so far; the other policies of the design (rescue, discard_value,
/// discard_row, freeze) arrive with their own issue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DriftPolicy {
    /// Add a nullable column for every new field, typed from the batch.
    #[default]
    Evolve,
}

impl DriftPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            DriftPolicy::Evolve => "evolve",
        }
    }
}

impl fmt::Display for DriftPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DriftPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "evolve" => Ok(DriftPolicy::Evolve),
            other => Err(format!("unsupported drift policy {other:?}; supported: evolve")),
        }
    }
}

/// The type a new column gets from one JSON value.
pub fn infer_type(value: &Value) -> Option<ColumnType> {
    match value {
        Value::Null => None,
        Value::Bool(_) => Some(ColumnType::Boolean),
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(ColumnType::INTEGER),
        Value::Number(_) => Some(ColumnType::Float),
        Value::String(_) => Some(ColumnType::VARCHAR),
        Value::Array(_) | Value::Object(_) => Some(ColumnType::Variant),
    }
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
pub fn plan_new_columns(keys: &mut KeyResolver<'_>, records: &[Decoded]) -> Vec<Column> {
    let mut planned: Vec<Column> = Vec::new();
    for record in records {
        let Decoded::Value(Value::Object(object)) = record else { continue };
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::TableSchema;
    use serde_json::json;

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
            columns: vec![Column { name: "ID".into(), ty: ColumnType::INTEGER, nullable: false }],
        };
        let mut keys = KeyResolver::new(&schema);
        let records: Vec<Decoded> = [
            json!({"id": 1, "score": 1, "ref": "a", "only_null": null}),
            json!({"id": 2, "Score": 2.5, "tags": ["x"], "flag": true}),
            json!("not an object"),
        ]
        .into_iter()
        .map(Decoded::Value)
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
        assert!("freeze".parse::<DriftPolicy>().is_err());
    }
}

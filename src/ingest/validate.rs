//! Checks one record against a table schema and turns it into typed cells.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Map, Value};

use super::coerce::{coerce, Cell};
use super::reject::{pointer, FieldError, RejectCode};
use crate::schema::{ColumnName, IdentifierError, TableSchema};

/// Where a JSON key of a record goes.
#[derive(Debug, Clone)]
pub enum KeyTarget {
    Column(usize),
    /// A key that names no column yet; `Ok` holds the column it would become.
    Unknown(Result<ColumnName, IdentifierError>),
}

/// Maps JSON keys to columns, caching the normalisation of each distinct key seen in a batch.
pub struct KeyResolver<'s> {
    schema: &'s TableSchema,
    by_name: HashMap<&'s str, usize>,
    /// Renamed fields: normalised field name to the position of the column they load into.
    aliases: HashMap<String, usize>,
    cache: HashMap<String, KeyTarget>,
}

impl<'s> KeyResolver<'s> {
    pub fn new(schema: &'s TableSchema) -> Self {
        let by_name = schema.columns.iter().enumerate().map(|(i, c)| (c.name.as_str(), i)).collect();
        KeyResolver { schema, by_name, aliases: HashMap::new(), cache: HashMap::new() }
    }

    /// Also resolves renamed fields: `aliases` maps a normalised field name to its column's.
    pub fn with_aliases(mut self, aliases: &BTreeMap<String, String>) -> Self {
        for (field, column) in aliases {
            if let Some(&i) = self.by_name.get(column.as_str()) {
                self.aliases.insert(field.clone(), i);
            }
        }
        self
    }

    pub fn schema(&self) -> &'s TableSchema {
        self.schema
    }

    /// The column (or would-be column) a key names; case-insensitive.
    pub fn resolve(&mut self, key: &str) -> &KeyTarget {
        if !self.cache.contains_key(key) {
            let target = match ColumnName::normalize(key) {
                Ok(name) => match self.by_name.get(name.as_str()).or_else(|| self.aliases.get(name.as_str())) {
                    Some(&i) => KeyTarget::Column(i),
                    None => KeyTarget::Unknown(Ok(name)),
                },
                Err(e) => KeyTarget::Unknown(Err(e)),
            };
            self.cache.insert(key.to_string(), target);
        }
        &self.cache[key]
    }
}

/// What validation does with a field the table has no column for (the drift policy, applied
/// where the record is checked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unknown {
    /// The record is rejected with `unknown_field` (`discard_row`; under `evolve`, a key that
    /// cannot become a column, or one past the column cap).
    Reject,
    /// The field is dropped and counted (`discard_value`).
    Drop,
    /// The field is kept in the rescue column at this position, and so is a value that does not
    /// fit its nullable column (`rescue`).
    Rescue(usize),
}

/// Validates records of one batch against one schema.
pub struct Validator<'s> {
    keys: KeyResolver<'s>,
    max_depth: usize,
    unknown: Unknown,
    /// Set when new fields were refused because the table has `limits.max_columns` columns.
    column_cap: Option<usize>,
    /// Scratch: which key filled each column in the current record.
    seen: Vec<Option<usize>>,
    /// Fields dropped from accepted records (`discard_value`).
    pub discarded_values: u64,
    /// Fields and values kept in the rescue column of accepted records (`rescue`).
    pub rescued_values: u64,
}

impl<'s> Validator<'s> {
    pub fn new(schema: &'s TableSchema, max_depth: usize) -> Self {
        Validator {
            keys: KeyResolver::new(schema),
            max_depth,
            unknown: Unknown::Reject,
            column_cap: None,
            seen: vec![None; schema.columns.len()],
            discarded_values: 0,
            rescued_values: 0,
        }
    }

    /// Handles unknown fields as `unknown` says.
    pub fn unknown_fields(mut self, unknown: Unknown) -> Self {
        self.unknown = unknown;
        self
    }

    /// Resolves renamed fields to their columns (see [`KeyResolver::with_aliases`]).
    pub fn aliases(mut self, aliases: &BTreeMap<String, String>) -> Self {
        self.keys = self.keys.with_aliases(aliases);
        self
    }

    /// Says in `unknown_field` rejects that the table is at its cap of `cap` columns.
    pub fn column_cap(mut self, cap: Option<usize>) -> Self {
        self.column_cap = cap;
        self
    }

    /// Typed cells in schema column order, or every problem found in the record.
    ///
    /// Unknown keys with null values are ignored (they carry no data); unknown keys with values are
    /// `unknown_field`, which under `evolve` only happens when the key cannot become a column.
    pub fn validate(&mut self, record: &Value) -> Result<Vec<Cell>, Vec<FieldError>> {
        let Value::Object(object) = record else {
            return Err(vec![FieldError {
                path: String::new(),
                column: None,
                code: RejectCode::NotAnObject,
                message: format!("expected a JSON object, got {}", kind_of(record)),
            }]);
        };
        let schema = self.keys.schema();
        let mut cells = vec![Cell::Null; schema.columns.len()];
        let mut errors = Vec::new();
        let mut rescued = Map::new();
        let mut discarded = 0;
        self.seen.iter_mut().for_each(|s| *s = None);
        for (position, (key, value)) in object.iter().enumerate() {
            match self.keys.resolve(key).clone() {
                KeyTarget::Column(i) if matches!(self.unknown, Unknown::Rescue(_)) && self.seen[i].is_some() => {
                    // A second key for one column: kept as sent rather than lost.
                    rescued.insert(key.clone(), value.clone());
                }
                KeyTarget::Column(i) => {
                    if let Some(first) = self.seen[i] {
                        let other = object.keys().nth(first).map(String::as_str).unwrap_or_default();
                        errors.push(FieldError {
                            path: pointer(key),
                            column: Some(schema.columns[i].name.to_string()),
                            code: RejectCode::UnknownField,
                            message: format!("keys {other:?} and {key:?} both name column {}", schema.columns[i].name),
                        });
                        continue;
                    }
                    self.seen[i] = Some(position);
                    let column = &schema.columns[i];
                    if value.is_null() {
                        if !column.nullable {
                            errors.push(FieldError {
                                path: pointer(key),
                                column: Some(column.name.to_string()),
                                code: RejectCode::NullInNotNull,
                                message: format!("column {} is NOT NULL", column.name),
                            });
                        }
                        continue;
                    }
                    match coerce(value, column.ty, self.max_depth) {
                        Ok(cell) => cells[i] = cell,
                        // A value that does not fit a nullable column is kept as sent.
                        Err(_) if column.nullable && matches!(self.unknown, Unknown::Rescue(_)) => {
                            rescued.insert(key.clone(), value.clone());
                        }
                        Err(e) => errors.push(FieldError {
                            path: pointer(key),
                            column: Some(column.name.to_string()),
                            code: e.code,
                            message: e.message,
                        }),
                    }
                }
                KeyTarget::Unknown(_) if value.is_null() => {}
                KeyTarget::Unknown(_) if self.unknown == Unknown::Drop => discarded += 1,
                KeyTarget::Unknown(_) if matches!(self.unknown, Unknown::Rescue(_)) => {
                    rescued.insert(key.clone(), value.clone());
                }
                KeyTarget::Unknown(target) => errors.push(FieldError {
                    path: pointer(key),
                    column: target.as_ref().ok().map(ColumnName::to_string),
                    code: RejectCode::UnknownField,
                    message: match (target, self.column_cap) {
                        (Ok(name), Some(cap)) => format!(
                            "no column {name} in table {}, and no column is added past limits.max_columns ({cap})",
                            schema.name
                        ),
                        (Ok(name), None) => format!("no column {name} in table {}", schema.name),
                        (Err(e), _) => format!("field cannot become a column: {e}"),
                    },
                }),
            }
        }
        let rescued_count = rescued.len() as u64;
        if let (Unknown::Rescue(at), false) = (self.unknown, rescued.is_empty()) {
            // One level deeper than the values it holds, as the record was.
            match coerce(&Value::Object(rescued), schema.columns[at].ty, self.max_depth + 1) {
                Ok(cell) => cells[at] = cell,
                Err(e) => errors.push(FieldError {
                    path: String::new(),
                    column: Some(schema.columns[at].name.to_string()),
                    code: e.code,
                    message: e.message,
                }),
            }
        }
        for (i, column) in schema.columns.iter().enumerate() {
            if self.seen[i].is_none() && !column.nullable {
                errors.push(FieldError {
                    path: pointer(&column.name.to_ascii_lowercase()),
                    column: Some(column.name.to_string()),
                    code: RejectCode::MissingRequired,
                    message: format!("required column {} is missing", column.name),
                });
            }
        }
        if errors.is_empty() {
            self.discarded_values += discarded;
            self.rescued_values += rescued_count;
            Ok(cells)
        } else {
            Err(errors)
        }
    }

    /// The key resolver, for drift planning over the same batch.
    pub fn keys(&mut self) -> &mut KeyResolver<'s> {
        &mut self.keys
    }
}

/// Unknown fields of one record: `(normalised name, value)`, nulls skipped.
pub fn unknown_fields<'v>(keys: &mut KeyResolver<'_>, object: &'v Map<String, Value>) -> Vec<(ColumnName, &'v Value)> {
    let mut out = Vec::new();
    for (key, value) in object {
        if value.is_null() {
            continue;
        }
        if let KeyTarget::Unknown(Ok(name)) = keys.resolve(key) {
            out.push((name.clone(), value));
        }
    }
    out
}

/// A short name for a JSON value's kind, for messages.
pub fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::ColumnName;
    use crate::schema::{Column, ColumnType};
    use serde_json::json;

    fn loans() -> TableSchema {
        TableSchema {
            name: "LOANS".into(),
            columns: vec![
                Column { name: ColumnName::normalize("ID").unwrap(), ty: ColumnType::INTEGER, nullable: false },
                Column {
                    name: ColumnName::normalize("AMOUNT").unwrap(),
                    ty: ColumnType::Number { precision: 12, scale: 2 },
                    nullable: true,
                },
                Column {
                    name: ColumnName::normalize("NOTE").unwrap(),
                    ty: ColumnType::Varchar { max_len: 5 },
                    nullable: true,
                },
            ],
        }
    }

    #[test]
    fn accepts_a_good_record_case_insensitively() {
        let schema = loans();
        let mut v = Validator::new(&schema, 8);
        let cells = v.validate(&json!({"Id": 7, "amount": "12.5", "note": null})).unwrap();
        assert_eq!(cells, vec![Cell::Decimal(7), Cell::Decimal(1250), Cell::Null]);
    }

    #[test]
    fn reports_every_error_with_pointer_and_code() {
        let schema = loans();
        let mut v = Validator::new(&schema, 8);
        let errors = v.validate(&json!({"id": null, "amount": "abc", "note": "toolong", "x/y": 1})).unwrap_err();
        let got: Vec<_> = errors.iter().map(|e| (e.path.as_str(), e.code)).collect();
        assert_eq!(
            got,
            vec![
                ("/id", RejectCode::NullInNotNull),
                ("/amount", RejectCode::TypeMismatch),
                ("/note", RejectCode::TooLong),
                ("/x~1y", RejectCode::UnknownField),
            ]
        );
    }

    #[test]
    fn missing_required_and_not_an_object() {
        let schema = loans();
        let mut v = Validator::new(&schema, 8);
        let errors = v.validate(&json!({"amount": 1})).unwrap_err();
        assert_eq!(errors[0].code, RejectCode::MissingRequired);
        assert_eq!(errors[0].column.as_deref(), Some("ID"));
        let errors = v.validate(&json!([1, 2])).unwrap_err();
        assert_eq!(errors[0].code, RejectCode::NotAnObject);
        assert_eq!(errors[0].path, "");
    }

    #[test]
    fn ambiguous_keys_and_reserved_names_are_rejected() {
        let schema = loans();
        let mut v = Validator::new(&schema, 8);
        let errors = v.validate(&json!({"id": 1, "ID": 2})).unwrap_err();
        assert_eq!(errors[0].code, RejectCode::UnknownField);
        let errors = v.validate(&json!({"id": 1, "_batch_id": "x"})).unwrap_err();
        assert_eq!(errors[0].code, RejectCode::UnknownField);
        assert!(errors[0].message.contains("reserved"), "{}", errors[0].message);
        // Unknown keys holding null carry no data and are ignored.
        assert!(v.validate(&json!({"id": 1, "later": null})).is_ok());
    }
}

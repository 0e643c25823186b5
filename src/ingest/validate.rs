//! Checks one record against a table schema and turns it into typed cells.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Map, Value};

use super::coerce::{coerce, coerce_scalar_ref, Cell, CellRef, ValueRef};
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
    /// The key at each position of the records resolved last, and its target: a batch's
    /// records mostly list their keys in one order, so most keys are found with one comparison,
    /// without hashing (see [`KeyResolver::resolve_at`]).
    recent: Vec<(String, KeyTarget)>,
}

impl<'s> KeyResolver<'s> {
    pub fn new(schema: &'s TableSchema) -> Self {
        let by_name = schema.columns.iter().enumerate().map(|(i, c)| (c.name.as_str(), i)).collect();
        KeyResolver { schema, by_name, aliases: HashMap::new(), cache: HashMap::new(), recent: Vec::new() }
    }

    /// Also resolves renamed fields: `aliases` maps a normalised field name to its column's.
    pub fn with_aliases(mut self, aliases: &BTreeMap<String, String>) -> Self {
        for (field, column) in aliases {
            if let Some(&i) = self.by_name.get(column.as_str()) {
                self.aliases.insert(field.clone(), i);
            }
        }
        // Keys resolved before may resolve otherwise now.
        self.cache.clear();
        self.recent.clear();
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

    /// [`KeyResolver::resolve`] for the key at `position` of a record, by the key seen there
    /// in the records before when it is the same.
    pub fn resolve_at(&mut self, position: usize, key: &str) -> &KeyTarget {
        if position > self.recent.len() {
            return self.resolve(key);
        }
        let known = self.recent.get(position).is_some_and(|(seen, _)| seen == key);
        if !known {
            let target = self.resolve(key).clone();
            match self.recent.get_mut(position) {
                Some((seen, remembered)) => {
                    seen.clear();
                    seen.push_str(key);
                    *remembered = target;
                }
                None => self.recent.push((key.to_owned(), target)),
            }
        }
        // Filled just above when it was not there: `position` is at most its length.
        &self.recent[position].1
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
            match self.keys.resolve_at(position, key).clone() {
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

    /// The cells of a record read straight from its JSON text, when it passes as it is: an object
    /// whose keys name columns, one key per column, with scalar values that fit them, and every
    /// NOT NULL column present. No map is built and strings stay borrowed from the text. `true`
    /// when it passes: its cells are then in `cells`, a vector kept from record to record
    /// (whatever it held before); on `false`, what `cells` holds is unspecified. `false` for
    /// anything else, text that is not JSON included: then the record is parsed and
    /// [`Validator::validate`] decides, with its errors and the drift policy. A record accepted
    /// here gets the cells `validate` would give it, under any drift policy.
    pub fn accept_text_into<'t>(&mut self, text: &'t str, cells: &mut Vec<CellRef<'t>>) -> bool {
        let schema = self.keys.schema();
        cells.clear();
        cells.resize(schema.columns.len(), CellRef::Cell(Cell::Null));
        self.seen.iter_mut().for_each(|s| *s = None);
        let mut position = 0;
        super::flat::scan(text, |key, value| {
            // Keys the JSON parser gives a meaning of its own (its number and raw value markers).
            if key.starts_with("$serde_json::private::") {
                return None;
            }
            let column = match self.keys.resolve_at(position, key) {
                KeyTarget::Column(i) => *i,
                // A key naming no column is ignored when it holds null, as `validate` does.
                KeyTarget::Unknown(_) if value == ValueRef::Null => {
                    position += 1;
                    return Some(());
                }
                KeyTarget::Unknown(_) => return None,
            };
            if self.seen[column].replace(position).is_some() {
                return None;
            }
            let definition = &schema.columns[column];
            match value {
                ValueRef::Null if definition.nullable => {}
                ValueRef::Null => return None,
                _ if definition.ty.is_semi_structured() => return None,
                _ => cells[column] = coerce_scalar_ref(value, definition.ty).ok()?,
            }
            position += 1;
            Some(())
        })
        .is_some_and(|()| schema.columns.iter().zip(&self.seen).all(|(column, seen)| column.nullable || seen.is_some()))
    }

    /// [`Validator::accept_text_into`] into a vector of its own: the cells, or `None`.
    #[cfg(test)]
    pub fn accept_text<'t>(&mut self, text: &'t str) -> Option<Vec<CellRef<'t>>> {
        let mut cells = Vec::new();
        self.accept_text_into(text, &mut cells).then_some(cells)
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
    use crate::ingest::rows::{AsScalar, Scalar};
    use crate::schema::ColumnName;
    use crate::schema::{Column, ColumnType, RESCUED_DATA};
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

    /// Every column type with values that fit, values that do not, and values that need a
    /// closer look, in records with keys in any case, repeated, unknown, null or missing.
    fn wide() -> TableSchema {
        let col = |name: &str, ty, nullable| Column { name: ColumnName::normalize(name).unwrap(), ty, nullable };
        TableSchema {
            name: "WIDE".into(),
            columns: vec![
                col("ID", ColumnType::INTEGER, false),
                col("AMOUNT", ColumnType::Number { precision: 12, scale: 2 }, true),
                col("RATE", ColumnType::Float, true),
                col("CITY", ColumnType::Varchar { max_len: 8 }, true),
                col("OK", ColumnType::Boolean, true),
                col("ON_DAY", ColumnType::Date, true),
                col("AT", ColumnType::TimestampNtz, true),
                col("AT_TZ", ColumnType::TimestampTz, true),
                col("CLOCK", ColumnType::Time, true),
                col("RAW", ColumnType::Binary, true),
                col("DOC", ColumnType::Variant, true),
                Column { name: ColumnName::rescued(), ty: ColumnType::Variant, nullable: true },
            ],
        }
    }

    const VALUES: [&str; 30] = [
        "null",
        "true",
        "false",
        "0",
        "1",
        "-7",
        "12.345",
        "1e3",
        "-0.5E-2",
        "99999999999999999999999999999999999999",
        "123456789012345678901234567890123456789",
        "1.005",
        "\"12.5\"",
        "\"abc\"",
        "\"a\\\"b\"",
        "\"\"",
        "\"yes\"",
        "\"2024-02-29\"",
        "\"2024-02-30\"",
        "\"2024-01-02T03:04:05.123456+02:00\"",
        "\"12:30:00\"",
        "\"DEADbeef\"",
        "\"éééééééé\"",
        "\"ééééééééé\"",
        "[1,2]",
        "{\"a\":1}",
        "1700000000",
        "\" 42 \"",
        "\"\\u0041\"",
        "-0",
    ];
    const KEYS: [&str; 17] = [
        "id",
        "ID",
        "amount",
        "Rate",
        "city",
        "ok",
        "on_day",
        "at",
        "at_tz",
        "clock",
        "raw",
        "doc",
        "extra",
        "x y",
        "_batch_id",
        "\\u0069d",
        "$serde_json::private::Number",
    ];

    /// A small deterministic generator: the test needs no seed file and repeats exactly.
    struct Lcg(u64);

    impl Lcg {
        fn below(&mut self, n: usize) -> usize {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((self.0 >> 33) as usize) % n
        }
    }

    #[test]
    fn records_read_as_text_get_exactly_the_cells_validate_gives() {
        let schema = wide();
        let rescue = schema.position(RESCUED_DATA).unwrap();
        let (mut accepted, mut refused) = (0, 0);
        let mut rng = Lcg(7);
        // One validator per policy for the whole run, as for a batch: what it remembers of
        // earlier records (keys by position) must never change what it says about the next.
        let mut validators = [Unknown::Reject, Unknown::Drop, Unknown::Rescue(rescue)]
            .map(|unknown| Validator::new(&schema, 8).unknown_fields(unknown));
        for n in 0..20_000 {
            let fields = rng.below(8);
            let mut text = String::from("{");
            if n % 3 == 0 {
                text.push_str(&format!("\"id\": {n}"));
            }
            for _ in 0..fields {
                if text.len() > 1 {
                    text.push(',');
                }
                text.push_str(&format!("\"{}\": {}", KEYS[rng.below(KEYS.len())], VALUES[rng.below(VALUES.len())]));
            }
            text.push('}');
            let Ok(value) = serde_json::from_str::<Value>(&text) else {
                // Text the parser refuses (its private marker keys) is never read as a row.
                assert_eq!(Validator::new(&schema, 8).accept_text(&text), None, "{text}");
                continue;
            };
            for validator in &mut validators {
                let unknown = validator.unknown;
                let fast = validator.accept_text(&text);
                let slow = validator.validate(&value);
                match fast {
                    Some(cells) => {
                        let fast: Vec<Scalar> = cells.iter().map(AsScalar::scalar).collect();
                        let slow = slow.as_ref().map(|cells| cells.iter().map(AsScalar::scalar).collect::<Vec<_>>());
                        assert_eq!(slow, Ok(fast), "{text} under {unknown:?}");
                        accepted += 1;
                    }
                    None => refused += 1,
                }
            }
        }
        // Both paths are exercised, not one of them only.
        assert!(accepted > 2_000 && refused > 2_000, "accepted {accepted}, refused {refused}");
    }

    #[test]
    fn flat_records_are_read_without_a_closer_look() {
        let schema = wide();
        let mut v = Validator::new(&schema, 8);
        let text = r#"{"ID": 123456789012345678901234567890, "amount": 1.005, "city": "Pune", "ok": "yes",
            "on_day": "2024-02-29", "at": 1700000000, "clock": "12:30:00", "raw": "00ff", "doc": null, "later": null}"#;
        let cells = v.accept_text(text).expect("a flat record of known columns");
        assert_eq!(cells[0], CellRef::Cell(Cell::Decimal(123456789012345678901234567890)), "38 digits stay exact");
        assert_eq!(cells[1], CellRef::Cell(Cell::Decimal(101)), "1.005 rounds half away from zero at scale 2");
        assert_eq!(cells[3], CellRef::Text("Pune"), "borrowed from the text");
        assert_eq!(cells[9], CellRef::Cell(Cell::Binary(vec![0, 255])));
        for closer in [
            r#"{"id": 1, "doc": {"a": 1}}"#,
            r#"{"id": 1, "city": "a\"b"}"#,
            r#"{"id": 1, "extra": 2}"#,
            r#"{"id": 1, "ID": 2}"#,
            r#"{"amount": 1}"#,
            r#"{"id": "x"}"#,
            r#"[{"id": 1}]"#,
            r#"{"id": 1} trailing"#,
            r#"{"id": 1, "city": 1E5}"#,
            r#"{"$serde_json::private::Number": null, "id": 1}"#,
            r#"{"id": 1"#,
        ] {
            assert_eq!(v.accept_text(closer), None, "{closer}");
        }
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

//! Ingest: decode request bodies, validate records, plan schema drift. Pure, no I/O.

pub mod coerce;
pub mod decode;
pub mod drift;
pub mod flat;
pub mod reject;
pub mod replay;
pub mod rows;
mod structure;
pub mod validate;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

use coerce::CellRef;
use decode::{Accept, Decoded};
use reject::{Reject, RejectCode, RejectStage};
pub use rows::{Accepted, Row, Rows};
use validate::{Unknown, Validator};

use crate::schema::TableSchema;

/// The outcome of validating one request.
pub struct Checked {
    pub received: u64,
    pub rows: Rows,
    pub rejects: Vec<Reject>,
    /// Fields dropped from accepted records (`discard_value`).
    pub discarded_values: u64,
    /// Fields and values kept in `_RESCUED_DATA` of accepted records (`rescue`).
    pub rescued_values: u64,
}

impl Checked {
    /// Reject counts per code (a record with several errors counts once per distinct code).
    pub fn rejects_by_code(&self) -> BTreeMap<String, u64> {
        let mut counts = BTreeMap::new();
        for reject in &self.rejects {
            let mut codes: Vec<_> = reject.errors.iter().map(|e| e.code).collect();
            codes.sort();
            codes.dedup();
            for code in codes {
                *counts.entry(code.as_str().to_string()).or_insert(0) += 1;
            }
        }
        counts
    }
}

/// Records of a batch offered to [`ReadAsSent`] before it gives up on a batch whose records
/// mostly need the closer look (a new field on each, say), rather than reading each twice.
const FAST_READ_TRIES: usize = 64;

/// Reads the records that pass as they were sent (see [`Validator::accept_text_into`]) straight into
/// column builders while a body is decoded; the decoder parses the others for a closer look.
pub struct ReadAsSent<'s> {
    validator: Validator<'s>,
    rows: Rows,
    /// Rows the builders may be sized for before the first record: as many as the caller has
    /// memory reserved for.
    room: usize,
    read: usize,
    missed: usize,
    /// A record's cells, kept from record to record (empty, and so borrowing nothing, between).
    cells: Vec<CellRef<'static>>,
}

impl<'s> ReadAsSent<'s> {
    /// Reads into rows of `schema` (which `validator` checks against); the builders are sized for
    /// at most `room` rows up front.
    pub fn new(validator: Validator<'s>, schema: Arc<TableSchema>, room: usize) -> Self {
        ReadAsSent { validator, rows: Rows::new(schema, 0), room, read: 0, missed: 0, cells: Vec::new() }
    }

    pub fn into_rows(self) -> Rows {
        self.rows
    }
}

impl Accept for ReadAsSent<'_> {
    fn expect(&mut self, records: usize) {
        if self.rows.is_empty() {
            self.rows = Rows::new(self.rows.schema().clone(), records.min(self.room));
        }
    }

    fn accept(&mut self, index: usize, text: &str) -> bool {
        if self.missed > FAST_READ_TRIES && self.missed > self.read {
            return false;
        }
        let mut cells = recycle(std::mem::take(&mut self.cells));
        // A row its columns refuse (never expected) is left to the closer look.
        let taken = self.validator.accept_text_into(text, &mut cells) && self.rows.push(index as u64, &cells).is_ok();
        self.cells = recycle(cells);
        *if taken { &mut self.read } else { &mut self.missed } += 1;
        taken
    }
}

/// An empty vector on the allocation of `cells`, for cells that borrow from another text (the
/// standard library usually collects a vector into one of the same layout in place; when it
/// does not, this allocates, and nothing else changes).
fn recycle<'b>(mut cells: Vec<CellRef<'_>>) -> Vec<CellRef<'b>> {
    cells.clear();
    cells.into_iter().map(|_| unreachable!("the vector is empty")).collect()
}

/// How one request's records are checked: the depth limit, the table's field aliases, and the
/// drift policy's treatment of fields the table has no column for.
#[derive(Debug, Clone)]
pub struct Rules {
    pub max_depth: usize,
    /// Normalised field name to the column it loads into.
    pub aliases: std::sync::Arc<BTreeMap<String, String>>,
    pub unknown: Unknown,
    /// Set when new fields were refused because the table is at `limits.max_columns`.
    pub column_cap: Option<usize>,
}

/// Validates every decoded record against `schema`, adding the accepted ones to `rows`; one bad
/// record never affects the others. [`Decoded::Row`]s were accepted as they were read, against
/// this same schema and aliases, and are in `rows` already (see `parse_records_with`): rows are
/// in the order they were accepted, each with its record's index.
pub fn check_records(schema: &Arc<TableSchema>, records: Vec<Decoded>, rules: Rules, rows: Rows) -> Checked {
    debug_assert!(rows.schema() == schema, "rows are checked against one schema");
    let mut validator = Validator::new(schema, rules.max_depth)
        .aliases(&rules.aliases)
        .unknown_fields(rules.unknown)
        .column_cap(rules.column_cap);
    let mut checked =
        Checked { received: records.len() as u64, rows, rejects: Vec::new(), discarded_values: 0, rescued_values: 0 };
    for (index, record) in records.into_iter().enumerate() {
        let index = index as u64;
        match record {
            Decoded::Value(value) => match validator.validate(&value) {
                Ok(cells) => {
                    if let Err(e) = checked.rows.push(index, &cells) {
                        // Validation gave a cell its column cannot hold: a bug, kept as a reject
                        // rather than lost or loaded wrong.
                        let error = reject::FieldError {
                            path: String::new(),
                            column: Some(e.column.clone()),
                            code: RejectCode::TypeMismatch,
                            message: format!("internal error: {e}"),
                        };
                        checked.rejects.push(gateway_reject(index, *value, vec![error]));
                    }
                }
                Err(errors) => checked.rejects.push(gateway_reject(index, *value, errors)),
            },
            Decoded::Rejected { record, error } => checked.rejects.push(gateway_reject(index, *record, vec![*error])),
            // Accepted as read, against this schema and these rules: in `rows` already.
            Decoded::Row { .. } => {}
        }
    }
    checked.discarded_values = validator.discarded_values;
    checked.rescued_values = validator.rescued_values;
    checked
}

fn gateway_reject(index: u64, record: Value, errors: Vec<reject::FieldError>) -> Reject {
    Reject { index, record, errors, stage: RejectStage::Gateway }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::decode::{parse_records_with, BodyFormat, DecodeLimits};
    use crate::schema::{Column, ColumnName, ColumnType};
    use arrow::array::AsArray;
    use arrow::datatypes::{Decimal128Type, Int64Type};

    /// Records read straight into columns and records parsed for a closer look end up in one
    /// request's rows; each row must carry the index of its own record, blank lines and
    /// rejects around it or not.
    #[test]
    fn every_row_keeps_its_record_index_whichever_path_read_it() {
        let col = |name: &str, ty, nullable| Column { name: ColumnName::normalize(name).unwrap(), ty, nullable };
        let schema = Arc::new(TableSchema {
            name: "T".into(),
            columns: vec![col("ID", ColumnType::INTEGER, false), col("NOTE", ColumnType::VARCHAR, true)],
        });
        let limits =
            DecodeLimits { max_decompressed_bytes: 1 << 20, max_record_bytes: 1 << 10, max_records: 100, max_depth: 4 };
        // The id of each record is its index: read as it is, with an escape (parsed), refused.
        let records: Vec<String> = (0..12)
            .map(|i| match i % 4 {
                0 => format!(r#"{{"id": {i}, "note": "plain"}}"#),
                1 => format!(r#"{{"id": {i}, "note": "esc\"aped"}}"#),
                2 => format!(r#"{{"id": "not a number {i}"}}"#),
                _ => format!(r#"{{"note": "n{i}", "id": {i}}}"#),
            })
            .collect();
        let bodies = [
            (BodyFormat::Ndjson, format!("\n{}\n", records.join("\n\n"))),
            (BodyFormat::Json, format!(r#"{{"records": [{}]}}"#, records.join(", "))),
        ];
        for (format, body) in bodies {
            let mut reader = ReadAsSent::new(Validator::new(&schema, limits.max_depth), schema.clone(), 100);
            let decoded = parse_records_with(body.as_bytes(), format, &limits, &mut reader).unwrap();
            let rows = reader.into_rows();
            let taken = decoded.iter().filter(|d| matches!(d, Decoded::Row { .. })).count();
            assert_eq!(taken, 6, "records 0, 3, 4, 7, 8, 11 are read as they are ({format:?})");
            let rules = Rules {
                max_depth: limits.max_depth,
                aliases: Arc::new(BTreeMap::new()),
                unknown: Unknown::Reject,
                column_cap: None,
            };
            let checked = check_records(&schema, decoded, rules, rows);
            assert_eq!(checked.received, 12);
            let rejected: Vec<u64> = checked.rejects.iter().map(|r| r.index).collect();
            assert_eq!(rejected, vec![2, 6, 10]);
            let accepted = checked.rows.finish().unwrap();
            assert_eq!(accepted.len(), 9);
            let ids = accepted.columns()[0].as_primitive::<Decimal128Type>();
            let indexes = accepted.indexes().as_primitive::<Int64Type>();
            let notes = accepted.columns()[1].as_string::<i32>();
            for row in 0..accepted.len() {
                assert_eq!(ids.value(row), i128::from(indexes.value(row)), "row {row} ({format:?})");
                let expected = match indexes.value(row) % 4 {
                    0 => "plain".to_string(),
                    1 => "esc\"aped".to_string(),
                    _ => format!("n{}", indexes.value(row)),
                };
                assert_eq!(notes.value(row), expected, "row {row} ({format:?})");
            }
        }
    }

    /// The builders are sized once, before the first record, from what the decoder counts (an
    /// NDJSON body's lines, a JSON array's length), but never for more rows than the room the
    /// caller reserved: a body of blank lines must not size them by its newlines.
    #[test]
    fn builders_are_sized_once_from_the_body_within_the_room_reserved() {
        let schema = Arc::new(TableSchema {
            name: "T".into(),
            columns: vec![Column {
                name: ColumnName::normalize("ID").unwrap(),
                ty: ColumnType::INTEGER,
                nullable: true,
            }],
        });
        let limits = DecodeLimits {
            max_decompressed_bytes: 1 << 20,
            max_record_bytes: 1 << 10,
            max_records: 10_000,
            max_depth: 4,
        };
        let read = |body: &str, format, room| {
            let mut reader = ReadAsSent::new(Validator::new(&schema, limits.max_depth), schema.clone(), room);
            let decoded = parse_records_with(body.as_bytes(), format, &limits, &mut reader).unwrap();
            assert!(decoded.iter().all(|d| matches!(d, Decoded::Row { .. })), "{decoded:?}");
            reader.into_rows()
        };
        let blank_lines = format!("{}{{\"id\": 1}}\n{{\"id\": 2}}\n", "\n".repeat(5_000));
        let rows = read(&blank_lines, BodyFormat::Ndjson, 3);
        assert_eq!((rows.len(), rows.capacity()), (2, 3), "sized by the room, not by its 5,002 newlines");
        let rows = read(&blank_lines, BodyFormat::Ndjson, 100_000);
        assert_eq!(rows.capacity(), blank_lines.len() / 2 + 1, "sized by the lines, at most one a two bytes");
        let array = format!("[{}]", (0..40).map(|i| format!(r#"{{"id": {i}}}"#)).collect::<Vec<_>>().join(","));
        let rows = read(&array, BodyFormat::Json, 1_000);
        assert_eq!((rows.len(), rows.capacity()), (40, 40), "a JSON array's length sizes them once");
        let mut reader = ReadAsSent::new(Validator::new(&schema, limits.max_depth), schema.clone(), 30);
        reader.expect(40);
        assert_eq!(reader.into_rows().capacity(), 30, "no more than the room up front, whatever the body says");
    }
}

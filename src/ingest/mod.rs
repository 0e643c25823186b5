//! Ingest: decode request bodies, validate records, plan schema drift. Pure, no I/O.

pub mod coerce;
pub mod decode;
pub mod drift;
pub mod flat;
pub mod reject;
pub mod replay;
pub mod validate;

use std::collections::BTreeMap;

use serde_json::Value;

use coerce::Cell;
use decode::Decoded;
use reject::{Reject, RejectStage};
use validate::{Unknown, Validator};

use crate::schema::TableSchema;

/// An accepted record: its position in the request and its typed cells in schema order.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub index: u64,
    pub cells: Vec<Cell>,
}

impl Row {
    /// Rough in-memory size, for flush-by-bytes and the memory budget.
    pub fn approx_bytes(&self) -> usize {
        let heap: usize = self
            .cells
            .iter()
            .map(|c| match c {
                Cell::Str(s) => s.len(),
                Cell::Binary(b) => b.len(),
                _ => 0,
            })
            .sum();
        heap + self.cells.len() * std::mem::size_of::<Cell>() + 64
    }
}

/// The outcome of validating one request.
#[derive(Debug, Default)]
pub struct Checked {
    pub received: u64,
    pub rows: Vec<Row>,
    pub rejects: Vec<Reject>,
    /// Approximate bytes held by `rows`.
    pub bytes: usize,
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

/// Validates every decoded record against `schema`; one bad record never affects the others.
/// [`Decoded::Row`]s were accepted as they were read, against this same schema and aliases.
pub fn check_records(schema: &TableSchema, records: Vec<Decoded>, rules: Rules) -> Checked {
    let mut validator = Validator::new(schema, rules.max_depth)
        .aliases(&rules.aliases)
        .unknown_fields(rules.unknown)
        .column_cap(rules.column_cap);
    let mut checked = Checked { received: records.len() as u64, ..Default::default() };
    for (index, record) in records.into_iter().enumerate() {
        let index = index as u64;
        match record {
            Decoded::Value(value) => match validator.validate(&value) {
                Ok(cells) => {
                    let row = Row { index, cells };
                    checked.bytes += row.approx_bytes();
                    checked.rows.push(row);
                }
                Err(errors) => checked.rejects.push(gateway_reject(index, value, errors)),
            },
            Decoded::Rejected { record, error } => checked.rejects.push(gateway_reject(index, record, vec![error])),
            // Accepted as read, against this schema and these rules (see `parse_records_with`).
            Decoded::Row { cells, .. } => {
                let row = Row { index, cells };
                checked.bytes += row.approx_bytes();
                checked.rows.push(row);
            }
        }
    }
    checked.discarded_values = validator.discarded_values;
    checked.rescued_values = validator.rescued_values;
    checked
}

fn gateway_reject(index: u64, record: Value, errors: Vec<reject::FieldError>) -> Reject {
    Reject { index, record, errors, stage: RejectStage::Gateway }
}

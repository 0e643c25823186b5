//! `snowgate sql`: read-only queries against the embedded DuckDB warehouse, for a quick look.

use std::path::Path;

use duckdb::{AccessMode, Config as DuckConfig, Connection};

/// Runs one statement on a read-only connection and renders the result as a text table.
/// DuckDB lets one process write a file, so stop the gateway first.
pub fn query(path: &Path, sql: &str) -> Result<String, duckdb::Error> {
    let config = DuckConfig::default().access_mode(AccessMode::ReadOnly)?;
    let conn = Connection::open_with_flags(path, config)?;
    let mut statement = conn.prepare(sql)?;
    let batches: Vec<_> = statement.query_arrow([])?.collect();
    Ok(arrow::util::pretty::pretty_format_batches(&batches).map(|t| t.to_string()).unwrap_or_default())
}

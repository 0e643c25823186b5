//! The warehouse: tables, DDL and `COPY INTO` from the stage.

pub mod duckdb;
pub mod snowflake;
pub mod snowflake_http;

use async_trait::async_trait;

use crate::schema::Column;

/// Warehouse failures, split by what the loader should do about them.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WarehouseError {
    /// Network, suspended warehouse, lock: retry later, data untouched.
    #[error("warehouse unavailable: {0}")]
    Unavailable(String),
    /// The data was refused; retrying the same files will fail the same way.
    #[error("warehouse refused the data: {0}")]
    Data(String),
    /// A statement failed for another reason (DDL conflict, bad definition).
    #[error("warehouse statement failed: {0}")]
    Statement(String),
}

/// What a table looks like in the warehouse.
#[derive(Debug, Clone, PartialEq)]
pub struct TableDescription {
    /// Partner columns in warehouse order; metadata columns excluded.
    pub columns: Vec<Column>,
    /// Whether `_BATCH_ID`, `_RECORD_INDEX` and `_INGESTED_AT` all exist.
    pub has_metadata: bool,
}

/// What happened to one file of a COPY.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyStatus {
    Loaded,
    /// Load history says this file was loaded before; nothing was loaded now.
    Skipped,
}

/// Per-file result of a COPY.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyResult {
    pub path: String,
    pub status: CopyStatus,
    /// Rows this statement loaded from the file (0 when skipped).
    pub rows_loaded: u64,
    /// The warehouse's id for the COPY statement, when it reports one.
    pub query_id: Option<String>,
}

/// One warehouse, many backends: DuckDB embedded, Snowflake in production.
#[async_trait]
pub trait Warehouse: Send + Sync + 'static {
    /// Backend name for health reports.
    fn backend(&self) -> &'static str;

    async fn ping(&self) -> Result<(), WarehouseError>;

    /// The table's columns, or `None` when it does not exist.
    async fn describe(&self, table: &str) -> Result<Option<TableDescription>, WarehouseError>;

    /// Creates the table with the metadata columns, if it does not exist.
    async fn create_table(&self, table: &str, columns: &[Column]) -> Result<(), WarehouseError>;

    /// Adds nullable columns, skipping any that exist.
    async fn add_columns(&self, table: &str, columns: &[Column]) -> Result<(), WarehouseError>;

    /// Adds whichever metadata columns are missing (for tables created outside snowgate).
    async fn add_metadata_columns(&self, table: &str) -> Result<(), WarehouseError>;

    /// Loads stage files (paths relative to the stage root) into the table as one statement.
    /// Files in the load history are skipped. All or nothing: on error no file is loaded.
    async fn copy_files(&self, table: &str, paths: &[String]) -> Result<Vec<CopyResult>, WarehouseError>;
}

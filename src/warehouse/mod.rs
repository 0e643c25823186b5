//! The warehouse: tables, DDL and `COPY INTO` from the stage.

pub mod duckdb;
pub mod snowflake;
pub mod snowflake_http;

use std::sync::Arc;

use async_trait::async_trait;

use crate::schema::Column;
use crate::stage::recent::RecentFiles;
use crate::stage::StageError;

/// What the loader (and a request) should do about a warehouse failure. Decided once, by the
/// backend, from the warehouse's error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Network, suspended warehouse, lock, overload: retry with backoff; the data is untouched.
    Transient,
    /// Permission, missing stage, table or warehouse, bad credentials: an operator must act.
    /// Data is never marked failed for it; files are retried slowly and the error is surfaced.
    Configuration,
    /// The data was refused; retrying the same rows fails the same way.
    Data,
    /// Any other failed statement (a definition the warehouse refuses, an engine fault).
    Statement,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Transient => "warehouse unavailable",
            ErrorKind::Configuration => "warehouse configuration error",
            ErrorKind::Data => "warehouse refused the data",
            ErrorKind::Statement => "warehouse statement failed",
        }
    }
}

/// A warehouse failure: its kind, the warehouse's own code, where it happened, and its cause.
#[derive(Debug)]
pub struct WarehouseError {
    pub kind: ErrorKind,
    /// Boxed: keeps `Result<_, WarehouseError>` small on the happy path.
    detail: Box<Detail>,
}

#[derive(Debug)]
struct Detail {
    code: Option<String>,
    message: String,
    file: Option<String>,
    row: Option<u64>,
    column: Option<String>,
    query_id: Option<String>,
    retry_after: std::time::Duration,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl WarehouseError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        let detail = Detail {
            code: None,
            message: message.into(),
            file: None,
            row: None,
            column: None,
            query_id: None,
            retry_after: std::time::Duration::ZERO,
            source: None,
        };
        WarehouseError { kind, detail: Box::new(detail) }
    }

    pub fn transient(message: impl Into<String>) -> Self {
        WarehouseError::new(ErrorKind::Transient, message)
    }

    pub fn configuration(message: impl Into<String>) -> Self {
        WarehouseError::new(ErrorKind::Configuration, message)
    }

    pub fn data(message: impl Into<String>) -> Self {
        WarehouseError::new(ErrorKind::Data, message)
    }

    pub fn statement(message: impl Into<String>) -> Self {
        WarehouseError::new(ErrorKind::Statement, message)
    }

    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.detail.code = Some(code.into());
        self
    }

    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.detail.source = Some(Box::new(source));
        self
    }

    /// A stage failure while reading or writing `path`, as the loader acts on it: a file the
    /// ledger says was staged but is not there (a changed `stage.url`, a wrong data folder) and
    /// refused credentials are an operator's problem; anything else is passing.
    pub fn from_stage(error: StageError, path: &str) -> Self {
        match error {
            StageError::NotFound(_) => {
                WarehouseError::configuration("the file is missing from the stage").in_file(path)
            }
            StageError::Denied(_) | StageError::Config(_) => {
                WarehouseError::configuration(error.to_string()).with_source(error)
            }
            other => WarehouseError::transient(other.to_string()).with_source(other),
        }
    }

    /// Names the stage file a data error was found in, and says so first in the message.
    pub fn in_file(mut self, file: impl Into<String>) -> Self {
        let file = file.into();
        if !self.detail.message.starts_with(&file) {
            self.detail.message = format!("{file}: {}", self.detail.message);
        }
        self.detail.file = Some(file);
        self
    }

    pub fn at(mut self, row: Option<u64>, column: Option<String>) -> Self {
        self.detail.row = row;
        self.detail.column = column;
        self
    }

    /// The warehouse's error code (a Snowflake code such as `002003`, a DuckDB error type).
    pub fn code(&self) -> Option<&str> {
        self.detail.code.as_deref()
    }

    pub fn message(&self) -> &str {
        &self.detail.message
    }

    /// The stage file a data error was found in.
    pub fn file(&self) -> Option<&str> {
        self.detail.file.as_deref()
    }

    /// Row (1-based, as the warehouse counts) of a data error, where the warehouse says.
    pub fn row(&self) -> Option<u64> {
        self.detail.row
    }

    /// Column of a data error, where the warehouse says.
    pub fn column(&self) -> Option<&str> {
        self.detail.column.as_deref()
    }

    /// Names the statement that failed, where the warehouse gave it an id.
    pub fn with_query_id(mut self, query_id: Option<String>) -> Self {
        self.detail.query_id = query_id.or(self.detail.query_id);
        self
    }

    /// The least time to wait before the same files are tried again: a statement whose outcome
    /// is unknown (a COMMIT that got no answer) may still finish within it.
    pub fn with_retry_after(mut self, delay: std::time::Duration) -> Self {
        self.detail.retry_after = delay;
        self
    }

    pub fn retry_after(&self) -> std::time::Duration {
        self.detail.retry_after
    }

    /// The warehouse's id of the statement that failed.
    pub fn query_id(&self) -> Option<&str> {
        self.detail.query_id.as_deref()
    }
}

impl std::fmt::Display for WarehouseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.detail.message)
    }
}

impl std::error::Error for WarehouseError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.detail.source.as_deref().map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// The outcome of file `id` at `path` from a COPY's results: loaded, or failed where the
/// warehouse gave no result for it.
pub fn copy_outcome(id: uuid::Uuid, path: &str, results: &[CopyResult]) -> crate::ledger::FileOutcome {
    use crate::ledger::FileOutcome;
    match results.iter().find(|r| r.path == path) {
        Some(r) => FileOutcome::Loaded { id, rows: r.rows_loaded, query_id: r.query_id.clone() },
        None => FileOutcome::Failed { id, error: "warehouse returned no result for this file".into(), query_id: None },
    }
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

    /// Gives a column a wider type in place, keeping its values (see [`ColumnType::widens_to`]).
    ///
    /// [`ColumnType::widens_to`]: crate::schema::ColumnType::widens_to
    async fn widen_column(&self, table: &str, column: &Column) -> Result<(), WarehouseError>;

    /// Adds whichever metadata columns are missing (for tables created outside snowgate).
    async fn add_metadata_columns(&self, table: &str) -> Result<(), WarehouseError>;

    /// Loads stage files into the table, all in one transaction. Files in the load history are
    /// skipped. All or nothing: on error no file is loaded.
    async fn copy_files(&self, table: &str, files: &[StagedFile]) -> Result<Vec<CopyResult>, WarehouseError>;

    /// `copy_files` calls that make progress at once; more queue. The loader splits a round into
    /// no more COPYs than this.
    fn parallel_copies(&self) -> usize {
        1
    }

    /// Rows a table's files of a round must hold for each part before the loader splits them
    /// among parallel COPYs: below it, a COPY's own cost (a transaction, its commit, a ledger
    /// write) outweighs the second core.
    fn min_rows_per_parallel_copy(&self) -> u64 {
        20_000
    }

    /// Where this process's flushes keep the rows of the files they stage, for a warehouse that
    /// loads in this process to take instead of reading the files back; `None` for one that
    /// reads the stage itself (Snowflake).
    fn recent_files(&self) -> Option<Arc<RecentFiles>> {
        None
    }
}

/// A staged file to load: its path relative to the stage root, and the columns it was written
/// with (the table's own, in file order), or `None` for a file staged before the ledger kept them.
#[derive(Debug, Clone, PartialEq)]
pub struct StagedFile {
    pub path: String,
    pub columns: Option<Vec<Column>>,
}

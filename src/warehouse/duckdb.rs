//! DuckDB warehouse: the embedded default, one file next to the stage.
//!
//! `COPY` reads the Parquet files from the stage in Rust and inserts their Arrow batches through
//! DuckDB's `arrow()` table function (`INSERT ... BY NAME`, so files written before a column was
//! added still load). Each COPY is one transaction that also writes a load-history row per file,
//! which is what makes a repeated COPY of the same file a no-op. A file this process staged a
//! moment ago is not read back: its flush kept its rows in memory ([`RecentFiles`]), and the COPY
//! takes them from there.
//!
//! Connections to the one database by role (loads, requests' DESCRIBE and DDL, readiness
//! probes), so a probe or a request never queues behind a long COPY. Loads have
//! [`LOAD_CONNECTIONS`] of their own, so that the loader's parallel COPYs (`loader.parallel_copies`)
//! insert on more than one core: appends to one table from several transactions do not conflict.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};

use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use bytes::Bytes;
use duckdb::vtab::arrow::{ArrowBatchRegistration, ArrowVTab};
use duckdb::Connection;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use uuid::Uuid;

use super::{CopyResult, CopyStatus, ErrorKind, StagedFile, TableDescription, Warehouse, WarehouseError};
use crate::schema::{
    quote_ident, Column, ColumnName, ColumnType, META_BATCH_ID, META_COLUMNS, META_INGESTED_AT, META_RECORD_INDEX,
};
use crate::stage::recent::{KeptFile, RecentFiles};
use crate::stage::Stage;

const HISTORY: &str = "\"_SNOWGATE_LOAD_HISTORY\"";
/// Rows in one of DuckDB's row groups (its default `row_group_size`).
const ROW_GROUP_ROWS: u64 = 122_880;

/// DuckDB database file plus the stage it loads from.
pub struct DuckDbWarehouse {
    /// COPY (the loader): a connection of its own for each COPY in flight.
    loads: LoadPool,
    /// Staged files the COPYs in flight hold in memory, together (see `copy_files`).
    reads: Arc<tokio::sync::Semaphore>,
    /// DESCRIBE and DDL from requests.
    conn: Arc<Mutex<Connection>>,
    /// Readiness probes.
    probe: Arc<Mutex<Connection>>,
    stage: Arc<Stage>,
    /// Rows of files this process staged, taken instead of reading those files back.
    recent: Arc<RecentFiles>,
}

impl DuckDbWarehouse {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path, stage: Arc<Stage>) -> Result<Self, WarehouseError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| WarehouseError::configuration(format!("{}: {e}", dir.display())).with_source(e))?;
        }
        let config = duckdb::Config::default().threads(DUCKDB_THREADS).map_err(unavailable)?;
        let conn = Connection::open_with_flags(path, config).map_err(unavailable)?;
        conn.execute_batch(&format!(
            "CREATE TABLE IF NOT EXISTS {HISTORY} (
                 table_name VARCHAR NOT NULL,
                 file VARCHAR NOT NULL,
                 rows BIGINT NOT NULL,
                 query_id VARCHAR NOT NULL,
                 loaded_at TIMESTAMPTZ NOT NULL DEFAULT current_timestamp,
                 PRIMARY KEY (table_name, file))"
        ))
        .map_err(unavailable)?;
        let loads = (0..LOAD_CONNECTIONS)
            .map(|_| {
                let load = conn.try_clone().map_err(unavailable)?;
                load.register_table_function::<ArrowVTab>("arrow").map_err(unavailable)?;
                Ok(load)
            })
            .collect::<Result<_, WarehouseError>>()?;
        let probe = conn.try_clone().map_err(unavailable)?;
        Ok(DuckDbWarehouse {
            loads: LoadPool {
                idle: Arc::new(Mutex::new(loads)),
                free: Arc::new(tokio::sync::Semaphore::new(LOAD_CONNECTIONS)),
            },
            reads: Arc::new(tokio::sync::Semaphore::new(STAGE_READS)),
            conn: Arc::new(Mutex::new(conn)),
            probe: Arc::new(Mutex::new(probe)),
            stage,
            recent: RecentFiles::new(),
        })
    }

    /// Another connection to the same database, for inspection (tests, tools).
    pub fn connection(&self) -> Result<Connection, WarehouseError> {
        let guard = self.conn.lock().map_err(|_| WarehouseError::statement("connection lock poisoned"))?;
        guard.try_clone().map_err(unavailable)
    }

    /// A load connection of the COPY's own, once one is free.
    async fn load_connection(&self) -> Result<LoadConnection, WarehouseError> {
        let free = self.loads.free.clone().acquire_owned().await;
        let free = free.map_err(|e| WarehouseError::transient("load connections closed").with_source(e))?;
        let conn = self.loads.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        // A permit stands for an idle connection: a connection goes back before its permit.
        let conn = conn.ok_or_else(|| WarehouseError::statement("no idle load connection for a free permit"))?;
        Ok(LoadConnection { conn: Some(conn), idle: self.loads.idle.clone(), _free: free })
    }

    async fn execute_all(&self, statements: Vec<String>) -> Result<(), WarehouseError> {
        // A DDL statement that meets a load's open transaction on the same table fails with a
        // transaction conflict and changed nothing: it is tried again for a while (a load's
        // transaction is short), without holding the connection meanwhile, before the conflict
        // is reported as transient. One deadline covers the whole list.
        let deadline = tokio::time::Instant::now() + DDL_CONFLICT_RETRY;
        for sql in statements {
            loop {
                let statement = sql.clone();
                match run(&self.conn, move |conn| conn.execute_batch(&statement).map_err(classify)).await {
                    Err(e) if e.code() == Some("TransactionContext") && tokio::time::Instant::now() < deadline => {
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                    done => break done?,
                }
            }
        }
        Ok(())
    }
}

/// Connections for COPY: at most this many COPYs insert at once; more queue.
const LOAD_CONNECTIONS: usize = 4;

/// DuckDB's threads: each statement runs on the thread that asked for it. The loader's parallel
/// COPYs already load on connections of their own, and the Arrow scan of an `INSERT` runs on one
/// thread anyway; with worker threads of DuckDB's own, the asking thread polls in a loop for the
/// tasks they run, a core's worth of CPU taken from requests (BENCHMARKS.md, tenth sitting).
const DUCKDB_THREADS: i64 = 1;

/// Staged files all COPYs hold in memory at once, read ahead or being inserted: one at a time,
/// an S3 stage's round trips added up.
const STAGE_READS: usize = 8;

/// How long a DDL statement is retried while it conflicts with a load's transaction.
const DDL_CONFLICT_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

/// The load connections: the idle ones, and a permit for each.
struct LoadPool {
    idle: Arc<Mutex<Vec<Connection>>>,
    free: Arc<tokio::sync::Semaphore>,
}

/// A load connection held by one COPY, given back when dropped (also when the work on it
/// panicked: its transaction rolled back as it unwound).
struct LoadConnection {
    /// `Some` until dropped.
    conn: Option<Connection>,
    idle: Arc<Mutex<Vec<Connection>>>,
    _free: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for LoadConnection {
    fn drop(&mut self) {
        // Runs before the permit is released (fields drop after this), so a permit taken
        // finds the connection back.
        if let Some(conn) = self.conn.take() {
            self.idle.lock().unwrap_or_else(|p| p.into_inner()).push(conn);
        }
    }
}

/// Runs blocking work on a load connection, which it holds until the work ends, even when the
/// COPY waiting for it is dropped first.
async fn run_load<T: Send + 'static>(
    mut load: LoadConnection,
    work: impl FnOnce(&mut Connection) -> Result<T, WarehouseError> + Send + 'static,
) -> Result<T, WarehouseError> {
    tokio::task::spawn_blocking(move || match load.conn.as_mut() {
        Some(conn) => work(conn),
        None => Err(WarehouseError::statement("load connection already given back")),
    })
    .await
    .map_err(|e| WarehouseError::statement(format!("warehouse task: {e}")).with_source(e))?
}

/// Runs blocking work on one of the connections.
async fn run<T: Send + 'static>(
    conn: &Arc<Mutex<Connection>>,
    work: impl FnOnce(&mut Connection) -> Result<T, WarehouseError> + Send + 'static,
) -> Result<T, WarehouseError> {
    let conn = conn.clone();
    tokio::task::spawn_blocking(move || {
        // A panic while the lock was held unwound through the work's transaction, which rolled
        // back on drop: the connection is usable, so the poison is cleared rather than kept.
        let mut guard = conn.lock().unwrap_or_else(|poisoned| {
            conn.clear_poison();
            poisoned.into_inner()
        });
        work(&mut guard)
    })
    .await
    // The work panicked (a corrupt file can make a decoder panic): a failed statement, so a
    // group is split and the one file that panics fails instead of being retried forever.
    .map_err(|e| WarehouseError::statement(format!("warehouse task: {e}")).with_source(e))?
}

/// DuckDB's error types (its `ExceptionType` names), by what the loader should do about them.
///
/// duckdb-rs hands back a generic failure state for statement errors; the error's type survives
/// only as the `<Type> Error:` head that DuckDB itself puts on every message, so that head is
/// read as the error code. Types not listed are failed statements: never retried forever.
fn kind_of(error_type: &str) -> ErrorKind {
    match error_type {
        "Conversion" | "Out of Range" | "Constraint" | "Invalid Input" | "Mismatch Type" | "Decimal"
        | "Divide by Zero" | "Invalid type" => ErrorKind::Data,
        "TransactionContext" | "IO" | "Out of Memory" | "INTERRUPT" | "Connection" | "Network" | "HTTP" => {
            ErrorKind::Transient
        }
        // FATAL and INTERNAL invalidate the database until the process restarts: an operator's
        // problem, and never a reason to fail the data.
        "Catalog" | "Binder" | "Permission" | "Dependency" | "FATAL" | "INTERNAL" => ErrorKind::Configuration,
        _ => ErrorKind::Statement,
    }
}

/// Classifies a DuckDB error by its type, keeping the error as the source.
fn classify(e: duckdb::Error) -> WarehouseError {
    let (kind, code) = match &e {
        duckdb::Error::DuckDBFailure(_, Some(message)) => match message.split_once(" Error: ") {
            Some((error_type, _)) => (kind_of(error_type), Some(error_type.to_string())),
            None => (ErrorKind::Statement, None),
        },
        duckdb::Error::FromSqlConversionFailure(..)
        | duckdb::Error::IntegralValueOutOfRange(..)
        | duckdb::Error::UnsignedIntegralValueOutOfRange(..) => (ErrorKind::Data, None),
        _ => (ErrorKind::Statement, None),
    };
    let error = WarehouseError::new(kind, e.to_string()).with_source(e);
    match code {
        Some(code) => error.with_code(code),
        None => error,
    }
}

/// Opening or probing the database file: the file or the process is in trouble, not the data.
fn unavailable(e: duckdb::Error) -> WarehouseError {
    WarehouseError::transient(e.to_string()).with_source(e)
}

/// DuckDB spelling of a column type. Semi-structured values are JSON text in VARCHAR.
pub fn duckdb_type(ty: ColumnType) -> String {
    match ty {
        ColumnType::Number { precision, scale } => format!("DECIMAL({precision},{scale})"),
        ColumnType::Float => "DOUBLE".into(),
        ColumnType::Varchar { .. } | ColumnType::Variant | ColumnType::Object | ColumnType::Array => "VARCHAR".into(),
        ColumnType::Boolean => "BOOLEAN".into(),
        ColumnType::Date => "DATE".into(),
        ColumnType::Time => "TIME".into(),
        ColumnType::TimestampNtz => "TIMESTAMP".into(),
        ColumnType::TimestampLtz | ColumnType::TimestampTz => "TIMESTAMPTZ".into(),
        ColumnType::Binary => "BLOB".into(),
    }
}

/// snowgate's type for a DuckDB type name from `information_schema`.
pub fn from_duckdb_type(name: &str) -> ColumnType {
    let upper = name.trim().to_ascii_uppercase();
    match upper.as_str() {
        "BIGINT" | "INT8" | "LONG" => ColumnType::Number { precision: 19, scale: 0 },
        "INTEGER" | "INT4" | "INT" | "SIGNED" => ColumnType::Number { precision: 10, scale: 0 },
        "SMALLINT" | "INT2" | "SHORT" => ColumnType::Number { precision: 5, scale: 0 },
        "TINYINT" | "INT1" => ColumnType::Number { precision: 3, scale: 0 },
        "HUGEINT" | "UBIGINT" | "UINTEGER" | "USMALLINT" | "UTINYINT" => ColumnType::INTEGER,
        "DOUBLE" | "FLOAT" | "REAL" | "FLOAT4" | "FLOAT8" => ColumnType::Float,
        "VARCHAR" | "TEXT" | "STRING" | "UUID" => ColumnType::VARCHAR,
        "BOOLEAN" | "BOOL" => ColumnType::Boolean,
        "DATE" => ColumnType::Date,
        "TIME" => ColumnType::Time,
        "TIMESTAMP" | "DATETIME" | "TIMESTAMP_US" | "TIMESTAMP_MS" | "TIMESTAMP_NS" | "TIMESTAMP_S" => {
            ColumnType::TimestampNtz
        }
        "TIMESTAMP WITH TIME ZONE" | "TIMESTAMPTZ" => ColumnType::TimestampTz,
        "BLOB" | "BYTEA" | "VARBINARY" => ColumnType::Binary,
        _ => upper.parse().unwrap_or(ColumnType::Variant),
    }
}

fn column_ddl(column: &Column) -> String {
    let not_null = if column.nullable { "" } else { " NOT NULL" };
    format!("{} {}{not_null}", quote_ident(&column.name), duckdb_type(column.ty))
}

/// `ALTER TABLE ... ADD COLUMN IF NOT EXISTS` for each `(name, type)`.
fn add_column_statements<'a>(table: &str, columns: impl Iterator<Item = (&'a str, String)>) -> Vec<String> {
    columns
        .map(|(name, ty)| {
            format!("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {ty}", quote_ident(table), quote_ident(name))
        })
        .collect()
}

fn metadata_ddl() -> [(&'static str, &'static str); 3] {
    [(META_BATCH_ID, "VARCHAR"), (META_RECORD_INDEX, "BIGINT"), (META_INGESTED_AT, "TIMESTAMPTZ")]
}

/// Which of `paths` a COPY into `table` loaded before (its load history, in the transaction).
fn loaded_before(
    tx: &duckdb::Transaction<'_>,
    table: &str,
    paths: &[String],
) -> Result<HashSet<String>, WarehouseError> {
    let mut found = HashSet::new();
    for chunk in paths.chunks(HISTORY_FILES) {
        let list = vec!["?"; chunk.len()].join(", ");
        let sql = format!("SELECT file FROM {HISTORY} WHERE table_name = ? AND file IN ({list})");
        let mut query = tx.prepare(&sql).map_err(unavailable)?;
        let params = std::iter::once(table).chain(chunk.iter().map(String::as_str));
        let mut rows = query.query(duckdb::params_from_iter(params)).map_err(unavailable)?;
        while let Some(row) = rows.next().map_err(unavailable)? {
            found.insert(row.get::<_, String>(0).map_err(unavailable)?);
        }
    }
    Ok(found)
}

/// Writes the load history of the files a COPY loaded, in its transaction.
fn record_loaded(
    tx: &duckdb::Transaction<'_>,
    table: &str,
    loaded: &[(String, u64)],
    query_id: &str,
) -> Result<(), WarehouseError> {
    for chunk in loaded.chunks(HISTORY_FILES) {
        let rows = vec!["(?, ?, ?, ?)"; chunk.len()].join(", ");
        let sql = format!("INSERT INTO {HISTORY} (table_name, file, rows, query_id) VALUES {rows}");
        let params: Vec<duckdb::types::Value> = chunk
            .iter()
            .flat_map(|(path, rows)| {
                [
                    table.to_string().into(),
                    path.clone().into(),
                    i64::try_from(*rows).unwrap_or(i64::MAX).into(),
                    query_id.to_string().into(),
                ]
            })
            .collect();
        tx.execute(&sql, duckdb::params_from_iter(params)).map_err(unavailable)?;
    }
    Ok(())
}

/// Files in one load-history statement: a COPY of up to `loader.max_files_per_copy` (at most
/// 1,000) files looks up and records its history in one statement each.
const HISTORY_FILES: usize = 1_000;

/// A staged file's record batches: one for a file of up to a row group's rows (the reader caps a
/// batch at the file's rows), so that such a file takes one `INSERT` (each is parsed, bound and
/// planned anew); a larger file, in batches of a row group, so one batch stays bounded.
fn decode_parquet(path: &str, data: Bytes) -> Result<Vec<RecordBatch>, WarehouseError> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(data)
        .and_then(|b| b.with_batch_size(ROW_GROUP_ROWS as usize).build())
        .map_err(|e| WarehouseError::data(format!("not a readable Parquet file: {e}")).in_file(path).with_source(e))?;
    reader.collect::<Result<Vec<_>, _>>().map_err(|e| WarehouseError::data(e.to_string()).in_file(path).with_source(e))
}

/// A file of a COPY: its rows as this process kept them, or its bytes as read from the stage.
enum Contents {
    Kept(KeptFile),
    Staged(Bytes),
}

/// A failed insert of one file's rows, classified by DuckDB's error type.
fn classify_insert_error(path: &str, e: duckdb::Error) -> WarehouseError {
    classify(e).in_file(path)
}

#[async_trait]
impl Warehouse for DuckDbWarehouse {
    fn backend(&self) -> &'static str {
        "duckdb"
    }

    fn parallel_copies(&self) -> usize {
        LOAD_CONNECTIONS
    }

    /// DuckDB's row group (122,880 rows). A transaction that inserts at least one row group's
    /// worth into a table (over all its statements) commits as a bulk append: its rows are
    /// written as compressed row groups. One with fewer is appended to the table's open row
    /// group, written to the WAL, and read back and compressed at the next checkpoint, so two
    /// COPYs of 100,000 rows cost more CPU than one of 200,000 (BENCHMARKS.md, eighth sitting).
    fn min_rows_per_parallel_copy(&self) -> u64 {
        ROW_GROUP_ROWS
    }

    fn recent_files(&self) -> Option<Arc<RecentFiles>> {
        Some(self.recent.clone())
    }

    async fn ping(&self) -> Result<(), WarehouseError> {
        run(&self.probe, |conn| conn.execute_batch("SELECT 1").map_err(unavailable)).await
    }

    async fn describe(&self, table: &str) -> Result<Option<TableDescription>, WarehouseError> {
        let table = table.to_string();
        run(&self.conn, move |conn| {
            let mut stmt = conn
                .prepare(
                    "SELECT column_name, data_type, is_nullable FROM information_schema.columns
                     WHERE table_schema = 'main' AND lower(table_name) = lower(?) ORDER BY ordinal_position",
                )
                .map_err(unavailable)?;
            let rows = stmt
                .query_map([&table], |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?, row.get::<_, String>(2)?))
                })
                .map_err(unavailable)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(unavailable)?;
            if rows.is_empty() {
                return Ok(None);
            }
            let mut columns = Vec::new();
            let mut meta_found = 0;
            for (name, ty, nullable) in rows {
                let upper = name.to_ascii_uppercase();
                if META_COLUMNS.contains(&upper.as_str()) {
                    meta_found += 1;
                    continue;
                }
                let name = ColumnName::from_warehouse(&upper);
                columns.push(Column { name, ty: from_duckdb_type(&ty), nullable: nullable == "YES" });
            }
            Ok(Some(TableDescription { columns, has_metadata: meta_found == META_COLUMNS.len() }))
        })
        .await
    }

    async fn create_table(&self, table: &str, columns: &[Column]) -> Result<(), WarehouseError> {
        let mut parts: Vec<String> = columns.iter().map(column_ddl).collect();
        parts.extend(metadata_ddl().iter().map(|(name, ty)| format!("{} {ty} NOT NULL", quote_ident(name))));
        let sql = format!("CREATE TABLE IF NOT EXISTS {} ({})", quote_ident(table), parts.join(", "));
        run(&self.conn, move |conn| conn.execute_batch(&sql).map_err(classify)).await
    }

    async fn add_columns(&self, table: &str, columns: &[Column]) -> Result<(), WarehouseError> {
        let added = columns.iter().map(|c| (c.name.as_str(), duckdb_type(c.ty)));
        self.execute_all(add_column_statements(table, added)).await
    }

    async fn widen_column(&self, table: &str, column: &Column) -> Result<(), WarehouseError> {
        // DuckDB's VARCHAR has no length to widen (the gateway checks it); DECIMALs are altered.
        if matches!(column.ty, ColumnType::Varchar { .. }) {
            return Ok(());
        }
        let sql = format!(
            "ALTER TABLE {} ALTER COLUMN {} SET DATA TYPE {}",
            quote_ident(table),
            quote_ident(&column.name),
            duckdb_type(column.ty)
        );
        self.execute_all(vec![sql]).await
    }

    async fn add_metadata_columns(&self, table: &str) -> Result<(), WarehouseError> {
        let added = metadata_ddl().into_iter().map(|(name, ty)| (name, ty.to_string()));
        self.execute_all(add_column_statements(table, added)).await
    }

    async fn copy_files(&self, table: &str, staged: &[StagedFile]) -> Result<Vec<CopyResult>, WarehouseError> {
        // Inserted by name: a file written before a column existed loads NULL there. The files
        // are read from the stage ahead of the insert, kept in their order, and handed to it as
        // they arrive: a round holds a few files at once, never all of them. Two COPYs never
        // hold the same file (a claim is one loader's); should they, after a loader restarted
        // while its old COPY ran on, the load history's primary key fails the later one.
        use tokio_util::task::AbortOnDropHandle;
        let (files_tx, mut files) = tokio::sync::mpsc::channel(1);
        let count = staged.len();
        // Every COPY in flight shares [`STAGE_READS`] permits, taken in its files' order before
        // each read and given back once the file is inserted, so the files in memory (being read,
        // read ahead, being inserted) stay within them however many COPYs run. A COPY holds
        // permits only for its next files and only once it has a connection of its own, so it
        // never waits for one that another cannot free.
        let load = self.load_connection().await?;
        let (reads_tx, mut reads) = tokio::sync::mpsc::unbounded_channel();
        let (stage, permits, recent) = (self.stage.clone(), self.reads.clone(), self.recent.clone());
        let paths: Vec<String> = staged.iter().map(|file| file.path.clone()).collect();
        let reads_of = paths.clone();
        let _feeder = AbortOnDropHandle::new(tokio::spawn(async move {
            for path in reads_of {
                let Ok(permit) = permits.clone().acquire_owned().await else { return };
                let (stage, recent) = (stage.clone(), recent.clone());
                // Each read is a task of its own, so the reads ahead keep going (and stay within
                // the stage's timeout) while the insert is busy and the reader waits to hand a
                // file over. A file whose rows this process kept is not read at all.
                let read = AbortOnDropHandle::new(tokio::spawn(async move {
                    let data = match recent.take(&path) {
                        Some(kept) => Contents::Kept(kept),
                        None => {
                            Contents::Staged(stage.get(&path).await.map_err(|e| WarehouseError::from_stage(e, &path))?)
                        }
                    };
                    Ok::<_, WarehouseError>((path, data))
                }));
                if reads_tx.send((read, permit)).is_err() {
                    return;
                }
            }
        }));
        // Ends at the first failed read (sent on, so the insert stops there), or when the insert
        // stopped taking files. Aborted, with the reads it started, when this COPY ends or is dropped.
        let _reader = AbortOnDropHandle::new(tokio::spawn(async move {
            while let Some((read, permit)) = reads.recv().await {
                // A read that panicked fails its file as a statement would, never retried forever.
                let read = read
                    .await
                    .map_err(|e| WarehouseError::statement(format!("stage read task: {e}")).with_source(e))
                    .and_then(|read| read)
                    .map(|(path, data)| (path, data, permit));
                let failed = read.is_err();
                if files_tx.send(read).await.is_err() || failed {
                    break;
                }
            }
        }));
        // The transaction is opened once the first file is here.
        let mut first = files.recv().await;
        let table = table.to_string();
        run_load(load, move |conn| {
            let query_id = format!("duckdb-{}", Uuid::now_v7());
            let insert = format!("INSERT INTO {} BY NAME SELECT * FROM arrow(?)", quote_ident(&table));
            let tx = conn.transaction().map_err(unavailable)?;
            // One statement looks up which of the files loaded before and one records the rest,
            // not two a file: DuckDB parses, binds and plans every statement anew.
            let mut skip = loaded_before(&tx, &table, &paths)?;
            let mut loaded: Vec<(String, u64)> = Vec::with_capacity(count);
            let mut results = Vec::with_capacity(count);
            while let Some(file) = first.take().or_else(|| files.blocking_recv()) {
                // The permit goes back once this file is inserted (or skipped).
                let (path, data, _permit) = file.map_err(|e| e.with_query_id(Some(query_id.clone())))?;
                // Skipped when an earlier COPY loaded it, or when this COPY named it already.
                if !skip.insert(path.clone()) {
                    results.push(CopyResult {
                        path,
                        status: CopyStatus::Skipped,
                        rows_loaded: 0,
                        query_id: Some(query_id.clone()),
                    });
                    continue;
                }
                let mut rows = 0u64;
                let named = |e: WarehouseError| e.with_query_id(Some(query_id.clone()));
                // Kept rows stay on the budget until they are inserted.
                let (batches, _held) = match data {
                    Contents::Kept(kept) => {
                        let (batch, held) = kept.into_parts();
                        (vec![batch], Some(held))
                    }
                    Contents::Staged(bytes) => (decode_parquet(&path, bytes).map_err(named)?, None),
                };
                for batch in batches {
                    let registration = ArrowBatchRegistration::new(batch);
                    let inserted =
                        tx.execute(&insert, [&registration]).map_err(|e| named(classify_insert_error(&path, e)))?;
                    rows += inserted as u64;
                }
                loaded.push((path.clone(), rows));
                results.push(CopyResult {
                    path,
                    status: CopyStatus::Loaded,
                    rows_loaded: rows,
                    query_id: Some(query_id.clone()),
                });
            }
            if results.len() != count {
                // The reader stopped without an error (aborted or panicked): nothing of this round commits.
                return Err(WarehouseError::transient("a stage read ended early").with_query_id(Some(query_id)));
            }
            record_loaded(&tx, &table, &loaded, &query_id)?;
            crate::fault::crash_point(crate::fault::CrashPoint::DuringCopy);
            tx.commit().map_err(unavailable)?;
            Ok(results)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn copies_at_once_get_connections_of_their_own_and_one_more_waits() {
        let dir = tempfile::tempdir().unwrap();
        let options = crate::config::StageConfig::default();
        let stage = Arc::new(Stage::open(&format!("file://{}", dir.path().join("stage").display()), &options).unwrap());
        let duck = DuckDbWarehouse::open(&dir.path().join("w.duckdb"), stage).unwrap();
        assert_eq!(duck.parallel_copies(), LOAD_CONNECTIONS);
        let mut taken = Vec::new();
        for _ in 0..LOAD_CONNECTIONS {
            taken.push(duck.load_connection().await.unwrap());
        }
        assert!(duck.loads.idle.lock().unwrap().is_empty(), "each COPY holds a connection of its own");
        let wait = std::time::Duration::from_millis(200);
        assert!(tokio::time::timeout(wait, duck.load_connection()).await.is_err(), "a fifth COPY waits");
        // A COPY that ends (or panics) gives its connection back, and the waiting one gets it.
        let ended = taken.pop().unwrap();
        let waiting = tokio::spawn({
            let duck = Arc::new(duck);
            async move { duck.load_connection().await.map(|c| c.conn.is_some()) }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiting.is_finished());
        let panicked = run_load(ended, |_| -> Result<(), WarehouseError> { panic!("a corrupt file") }).await;
        assert_eq!(panicked.unwrap_err().kind, ErrorKind::Statement);
        assert!(tokio::time::timeout(wait * 5, waiting).await.unwrap().unwrap().unwrap());
    }

    #[tokio::test]
    async fn a_copy_takes_the_rows_this_process_kept_and_reads_the_other_files_from_the_stage() {
        use crate::buffer::encode::{file_bytes, file_bytes_and_batch, RowGroup};
        use crate::ingest::coerce::Cell;
        use crate::ingest::{Row, Rows};
        use crate::schema::TableSchema;

        let dir = tempfile::tempdir().unwrap();
        let options = crate::config::StageConfig::default();
        let stage = Arc::new(Stage::open(&format!("file://{}", dir.path().join("stage").display()), &options).unwrap());
        let duck = DuckDbWarehouse::open(&dir.path().join("w.duckdb"), stage.clone()).unwrap();
        let columns =
            vec![Column { name: ColumnName::normalize("NAME").unwrap(), ty: ColumnType::VARCHAR, nullable: true }];
        duck.create_table("T", &columns).await.unwrap();
        let schema = TableSchema { name: "T".into(), columns: columns.clone() };
        let rows = |names: &[&str]| {
            let rows: Vec<Row> = (0u64..)
                .zip(names)
                .map(|(index, name)| Row { index, cells: vec![Cell::Str(name.to_string())] })
                .collect();
            Rows::from_rows(Arc::new(schema.clone()), &rows).unwrap().finish().unwrap()
        };
        let group = |rows| RowGroup { batch_id: "b-1", ingested_at: 1, rows };
        // The stage holds "staged" rows for both files; this process kept other rows for the
        // first, so that where each file's rows came from shows in the table.
        let (staged, kept) = (rows(&["staged"]), rows(&["kept", "kept"]));
        for path in ["T/a.parquet", "T/b.parquet"] {
            stage.put_new(path, file_bytes(&schema, &[group(&staged)]).unwrap()).await.unwrap();
        }
        let budget = crate::budget::MemoryBudget::new(1 << 30);
        let recent = duck.recent_files().expect("DuckDB loads in this process");
        let (_, batch) = file_bytes_and_batch(&schema, &[group(&kept)]).unwrap();
        assert!(recent.keep(&budget, "T/a.parquet", batch, Vec::new()).is_ok());
        let files: Vec<StagedFile> = ["T/a.parquet", "T/b.parquet"]
            .into_iter()
            .map(|path| StagedFile { path: path.into(), columns: Some(columns.clone()) })
            .collect();
        let results = duck.copy_files("T", &files).await.unwrap();
        let loaded: Vec<u64> = results.iter().map(|r| r.rows_loaded).collect();
        assert_eq!(loaded, [2, 1]);
        let conn = duck.connection().unwrap();
        let names: Vec<(String, i64)> = conn
            .prepare("SELECT \"NAME\", count(*) FROM \"T\" GROUP BY 1 ORDER BY 1")
            .unwrap()
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(names, [("kept".to_string(), 2), ("staged".to_string(), 1)]);
        // Statements run on the thread that asks, with no worker threads of DuckDB's own.
        let threads: i64 = conn.query_row("SELECT current_setting('threads')", [], |row| row.get(0)).unwrap();
        assert_eq!(threads, DUCKDB_THREADS);
        assert_eq!((recent.bytes(), budget.used()), (0, 0), "taken, and given back once inserted");
        assert_eq!(recent.taken(), 1);
        assert!(recent.take("T/a.parquet").is_none(), "taken once");
        // Copied again, both files are skipped: the one loaded from memory has its history too.
        let again = duck.copy_files("T", &files).await.unwrap();
        assert!(again.iter().all(|r| r.status == CopyStatus::Skipped && r.rows_loaded == 0), "{again:?}");
    }

    #[test]
    fn errors_are_classified_by_duckdb_error_type() {
        let conn = Connection::open_in_memory().unwrap();
        let run = |sql: &str| classify(conn.execute_batch(sql).unwrap_err());
        let conversion = run("SELECT CAST('x' AS INTEGER)");
        assert_eq!((conversion.kind, conversion.code()), (ErrorKind::Data, Some("Conversion")));
        assert!(std::error::Error::source(&conversion).is_some(), "the DuckDB error is kept");
        conn.execute_batch("CREATE TABLE t (a INTEGER NOT NULL)").unwrap();
        assert_eq!(run("INSERT INTO t VALUES (NULL)").kind, ErrorKind::Data);
        assert_eq!(run("SELECT * FROM missing_table").kind, ErrorKind::Configuration);
        assert_eq!(run("SELEKT 1").kind, ErrorKind::Statement);
        // A type this code does not know fails its file instead of being retried forever.
        let unknown = duckdb::Error::DuckDBFailure(duckdb::ffi::Error::new(1), Some("Brand New Error: x".into()));
        assert_eq!(classify(unknown).kind, ErrorKind::Statement);
    }
}

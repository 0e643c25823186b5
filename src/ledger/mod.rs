//! The ledger: durable record of tables, batches, rejects and staged files.

mod codec;
pub mod model;
pub mod postgres;
pub mod sqlite;

use std::time::Duration;

use async_trait::async_trait;
use uuid::Uuid;

pub use model::*;

use crate::ingest::reject::Reject;
use crate::schema::Column;

/// Ledger failures; all are internal or availability problems, never the partner's fault.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger unavailable: {0}")]
    Unavailable(String),
    #[error("ledger query failed: {0}")]
    Query(String),
    #[error("ledger holds data it cannot read: {0}")]
    Corrupt(String),
}

impl From<sqlx::Error> for LedgerError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) | sqlx::Error::Tls(_) => {
                LedgerError::Unavailable(e.to_string())
            }
            sqlx::Error::Database(ref db) if is_connection_loss(db.as_ref()) => LedgerError::Unavailable(e.to_string()),
            other => LedgerError::Query(other.to_string()),
        }
    }
}

/// Postgres reports a server going away or refusing sessions as a database error, not an I/O one.
fn is_connection_loss(db: &dyn sqlx::error::DatabaseError) -> bool {
    if db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>().is_none() {
        return false;
    }
    // 08: connection exception; 57P01-57P03: shutting down or starting up; 53300: too many connections.
    db.code().is_some_and(|code| code.starts_with("08") || matches!(&*code, "57P01" | "57P02" | "57P03" | "53300"))
}

pub type Result<T, E = LedgerError> = std::result::Result<T, E>;

/// Holds a table's DDL lock across replicas until dropped (a Postgres transaction-scoped advisory
/// lock, say). Backends with a single writer return an empty guard.
pub struct DdlGuard(#[allow(dead_code)] Option<Box<dyn Send>>);

impl DdlGuard {
    /// A guard that holds nothing: for backends where one process is the only writer.
    pub fn none() -> Self {
        DdlGuard(None)
    }

    /// A guard that keeps `held` alive (and so the lock it represents) until dropped.
    pub fn holding(held: Box<dyn Send>) -> Self {
        DdlGuard(Some(held))
    }
}

/// One ledger, many backends: SQLite embedded, Postgres in production.
#[async_trait]
pub trait Ledger: Send + Sync + 'static {
    /// Backend name for health reports.
    fn backend(&self) -> &'static str;

    /// Cheap round trip for readiness.
    async fn ping(&self) -> Result<()>;

    /// Creates or replaces a table's record.
    async fn put_table(&self, table: &TableRecord) -> Result<()>;

    async fn get_table(&self, name: &str) -> Result<Option<TableRecord>>;

    async fn list_tables(&self) -> Result<Vec<TableRecord>>;

    /// Appends columns to a table's record and audits each one.
    async fn add_columns(&self, table: &str, columns: &[Column], batch_id: Option<Uuid>) -> Result<()>;

    /// Serialises schema changes to one table across replicas; released when the guard drops.
    async fn lock_ddl(&self, table: &str) -> Result<DdlGuard>;

    /// The audit log of a table, oldest first.
    async fn schema_changes(&self, table: &str) -> Result<Vec<SchemaChange>>;

    /// Records a staged file and the batches it completes, in one transaction (group commit).
    async fn commit_stage(&self, commit: &StageCommit) -> Result<()>;

    /// Claims up to `limit` loadable files (staged, or loading with an expired lease).
    async fn claim_files(&self, owner: &str, lease: Duration, limit: usize) -> Result<Vec<ClaimedFile>>;

    /// Records load outcomes and reconciles the batches those files belong to.
    async fn complete_files(&self, outcomes: &[FileOutcome]) -> Result<()>;

    /// Hands claimed files back after a transient failure; they are retried after `delay`.
    async fn release_files(&self, ids: &[Uuid], error: &str, delay: Duration) -> Result<()>;

    /// Marks pending files older than `age` abandoned: their batch was never acknowledged.
    async fn abandon_pending(&self, age: Duration) -> Result<u64>;

    async fn get_batch(&self, id: Uuid) -> Result<Option<BatchRecord>>;

    /// Batches newest first; `files` and `schema_changes` are left empty in lists.
    async fn list_batches(&self, filter: &BatchFilter) -> Result<Vec<BatchRecord>>;

    /// Rejects of a batch ordered by index, starting after `after`.
    async fn list_rejects(&self, batch: Uuid, after: Option<u64>, limit: u32) -> Result<Vec<Reject>>;
}

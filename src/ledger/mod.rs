//! The ledger: durable record of tables, batches, rejects and staged files.

pub mod model;
pub mod postgres;
pub mod sqlite;
mod store;

use std::time::Duration;

use async_trait::async_trait;
use uuid::Uuid;

pub use model::*;
pub use store::SqlLedger;

use crate::schema::Column;

/// Ledger failures, classified once from the driver's error kinds and SQLSTATEs.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The database cannot be reached or is refusing work for now: retry later.
    #[error("ledger unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// A unique key already holds this value.
    #[error("ledger conflict: {0}")]
    Conflict(#[source] sqlx::Error),
    /// The database refused a value it was given (Postgres SQLSTATE class 22: a NUL character,
    /// a time out of its range): the caller's input, not the ledger, is at fault.
    #[error("ledger refused a value: {0}")]
    Invalid(#[source] sqlx::Error),
    /// Any other failed statement: a bug or a schema out of step with the code.
    #[error("ledger query failed: {0}")]
    Query(#[source] sqlx::Error),
    #[error("ledger migration failed: {0}")]
    Migration(#[source] sqlx::migrate::MigrateError),
    /// A row the ledger wrote cannot be read back.
    #[error("ledger holds data it cannot read: {0}")]
    Corrupt(String),
    /// A record the operation needs does not exist.
    #[error("not in the ledger: {0}")]
    Missing(String),
}

impl LedgerError {
    /// True when retrying later may succeed.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, LedgerError::Unavailable(_))
    }
}

impl From<sqlx::Error> for LedgerError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            _ if unavailable(&e) => LedgerError::Unavailable(e),
            sqlx::Error::Database(db) if db.kind() == sqlx::error::ErrorKind::UniqueViolation => {
                LedgerError::Conflict(e)
            }
            sqlx::Error::Database(db)
                if db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>().is_some()
                    && db.code().is_some_and(|code| code.starts_with("22")) =>
            {
                LedgerError::Invalid(e)
            }
            sqlx::Error::ColumnDecode { .. } | sqlx::Error::ColumnNotFound(_) | sqlx::Error::Decode(_) => {
                LedgerError::Corrupt(e.to_string())
            }
            _ => LedgerError::Query(e),
        }
    }
}

impl From<sqlx::migrate::MigrateError> for LedgerError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        match e {
            sqlx::migrate::MigrateError::Execute(inner) if unavailable(&inner) => LedgerError::Unavailable(inner),
            other => LedgerError::Migration(other),
        }
    }
}

fn unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(db) => database_unavailable(db.as_ref()),
        _ => false,
    }
}

/// Errors that say "not now" rather than "never", by SQLSTATE (Postgres) or result code (SQLite).
fn database_unavailable(db: &dyn sqlx::error::DatabaseError) -> bool {
    let Some(code) = db.code() else { return false };
    if db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>().is_some() {
        // 08: connection exception; 57P01-57P03: shutting down or starting up; 53: insufficient
        // resources (too many connections, disk full); 40001/40P01: serialization failure, deadlock.
        return code.starts_with("08")
            || code.starts_with("53")
            || matches!(&*code, "57P01" | "57P02" | "57P03" | "40001" | "40P01");
    }
    // SQLite reports its extended result code; the primary code is the low byte.
    // 5 BUSY, 6 LOCKED, 10 IOERR, 13 FULL, 14 CANTOPEN.
    code.parse::<i32>().is_ok_and(|n| matches!(n & 0xff, 5 | 6 | 10 | 13 | 14))
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

    /// Applies column changes to a table's record in one transaction and audits each one: added
    /// columns are appended (one already there is skipped), widened ones take their new type.
    async fn change_columns(&self, table: &str, changes: &[ColumnChange], cause: &ChangeCause) -> Result<()>;

    /// Appends columns to a table's record and audits each one.
    async fn add_columns(&self, table: &str, columns: &[Column], cause: &ChangeCause) -> Result<()> {
        let changes: Vec<ColumnChange> = columns.iter().cloned().map(ColumnChange::Added).collect();
        self.change_columns(table, &changes, cause).await
    }

    /// Serialises schema changes to one table across replicas; released when the guard drops.
    async fn lock_ddl(&self, table: &str) -> Result<DdlGuard>;

    /// The audit log of a table, oldest first.
    async fn schema_changes(&self, table: &str) -> Result<Vec<SchemaChange>>;

    /// Records a staged file and the batches it completes, in one transaction (group commit).
    async fn commit_stage(&self, commit: &StageCommit) -> Result<()>;

    /// Claims up to `limit` loadable files (staged, or loading with an expired lease).
    async fn claim_files(&self, owner: &str, lease: Duration, limit: usize) -> Result<Vec<ClaimedFile>>;

    /// Makes every file claimed by `owner` loadable again at once, lease or not; returns how
    /// many. For a loader starting under a name whose previous holder is known to be dead.
    async fn release_claims_of(&self, owner: &str) -> Result<u64>;

    /// Extends the lease of files `owner` still holds; returns how many it still holds.
    async fn renew_claims(&self, owner: &str, ids: &[Uuid], lease: Duration) -> Result<u64>;

    /// Records the outcomes of files `owner` still holds and reconciles the batches those files
    /// belong to; returns how many it recorded. An outcome for a file `owner` no longer holds
    /// (its lease expired and another loader took it) changes nothing. A rejected file's row
    /// becomes a warehouse reject of its batch.
    async fn complete_files(&self, owner: &str, outcomes: &[FileOutcome]) -> Result<usize>;

    /// Replaces files `owner` holds by parts holding the same rows, already written to the
    /// stage, in one transaction: the parts are recorded claimed by `owner` for `lease`, with the
    /// table and columns of the first file (their parent) and their rows per batch, and the files
    /// end `split` with the error (and the statement) that made it so. Returns false, recording
    /// nothing, when `owner` no longer holds every one of the files (a lease expired and another
    /// took it).
    async fn split_file(&self, split: &FileSplit<'_>, owner: &str, lease: Duration) -> Result<bool>;

    /// Hands claimed files back after a failure that is not the data's; they are retried after
    /// `delay`. `unclassified` counts one more COPY failure of no known kind on each.
    async fn release_files(
        &self,
        owner: &str,
        ids: &[Uuid],
        error: &str,
        delay: Duration,
        unclassified: bool,
    ) -> Result<()>;

    /// Marks pending files older than `age` abandoned: their batch was never acknowledged.
    async fn abandon_pending(&self, age: Duration) -> Result<u64>;

    /// Per table: the files waiting to load (staged or loading) and the oldest of them, and
    /// when a file last loaded.
    async fn load_state(&self) -> Result<Vec<TableLoadState>>;

    /// Which of `paths` the ledger knows: as files (in any status), or as a batch's rejects.
    async fn known_paths(&self, paths: &[String]) -> Result<std::collections::BTreeSet<String>>;

    async fn get_batch(&self, id: Uuid) -> Result<Option<BatchRecord>>;

    /// Batches newest first; `files`, `copies` and `schema_changes` are left empty in lists.
    async fn list_batches(&self, filter: &BatchFilter) -> Result<Vec<BatchRecord>>;

    /// Rejects of a batch that `filter` selects, by index after `after`, at most `limit`: whole,
    /// or where their lines are in the stage (read them with [`crate::rejects`]).
    async fn list_rejects(
        &self,
        batch: Uuid,
        filter: &RejectFilter,
        after: Option<u64>,
        limit: u32,
    ) -> Result<Vec<RejectEntry>>;

    /// The errors of up to `limit` rejects of batches sent to `table` since `since` (by `partner`
    /// only, when given), each with the partner that sent it: the raw material of the drift report.
    async fn reject_errors(
        &self,
        table: &str,
        since: chrono::DateTime<chrono::Utc>,
        partner: Option<&Partner>,
        limit: u32,
    ) -> Result<Vec<(Partner, Vec<ErrorKey>)>>;

    /// Records a new API key; `Conflict` if its id is taken.
    async fn insert_key(&self, key: &ApiKey) -> Result<()>;

    async fn get_key(&self, id: &str) -> Result<Option<ApiKey>>;

    /// Every key, revoked ones included, oldest first.
    async fn list_keys(&self) -> Result<Vec<ApiKey>>;

    /// Revokes a key (revoking twice keeps the first time); `None` if there is no such key.
    async fn revoke_key(&self, id: &str) -> Result<Option<ApiKey>>;

    /// Sets a key's last use to now.
    async fn touch_key(&self, id: &str) -> Result<()>;

    /// Whether any key was ever created (revoked keys count: the gateway stays closed).
    async fn any_keys(&self) -> Result<bool>;

    /// Takes an `Idempotency-Key` for a request, or says who holds it: a key nobody holds, one
    /// older than the window, or one whose holder's lease ran out before it committed is taken.
    async fn claim_idempotency(&self, claim: &IdempotencyClaim) -> Result<IdempotencyState>;

    /// Lets go of a key this request holds whose batch was never committed, so a retry may take it.
    async fn release_idempotency(&self, partner: &Partner, key: &str, batch_id: Uuid) -> Result<()>;

    /// Lets go of every uncommitted key `owner` holds: for a replica starting under a name whose
    /// previous holder is dead. Call before serving requests.
    async fn release_idempotency_of(&self, owner: &str) -> Result<u64>;

    /// Forgets keys older than `window` whose lease is over; returns how many.
    async fn sweep_idempotency(&self, window: Duration) -> Result<u64>;

    /// Takes record `indexes` of `claim.original` for replay batch `claim.replay`, all or none:
    /// each must be a reject of the original that no other replay holds (one stored and not
    /// failed, whose record was not rejected again, or one still within its lease). With `dry`
    /// nothing is kept.
    async fn claim_replay(&self, claim: &ReplayClaim, dry: bool) -> Result<Result<(), ReplayRefusal>>;

    /// Lets go of what replay batch `replay` holds, if it was never stored.
    async fn release_replay(&self, replay: Uuid) -> Result<()>;

    /// Removes up to `limit` final batches received more than `keep` ago, with their rejects
    /// and their place in files, then the finished files made more than `keep` ago that no batch
    /// needs any more (their stage objects become orphans for the stage sweeper); returns how
    /// many batches. A batch that is not final, and a file an open batch still needs, stay.
    async fn purge_batches(&self, keep: Duration, limit: u32) -> Result<u64>;
}

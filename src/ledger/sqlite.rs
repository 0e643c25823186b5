//! SQLite ledger: the embedded default, one file next to the stage. One process owns it, so
//! claims need no row locks and DDL needs no lock beyond the catalog's in-process one.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Pool, Sqlite};
use uuid::Uuid;

use super::store::{Dialect, SqlLedger};
use super::{DdlGuard, LedgerError, Result};

/// Ledger in a SQLite file. Writes go through one connection so that transactions never fight
/// over the write lock; reads use a small read-only pool alongside (WAL mode).
pub type SqliteLedger = SqlLedger<Sqlite>;

impl SqlLedger<Sqlite> {
    /// Opens (creating if needed) and migrates the ledger at `url` (`sqlite://path`).
    pub async fn connect(url: &str) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(LedgerError::Unavailable)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a commit that answered is on disk, which is what a 202 promises.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(false);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options.clone())
            .await
            .map_err(LedgerError::Unavailable)?;
        sqlx::migrate!("./migrations/sqlite").run(&writer).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options.read_only(true))
            .await
            .map_err(LedgerError::Unavailable)?;
        Ok(SqlLedger::new(writer, reader))
    }
}

/// The clock with milliseconds, in the same sortable RFC 3339 shape as bound times.
const SQLITE_NOW: &str = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";

impl Dialect for Sqlite {
    type Id = String;
    type Time = String;

    const BACKEND: &'static str = "sqlite";
    const NOW: &'static str = SQLITE_NOW;
    const FOR_UPDATE: &'static str = "";
    const SKIP_LOCKED: &'static str = "";

    fn now_plus(param: &str) -> String {
        format!("strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '+' || {param} || ' seconds')")
    }

    fn now_minus(param: &str) -> String {
        format!("strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-' || {param} || ' seconds')")
    }

    fn reject_rows(param: &str) -> String {
        // `->` gives JSON text (a string quoted, a JSON null `null`; NULL for a missing element),
        // `->>` the SQL value.
        format!(
            "value->>'$[0]', value->>'$[1]', value->>'$[2]', value->'$[3]', value->>'$[4]', value->'$[5]'
             FROM json_each({param})"
        )
    }

    fn any_error_with(conditions: &[(&'static str, &str)]) -> String {
        let each: Vec<String> = conditions
            .iter()
            .map(|(field, param)| format!("({param} IS NULL OR json_extract(value, '$.{field}') = {param})"))
            .collect();
        format!("EXISTS (SELECT 1 FROM json_each(errors) WHERE {})", each.join(" AND "))
    }

    fn id(id: Uuid) -> String {
        id.to_string()
    }

    fn uuid(id: String) -> Result<Uuid> {
        Uuid::parse_str(&id).map_err(|e| LedgerError::Corrupt(format!("bad id {id:?}: {e}")))
    }

    /// Times as sortable text (UTC, microseconds, `Z`).
    fn time(at: DateTime<Utc>) -> String {
        at.to_rfc3339_opts(SecondsFormat::Micros, true)
    }

    fn datetime(at: String) -> Result<DateTime<Utc>> {
        DateTime::parse_from_rfc3339(&at)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| LedgerError::Corrupt(format!("bad timestamp {at:?}: {e}")))
    }

    async fn lock_ddl(_pool: &Pool<Sqlite>, _table: &str) -> Result<DdlGuard> {
        Ok(DdlGuard::none())
    }
}

//! Postgres ledger: shared by every replica, so claims and DDL are serialised by row and advisory
//! locks rather than by a single writer as in SQLite.
//!
//! Times the ledger stamps itself (leases, delays, `staged_at`, `loaded_at`...) come from the
//! database clock, so that replicas with skewed clocks still agree on when a lease expires.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Pool, Postgres};
use uuid::Uuid;

use super::store::{Dialect, SqlLedger};
use super::{DdlGuard, LedgerError, Result};

/// Ledger in a Postgres database (the schema is the connection's `search_path`).
pub type PostgresLedger = SqlLedger<Postgres>;

impl SqlLedger<Postgres> {
    /// Connects to `url` (`postgres://` or `postgresql://`) and migrates the ledger schema.
    pub async fn connect(url: &str, max_connections: u32, acquire_timeout: Duration) -> Result<Self> {
        let options = PgConnectOptions::from_str(url).map_err(LedgerError::Unavailable)?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(acquire_timeout)
            .connect_with(options)
            .await
            .map_err(LedgerError::Unavailable)?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        Ok(SqlLedger::new(pool.clone(), pool))
    }
}

impl Dialect for Postgres {
    type Id = Uuid;
    type Time = DateTime<Utc>;

    const BACKEND: &'static str = "postgres";
    const NOW: &'static str = "now()";
    const FOR_UPDATE: &'static str = " FOR UPDATE";
    const SKIP_LOCKED: &'static str = " FOR UPDATE SKIP LOCKED";

    fn now_plus(param: &str) -> String {
        format!("now() + make_interval(secs => {param})")
    }

    fn now_minus(param: &str) -> String {
        format!("now() - make_interval(secs => {param})")
    }

    fn reject_rows(param: &str) -> String {
        // `json`, not `jsonb`: an element's text stays as sent (jsonb would reorder a record's keys);
        // `e->5` is NULL when the element has no record.
        format!(
            "(e->>0)::bigint, (e->>1)::bigint, (e->>2)::bigint, (e->3)::text, e->>4, (e->5)::text
             FROM json_array_elements({param}::json) AS r(e)"
        )
    }

    fn any_error_with(conditions: &[(&'static str, &str)]) -> String {
        let each: Vec<String> = conditions
            .iter()
            .map(|(field, param)| format!("({param} IS NULL OR e.value->>'{field}' = {param})"))
            .collect();
        format!("EXISTS (SELECT 1 FROM jsonb_array_elements(errors::jsonb) AS e(value) WHERE {})", each.join(" AND "))
    }

    fn id(id: Uuid) -> Uuid {
        id
    }

    fn uuid(id: Uuid) -> Result<Uuid> {
        Ok(id)
    }

    fn time(at: DateTime<Utc>) -> DateTime<Utc> {
        at
    }

    fn datetime(at: DateTime<Utc>) -> Result<DateTime<Utc>> {
        Ok(at)
    }

    async fn lock_ddl(pool: &Pool<Postgres>, table: &str) -> Result<DdlGuard> {
        let mut tx = pool.begin().await?;
        // Transaction-scoped: dropping the guard rolls back and so releases the lock, even if the
        // holder panics; a lost connection releases it on the server side.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind(format!("snowgate-ddl:{table}"))
            .execute(&mut *tx)
            .await?;
        Ok(DdlGuard::holding(Box::new(tx)))
    }
}

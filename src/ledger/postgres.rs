//! Postgres ledger: shared by every replica, so claims and DDL are serialised by row and advisory
//! locks rather than by a single writer as in SQLite.
//!
//! Times the ledger stamps itself (leases, delays, `staged_at`, `loaded_at`...) come from the
//! database clock, so that replicas with skewed clocks still agree on when a lease expires.

use std::collections::HashSet;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{PgPool, Postgres, QueryBuilder, Row, Transaction};
use uuid::Uuid;

use super::codec::{from_json, parse, reject_stage, to_json};
use super::*;

/// Postgres allows 65535 bind parameters per statement; rows per bulk insert stay well under it.
const REJECTS_PER_INSERT: usize = 10_000; // 5 parameters a row
const PARTS_PER_INSERT: usize = 20_000; // 3 parameters a row

/// Ledger in a Postgres database (the schema is the connection's `search_path`).
pub struct PostgresLedger {
    pool: PgPool,
}

impl PostgresLedger {
    /// Connects to `url` (`postgres://` or `postgresql://`) and migrates the ledger schema.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| LedgerError::Unavailable(format!("invalid postgres url: {e}")))?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options)
            .await
            .map_err(|e| LedgerError::Unavailable(e.to_string()))?;
        sqlx::migrate!("./migrations/postgres")
            .run(&pool)
            .await
            .map_err(|e| LedgerError::Unavailable(format!("migration failed: {e}")))?;
        Ok(PostgresLedger { pool })
    }
}

fn get<'r, T>(row: &'r PgRow, column: &str) -> Result<T>
where
    T: sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>,
{
    row.try_get(column).map_err(|e| LedgerError::Corrupt(format!("column {column}: {e}")))
}

fn count<T: TryFrom<i64>>(row: &PgRow, column: &str) -> Result<T> {
    let n: i64 = get(row, column)?;
    T::try_from(n).map_err(|_| LedgerError::Corrupt(format!("{column} out of range: {n}")))
}

/// Counts are `bigint`; no real count comes near the top of `u64`, so saturating is enough.
fn int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A duration as `make_interval` seconds; one chrono cannot hold falls back as in SQLite.
fn seconds(duration: Duration, fallback: Duration) -> f64 {
    chrono::Duration::from_std(duration).map_or(fallback, |_| duration).as_secs_f64()
}

fn table_from_row(row: &PgRow) -> Result<TableRecord> {
    Ok(TableRecord {
        name: get(row, "name")?,
        drift: parse(get::<&str>(row, "drift")?)?,
        columns: from_json(get::<&str>(row, "columns")?)?,
        created_at: get(row, "created_at")?,
        updated_at: get(row, "updated_at")?,
    })
}

fn batch_from_row(row: &PgRow) -> Result<BatchRecord> {
    Ok(BatchRecord {
        id: get(row, "id")?,
        table: get(row, "table_name")?,
        partner: get(row, "partner")?,
        status: parse(get::<&str>(row, "status")?)?,
        counts: Counts {
            received: count(row, "received")?,
            accepted: count(row, "accepted")?,
            rejected: count(row, "rejected")?,
            loaded: count(row, "loaded")?,
        },
        rejects_by_code: from_json(get::<&str>(row, "rejects_by_code")?)?,
        schema_changes: Vec::new(),
        files: Vec::new(),
        received_at: get(row, "received_at")?,
        staged_at: get(row, "staged_at")?,
        loaded_at: get(row, "loaded_at")?,
        error: get(row, "error")?,
    })
}

async fn insert_batch(tx: &mut Transaction<'_, Postgres>, batch: &NewBatch) -> Result<()> {
    let status = if batch.counts.accepted == 0 { BatchStatus::Rejected } else { BatchStatus::Staged };
    sqlx::query(
        "INSERT INTO batches (id, table_name, partner, status, received, accepted, rejected, loaded,
             rejects_by_code, received_at, staged_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, 0, $8, $9, CASE WHEN $10 THEN now() END)",
    )
    .bind(batch.id)
    .bind(&batch.table)
    .bind(&batch.partner)
    .bind(status.as_str())
    .bind(int(batch.counts.received))
    .bind(int(batch.counts.accepted))
    .bind(int(batch.counts.rejected))
    .bind(to_json(&batch.rejects_by_code))
    .bind(batch.received_at)
    .bind(status == BatchStatus::Staged)
    .execute(&mut **tx)
    .await?;
    for chunk in batch.rejects.chunks(REJECTS_PER_INSERT) {
        let mut insert = QueryBuilder::<Postgres>::new("INSERT INTO rejects (batch_id, idx, record, errors, stage) ");
        insert.push_values(chunk, |mut row, reject| {
            row.push_bind(batch.id)
                .push_bind(int(reject.index))
                .push_bind(to_json(&reject.record))
                .push_bind(to_json(&reject.errors))
                .push_bind(reject.stage.as_str());
        });
        insert.build().execute(&mut **tx).await?;
    }
    sqlx::query(
        "UPDATE files SET status = 'staged'
         WHERE status = 'pending' AND id IN (SELECT file_id FROM file_batches WHERE batch_id = $1)",
    )
    .bind(batch.id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Locks, in id order, the batches with rows in `files`, and returns their ids.
///
/// The fixed order keeps replicas that touch the same batches from deadlocking, and taking the
/// locks in a statement of their own makes the next statement's snapshot see the file updates of
/// whichever replica held them before: without it two replicas completing the last two files of
/// one batch could each miss the other's and leave the batch `loading` forever.
async fn lock_batches(tx: &mut Transaction<'_, Postgres>, files: &[Uuid]) -> Result<Vec<Uuid>> {
    let rows = sqlx::query(
        "SELECT id FROM batches WHERE id IN (SELECT batch_id FROM file_batches WHERE file_id = ANY($1))
         ORDER BY id FOR UPDATE",
    )
    .bind(files)
    .fetch_all(&mut **tx)
    .await?;
    rows.iter().map(|row| get(row, "id")).collect()
}

/// Recomputes `loaded` and the status of `batches` from the state of their files.
async fn reconcile_batches(tx: &mut Transaction<'_, Postgres>, batches: &[Uuid]) -> Result<()> {
    sqlx::query(
        "UPDATE batches b SET loaded = s.loaded,
             status = CASE WHEN s.open > 0 THEN 'loading' WHEN s.error IS NOT NULL THEN 'failed' ELSE 'loaded' END,
             error = s.error,
             loaded_at = CASE WHEN s.open = 0 AND s.error IS NULL THEN now() ELSE b.loaded_at END
         FROM (
             SELECT fb.batch_id,
                 COALESCE(SUM(CASE WHEN f.status = 'loaded' THEN fb.rows ELSE 0 END), 0)::bigint AS loaded,
                 COUNT(*) FILTER (WHERE f.status NOT IN ('loaded', 'failed')) AS open,
                 MAX(CASE WHEN f.status = 'failed' THEN f.error END) AS error
             FROM file_batches fb JOIN files f ON f.id = fb.file_id
             WHERE fb.batch_id = ANY($1)
             GROUP BY fb.batch_id) s
         WHERE b.id = s.batch_id AND b.status NOT IN ('rejected')",
    )
    .bind(batches)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[async_trait]
impl Ledger for PostgresLedger {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn put_table(&self, table: &TableRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO tables (name, drift, columns, created_at, updated_at) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (name) DO UPDATE SET drift = excluded.drift, columns = excluded.columns,
                 updated_at = excluded.updated_at",
        )
        .bind(&table.name)
        .bind(table.drift.as_str())
        .bind(to_json(&table.columns))
        .bind(table.created_at)
        .bind(table.updated_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn get_table(&self, name: &str) -> Result<Option<TableRecord>> {
        let row = sqlx::query("SELECT * FROM tables WHERE name = $1").bind(name).fetch_optional(&self.pool).await?;
        row.as_ref().map(table_from_row).transpose()
    }

    async fn list_tables(&self) -> Result<Vec<TableRecord>> {
        let rows = sqlx::query("SELECT * FROM tables ORDER BY name").fetch_all(&self.pool).await?;
        rows.iter().map(table_from_row).collect()
    }

    async fn add_columns(&self, table: &str, columns: &[Column], batch_id: Option<Uuid>) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        // FOR UPDATE: two replicas appending at once must not overwrite each other's columns.
        let row = sqlx::query("SELECT columns FROM tables WHERE name = $1 FOR UPDATE")
            .bind(table)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            return Err(LedgerError::Query(format!("table {table} is not in the ledger")));
        };
        let mut known: Vec<Column> = from_json(get::<&str>(&row, "columns")?)?;
        for column in columns {
            if known.iter().any(|c| c.name == column.name) {
                continue;
            }
            known.push(column.clone());
            sqlx::query(
                "INSERT INTO schema_changes (table_name, column_name, column_type, batch_id, at)
                 VALUES ($1, $2, $3, $4, now())",
            )
            .bind(table)
            .bind(&column.name)
            .bind(column.ty.to_string())
            .bind(batch_id)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query("UPDATE tables SET columns = $1, updated_at = now() WHERE name = $2")
            .bind(to_json(&known))
            .bind(table)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn lock_ddl(&self, table: &str) -> Result<DdlGuard> {
        let mut tx = self.pool.begin().await?;
        // Transaction-scoped: dropping the guard rolls back and so releases the lock, even if the
        // holder panics; a lost connection releases it on the server side.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind(format!("snowgate-ddl:{table}"))
            .execute(&mut *tx)
            .await?;
        Ok(DdlGuard::holding(Box::new(tx)))
    }

    async fn schema_changes(&self, table: &str) -> Result<Vec<SchemaChange>> {
        let rows = sqlx::query("SELECT * FROM schema_changes WHERE table_name = $1 ORDER BY id")
            .bind(table)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(SchemaChange {
                    table: get(row, "table_name")?,
                    column: get(row, "column_name")?,
                    ty: get(row, "column_type")?,
                    batch_id: get(row, "batch_id")?,
                    at: get(row, "at")?,
                })
            })
            .collect()
    }

    async fn commit_stage(&self, commit: &StageCommit) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        if let Some(file) = &commit.file {
            let status = if commit.pending { FileStatus::Pending } else { FileStatus::Staged };
            sqlx::query(
                "INSERT INTO files (id, table_name, path, rows, bytes, status, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, now())",
            )
            .bind(file.id)
            .bind(&file.table)
            .bind(&file.path)
            .bind(int(file.rows))
            .bind(int(file.bytes))
            .bind(status.as_str())
            .execute(&mut *tx)
            .await?;
            for chunk in commit.parts.chunks(PARTS_PER_INSERT) {
                let mut insert = QueryBuilder::<Postgres>::new("INSERT INTO file_batches (file_id, batch_id, rows) ");
                insert.push_values(chunk, |mut row, (batch, rows)| {
                    row.push_bind(file.id).push_bind(*batch).push_bind(int(*rows));
                });
                insert.build().execute(&mut *tx).await?;
            }
        }
        for batch in &commit.completed {
            insert_batch(&mut tx, batch).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn claim_files(&self, owner: &str, lease: Duration, limit: usize) -> Result<Vec<ClaimedFile>> {
        let lease = seconds(lease, Duration::from_secs(300));
        let mut tx = self.pool.begin().await?;
        // SKIP LOCKED: a file another replica is claiming right now is passed over, never waited
        // for; a row whose claim committed meanwhile is re-checked against the WHERE and dropped.
        let rows = sqlx::query(
            "WITH picked AS MATERIALIZED (
                 SELECT id FROM files
                 WHERE (status = 'staged' AND (not_before IS NULL OR not_before <= now()))
                    OR (status = 'loading' AND lease_until < now())
                 ORDER BY created_at LIMIT $3
                 FOR UPDATE SKIP LOCKED)
             UPDATE files f SET status = 'loading', claimed_by = $1,
                 lease_until = now() + make_interval(secs => $2), attempts = f.attempts + 1
             FROM picked WHERE f.id = picked.id
             RETURNING f.id, f.table_name, f.path, f.rows, f.attempts",
        )
        .bind(owner)
        .bind(lease)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&mut *tx)
        .await?;
        let mut claimed = Vec::with_capacity(rows.len());
        for row in &rows {
            claimed.push(ClaimedFile {
                id: get(row, "id")?,
                table: get(row, "table_name")?,
                path: get(row, "path")?,
                rows: count(row, "rows")?,
                attempts: count(row, "attempts")?,
            });
        }
        if !claimed.is_empty() {
            let ids: Vec<Uuid> = claimed.iter().map(|f| f.id).collect();
            let batches = lock_batches(&mut tx, &ids).await?;
            sqlx::query("UPDATE batches SET status = 'loading' WHERE status = 'staged' AND id = ANY($1)")
                .bind(&batches)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        claimed.sort_by(|a, b| a.table.cmp(&b.table).then(a.path.cmp(&b.path)));
        Ok(claimed)
    }

    async fn complete_files(&self, outcomes: &[FileOutcome]) -> Result<()> {
        // One set-based update; when a file appears twice its last outcome wins, as it would if
        // the outcomes were applied one by one.
        let mut seen = HashSet::new();
        let (mut ids, mut statuses, mut rows, mut query_ids, mut errors) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for outcome in outcomes.iter().rev() {
            let (id, status, loaded, query_id, error) = match outcome {
                FileOutcome::Loaded { id, rows, query_id } => {
                    (*id, FileStatus::Loaded, Some(int(*rows)), query_id, None)
                }
                FileOutcome::Failed { id, error, query_id } => (*id, FileStatus::Failed, None, query_id, Some(error)),
            };
            if seen.insert(id) {
                ids.push(id);
                statuses.push(status.as_str());
                rows.push(loaded);
                query_ids.push(query_id.clone());
                errors.push(error.cloned());
            }
        }
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE files f SET status = o.status, rows_loaded = o.rows, query_id = o.query_id, error = o.error,
                 claimed_by = NULL, lease_until = NULL,
                 loaded_at = CASE WHEN o.status = 'loaded' THEN now() ELSE f.loaded_at END
             FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::text[], $5::text[])
                 AS o (id, status, rows, query_id, error)
             WHERE f.id = o.id",
        )
        .bind(&ids)
        .bind(&statuses)
        .bind(&rows)
        .bind(&query_ids)
        .bind(&errors)
        .execute(&mut *tx)
        .await?;
        let batches = lock_batches(&mut tx, &ids).await?;
        reconcile_batches(&mut tx, &batches).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn release_files(&self, ids: &[Uuid], error: &str, delay: Duration) -> Result<()> {
        sqlx::query(
            "UPDATE files SET status = 'staged', claimed_by = NULL, lease_until = NULL,
                 not_before = now() + make_interval(secs => $1), error = $2
             WHERE id = ANY($3) AND status = 'loading'",
        )
        .bind(seconds(delay, Duration::from_secs(1)))
        .bind(error)
        .bind(ids)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn abandon_pending(&self, age: Duration) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE files SET status = 'abandoned'
             WHERE status = 'pending' AND created_at < now() - make_interval(secs => $1)",
        )
        .bind(seconds(age, Duration::from_secs(3600)))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn get_batch(&self, id: Uuid) -> Result<Option<BatchRecord>> {
        let Some(row) = sqlx::query("SELECT * FROM batches WHERE id = $1").bind(id).fetch_optional(&self.pool).await?
        else {
            return Ok(None);
        };
        let mut batch = batch_from_row(&row)?;
        let files = sqlx::query(
            "SELECT f.path, fb.rows, f.status, f.query_id, f.error
             FROM file_batches fb JOIN files f ON f.id = fb.file_id
             WHERE fb.batch_id = $1 ORDER BY f.created_at, f.path",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        for row in &files {
            batch.files.push(BatchFile {
                path: get(row, "path")?,
                rows: count(row, "rows")?,
                status: parse(get::<&str>(row, "status")?)?,
                query_id: get(row, "query_id")?,
                error: get(row, "error")?,
            });
        }
        let changes =
            sqlx::query("SELECT column_name, column_type, at FROM schema_changes WHERE batch_id = $1 ORDER BY id")
                .bind(id)
                .fetch_all(&self.pool)
                .await?;
        for row in &changes {
            batch.schema_changes.push(AppliedChange {
                column: get(row, "column_name")?,
                ty: get(row, "column_type")?,
                at: get(row, "at")?,
            });
        }
        Ok(Some(batch))
    }

    async fn list_batches(&self, filter: &BatchFilter) -> Result<Vec<BatchRecord>> {
        let mut query = QueryBuilder::<Postgres>::new("SELECT * FROM batches WHERE 1 = 1");
        if let Some(table) = &filter.table {
            query.push(" AND table_name = ").push_bind(table.clone());
        }
        if let Some(partner) = &filter.partner {
            query.push(" AND partner = ").push_bind(partner.clone());
        }
        if let Some(status) = filter.status {
            query.push(" AND status = ").push_bind(status.as_str());
        }
        if let Some(since) = filter.since {
            query.push(" AND received_at >= ").push_bind(since);
        }
        if let Some(until) = filter.until {
            query.push(" AND received_at < ").push_bind(until);
        }
        if let Some(after) = filter.after {
            query.push(" AND id < ").push_bind(after);
        }
        query.push(" ORDER BY id DESC LIMIT ").push_bind(i64::from(filter.limit.unwrap_or(100).clamp(1, 1000)));
        let rows = query.build().fetch_all(&self.pool).await?;
        rows.iter().map(batch_from_row).collect()
    }

    async fn list_rejects(&self, batch: Uuid, after: Option<u64>, limit: u32) -> Result<Vec<Reject>> {
        let rows = sqlx::query(
            "SELECT idx, record, errors, stage FROM rejects WHERE batch_id = $1 AND idx > $2 ORDER BY idx LIMIT $3",
        )
        .bind(batch)
        .bind(after.map(int).unwrap_or(-1))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Reject {
                    index: count(row, "idx")?,
                    record: from_json(get::<&str>(row, "record")?)?,
                    errors: from_json(get::<&str>(row, "errors")?)?,
                    stage: reject_stage(get::<&str>(row, "stage")?),
                })
            })
            .collect()
    }
}

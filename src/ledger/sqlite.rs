//! SQLite ledger: the embedded default, one file next to the stage.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous};
use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool, Transaction};
use uuid::Uuid;

use super::codec::{from_json, parse, reject_stage, to_json};
use super::*;

/// Ledger in a SQLite file. Writes go through one connection so that transactions never fight
/// over the write lock; reads use a small pool alongside (WAL mode).
pub struct SqliteLedger {
    writer: SqlitePool,
    reader: SqlitePool,
}

impl SqliteLedger {
    /// Opens (creating if needed) and migrates the ledger at `url` (`sqlite://path`).
    pub async fn connect(url: &str) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| LedgerError::Unavailable(format!("invalid sqlite url: {e}")))?
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
            .map_err(|e| LedgerError::Unavailable(e.to_string()))?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&writer)
            .await
            .map_err(|e| LedgerError::Unavailable(format!("migration failed: {e}")))?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options.read_only(true))
            .await
            .map_err(|e| LedgerError::Unavailable(e.to_string()))?;
        Ok(SqliteLedger { writer, reader })
    }
}

/// Times as sortable text.
pub(crate) fn ts(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn parse_ts(text: &str) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| LedgerError::Corrupt(format!("bad timestamp {text:?}: {e}")))
}

fn parse_opt_ts(text: Option<String>) -> Result<Option<DateTime<Utc>>> {
    text.as_deref().map(parse_ts).transpose()
}

fn parse_uuid(text: &str) -> Result<Uuid> {
    Uuid::parse_str(text).map_err(|e| LedgerError::Corrupt(format!("bad id {text:?}: {e}")))
}

fn table_from_row(row: &SqliteRow) -> Result<TableRecord> {
    Ok(TableRecord {
        name: row.get("name"),
        drift: parse(row.get::<&str, _>("drift"))?,
        columns: from_json(row.get::<&str, _>("columns"))?,
        created_at: parse_ts(row.get::<&str, _>("created_at"))?,
        updated_at: parse_ts(row.get::<&str, _>("updated_at"))?,
    })
}

fn batch_from_row(row: &SqliteRow) -> Result<BatchRecord> {
    Ok(BatchRecord {
        id: parse_uuid(row.get::<&str, _>("id"))?,
        table: row.get("table_name"),
        partner: row.get("partner"),
        status: parse(row.get::<&str, _>("status"))?,
        counts: Counts {
            received: row.get::<i64, _>("received") as u64,
            accepted: row.get::<i64, _>("accepted") as u64,
            rejected: row.get::<i64, _>("rejected") as u64,
            loaded: row.get::<i64, _>("loaded") as u64,
        },
        rejects_by_code: from_json(row.get::<&str, _>("rejects_by_code"))?,
        schema_changes: Vec::new(),
        files: Vec::new(),
        received_at: parse_ts(row.get::<&str, _>("received_at"))?,
        staged_at: parse_opt_ts(row.get("staged_at"))?,
        loaded_at: parse_opt_ts(row.get("loaded_at"))?,
        error: row.get("error"),
    })
}

async fn insert_batch(tx: &mut Transaction<'_, Sqlite>, batch: &NewBatch, now: &str) -> Result<()> {
    let status = if batch.counts.accepted == 0 { BatchStatus::Rejected } else { BatchStatus::Staged };
    sqlx::query(
        "INSERT INTO batches (id, table_name, partner, status, received, accepted, rejected, loaded,
             rejects_by_code, received_at, staged_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?)",
    )
    .bind(batch.id.to_string())
    .bind(&batch.table)
    .bind(&batch.partner)
    .bind(status.as_str())
    .bind(batch.counts.received as i64)
    .bind(batch.counts.accepted as i64)
    .bind(batch.counts.rejected as i64)
    .bind(to_json(&batch.rejects_by_code))
    .bind(ts(batch.received_at))
    .bind((status == BatchStatus::Staged).then_some(now))
    .execute(&mut **tx)
    .await?;
    // 5 parameters a row; SQLite allows 32766 per statement.
    for chunk in batch.rejects.chunks(1000) {
        let mut insert = QueryBuilder::<Sqlite>::new("INSERT INTO rejects (batch_id, idx, record, errors, stage) ");
        insert.push_values(chunk, |mut row, reject| {
            row.push_bind(batch.id.to_string())
                .push_bind(reject.index as i64)
                .push_bind(to_json(&reject.record))
                .push_bind(to_json(&reject.errors))
                .push_bind(reject.stage.as_str());
        });
        insert.build().execute(&mut **tx).await?;
    }
    sqlx::query(
        "UPDATE files SET status = 'staged'
         WHERE status = 'pending' AND id IN (SELECT file_id FROM file_batches WHERE batch_id = ?)",
    )
    .bind(batch.id.to_string())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Recomputes `loaded` and the status of a batch from the state of its files.
async fn reconcile_batch(tx: &mut Transaction<'_, Sqlite>, batch_id: &str, now: &str) -> Result<()> {
    let row = sqlx::query(
        "SELECT
             COALESCE(SUM(CASE WHEN f.status = 'loaded' THEN fb.rows ELSE 0 END), 0) AS loaded,
             COALESCE(SUM(CASE WHEN f.status IN ('loaded', 'failed') THEN 0 ELSE 1 END), 0) AS open,
             MAX(CASE WHEN f.status = 'failed' THEN f.error END) AS error
         FROM file_batches fb JOIN files f ON f.id = fb.file_id
         WHERE fb.batch_id = ?",
    )
    .bind(batch_id)
    .fetch_one(&mut **tx)
    .await?;
    let loaded: i64 = row.get("loaded");
    let open: i64 = row.get("open");
    let error: Option<String> = row.get("error");
    let status = match (open, &error) {
        (0, Some(_)) => BatchStatus::Failed,
        (0, None) => BatchStatus::Loaded,
        _ => BatchStatus::Loading,
    };
    sqlx::query(
        "UPDATE batches SET loaded = ?, status = ?, error = ?,
             loaded_at = CASE WHEN ? THEN ? ELSE loaded_at END
         WHERE id = ? AND status NOT IN ('rejected')",
    )
    .bind(loaded)
    .bind(status.as_str())
    .bind(error)
    .bind(status == BatchStatus::Loaded)
    .bind(now)
    .bind(batch_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[async_trait]
impl Ledger for SqliteLedger {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

    async fn put_table(&self, table: &TableRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO tables (name, drift, columns, created_at, updated_at) VALUES (?, ?, ?, ?, ?)
             ON CONFLICT (name) DO UPDATE SET drift = excluded.drift, columns = excluded.columns,
                 updated_at = excluded.updated_at",
        )
        .bind(&table.name)
        .bind(table.drift.as_str())
        .bind(to_json(&table.columns))
        .bind(ts(table.created_at))
        .bind(ts(table.updated_at))
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn get_table(&self, name: &str) -> Result<Option<TableRecord>> {
        let row = sqlx::query("SELECT * FROM tables WHERE name = ?").bind(name).fetch_optional(&self.reader).await?;
        row.as_ref().map(table_from_row).transpose()
    }

    async fn list_tables(&self) -> Result<Vec<TableRecord>> {
        let rows = sqlx::query("SELECT * FROM tables ORDER BY name").fetch_all(&self.reader).await?;
        rows.iter().map(table_from_row).collect()
    }

    async fn add_columns(&self, table: &str, columns: &[Column], batch_id: Option<Uuid>) -> Result<()> {
        let now = ts(Utc::now());
        let mut tx = self.writer.begin().await?;
        let row = sqlx::query("SELECT columns FROM tables WHERE name = ?").bind(table).fetch_optional(&mut *tx).await?;
        let Some(row) = row else {
            return Err(LedgerError::Query(format!("table {table} is not in the ledger")));
        };
        let mut known: Vec<Column> = from_json(row.get::<&str, _>("columns"))?;
        for column in columns {
            if known.iter().any(|c| c.name == column.name) {
                continue;
            }
            known.push(column.clone());
            sqlx::query(
                "INSERT INTO schema_changes (table_name, column_name, column_type, batch_id, at) VALUES (?, ?, ?, ?, ?)",
            )
            .bind(table)
            .bind(&column.name)
            .bind(column.ty.to_string())
            .bind(batch_id.map(|b| b.to_string()))
            .bind(&now)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query("UPDATE tables SET columns = ?, updated_at = ? WHERE name = ?")
            .bind(to_json(&known))
            .bind(&now)
            .bind(table)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn lock_ddl(&self, _table: &str) -> Result<DdlGuard> {
        // One process owns a SQLite ledger; the catalog's in-process lock already serialises DDL.
        Ok(DdlGuard::none())
    }

    async fn schema_changes(&self, table: &str) -> Result<Vec<SchemaChange>> {
        let rows = sqlx::query("SELECT * FROM schema_changes WHERE table_name = ? ORDER BY id")
            .bind(table)
            .fetch_all(&self.reader)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(SchemaChange {
                    table: row.get("table_name"),
                    column: row.get("column_name"),
                    ty: row.get("column_type"),
                    batch_id: row.get::<Option<&str>, _>("batch_id").map(parse_uuid).transpose()?,
                    at: parse_ts(row.get::<&str, _>("at"))?,
                })
            })
            .collect()
    }

    async fn commit_stage(&self, commit: &StageCommit) -> Result<()> {
        let now = ts(Utc::now());
        let mut tx = self.writer.begin().await?;
        if let Some(file) = &commit.file {
            let status = if commit.pending { FileStatus::Pending } else { FileStatus::Staged };
            sqlx::query(
                "INSERT INTO files (id, table_name, path, rows, bytes, status, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(file.id.to_string())
            .bind(&file.table)
            .bind(&file.path)
            .bind(file.rows as i64)
            .bind(file.bytes as i64)
            .bind(status.as_str())
            .bind(&now)
            .execute(&mut *tx)
            .await?;
            for chunk in commit.parts.chunks(1000) {
                let mut insert = QueryBuilder::<Sqlite>::new("INSERT INTO file_batches (file_id, batch_id, rows) ");
                insert.push_values(chunk, |mut row, (batch, rows)| {
                    row.push_bind(file.id.to_string()).push_bind(batch.to_string()).push_bind(*rows as i64);
                });
                insert.build().execute(&mut *tx).await?;
            }
        }
        for batch in &commit.completed {
            insert_batch(&mut tx, batch, &now).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn claim_files(&self, owner: &str, lease: Duration, limit: usize) -> Result<Vec<ClaimedFile>> {
        let now = Utc::now();
        let lease_until = ts(now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::minutes(5)));
        let now = ts(now);
        let mut tx = self.writer.begin().await?;
        let rows = sqlx::query(
            "UPDATE files SET status = 'loading', claimed_by = ?, lease_until = ?, attempts = attempts + 1
             WHERE id IN (
                 SELECT id FROM files
                 WHERE (status = 'staged' AND (not_before IS NULL OR not_before <= ?))
                    OR (status = 'loading' AND lease_until < ?)
                 ORDER BY created_at LIMIT ?)
             RETURNING id, table_name, path, rows, attempts",
        )
        .bind(owner)
        .bind(&lease_until)
        .bind(&now)
        .bind(&now)
        .bind(limit as i64)
        .fetch_all(&mut *tx)
        .await?;
        let mut claimed = Vec::with_capacity(rows.len());
        for row in &rows {
            claimed.push(ClaimedFile {
                id: parse_uuid(row.get::<&str, _>("id"))?,
                table: row.get("table_name"),
                path: row.get("path"),
                rows: row.get::<i64, _>("rows") as u64,
                attempts: row.get::<i64, _>("attempts") as u32,
            });
        }
        for file in &claimed {
            sqlx::query(
                "UPDATE batches SET status = 'loading'
                 WHERE status = 'staged' AND id IN (SELECT batch_id FROM file_batches WHERE file_id = ?)",
            )
            .bind(file.id.to_string())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        claimed.sort_by(|a, b| a.table.cmp(&b.table).then(a.path.cmp(&b.path)));
        Ok(claimed)
    }

    async fn complete_files(&self, outcomes: &[FileOutcome]) -> Result<()> {
        let now = ts(Utc::now());
        let mut tx = self.writer.begin().await?;
        let mut batches = std::collections::BTreeSet::new();
        for outcome in outcomes {
            let (id, status, rows, query_id, error) = match outcome {
                FileOutcome::Loaded { id, rows, query_id } => {
                    (id, FileStatus::Loaded, Some(*rows as i64), query_id, None)
                }
                FileOutcome::Failed { id, error, query_id } => (id, FileStatus::Failed, None, query_id, Some(error)),
            };
            sqlx::query(
                "UPDATE files SET status = ?, rows_loaded = ?, query_id = ?, error = ?, claimed_by = NULL,
                     lease_until = NULL, loaded_at = CASE WHEN ? = 'loaded' THEN ? ELSE loaded_at END
                 WHERE id = ?",
            )
            .bind(status.as_str())
            .bind(rows)
            .bind(query_id)
            .bind(error)
            .bind(status.as_str())
            .bind(&now)
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
            let ids = sqlx::query("SELECT batch_id FROM file_batches WHERE file_id = ?")
                .bind(id.to_string())
                .fetch_all(&mut *tx)
                .await?;
            batches.extend(ids.iter().map(|r| r.get::<String, _>("batch_id")));
        }
        for batch in &batches {
            reconcile_batch(&mut tx, batch, &now).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn release_files(&self, ids: &[Uuid], error: &str, delay: Duration) -> Result<()> {
        let not_before = ts(Utc::now() + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::seconds(1)));
        let mut tx = self.writer.begin().await?;
        for id in ids {
            sqlx::query(
                "UPDATE files SET status = 'staged', claimed_by = NULL, lease_until = NULL, not_before = ?, error = ?
                 WHERE id = ? AND status = 'loading'",
            )
            .bind(&not_before)
            .bind(error)
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn abandon_pending(&self, age: Duration) -> Result<u64> {
        let cutoff = ts(Utc::now() - chrono::Duration::from_std(age).unwrap_or(chrono::Duration::hours(1)));
        let done = sqlx::query("UPDATE files SET status = 'abandoned' WHERE status = 'pending' AND created_at < ?")
            .bind(cutoff)
            .execute(&self.writer)
            .await?;
        Ok(done.rows_affected())
    }

    async fn get_batch(&self, id: Uuid) -> Result<Option<BatchRecord>> {
        let key = id.to_string();
        let Some(row) =
            sqlx::query("SELECT * FROM batches WHERE id = ?").bind(&key).fetch_optional(&self.reader).await?
        else {
            return Ok(None);
        };
        let mut batch = batch_from_row(&row)?;
        let files = sqlx::query(
            "SELECT f.path, fb.rows, f.status, f.query_id, f.error
             FROM file_batches fb JOIN files f ON f.id = fb.file_id
             WHERE fb.batch_id = ? ORDER BY f.created_at, f.path",
        )
        .bind(&key)
        .fetch_all(&self.reader)
        .await?;
        for row in &files {
            batch.files.push(BatchFile {
                path: row.get("path"),
                rows: row.get::<i64, _>("rows") as u64,
                status: parse(row.get::<&str, _>("status"))?,
                query_id: row.get("query_id"),
                error: row.get("error"),
            });
        }
        let changes =
            sqlx::query("SELECT column_name, column_type, at FROM schema_changes WHERE batch_id = ? ORDER BY id")
                .bind(&key)
                .fetch_all(&self.reader)
                .await?;
        for row in &changes {
            batch.schema_changes.push(AppliedChange {
                column: row.get("column_name"),
                ty: row.get("column_type"),
                at: parse_ts(row.get::<&str, _>("at"))?,
            });
        }
        Ok(Some(batch))
    }

    async fn list_batches(&self, filter: &BatchFilter) -> Result<Vec<BatchRecord>> {
        let mut query = QueryBuilder::<Sqlite>::new("SELECT * FROM batches WHERE 1 = 1");
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
            query.push(" AND received_at >= ").push_bind(ts(since));
        }
        if let Some(until) = filter.until {
            query.push(" AND received_at < ").push_bind(ts(until));
        }
        if let Some(after) = filter.after {
            query.push(" AND id < ").push_bind(after.to_string());
        }
        query.push(" ORDER BY id DESC LIMIT ").push_bind(i64::from(filter.limit.unwrap_or(100).clamp(1, 1000)));
        let rows = query.build().fetch_all(&self.reader).await?;
        rows.iter().map(batch_from_row).collect()
    }

    async fn list_rejects(&self, batch: Uuid, after: Option<u64>, limit: u32) -> Result<Vec<Reject>> {
        let rows = sqlx::query(
            "SELECT idx, record, errors, stage FROM rejects WHERE batch_id = ? AND idx > ? ORDER BY idx LIMIT ?",
        )
        .bind(batch.to_string())
        .bind(after.map(|a| a as i64).unwrap_or(-1))
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Reject {
                    index: row.get::<i64, _>("idx") as u64,
                    record: from_json(row.get::<&str, _>("record"))?,
                    errors: from_json(row.get::<&str, _>("errors"))?,
                    stage: reject_stage(row.get::<&str, _>("stage")),
                })
            })
            .collect()
    }
}

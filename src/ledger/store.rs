//! Every ledger query, written once for every SQL backend. A backend supplies only what its
//! dialect truly does differently ([`Dialect`]): how ids and times are stored, the clock, row
//! locks and claims, and the DDL lock. Status transitions live in [`BatchStatus`].

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Pool, Row, Transaction, Type};
use uuid::Uuid;

use super::{
    ApiKey, AppliedChange, BatchFile, BatchFilter, BatchRecord, BatchStatus, ChangeCause, ClaimedFile, ColumnChange,
    CopyStatement, Counts, DdlGuard, ErrorKey, FileOutcome, FileSplit, FileStatus, IdempotencyClaim, IdempotencyState,
    Ledger, LedgerError, NewRejects, Partner, RejectEntry, RejectFilter, ReplayClaim, ReplayRefusal, Result,
    SchemaChange, StageCommit, TableLoadState, TableRecord,
};
use crate::ingest::reject::{Reject, RejectStage};
use crate::schema::Column;

/// Rows per bulk insert: five parameters a row stays under SQLite's 32766 and Postgres's 65535.
const ROWS_PER_INSERT: usize = 5_000;
/// Ids per `IN (...)` list.
const IDS_PER_LIST: usize = 10_000;
/// Parameters of one `batches` row a commit inserts.
const BATCH_PARAMS: usize = 13;
/// Batches a commit inserts in one statement.
const BATCHES_PER_INSERT: usize = 1_000;
// SQLite takes at most 32,766 parameters in a statement (Postgres 65,535).
const _: () = assert!(BATCH_PARAMS * BATCHES_PER_INSERT <= 32_766);

/// What one SQL backend does differently from the others.
pub trait Dialect: Database {
    /// How ids are stored (`uuid` in Postgres, text in SQLite).
    type Id: for<'q> Encode<'q, Self> + for<'r> Decode<'r, Self> + Type<Self> + Send + Sync + 'static;
    /// How times are stored (`timestamptz` in Postgres, RFC 3339 text in SQLite).
    type Time: for<'q> Encode<'q, Self> + for<'r> Decode<'r, Self> + Type<Self> + Send + Sync + 'static;

    /// Backend name for health reports.
    const BACKEND: &'static str;
    /// The database clock, as an SQL expression.
    const NOW: &'static str;
    /// Appended to a `SELECT` whose rows the transaction is about to change.
    const FOR_UPDATE: &'static str;
    /// Appended to the claim's `SELECT`: rows another replica is claiming are passed over.
    const SKIP_LOCKED: &'static str;

    /// The database clock plus the seconds (a float) in parameter `param` (`$2`).
    fn now_plus(param: &str) -> String;
    /// The database clock minus the seconds (a float) in parameter `param`.
    fn now_minus(param: &str) -> String;
    /// The columns `idx, at, len, errors, stage, record` and the `FROM` of a `SELECT` with a row
    /// per element of the JSON array in parameter `param`, each element `[idx, at, len, errors,
    /// stage]` or `[idx, at, len, errors, stage, record]`: numbers as integers (NULL for null),
    /// `stage` as text, `errors` and `record` as their JSON text (`record` NULL when absent).
    fn reject_rows(param: &str) -> String;
    /// True when one error in a reject's `errors` (a JSON array of objects) meets every
    /// condition: `(field, param)` holds when parameter `param` is NULL or equals the error's
    /// `field` (a constant of the code, never input).
    fn any_error_with(conditions: &[(&'static str, &str)]) -> String;

    fn id(id: Uuid) -> Self::Id;
    fn uuid(id: Self::Id) -> Result<Uuid>;
    fn time(at: DateTime<Utc>) -> Self::Time;
    fn datetime(at: Self::Time) -> Result<DateTime<Utc>>;

    /// Serialises schema changes to `table` across replicas until the guard drops.
    fn lock_ddl(pool: &Pool<Self>, table: &str) -> impl Future<Output = Result<DdlGuard>> + Send;
}

/// The ledger on one SQL database. Writes go through `writer`; reads through `reader` (the same
/// pool on Postgres, a read-only pool beside the single writer connection on SQLite).
pub struct SqlLedger<D: Database> {
    writer: Pool<D>,
    reader: Pool<D>,
}

impl<D: Database> SqlLedger<D> {
    pub(crate) fn new(writer: Pool<D>, reader: Pool<D>) -> Self {
        SqlLedger { writer, reader }
    }
}

/// Counts are `bigint`; no real count comes near the top of `u64`, so saturating is enough.
fn int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A duration in seconds; one chrono cannot add to a time is replaced by `fallback`.
fn seconds(duration: Duration, fallback: Duration) -> f64 {
    chrono::Duration::from_std(duration).map_or(fallback, |_| duration).as_secs_f64()
}

fn get<'r, D, T>(row: &'r D::Row, column: &str) -> Result<T>
where
    D: Database,
    T: Decode<'r, D> + Type<D>,
    for<'a> &'a str: ColumnIndex<D::Row>,
{
    row.try_get(column).map_err(|e| LedgerError::Corrupt(format!("column {column}: {e}")))
}

fn count<D, T>(row: &D::Row, column: &str) -> Result<T>
where
    D: Database,
    T: TryFrom<i64>,
    for<'r> i64: Decode<'r, D> + Type<D>,
    for<'a> &'a str: ColumnIndex<D::Row>,
{
    let n: i64 = get::<D, i64>(row, column)?;
    T::try_from(n).map_err(|_| LedgerError::Corrupt(format!("{column} out of range: {n}")))
}

fn parse<T: std::str::FromStr<Err = String>>(text: &str) -> Result<T> {
    text.parse().map_err(LedgerError::Corrupt)
}

fn from_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| LedgerError::Corrupt(e.to_string()))
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| LedgerError::Corrupt(format!("unwritable value: {e}")))
}

/// Reject rows per insert statement: one JSON parameter carries them all.
const REJECTS_PER_INSERT: usize = 50_000;

/// Records a new batch's gateway rejects, whole or as the index of their lines in the stage.
/// A statement takes its rows as one JSON array (`[index, at, len, errors, record]` each) that
/// the database unpacks itself ([`Dialect::reject_rows`]): 100,000 rows bound one by one take
/// SQLite seconds to prepare and bind, one text parameter a fraction of that.
async fn insert_rejects<D>(tx: &mut Transaction<'static, D>, batch: Uuid, rejects: &NewRejects) -> Result<()>
where
    D: Dialect,
    for<'c> &'c mut D::Connection: Executor<'c, Database = D>,
    for<'q> D::Arguments<'q>: IntoArguments<'q, D>,
    for<'q> String: Encode<'q, D> + Type<D>,
    for<'q> &'q str: Encode<'q, D> + Type<D>,
{
    // `[idx, at, len, errors, stage]`, and the record as a sixth element when it is kept: a
    // record that is JSON null is kept as `null`, a staged one has no sixth element.
    let rows: Vec<serde_json::Value> = match rejects {
        NewRejects::Whole(rejects) => rejects
            .iter()
            .map(|r| {
                let errors = json_value(&r.errors)?;
                Ok(serde_json::json!([r.index, null, null, errors, r.stage.as_str(), r.record]))
            })
            .collect::<Result<_>>()?,
        NewRejects::Staged(staged) => staged
            .entries
            .iter()
            .map(|r| Ok(serde_json::json!([r.index, r.at, r.len, json_value(&r.keys)?, RejectStage::Gateway.as_str()])))
            .collect::<Result<_>>()?,
    };
    let sql = format!(
        "INSERT INTO rejects (batch_id, idx, at, len, errors, stage, record) SELECT $1, {}",
        D::reject_rows("$2")
    );
    for chunk in rows.chunks(REJECTS_PER_INSERT) {
        sqlx::query::<D>(&sql).bind(D::id(batch)).bind(to_json(&chunk)?).execute(&mut **tx).await?;
    }
    Ok(())
}

fn json_value<T: serde::Serialize>(value: &T) -> Result<serde_json::Value> {
    serde_json::to_value(value).map_err(|e| LedgerError::Corrupt(format!("unwritable value: {e}")))
}

/// A reject row: whole (its record is in the ledger), or where its line is in the stage.
fn reject_from_row<D>(row: &D::Row) -> Result<RejectEntry>
where
    D: Dialect,
    for<'r> String: Decode<'r, D> + Type<D>,
    for<'r> i64: Decode<'r, D> + Type<D>,
    for<'a> &'a str: ColumnIndex<D::Row>,
{
    let index = count::<D, u64>(row, "idx")?;
    let record = get::<D, Option<String>>(row, "record")?;
    let located = (get::<D, Option<i64>>(row, "at")?, get::<D, Option<i64>>(row, "len")?);
    match (record, located) {
        (Some(record), _) => Ok(RejectEntry::Whole(Reject {
            index,
            record: from_json(&record)?,
            errors: from_json(&get::<D, String>(row, "errors")?)?,
            stage: reject_stage(&get::<D, String>(row, "stage")?)?,
        })),
        (None, (Some(at), Some(len))) => {
            let path = get::<D, Option<String>>(row, "rejects_path")?.ok_or_else(|| {
                LedgerError::Corrupt(format!("reject {index} is staged but its batch names no object"))
            })?;
            let offset = |n: i64| u64::try_from(n).map_err(|_| LedgerError::Corrupt(format!("reject {index}: {n}")));
            Ok(RejectEntry::Staged { index, path, at: offset(at)?, len: offset(len)? })
        }
        (None, _) => Err(LedgerError::Corrupt(format!("reject {index} has neither a record nor a place in the stage"))),
    }
}

fn reject_stage(text: &str) -> Result<RejectStage> {
    match text {
        "gateway" => Ok(RejectStage::Gateway),
        "warehouse" => Ok(RejectStage::Warehouse),
        other => Err(LedgerError::Corrupt(format!("unknown reject stage {other:?}"))),
    }
}

/// `($first, ..., $(first + n - 1))`: `n` numbered parameters, which both dialects read.
fn params(first: usize, n: usize) -> String {
    let list: Vec<String> = (first..first + n).map(|i| format!("${i}")).collect();
    format!("({})", list.join(", "))
}

/// `rows` tuples of `width` numbered parameters from `$1`, for a bulk `VALUES`.
fn tuples(rows: usize, width: usize) -> String {
    (0..rows).map(|row| params(1 + row * width, width)).collect::<Vec<_>>().join(", ")
}

/// Per-batch state of the files a batch has rows in.
struct FileTally {
    loaded: i64,
    open: i64,
    error: Option<String>,
}

/// A `tables` row.
fn table_from_row<D>(row: &D::Row) -> Result<TableRecord>
where
    D: Dialect,
    for<'r> String: Decode<'r, D> + Type<D>,
    for<'r> i64: Decode<'r, D> + Type<D>,
    for<'a> &'a str: ColumnIndex<D::Row>,
{
    Ok(TableRecord {
        name: get::<D, String>(row, "name")?,
        drift: parse(&get::<D, String>(row, "drift")?)?,
        columns: from_json(&get::<D, String>(row, "columns")?)?,
        aliases: from_json(&get::<D, String>(row, "aliases")?)?,
        created_at: D::datetime(get::<D, D::Time>(row, "created_at")?)?,
        updated_at: D::datetime(get::<D, D::Time>(row, "updated_at")?)?,
        version: count::<D, u64>(row, "version")?,
    })
}

/// A `batches` row, without its files and schema changes.
fn batch_from_row<D>(row: &D::Row) -> Result<BatchRecord>
where
    D: Dialect,
    for<'r> String: Decode<'r, D> + Type<D>,
    for<'r> i64: Decode<'r, D> + Type<D>,
    for<'a> &'a str: ColumnIndex<D::Row>,
{
    let time = |column: &str| get::<D, Option<D::Time>>(row, column)?.map(D::datetime).transpose();
    Ok(BatchRecord {
        id: D::uuid(get::<D, D::Id>(row, "id")?)?,
        table: get::<D, String>(row, "table_name")?,
        partner: parse(&get::<D, String>(row, "partner")?)?,
        status: parse(&get::<D, String>(row, "status")?)?,
        counts: Counts {
            received: count::<D, u64>(row, "received")?,
            accepted: count::<D, u64>(row, "accepted")?,
            rejected: count::<D, u64>(row, "rejected")?,
            loaded: count::<D, u64>(row, "loaded")?,
        },
        rejects_by_code: from_json(&get::<D, String>(row, "rejects_by_code")?)?,
        drift: from_json(&get::<D, String>(row, "drift_counts")?)?,
        schema_changes: Vec::new(),
        files: Vec::new(),
        copies: Vec::new(),
        received_at: D::datetime(get::<D, D::Time>(row, "received_at")?)?,
        staged_at: time("staged_at")?,
        loaded_at: time("loaded_at")?,
        error: get::<D, Option<String>>(row, "error")?,
        replay_of: get::<D, Option<D::Id>>(row, "replay_of")?.map(D::uuid).transpose()?,
        fixed: count::<D, u64>(row, "fixed")?,
        fixing: count::<D, u64>(row, "fixing")?,
    })
}

/// `SELECT` of batches (as `b`) with what replays did to their rejects: `fixed` counts those a
/// loaded replay corrected, `fixing` those a replay still loading holds. A replayed record that
/// its replay rejected again counts in neither.
fn select_batches() -> String {
    let corrected = |statuses: &[BatchStatus]| {
        let statuses: Vec<String> = statuses.iter().map(|s| format!("'{}'", s.as_str())).collect();
        format!(
            "(SELECT COUNT(*) FROM replays r JOIN batches rb ON rb.id = r.replay_id
              WHERE r.original_id = b.id AND rb.status IN ({})
                AND NOT EXISTS (SELECT 1 FROM rejects j WHERE j.batch_id = r.replay_id AND j.idx = r.idx))",
            statuses.join(", ")
        )
    };
    format!(
        "SELECT b.*, {} AS fixed, {} AS fixing FROM batches b",
        corrected(&[BatchStatus::Loaded]),
        corrected(&[BatchStatus::Staged, BatchStatus::Loading])
    )
}

/// An `api_keys` row.
fn key_from_row<D>(row: &D::Row) -> Result<ApiKey>
where
    D: Dialect,
    for<'r> String: Decode<'r, D> + Type<D>,
    for<'r> bool: Decode<'r, D> + Type<D>,
    for<'a> &'a str: ColumnIndex<D::Row>,
{
    let time = |column: &str| get::<D, Option<D::Time>>(row, column)?.map(D::datetime).transpose();
    Ok(ApiKey {
        id: get::<D, String>(row, "id")?,
        partner: parse(&get::<D, String>(row, "partner")?)?,
        tables: from_json(&get::<D, String>(row, "tables")?)?,
        operator: get::<D, bool>(row, "operator")?,
        created_at: D::datetime(get::<D, D::Time>(row, "created_at")?)?,
        last_used_at: time("last_used_at")?,
        revoked_at: time("revoked_at")?,
        secret_hash: get::<D, String>(row, "secret_hash")?,
    })
}

/// Records which batches `file` holds rows of, and how many of each.
async fn insert_file_batches<D>(tx: &mut Transaction<'static, D>, file: Uuid, parts: &[(Uuid, u64)]) -> Result<()>
where
    D: Dialect,
    for<'c> &'c mut D::Connection: Executor<'c, Database = D>,
    for<'q> D::Arguments<'q>: IntoArguments<'q, D>,
    for<'q> i64: Encode<'q, D> + Type<D>,
{
    for chunk in parts.chunks(ROWS_PER_INSERT) {
        let sql = format!("INSERT INTO file_batches (file_id, batch_id, rows) VALUES {}", tuples(chunk.len(), 3));
        let insert = chunk
            .iter()
            .fold(sqlx::query::<D>(&sql), |q, (batch, rows)| q.bind(D::id(file)).bind(D::id(*batch)).bind(int(*rows)));
        insert.execute(&mut **tx).await?;
    }
    Ok(())
}

/// Locks, in id order, the batches with rows in `files`, and returns their ids.
///
/// The fixed order keeps replicas that touch the same batches from deadlocking, and taking the
/// locks in a statement of their own makes the next statement's snapshot see the file updates
/// of whichever replica held them before: without it two replicas completing the last two
/// files of one batch could each miss the other's and leave the batch `loading` forever.
async fn lock_batches<D>(tx: &mut Transaction<'static, D>, files: &[Uuid]) -> Result<Vec<Uuid>>
where
    D: Dialect,
    for<'c> &'c mut D::Connection: Executor<'c, Database = D>,
    for<'q> D::Arguments<'q>: IntoArguments<'q, D>,
    for<'a> &'a str: ColumnIndex<D::Row>,
{
    let mut batches = BTreeSet::new();
    for chunk in files.chunks(IDS_PER_LIST) {
        let sql = format!(
            "SELECT id FROM batches WHERE id IN (SELECT batch_id FROM file_batches WHERE file_id IN {})
             ORDER BY id{}",
            params(1, chunk.len()),
            D::FOR_UPDATE
        );
        let query = chunk.iter().fold(sqlx::query::<D>(&sql), |q, id| q.bind(D::id(*id)));
        for row in query.fetch_all(&mut **tx).await? {
            batches.insert(D::uuid(get::<D, D::Id>(&row, "id")?)?);
        }
    }
    Ok(batches.into_iter().collect())
}

#[async_trait]
impl<D> Ledger for SqlLedger<D>
where
    D: Dialect,
    for<'c> &'c mut D::Connection: Executor<'c, Database = D>,
    for<'q> D::Arguments<'q>: IntoArguments<'q, D>,
    for<'q> i64: Encode<'q, D> + Decode<'q, D> + Type<D>,
    for<'q> f64: Encode<'q, D> + Type<D>,
    for<'q> bool: Encode<'q, D> + Decode<'q, D> + Type<D>,
    for<'q> String: Encode<'q, D> + Decode<'q, D> + Type<D>,
    for<'q> &'q str: Encode<'q, D> + Type<D>,
    for<'q> Option<i64>: Encode<'q, D>,
    for<'q> Option<String>: Encode<'q, D>,
    for<'q> Option<&'q str>: Encode<'q, D>,
    for<'q> Option<D::Id>: Encode<'q, D>,
    for<'a> &'a str: ColumnIndex<D::Row>,
{
    fn backend(&self) -> &'static str {
        D::BACKEND
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query::<D>("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

    async fn put_table(&self, table: &TableRecord) -> Result<()> {
        sqlx::query::<D>(
            "INSERT INTO tables (name, drift, columns, created_at, updated_at, version, aliases)
             VALUES ($1, $2, $3, $4, $5, 1, $6)
             ON CONFLICT (name) DO UPDATE SET drift = excluded.drift, columns = excluded.columns,
                 aliases = excluded.aliases, updated_at = excluded.updated_at, version = tables.version + 1",
        )
        .bind(table.name.as_str())
        .bind(table.drift.as_str())
        .bind(to_json(&table.columns)?)
        .bind(D::time(table.created_at))
        .bind(D::time(table.updated_at))
        .bind(to_json(&table.aliases)?)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn get_table(&self, name: &str) -> Result<Option<TableRecord>> {
        let row =
            sqlx::query::<D>("SELECT * FROM tables WHERE name = $1").bind(name).fetch_optional(&self.reader).await?;
        row.as_ref().map(table_from_row::<D>).transpose()
    }

    async fn list_tables(&self) -> Result<Vec<TableRecord>> {
        let rows = sqlx::query::<D>("SELECT * FROM tables ORDER BY name").fetch_all(&self.reader).await?;
        rows.iter().map(table_from_row::<D>).collect()
    }

    async fn change_columns(&self, table: &str, changes: &[ColumnChange], cause: &ChangeCause) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        // Locked: two replicas changing columns at once must not overwrite each other's changes.
        let sql = format!("SELECT columns FROM tables WHERE name = $1{}", D::FOR_UPDATE);
        let row = sqlx::query::<D>(&sql).bind(table).fetch_optional(&mut *tx).await?;
        let Some(row) = row else {
            return Err(LedgerError::Missing(format!("table {table}")));
        };
        let mut known: Vec<Column> = from_json(&get::<D, String>(&row, "columns")?)?;
        let audit = format!(
            "INSERT INTO schema_changes (table_name, column_name, column_type, batch_id, partner, previous_type, at)
             VALUES ($1, $2, $3, $4, $5, $6, {})",
            D::NOW
        );
        for change in changes {
            let existing = known.iter_mut().find(|c| c.name == change.column().name);
            let (column, previous) = match (change, existing) {
                (ColumnChange::Added(_), Some(_)) => continue,
                (ColumnChange::Added(column), None) => {
                    known.push(column.clone());
                    (column, None)
                }
                (ColumnChange::Widened(column), Some(existing)) if existing.ty != column.ty => {
                    (column, Some(std::mem::replace(&mut existing.ty, column.ty).to_string()))
                }
                (ColumnChange::Widened(_), Some(_)) => continue,
                (ColumnChange::Widened(column), None) => {
                    return Err(LedgerError::Missing(format!("column {} of table {table}", column.name)));
                }
            };
            sqlx::query::<D>(&audit)
                .bind(table)
                .bind(column.name.as_str())
                .bind(column.ty.to_string())
                .bind(cause.batch_id.map(D::id))
                .bind(cause.partner.as_str())
                .bind(previous)
                .execute(&mut *tx)
                .await?;
        }
        let sql =
            format!("UPDATE tables SET columns = $1, updated_at = {}, version = version + 1 WHERE name = $2", D::NOW);
        sqlx::query::<D>(&sql).bind(to_json(&known)?).bind(table).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn lock_ddl(&self, table: &str) -> Result<DdlGuard> {
        D::lock_ddl(&self.writer, table).await
    }

    async fn schema_changes(&self, table: &str) -> Result<Vec<SchemaChange>> {
        let rows = sqlx::query::<D>("SELECT * FROM schema_changes WHERE table_name = $1 ORDER BY id")
            .bind(table)
            .fetch_all(&self.reader)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(SchemaChange {
                    table: get::<D, String>(row, "table_name")?,
                    column: get::<D, String>(row, "column_name")?,
                    ty: get::<D, String>(row, "column_type")?,
                    batch_id: get::<D, Option<D::Id>>(row, "batch_id")?.map(D::uuid).transpose()?,
                    partner: get::<D, Option<String>>(row, "partner")?.as_deref().map(parse).transpose()?,
                    previous_type: get::<D, Option<String>>(row, "previous_type")?,
                    at: D::datetime(get::<D, D::Time>(row, "at")?)?,
                })
            })
            .collect()
    }

    async fn commit_stage(&self, commit: &StageCommit) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        if let Some(file) = &commit.file {
            let status = if commit.pending { FileStatus::Pending } else { FileStatus::Staged };
            let sql = format!(
                "INSERT INTO files (id, table_name, path, rows, bytes, status, columns, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, {})",
                D::NOW
            );
            sqlx::query::<D>(&sql)
                .bind(D::id(file.id))
                .bind(file.table.as_str())
                .bind(file.path.as_str())
                .bind(int(file.rows))
                .bind(int(file.bytes))
                .bind(status.as_str())
                .bind(to_json(&file.columns)?)
                .execute(&mut *tx)
                .await?;
            insert_file_batches(&mut tx, file.id, &commit.parts).await?;
        }
        // The batches this commit completes, staged (or rejected): a statement for up to
        // `BATCHES_PER_INSERT` of them, not one each, since a flush under many small requests
        // completes dozens and each statement is a round trip to Postgres.
        for chunk in commit.completed.chunks(BATCHES_PER_INSERT) {
            let rows: Vec<String> = (0..chunk.len())
                .map(|i| {
                    let p: Vec<String> = (1..=BATCH_PARAMS).map(|k| format!("${}", i * BATCH_PARAMS + k)).collect();
                    // `loaded` starts at 0; `staged_at` is the database clock when staged.
                    format!(
                        "({}, 0, {}, {}, CASE WHEN {} THEN {} END, {})",
                        p[..7].join(", "),
                        p[7],
                        p[8],
                        p[9],
                        D::NOW,
                        p[10..].join(", ")
                    )
                })
                .collect();
            let sql = format!(
                "INSERT INTO batches (id, table_name, partner, status, received, accepted, rejected, loaded,
                     rejects_by_code, received_at, staged_at, drift_counts, replay_of, rejects_path)
                 VALUES {}",
                rows.join(", ")
            );
            let mut insert = sqlx::query::<D>(&sql);
            for batch in chunk {
                let status = BatchStatus::on_commit(batch.counts.accepted);
                insert = insert
                    .bind(D::id(batch.id))
                    .bind(batch.table.as_str())
                    .bind(batch.partner.as_str())
                    .bind(status.as_str())
                    .bind(int(batch.counts.received))
                    .bind(int(batch.counts.accepted))
                    .bind(int(batch.counts.rejected))
                    .bind(to_json(&batch.rejects_by_code)?)
                    .bind(D::time(batch.received_at))
                    .bind(status == BatchStatus::Staged)
                    .bind(to_json(&batch.drift)?)
                    .bind(batch.replay_of.map(D::id))
                    .bind(match &batch.rejects {
                        NewRejects::Staged(staged) => Some(staged.path.as_str()),
                        NewRejects::Whole(_) => None,
                    });
            }
            insert.execute(&mut *tx).await?;
        }
        for batch in &commit.completed {
            insert_rejects::<D>(&mut tx, batch.id, &batch.rejects).await?;
            // A replay is stored: its holds on the rejects it corrects are settled, never taken
            // over for want of a batch or by a lease.
            if let Some(original) = batch.replay_of {
                sqlx::query::<D>("UPDATE replays SET lease_until = NULL WHERE original_id = $1 AND replay_id = $2")
                    .bind(D::id(original))
                    .bind(D::id(batch.id))
                    .execute(&mut *tx)
                    .await?;
            }
        }
        // The batches are complete: their earlier parts become loadable.
        for chunk in commit.completed.chunks(IDS_PER_LIST) {
            let sql = format!(
                "UPDATE files SET status = $1
                 WHERE status = $2 AND id IN (SELECT file_id FROM file_batches WHERE batch_id IN {})",
                params(3, chunk.len())
            );
            let update = sqlx::query::<D>(&sql).bind(FileStatus::Staged.as_str()).bind(FileStatus::Pending.as_str());
            chunk.iter().fold(update, |q, batch| q.bind(D::id(batch.id))).execute(&mut *tx).await?;
        }
        crate::fault::crash_point(crate::fault::CrashPoint::DuringCommit);
        tx.commit().await?;
        Ok(())
    }

    async fn claim_files(&self, owner: &str, lease: Duration, limit: usize) -> Result<Vec<ClaimedFile>> {
        let lease = seconds(lease, Duration::from_secs(300));
        let mut tx = self.writer.begin().await?;
        // Where the dialect has SKIP LOCKED, a file another replica is claiming right now is
        // passed over, never waited for; a row whose claim committed meanwhile is re-checked
        // against the WHERE and dropped.
        let sql = format!(
            "WITH picked AS MATERIALIZED (
                 SELECT id AS picked_id FROM files
                 WHERE (status = $4 AND (not_before IS NULL OR not_before <= {now}))
                    OR (status = $5 AND lease_until < {now})
                 ORDER BY created_at LIMIT $3{skip_locked})
             UPDATE files SET status = $5, claimed_by = $1, lease_until = {lease_until}, attempts = attempts + 1
             FROM picked WHERE id = picked.picked_id
             RETURNING id, table_name, path, rows, attempts, statement_failures, columns, created_at",
            now = D::NOW,
            skip_locked = D::SKIP_LOCKED,
            lease_until = D::now_plus("$2"),
        );
        let rows = sqlx::query::<D>(&sql)
            .bind(owner)
            .bind(lease)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .bind(FileStatus::Staged.as_str())
            .bind(FileStatus::Loading.as_str())
            .fetch_all(&mut *tx)
            .await?;
        let mut claimed = Vec::with_capacity(rows.len());
        for row in &rows {
            claimed.push(ClaimedFile {
                id: D::uuid(get::<D, D::Id>(row, "id")?)?,
                table: get::<D, String>(row, "table_name")?,
                path: get::<D, String>(row, "path")?,
                rows: count::<D, u64>(row, "rows")?,
                attempts: count::<D, u32>(row, "attempts")?,
                statement_failures: count::<D, u32>(row, "statement_failures")?,
                columns: get::<D, Option<String>>(row, "columns")?.as_deref().map(from_json).transpose()?,
                staged_at: D::datetime(get::<D, D::Time>(row, "created_at")?)?,
            });
        }
        let ids: Vec<Uuid> = claimed.iter().map(|f| f.id).collect();
        let batches = lock_batches(&mut tx, &ids).await?;
        for chunk in batches.chunks(IDS_PER_LIST) {
            let sql = format!("UPDATE batches SET status = $1 WHERE status = $2 AND id IN {}", params(3, chunk.len()));
            let update = sqlx::query::<D>(&sql).bind(BatchStatus::Loading.as_str()).bind(BatchStatus::Staged.as_str());
            chunk.iter().fold(update, |q, id| q.bind(D::id(*id))).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        claimed.sort_by(|a, b| a.table.cmp(&b.table).then(a.path.cmp(&b.path)));
        Ok(claimed)
    }

    async fn release_claims_of(&self, owner: &str) -> Result<u64> {
        let released = sqlx::query::<D>(
            "UPDATE files SET status = $1, claimed_by = NULL, lease_until = NULL
             WHERE status = $2 AND claimed_by = $3 RETURNING id",
        )
        .bind(FileStatus::Staged.as_str())
        .bind(FileStatus::Loading.as_str())
        .bind(owner)
        .fetch_all(&self.writer)
        .await?;
        Ok(released.len() as u64)
    }

    async fn renew_claims(&self, owner: &str, ids: &[Uuid], lease: Duration) -> Result<u64> {
        let mut held = 0;
        for chunk in ids.chunks(IDS_PER_LIST) {
            let sql = format!(
                "UPDATE files SET lease_until = {} WHERE claimed_by = $1 AND status = $3 AND id IN {} RETURNING id",
                D::now_plus("$2"),
                params(4, chunk.len())
            );
            let query = sqlx::query::<D>(&sql)
                .bind(owner)
                .bind(seconds(lease, Duration::from_secs(30)))
                .bind(FileStatus::Loading.as_str());
            let renewed = chunk.iter().fold(query, |q, id| q.bind(D::id(*id))).fetch_all(&self.writer).await?;
            held += renewed.len() as u64;
        }
        Ok(held)
    }

    async fn complete_files(&self, owner: &str, outcomes: &[FileOutcome]) -> Result<usize> {
        let sql = format!(
            "UPDATE files SET status = $1, rows_loaded = $2, query_id = $3, error = $4, claimed_by = NULL,
                 lease_until = NULL, loaded_at = CASE WHEN $5 THEN {} ELSE loaded_at END
             WHERE id = $6 AND status = $7 AND claimed_by = $8 RETURNING id",
            D::NOW
        );
        let mut tx = self.writer.begin().await?;
        let mut ids = Vec::with_capacity(outcomes.len());
        let mut rejected = Vec::new();
        // Only files still held are changed: when a file appears twice its first outcome wins.
        for outcome in outcomes {
            let (id, status, rows, query_id, error) = match outcome {
                FileOutcome::Loaded { id, rows, query_id } => {
                    (*id, FileStatus::Loaded, Some(int(*rows)), query_id, None)
                }
                FileOutcome::Failed { id, error, query_id } => {
                    (*id, FileStatus::Failed, None, query_id, Some(error.clone()))
                }
                FileOutcome::Rejected { id, reject, query_id, .. } => {
                    let error = reject.errors.first().map(|e| e.message.clone());
                    (*id, FileStatus::Rejected, Some(0), query_id, error)
                }
            };
            let held = sqlx::query::<D>(&sql)
                .bind(status.as_str())
                .bind(rows)
                .bind(query_id.as_deref())
                .bind(error.as_deref())
                .bind(status == FileStatus::Loaded)
                .bind(D::id(id))
                .bind(FileStatus::Loading.as_str())
                .bind(owner)
                .fetch_optional(&mut *tx)
                .await?;
            if held.is_none() {
                continue;
            }
            if let FileOutcome::Rejected { batch, reject, .. } = outcome {
                rejected.push((*batch, reject));
            }
            ids.push(id);
        }
        let batches = lock_batches(&mut tx, &ids).await?;
        // Warehouse rejects join their batch's gateway rejects; one recorded before (the same
        // outcome recorded twice) is not counted again.
        for (batch, reject) in rejected {
            let inserted = sqlx::query::<D>(
                "INSERT INTO rejects (batch_id, idx, record, errors, stage) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (batch_id, idx) DO NOTHING RETURNING idx",
            )
            .bind(D::id(batch))
            .bind(int(reject.index))
            .bind(to_json(&reject.record)?)
            .bind(to_json(&reject.errors)?)
            .bind(reject.stage.as_str())
            .fetch_optional(&mut *tx)
            .await?;
            if inserted.is_none() {
                continue;
            }
            let row = sqlx::query::<D>("SELECT rejects_by_code FROM batches WHERE id = $1")
                .bind(D::id(batch))
                .fetch_one(&mut *tx)
                .await?;
            let mut by_code: BTreeMap<String, u64> = from_json(&get::<D, String>(&row, "rejects_by_code")?)?;
            for code in reject.errors.iter().map(|e| e.code.as_str()).collect::<BTreeSet<_>>() {
                *by_code.entry(code.to_string()).or_default() += 1;
            }
            sqlx::query::<D>("UPDATE batches SET rejected = rejected + 1, rejects_by_code = $1 WHERE id = $2")
                .bind(to_json(&by_code)?)
                .bind(D::id(batch))
                .execute(&mut *tx)
                .await?;
        }
        // Recompute `loaded` and the status of those batches from the state of their files.
        let mut tallies = BTreeMap::new();
        for chunk in batches.chunks(IDS_PER_LIST) {
            let sql = format!(
                "SELECT fb.batch_id,
                     CAST(COALESCE(SUM(CASE WHEN f.status = $1 THEN fb.rows ELSE 0 END), 0) AS BIGINT) AS loaded,
                     CAST(SUM(CASE WHEN f.status IN ($1, $2, $3, $4) THEN 0 ELSE 1 END) AS BIGINT) AS open,
                     MAX(CASE WHEN f.status = $2 THEN f.error END) AS error
                 FROM file_batches fb JOIN files f ON f.id = fb.file_id
                 WHERE fb.batch_id IN {} GROUP BY fb.batch_id",
                params(5, chunk.len())
            );
            let query = sqlx::query::<D>(&sql)
                .bind(FileStatus::Loaded.as_str())
                .bind(FileStatus::Failed.as_str())
                .bind(FileStatus::Split.as_str())
                .bind(FileStatus::Rejected.as_str());
            let query = chunk.iter().fold(query, |q, id| q.bind(D::id(*id)));
            for row in query.fetch_all(&mut *tx).await? {
                let tally = FileTally {
                    loaded: get::<D, i64>(&row, "loaded")?,
                    open: get::<D, i64>(&row, "open")?,
                    error: get::<D, Option<String>>(&row, "error")?,
                };
                tallies.insert(D::uuid(get::<D, D::Id>(&row, "batch_id")?)?, tally);
            }
        }
        let sql = format!(
            "UPDATE batches SET loaded = $1, status = $2, error = $3,
                 loaded_at = CASE WHEN $4 THEN {} ELSE loaded_at END
             WHERE id = $5 AND status <> $6",
            D::NOW
        );
        for (batch, tally) in tallies {
            let open = u64::try_from(tally.open).unwrap_or(0);
            let status = BatchStatus::from_files(open, tally.error.is_some());
            sqlx::query::<D>(&sql)
                .bind(tally.loaded)
                .bind(status.as_str())
                .bind(tally.error)
                .bind(status == BatchStatus::Loaded)
                .bind(D::id(batch))
                .bind(BatchStatus::Rejected.as_str())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(ids.len())
    }

    async fn split_file(&self, split: &FileSplit<'_>, owner: &str, lease: Duration) -> Result<bool> {
        let (files, parts) = (split.files, split.parts);
        let Some(&parent) = files.first() else { return Ok(false) };
        let mut tx = self.writer.begin().await?;
        let end = "UPDATE files SET status = $1, claimed_by = NULL, lease_until = NULL, error = $5, query_id = $6
             WHERE id = $2 AND status = $3 AND claimed_by = $4 RETURNING id";
        for file in files {
            let updated = sqlx::query::<D>(end)
                .bind(FileStatus::Split.as_str())
                .bind(D::id(*file))
                .bind(FileStatus::Loading.as_str())
                .bind(owner)
                .bind(split.error)
                .bind(split.query_id)
                .fetch_optional(&mut *tx)
                .await?;
            if updated.is_none() {
                // Dropping the transaction rolls back the files ended so far.
                return Ok(false);
            }
        }
        let insert = format!(
            "INSERT INTO files (id, table_name, path, rows, bytes, status, attempts, claimed_by, lease_until,
                 columns, parent_id, created_at)
             SELECT $1, table_name, $2, $3, $4, $5, 1, $6, {}, columns, id, {} FROM files WHERE id = $8",
            D::now_plus("$7"),
            D::NOW
        );
        for part in parts {
            sqlx::query::<D>(&insert)
                .bind(D::id(part.id))
                .bind(part.path.as_str())
                .bind(int(part.rows))
                .bind(int(part.bytes))
                .bind(FileStatus::Loading.as_str())
                .bind(owner)
                .bind(seconds(lease, Duration::from_secs(30)))
                .bind(D::id(parent))
                .execute(&mut *tx)
                .await?;
            insert_file_batches(&mut tx, part.id, &part.batches).await?;
        }
        crate::fault::crash_point(crate::fault::CrashPoint::DuringSplit);
        tx.commit().await?;
        Ok(true)
    }

    async fn release_files(
        &self,
        owner: &str,
        ids: &[Uuid],
        error: &str,
        delay: Duration,
        unclassified: bool,
    ) -> Result<()> {
        let sql = format!(
            "UPDATE files SET status = $1, claimed_by = NULL, lease_until = NULL, not_before = {}, error = $3,
                 statement_failures = statement_failures + $6
             WHERE id = $4 AND status = $5 AND claimed_by = $7",
            D::now_plus("$2")
        );
        let delay = seconds(delay, Duration::from_secs(1));
        let mut tx = self.writer.begin().await?;
        for id in ids {
            sqlx::query::<D>(&sql)
                .bind(FileStatus::Staged.as_str())
                .bind(delay)
                .bind(error)
                .bind(D::id(*id))
                .bind(FileStatus::Loading.as_str())
                .bind(i64::from(unclassified))
                .bind(owner)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn abandon_pending(&self, age: Duration) -> Result<u64> {
        let sql = format!(
            "UPDATE files SET status = $1 WHERE status = $2 AND created_at < {} RETURNING id",
            D::now_minus("$3")
        );
        let abandoned = sqlx::query::<D>(&sql)
            .bind(FileStatus::Abandoned.as_str())
            .bind(FileStatus::Pending.as_str())
            .bind(seconds(age, Duration::from_secs(3600)))
            .fetch_all(&self.writer)
            .await?;
        Ok(abandoned.len() as u64)
    }

    async fn load_state(&self) -> Result<Vec<TableLoadState>> {
        let mut tables: BTreeMap<String, TableLoadState> = BTreeMap::new();
        let waiting = sqlx::query::<D>(
            "SELECT table_name, COUNT(*) AS waiting, MIN(created_at) AS oldest FROM files
             WHERE status IN ($1, $2) GROUP BY table_name",
        )
        .bind(FileStatus::Staged.as_str())
        .bind(FileStatus::Loading.as_str())
        .fetch_all(&self.reader)
        .await?;
        for row in &waiting {
            let table = get::<D, String>(row, "table_name")?;
            let entry = tables.entry(table.clone()).or_insert_with(|| TableLoadState::new(table));
            entry.waiting = count::<D, u64>(row, "waiting")?;
            entry.oldest_waiting = get::<D, Option<D::Time>>(row, "oldest")?.map(D::datetime).transpose()?;
        }
        let loaded = sqlx::query::<D>(
            "SELECT table_name, MAX(loaded_at) AS last FROM files WHERE status = $1 GROUP BY table_name",
        )
        .bind(FileStatus::Loaded.as_str())
        .fetch_all(&self.reader)
        .await?;
        for row in &loaded {
            let table = get::<D, String>(row, "table_name")?;
            let entry = tables.entry(table.clone()).or_insert_with(|| TableLoadState::new(table));
            entry.last_loaded = get::<D, Option<D::Time>>(row, "last")?.map(D::datetime).transpose()?;
        }
        Ok(tables.into_values().collect())
    }

    async fn known_paths(&self, paths: &[String]) -> Result<BTreeSet<String>> {
        let mut known = BTreeSet::new();
        for chunk in paths.chunks(IDS_PER_LIST) {
            let list = params(1, chunk.len());
            let sql = format!(
                "SELECT path FROM files WHERE path IN {list}
                 UNION SELECT rejects_path AS path FROM batches WHERE rejects_path IN {list}"
            );
            let query = chunk.iter().fold(sqlx::query::<D>(&sql), |q, path| q.bind(path.as_str()));
            for row in query.fetch_all(&self.reader).await? {
                known.insert(get::<D, String>(&row, "path")?);
            }
        }
        Ok(known)
    }

    async fn get_batch(&self, id: Uuid) -> Result<Option<BatchRecord>> {
        let sql = format!("{} WHERE b.id = $1", select_batches());
        let row = sqlx::query::<D>(&sql).bind(D::id(id)).fetch_optional(&self.reader).await?;
        let Some(row) = row else { return Ok(None) };
        let mut batch = batch_from_row::<D>(&row)?;
        let files = sqlx::query::<D>(
            "SELECT f.path, fb.rows, f.status, f.attempts, f.query_id, f.error
             FROM file_batches fb JOIN files f ON f.id = fb.file_id
             WHERE fb.batch_id = $1 ORDER BY f.created_at, f.path",
        )
        .bind(D::id(id))
        .fetch_all(&self.reader)
        .await?;
        for row in &files {
            batch.files.push(BatchFile {
                path: get::<D, String>(row, "path")?,
                rows: count::<D, u64>(row, "rows")?,
                status: parse(&get::<D, String>(row, "status")?)?,
                attempts: count::<D, u32>(row, "attempts")?,
                query_id: get::<D, Option<String>>(row, "query_id")?,
                error: get::<D, Option<String>>(row, "error")?,
            });
        }
        batch.copies = CopyStatement::of(&batch.files);
        let changes =
            sqlx::query::<D>("SELECT column_name, column_type, at FROM schema_changes WHERE batch_id = $1 ORDER BY id")
                .bind(D::id(id))
                .fetch_all(&self.reader)
                .await?;
        for row in &changes {
            batch.schema_changes.push(AppliedChange {
                column: get::<D, String>(row, "column_name")?,
                ty: get::<D, String>(row, "column_type")?,
                at: D::datetime(get::<D, D::Time>(row, "at")?)?,
            });
        }
        Ok(Some(batch))
    }

    async fn list_batches(&self, filter: &BatchFilter) -> Result<Vec<BatchRecord>> {
        // Each filter that is set adds a condition and its parameter, in the same order.
        let mut sql = format!("{} WHERE 1 = 1", select_batches());
        let mut n = 0;
        let mut condition = |clause: &str, set: bool| {
            if set {
                n += 1;
                sql.push_str(&format!(" AND {clause} ${n}"));
            }
        };
        condition("table_name =", filter.table.is_some());
        condition("partner =", filter.partner.is_some());
        condition("status =", filter.status.is_some());
        condition("received_at >=", filter.since.is_some());
        condition("received_at <", filter.until.is_some());
        condition("id <", filter.after.is_some());
        sql.push_str(&format!(" ORDER BY id DESC LIMIT ${}", n + 1));
        let mut query = sqlx::query::<D>(&sql);
        if let Some(table) = &filter.table {
            query = query.bind(table.as_str());
        }
        if let Some(partner) = &filter.partner {
            query = query.bind(partner.as_str());
        }
        if let Some(status) = filter.status {
            query = query.bind(status.as_str());
        }
        if let Some(since) = filter.since {
            query = query.bind(D::time(since));
        }
        if let Some(until) = filter.until {
            query = query.bind(D::time(until));
        }
        if let Some(after) = filter.after {
            query = query.bind(D::id(after));
        }
        let limit = i64::from(filter.limit.unwrap_or(100).clamp(1, 1000));
        let rows = query.bind(limit).fetch_all(&self.reader).await?;
        rows.iter().map(batch_from_row::<D>).collect()
    }

    async fn list_rejects(
        &self,
        batch: Uuid,
        filter: &RejectFilter,
        after: Option<u64>,
        limit: u32,
    ) -> Result<Vec<RejectEntry>> {
        let sql = format!(
            "SELECT r.idx, r.record, r.errors, r.stage, r.at, r.len, b.rejects_path
             FROM rejects r JOIN batches b ON b.id = r.batch_id
             WHERE r.batch_id = $1 AND r.idx > $2 AND (($4 IS NULL AND $5 IS NULL) OR {})
             ORDER BY r.idx LIMIT $3",
            D::any_error_with(&[("code", "$4"), ("column", "$5")])
        );
        let rows = sqlx::query::<D>(&sql)
            .bind(D::id(batch))
            .bind(after.map(int).unwrap_or(-1))
            .bind(i64::from(limit))
            .bind(filter.code.map(|c| c.as_str()))
            .bind(filter.column.as_deref())
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(reject_from_row::<D>).collect()
    }

    async fn reject_errors(
        &self,
        table: &str,
        since: DateTime<Utc>,
        partner: Option<&Partner>,
        limit: u32,
    ) -> Result<Vec<(Partner, Vec<ErrorKey>)>> {
        let rows = sqlx::query::<D>(
            "SELECT b.partner, r.errors FROM rejects r JOIN batches b ON b.id = r.batch_id
             WHERE b.table_name = $1 AND b.received_at >= $2 AND ($3 IS NULL OR b.partner = $3) LIMIT $4",
        )
        .bind(table)
        .bind(D::time(since))
        .bind(partner.map(Partner::as_str))
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|row| Ok((parse(&get::<D, String>(row, "partner")?)?, from_json(&get::<D, String>(row, "errors")?)?)))
            .collect()
    }

    async fn insert_key(&self, key: &ApiKey) -> Result<()> {
        sqlx::query::<D>(
            "INSERT INTO api_keys (id, secret_hash, partner, tables, operator, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(key.id.as_str())
        .bind(key.secret_hash.as_str())
        .bind(key.partner.as_str())
        .bind(to_json(&key.tables)?)
        .bind(key.operator)
        .bind(D::time(key.created_at))
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn get_key(&self, id: &str) -> Result<Option<ApiKey>> {
        let row =
            sqlx::query::<D>("SELECT * FROM api_keys WHERE id = $1").bind(id).fetch_optional(&self.reader).await?;
        row.as_ref().map(key_from_row::<D>).transpose()
    }

    async fn list_keys(&self) -> Result<Vec<ApiKey>> {
        let rows = sqlx::query::<D>("SELECT * FROM api_keys ORDER BY created_at, id").fetch_all(&self.reader).await?;
        rows.iter().map(key_from_row::<D>).collect()
    }

    async fn revoke_key(&self, id: &str) -> Result<Option<ApiKey>> {
        let sql =
            format!("UPDATE api_keys SET revoked_at = COALESCE(revoked_at, {}) WHERE id = $1 RETURNING *", D::NOW);
        let row = sqlx::query::<D>(&sql).bind(id).fetch_optional(&self.writer).await?;
        row.as_ref().map(key_from_row::<D>).transpose()
    }

    async fn touch_key(&self, id: &str) -> Result<()> {
        let sql = format!("UPDATE api_keys SET last_used_at = {} WHERE id = $1", D::NOW);
        sqlx::query::<D>(&sql).bind(id).execute(&self.writer).await?;
        Ok(())
    }

    async fn any_keys(&self) -> Result<bool> {
        let row = sqlx::query::<D>("SELECT id FROM api_keys LIMIT 1").fetch_optional(&self.reader).await?;
        Ok(row.is_some())
    }

    async fn claim_idempotency(&self, claim: &IdempotencyClaim) -> Result<IdempotencyState> {
        let lease = seconds(claim.lease, Duration::from_secs(300));
        let window = seconds(claim.window, Duration::from_secs(7 * 86_400));
        let sql = format!(
            "INSERT INTO idempotency_keys (partner, key, body_hash, batch_id, owner, lease_until, created_at)
             VALUES ($1, $2, $3, $4, $5, {}, {}) ON CONFLICT (partner, key) DO NOTHING RETURNING key",
            D::now_plus("$6"),
            D::NOW
        );
        let inserted = sqlx::query::<D>(&sql)
            .bind(claim.partner.as_str())
            .bind(claim.key.as_str())
            .bind(claim.body_hash.as_str())
            .bind(D::id(claim.batch_id))
            .bind(claim.owner.as_str())
            .bind(lease)
            .fetch_all(&self.writer)
            .await?;
        if inserted.len() == 1 {
            return Ok(IdempotencyState::Claimed);
        }
        // Held already. Taken over only from a holder whose lease is over: a key older than the
        // window (whatever it made), or one whose batch was never committed. The
        // conditions are re-checked by the UPDATE itself, so two requests never both take it.
        let sql = format!(
            "UPDATE idempotency_keys SET body_hash = $3, batch_id = $4, owner = $5, lease_until = {lease_until},
                 created_at = {now}
             WHERE partner = $1 AND key = $2 AND lease_until < {now}
               AND (created_at < {expired}
                    OR NOT EXISTS (SELECT 1 FROM batches b WHERE b.id = idempotency_keys.batch_id))
             RETURNING key",
            lease_until = D::now_plus("$6"),
            now = D::NOW,
            expired = D::now_minus("$7"),
        );
        let taken = sqlx::query::<D>(&sql)
            .bind(claim.partner.as_str())
            .bind(claim.key.as_str())
            .bind(claim.body_hash.as_str())
            .bind(D::id(claim.batch_id))
            .bind(claim.owner.as_str())
            .bind(lease)
            .bind(window)
            .fetch_all(&self.writer)
            .await?;
        if taken.len() == 1 {
            return Ok(IdempotencyState::Claimed);
        }
        let row = sqlx::query::<D>(
            "SELECT i.batch_id, i.body_hash, CAST(CASE WHEN b.id IS NULL THEN 0 ELSE 1 END AS BIGINT) AS committed
             FROM idempotency_keys i LEFT JOIN batches b ON b.id = i.batch_id
             WHERE i.partner = $1 AND i.key = $2",
        )
        .bind(claim.partner.as_str())
        .bind(claim.key.as_str())
        .fetch_optional(&self.writer)
        .await?;
        let Some(row) = row else {
            // Released between the two statements: the caller asks again.
            return Ok(IdempotencyState::InProgress { batch_id: claim.batch_id, body_hash: claim.body_hash.clone() });
        };
        let batch_id = D::uuid(get::<D, D::Id>(&row, "batch_id")?)?;
        let body_hash = get::<D, String>(&row, "body_hash")?;
        Ok(if get::<D, i64>(&row, "committed")? == 1 {
            IdempotencyState::Committed { batch_id, body_hash }
        } else {
            IdempotencyState::InProgress { batch_id, body_hash }
        })
    }

    async fn release_idempotency(&self, partner: &Partner, key: &str, batch_id: Uuid) -> Result<()> {
        sqlx::query::<D>(
            "DELETE FROM idempotency_keys WHERE partner = $1 AND key = $2 AND batch_id = $3
                 AND NOT EXISTS (SELECT 1 FROM batches b WHERE b.id = $3)",
        )
        .bind(partner.as_str())
        .bind(key)
        .bind(D::id(batch_id))
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn release_idempotency_of(&self, owner: &str) -> Result<u64> {
        let released = sqlx::query::<D>(
            "DELETE FROM idempotency_keys WHERE owner = $1
                 AND NOT EXISTS (SELECT 1 FROM batches b WHERE b.id = idempotency_keys.batch_id)
             RETURNING key",
        )
        .bind(owner)
        .fetch_all(&self.writer)
        .await?;
        Ok(released.len() as u64)
    }

    async fn purge_batches(&self, keep: Duration, limit: u32) -> Result<u64> {
        let keep = seconds(keep, Duration::from_secs(30 * 86_400));
        let mut tx = self.writer.begin().await?;
        let sql = format!(
            "SELECT id FROM batches WHERE status IN ($1, $2, $3) AND received_at < {} ORDER BY id LIMIT $5",
            D::now_minus("$4")
        );
        let rows = sqlx::query::<D>(&sql)
            .bind(BatchStatus::Loaded.as_str())
            .bind(BatchStatus::Rejected.as_str())
            .bind(BatchStatus::Failed.as_str())
            .bind(keep)
            .bind(i64::from(limit))
            .fetch_all(&mut *tx)
            .await?;
        let ids = rows.iter().map(|row| D::uuid(get::<D, D::Id>(row, "id")?)).collect::<Result<Vec<Uuid>>>()?;
        for chunk in ids.chunks(IDS_PER_LIST) {
            let list = params(1, chunk.len());
            // A purged replay's holds stay while the batch it corrects does: its records stay
            // corrected (no longer counted as fixed), never open to a second load.
            for (table, column) in
                [("replays", "original_id"), ("rejects", "batch_id"), ("file_batches", "batch_id"), ("batches", "id")]
            {
                let sql = format!("DELETE FROM {table} WHERE {column} IN {list}");
                let query = chunk.iter().fold(sqlx::query::<D>(&sql), |q, id| q.bind(D::id(*id)));
                query.execute(&mut *tx).await?;
            }
        }
        // A replay's hold whose batch was never stored.
        let sql = format!("DELETE FROM replays WHERE lease_until < {}", D::now_minus("$1"));
        sqlx::query::<D>(&sql).bind(keep).execute(&mut *tx).await?;
        // A pending part abandoned long ago belongs to a batch that never got a row.
        let sql = format!(
            "DELETE FROM file_batches WHERE file_id IN (SELECT id FROM files WHERE status = $1 AND created_at < {})",
            D::now_minus("$2")
        );
        sqlx::query::<D>(&sql).bind(FileStatus::Abandoned.as_str()).bind(keep).execute(&mut *tx).await?;
        let sql = format!(
            "DELETE FROM files WHERE status IN ($1, $2, $3, $4, $5) AND created_at < {}
                 AND NOT EXISTS (SELECT 1 FROM file_batches fb WHERE fb.file_id = files.id)",
            D::now_minus("$6")
        );
        sqlx::query::<D>(&sql)
            .bind(FileStatus::Loaded.as_str())
            .bind(FileStatus::Failed.as_str())
            .bind(FileStatus::Split.as_str())
            .bind(FileStatus::Rejected.as_str())
            .bind(FileStatus::Abandoned.as_str())
            .bind(keep)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(ids.len() as u64)
    }

    async fn claim_replay(&self, claim: &ReplayClaim, dry: bool) -> Result<Result<(), ReplayRefusal>> {
        let mut tx = self.writer.begin().await?;
        let mut rejected = BTreeSet::new();
        for chunk in claim.indexes.chunks(IDS_PER_LIST) {
            let sql = format!("SELECT idx FROM rejects WHERE batch_id = $1 AND idx IN {}", params(2, chunk.len()));
            let query = sqlx::query::<D>(&sql).bind(D::id(claim.original));
            let query = chunk.iter().fold(query, |q, index| q.bind(int(*index)));
            for row in query.fetch_all(&mut *tx).await? {
                rejected.insert(count::<D, u64>(&row, "idx")?);
            }
        }
        let missing: Vec<u64> = claim.indexes.iter().copied().filter(|i| !rejected.contains(i)).take(100).collect();
        if !missing.is_empty() {
            return Ok(Err(ReplayRefusal::NotRejected(missing)));
        }
        // A row another replay holds is taken over only when that replay no longer needs it: it
        // rejected the record again, or failed without loading a row, or it was never stored
        // (not settled) and its lease is over. Rows are taken in index order, so that two
        // claims never wait on each other's rows.
        let mut indexes = claim.indexes.clone();
        indexes.sort_unstable();
        let lease = seconds(claim.lease, Duration::from_secs(3600));
        for chunk in indexes.chunks(ROWS_PER_INSERT) {
            let values: Vec<String> =
                (0..chunk.len()).map(|i| format!("($1, ${}, $2, {})", i + 5, D::now_plus("$3"))).collect();
            let sql = format!(
                "INSERT INTO replays (original_id, idx, replay_id, lease_until) VALUES {}
                 ON CONFLICT (original_id, idx) DO UPDATE
                     SET replay_id = excluded.replay_id, lease_until = excluded.lease_until
                     WHERE replays.replay_id = excluded.replay_id
                        OR EXISTS (SELECT 1 FROM batches b
                                   WHERE b.id = replays.replay_id AND b.status = $4 AND b.loaded = 0)
                        OR EXISTS (SELECT 1 FROM rejects j WHERE j.batch_id = replays.replay_id AND j.idx = replays.idx)
                        OR replays.lease_until < {}
                 RETURNING idx",
                values.join(", "),
                D::NOW
            );
            let query = sqlx::query::<D>(&sql)
                .bind(D::id(claim.original))
                .bind(D::id(claim.replay))
                .bind(lease)
                .bind(BatchStatus::Failed.as_str());
            let query = chunk.iter().fold(query, |q, index| q.bind(int(*index)));
            let mut taken = BTreeSet::new();
            for row in query.fetch_all(&mut *tx).await? {
                taken.insert(count::<D, u64>(&row, "idx")?);
            }
            if let Some(&index) = chunk.iter().find(|i| !taken.contains(i)) {
                let row = sqlx::query::<D>("SELECT replay_id FROM replays WHERE original_id = $1 AND idx = $2")
                    .bind(D::id(claim.original))
                    .bind(int(index))
                    .fetch_one(&mut *tx)
                    .await?;
                let by = D::uuid(get::<D, D::Id>(&row, "replay_id")?)?;
                return Ok(Err(ReplayRefusal::AlreadyReplayed { index, by }));
            }
        }
        if dry {
            tx.rollback().await?;
        } else {
            tx.commit().await?;
        }
        Ok(Ok(()))
    }

    async fn release_replay(&self, replay: Uuid) -> Result<()> {
        sqlx::query::<D>("DELETE FROM replays WHERE replay_id = $1 AND lease_until IS NOT NULL")
            .bind(D::id(replay))
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn sweep_idempotency(&self, window: Duration) -> Result<u64> {
        let sql = format!(
            "DELETE FROM idempotency_keys WHERE created_at < {} AND lease_until < {} RETURNING key",
            D::now_minus("$1"),
            D::NOW
        );
        let window = seconds(window, Duration::from_secs(7 * 86_400));
        let swept = sqlx::query::<D>(&sql).bind(window).fetch_all(&self.writer).await?;
        Ok(swept.len() as u64)
    }
}

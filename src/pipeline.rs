//! One POST, end to end: decode, drift, validate, buffer, and (optionally) wait for the load.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::app::App;
use crate::budget::Grant;
use crate::buffer::{BufferError, FlushPolicy, Submission};
use crate::catalog::CatalogError;
use crate::config::Config;
use crate::ingest::decode::{self, DecodeError, DecodeLimits, Decoded};
use crate::ingest::drift::{plan_from_accepted, unknown_keys, DriftPolicy};
use crate::ingest::reject::Reject;
use crate::ingest::replay::{split_items, ReplayItemError};
use crate::ingest::rows::reserved_per_row;
use crate::ingest::validate::{KeyResolver, Unknown, Validator};
use crate::ingest::{check_records, Checked, ReadAsSent, Rows, Rules};
use crate::ledger::{
    BatchRecord, BatchStatus, Counts, DriftCounts, IdempotencyClaim, IdempotencyState, LedgerError, NewBatch, Partner,
    ReplayClaim, ReplayRefusal,
};
use crate::metrics::BytesLabels;
use crate::schema::{Column, ColumnName, ColumnType, TableName, TableSchema, RESCUED_DATA};

/// A batch as received over HTTP.
pub struct IngestRequest {
    /// The id the batch gets if it is stored.
    pub batch_id: Uuid,
    pub table: TableName,
    /// The request's hold on the memory budget, covering its body so far.
    pub grant: Grant,
    pub partner: Partner,
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    pub body: Bytes,
    pub dry_run: bool,
    /// For a replay: the batch whose rejects the body corrects (items keyed by their index).
    pub replay_of: Option<Uuid>,
}

/// What a dry run would have done.
#[derive(Debug, Serialize, ToSchema)]
pub struct DryRunReport {
    pub table: String,
    pub dry_run: bool,
    pub counts: Counts,
    pub rejects_by_code: std::collections::BTreeMap<String, u64>,
    /// What the drift policy would do to the accepted records.
    pub drift: DriftCounts,
    /// Columns the drift policy would add.
    pub schema_changes: Vec<Column>,
    /// The first 1000 rejects.
    pub rejects: Vec<Reject>,
}

/// Result of an ingest call.
pub enum IngestOutcome {
    Stored(Box<BatchRecord>),
    DryRun(DryRunReport),
}

/// Why a batch was refused as a whole.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Buffer(#[from] BufferError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("internal task failed: {0}")]
    Task(String),
    /// Decoding, validating or evolving the table outlasted `limits.processing_secs`; nothing
    /// was buffered.
    #[error("the request was not ready to stage within limits.processing_secs ({}s)", .0.as_secs())]
    Timeout(Duration),
    /// The `Idempotency-Key` belongs to another request, whose batch is `.0`.
    #[error("this Idempotency-Key was used for another request (batch {0})")]
    IdempotencyConflict(Uuid),
    /// The table's policy is `freeze` and these fields (as sent) name no column.
    #[error("table {table} is frozen (drift policy freeze) and the request carries {} field(s) it has no column for: {}", .fields.len(), frozen_list(.fields))]
    Frozen { table: String, fields: Vec<String> },
    /// A replay's items are malformed.
    #[error(transparent)]
    ReplayItems(#[from] ReplayItemError),
    /// The replay names records it may not correct.
    #[error("{}", replay_refusal(.0))]
    Replay(ReplayRefusal),
    /// Another request with the same `Idempotency-Key` is still making batch `.0`.
    #[error("a request with this Idempotency-Key is still being stored (batch {0}); retry shortly")]
    IdempotencyInProgress(Uuid),
}

fn replay_refusal(refusal: &ReplayRefusal) -> String {
    match refusal {
        ReplayRefusal::NotRejected(indexes) => {
            let list: Vec<String> = indexes.iter().take(10).map(u64::to_string).collect();
            let more = if indexes.len() > 10 { format!(" and {} more", indexes.len() - 10) } else { String::new() };
            format!("the batch rejected no record at index {}{more}", list.join(", "))
        }
        ReplayRefusal::AlreadyReplayed { index, by } => {
            format!("record {index} is already corrected by replay batch {by} (loaded, or on its way)")
        }
    }
}

/// Most unknown fields a `schema_frozen` answer lists in `details.fields`.
const MAX_FROZEN_FIELDS: usize = 1000;

/// The first few of a frozen request's fields, for its message (`details.fields` has up to
/// [`MAX_FROZEN_FIELDS`]).
fn frozen_list(fields: &[String]) -> String {
    const SHOWN: usize = 10;
    let mut list = fields.iter().take(SHOWN).map(|f| format!("{f:?}")).collect::<Vec<_>>().join(", ");
    if fields.len() > SHOWN {
        list.push_str(&format!(" and {} more", fields.len() - SHOWN));
    }
    list
}

async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, IngestError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| IngestError::Task(e.to_string()))
}

/// Validates and stores one batch; returns once it is durably staged (or rejected as a whole).
/// The work before the rows are buffered is bounded by `limits.processing_secs`; once buffered,
/// the request waits for the outcome of its flush (bounded by the linger and the stage and ledger
/// timeouts), so that a request is never answered 503 while its rows go on to be stored.
pub async fn ingest(app: &App, request: IngestRequest) -> Result<IngestOutcome, IngestError> {
    ingest_holding(app, request, None).await
}

/// [`ingest`], marking `submitted` just before the rows are handed to the buffers: from then on
/// the batch may be committed even if this request ends early.
async fn ingest_holding(
    app: &App,
    request: IngestRequest,
    submitted: Option<&mut bool>,
) -> Result<IngestOutcome, IngestError> {
    let processing = app.config.limits.processing;
    // A replay's hold on the rejects it corrects is let go if its batch is certainly not stored.
    let mut replay = request.replay_of.map(|_| ReplayHold { app, batch: request.batch_id, submitted: false });
    let prepared = tokio::time::timeout(processing, prepare(app, request))
        .await
        .map_err(|_| IngestError::Timeout(processing))
        .and_then(|prepared| prepared);
    let prepared = match prepared {
        Ok(prepared) => prepared,
        Err(e) => {
            // Let go before answering, so that a prompt retry finds the rejects free.
            if let Some(hold) = replay.take() {
                hold.release().await;
            }
            return Err(e);
        }
    };
    let (submission, policy) = match prepared {
        Prepared::DryRun(report) => return Ok(IngestOutcome::DryRun(report)),
        Prepared::Store(submission, policy) => (submission, policy),
    };
    let committed = committed_record(&submission.batch);
    let (batch_id, counts) = (committed.id, committed.counts);
    if let Some(submitted) = submitted {
        *submitted = true;
    }
    if let Some(hold) = replay.as_mut() {
        hold.submitted = true;
    }
    if let Err(e) = app.buffers.submit(submission, policy).await.map_err(IngestError::from) {
        if let Some(hold) = replay.take().filter(|_| e.before_commit()) {
            hold.release().await;
        }
        return Err(e);
    }
    tracing::info!(batch_id = %batch_id, table = %committed.table, received = counts.received,
        accepted = counts.accepted, rejected = counts.rejected, "batch staged");
    // The batch is committed: it is acknowledged whatever happens next. The ledger's record (with
    // its files) is the better answer, if the ledger gives it within its timeout.
    let read = tokio::time::timeout(app.config.ledger.timeout, app.ledger.get_batch(batch_id)).await;
    let record = match read {
        Ok(Ok(Some(record))) => record,
        Ok(Ok(None)) | Ok(Err(_)) | Err(_) => {
            tracing::warn!(batch_id = %batch_id, "batch committed, but the ledger did not read it back; answering from the commit");
            committed
        }
    };
    Ok(IngestOutcome::Stored(Box::new(record)))
}

/// A batch stored by this request, or the one an earlier request with its `Idempotency-Key` made.
pub enum Stored {
    Fresh(IngestOutcome),
    Replayed(Box<BatchRecord>),
}

/// [`ingest`] at most once per `Idempotency-Key` of a partner: the first request with a key
/// makes the batch; a later one with the same body gets that batch back, one with another body
/// a conflict. A duplicate that arrives while the first is still being stored waits for it (up
/// to `limits.processing_secs`). A request that fails before its batch is committed lets go of
/// the key, so that its retry is stored.
pub async fn ingest_once(app: &App, request: IngestRequest, key: String) -> Result<Stored, IngestError> {
    let claim = IdempotencyClaim {
        partner: request.partner.clone(),
        key,
        body_hash: request_digest(&request),
        batch_id: request.batch_id,
        owner: app.replica.name().to_string(),
        lease: idempotency_lease(&app.config),
        window: app.config.idempotency.window,
    };
    let deadline = tokio::time::Instant::now() + app.config.limits.processing;
    loop {
        match app.ledger.claim_idempotency(&claim).await? {
            IdempotencyState::Claimed => {
                let mut hold = KeyHold { app, claim: &claim, submitted: false, settled: false };
                let outcome = ingest_holding(app, request, Some(&mut hold.submitted)).await;
                match &outcome {
                    Err(e) if !hold.submitted || e.before_commit() => hold.release().await,
                    _ => hold.settled = true,
                }
                return outcome.map(Stored::Fresh);
            }
            IdempotencyState::Committed { batch_id, body_hash }
            | IdempotencyState::InProgress { batch_id, body_hash }
                if body_hash != claim.body_hash =>
            {
                return Err(IngestError::IdempotencyConflict(batch_id));
            }
            IdempotencyState::Committed { batch_id, .. } => {
                let batch = app.ledger.get_batch(batch_id).await?;
                let batch = batch.ok_or_else(|| LedgerError::Missing(format!("batch {batch_id}")))?;
                return Ok(Stored::Replayed(Box::new(batch)));
            }
            IdempotencyState::InProgress { batch_id, .. } => {
                if tokio::time::Instant::now() >= deadline {
                    return Err(IngestError::IdempotencyInProgress(batch_id));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// An `Idempotency-Key` a request holds while it makes its batch. A request that ends before its
/// rows reach the buffers (an error, or a client that went away and dropped the handler) lets
/// the key go, so that a retry is stored; once they are there the batch may be committed, and the
/// key is kept unless the failure is known to come before the commit.
struct KeyHold<'a> {
    app: &'a App,
    claim: &'a IdempotencyClaim,
    submitted: bool,
    settled: bool,
}

impl KeyHold<'_> {
    async fn release(mut self) {
        self.settled = true;
        free_key(self.app.ledger.as_ref(), self.claim).await;
    }
}

/// Lets go of a request's key; if the ledger refuses, the key frees when its lease ends.
async fn free_key(ledger: &dyn crate::ledger::Ledger, claim: &IdempotencyClaim) {
    if let Err(e) = ledger.release_idempotency(&claim.partner, &claim.key, claim.batch_id).await {
        tracing::warn!(error = %e, batch_id = %claim.batch_id,
            "could not release the idempotency key of a request that stored nothing; it frees when its lease ends");
    }
}

impl Drop for KeyHold<'_> {
    fn drop(&mut self) {
        if self.settled || self.submitted {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let (ledger, claim) = (self.app.ledger.clone(), self.claim.clone());
        runtime.spawn(async move { free_key(ledger.as_ref(), &claim).await });
    }
}

/// A replay request's hold on the rejects it corrects, while its batch is not yet handed to the
/// buffers: a request that ends before then (an error, a client that went away) lets it go.
struct ReplayHold<'a> {
    app: &'a App,
    batch: Uuid,
    submitted: bool,
}

impl ReplayHold<'_> {
    /// Lets go now, awaited (the drop would only spawn it).
    async fn release(mut self) {
        self.submitted = true;
        free_replay(self.app.ledger.as_ref(), self.batch).await;
    }
}

impl Drop for ReplayHold<'_> {
    fn drop(&mut self) {
        if self.submitted {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let (ledger, batch) = (self.app.ledger.clone(), self.batch);
        runtime.spawn(async move { free_replay(ledger.as_ref(), batch).await });
    }
}

/// Lets go of a replay's hold; if the ledger refuses, the hold ends with its lease.
async fn free_replay(ledger: &dyn crate::ledger::Ledger, batch: Uuid) {
    if let Err(e) = ledger.release_replay(batch).await {
        tracing::warn!(error = %e, batch_id = %batch,
            "could not release the rejects a replay that stored nothing held; they free when its lease ends");
    }
}

impl IngestError {
    /// Whether the batch certainly was not committed: the failure came before the ledger commit
    /// began. A ledger failure or timeout during the commit leaves its outcome unknown.
    fn before_commit(&self) -> bool {
        match self {
            IngestError::Decode(_)
            | IngestError::Catalog(_)
            | IngestError::Timeout(_)
            | IngestError::Frozen { .. }
            | IngestError::ReplayItems(_)
            | IngestError::Replay(_) => true,
            IngestError::Buffer(e) => matches!(
                e,
                BufferError::OverBudget
                    | BufferError::ShuttingDown
                    | BufferError::StageUnavailable(_)
                    | BufferError::StageDenied(_)
            ),
            IngestError::Ledger(_)
            | IngestError::Task(_)
            | IngestError::IdempotencyConflict(_)
            | IngestError::IdempotencyInProgress(_) => false,
        }
    }
}

/// How long a request holds its `Idempotency-Key` before another may take it: longer than the
/// request can take to commit (its processing, the longest linger of its rows in a buffer, then
/// the stage write and the ledger commit of their flush), so a live request is never taken over.
/// A holder that died is released sooner, when its replica restarts.
pub(crate) fn idempotency_lease(config: &Config) -> Duration {
    let linger =
        config.tables.keys().map(|t| config.table_settings(t).linger).fold(config.defaults.linger, Duration::max);
    config.limits.processing + linger + config.stage.timeout + 2 * config.ledger.timeout + Duration::from_secs(60)
}

/// What makes two requests the same: their table, content type, encoding and body as sent.
fn request_digest(request: &IngestRequest) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    let replay_of = request.replay_of.map(|id| id.to_string()).unwrap_or_default();
    for part in [
        replay_of.as_bytes(),
        request.table.as_str().as_bytes(),
        request.content_type.as_deref().unwrap_or("").as_bytes(),
        request.content_encoding.as_deref().unwrap_or("").as_bytes(),
    ] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    hash.update(&request.body);
    hex::encode(hash.finalize())
}

/// The record of a batch as its commit writes it, for when the ledger cannot read it back.
fn committed_record(batch: &NewBatch) -> BatchRecord {
    let status = BatchStatus::on_commit(batch.counts.accepted);
    BatchRecord {
        id: batch.id,
        table: batch.table.clone(),
        partner: batch.partner.clone(),
        status,
        counts: batch.counts,
        rejects_by_code: batch.rejects_by_code.clone(),
        drift: batch.drift,
        schema_changes: Vec::new(),
        files: Vec::new(),
        copies: Vec::new(),
        received_at: batch.received_at,
        staged_at: (status == BatchStatus::Staged).then(Utc::now),
        loaded_at: None,
        error: None,
        replay_of: batch.replay_of,
        fixed: 0,
        fixing: 0,
    }
}

/// A request ready to buffer, or a dry run's answer.
enum Prepared {
    DryRun(DryRunReport),
    Store(Submission, FlushPolicy),
}

/// Decodes, evolves the table and validates; nothing is stored yet.
async fn prepare(app: &App, request: IngestRequest) -> Result<Prepared, IngestError> {
    let received_at = Utc::now();
    let batch_id = request.batch_id;
    let table = app.catalog.get(&request.table).await?;
    let format = decode::body_format(request.content_type.as_deref())?;
    let limits = DecodeLimits {
        max_decompressed_bytes: app.config.limits.max_decompressed_bytes,
        max_record_bytes: app.config.limits.max_record_bytes,
        max_records: app.config.limits.max_records_per_request,
        max_depth: app.config.limits.max_depth,
    };
    let encoding = request.content_encoding.clone();
    let body = request.body;
    let mut grant = request.grant;
    let budget = app.budget.max();
    let partner = request.partner.clone();
    // Records that pass as they are against the table as it is now are read straight into
    // column builders; the rest are parsed for a closer look. A replay's items are not records.
    let read_as = (table.schema(), table.aliases());
    let fast = request.replay_of.is_none().then(|| read_as.clone());
    let (mut records, fast_rows, grant, plain): (Vec<Decoded>, Option<Rows>, Grant, Bytes) = blocking(move || {
        let held = body.len();
        let plain = decode::decompress(body, encoding.as_deref(), limits.max_decompressed_bytes, &mut |n| {
            grant.grow_to(held + n).is_ok()
        })?;
        // The compressed body is gone; the text stays while parsing, and the parsed records are
        // estimated from its structure: reserved before parsing. A body that would need more than
        // the whole budget can never be parsed here: 413, not 503.
        let parsed = decode::parsed_footprint(&plain);
        let needed = plain.len().saturating_add(parsed);
        if needed > budget {
            return Err(DecodeError::TooLargeToParse { needed, budget });
        }
        if grant.resize(needed).is_err() {
            return Err(DecodeError::OverBudget);
        }
        let (records, rows) = match &fast {
            Some((schema, aliases)) => {
                // Builders for no more rows than the parse estimate already holds memory for.
                let room = parsed / reserved_per_row(schema.columns.len());
                let validator = Validator::new(schema, limits.max_depth).aliases(aliases);
                let mut reader = ReadAsSent::new(validator, schema.clone(), room);
                let records = decode::parse_records_with(&plain, format, &limits, &mut reader)?;
                (records, Some(reader.into_rows()))
            }
            None => (decode::parse_records(&plain, format, &limits)?, None),
        };
        Ok((records, rows, grant, plain))
    })
    .await??;
    app.metrics.bytes_received.get_or_create(&BytesLabels { form: "decompressed".into() }).inc_by(plain.len() as u64);
    // Rows read straight into columns hold to the schema and aliases they were read with; under
    // any other (a batch that evolved the table, or a table changed meanwhile) they are dropped,
    // and their records parsed and checked again: rare, as a table changes only so often, and
    // always exact.
    let recheck =
        move |schema: &Arc<TableSchema>, aliases: &BTreeMap<String, String>, records: Vec<Decoded>| match fast_rows {
            Some(rows) if **rows.schema() == **schema && *read_as.1 == *aliases => (records, rows),
            stale => {
                drop(stale);
                let records = decode::reparse(&plain, records, &limits);
                let rows = Rows::new(schema.clone(), records.len());
                (records, rows)
            }
        };
    // A replay's items carry the index each record had in the batch it corrects; those indexes
    // are taken (a dry run only checks them) before anything else is done with the records.
    let replay_indexes = match request.replay_of {
        Some(original) => {
            let (indexes, items) = split_items(records)?;
            records = items;
            let claim = ReplayClaim { original, replay: batch_id, indexes, lease: idempotency_lease(&app.config) };
            app.ledger.claim_replay(&claim, request.dry_run).await?.map_err(IngestError::Replay)?;
            Some(claim.indexes)
        }
        None => None,
    };
    let with_original_indexes = |mut checked: Checked| {
        if let Some(indexes) = &replay_indexes {
            let original = |position: u64| indexes.get(position as usize).copied().unwrap_or(position);
            checked.rows.indexes_mut().iter_mut().for_each(|index| *index = original(*index));
            checked.rejects.iter_mut().for_each(|reject| reject.index = original(reject.index));
        }
        checked
    };

    let mut schema = table.schema();
    let policy = table.drift();
    let aliases = table.aliases();
    let max_columns = app.config.limits.max_columns;
    // Columns the policy adds before validating: evolve's new fields up to the column cap, or
    // the rescue column the first time a rescue table gets a batch.
    let (planned, column_cap) = match policy {
        DriftPolicy::Evolve => {
            let (planning_schema, planning_aliases) = (schema.clone(), aliases.clone());
            let max_depth = app.config.limits.max_depth;
            let (mut planned, back) = blocking(move || {
                (plan_from_accepted(&planning_schema, &planning_aliases, &records, max_depth), records)
            })
            .await?;
            records = back;
            let room = max_columns.saturating_sub(schema.columns.len());
            let capped = planned.len() > room;
            planned.truncate(room);
            (planned, capped.then_some(max_columns))
        }
        DriftPolicy::Rescue if schema.position(RESCUED_DATA).is_none() => {
            (vec![Column { name: ColumnName::rescued(), ty: ColumnType::Variant, nullable: true }], None)
        }
        DriftPolicy::Freeze => {
            let fields = unknown_keys(&mut KeyResolver::new(&schema).with_aliases(&aliases), &records);
            if !fields.is_empty() {
                let mut fields = fields;
                fields.truncate(MAX_FROZEN_FIELDS);
                return Err(IngestError::Frozen { table: table.name.to_string(), fields });
            }
            (Vec::new(), None)
        }
        DriftPolicy::Rescue | DriftPolicy::DiscardValue | DriftPolicy::DiscardRow => (Vec::new(), None),
    };
    // Spent once the request is known to go on (a frozen table's 422 spends nothing).
    app.quotas.spend_records(&partner, records.len() as u64);
    let max_depth = app.config.limits.max_depth;
    let rules = |schema: &TableSchema, aliases: Arc<std::collections::BTreeMap<String, String>>| Rules {
        max_depth,
        aliases,
        unknown: match (policy, schema.position(RESCUED_DATA)) {
            (DriftPolicy::Rescue, Some(at)) => Unknown::Rescue(at),
            (DriftPolicy::DiscardValue, _) => Unknown::Drop,
            _ => Unknown::Reject,
        },
        column_cap,
    };
    if request.dry_run {
        let mut preview = (*schema).clone();
        preview.columns.extend(planned.iter().cloned());
        let preview = Arc::new(preview);
        let rules = rules(&preview, aliases.clone());
        let checked = blocking(move || {
            let (records, rows) = recheck(&preview, &rules.aliases, records);
            check_records(&preview, records, rules, rows)
        });
        let checked = with_original_indexes(checked.await?);
        return Ok(Prepared::DryRun(dry_run_report(&table.name, checked, planned)));
    }
    if !planned.is_empty() {
        schema = app.catalog.evolve(&table, &planned, batch_id, &partner).await?;
    }
    crate::fault::crash_point(crate::fault::CrashPoint::Validating);
    let validate_schema: Arc<TableSchema> = schema.clone();
    // The aliases as of the evolve (which re-reads the table under its DDL lock).
    let rules = rules(&validate_schema, table.aliases());
    let checked = blocking(move || {
        let (records, rows) = recheck(&validate_schema, &rules.aliases, records);
        check_records(&validate_schema, records, rules, rows)
    });
    let mut checked = with_original_indexes(checked.await?);
    let counts = Counts {
        received: checked.received,
        accepted: checked.rows.len() as u64,
        rejected: checked.rejects.len() as u64,
        loaded: 0,
    };
    let rejects_by_code = checked.rejects_by_code();
    // The rejects go to the stage while the grant still holds what the whole body took: their
    // lines are a part of it.
    let rejects = std::mem::take(&mut checked.rejects);
    let rejects = crate::rejects::store(&app.stage, &table.name, batch_id, received_at, rejects)
        .await
        .map_err(|e| IngestError::Buffer(e.into()))?;
    // The text, the parsed records and the rejects are gone: from here on the request holds
    // its rows.
    let drift = drift_counts(&checked);
    let rows = checked.rows.finish().map_err(|e| IngestError::Task(format!("accepted rows: {e}")))?;
    let mut grant = grant;
    grant.shrink_to(rows.memory_bytes());
    let batch = NewBatch {
        id: batch_id,
        table: table.name.to_string(),
        partner: request.partner,
        counts,
        rejects_by_code,
        drift,
        received_at,
        rejects,
        replay_of: request.replay_of,
    };
    let submission = Submission { batch, rows, grant: Some(grant) };
    Ok(Prepared::Store(submission, FlushPolicy::from_settings(&app.config.table_settings(&table.name))))
}

/// What the drift policy did to a request's accepted records.
fn drift_counts(checked: &Checked) -> DriftCounts {
    DriftCounts { discarded_values: checked.discarded_values, rescued_values: checked.rescued_values }
}

fn dry_run_report(table: &str, checked: Checked, planned: Vec<Column>) -> DryRunReport {
    let rejects_by_code = checked.rejects_by_code();
    DryRunReport {
        table: table.to_string(),
        dry_run: true,
        counts: Counts {
            received: checked.received,
            accepted: checked.rows.len() as u64,
            rejected: checked.rejects.len() as u64,
            loaded: 0,
        },
        rejects_by_code,
        drift: drift_counts(&checked),
        schema_changes: planned,
        rejects: checked.rejects.into_iter().take(1000).collect(),
    }
}

/// Long-polls the ledger until the batch is final or `timeout` passes; returns its latest state.
pub async fn wait_until_final(app: &App, id: Uuid, timeout: Duration) -> Result<Option<BatchRecord>, LedgerError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let woken = app.loaded.notified();
        let batch = app.ledger.get_batch(id).await?;
        let done = batch.as_ref().is_none_or(|b| b.status.is_final());
        if done || tokio::time::Instant::now() >= deadline {
            return Ok(batch);
        }
        // The loader notifies after each round; the short sleep covers other replicas' loads.
        let _ = tokio::time::timeout_at(deadline.min(tokio::time::Instant::now() + Duration::from_millis(250)), woken)
            .await;
    }
}

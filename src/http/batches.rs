//! `/v1/tables/{table}/batches` and `/v1/batches`: ingest and batch status.

use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Schema, SchemaType, Type};
use utoipa::openapi::RefOr;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::error::{ApiError, ErrorBody, ErrorCode};
use super::extract::{table_name, BatchPath, TablePath};
use crate::app::AppState;
use crate::auth::Principal;
use crate::budget::Grant;
use crate::ingest::reject::{Reject, RejectCode};
use crate::ledger::{BatchFilter, BatchRecord, RejectFilter};
use crate::metrics::BytesLabels;
use crate::pipeline::{self, IngestOutcome, IngestRequest, Stored};
use crate::rejects::RejectsError;
use crate::schema::normalize_identifier;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WaitFor {
    /// Answer once the records are durable in the stage (202).
    #[default]
    Staged,
    /// Answer once the batch is loaded (200), or with its current state after `timeout` (202).
    Loaded,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct IngestParams {
    /// `staged` (default) or `loaded`.
    pub wait: Option<WaitFor>,
    /// Seconds to wait with `wait=loaded`: 0 to 3600 (default 30), capped by `limits.max_wait_secs`.
    #[param(minimum = 0, maximum = 3600)]
    pub timeout: Option<u64>,
    /// Validate only; nothing is stored and no column is added.
    pub dry_run: Option<bool>,
}

/// The JSON body of an ingest: a non-empty array of records, or the same under `records`. A record
/// that is not an object is rejected on its own (`not_an_object`), never the whole batch, so the
/// items may be any JSON value. (The body is read as bytes; this type only describes it.)
pub struct JsonRecords;

impl utoipa::PartialSchema for JsonRecords {
    fn schema() -> RefOr<Schema> {
        let records =
            || ArrayBuilder::new().items(ObjectBuilder::new().schema_type(SchemaType::AnyValue)).min_items(Some(1));
        let envelope = ObjectBuilder::new().property("records", records()).required("records");
        OneOfBuilder::new()
            .item(records())
            .item(envelope)
            .description(Some("A non-empty JSON array of records, or `{\"records\": [...]}`"))
            .into()
    }
}

impl ToSchema for JsonRecords {}

/// The NDJSON body of an ingest: one record per line, at least one line that is not blank.
pub struct NdjsonRecords;

impl utoipa::PartialSchema for NdjsonRecords {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(SchemaType::Type(Type::String))
            .pattern(Some(r"\S"))
            .description(Some("One JSON record per line"))
            .into()
    }
}

impl ToSchema for NdjsonRecords {}

/// What a 200 from ingest holds: a final batch, or with `dry_run=true` a dry-run report.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum IngestResult {
    Batch(BatchRecord),
    DryRun(crate::pipeline::DryRunReport),
}

/// Ingest a batch of records.
///
/// Body: a JSON array of objects, `{"records": [...]}`, or NDJSON (`application/x-ndjson`),
/// optionally `Content-Encoding: gzip` or `zstd`. Bad records are rejected one by one.
#[utoipa::path(
    post,
    path = "/v1/tables/{table}/batches",
    tag = "batches",
    params(
        ("table" = String, Path, description = "Table name: an identifier, case-insensitive", pattern = r"^[A-Za-z_][A-Za-z0-9_$]{0,254}$"),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes a retry safe: the same key and body return the first request's batch (with `Idempotent-Replayed: true`) for idempotency.window_secs; 1 to 255 visible ASCII characters", pattern = r"^[!-~]{1,255}$"),
        IngestParams,
    ),
    request_body(
        description = "Records: a JSON array of objects, `{\"records\": [...]}`, or NDJSON",
        content(
            (JsonRecords = "application/json"),
            (NdjsonRecords = "application/x-ndjson"),
        )
    ),
    responses(
        (status = 202, description = "Durably staged", body = BatchRecord,
            headers(("Idempotent-Replayed" = String, description = "`true` when this is the batch an earlier request with the same Idempotency-Key made"))),
        (status = 200, description = "Final: loaded (wait=loaded) or rejected (no record accepted); with dry_run=true a DryRunReport", body = IngestResult,
            headers(("Idempotent-Replayed" = String, description = "`true` when this is the batch an earlier request with the same Idempotency-Key made"))),
        (status = 400, description = "Unparseable body, invalid table name, query or Idempotency-Key", body = ErrorBody),
        (status = 403, description = "The key may not write this table", body = ErrorBody),
        (status = 404, description = "Unknown table", body = ErrorBody),
        (status = 409, description = "Idempotency-Key used with another body (`idempotency_conflict`), or its first request is still being stored (`idempotency_in_progress`, with Retry-After)", body = ErrorBody,
            headers(("Retry-After" = u32, description = "With `idempotency_in_progress`: seconds to wait before retrying"))),
        (status = 413, description = "Too large", body = ErrorBody),
        (status = 422, description = "The table's drift policy is freeze and records carry unknown fields (`schema_frozen`, `details.fields`); nothing was stored", body = ErrorBody),
        (status = 408, description = "The body did not arrive in time", body = ErrorBody),
        (status = 415, description = "Unsupported content type or encoding", body = ErrorBody),
        (status = 500, description = "Internal fault, or the stage refused the gateway's credentials (`stage_misconfigured`); nothing was stored", body = ErrorBody),
        (status = 503, description = "Not ready, over the memory budget, or a backend unavailable; nothing was stored", body = ErrorBody,
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
    )
)]
pub async fn ingest(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    TablePath(table): TablePath,
    params: Result<Query<IngestParams>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let Query(params) = params?;
    let partner = principal.partner.clone();
    store(&app, &principal, Target { table, partner, replay_of: None }, params, headers, body).await
}

/// Where a request's records go: a table, for a partner, and for a replay the batch it corrects.
struct Target {
    table: crate::schema::TableName,
    partner: crate::ledger::Partner,
    replay_of: Option<Uuid>,
}

/// Reads, validates and stores a request's records (or dry-runs them), and answers as ingest
/// documents.
async fn store(
    app: &AppState,
    principal: &Principal,
    target: Target,
    params: IngestParams,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let Target { table, partner, replay_of } = target;
    let started = std::time::Instant::now();
    at_most("timeout", params.timeout, MAX_TIMEOUT_SECS)?;
    if !principal.may_write(&table) {
        return Err(ApiError::new(ErrorCode::Forbidden, format!("this API key may not write table {table}")));
    }
    let idempotency_key = idempotency_key(&headers)?;
    // A declared length is spent before the body is read, so that many concurrent requests let
    // in at once cannot each spend the whole bucket; the rest once it has arrived.
    let declared = content_length(&headers).unwrap_or(0) as u64;
    app.quotas.spend_bytes(&principal.partner, declared);
    let (body, grant) = read_body(app, &headers, body).await?;
    app.metrics.bytes_received.get_or_create(&BytesLabels { form: "wire".into() }).inc_by(body.len() as u64);
    app.quotas.spend_bytes(&principal.partner, (body.len() as u64).saturating_sub(declared));
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let dry_run = params.dry_run.unwrap_or(false);
    let batch_id = Uuid::now_v7();
    // The span names the batch once it is known to be this one: at once for a plain request,
    // at the end for one with an Idempotency-Key (which may answer with the key's first batch);
    // a dry run stores none.
    let known = !dry_run && idempotency_key.is_none();
    super::record_batch(known.then_some(batch_id), table.as_str(), partner.as_str());
    let request = IngestRequest {
        batch_id,
        table,
        grant,
        partner,
        content_type: header(header::CONTENT_TYPE),
        content_encoding: header(header::CONTENT_ENCODING),
        body,
        dry_run,
        replay_of,
    };
    // A dry run stores nothing, so there is nothing for its key to make once.
    let stored = match idempotency_key {
        Some(key) if !dry_run => pipeline::ingest_once(app, request, key).await?,
        _ => Stored::Fresh(pipeline::ingest(app, request).await?),
    };
    let (batch, replayed) = match stored {
        Stored::Fresh(IngestOutcome::DryRun(report)) => {
            return Ok((StatusCode::OK, Json(IngestResult::DryRun(report))).into_response())
        }
        Stored::Fresh(IngestOutcome::Stored(batch)) => {
            app.metrics.batch_stored(&batch, started.elapsed());
            (batch, false)
        }
        Stored::Replayed(batch) => (batch, true),
    };
    if !known {
        tracing::Span::current().record("batch_id", tracing::field::display(batch.id));
    }
    let waits = params.wait.unwrap_or_default() == WaitFor::Loaded;
    let batch = if waits && !batch.status.is_final() {
        let timeout = Duration::from_secs(params.timeout.unwrap_or(30)).min(app.config.limits.max_wait);
        pipeline::wait_until_final(app, batch.id, timeout).await?.map(Box::new).unwrap_or(batch)
    } else {
        batch
    };
    // As documented: 200 for a batch that accepted no record (final at once), or one this
    // request waited for until it was final; else 202, even when the loader was quicker than
    // the answer (the body says so). A replay of an Idempotency-Key answers by the same rule.
    let code = if batch.counts.accepted == 0 || (waits && batch.status.is_final()) {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    let mut response = if code == StatusCode::OK {
        (code, Json(IngestResult::Batch(*batch))).into_response()
    } else {
        (code, Json(batch)).into_response()
    };
    if replayed {
        response.headers_mut().insert("idempotent-replayed", header::HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// The body of a replay: corrected records, each keyed by the index it had in the batch.
pub struct ReplayItems;

impl utoipa::PartialSchema for ReplayItems {
    fn schema() -> RefOr<Schema> {
        let item = || {
            ObjectBuilder::new()
                .property(
                    "index",
                    ObjectBuilder::new()
                        .schema_type(SchemaType::Type(Type::Integer))
                        .minimum(Some(0))
                        .description(Some("The record's index in the batch (as its reject names it)")),
                )
                .property("record", ObjectBuilder::new().schema_type(SchemaType::AnyValue))
                .required("index")
                .required("record")
                .additional_properties(Some(utoipa::openapi::schema::AdditionalProperties::FreeForm(false)))
        };
        let items = || ArrayBuilder::new().items(item()).min_items(Some(1));
        let envelope = ObjectBuilder::new().property("records", items()).required("records");
        OneOfBuilder::new()
            .item(items())
            .item(envelope)
            .description(Some(
                "A non-empty JSON array of `{\"index\": n, \"record\": {...}}`, or the same under `records`; as NDJSON, one item per line",
            ))
            .into()
    }
}

impl ToSchema for ReplayItems {}

/// Replay: correct a batch's rejects.
///
/// Each item carries a corrected record and the index its reject has in the batch. The records
/// are validated like any ingest, into the batch's table, and stored as a new batch (the
/// replay) whose record indexes are the original ones and whose `replay_of` names the batch; the
/// batch's `fixed` then counts the rejects a loaded replay corrected. A reject is corrected by
/// one replay at most: one held by a replay still on its way, or already loaded, is 409
/// `already_replayed`; one the replay rejected again (or a failed replay) may be replayed again.
/// Replaying a replay's rejects corrects the batch that replay corrects. Body, headers and
/// answers are ingest's (a dry run checks the indexes and keeps nothing); an item counts
/// against `limits.max_record_bytes` and `limits.max_depth` as a whole.
#[utoipa::path(
    post,
    path = "/v1/batches/{id}/replay",
    tag = "batches",
    params(
        ("id" = String, Path, description = "The batch whose rejects the body corrects (a UUID); anything else names no batch"),
        ("Idempotency-Key" = Option<String>, Header, description = "As for ingest", pattern = r"^[!-~]{1,255}$"),
        IngestParams,
    ),
    request_body(
        description = "Corrected records keyed by their index: JSON, or NDJSON with one item per line",
        content((ReplayItems = "application/json"), (NdjsonRecords = "application/x-ndjson"))
    ),
    responses(
        (status = 202, description = "The replay batch, durably staged", body = BatchRecord,
            headers(("Idempotent-Replayed" = String, description = "`true` when this is the batch an earlier request with the same Idempotency-Key made"))),
        (status = 200, description = "Final (as for ingest); with dry_run=true a DryRunReport", body = IngestResult,
            headers(("Idempotent-Replayed" = String, description = "`true` when this is the batch an earlier request with the same Idempotency-Key made"))),
        (status = 400, description = "Unparseable body, query or Idempotency-Key", body = ErrorBody),
        (status = 403, description = "The key may not write the batch's table", body = ErrorBody),
        (status = 404, description = "No such batch, or its table is gone", body = ErrorBody),
        (status = 408, description = "The body did not arrive in time", body = ErrorBody),
        (status = 409, description = "A record is already corrected by another replay (`already_replayed`, `details.index` and `details.batch_id`), or an Idempotency-Key conflict as for ingest", body = ErrorBody,
            headers(("Retry-After" = u32, description = "With `idempotency_in_progress`: seconds to wait before retrying"))),
        (status = 413, description = "Too large", body = ErrorBody),
        (status = 415, description = "Unsupported content type or encoding", body = ErrorBody),
        (status = 422, description = "An item is malformed, two items name one index, or an index is not a reject of the batch (`invalid_replay`, `details.pointer` or `details.indexes`); or the table is frozen (`schema_frozen`). Nothing was stored", body = ErrorBody),
        (status = 500, description = "Internal fault, or the stage refused the gateway's credentials (`stage_misconfigured`); nothing was stored", body = ErrorBody),
        (status = 503, description = "Not ready, over the memory budget, or a backend unavailable; nothing was stored", body = ErrorBody,
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
    )
)]
pub async fn replay(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    BatchPath(id): BatchPath,
    params: Result<Query<IngestParams>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let Query(params) = params?;
    let original = visible_batch(&app, &principal, id).await?;
    let table = table_name(&original.table)?;
    // A replay's rejects carry the indexes of the batch it corrects: replaying them corrects
    // that batch, so that each of its records has one place where it is held.
    let root = original.replay_of.unwrap_or(id);
    // The replay belongs to the batch's partner, whoever (an operator, say) sends it.
    let target = Target { table, partner: original.partner, replay_of: Some(root) };
    store(&app, &principal, target, params, headers, body).await
}

/// The `Idempotency-Key` header, if sent: 1 to 255 visible ASCII characters, or 400.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else { return Ok(None) };
    let key = value.to_str().ok().filter(|k| (1..=255).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()));
    key.map(|k| Some(k.to_string())).ok_or_else(|| {
        ApiError::new(ErrorCode::InvalidHeader, "Idempotency-Key must be 1 to 255 visible ASCII characters")
    })
}

/// Reads a request body under `limits.max_body_bytes` and the memory budget: a declared
/// `Content-Length` over the limit is refused before a byte is read, its first MiB is reserved
/// up front, and the grant grows before every chunk is kept, so a flood of large bodies is
/// refused (503) instead of held, and a slow client holds only what it has sent.
async fn read_body(app: &AppState, headers: &HeaderMap, body: Body) -> Result<(Bytes, Grant), ApiError> {
    let limit = app.config.limits.max_body_bytes;
    let too_large = || ApiError::new(ErrorCode::PayloadTooLarge, "request body is larger than limits.max_body_bytes");
    let declared = content_length(headers);
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let upfront = declared.unwrap_or(0).min(UPFRONT_BYTES);
    let mut grant = app.budget.reserve(upfront)?;
    let mut received = BytesMut::with_capacity(upfront);
    let mut chunks = body.into_data_stream();
    let deadline = tokio::time::Instant::now() + app.config.limits.body_total;
    let idle = app.config.limits.body_idle;
    loop {
        let wait = tokio::time::timeout_at(deadline.min(tokio::time::Instant::now() + idle), chunks.next());
        let Ok(next) = wait.await else {
            let message = format!(
                "the request body did not arrive within limits.body_idle_secs ({}s) or limits.body_secs ({}s)",
                idle.as_secs(),
                app.config.limits.body_total.as_secs()
            );
            return Err(ApiError::new(ErrorCode::RequestTimeout, message));
        };
        let Some(chunk) = next else { break };
        let chunk = chunk.map_err(|e| ApiError::new(ErrorCode::InvalidBody, format!("cannot read the body: {e}")))?;
        let total = received.len() + chunk.len();
        if total > limit {
            return Err(too_large());
        }
        grant.grow_to(total)?;
        if received.is_empty() {
            // Once per request, however its body is cut into chunks.
            crate::fault::crash_point(crate::fault::CrashPoint::Receiving);
        }
        if received.capacity() < total {
            // Grown to the declared length once half of it is here (as doubling would), so a
            // body is copied fewer times, and never ahead of what the grant holds by more.
            let want = declared.filter(|&d| d >= total && d <= total.saturating_mul(2)).unwrap_or(total);
            received.reserve(want - received.len());
        }
        received.extend_from_slice(&chunk);
    }
    Ok((received.freeze(), grant))
}

/// The `Content-Length` a request declares, if any.
fn content_length(headers: &HeaderMap) -> Option<usize> {
    headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok())
}

/// Most of a declared body reserved before it arrives.
const UPFRONT_BYTES: usize = 1 << 20;

/// Longest `timeout` a request may ask for; `limits.max_wait_secs` caps it further.
const MAX_TIMEOUT_SECS: u64 = 3600;

/// A query parameter within its documented maximum, or 400 `invalid_query`.
fn at_most(name: &str, value: Option<u64>, max: u64) -> Result<(), ApiError> {
    match value {
        Some(v) if v > max => {
            Err(ApiError::new(ErrorCode::InvalidQuery, format!("{name} must be at most {max}, not {v}")))
        }
        _ => Ok(()),
    }
}

/// A page size as documented: 1 to 1000, 100 when absent.
fn page_limit(limit: Option<u32>) -> Result<u32, ApiError> {
    match limit.unwrap_or(100) {
        limit @ 1..=1000 => Ok(limit),
        other => Err(ApiError::new(ErrorCode::InvalidQuery, format!("limit must be 1 to 1000, not {other}"))),
    }
}

/// Status of one batch.
#[utoipa::path(
    get,
    path = "/v1/batches/{id}",
    tag = "batches",
    params(("id" = String, Path, description = "Batch id (a UUID); anything else names no batch")),
    responses(
        (status = 200, body = BatchRecord),
        (status = 404, description = "No such batch", body = ErrorBody),
        (status = 503, description = "Ledger unavailable", body = ErrorBody),
    )
)]
pub async fn get_batch(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    BatchPath(id): BatchPath,
) -> Result<Json<BatchRecord>, ApiError> {
    visible_batch(&app, &principal, id).await.map(Json)
}

/// A batch the caller may read; another partner's batch is as absent as one that never was.
async fn visible_batch(app: &AppState, principal: &Principal, id: Uuid) -> Result<BatchRecord, ApiError> {
    let batch = app.ledger.get_batch(id).await?.filter(|b| principal.may_read(&b.partner));
    batch.ok_or_else(|| ApiError::new(ErrorCode::BatchNotFound, format!("no batch {id}")))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RejectParams {
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// Cursor from the previous page's `next` (a record index).
    #[param(minimum = 0, maximum = 9223372036854775807_i64)]
    pub after: Option<u64>,
    /// Only rejects with an error of this code (with `column`, one error of this code about
    /// that column).
    #[param(inline)]
    pub code: Option<RejectCode>,
    /// Only rejects with an error about this column, named as rejects name it: normalised as
    /// columns are (`amount` is `AMOUNT`), aliases not resolved.
    #[param(max_length = 255)]
    pub column: Option<String>,
}

impl RejectParams {
    /// The filter the query asks for. A name of at most 255 characters that cannot be a column
    /// (too long once normalised, say) selects no reject.
    fn filter(&self) -> Result<RejectFilter, ApiError> {
        if let Some(raw) = self.column.as_deref().filter(|raw| raw.chars().count() > 255) {
            let message = format!("column must be at most 255 characters, not {}", raw.chars().count());
            return Err(ApiError::new(ErrorCode::InvalidQuery, message));
        }
        let column = self.column.as_deref().map(|raw| normalize_identifier(raw).unwrap_or_else(|_| raw.to_string()));
        Ok(RejectFilter { code: self.code, column })
    }
}

/// One page of rejects.
#[derive(Debug, Serialize, ToSchema)]
pub struct RejectPage {
    pub rejects: Vec<Reject>,
    /// Pass as `after` for the next page; null on the last page.
    pub next: Option<String>,
}

/// Rejected records of a batch, by index. With `Accept: application/x-ndjson`, all of them as a stream.
#[utoipa::path(
    get,
    path = "/v1/batches/{id}/rejects",
    tag = "batches",
    params(("id" = String, Path, description = "Batch id (a UUID); anything else names no batch"), RejectParams),
    responses(
        (status = 200, description = "A page of rejects; with `Accept: application/x-ndjson`, every reject, one JSON object per line",
            content((RejectPage = "application/json"), (Reject = "application/x-ndjson"))),
        (status = 400, description = "Invalid query", body = ErrorBody),
        (status = 404, description = "No such batch", body = ErrorBody),
        (status = 500, description = "Internal fault: the stage refused the gateway's credentials, or a rejects object is missing or was changed", body = ErrorBody),
        (status = 503, description = "Ledger unavailable, or the stage holding the rejects", body = ErrorBody),
    )
)]
pub async fn list_rejects(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    BatchPath(id): BatchPath,
    params: Result<Query<RejectParams>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Query(params) = params?;
    at_most("after", params.after, i64::MAX as u64)?;
    let filter = params.filter()?;
    visible_batch(&app, &principal, id).await?;
    let wants_ndjson =
        headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("application/x-ndjson"));
    if wants_ndjson {
        return Ok(stream_rejects(app, id, filter, params.after));
    }
    let limit = page_limit(params.limit)?;
    let rejects = crate::rejects::page(app.ledger.as_ref(), &app.stage, id, &filter, params.after, limit).await?;
    let next = (rejects.len() == limit as usize).then(|| rejects.last().map(|r| r.index.to_string())).flatten();
    Ok(Json(RejectPage { rejects, next }).into_response())
}

fn stream_rejects(app: AppState, id: Uuid, filter: RejectFilter, after: Option<u64>) -> Response {
    const PAGE: u32 = 1000;
    let filter = std::sync::Arc::new(filter);
    let pages = futures::stream::try_unfold(Some(after), move |cursor| {
        let (app, filter) = (app.clone(), filter.clone());
        async move {
            let Some(after) = cursor else { return Ok(None) };
            let rejects = crate::rejects::page(app.ledger.as_ref(), &app.stage, id, &filter, after, PAGE).await;
            let rejects =
                rejects.inspect_err(|e| tracing::warn!(batch_id = %id, error = %e, "rejects stream cut short"))?;
            let mut chunk = Vec::new();
            for reject in &rejects {
                // A reject is JSON values and strings: writing it to memory cannot fail.
                serde_json::to_writer(&mut chunk, reject)
                    .map_err(|e| RejectsError::Corrupt { path: format!("batch {id}"), problem: e.to_string() })?;
                chunk.push(b'\n');
            }
            let next = (rejects.len() == PAGE as usize).then(|| rejects.last().map(|r| r.index));
            Ok::<_, RejectsError>(if rejects.is_empty() { None } else { Some((Bytes::from(chunk), next)) })
        }
    });
    ([(header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(pages)).into_response()
}

/// A page of batches.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchPage {
    /// Newest first; `files`, `copies` and `schema_changes` are empty in lists (read one batch
    /// for them).
    pub batches: Vec<BatchRecord>,
    /// Pass as `after` for the next page; null on the last page.
    pub next: Option<Uuid>,
}

/// Batches, newest first: every partner's for an operator, a partner's own for its key.
#[utoipa::path(
    get,
    path = "/v1/batches",
    tag = "batches",
    params(BatchFilter),
    responses(
        (status = 200, body = BatchPage),
        (status = 400, description = "Invalid query", body = ErrorBody),
        (status = 503, description = "Ledger unavailable", body = ErrorBody),
    )
)]
pub async fn list_batches(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    filter: Result<Query<BatchFilter>, QueryRejection>,
) -> Result<Json<BatchPage>, ApiError> {
    let Query(mut filter) = filter?;
    if !principal.is_operator() {
        // A partner lists its own batches, whatever partner it names.
        filter.partner = Some(principal.partner.clone());
    }
    if let Some(table) = &filter.table {
        filter.table = Some(table_name(table)?.to_string());
    }
    let limit = page_limit(filter.limit)?;
    filter.limit = Some(limit);
    let batches = app.ledger.list_batches(&filter).await?;
    let next = (batches.len() == limit as usize).then(|| batches.last().map(|b| b.id)).flatten();
    Ok(Json(BatchPage { batches, next }))
}

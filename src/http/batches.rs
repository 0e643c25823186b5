//! `/v1/tables/{table}/batches` and `/v1/batches`: ingest and batch status.

use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::error::{ApiError, ErrorBody};
use crate::app::AppState;
use crate::catalog::table_name;
use crate::ingest::reject::Reject;
use crate::ledger::{BatchFilter, BatchRecord};
use crate::pipeline::{self, IngestOutcome, IngestRequest};

/// Until partner API keys exist, every batch belongs to this partner.
pub const ANONYMOUS_PARTNER: &str = "anonymous";

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
    /// Seconds to wait with `wait=loaded` (default 30, capped by `limits.max_wait_secs`).
    pub timeout: Option<u64>,
    /// Validate only; nothing is stored and no column is added.
    pub dry_run: Option<bool>,
}

/// Ingest a batch of records.
///
/// Body: a JSON array of objects, `{"records": [...]}`, or NDJSON (`application/x-ndjson`),
/// optionally `Content-Encoding: gzip` or `zstd`. Bad records are rejected one by one.
#[utoipa::path(
    post,
    path = "/v1/tables/{table}/batches",
    tag = "batches",
    params(("table" = String, Path, description = "Table name (case-insensitive)"), IngestParams),
    request_body(content = Vec<Object>, description = "Records", content_type = "application/json"),
    responses(
        (status = 202, description = "Durably staged", body = BatchRecord),
        (status = 200, description = "Final: loaded (wait=loaded) or rejected (no record accepted); with dry_run=true a DryRunReport", body = BatchRecord),
        (status = 400, description = "Unparseable body", body = ErrorBody),
        (status = 404, description = "Unknown table", body = ErrorBody),
        (status = 413, description = "Too large", body = ErrorBody),
        (status = 415, description = "Unsupported content type or encoding", body = ErrorBody),
        (status = 503, description = "Not ready or over the memory budget", body = ErrorBody),
    )
)]
pub async fn ingest(
    State(app): State<AppState>,
    Path(table): Path<String>,
    params: Result<Query<IngestParams>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = params?;
    let body = body?;
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let request = IngestRequest {
        table: table_name(&table)?,
        partner: ANONYMOUS_PARTNER.to_string(),
        content_type: header(header::CONTENT_TYPE),
        content_encoding: header(header::CONTENT_ENCODING),
        body,
        dry_run: params.dry_run.unwrap_or(false),
    };
    let batch = match pipeline::ingest(&app, request).await? {
        IngestOutcome::DryRun(report) => return Ok((StatusCode::OK, Json(report)).into_response()),
        IngestOutcome::Stored(batch) => batch,
    };
    let batch = if params.wait.unwrap_or_default() == WaitFor::Loaded && !batch.status.is_final() {
        let timeout = Duration::from_secs(params.timeout.unwrap_or(30).min(app.config.limits.max_wait_secs));
        pipeline::wait_until_final(&app, batch.id, timeout).await?.map(Box::new).unwrap_or(batch)
    } else {
        batch
    };
    let status = if batch.status.is_final() { StatusCode::OK } else { StatusCode::ACCEPTED };
    Ok((status, Json(batch)).into_response())
}

fn parse_batch_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::not_found("batch_not_found", format!("no batch {raw:?}")))
}

/// Status of one batch.
#[utoipa::path(
    get,
    path = "/v1/batches/{id}",
    tag = "batches",
    params(("id" = String, Path, description = "Batch id")),
    responses((status = 200, body = BatchRecord), (status = 404, body = ErrorBody))
)]
pub async fn get_batch(State(app): State<AppState>, Path(id): Path<String>) -> Result<Json<BatchRecord>, ApiError> {
    let id = parse_batch_id(&id)?;
    let batch = app.ledger.get_batch(id).await?;
    batch.map(Json).ok_or_else(|| ApiError::not_found("batch_not_found", format!("no batch {id}")))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RejectParams {
    /// Page size, 1 to 1000 (default 100).
    pub limit: Option<u32>,
    /// Cursor from the previous page's `next`.
    pub after: Option<u64>,
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
    params(("id" = String, Path, description = "Batch id"), RejectParams),
    responses(
        (status = 200, body = RejectPage, content_type = "application/json"),
        (status = 200, description = "Every reject, one per line", body = Reject, content_type = "application/x-ndjson"),
        (status = 404, body = ErrorBody)
    )
)]
pub async fn list_rejects(
    State(app): State<AppState>,
    Path(id): Path<String>,
    params: Result<Query<RejectParams>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Query(params) = params?;
    let id = parse_batch_id(&id)?;
    if app.ledger.get_batch(id).await?.is_none() {
        return Err(ApiError::not_found("batch_not_found", format!("no batch {id}")));
    }
    let wants_ndjson =
        headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("application/x-ndjson"));
    if wants_ndjson {
        return Ok(stream_rejects(app, id, params.after));
    }
    let limit = params.limit.unwrap_or(100).clamp(1, 1000);
    let rejects = app.ledger.list_rejects(id, params.after, limit).await?;
    let next = (rejects.len() == limit as usize).then(|| rejects.last().map(|r| r.index.to_string())).flatten();
    Ok(Json(RejectPage { rejects, next }).into_response())
}

fn stream_rejects(app: AppState, id: Uuid, after: Option<u64>) -> Response {
    const PAGE: u32 = 1000;
    let pages = futures::stream::try_unfold(Some(after), move |cursor| {
        let app = app.clone();
        async move {
            let Some(after) = cursor else { return Ok(None) };
            let rejects = app.ledger.list_rejects(id, after, PAGE).await?;
            let mut chunk = Vec::new();
            for reject in &rejects {
                serde_json::to_writer(&mut chunk, reject)
                    .map_err(|e| crate::ledger::LedgerError::Corrupt(e.to_string()))?;
                chunk.push(b'\n');
            }
            let next = (rejects.len() == PAGE as usize).then(|| rejects.last().map(|r| r.index));
            Ok::<_, crate::ledger::LedgerError>(if rejects.is_empty() {
                None
            } else {
                Some((Bytes::from(chunk), next))
            })
        }
    });
    ([(header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(pages)).into_response()
}

/// A page of batches.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchPage {
    /// Newest first; `files` and `schema_changes` are empty in lists (read one batch for them).
    pub batches: Vec<BatchRecord>,
    /// Pass as `after` for the next page; null on the last page.
    pub next: Option<Uuid>,
}

/// Batches, newest first, for operators.
#[utoipa::path(
    get,
    path = "/v1/batches",
    tag = "batches",
    params(BatchFilter),
    responses((status = 200, body = BatchPage), (status = 400, body = ErrorBody))
)]
pub async fn list_batches(
    State(app): State<AppState>,
    filter: Result<Query<BatchFilter>, QueryRejection>,
) -> Result<Json<BatchPage>, ApiError> {
    let Query(mut filter) = filter?;
    if let Some(table) = &filter.table {
        filter.table = Some(table_name(table)?);
    }
    let limit = filter.limit.unwrap_or(100).clamp(1, 1000);
    filter.limit = Some(limit);
    let batches = app.ledger.list_batches(&filter).await?;
    let next = (batches.len() == limit as usize).then(|| batches.last().map(|b| b.id)).flatten();
    Ok(Json(BatchPage { batches, next }))
}

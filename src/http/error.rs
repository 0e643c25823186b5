//! One error shape and one table from error kind to HTTP status.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::{json, Value};
use utoipa::ToSchema;

use crate::budget::OverBudget;
use crate::buffer::BufferError;
use crate::catalog::CatalogError;
use crate::ingest::decode::DecodeError;
use crate::ingest::replay::ReplayItemError;
use crate::ledger::{LedgerError, ReplayRefusal};
use crate::pipeline::IngestError;
use crate::stage::StageError;
use crate::warehouse::{ErrorKind, WarehouseError};

/// Every error code the API answers with; each has exactly one HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 400: the body is not valid JSON (`details.offset` is the byte offset).
    InvalidJson,
    /// 400: the body is not a JSON array, `{"records": [...]}` or NDJSON, or is corrupt.
    InvalidBody,
    /// 400: the body holds no records.
    EmptyBatch,
    /// 400: a query parameter is missing, malformed or out of its documented range.
    InvalidQuery,
    /// 400: a table name in the path is not an identifier.
    InvalidTableName,
    /// 400: a table declaration is malformed.
    InvalidDefinition,
    /// 400: a request header is malformed (an `Idempotency-Key` that is not 1 to 255 visible
    /// ASCII characters, say).
    InvalidHeader,
    /// 401: no API key, or one that is unknown, malformed or revoked.
    Unauthorized,
    /// 403: the key may not do this (write this table, declare tables, manage keys).
    Forbidden,
    /// 404: no such table.
    TableNotFound,
    /// 404: no such batch (or one another partner sent).
    BatchNotFound,
    /// 404: no such API key.
    KeyNotFound,
    /// 404: no such route.
    NotFound,
    /// 405: the route exists but not with this method.
    MethodNotAllowed,
    /// 408: the request body did not arrive in time (`limits.body_idle_secs`, `limits.body_secs`).
    RequestTimeout,
    /// 409: a declaration conflicts with the table in the warehouse.
    TableConflict,
    /// 409: the `Idempotency-Key` was used for another request (`details.batch_id` is its batch).
    IdempotencyConflict,
    /// 409: a request with this `Idempotency-Key` is still being stored; retry after `Retry-After`.
    IdempotencyInProgress,
    /// 409: a replay names a record another replay corrects, loaded or on its way
    /// (`details.index`, `details.batch_id`).
    AlreadyReplayed,
    /// 413: a size or count limit was exceeded.
    PayloadTooLarge,
    /// 415: a `Content-Encoding` other than gzip or zstd.
    UnsupportedEncoding,
    /// 415: a `Content-Type` the endpoint does not take.
    UnsupportedMediaType,
    /// 422: the table's drift policy is `freeze` and records carry fields it has no column for
    /// (`details.fields` lists them as sent); nothing was stored.
    SchemaFrozen,
    /// 422: a replay's items are malformed (`details.pointer` into the list of items), name one
    /// index twice, or name indexes that are not rejects of the batch (`details.indexes`, the
    /// first 100); nothing was stored.
    InvalidReplay,
    /// 429: the partner is over its quota; retry after `Retry-After`. Nothing was stored.
    QuotaExceeded,
    /// 500: an internal fault; the gateway log has the cause.
    Internal,
    /// 500: the stage refused the gateway's credentials or permissions; nothing was stored.
    StageMisconfigured,
    /// 503: the gateway or one of its backends is not ready.
    NotReady,
    /// 503: the gateway is over its memory budget; retry after `Retry-After`.
    OverBudget,
    /// 503: the gateway is shutting down; retry.
    ShuttingDown,
    /// 503: the stage is unavailable; nothing was stored.
    StageUnavailable,
    /// 503: the ledger is unavailable.
    LedgerUnavailable,
    /// 503: the warehouse is unavailable.
    WarehouseUnavailable,
    /// 503: the gateway is serving `server.max_concurrent_requests` already; retry.
    OverCapacity,
    /// 503: a backend did not answer within `limits.processing_secs`; retry.
    Timeout,
}

impl ErrorCode {
    /// The one HTTP status of a code.
    pub fn status(self) -> StatusCode {
        use ErrorCode::*;
        match self {
            InvalidJson | InvalidBody | EmptyBatch | InvalidQuery | InvalidTableName | InvalidDefinition
            | InvalidHeader => StatusCode::BAD_REQUEST,
            Unauthorized => StatusCode::UNAUTHORIZED,
            Forbidden => StatusCode::FORBIDDEN,
            TableNotFound | BatchNotFound | KeyNotFound | NotFound => StatusCode::NOT_FOUND,
            MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            TableConflict | IdempotencyConflict | IdempotencyInProgress | AlreadyReplayed => StatusCode::CONFLICT,
            QuotaExceeded => StatusCode::TOO_MANY_REQUESTS,
            SchemaFrozen | InvalidReplay => StatusCode::UNPROCESSABLE_ENTITY,
            PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            UnsupportedEncoding | UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Internal | StageMisconfigured => StatusCode::INTERNAL_SERVER_ERROR,
            NotReady | OverBudget | ShuttingDown | StageUnavailable | LedgerUnavailable | WarehouseUnavailable
            | OverCapacity | Timeout => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Seconds a client should wait before retrying, for the codes that invite a retry.
    fn retry_after_secs(self) -> Option<u32> {
        use ErrorCode::*;
        match self {
            OverBudget | ShuttingDown | OverCapacity | IdempotencyInProgress | QuotaExceeded => Some(1),
            NotReady | StageUnavailable | LedgerUnavailable | WarehouseUnavailable | Timeout => Some(5),
            _ => None,
        }
    }
}

/// Body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code; it alone decides the HTTP status.
    pub code: ErrorCode,
    pub message: String,
    /// Code-specific facts (a byte offset, failing checks); an empty object when there are none.
    #[schema(value_type = Object)]
    pub details: Value,
}

/// An error on its way to becoming a response.
#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// Boxed: keeps `Result<_, ApiError>` small on the happy path.
    pub details: Option<Box<Value>>,
    /// Seconds for `Retry-After` when the code's own default does not fit (a quota's refill).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError { code, message: message.into(), details: None, retry_after: None }
    }

    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(Box::new(details));
        self
    }

    /// 503 `timeout`: the request's work outlasted `limits.processing_secs`.
    pub fn timeout(limit: std::time::Duration) -> Self {
        ApiError::new(
            ErrorCode::Timeout,
            format!("a backend did not answer within limits.processing_secs ({}s); retry later", limit.as_secs()),
        )
    }

    /// A 500 that logs the cause and tells the client nothing about internals.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        ApiError::new(ErrorCode::Internal, "internal error; see the gateway logs")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
                details: self.details.map_or_else(|| json!({}), |d| *d),
            },
        };
        let mut response = (self.code.status(), Json(body)).into_response();
        if let Some(secs) = self.retry_after.or(self.code.retry_after_secs().map(u64::from)) {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.code == ErrorCode::Unauthorized {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<DecodeError> for ApiError {
    fn from(e: DecodeError) -> Self {
        let message = e.to_string();
        match e {
            DecodeError::UnsupportedEncoding(_) => ApiError::new(ErrorCode::UnsupportedEncoding, message),
            DecodeError::UnsupportedMediaType(_) => ApiError::new(ErrorCode::UnsupportedMediaType, message),
            DecodeError::TooLarge(_) | DecodeError::TooManyRecords(_) | DecodeError::TooLargeToParse { .. } => {
                ApiError::new(ErrorCode::PayloadTooLarge, message)
            }
            DecodeError::Syntax { offset, .. } => {
                ApiError::new(ErrorCode::InvalidJson, message).with_details(json!({ "offset": offset }))
            }
            DecodeError::Corrupt { .. } | DecodeError::Shape => ApiError::new(ErrorCode::InvalidBody, message),
            DecodeError::Empty => ApiError::new(ErrorCode::EmptyBatch, message),
            DecodeError::OverBudget => OverBudget.into(),
        }
    }
}

impl From<OverBudget> for ApiError {
    fn from(_: OverBudget) -> Self {
        ApiError::new(ErrorCode::OverBudget, "the gateway is over its memory budget; retry shortly")
    }
}

impl From<LedgerError> for ApiError {
    fn from(e: LedgerError) -> Self {
        match e {
            LedgerError::Unavailable(_) => {
                tracing::warn!(error = %e, "ledger unavailable");
                ApiError::new(ErrorCode::LedgerUnavailable, "the ledger is unavailable; retry later")
            }
            LedgerError::Invalid(_) => {
                ApiError::new(ErrorCode::InvalidQuery, "a value in the request cannot be stored or compared")
            }
            other => ApiError::internal(other),
        }
    }
}

impl From<crate::rejects::RejectsError> for ApiError {
    fn from(e: crate::rejects::RejectsError) -> Self {
        use crate::rejects::RejectsError;
        match e {
            RejectsError::Ledger(e) => e.into(),
            RejectsError::Stage(StageError::Unavailable(cause)) => {
                tracing::warn!(error = %cause, "stage unavailable while reading rejects");
                ApiError::new(ErrorCode::StageUnavailable, "the stage holding the rejects is unavailable; retry later")
            }
            RejectsError::Stage(other) => ApiError::internal(other),
            corrupt @ RejectsError::Corrupt { .. } => ApiError::internal(corrupt),
        }
    }
}

impl From<WarehouseError> for ApiError {
    fn from(e: WarehouseError) -> Self {
        match e.kind {
            ErrorKind::Transient => {
                tracing::warn!(error = %e, "warehouse unavailable");
                ApiError::new(ErrorCode::WarehouseUnavailable, "the warehouse is unavailable; retry later")
            }
            _ => ApiError::internal(e),
        }
    }
}

impl From<CatalogError> for ApiError {
    fn from(e: CatalogError) -> Self {
        let message = e.to_string();
        match e {
            CatalogError::NotFound(_) => ApiError::new(ErrorCode::TableNotFound, message),
            CatalogError::InvalidDefinition(_) => ApiError::new(ErrorCode::InvalidDefinition, message),
            CatalogError::Conflict { .. } => ApiError::new(ErrorCode::TableConflict, message),
            CatalogError::Ledger(e) => e.into(),
            CatalogError::Warehouse(e) => e.into(),
        }
    }
}

impl From<BufferError> for ApiError {
    fn from(e: BufferError) -> Self {
        match e {
            BufferError::OverBudget => OverBudget.into(),
            BufferError::ShuttingDown => ApiError::new(ErrorCode::ShuttingDown, "the gateway is shutting down; retry"),
            BufferError::StageUnavailable(cause) => {
                tracing::warn!(error = %cause, "stage unavailable");
                ApiError::new(ErrorCode::StageUnavailable, "the stage is unavailable; nothing was stored; retry later")
            }
            BufferError::LedgerUnavailable(cause) => {
                tracing::warn!(error = %cause, "ledger unavailable");
                ApiError::new(
                    ErrorCode::LedgerUnavailable,
                    "the ledger is unavailable; nothing was acknowledged; retry later",
                )
            }
            BufferError::StageDenied(cause) => {
                tracing::error!(error = %cause, "stage refused the gateway's credentials or permissions");
                ApiError::new(
                    ErrorCode::StageMisconfigured,
                    "the stage refused the gateway's credentials; nothing was stored; an operator must fix the stage configuration",
                )
            }
            BufferError::Internal(cause) => ApiError::internal(cause),
        }
    }
}

impl From<IngestError> for ApiError {
    fn from(e: IngestError) -> Self {
        let message = e.to_string();
        match e {
            IngestError::Decode(e) => e.into(),
            IngestError::Catalog(e) => e.into(),
            IngestError::Buffer(e) => e.into(),
            IngestError::Ledger(e) => e.into(),
            IngestError::Task(cause) => ApiError::internal(cause),
            IngestError::Timeout(limit) => ApiError::timeout(limit),
            IngestError::Frozen { fields, .. } => {
                ApiError::new(ErrorCode::SchemaFrozen, message).with_details(json!({ "fields": fields }))
            }
            IngestError::IdempotencyConflict(batch_id) => {
                ApiError::new(ErrorCode::IdempotencyConflict, message).with_details(json!({ "batch_id": batch_id }))
            }
            IngestError::ReplayItems(e) => {
                let details = match &e {
                    ReplayItemError::Malformed { item, pointer, .. } => json!({ "item": item, "pointer": pointer }),
                    ReplayItemError::Repeated { index, first, second } => {
                        json!({ "index": index, "items": [first, second], "pointer": format!("/{second}/index") })
                    }
                };
                ApiError::new(ErrorCode::InvalidReplay, message).with_details(details)
            }
            IngestError::Replay(ReplayRefusal::NotRejected(indexes)) => {
                ApiError::new(ErrorCode::InvalidReplay, message).with_details(json!({ "indexes": indexes }))
            }
            IngestError::Replay(ReplayRefusal::AlreadyReplayed { index, by }) => {
                ApiError::new(ErrorCode::AlreadyReplayed, message)
                    .with_details(json!({ "index": index, "batch_id": by }))
            }
            IngestError::IdempotencyInProgress(batch_id) => {
                ApiError::new(ErrorCode::IdempotencyInProgress, message).with_details(json!({ "batch_id": batch_id }))
            }
        }
    }
}

impl From<crate::auth::AuthError> for ApiError {
    fn from(e: crate::auth::AuthError) -> Self {
        use crate::auth::AuthError;
        match e {
            AuthError::Missing | AuthError::Invalid => ApiError::new(ErrorCode::Unauthorized, e.to_string()),
            AuthError::Ledger(e) => e.into(),
        }
    }
}

impl From<crate::auth::quota::OverQuota> for ApiError {
    fn from(e: crate::auth::quota::OverQuota) -> Self {
        ApiError::new(
            ErrorCode::QuotaExceeded,
            format!("over the partner's quota ({}); nothing was stored; retry after Retry-After", e.limit.as_str()),
        )
        .with_details(json!({ "limit": e.limit.as_str() }))
        .retry_after(e.retry_after)
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> Self {
        ApiError::new(ErrorCode::InvalidQuery, e.body_text())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> Self {
        match e.status() {
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::new(ErrorCode::UnsupportedMediaType, e.body_text()),
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(ErrorCode::PayloadTooLarge, e.body_text()),
            _ => ApiError::new(ErrorCode::InvalidJson, e.body_text()),
        }
    }
}

//! One error shape and one table from error kind to HTTP status.

use axum::extract::rejection::{BytesRejection, JsonRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::{json, Value};
use utoipa::ToSchema;

use crate::buffer::BufferError;
use crate::catalog::CatalogError;
use crate::ingest::decode::DecodeError;
use crate::ledger::LedgerError;
use crate::pipeline::IngestError;
use crate::warehouse::WarehouseError;

/// Body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `table_not_found`.
    pub code: String,
    pub message: String,
    #[schema(value_type = Object)]
    pub details: Option<Value>,
}

/// An error on its way to becoming a response.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Boxed: keeps `Result<_, ApiError>` small on the happy path.
    pub details: Option<Box<Value>>,
    pub retry_after_secs: Option<u32>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), details: None, retry_after_secs: None }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, code, message)
    }

    pub fn unavailable(code: &'static str, message: impl Into<String>, retry_after_secs: u32) -> Self {
        ApiError {
            retry_after_secs: Some(retry_after_secs),
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
        }
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(Box::new(details));
        self
    }

    /// A 500 that logs the cause and tells the client nothing about internals.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error; see the gateway logs")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
                details: self.details.map(|d| *d),
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after_secs {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl From<DecodeError> for ApiError {
    fn from(e: DecodeError) -> Self {
        let message = e.to_string();
        match e {
            DecodeError::UnsupportedEncoding(_) => {
                ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_encoding", message)
            }
            DecodeError::UnsupportedMediaType(_) => {
                ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", message)
            }
            DecodeError::TooLarge(_) | DecodeError::TooManyRecords(_) => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
            }
            DecodeError::Syntax { offset, .. } => {
                ApiError::bad_request("invalid_json", message).with_details(json!({ "offset": offset }))
            }
            DecodeError::Corrupt { .. } | DecodeError::Shape => ApiError::bad_request("invalid_body", message),
            DecodeError::Empty => ApiError::bad_request("empty_batch", message),
        }
    }
}

impl From<LedgerError> for ApiError {
    fn from(e: LedgerError) -> Self {
        match e {
            LedgerError::Unavailable(_) => {
                tracing::warn!(error = %e, "ledger unavailable");
                ApiError::unavailable("ledger_unavailable", "the ledger is unavailable; retry later", 5)
            }
            other => ApiError::internal(other),
        }
    }
}

impl From<WarehouseError> for ApiError {
    fn from(e: WarehouseError) -> Self {
        match e {
            WarehouseError::Unavailable(_) => {
                tracing::warn!(error = %e, "warehouse unavailable");
                ApiError::unavailable("warehouse_unavailable", "the warehouse is unavailable; retry later", 5)
            }
            other => ApiError::internal(other),
        }
    }
}

impl From<CatalogError> for ApiError {
    fn from(e: CatalogError) -> Self {
        let message = e.to_string();
        match e {
            CatalogError::InvalidName { .. } => ApiError::bad_request("invalid_table_name", message),
            CatalogError::NotFound(_) => ApiError::not_found("table_not_found", message),
            CatalogError::InvalidDefinition(_) => ApiError::bad_request("invalid_definition", message),
            CatalogError::Conflict { .. } => ApiError::new(StatusCode::CONFLICT, "table_conflict", message),
            CatalogError::Ledger(e) => e.into(),
            CatalogError::Warehouse(e) => e.into(),
        }
    }
}

impl From<BufferError> for ApiError {
    fn from(e: BufferError) -> Self {
        match e {
            BufferError::OverBudget => {
                ApiError::unavailable("over_budget", "the gateway is over its memory budget; retry shortly", 1)
            }
            BufferError::ShuttingDown => {
                ApiError::unavailable("shutting_down", "the gateway is shutting down; retry", 1)
            }
            BufferError::StageUnavailable(cause) => {
                tracing::warn!(error = %cause, "stage unavailable");
                ApiError::unavailable(
                    "stage_unavailable",
                    "the stage is unavailable; nothing was stored; retry later",
                    5,
                )
            }
            BufferError::LedgerUnavailable(cause) => {
                tracing::warn!(error = %cause, "ledger unavailable");
                ApiError::unavailable(
                    "ledger_unavailable",
                    "the ledger is unavailable; nothing was acknowledged; retry later",
                    5,
                )
            }
            BufferError::Internal(cause) => ApiError::internal(cause),
        }
    }
}

impl From<IngestError> for ApiError {
    fn from(e: IngestError) -> Self {
        match e {
            IngestError::Decode(e) => e.into(),
            IngestError::Catalog(e) => e.into(),
            IngestError::Buffer(e) => e.into(),
            IngestError::Ledger(e) => e.into(),
            IngestError::Task(cause) => ApiError::internal(cause),
        }
    }
}

impl From<BytesRejection> for ApiError {
    fn from(e: BytesRejection) -> Self {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "request body is larger than limits.max_body_bytes",
            )
        } else {
            ApiError::bad_request("invalid_body", e.body_text())
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> Self {
        ApiError::bad_request("invalid_query", e.body_text())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> Self {
        match e.status() {
            StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", e.body_text())
            }
            StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", e.body_text())
            }
            _ => ApiError::bad_request("invalid_json", e.body_text()),
        }
    }
}

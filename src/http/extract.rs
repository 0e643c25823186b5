//! Path extractors that parse once, at the edge, and answer in the API's error shape.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use uuid::Uuid;

use super::error::{ApiError, ErrorCode};
use crate::schema::TableName;

/// A table name from a URL path or query: an identifier, or 400 `invalid_table_name`.
pub fn table_name(raw: &str) -> Result<TableName, ApiError> {
    TableName::parse(raw).map_err(|e| ApiError::new(ErrorCode::InvalidTableName, format!("invalid table name: {e}")))
}

/// A JSON definition body (a table declaration, a key request): well-formed JSON of the wrong
/// shape is 400 `invalid_definition`; other rejections keep their own code.
pub fn definition<T>(body: Result<axum::Json<T>, JsonRejection>) -> Result<T, ApiError> {
    body.map(|axum::Json(value)| value).map_err(|e| match e {
        JsonRejection::JsonDataError(e) => ApiError::new(ErrorCode::InvalidDefinition, e.body_text()),
        other => other.into(),
    })
}

/// The `{table}` of a path, parsed into a [`TableName`].
pub struct TablePath(pub TableName);

impl<S: Send + Sync> FromRequestParts<S> for TablePath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state).await.map_err(|e| {
            ApiError::new(ErrorCode::InvalidTableName, format!("invalid table name: {}", e.body_text()))
        })?;
        table_name(&raw).map(TablePath)
    }
}

/// The `{id}` of a batch path; anything that is not a batch id names no batch (404).
pub struct BatchPath(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for BatchPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let raw = Path::<String>::from_request_parts(parts, state).await.map(|Path(raw)| raw).unwrap_or_default();
        Uuid::parse_str(&raw)
            .map(BatchPath)
            .map_err(|_| ApiError::new(ErrorCode::BatchNotFound, format!("no batch {raw:?}")))
    }
}

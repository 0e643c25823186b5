//! `/v1/keys`: the operator creates, lists and revokes partner API keys.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody, ErrorCode};
use super::extract::{definition, table_name};
use crate::app::AppState;
use crate::auth::{create_key, CreateKeyError, Principal};
use crate::ledger::{ApiKey, Partner};

/// A key to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyRequest {
    /// The partner the key's batches belong to (default `operator` for operator keys).
    pub partner: Option<Partner>,
    /// Tables the key may write (table names); required for a partner key.
    #[serde(default)]
    pub tables: Vec<String>,
    /// An operator key: declares tables, manages keys, reads every batch.
    #[serde(default)]
    pub operator: bool,
}

/// A new key: `key` is shown this once and stored nowhere (and so has no `Debug`).
#[derive(Serialize, ToSchema)]
pub struct CreatedKey {
    /// Send as `Authorization: Bearer <key>`.
    pub key: String,
    #[serde(flatten)]
    pub record: ApiKey,
}

/// Every key, revoked ones included; secrets are never shown.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyList {
    pub keys: Vec<ApiKey>,
}

fn operator_only(principal: &Principal) -> Result<(), ApiError> {
    if principal.is_operator() {
        Ok(())
    } else {
        Err(ApiError::new(ErrorCode::Forbidden, "only an operator key may manage API keys"))
    }
}

/// Create an API key (operator).
#[utoipa::path(
    post,
    path = "/v1/keys",
    tag = "keys",
    request_body = KeyRequest,
    responses(
        (status = 201, description = "Created; the key is in the body this once", body = CreatedKey),
        (status = 400, description = "Invalid request (a partner key without tables or with a reserved name, an operator key with tables, a bad table name)", body = ErrorBody),
        (status = 403, description = "Not an operator key", body = ErrorBody),
        (status = 413, description = "Body larger than limits.max_body_bytes", body = ErrorBody),
        (status = 415, description = "Body is not application/json", body = ErrorBody),
        (status = 503, description = "Ledger unavailable", body = ErrorBody),
    )
)]
pub async fn create(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    body: Result<Json<KeyRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<CreatedKey>), ApiError> {
    operator_only(&principal)?;
    let request = definition(body)?;
    let tables = request.tables.iter().map(|t| table_name(t)).collect::<Result<Vec<_>, _>>()?;
    let partner = match request.partner {
        Some(partner) => partner,
        None if request.operator => "operator".parse().map_err(ApiError::internal)?,
        None => return Err(ApiError::new(ErrorCode::InvalidDefinition, "a partner key must name its partner")),
    };
    let created = create_key(app.ledger.as_ref(), partner, &tables, request.operator).await.map_err(|e| match e {
        CreateKeyError::NoTables | CreateKeyError::OperatorTables | CreateKeyError::ReservedPartner(_) => {
            ApiError::new(ErrorCode::InvalidDefinition, e.to_string())
        }
        CreateKeyError::Random(e) => ApiError::internal(e),
        CreateKeyError::Ledger(e) => e.into(),
    })?;
    Ok((StatusCode::CREATED, Json(CreatedKey { key: created.token, record: created.record })))
}

/// List API keys (operator).
#[utoipa::path(
    get,
    path = "/v1/keys",
    tag = "keys",
    responses(
        (status = 200, body = KeyList),
        (status = 403, description = "Not an operator key", body = ErrorBody),
        (status = 503, description = "Ledger unavailable", body = ErrorBody),
    )
)]
pub async fn list(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<KeyList>, ApiError> {
    operator_only(&principal)?;
    Ok(Json(KeyList { keys: app.ledger.list_keys().await? }))
}

/// Revoke an API key (operator). Other replicas stop taking it within `auth.cache_secs`.
#[utoipa::path(
    delete,
    path = "/v1/keys/{id}",
    tag = "keys",
    params(("id" = String, Path, description = "The key's public id")),
    responses(
        (status = 200, description = "Revoked (revoking again keeps the first time)", body = ApiKey),
        (status = 400, description = "An id the ledger cannot compare (a NUL character)", body = ErrorBody),
        (status = 403, description = "Not an operator key", body = ErrorBody),
        (status = 404, description = "No such key", body = ErrorBody),
        (status = 503, description = "Ledger unavailable", body = ErrorBody),
    )
)]
pub async fn revoke(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<ApiKey>, ApiError> {
    operator_only(&principal)?;
    let revoked = app.ledger.revoke_key(&id).await?;
    app.auth.forget(&id);
    let key = revoked.ok_or_else(|| ApiError::new(ErrorCode::KeyNotFound, format!("no API key {id:?}")))?;
    tracing::info!(key_id = %key.id, partner = %key.partner, "API key revoked");
    Ok(Json(key))
}

//! `/v1/tables`: declare and inspect tables.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use crate::app::AppState;
use crate::catalog::table_name;
use crate::ingest::drift::DriftPolicy;
use crate::ledger::{SchemaChange, TableRecord};
use crate::schema::Column;

/// A table declaration.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TableDeclaration {
    /// Columns; names are case-insensitive. On an existing table, missing ones are added (nullable only).
    #[serde(default)]
    pub columns: Vec<Column>,
    /// Drift policy for unknown fields (default: the configured default, `evolve`).
    pub drift: Option<DriftPolicy>,
}

/// Declare a table: create it in the warehouse, or check an existing one and store its policy.
#[utoipa::path(
    put,
    path = "/v1/tables/{table}",
    tag = "tables",
    params(("table" = String, Path, description = "Table name (case-insensitive)")),
    request_body = TableDeclaration,
    responses(
        (status = 201, description = "Created", body = TableRecord),
        (status = 200, description = "Existing table checked and updated", body = TableRecord),
        (status = 400, body = ErrorBody),
        (status = 409, description = "Incompatible with the warehouse table", body = ErrorBody),
    )
)]
pub async fn put_table(
    State(app): State<AppState>,
    Path(table): Path<String>,
    body: Result<Json<TableDeclaration>, JsonRejection>,
) -> Result<(StatusCode, Json<TableRecord>), ApiError> {
    let Json(declaration) = body.map_err(|e| match e {
        JsonRejection::JsonDataError(e) => ApiError::bad_request("invalid_definition", e.body_text()),
        other => other.into(),
    })?;
    let name = table_name(&table)?;
    let (record, created) = app.catalog.declare(&name, declaration.columns, declaration.drift).await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(record)))
}

/// Tables known to the gateway.
#[derive(Debug, Serialize, ToSchema)]
pub struct TableList {
    pub tables: Vec<TableRecord>,
}

/// List tables.
#[utoipa::path(get, path = "/v1/tables", tag = "tables", responses((status = 200, body = TableList)))]
pub async fn list_tables(State(app): State<AppState>) -> Result<Json<TableList>, ApiError> {
    Ok(Json(TableList { tables: app.catalog.list().await? }))
}

/// One table: policy and current columns (discovered from the warehouse if needed).
#[utoipa::path(
    get,
    path = "/v1/tables/{table}",
    tag = "tables",
    params(("table" = String, Path, description = "Table name (case-insensitive)")),
    responses((status = 200, body = TableRecord), (status = 404, body = ErrorBody))
)]
pub async fn get_table(State(app): State<AppState>, Path(table): Path<String>) -> Result<Json<TableRecord>, ApiError> {
    Ok(Json(app.catalog.record(&table_name(&table)?).await?))
}

/// The audit log of a table's schema changes.
#[derive(Debug, Serialize, ToSchema)]
pub struct SchemaChangeList {
    pub changes: Vec<SchemaChange>,
}

/// Columns added to a table, oldest first.
#[utoipa::path(
    get,
    path = "/v1/tables/{table}/schema-changes",
    tag = "tables",
    params(("table" = String, Path, description = "Table name (case-insensitive)")),
    responses((status = 200, body = SchemaChangeList), (status = 404, body = ErrorBody))
)]
pub async fn schema_changes(
    State(app): State<AppState>,
    Path(table): Path<String>,
) -> Result<Json<SchemaChangeList>, ApiError> {
    let name = table_name(&table)?;
    app.catalog.get(&name).await?;
    Ok(Json(SchemaChangeList { changes: app.ledger.schema_changes(&name).await? }))
}

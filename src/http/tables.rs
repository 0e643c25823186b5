//! `/v1/tables`: declare and inspect tables.

use std::collections::BTreeMap;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, ErrorBody, ErrorCode};
use super::extract::{definition, TablePath};
use crate::app::AppState;
use crate::auth::Principal;
use crate::ingest::drift::DriftPolicy;
use crate::ledger::{Partner, SchemaChange, TableRecord};
use crate::schema::{Column, ColumnName, TableName};

/// A table declaration.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TableDeclaration {
    /// Columns; names are case-insensitive. On an existing table, missing ones are added (nullable only).
    #[serde(default)]
    pub columns: Vec<ColumnDeclaration>,
    /// Drift policy for unknown fields (default: the configured default, `evolve`).
    pub drift: Option<DriftPolicy>,
    /// Renamed fields: a field name to the column it loads into (`{"loanAmount": "amount"}`);
    /// both normalised as columns are. Replaces the table's aliases; absent keeps them.
    pub aliases: Option<std::collections::BTreeMap<String, String>>,
}

/// One declared column.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ColumnDeclaration {
    /// Column name, normalised as JSON keys are (see `Column`). Not blank.
    #[schema(min_length = 1, max_length = 255, pattern = r"\S")]
    pub name: String,
    /// A Snowflake type name (case-insensitive; synonyms such as `INT` or `STRING` are taken too).
    #[serde(rename = "type")]
    #[schema(schema_with = declared_type)]
    pub ty: String,
    #[serde(default = "nullable_by_default")]
    pub nullable: bool,
}

fn nullable_by_default() -> bool {
    true
}

/// The type names the spec promises: every parameterless name, `NUMBER(p,s)` with p in 10..=38
/// and s in 0..=9 (so that s <= p always holds), and `VARCHAR(n)` up to 9,999,999. The gateway
/// takes more (lower case, any valid precision, lengths up to 16,777,216).
fn declared_type() -> ObjectBuilder {
    const NAMES: &[&str] = &[
        "NUMBER",
        "DECIMAL",
        "NUMERIC",
        "INT",
        "INTEGER",
        "BIGINT",
        "SMALLINT",
        "TINYINT",
        "BYTEINT",
        "FLOAT",
        "FLOAT4",
        "FLOAT8",
        "DOUBLE",
        "REAL",
        "VARCHAR",
        "STRING",
        "TEXT",
        "BOOLEAN",
        "DATE",
        "TIME",
        "TIMESTAMP",
        "TIMESTAMP_NTZ",
        "TIMESTAMP_LTZ",
        "TIMESTAMP_TZ",
        "DATETIME",
        "VARIANT",
        "JSON",
        "OBJECT",
        "ARRAY",
        "BINARY",
        "VARBINARY",
    ];
    ObjectBuilder::new()
        .schema_type(SchemaType::Type(Type::String))
        .pattern(Some(format!(
            r"^({})$|^(NUMBER|DECIMAL|NUMERIC)\((1[0-9]|2[0-9]|3[0-8])(,[0-9])?\)$|^(VARCHAR|STRING|TEXT)\([1-9][0-9]{{0,6}}\)$",
            NAMES.join("|")
        )))
        .examples(["NUMBER(12,2)", "VARCHAR(64)", "TIMESTAMP_TZ"])
}

/// Declare a table: create it in the warehouse, or check an existing one and store its policy.
#[utoipa::path(
    put,
    path = "/v1/tables/{table}",
    tag = "tables",
    params(("table" = String, Path, description = "Table name: an identifier, case-insensitive", pattern = r"^[A-Za-z_][A-Za-z0-9_$]{0,254}$")),
    request_body = TableDeclaration,
    responses(
        (status = 201, description = "Created", body = TableRecord),
        (status = 200, description = "Existing table checked and updated", body = TableRecord),
        (status = 400, description = "Invalid table name or definition", body = ErrorBody),
        (status = 403, description = "Not an operator key", body = ErrorBody),
        (status = 409, description = "Incompatible with the warehouse table", body = ErrorBody),
        (status = 413, description = "Body larger than limits.max_body_bytes", body = ErrorBody),
        (status = 415, description = "Body is not application/json", body = ErrorBody),
        (status = 503, description = "Ledger or warehouse unavailable", body = ErrorBody),
    )
)]
pub async fn put_table(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    TablePath(name): TablePath,
    body: Result<Json<TableDeclaration>, JsonRejection>,
) -> Result<(StatusCode, Json<TableRecord>), ApiError> {
    if !principal.is_operator() {
        return Err(ApiError::new(ErrorCode::Forbidden, "only an operator key may declare tables"));
    }
    let declaration = definition(body)?;
    let mut columns = Vec::with_capacity(declaration.columns.len());
    for (at, column) in declaration.columns.into_iter().enumerate() {
        let ty = column.ty.parse().map_err(|e| {
            ApiError::new(ErrorCode::InvalidDefinition, format!("invalid table definition: columns[{at}].type: {e}"))
        })?;
        let name = ColumnName::normalize(&column.name).map_err(|e| {
            ApiError::new(
                ErrorCode::InvalidDefinition,
                format!("invalid table definition: column {:?}: {e}", column.name),
            )
        })?;
        columns.push(Column { name, ty, nullable: column.nullable });
    }
    let (record, created) =
        app.catalog.declare(&name, columns, declaration.drift, declaration.aliases, &principal.partner).await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(record)))
}

/// Tables known to the gateway.
#[derive(Debug, Serialize, ToSchema)]
pub struct TableList {
    pub tables: Vec<TableRecord>,
}

/// List tables: every table for an operator, the tables it may write for a partner key.
#[utoipa::path(
    get,
    path = "/v1/tables",
    tag = "tables",
    responses((status = 200, body = TableList), (status = 503, description = "Ledger unavailable", body = ErrorBody))
)]
pub async fn list_tables(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<TableList>, ApiError> {
    let mut tables = app.catalog.list().await?;
    tables.retain(|t| TableName::parse(&t.name).is_ok_and(|name| principal.may_write(&name)));
    Ok(Json(TableList { tables }))
}

/// A partner key reads only the tables it may write.
fn readable(principal: &Principal, name: &TableName) -> Result<(), ApiError> {
    if principal.may_write(name) {
        Ok(())
    } else {
        Err(ApiError::new(ErrorCode::Forbidden, format!("this API key may not read table {name}")))
    }
}

/// One table: policy and current columns (as the warehouse describes it, for a table the ledger
/// does not know yet). Reading never changes the table.
#[utoipa::path(
    get,
    path = "/v1/tables/{table}",
    tag = "tables",
    params(("table" = String, Path, description = "Table name: an identifier, case-insensitive", pattern = r"^[A-Za-z_][A-Za-z0-9_$]{0,254}$")),
    responses(
        (status = 200, body = TableRecord),
        (status = 400, description = "Invalid table name", body = ErrorBody),
        (status = 403, description = "The key may not write (so not read) this table", body = ErrorBody),
        (status = 404, description = "No such table", body = ErrorBody),
        (status = 503, description = "Ledger or warehouse unavailable", body = ErrorBody),
    )
)]
pub async fn get_table(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    TablePath(name): TablePath,
) -> Result<Json<TableRecord>, ApiError> {
    readable(&principal, &name)?;
    Ok(Json(app.catalog.record(&name).await?))
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
    params(("table" = String, Path, description = "Table name: an identifier, case-insensitive", pattern = r"^[A-Za-z_][A-Za-z0-9_$]{0,254}$")),
    responses(
        (status = 200, body = SchemaChangeList),
        (status = 400, description = "Invalid table name", body = ErrorBody),
        (status = 403, description = "The key may not write (so not read) this table", body = ErrorBody),
        (status = 404, description = "No such table", body = ErrorBody),
        (status = 503, description = "Ledger or warehouse unavailable", body = ErrorBody),
    )
)]
pub async fn schema_changes(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    TablePath(name): TablePath,
) -> Result<Json<SchemaChangeList>, ApiError> {
    readable(&principal, &name)?;
    app.catalog.record(&name).await?;
    let mut changes = app.ledger.schema_changes(&name).await?;
    // A partner sees every column added, but not which other partner or batch added it.
    for change in changes.iter_mut().filter(|c| !c.partner.as_ref().is_some_and(|p| principal.may_read(p))) {
        change.partner = None;
        change.batch_id = None;
    }
    Ok(Json(SchemaChangeList { changes }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DriftParams {
    /// How far back to look, in seconds: 1 to 2592000 (30 days), default 86400.
    #[param(minimum = 1, maximum = 2592000)]
    pub window_secs: Option<u64>,
}

/// One partner's mismatches on one column.
#[derive(Debug, Serialize, ToSchema)]
pub struct PartnerDrift {
    pub partner: Partner,
    pub mismatches: u64,
    /// Mismatches by reject code (`type_mismatch`, `too_long`, ...).
    pub codes: BTreeMap<String, u64>,
}

/// The mismatches of one column (`column` is null for problems of a whole record).
#[derive(Debug, Serialize, ToSchema)]
pub struct ColumnDrift {
    pub column: Option<String>,
    pub mismatches: u64,
    pub by_partner: Vec<PartnerDrift>,
}

/// Where a table's partners stopped fitting it: rejected values per column and partner.
#[derive(Debug, Serialize, ToSchema)]
pub struct DriftReport {
    pub table: String,
    pub since: chrono::DateTime<chrono::Utc>,
    /// Rejects read; at most 100,000, the report is then `truncated`.
    pub scanned: u64,
    pub truncated: bool,
    /// Most mismatches first.
    pub columns: Vec<ColumnDrift>,
}

/// Rejects read for one drift report at most.
const DRIFT_SCAN_LIMIT: u32 = 100_000;

/// A table's drift report: rejected values per column and partner over a window, so that an
/// operator sees a partner's contract breaking (a NUMBER that starts arriving as "N/A"). A
/// partner key sees its own.
#[utoipa::path(
    get,
    path = "/v1/tables/{table}/drift",
    tag = "tables",
    params(("table" = String, Path, description = "Table name: an identifier, case-insensitive", pattern = r"^[A-Za-z_][A-Za-z0-9_$]{0,254}$"), DriftParams),
    responses(
        (status = 200, body = DriftReport),
        (status = 400, description = "Invalid table name or query", body = ErrorBody),
        (status = 403, description = "The key may not write (so not read) this table", body = ErrorBody),
        (status = 404, description = "No such table", body = ErrorBody),
        (status = 503, description = "Ledger or warehouse unavailable", body = ErrorBody),
    )
)]
pub async fn drift_report(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    TablePath(name): TablePath,
    params: Result<Query<DriftParams>, QueryRejection>,
) -> Result<Json<DriftReport>, ApiError> {
    let Query(params) = params?;
    let window = match params.window_secs.unwrap_or(86_400) {
        secs @ 1..=2_592_000 => secs,
        other => {
            return Err(ApiError::new(
                ErrorCode::InvalidQuery,
                format!("window_secs must be 1 to 2592000, not {other}"),
            ))
        }
    };
    readable(&principal, &name)?;
    app.catalog.record(&name).await?;
    let since = chrono::Utc::now() - chrono::Duration::seconds(window as i64);
    let partner = (!principal.is_operator()).then_some(&principal.partner);
    let rejects = app.ledger.reject_errors(&name, since, partner, DRIFT_SCAN_LIMIT).await?;
    let scanned = rejects.len() as u64;
    let mut columns: BTreeMap<Option<String>, BTreeMap<Partner, BTreeMap<String, u64>>> = BTreeMap::new();
    for (partner, errors) in rejects {
        for error in errors {
            let codes = columns.entry(error.column).or_default().entry(partner.clone()).or_default();
            *codes.entry(error.code.as_str().to_string()).or_default() += 1;
        }
    }
    let mut columns: Vec<ColumnDrift> = columns
        .into_iter()
        .map(|(column, partners)| {
            let by_partner: Vec<PartnerDrift> = partners
                .into_iter()
                .map(|(partner, codes)| PartnerDrift { partner, mismatches: codes.values().sum(), codes })
                .collect();
            ColumnDrift { column, mismatches: by_partner.iter().map(|p| p.mismatches).sum(), by_partner }
        })
        .collect();
    columns.sort_by_key(|c| std::cmp::Reverse(c.mismatches));
    Ok(Json(DriftReport {
        table: name.to_string(),
        since,
        scanned,
        truncated: scanned == u64::from(DRIFT_SCAN_LIMIT),
        columns,
    }))
}

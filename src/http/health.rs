//! Liveness and readiness.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody, ErrorCode};
use crate::app::AppState;
use crate::loader::LoaderStatus;

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    pub status: String,
    /// Per backend: `ok` or the reason it is not.
    pub checks: BTreeMap<String, String>,
    /// This process's loader: whether it runs, its restarts, its last good round and any
    /// warehouse configuration error holding files back. Reported, never a reason to be unready:
    /// a replica keeps accepting (the stage is durable) while loads wait.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loader: Option<LoaderStatus>,
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok".into(), checks: BTreeMap::new(), loader: None })
}

/// Longest wait for one backend, in a probe or a scrape.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

async fn check<E: std::fmt::Display>(probe: impl Future<Output = Result<(), E>>) -> String {
    match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
        Ok(Ok(())) => "ok".into(),
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("timed out after {}s", PROBE_TIMEOUT.as_secs()),
    }
}

/// Ready to acknowledge: the ledger and the stage are reachable. The warehouse is checked and
/// reported too, but a warehouse outage is no reason to be unready: records are staged and load
/// once it is back (a load balancer must keep sending them here).
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    responses(
        (status = 200, body = Health),
        (status = 503, description = "The ledger or the stage is unreachable", body = ErrorBody,
            headers(("Retry-After" = u32, description = "Seconds to wait before asking again"))),
    )
)]
pub async fn readyz(State(app): State<AppState>) -> Result<Json<Health>, ApiError> {
    let (ledger, stage, warehouse) =
        tokio::join!(check(app.ledger.ping()), check(app.stage.ping()), check(app.warehouse.ping()));
    let warehouse_check = format!("warehouse ({})", app.warehouse.backend());
    let checks = BTreeMap::from([
        (format!("ledger ({})", app.ledger.backend()), ledger),
        ("stage".to_string(), stage),
        (warehouse_check.clone(), warehouse),
    ]);
    let failing: Vec<&str> =
        checks.iter().filter(|(k, v)| *v != "ok" && **k != warehouse_check).map(|(k, _)| k.as_str()).collect();
    if failing.is_empty() {
        return Ok(Json(Health { status: "ready".into(), checks, loader: Some(app.loader_health.status()) }));
    }
    let message = format!("not ready: {} unreachable", failing.join(", "));
    let details = json!({ "checks": checks, "loader": app.loader_health.status() });
    Err(ApiError::new(ErrorCode::NotReady, message).with_details(details))
}

/// Prometheus metrics of this replica, in the OpenMetrics text format. The backlog and last-load
/// gauges are read from the ledger (within 3 s; `snowgate_ledger_up` is 0 when it did not
/// answer, and they keep their last values).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "health",
    responses((status = 200, description = "Metrics, OpenMetrics text",
        content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8", body = String))
)]
pub async fn metrics(State(app): State<AppState>) -> Result<Response, ApiError> {
    let tables = match tokio::time::timeout(PROBE_TIMEOUT, app.ledger.load_state()).await {
        Ok(Ok(tables)) => Some(tables),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "metrics: the ledger did not give the backlog");
            None
        }
        Err(_) => {
            tracing::warn!(timeout = ?PROBE_TIMEOUT, "metrics: the ledger did not give the backlog in time");
            None
        }
    };
    let from_memory = app.warehouse.recent_files().map_or(0, |recent| recent.taken());
    let text = app
        .metrics
        .render(&app.budget, &app.loader_health.status(), from_memory, tables.as_deref())
        .map_err(|e| ApiError::internal(format!("could not encode metrics: {e}")))?;
    Ok(([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response())
}

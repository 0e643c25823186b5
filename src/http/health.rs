//! Liveness and readiness.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use crate::app::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    pub status: String,
    /// Per backend: `ok` or the reason it is not.
    pub checks: BTreeMap<String, String>,
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok".into(), checks: BTreeMap::new() })
}

async fn check<E: std::fmt::Display>(probe: impl Future<Output = Result<(), E>>) -> String {
    match tokio::time::timeout(Duration::from_secs(3), probe).await {
        Ok(Ok(())) => "ok".into(),
        Ok(Err(e)) => e.to_string(),
        Err(_) => "timed out after 3s".into(),
    }
}

/// Ledger, stage and warehouse are all reachable.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    responses((status = 200, body = Health), (status = 503, description = "A backend is unreachable", body = ErrorBody))
)]
pub async fn readyz(State(app): State<AppState>) -> Result<Json<Health>, ApiError> {
    let (ledger, stage, warehouse) =
        tokio::join!(check(app.ledger.ping()), check(app.stage.ping()), check(app.warehouse.ping()));
    let checks = BTreeMap::from([
        (format!("ledger ({})", app.ledger.backend()), ledger),
        ("stage".to_string(), stage),
        (format!("warehouse ({})", app.warehouse.backend()), warehouse),
    ]);
    let failing: Vec<&str> = checks.iter().filter(|(_, v)| *v != "ok").map(|(k, _)| k.as_str()).collect();
    if failing.is_empty() {
        return Ok(Json(Health { status: "ready".into(), checks }));
    }
    let message = format!("not ready: {} unreachable", failing.join(", "));
    Err(ApiError::unavailable("not_ready", message, 5).with_details(json!({ "checks": checks })))
}

//! HTTP: router, OpenAPI document, Swagger UI. Handlers are thin; the domain lives elsewhere.

pub mod batches;
pub mod error;
mod extract;
pub mod health;
pub mod tables;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

use std::future::Future;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

use crate::app::AppState;
use crate::config::ServerConfig;
use error::{ApiError, ErrorCode};

/// The OpenAPI document, generated from the handlers' annotations.
#[derive(OpenApi)]
#[openapi(
    info(title = "snowgate", description = "HTTP ingestion gateway: partner JSON batches to the warehouse, record by record."),
    paths(
        batches::ingest,
        batches::get_batch,
        batches::list_rejects,
        batches::list_batches,
        tables::put_table,
        tables::list_tables,
        tables::get_table,
        tables::schema_changes,
        health::healthz,
        health::readyz,
    ),
    components(schemas(crate::pipeline::DryRunReport, batches::WaitFor)),
    tags(
        (name = "batches", description = "Ingest records and follow their batches"),
        (name = "tables", description = "Declare and inspect target tables"),
        (name = "health", description = "Liveness and readiness"),
    )
)]
pub struct ApiDoc;

/// The spec as pretty JSON, exactly as `openapi/openapi.json` holds it.
pub fn openapi_json() -> String {
    let mut text = ApiDoc::openapi().to_pretty_json().expect("spec serializes");
    text.push('\n');
    text
}

async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such route; see /docs")
}

async fn method_not_allowed() -> impl IntoResponse {
    ApiError::new(ErrorCode::MethodNotAllowed, "method not allowed on this route")
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> axum::response::Response {
    ApiError::internal("handler panicked").into_response()
}

/// Serves `router` on `listener` until `shutdown` resolves: each connection must send its headers
/// within `server.header_timeout_secs` (axum::serve has no such bound, so a client could hold a
/// connection forever with half a request); after `shutdown`, no new connection is accepted and
/// open ones finish their requests within `server.shutdown_grace_secs`.
pub(crate) async fn serve_connections(
    listener: TcpListener,
    router: Router,
    config: &ServerConfig,
    shutdown: impl Future<Output = ()>,
) {
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1.timer(TokioTimer::new()).header_read_timeout(config.header_timeout);
    let connections = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, say: wait a little rather than spin.
                tracing::warn!(error = %e, "could not accept a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let connection = http1.serve_connection(TokioIo::new(stream), TowerToHyperService::new(router.clone()));
        let connection = connections.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    tracing::info!("shutting down: no new connections");
    drop(listener);
    // In-flight requests wait for their flush, which the linger bounds; the grace period bounds the rest.
    if tokio::time::timeout(config.shutdown_grace, connections.shutdown()).await.is_err() {
        tracing::warn!("requests still running after the grace period");
    }
}

/// Sheds load: past `server.max_concurrent_requests` API requests in flight, the next is answered
/// 503 `over_capacity` at once instead of queueing (health probes are not counted).
async fn admission(State(app): State<AppState>, request: Request, next: Next) -> Response {
    let Ok(_permit) = app.in_flight.clone().try_acquire_owned() else {
        return ApiError::new(
            ErrorCode::OverCapacity,
            "the gateway is serving server.max_concurrent_requests requests already; retry shortly",
        )
        .into_response();
    };
    next.run(request).await
}

/// Bounds a request by `limits.processing_secs`.
async fn processing_deadline(State(app): State<AppState>, request: Request, next: Next) -> Response {
    let limit = app.config.limits.processing;
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::timeout(limit).into_response(),
    }
}

/// All routes with their layers.
pub fn router(state: AppState) -> Router {
    let body_limit = state.config.limits.max_body_bytes;
    // Bounded as a whole; a batch POST bounds its own work once its body has arrived (the body
    // has its own limits, and `wait=loaded` its own).
    let bounded = Router::new()
        .route("/v1/batches", get(batches::list_batches))
        .route("/v1/batches/{id}", get(batches::get_batch))
        .route("/v1/batches/{id}/rejects", get(batches::list_rejects))
        .route("/v1/tables", get(tables::list_tables))
        .route("/v1/tables/{table}", put(tables::put_table).get(tables::get_table))
        .route("/v1/tables/{table}/schema-changes", get(tables::schema_changes))
        .route_layer(middleware::from_fn_with_state(state.clone(), processing_deadline));
    let api = Router::new()
        .route("/v1/tables/{table}/batches", post(batches::ingest))
        .merge(bounded)
        .route_layer(middleware::from_fn_with_state(state.clone(), admission))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state);
    Router::new()
        .merge(SwaggerUi::new("/docs").url("/openapi.json", ApiDoc::openapi()))
        .merge(api)
        .fallback(not_found)
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(TraceLayer::new_for_http())
}

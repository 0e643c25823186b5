//! HTTP: router, OpenAPI document, Swagger UI. Handlers are thin; the domain lives elsewhere.

pub mod batches;
pub mod error;
mod extract;
pub mod health;
pub mod keys;
pub mod tables;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::Router;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, HeaderBuilder, Ref, ResponseBuilder};
use utoipa::{Modify, OpenApi, PartialSchema};
use utoipa_swagger_ui::SwaggerUi;

use std::future::Future;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

use crate::app::AppState;
use crate::config::ServerConfig;
use crate::metrics::{QuotaLabels, RequestLabels};
use error::{ApiError, ErrorCode};

/// The OpenAPI document, generated from the handlers' annotations.
#[derive(OpenApi)]
#[openapi(
    info(title = "snowgate", description = "HTTP ingestion gateway: partner JSON batches to the warehouse, record by record. Every answer carries `X-Request-Id`: the one the request sent (1 to 128 characters of `A-Za-z0-9-_.:/+=`) or one the gateway made; the gateway logs it with every line about the request."),
    paths(
        batches::ingest,
        batches::get_batch,
        batches::list_rejects,
        batches::replay,
        batches::list_batches,
        tables::put_table,
        tables::list_tables,
        tables::get_table,
        tables::schema_changes,
        tables::drift_report,
        keys::create,
        keys::list,
        keys::revoke,
        health::healthz,
        health::readyz,
        health::metrics,
    ),
    components(schemas(crate::pipeline::DryRunReport, batches::WaitFor)),
    modifiers(&KeysAndQuotas),
    tags(
        (name = "batches", description = "Ingest records and follow their batches"),
        (name = "tables", description = "Declare and inspect target tables"),
        (name = "keys", description = "Partner API keys (operator)"),
        (name = "health", description = "Liveness and readiness"),
    )
)]
pub struct ApiDoc;

/// Every `/v1` operation takes a bearer key and may answer 401 (no valid key) or 429 (over the
/// partner's quota); the annotations list only what each route adds.
struct KeysAndQuotas;

impl Modify for KeysAndQuotas {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("sgk_<id>_<secret>").build(),
            ),
        );
        let error = || ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build();
        let unauthorized = ResponseBuilder::new()
            .description("No API key, or one that is unknown, malformed or revoked")
            .content("application/json", error())
            .header("WWW-Authenticate", HeaderBuilder::new().schema(String::schema()).build())
            .build();
        let count = |what: &str| HeaderBuilder::new().schema(u64::schema()).description(Some(what)).build();
        let over_quota = ResponseBuilder::new()
            .description("Over the partner's quota; nothing was stored")
            .content("application/json", error())
            .header("Retry-After", count("Seconds to wait"))
            .header("RateLimit-Limit", count("What the partner's most used quota bucket holds when full"))
            .header("RateLimit-Remaining", count("What it holds now"))
            .header("RateLimit-Reset", count("Seconds until it is full again"))
            .build();
        // A key is required once the first exists; before that on loopback, and with
        // auth.mode = "open" anywhere, requests without one are served.
        let keyed = utoipa::openapi::security::SecurityRequirement::new("api_key", Vec::<String>::new());
        let requirements = vec![keyed, utoipa::openapi::security::SecurityRequirement::default()];
        for (path, item) in openapi.paths.paths.iter_mut() {
            if !path.starts_with("/v1/") {
                continue;
            }
            for operation in [&mut item.get, &mut item.put, &mut item.post, &mut item.delete].into_iter().flatten() {
                operation.security = Some(requirements.clone());
                operation.responses.responses.insert("401".into(), unauthorized.clone().into());
                operation.responses.responses.insert("429".into(), over_quota.clone().into());
            }
        }
    }
}

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

/// Checks the request's API key and its partner's request quota, hands the handlers the
/// [`Principal`](crate::auth::Principal), and adds the partner's remaining quota to the answer
/// (`RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset`, as the IETF draft names them).
async fn authenticate(State(app): State<AppState>, mut request: Request, next: Next) -> Response {
    let authorization = match request.headers().get(header::AUTHORIZATION).map(|v| v.to_str()) {
        None => None,
        Some(Ok(value)) => Some(value.to_string()),
        // Not text: no key of ours.
        Some(Err(_)) => Some(String::new()),
    };
    let principal = match app.auth.authenticate(authorization.as_deref()).await {
        Ok(principal) => principal,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let partner = principal.partner.clone();
    if let Err(over) = app.quotas.admit(&partner) {
        let labels = QuotaLabels { partner: partner.to_string(), limit: over.limit.as_str().to_string() };
        app.metrics.quota_refusals.get_or_create(&labels).inc();
        let mut response = ApiError::from(over).into_response();
        rate_limit_headers(&app, &partner, response.headers_mut());
        return response;
    }
    request.extensions_mut().insert(principal);
    let mut response = next.run(request).await;
    rate_limit_headers(&app, &partner, response.headers_mut());
    response
}

fn rate_limit_headers(app: &AppState, partner: &crate::ledger::Partner, headers: &mut HeaderMap) {
    if let Some(left) = app.quotas.remaining(partner) {
        headers.insert("ratelimit-limit", HeaderValue::from(left.limit));
        headers.insert("ratelimit-remaining", HeaderValue::from(left.remaining));
        headers.insert("ratelimit-reset", HeaderValue::from(left.reset));
    }
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
        .route("/v1/tables/{table}/drift", get(tables::drift_report))
        .route("/v1/keys", post(keys::create).get(keys::list))
        .route("/v1/keys/{id}", delete(keys::revoke))
        .route_layer(middleware::from_fn_with_state(state.clone(), processing_deadline));
    let api = Router::new()
        .route("/v1/tables/{table}/batches", post(batches::ingest))
        .route("/v1/batches/{id}/replay", post(batches::replay))
        .merge(bounded)
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .route_layer(middleware::from_fn_with_state(state.clone(), admission))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state.clone());
    Router::new()
        .merge(SwaggerUi::new("/docs").url("/openapi.json", ApiDoc::openapi()))
        .merge(api)
        .fallback(not_found)
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(middleware::from_fn_with_state(state, observe))
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
        .layer(middleware::from_fn(request_id))
}

/// The header that names a request in the gateway's logs and in its answer.
const REQUEST_ID: &str = "x-request-id";

/// Gives every request an `X-Request-Id`: the client's own when it is 1 to 128 characters of
/// `A-Za-z0-9-_.:/+=`, else one made here (a UUID). It is set on the request before the request's
/// span is made, so that every log line of the request carries it, and returned on the answer.
async fn request_id(mut request: Request, next: Next) -> Response {
    let acceptable = |value: &HeaderValue| {
        let bytes = value.as_bytes();
        (1..=128).contains(&bytes.len()) && bytes.iter().all(|b| b.is_ascii_alphanumeric() || b"-_.:/+=".contains(b))
    };
    let id = match request.headers().get(REQUEST_ID).filter(|v| acceptable(v)) {
        Some(id) => id.clone(),
        None => HeaderValue::from_str(&uuid::Uuid::now_v7().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unnamed")),
    };
    request.headers_mut().insert(REQUEST_ID, id.clone());
    let mut response = next.run(request).await;
    response.headers_mut().insert(REQUEST_ID, id);
    response
}

/// The span of one request: its id, method and path; handlers record `batch_id`, `table` and
/// `partner` in it once they know them ([`record_batch`]).
fn request_span(request: &Request) -> tracing::Span {
    let id = request.headers().get(REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("");
    tracing::info_span!(
        "request",
        request_id = %id,
        method = %request.method(),
        path = %request.uri().path(),
        batch_id = tracing::field::Empty,
        table = tracing::field::Empty,
        partner = tracing::field::Empty,
    )
}

/// Names the batch a request is making (none for a dry run, which stores nothing) in the
/// request's span, and so in its every later log line.
pub(crate) fn record_batch(batch_id: Option<uuid::Uuid>, table: &str, partner: &str) {
    let span = tracing::Span::current();
    if let Some(id) = batch_id {
        span.record("batch_id", tracing::field::display(id));
    }
    span.record("table", table);
    span.record("partner", partner);
}

/// Measures every request by method, route as declared and status (panics included, as 500).
async fn observe(State(app): State<AppState>, request: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    // Methods a client makes up would each make a series: they are counted together.
    let method = match request.method().as_str() {
        m @ ("GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS") => m,
        _ => "other",
    }
    .to_string();
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str()).to_string();
    let response = next.run(request).await;
    let labels = RequestLabels { method, route, status: response.status().as_u16() };
    app.metrics.requests.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
    response
}

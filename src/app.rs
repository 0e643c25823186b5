//! The application: every backend behind its trait, wired once, shared as `AppState`.

use std::future::Future;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::auth::quota::Quotas;
use crate::auth::Authenticator;
use crate::budget::MemoryBudget;
use crate::buffer::Buffers;
use crate::catalog::Catalog;
use crate::config::{Config, LedgerBackend, WarehouseBackend};
use crate::ledger::postgres::PostgresLedger;
use crate::ledger::sqlite::SqliteLedger;
use crate::ledger::Ledger;
use crate::loader::{run_idempotency_sweeper, run_retention_sweeper, run_sweeper, supervise, Loader, LoaderHealth};
use crate::metrics::{Metrics, SharedMetrics};
use crate::replica::ReplicaId;
use crate::stage::Stage;
use crate::warehouse::duckdb::DuckDbWarehouse;
use crate::warehouse::snowflake::SnowflakeWarehouse;
use crate::warehouse::Warehouse;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("configuration: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("stage: {0}")]
    Stage(#[from] crate::stage::StageError),
    #[error("ledger: {0}")]
    Ledger(#[from] crate::ledger::LedgerError),
    #[error("warehouse: {0}")]
    Warehouse(#[from] crate::warehouse::WarehouseError),
    #[error("server: {0}")]
    Io(#[from] std::io::Error),
    /// Serving as configured would expose the gateway without keys (names `auth.mode`).
    #[error(transparent)]
    Exposed(#[from] crate::auth::ExposureError),
}

/// Everything a request handler or background task needs.
pub struct App {
    pub config: Config,
    pub ledger: Arc<dyn Ledger>,
    pub stage: Arc<Stage>,
    pub warehouse: Arc<dyn Warehouse>,
    pub catalog: Catalog,
    pub buffers: Buffers,
    /// Notified when a file is staged (wakes the loader).
    pub staged: Arc<Notify>,
    /// Notified after the loader changed batch status (wakes `wait=loaded` polls).
    pub loaded: Arc<Notify>,
    /// Names this process in file claims; stable across restarts on the same data folder.
    pub replica: ReplicaId,
    /// What the loader is doing, for `/readyz`.
    pub loader_health: Arc<LoaderHealth>,
    /// Memory every request holds, from its body to its buffered rows.
    pub budget: Arc<MemoryBudget>,
    /// API requests in flight, up to `server.max_concurrent_requests`.
    pub in_flight: Arc<tokio::sync::Semaphore>,
    /// Checks the API key of every request.
    pub auth: Authenticator,
    /// Each partner's request, record and byte rates on this replica.
    pub quotas: Quotas,
    /// What `/metrics` reports.
    pub metrics: SharedMetrics,
}

/// Shared handle passed to handlers.
#[derive(Clone)]
pub struct AppState(pub Arc<App>);

impl Deref for AppState {
    type Target = App;

    fn deref(&self) -> &App {
        &self.0
    }
}

impl App {
    /// Opens the stage, ledger and warehouse named by the configuration.
    pub async fn build(config: Config) -> Result<App, StartError> {
        config.validate()?;
        let stage = Arc::new(Stage::open(&config.stage_url(), &config.stage)?);
        let ledger = open_ledger(&config).await?;
        let warehouse: Arc<dyn Warehouse> = match config.warehouse_backend()? {
            WarehouseBackend::DuckDb { path } => {
                let stage = stage.clone();
                let opened = tokio::task::spawn_blocking(move || DuckDbWarehouse::open(&path, stage))
                    .await
                    .map_err(|e| std::io::Error::other(e.to_string()))??;
                Arc::new(opened)
            }
            WarehouseBackend::Snowflake(snowflake) => Arc::new(SnowflakeWarehouse::connect(snowflake)?),
        };
        Ok(App::from_parts(config, stage, ledger, warehouse))
    }

    /// Wires already-open backends (tests use this to pick their own).
    pub fn from_parts(
        config: Config,
        stage: Arc<Stage>,
        ledger: Arc<dyn Ledger>,
        warehouse: Arc<dyn Warehouse>,
    ) -> App {
        let staged = Arc::new(Notify::new());
        let budget = MemoryBudget::new(config.limits.memory_budget_bytes);
        let metrics = Arc::new(Metrics::new());
        let buffers = Buffers::new(
            stage.clone(),
            ledger.clone(),
            budget.clone(),
            staged.clone(),
            config.ledger.timeout,
            metrics.clone(),
            warehouse.recent_files(),
        );
        let catalog = Catalog::new(ledger.clone(), warehouse.clone(), &config);
        let replica = ReplicaId::acquire(&config.server.data_dir);
        let in_flight = Arc::new(tokio::sync::Semaphore::new(config.server.max_concurrent_requests));
        let auth = Authenticator::new(config.auth.mode, ledger.clone(), config.auth.cache);
        let quotas = Quotas::new(config.quotas.clone());
        App {
            config,
            ledger,
            stage,
            warehouse,
            catalog,
            buffers,
            staged,
            loaded: Arc::new(Notify::new()),
            replica,
            loader_health: Arc::new(LoaderHealth::default()),
            budget,
            in_flight,
            auth,
            quotas,
            metrics,
        }
    }

    fn loader(&self) -> Loader {
        Loader::new(
            self.ledger.clone(),
            self.warehouse.clone(),
            self.stage.clone(),
            self.config.loader.clone(),
            self.replica.name().to_string(),
            self.staged.clone(),
            self.loaded.clone(),
        )
        .with_health(self.loader_health.clone())
        .with_metrics(self.metrics.clone())
    }
}

/// Opens (and migrates) the ledger the configuration names; the key commands use it alone.
pub async fn open_ledger(config: &Config) -> Result<Arc<dyn Ledger>, StartError> {
    Ok(match config.ledger_backend()? {
        LedgerBackend::Sqlite { url, path } => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            Arc::new(SqliteLedger::connect(url.expose()).await?)
        }
        LedgerBackend::Postgres { url, max_connections, timeout } => {
            Arc::new(PostgresLedger::connect(url.expose(), max_connections, timeout).await?)
        }
    })
}

/// Serves until `shutdown` resolves, then stops in order: stop accepting and drain requests,
/// flush every buffer, let the loader finish its round.
pub async fn serve(
    app: App,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let addr = listener.local_addr()?;
    crate::auth::check_exposure(app.config.auth.mode, app.ledger.as_ref(), addr).await?;
    // Keys this replica's previous process held for requests it never finished are free again.
    let released = app.ledger.release_idempotency_of(app.replica.name()).await?;
    if released > 0 {
        tracing::info!(released, "released idempotency keys held by this replica's previous process");
    }
    let state = AppState(Arc::new(app));
    let cancel = CancellationToken::new();
    let loader = state.config.loader.enabled.then(|| {
        let (app, token) = (state.clone(), cancel.child_token());
        let health = state.loader_health.clone();
        tokio::spawn(supervise(health, cancel.child_token(), Duration::from_secs(1), move || {
            app.loader().run(token.clone())
        }))
    });
    // One sweeper per loader: deleting a file nobody committed is idempotent across replicas.
    let sweeper = state.config.loader.enabled.then(|| {
        let (stage, ledger) = (state.stage.clone(), state.ledger.clone());
        tokio::spawn(run_sweeper(stage, ledger, state.config.loader.orphan_after, cancel.child_token()))
    });
    let idempotency_sweeper = tokio::spawn(run_idempotency_sweeper(
        state.ledger.clone(),
        state.config.idempotency.window,
        cancel.child_token(),
    ));
    let retention_sweeper =
        tokio::spawn(run_retention_sweeper(state.ledger.clone(), state.config.retention.keep, cancel.child_token()));
    let router = crate::http::router(state.clone());
    tracing::info!(addr = %addr, auth = ?state.config.auth.mode, ledger = state.ledger.backend(), warehouse = state.warehouse.backend(),
        stage = state.stage.url(), "snowgate listening");
    // Once shutdown begins, buffered rows are flushed at once so in-flight requests finish early.
    let buffers = state.buffers.clone();
    let shutdown = async move {
        shutdown.await;
        crate::fault::crash_point(crate::fault::CrashPoint::Shutdown);
        buffers.hurry();
    };
    crate::http::serve_connections(listener, router, &state.config.server, shutdown).await;
    state.buffers.close().await;
    tracing::info!("buffers flushed");
    cancel.cancel();
    if let Some(sweeper) = sweeper {
        let _ = sweeper.await;
    }
    let _ = idempotency_sweeper.await;
    let _ = retention_sweeper.await;
    if let Some(Err(e)) = match loader {
        Some(task) => Some(task.await),
        None => None,
    } {
        tracing::error!(error = %e, "loader task failed");
    }
    tracing::info!("stopped");
    Ok(())
}

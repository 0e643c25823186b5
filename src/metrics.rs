//! What the gateway counts and measures, for Prometheus (`GET /metrics`, OpenMetrics text).
//!
//! Labels are bounded sets: tables, partners (operators create them with keys), reject codes and
//! stages, routes as declared (never a raw path), statuses. Never a batch id.
//!
//! Counters and histograms are this process's own: sum them over replicas. Gauges read from
//! the ledger at scrape time (backlog, last load) are the same on every replica: take their
//! `max`.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::budget::MemoryBudget;
use crate::ledger::{BatchRecord, TableLoadState};
use crate::loader::{LoaderState, LoaderStatus};

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabels {
    pub table: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub table: String,
    pub partner: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    pub table: String,
    pub partner: String,
    /// `gateway` or `warehouse`.
    pub stage: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BatchLabels {
    pub table: String,
    pub partner: String,
    /// What the POST made of it: `staged`, or `rejected` when no record was accepted.
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    /// The route as declared (`/v1/tables/{table}/batches`), or `unmatched`.
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CopyLabels {
    pub table: String,
    /// `loaded`, `refused` (a data error), or `failed` (any other error).
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BytesLabels {
    /// `wire` (as sent) or `decompressed`.
    pub form: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QuotaLabels {
    pub partner: String,
    /// The bucket that refused: `requests`, `records` or `bytes`.
    pub limit: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Latencies from a millisecond to about 9 minutes.
fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 20))
}

/// Every metric of the gateway, registered once.
pub struct Metrics {
    registry: Registry,
    pub records_received: Family<SourceLabels, Counter>,
    pub records_accepted: Family<SourceLabels, Counter>,
    pub records_rejected: Family<RejectLabels, Counter>,
    pub records_loaded: Family<TableLabels, Counter>,
    pub batches: Family<BatchLabels, Counter>,
    pub requests: Histograms<RequestLabels>,
    pub ack: Histograms<TableLabels>,
    pub load_delay: Histograms<TableLabels>,
    pub copies: Histograms<CopyLabels>,
    pub stage_put: Histogram,
    pub flush_encode: Histogram,
    pub ledger_commit: Histogram,
    pub bytes_received: Family<BytesLabels, Counter>,
    pub schema_changes: Family<TableLabels, Counter>,
    pub quota_refusals: Family<QuotaLabels, Counter>,
    memory_used: Gauge,
    memory_budget: Gauge,
    backlog_files: Family<TableLabels, Gauge>,
    backlog_oldest: Family<TableLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    last_load: Family<TableLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    ledger_up: Gauge,
    loader_up: Gauge,
    loader_restarts: Counter,
    memory_reliefs: Counter,
    files_from_memory: Counter,
    /// One scrape at a time reads the scrape-time values and encodes them.
    scrape: std::sync::Mutex<()>,
}

/// Brings a counter kept elsewhere as a running total (read at scrape time) up to `total`.
fn catch_up(counter: &Counter, total: u64) {
    let counted = counter.get();
    if total > counted {
        counter.inc_by(total - counted);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut metrics = Metrics {
            registry: Registry::with_prefix("snowgate"),
            records_received: Family::default(),
            records_accepted: Family::default(),
            records_rejected: Family::default(),
            records_loaded: Family::default(),
            batches: Family::default(),
            requests: Family::new_with_constructor(seconds),
            ack: Family::new_with_constructor(seconds),
            load_delay: Family::new_with_constructor(seconds),
            copies: Family::new_with_constructor(seconds),
            stage_put: seconds(),
            flush_encode: seconds(),
            ledger_commit: seconds(),
            bytes_received: Family::default(),
            schema_changes: Family::default(),
            quota_refusals: Family::default(),
            memory_used: Gauge::default(),
            memory_budget: Gauge::default(),
            backlog_files: Family::default(),
            backlog_oldest: Family::default(),
            last_load: Family::default(),
            ledger_up: Gauge::default(),
            loader_up: Gauge::default(),
            loader_restarts: Counter::default(),
            memory_reliefs: Counter::default(),
            files_from_memory: Counter::default(),
            scrape: std::sync::Mutex::new(()),
        };
        let r = &mut metrics.registry;
        r.register("records_received", "Records received, by table and partner", metrics.records_received.clone());
        r.register("records_accepted", "Records the gateway accepted", metrics.records_accepted.clone());
        r.register(
            "records_rejected",
            "Records rejected, by stage (gateway or warehouse) and code",
            metrics.records_rejected.clone(),
        );
        r.register("records_loaded", "Rows loaded into the warehouse, by table", metrics.records_loaded.clone());
        r.register("batches", "Batches stored, by what the POST made of them", metrics.batches.clone());
        r.register_with_unit(
            "http_request_duration",
            "API requests, by method, route and status",
            Unit::Seconds,
            metrics.requests.clone(),
        );
        r.register_with_unit(
            "ack_duration",
            "Batch POSTs from arrival to their answer (records staged or rejected)",
            Unit::Seconds,
            metrics.ack.clone(),
        );
        r.register_with_unit(
            "load_delay",
            "Staged files from staging to loaded in the warehouse",
            Unit::Seconds,
            metrics.load_delay.clone(),
        );
        r.register_with_unit(
            "copy_duration",
            "COPY statements, by table and outcome",
            Unit::Seconds,
            metrics.copies.clone(),
        );
        r.register_with_unit(
            "stage_put_duration",
            "Writes of files to the stage",
            Unit::Seconds,
            metrics.stage_put.clone(),
        );
        r.register_with_unit(
            "flush_encode_duration",
            "Encodings of buffered rows into a Parquet file, before its write to the stage",
            Unit::Seconds,
            metrics.flush_encode.clone(),
        );
        r.register_with_unit(
            "ledger_commit_duration",
            "Ledger commits of a staged file and the batches it completes, or of a batch with no accepted rows",
            Unit::Seconds,
            metrics.ledger_commit.clone(),
        );
        r.register_with_unit(
            "received",
            "Request body bytes, as sent (wire) and decompressed",
            Unit::Bytes,
            metrics.bytes_received.clone(),
        );
        r.register(
            "schema_changes",
            "Columns batches added to their table (drift), by table",
            metrics.schema_changes.clone(),
        );
        r.register("quota_refusals", "Requests refused over a partner's quota", metrics.quota_refusals.clone());
        r.register_with_unit(
            "memory_used",
            "Request memory held now (bodies, parsed records, buffered rows)",
            Unit::Bytes,
            metrics.memory_used.clone(),
        );
        r.register_with_unit("memory_budget", "limits.memory_budget_bytes", Unit::Bytes, metrics.memory_budget.clone());
        r.register(
            "memory_reliefs",
            "Times request memory reached three quarters of the budget (or a grant was refused) and the allocator was asked to give its freed pages back",
            metrics.memory_reliefs.clone(),
        );
        r.register(
            "loader_files_from_memory",
            "Files a COPY took from the rows this process kept when it staged them, instead of reading them back from the stage (DuckDB)",
            metrics.files_from_memory.clone(),
        );
        r.register(
            "backlog_files",
            "Staged files waiting to load or loading, by table (from the ledger: the same on every replica)",
            metrics.backlog_files.clone(),
        );
        r.register_with_unit(
            "backlog_oldest",
            "Age of the oldest file waiting to load, by table (from the ledger)",
            Unit::Seconds,
            metrics.backlog_oldest.clone(),
        );
        r.register(
            "last_load_timestamp_seconds",
            "When a file of the table last loaded, Unix time (from the ledger); freshness is time() minus it",
            metrics.last_load.clone(),
        );
        r.register("ledger_up", "1 when the ledger answered this scrape", metrics.ledger_up.clone());
        r.register("loader_up", "1 when this replica's loader is running", metrics.loader_up.clone());
        r.register("loader_restarts", "Loader restarts after a panic", metrics.loader_restarts.clone());
        metrics
    }

    /// Counts a batch the gateway stored (or rejected whole) and how long its POST took.
    pub fn batch_stored(&self, batch: &BatchRecord, took: Duration) {
        let source = SourceLabels { table: batch.table.clone(), partner: batch.partner.to_string() };
        self.records_received.get_or_create(&source).inc_by(batch.counts.received);
        self.records_accepted.get_or_create(&source).inc_by(batch.counts.accepted);
        for (code, n) in &batch.rejects_by_code {
            let labels = RejectLabels {
                table: source.table.clone(),
                partner: source.partner.clone(),
                stage: "gateway".into(),
                code: code.clone(),
            };
            self.records_rejected.get_or_create(&labels).inc_by(*n);
        }
        if !batch.schema_changes.is_empty() {
            let labels = TableLabels { table: source.table.clone() };
            self.schema_changes.get_or_create(&labels).inc_by(batch.schema_changes.len() as u64);
        }
        let status = if batch.counts.accepted == 0 { "rejected" } else { "staged" };
        let labels = BatchLabels { table: source.table.clone(), partner: source.partner, status: status.into() };
        self.batches.get_or_create(&labels).inc();
        self.ack.get_or_create(&TableLabels { table: batch.table.clone() }).observe(took.as_secs_f64());
    }

    /// Counts a row the warehouse refused, once isolated.
    pub fn warehouse_reject(&self, table: &str, partner: &str) {
        let labels = RejectLabels {
            table: table.into(),
            partner: partner.into(),
            stage: "warehouse".into(),
            code: "warehouse_rejected".into(),
        };
        self.records_rejected.get_or_create(&labels).inc();
    }

    /// Measures one COPY statement.
    pub fn copy(&self, table: &str, outcome: &str, took: Duration) {
        let labels = CopyLabels { table: table.into(), outcome: outcome.into() };
        self.copies.get_or_create(&labels).observe(took.as_secs_f64());
    }

    /// Counts rows loaded from files staged at `staged` (when known).
    pub fn loaded(&self, table: &str, rows: u64, staged: Option<DateTime<Utc>>) {
        let labels = TableLabels { table: table.into() };
        self.records_loaded.get_or_create(&labels).inc_by(rows);
        // A file the warehouse had loaded already (0 rows) waited for nothing.
        if let Some(staged) = staged.filter(|_| rows > 0) {
            let delay = (Utc::now() - staged).to_std().unwrap_or_default();
            self.load_delay.get_or_create(&labels).observe(delay.as_secs_f64());
        }
    }

    /// The text of a scrape, after reading what is read at scrape time: the memory budget, the
    /// loader's state, the files loaded from memory so far, and (when the ledger answered) the
    /// backlog and last load of each table.
    pub fn render(
        &self,
        memory: &MemoryBudget,
        loader: &LoaderStatus,
        files_from_memory: u64,
        tables: Option<&[TableLoadState]>,
    ) -> Result<String, std::fmt::Error> {
        let _one = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        catch_up(&self.files_from_memory, files_from_memory);
        self.memory_used.set(i64::try_from(memory.used()).unwrap_or(i64::MAX));
        self.memory_budget.set(i64::try_from(memory.max()).unwrap_or(i64::MAX));
        catch_up(&self.memory_reliefs, memory.reliefs());
        self.loader_up.set(i64::from(loader.state == LoaderState::Running));
        catch_up(&self.loader_restarts, u64::from(loader.restarts));
        self.ledger_up.set(i64::from(tables.is_some()));
        if let Some(tables) = tables {
            // A table whose backlog emptied reads 0, not its last value.
            self.backlog_files.clear();
            self.backlog_oldest.clear();
            let now = Utc::now();
            for state in tables {
                let labels = TableLabels { table: state.table.clone() };
                self.backlog_files.get_or_create(&labels).set(i64::try_from(state.waiting).unwrap_or(i64::MAX));
                let oldest = state.oldest_waiting.map_or(0.0, |at| (now - at).num_milliseconds().max(0) as f64 / 1e3);
                self.backlog_oldest.get_or_create(&labels).set(oldest);
                if let Some(at) = state.last_loaded {
                    self.last_load.get_or_create(&labels).set(at.timestamp_millis() as f64 / 1e3);
                }
            }
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// Shared by the API, the buffers and the loader.
pub type SharedMetrics = Arc<Metrics>;

//! Configuration: TOML file plus `SNOWGATE_` environment overrides, parsed once at start into
//! typed values (durations, table names, backends) with errors that name the key.
//!
//! A leaf module: it imports nothing else of snowgate but the schema vocabulary; other modules
//! build their own settings from it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::schema::{DriftPolicy, TableName};

/// A configuration problem, naming the key.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub stage: StageConfig,
    pub ledger: LedgerConfig,
    pub warehouse: WarehouseConfig,
    pub defaults: TableSettings,
    /// Per-table overrides, keyed by table name (an identifier, case-insensitive).
    #[serde(deserialize_with = "table_overrides")]
    pub tables: BTreeMap<TableName, TableOverrides>,
    pub limits: Limits,
    pub loader: LoaderConfig,
    pub auth: AuthConfig,
    pub idempotency: IdempotencyConfig,
    pub quotas: QuotasConfig,
    pub retention: RetentionConfig,
    pub log: LogConfig,
}

/// How the gateway writes its log (to stderr).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` (default, for people) or `json` (one object per line, for log pipelines); either
    /// way every line of a request carries its span: `request_id`, and `batch_id`, `table` and
    /// `partner` once known. The level comes from `RUST_LOG` (default `info`).
    pub format: LogFormat,
    /// Where the request and load spans also go, as OTLP over HTTP (protobuf), for example
    /// `http://otel-collector:4318` (`/v1/traces` is added unless the URL ends with it). Off
    /// when unset; spans are batched and sent in the background, and flushed at shutdown.
    pub otlp_endpoint: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// How long the ledger keeps what it knows of finished batches.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Final batches (`loaded`, `rejected`, `failed`) received longer ago than this are removed
    /// with their rejects, and their stage files once no other batch needs them (key
    /// `keep_secs`, default 30 days; at least a day and at least `idempotency.window_secs`).
    #[serde(rename = "keep_secs", with = "secs")]
    pub keep: Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig { keep: Duration::from_secs(30 * 86_400) }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// How long in-flight requests may run on shutdown (key `shutdown_grace_secs`).
    #[serde(rename = "shutdown_grace_secs", with = "secs")]
    pub shutdown_grace: Duration,
    /// How long a replica trusts its cached table definitions before comparing them with the
    /// ledger, so that a change made through another replica takes effect (key
    /// `schema_refresh_ms`).
    #[serde(rename = "schema_refresh_ms", with = "millis")]
    pub schema_refresh: Duration,
    /// Longest time a client may take to send a request's headers (key `header_timeout_secs`);
    /// the connection is closed after it.
    #[serde(rename = "header_timeout_secs", with = "secs")]
    pub header_timeout: Duration,
    /// Requests served at once; more are answered 503 `over_capacity` with `Retry-After` at once
    /// (health probes are exempt).
    pub max_concurrent_requests: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./data"),
            shutdown_grace: Duration::from_secs(30),
            schema_refresh: Duration::from_secs(5),
            header_timeout: Duration::from_secs(10),
            max_concurrent_requests: 1024,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StageConfig {
    /// `file://<folder>` or `s3://<bucket>/<prefix>`; default `file://<data_dir>/stage`.
    pub url: Option<String>,
    /// S3-compatible endpoint (MinIO, s3s-fs...), e.g. `http://127.0.0.1:9000`.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Allow plain-HTTP endpoints.
    pub allow_http: bool,
    /// Path-style requests (`endpoint/bucket/key`) instead of virtual-hosted buckets.
    pub path_style: bool,
    /// Longest time one stage operation (a file written or read, a listing) may take, retries
    /// included (key `timeout_secs`); past it the operation fails as unavailable, and a POST
    /// waiting on it answers 503 `stage_unavailable`.
    #[serde(rename = "timeout_secs", with = "secs")]
    pub timeout: Duration,
}

impl Default for StageConfig {
    fn default() -> Self {
        StageConfig {
            url: None,
            endpoint: None,
            region: None,
            allow_http: false,
            path_style: false,
            timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LedgerConfig {
    /// `sqlite://<file>` or `postgres://user@host:5432/db`; default `sqlite://<data_dir>/snowgate.db`.
    /// A password is best given as `PGPASSWORD` rather than in the URL.
    pub url: Option<Secret>,
    /// Postgres pool size.
    pub max_connections: u32,
    /// Longest wait for a ledger connection, and for the commit that acknowledges staged
    /// records (key `timeout_secs`); past it a POST answers 503 `ledger_unavailable`.
    #[serde(rename = "timeout_secs", with = "secs")]
    pub timeout: Duration,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig { url: None, max_connections: 10, timeout: Duration::from_secs(10) }
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WarehouseKind {
    #[default]
    Duckdb,
    Snowflake,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WarehouseConfig {
    pub kind: WarehouseKind,
    /// DuckDB file; default `<data_dir>/warehouse.duckdb`.
    pub path: Option<PathBuf>,
    pub snowflake: Option<SnowflakeConfig>,
}

/// Snowflake connection. The password comes from `SNOWFLAKE_PASSWORD` (or this section's
/// `password`, best set through `SNOWGATE_WAREHOUSE__SNOWFLAKE__PASSWORD`); key-pair auth reads
/// `private_key_path` (an unencrypted PKCS#8 PEM file).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SnowflakeConfig {
    pub account: String,
    pub user: String,
    pub password: Option<Secret>,
    pub private_key_path: Option<PathBuf>,
    pub role: Option<String>,
    pub warehouse: Option<String>,
    pub database: String,
    pub schema: String,
    /// External stage whose URL is `[stage].url`.
    pub stage: String,
    /// Replaces `https://<account>.snowflakecomputing.com` (proxies, emulators).
    pub base_url: Option<String>,
    /// Longest wait for one statement's answer, login and result included (key
    /// `statement_timeout_secs`). A COPY that takes longer is abandoned as a transient failure:
    /// its session is replaced (which rolls back its open transaction) and the files are retried.
    #[serde(rename = "statement_timeout_secs", with = "secs")]
    pub statement_timeout: Duration,
}

impl Default for SnowflakeConfig {
    fn default() -> Self {
        SnowflakeConfig {
            account: String::new(),
            user: String::new(),
            password: None,
            private_key_path: None,
            role: None,
            warehouse: None,
            database: String::new(),
            schema: String::new(),
            stage: String::new(),
            base_url: None,
            statement_timeout: Duration::from_secs(600),
        }
    }
}

/// A secret: deserialised from config or env, never printed (Debug and Serialize show `***`).
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(secrecy::SecretString);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(secrecy::SecretString::from(value.into()))
    }

    pub fn expose(&self) -> &str {
        use secrecy::ExposeSecret;
        self.0.expose_secret()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("***")
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.expose() == other.expose()
    }
}

/// Per-table behaviour; `[defaults]` holds every key, `[tables.<name>]` may override any.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TableSettings {
    pub drift: DriftPolicy,
    /// Longest time a row waits in a buffer before its file is written (key `linger_ms`).
    #[serde(rename = "linger_ms", with = "millis")]
    pub linger: Duration,
    pub max_rows_per_file: usize,
    pub max_bytes_per_file: usize,
    /// A segment holding this many bytes of rows is written at once, without waiting for its
    /// linger: a request that brings that much is not held back for others (no effect above
    /// `max_bytes_per_file`).
    pub flush_at_bytes: usize,
}

impl Default for TableSettings {
    fn default() -> Self {
        TableSettings {
            drift: DriftPolicy::Evolve,
            linger: Duration::from_millis(200),
            max_rows_per_file: 100_000,
            max_bytes_per_file: 64 << 20,
            flush_at_bytes: 1 << 20,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TableOverrides {
    pub drift: Option<DriftPolicy>,
    #[serde(rename = "linger_ms", with = "opt_millis")]
    pub linger: Option<Duration>,
    pub max_rows_per_file: Option<usize>,
    pub max_bytes_per_file: Option<usize>,
    pub flush_at_bytes: Option<usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Request body as sent (compressed or not).
    pub max_body_bytes: usize,
    /// Request body after `Content-Encoding` is undone.
    pub max_decompressed_bytes: usize,
    pub max_record_bytes: usize,
    /// Nesting depth of semi-structured values.
    pub max_depth: usize,
    pub max_records_per_request: usize,
    /// Columns a table may have (its own, not snowgate's); `evolve` adds none past it, and new
    /// fields are then rejected as `unknown_field` naming this limit.
    pub max_columns: usize,
    /// Rows buffered or being flushed across all tables; past it, POSTs get 503.
    pub memory_budget_bytes: usize,
    /// Longest `wait=loaded` long-poll (key `max_wait_secs`).
    #[serde(rename = "max_wait_secs", with = "secs")]
    pub max_wait: Duration,
    /// Longest pause between two pieces of a request body (key `body_idle_secs`); a client that
    /// stalls longer gets 408 and lets go of the memory it held.
    #[serde(rename = "body_idle_secs", with = "secs")]
    pub body_idle: Duration,
    /// Longest time to receive a whole request body (key `body_secs`).
    #[serde(rename = "body_secs", with = "secs")]
    pub body_total: Duration,
    /// Longest time a request may take once its body has arrived, `wait=loaded` long-polls
    /// aside (key `processing_secs`); past it the answer is 503 `timeout` with `Retry-After`.
    #[serde(rename = "processing_secs", with = "secs")]
    pub processing: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 64 << 20,
            max_decompressed_bytes: 256 << 20,
            max_record_bytes: 1 << 20,
            max_depth: 64,
            max_records_per_request: 1_000_000,
            max_columns: 1_000,
            memory_budget_bytes: 1 << 30,
            max_wait: Duration::from_secs(60),
            body_idle: Duration::from_secs(15),
            body_total: Duration::from_secs(120),
            processing: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LoaderConfig {
    /// Run the loader in this process (an ingest-only replica sets false).
    pub enabled: bool,
    /// Poll interval when nothing wakes the loader (key `interval_ms`).
    #[serde(rename = "interval_ms", with = "millis")]
    pub interval: Duration,
    /// How long a claim holds before another loader may take the file (key `lease_secs`).
    #[serde(rename = "lease_secs", with = "secs")]
    pub lease: Duration,
    pub max_files_per_copy: usize,
    /// COPY statements a round runs at once, at most: a round's files of one table are split
    /// among this many (no more than the warehouse runs at once), so that a warehouse inserting
    /// on the gateway's own cores (DuckDB) uses more than one.
    pub parallel_copies: usize,
    /// First retry delay after a transient warehouse failure (key `retry_base_ms`).
    #[serde(rename = "retry_base_ms", with = "millis")]
    pub retry_base: Duration,
    /// Delay before files held back by a warehouse configuration error are tried again (key
    /// `configuration_retry_secs`).
    #[serde(rename = "configuration_retry_secs", with = "secs")]
    pub configuration_retry: Duration,
    /// Age past which a stage file unknown to the ledger (written, then the process died before
    /// committing it) is deleted, and how often the stage is swept for them (key
    /// `orphan_after_secs`). Keep it far above the longest a batch takes from its first stage
    /// write to its commit: a batch's rejects object is written before its rows buffer, so that is
    /// the longest `linger_ms` plus `limits.processing_secs` and the stage and ledger timeouts.
    #[serde(rename = "orphan_after_secs", with = "secs")]
    pub orphan_after: Duration,
    /// Times a file is tried when the warehouse answers with an error of no known kind (neither
    /// transient, configuration nor data) before the file is marked failed.
    pub statement_attempts: u32,
    /// Most COPY statements spent isolating the rows the warehouse refuses in one file (k bad
    /// rows in n take about 1.5·k·log2(n/k) + 2k); none is run past it, and the parts not yet
    /// loaded or rejected fail whole instead of holding the loader for hours when every row is
    /// refused.
    pub isolation_statements: u32,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        LoaderConfig {
            enabled: true,
            interval: Duration::from_millis(1000),
            lease: Duration::from_secs(30),
            max_files_per_copy: 1000,
            parallel_copies: 2,
            retry_base: Duration::from_millis(1000),
            configuration_retry: Duration::from_secs(60),
            orphan_after: Duration::from_secs(3600),
            statement_attempts: 3,
            isolation_statements: 1000,
        }
    }
}

/// Whether requests need an API key.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// Keys are required once the first one exists; until then the gateway serves only on a
    /// loopback address (and refuses to start on any other).
    #[default]
    Keys,
    /// Requests without a key are served as the operator; keys sent are still checked.
    Open,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub mode: AuthMode,
    /// How long a replica trusts a key it has checked before reading it again, so a revocation
    /// made through another replica or the CLI takes effect within it (key `cache_secs`).
    #[serde(rename = "cache_secs", with = "secs")]
    pub cache: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig { mode: AuthMode::Keys, cache: Duration::from_secs(5) }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct IdempotencyConfig {
    /// How long an `Idempotency-Key` is remembered (key `window_secs`, default 7 days).
    #[serde(rename = "window_secs", with = "secs")]
    pub window: Duration,
}

impl Default for IdempotencyConfig {
    fn default() -> Self {
        IdempotencyConfig { window: Duration::from_secs(7 * 86_400) }
    }
}

/// Rates one partner may use; 0 means no limit.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Quota {
    pub requests_per_sec: f64,
    pub records_per_sec: f64,
    pub bytes_per_sec: f64,
    /// Seconds of each rate a partner may spend at once after being idle.
    pub burst_secs: f64,
}

impl Default for Quota {
    fn default() -> Self {
        Quota { requests_per_sec: 0.0, records_per_sec: 0.0, bytes_per_sec: 0.0, burst_secs: 2.0 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct QuotasConfig {
    /// Replicas sharing the quotas: each enforces its share (rate / replicas), which holds the
    /// total when a load balancer spreads a partner's requests evenly.
    pub replicas: u32,
    /// For every partner without its own entry.
    pub default: Quota,
    /// Per partner, by name.
    pub partners: BTreeMap<String, Quota>,
}

impl Default for QuotasConfig {
    fn default() -> Self {
        QuotasConfig { replicas: 1, default: Quota::default(), partners: BTreeMap::new() }
    }
}

impl Config {
    /// Loads defaults, then `file` if it exists (or the named file, which must exist), then env.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        match file {
            Some(path) if !path.exists() => {
                return Err(ConfigError(format!("config file {} does not exist", path.display())));
            }
            Some(path) => figment = figment.merge(Toml::file_exact(path)),
            None if Path::new("snowgate.toml").exists() => figment = figment.merge(Toml::file_exact("snowgate.toml")),
            None => {}
        }
        // Only SECTION__KEY variables: a Kubernetes Service named snowgate injects SNOWGATE_PORT and
        // friends, which are not configuration.
        figment = figment.merge(Env::prefixed("SNOWGATE_").filter(|key| key.as_str().contains("__")).split("__"));
        let config: Config = figment.extract().map_err(|e| ConfigError(describe_figment_error(e)))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks ranges and combinations, with errors that name the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let check =
            |ok: bool, key: &str, rule: &str| if ok { Ok(()) } else { Err(ConfigError(format!("{key}: {rule}"))) };
        let tables = std::iter::once(("defaults".to_string(), self.defaults.clone()))
            .chain(self.tables.keys().map(|name| (format!("tables.{name}"), self.table_settings(name))));
        for (key, t) in tables {
            let linger = t.linger.as_millis();
            check((1..=600_000).contains(&linger), &format!("{key}.linger_ms"), "must be 1..=600000")?;
            check(
                (1..=10_000_000).contains(&t.max_rows_per_file),
                &format!("{key}.max_rows_per_file"),
                "must be 1..=10000000",
            )?;
            check(t.max_bytes_per_file >= 1024, &format!("{key}.max_bytes_per_file"), "must be at least 1024")?;
            check(t.flush_at_bytes >= 1024, &format!("{key}.flush_at_bytes"), "must be at least 1024")?;
        }
        if let Some(endpoint) = &self.log.otlp_endpoint {
            check(
                otlp_traces_url(endpoint).is_some(),
                "log.otlp_endpoint",
                "must be an http:// or https:// URL without credentials, query or fragment (a collector's \
                 credentials go in OTEL_EXPORTER_OTLP_HEADERS)",
            )?;
        }
        let l = &self.limits;
        check(l.max_body_bytes >= 1024, "limits.max_body_bytes", "must be at least 1024")?;
        check(
            l.max_decompressed_bytes >= l.max_body_bytes,
            "limits.max_decompressed_bytes",
            "must be >= limits.max_body_bytes",
        )?;
        check(l.max_record_bytes >= 64, "limits.max_record_bytes", "must be at least 64")?;
        // A record is one level deeper than its values, and stays under the JSON parser's own limit.
        check((1..=100).contains(&l.max_depth), "limits.max_depth", "must be 1..=100")?;
        check(l.max_records_per_request >= 1, "limits.max_records_per_request", "must be at least 1")?;
        check((1..=10_000).contains(&l.max_columns), "limits.max_columns", "must be 1..=10000")?;
        check(l.memory_budget_bytes >= 1 << 20, "limits.memory_budget_bytes", "must be at least 1048576")?;
        // The largest body must be parseable within the budget, at least when its records are
        // few and long (parsed, they take about three times their text, plus the text); a body of
        // many small fields needs more, and is refused with 413 if it needs more than the budget.
        let largest = l.max_decompressed_bytes.saturating_mul(4);
        check(
            largest <= l.memory_budget_bytes,
            "limits.memory_budget_bytes",
            &format!("must be at least 4 x limits.max_decompressed_bytes = {largest}"),
        )?;
        check(l.body_idle >= Duration::from_secs(1), "limits.body_idle_secs", "must be at least 1")?;
        check(
            self.server.header_timeout >= Duration::from_secs(1),
            "server.header_timeout_secs",
            "must be at least 1",
        )?;
        check(l.body_total >= l.body_idle, "limits.body_secs", "must be >= limits.body_idle_secs")?;
        check(self.loader.interval >= Duration::from_millis(10), "loader.interval_ms", "must be at least 10")?;
        // Zero would put a released file straight back into the next claim: a hot loop.
        check(self.loader.retry_base >= Duration::from_millis(10), "loader.retry_base_ms", "must be at least 10")?;
        check(self.loader.lease >= Duration::from_secs(5), "loader.lease_secs", "must be at least 5")?;
        check((1..=1000).contains(&self.loader.max_files_per_copy), "loader.max_files_per_copy", "must be 1..=1000")?;
        check((1..=16).contains(&self.loader.parallel_copies), "loader.parallel_copies", "must be 1..=16")?;
        check(
            self.loader.configuration_retry >= Duration::from_secs(1),
            "loader.configuration_retry_secs",
            "must be at least 1",
        )?;
        check(self.loader.orphan_after >= Duration::from_secs(1), "loader.orphan_after_secs", "must be at least 1")?;
        check((1..=100).contains(&self.loader.statement_attempts), "loader.statement_attempts", "must be 1..=100")?;
        check(self.loader.isolation_statements >= 1, "loader.isolation_statements", "must be at least 1")?;
        check(self.stage.timeout >= Duration::from_secs(1), "stage.timeout_secs", "must be at least 1")?;
        check(self.ledger.timeout >= Duration::from_secs(1), "ledger.timeout_secs", "must be at least 1")?;
        check(l.processing >= Duration::from_secs(1), "limits.processing_secs", "must be at least 1")?;
        check(
            (1..=1_000_000).contains(&self.server.max_concurrent_requests),
            "server.max_concurrent_requests",
            "must be 1..=1000000",
        )?;
        check(self.auth.cache <= Duration::from_secs(300), "auth.cache_secs", "must be at most 300")?;
        check(self.idempotency.window >= Duration::from_secs(60), "idempotency.window_secs", "must be at least 60")?;
        // A remembered Idempotency-Key answers with its batch: the batch must outlive the key.
        check(
            self.retention.keep >= Duration::from_secs(86_400) && self.retention.keep >= self.idempotency.window,
            "retention.keep_secs",
            "must be at least a day and at least idempotency.window_secs",
        )?;
        check((1..=1000).contains(&self.quotas.replicas), "quotas.replicas", "must be 1..=1000")?;
        let quotas = std::iter::once(("quotas.default".to_string(), &self.quotas.default))
            .chain(self.quotas.partners.iter().map(|(name, q)| (format!("quotas.partners.{name}"), q)));
        for (key, quota) in quotas {
            if let Some(name) = key.strip_prefix("quotas.partners.") {
                check(name.parse::<crate::partner::Partner>().is_ok(), &key, "is not a partner name")?;
            }
            for (rate, value) in [
                ("requests_per_sec", quota.requests_per_sec),
                ("records_per_sec", quota.records_per_sec),
                ("bytes_per_sec", quota.bytes_per_sec),
            ] {
                check(value.is_finite() && value >= 0.0, &format!("{key}.{rate}"), "must be 0 (no limit) or more")?;
            }
            check(
                quota.burst_secs.is_finite() && (0.001..=3600.0).contains(&quota.burst_secs),
                &format!("{key}.burst_secs"),
                "must be 0.001..=3600",
            )?;
        }
        let stage = self.stage_url();
        check(
            stage.starts_with("file://") || stage.starts_with("s3://"),
            "stage.url",
            "must be file://... or s3://...",
        )?;
        let ledger = self.ledger_backend()?;
        // Postgres holds one connection for a DDL lock while the change itself needs another.
        if let LedgerBackend::Postgres { max_connections, .. } = ledger {
            check(max_connections >= 2, "ledger.max_connections", "must be at least 2")?;
        }
        if let WarehouseBackend::Snowflake(sf) = self.warehouse_backend()? {
            for (key, value) in [
                ("account", &sf.account),
                ("user", &sf.user),
                ("database", &sf.database),
                ("schema", &sf.schema),
                ("stage", &sf.stage),
            ] {
                check(!value.trim().is_empty(), &format!("warehouse.snowflake.{key}"), "must be set")?;
            }
            check(
                sf.statement_timeout >= Duration::from_secs(1),
                "warehouse.snowflake.statement_timeout_secs",
                "must be at least 1",
            )?;
            let has_password = sf.password.is_some() || std::env::var_os("SNOWFLAKE_PASSWORD").is_some();
            check(
                has_password || sf.private_key_path.is_some(),
                "warehouse.snowflake.password",
                "set SNOWFLAKE_PASSWORD or warehouse.snowflake.private_key_path",
            )?;
        }
        Ok(())
    }

    /// The ledger, from `ledger.url`: the one place its scheme is read.
    pub fn ledger_backend(&self) -> Result<LedgerBackend, ConfigError> {
        let url = self.ledger_url();
        let text = url.expose();
        if let Some(rest) = text.strip_prefix("sqlite://").or_else(|| text.strip_prefix("sqlite:")) {
            let path = PathBuf::from(rest.split('?').next().unwrap_or(rest));
            return Ok(LedgerBackend::Sqlite { url, path });
        }
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            return Ok(LedgerBackend::Postgres {
                url,
                max_connections: self.ledger.max_connections,
                timeout: self.ledger.timeout,
            });
        }
        Err(ConfigError("ledger.url: must be sqlite://... or postgres://...".into()))
    }

    /// The warehouse, from `warehouse.kind` and its section.
    pub fn warehouse_backend(&self) -> Result<WarehouseBackend<'_>, ConfigError> {
        match (self.warehouse.kind, &self.warehouse.snowflake) {
            (WarehouseKind::Duckdb, _) => Ok(WarehouseBackend::DuckDb {
                path: self.warehouse.path.clone().unwrap_or_else(|| self.server.data_dir.join("warehouse.duckdb")),
            }),
            (WarehouseKind::Snowflake, Some(snowflake)) => Ok(WarehouseBackend::Snowflake(snowflake)),
            (WarehouseKind::Snowflake, None) => {
                Err(ConfigError("warehouse.snowflake: required when warehouse.kind = \"snowflake\"".into()))
            }
        }
    }

    pub fn stage_url(&self) -> String {
        self.stage.url.clone().unwrap_or_else(|| format!("file://{}", self.server.data_dir.join("stage").display()))
    }

    /// The ledger URL; a secret, since a Postgres URL may carry a password.
    pub fn ledger_url(&self) -> Secret {
        self.ledger
            .url
            .clone()
            .unwrap_or_else(|| Secret::new(format!("sqlite://{}", self.server.data_dir.join("snowgate.db").display())))
    }

    /// Defaults with a table's overrides applied.
    pub fn table_settings(&self, table: &TableName) -> TableSettings {
        let overrides = self.tables.get(table).cloned().unwrap_or_default();
        let d = &self.defaults;
        TableSettings {
            drift: overrides.drift.unwrap_or(d.drift),
            linger: overrides.linger.unwrap_or(d.linger),
            max_rows_per_file: overrides.max_rows_per_file.unwrap_or(d.max_rows_per_file),
            max_bytes_per_file: overrides.max_bytes_per_file.unwrap_or(d.max_bytes_per_file),
            flush_at_bytes: overrides.flush_at_bytes.unwrap_or(d.flush_at_bytes),
        }
    }
}

/// Where OTLP/HTTP trace export posts for `log.otlp_endpoint`: the URL with `/v1/traces` added
/// unless it ends with it; `None` unless it is an http(s) URL without credentials, query or
/// fragment (the config is printed by `check-config`, so no secret may live in it).
pub fn otlp_traces_url(endpoint: &str) -> Option<String> {
    let url = url::Url::parse(endpoint.trim()).ok()?;
    let plain = matches!(url.scheme(), "http" | "https")
        && url.has_host()
        && url.username().is_empty()
        && url.password().is_none()
        && url.query().is_none()
        && url.fragment().is_none();
    if !plain {
        return None;
    }
    let base = url.as_str().trim_end_matches('/');
    Some(if base.ends_with("/v1/traces") { base.to_string() } else { format!("{base}/v1/traces") })
}

/// The ledger the configuration names.
#[derive(Debug, Clone)]
pub enum LedgerBackend {
    /// An embedded SQLite file (`path` is its file, for creating the folder).
    Sqlite {
        url: Secret,
        path: PathBuf,
    },
    Postgres {
        url: Secret,
        max_connections: u32,
        timeout: Duration,
    },
}

/// The warehouse the configuration names.
#[derive(Debug, Clone)]
pub enum WarehouseBackend<'a> {
    DuckDb { path: PathBuf },
    Snowflake(&'a SnowflakeConfig),
}

/// `[tables.<name>]` keys are table names: parsed, and two spellings of one name are an error.
fn table_overrides<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<TableName, TableOverrides>, D::Error> {
    let raw = BTreeMap::<String, TableOverrides>::deserialize(deserializer)?;
    let mut tables = BTreeMap::new();
    for (key, overrides) in raw {
        let name = TableName::parse(&key).map_err(|e| serde::de::Error::custom(format!("tables.{key}: {e}")))?;
        if tables.insert(name.clone(), overrides).is_some() {
            return Err(serde::de::Error::custom(format!("tables.{key}: table {name} is configured twice")));
        }
    }
    Ok(tables)
}

/// Durations written as whole milliseconds.
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(u64::try_from(value.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(deserializer)?))
    }
}

/// Optional durations written as whole milliseconds.
mod opt_millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Option<Duration>, serializer: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(d) => serializer.serialize_some(&u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(deserializer)?.map(Duration::from_millis))
    }
}

/// Durations written as whole seconds.
mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(value.as_secs())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_secs(u64::deserialize(deserializer)?))
    }
}

/// figment's message plus where the bad value came from (file or environment variable).
fn describe_figment_error(error: figment::Error) -> String {
    error
        .into_iter()
        .map(|e| {
            let key = if e.path.is_empty() { String::new() } else { format!("{}: ", e.path.join(".")) };
            let source = e.metadata.as_ref().map(|m| format!(" (from {})", m.name)).unwrap_or_default();
            format!("{key}{}{source}", e.kind)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_derive_paths_from_data_dir() {
        let config = Config::default();
        config.validate().unwrap();
        assert_eq!(config.stage_url(), "file://./data/stage");
        assert_eq!(config.ledger_url().expose(), "sqlite://./data/snowgate.db");
        assert_eq!(config.table_settings(&TableName::parse("loans").unwrap()).max_rows_per_file, 100_000);
    }

    #[test]
    fn errors_name_the_key() {
        let mut config = Config::default();
        config.tables.insert(
            TableName::parse("loans").unwrap(),
            TableOverrides { linger: Some(Duration::ZERO), ..Default::default() },
        );
        let err = config.validate().unwrap_err().to_string();
        assert!(err.starts_with("tables.LOANS.linger_ms"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "[defaults]\nlinger_ms = \"soon\"\n").unwrap();
        let err = Config::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("defaults.linger_ms"), "{err}");
        std::fs::write(&path, "[server]\nlisten = \"127.0.0.1:9\"\ncolour = 1\n").unwrap();
        let err = Config::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("colour"), "{err}");

        for copies in [0, 17] {
            let mut config = Config::default();
            config.loader.parallel_copies = copies;
            let err = config.validate().unwrap_err().to_string();
            assert!(err.starts_with("loader.parallel_copies"), "{copies}: {err}");
        }

        // A batch must outlive the Idempotency-Key that answers with it.
        let mut config = Config::default();
        config.idempotency.window = Duration::from_secs(40 * 86_400);
        let err = config.validate().unwrap_err().to_string();
        assert!(err.starts_with("retention.keep_secs"), "{err}");
        let mut config = Config::default();
        config.warehouse.snowflake = Some(SnowflakeConfig {
            account: "a".into(),
            user: "u".into(),
            password: Some(Secret::new("p")),
            database: "d".into(),
            schema: "s".into(),
            stage: "S".into(),
            statement_timeout: Duration::ZERO,
            ..Default::default()
        });
        config.warehouse.kind = WarehouseKind::Snowflake;
        let err = config.validate().unwrap_err().to_string();
        assert!(err.starts_with("warehouse.snowflake.statement_timeout_secs"), "{err}");
    }

    #[test]
    fn an_otlp_endpoint_must_be_http() {
        let mut config = Config::default();
        for good in ["http://otel-collector:4318", "https://traces.example.com/v1/traces"] {
            config.log.otlp_endpoint = Some(good.into());
            config.validate().unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        assert_eq!(otlp_traces_url(" http://c:4318/ ").as_deref(), Some("http://c:4318/v1/traces"));
        assert_eq!(otlp_traces_url("https://c/v1/traces").as_deref(), Some("https://c/v1/traces"));
        for bad in ["otel-collector:4318", "ftp://collector", "http://", "", "http://u:p@c:4318", "http://c/?k=v"] {
            config.log.otlp_endpoint = Some(bad.into());
            let err = config.validate().unwrap_err().to_string();
            assert!(err.starts_with("log.otlp_endpoint"), "{bad}: {err}");
        }
    }

    #[test]
    fn secrets_never_print() {
        let mut config = Config::default();
        config.ledger.url = Some(Secret::new("postgres://snowgate:hunter2@db/snowgate"));
        assert!(!format!("{config:?}").contains("hunter2"));
        assert!(!serde_json::to_string(&config).unwrap().contains("hunter2"));
        config.warehouse.kind = WarehouseKind::Snowflake;
        let err = config.validate().unwrap_err().to_string();
        assert!(err.starts_with("warehouse.snowflake"), "{err}");
    }

    #[test]
    fn per_table_overrides_are_keyed_by_table_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        std::fs::write(&path, "[tables.Loans]\nmax_rows_per_file = 10\nlinger_ms = 7\n").unwrap();
        let config = Config::load(Some(&path)).unwrap();
        let loans = config.table_settings(&TableName::parse("LOANS").unwrap());
        assert_eq!(loans.max_rows_per_file, 10);
        assert_eq!(loans.linger, Duration::from_millis(7));
        let other = config.table_settings(&TableName::parse("other").unwrap());
        assert_eq!(other.max_rows_per_file, 100_000);

        std::fs::write(&path, "[tables.loans]\nlinger_ms = 7\n[tables.LOANS]\nlinger_ms = 8\n").unwrap();
        let err = Config::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("configured twice"), "{err}");
        std::fs::write(&path, "[tables.\"a-b\"]\nlinger_ms = 7\n").unwrap();
        let err = Config::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("tables.a-b"), "{err}");
    }

    #[test]
    fn backends_are_parsed_once() {
        let mut config = Config::default();
        assert!(matches!(config.ledger_backend().unwrap(), LedgerBackend::Sqlite { .. }));
        config.ledger.url = Some(Secret::new("postgresql://db/x"));
        assert!(matches!(config.ledger_backend().unwrap(), LedgerBackend::Postgres { max_connections: 10, .. }));
        config.ledger.url = Some(Secret::new("mysql://db/x"));
        assert!(config.validate().unwrap_err().to_string().starts_with("ledger.url"));
        assert!(matches!(config.warehouse_backend().unwrap(), WarehouseBackend::DuckDb { .. }));
    }
}

//! Configuration: TOML file plus `SNOWGATE_` environment overrides, validated at start.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::buffer::FlushPolicy;
use crate::ingest::decode::DecodeLimits;
use crate::ingest::drift::DriftPolicy;
use crate::loader::LoaderSettings;

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
    /// Per-table overrides, keyed by table name (case-insensitive).
    pub tables: BTreeMap<String, TableOverrides>,
    pub limits: Limits,
    pub loader: LoaderConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Seconds to wait for in-flight requests on shutdown.
    pub shutdown_grace_secs: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./data"),
            shutdown_grace_secs: 30,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
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
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LedgerConfig {
    /// `sqlite://<file>` or `postgres://user@host:5432/db`; default `sqlite://<data_dir>/snowgate.db`.
    /// A password is best given as `PGPASSWORD` rather than in the URL.
    pub url: Option<Secret>,
    /// Postgres pool size.
    pub max_connections: u32,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig { url: None, max_connections: 10 }
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
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
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
    pub linger_ms: u64,
    pub max_rows_per_file: usize,
    pub max_bytes_per_file: usize,
}

impl Default for TableSettings {
    fn default() -> Self {
        TableSettings {
            drift: DriftPolicy::Evolve,
            linger_ms: 200,
            max_rows_per_file: 100_000,
            max_bytes_per_file: 64 << 20,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TableOverrides {
    pub drift: Option<DriftPolicy>,
    pub linger_ms: Option<u64>,
    pub max_rows_per_file: Option<usize>,
    pub max_bytes_per_file: Option<usize>,
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
    /// Rows buffered or being flushed across all tables; past it, POSTs get 503.
    pub memory_budget_bytes: usize,
    /// Longest `wait=loaded` long-poll.
    pub max_wait_secs: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 64 << 20,
            max_decompressed_bytes: 256 << 20,
            max_record_bytes: 1 << 20,
            max_depth: 64,
            max_records_per_request: 1_000_000,
            memory_budget_bytes: 1 << 30,
            max_wait_secs: 60,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LoaderConfig {
    /// Run the loader in this process (an ingest-only replica sets false).
    pub enabled: bool,
    pub interval_ms: u64,
    pub lease_secs: u64,
    pub max_files_per_copy: usize,
    pub retry_base_ms: u64,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        LoaderConfig {
            enabled: true,
            interval_ms: 1000,
            lease_secs: 300,
            max_files_per_copy: 1000,
            retry_base_ms: 1000,
        }
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
            check((1..=600_000).contains(&t.linger_ms), &format!("{key}.linger_ms"), "must be 1..=600000")?;
            check(
                (1..=10_000_000).contains(&t.max_rows_per_file),
                &format!("{key}.max_rows_per_file"),
                "must be 1..=10000000",
            )?;
            check(t.max_bytes_per_file >= 1024, &format!("{key}.max_bytes_per_file"), "must be at least 1024")?;
        }
        for name in self.tables.keys() {
            crate::catalog::table_name(name).map_err(|e| ConfigError(format!("tables.{name}: {e}")))?;
        }
        let l = &self.limits;
        check(l.max_body_bytes >= 1024, "limits.max_body_bytes", "must be at least 1024")?;
        check(
            l.max_decompressed_bytes >= l.max_body_bytes,
            "limits.max_decompressed_bytes",
            "must be >= limits.max_body_bytes",
        )?;
        check(l.max_record_bytes >= 64, "limits.max_record_bytes", "must be at least 64")?;
        check((1..=128).contains(&l.max_depth), "limits.max_depth", "must be 1..=128")?;
        check(l.max_records_per_request >= 1, "limits.max_records_per_request", "must be at least 1")?;
        check(l.memory_budget_bytes >= 1 << 20, "limits.memory_budget_bytes", "must be at least 1048576")?;
        check(self.loader.interval_ms >= 10, "loader.interval_ms", "must be at least 10")?;
        check(self.loader.lease_secs >= 5, "loader.lease_secs", "must be at least 5")?;
        check((1..=1000).contains(&self.loader.max_files_per_copy), "loader.max_files_per_copy", "must be 1..=1000")?;
        let stage = self.stage_url();
        check(
            stage.starts_with("file://") || stage.starts_with("s3://"),
            "stage.url",
            "must be file://... or s3://...",
        )?;
        let ledger = self.ledger_url();
        let ledger = ledger.expose();
        check(
            ledger.starts_with("sqlite:") || ledger.starts_with("postgres://") || ledger.starts_with("postgresql://"),
            "ledger.url",
            "must be sqlite://... or postgres://...",
        )?;
        // Postgres holds one connection for a DDL lock while the change itself needs another.
        let min_connections = if ledger.starts_with("sqlite:") { 1 } else { 2 };
        check(
            self.ledger.max_connections >= min_connections,
            "ledger.max_connections",
            &format!("must be at least {min_connections}"),
        )?;
        if self.warehouse.kind == WarehouseKind::Snowflake {
            let Some(sf) = &self.warehouse.snowflake else {
                return Err(ConfigError("warehouse.snowflake: required when warehouse.kind = \"snowflake\"".into()));
            };
            for (key, value) in [
                ("account", &sf.account),
                ("user", &sf.user),
                ("database", &sf.database),
                ("schema", &sf.schema),
                ("stage", &sf.stage),
            ] {
                check(!value.trim().is_empty(), &format!("warehouse.snowflake.{key}"), "must be set")?;
            }
            let has_password = sf.password.is_some() || std::env::var_os("SNOWFLAKE_PASSWORD").is_some();
            check(
                has_password || sf.private_key_path.is_some(),
                "warehouse.snowflake.password",
                "set SNOWFLAKE_PASSWORD or warehouse.snowflake.private_key_path",
            )?;
        }
        Ok(())
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

    pub fn warehouse_path(&self) -> PathBuf {
        self.warehouse.path.clone().unwrap_or_else(|| self.server.data_dir.join("warehouse.duckdb"))
    }

    /// Defaults with a table's overrides applied.
    pub fn table_settings(&self, table: &str) -> TableSettings {
        let overrides = self
            .tables
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(table))
            .map(|(_, o)| o.clone())
            .unwrap_or_default();
        let d = &self.defaults;
        TableSettings {
            drift: overrides.drift.unwrap_or(d.drift),
            linger_ms: overrides.linger_ms.unwrap_or(d.linger_ms),
            max_rows_per_file: overrides.max_rows_per_file.unwrap_or(d.max_rows_per_file),
            max_bytes_per_file: overrides.max_bytes_per_file.unwrap_or(d.max_bytes_per_file),
        }
    }

    pub fn flush_policy(&self, table: &str) -> FlushPolicy {
        let t = self.table_settings(table);
        FlushPolicy {
            max_rows: t.max_rows_per_file,
            max_bytes: t.max_bytes_per_file,
            linger: Duration::from_millis(t.linger_ms),
        }
    }

    pub fn decode_limits(&self) -> DecodeLimits {
        DecodeLimits {
            max_decompressed_bytes: self.limits.max_decompressed_bytes,
            max_record_bytes: self.limits.max_record_bytes,
            max_records: self.limits.max_records_per_request,
        }
    }

    pub fn loader_settings(&self) -> LoaderSettings {
        LoaderSettings {
            interval: Duration::from_millis(self.loader.interval_ms),
            lease: Duration::from_secs(self.loader.lease_secs),
            max_files_per_copy: self.loader.max_files_per_copy,
            retry_base: Duration::from_millis(self.loader.retry_base_ms),
        }
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
        assert_eq!(config.flush_policy("loans").max_rows, 100_000);
    }

    #[test]
    fn errors_name_the_key() {
        let mut config = Config::default();
        config.tables.insert("loans".into(), TableOverrides { linger_ms: Some(0), ..Default::default() });
        let err = config.validate().unwrap_err().to_string();
        assert!(err.starts_with("tables.loans.linger_ms"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "[defaults]\nlinger_ms = \"soon\"\n").unwrap();
        let err = Config::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("defaults.linger_ms"), "{err}");
        std::fs::write(&path, "[server]\nlisten = \"127.0.0.1:9\"\ncolour = 1\n").unwrap();
        let err = Config::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("colour"), "{err}");
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
    fn per_table_overrides_apply_case_insensitively() {
        let mut config = Config::default();
        config.tables.insert("loans".into(), TableOverrides { max_rows_per_file: Some(10), ..Default::default() });
        assert_eq!(config.flush_policy("LOANS").max_rows, 10);
        assert_eq!(config.flush_policy("OTHER").max_rows, 100_000);
    }
}

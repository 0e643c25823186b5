//! The `snowgate` binary: parse the command line, load config, init tracing, run.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer as _};

use snowgate::Config;

/// jemalloc rather than the system allocator: request memory is allocated and freed on many
/// threads, and under a flood (tests/memory.rs) glibc's per-thread arenas kept about three times
/// the live heap resident, against the memory budget's promise.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Freed pages go back to the kernel soon, so that resident memory follows the budget, but not
/// at every free. Allocations of 4 MiB and more come from jemalloc's oversize arena, which
/// returns them at once. Smaller ones (rows, Arrow and Parquet buffers, most bodies) are kept for
/// reuse for up to a second, or purged sooner by a thread of their own when request memory
/// reaches three quarters of the budget or a grant is refused (at most every 100 ms,
/// `start_purging`). Returning everything at once made a third of the hot path's time page
/// faults and TLB flushes (BENCHMARKS.md). With a 256 KiB threshold, as before the budget could
/// ask for relief, scenario 1 of the load generator took 10% more CPU time and twice the page
/// faults (eighth sitting). `_RJEM_MALLOC_CONF` overrides the options it names.
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8] = b"dirty_decay_ms:1000,muzzy_decay_ms:0,oversize_threshold:4194304\0";

/// Starts the thread that purges jemalloc's freed pages, and makes waking it the memory budget's
/// relief when it runs low (`snowgate::budget::on_pressure`). Purging takes the kernel time to
/// unmap the pages (and to flush them from every core's TLB), so it runs apart from the requests.
/// A purge asked for while one is pending is one purge.
fn start_purging() -> anyhow::Result<()> {
    let (purges, asked) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("jemalloc-purge".into())
        .spawn(move || {
            while asked.recv().is_ok() {
                purge_freed_pages();
            }
        })
        .context("cannot start the allocator's purging thread")?;
    let set = snowgate::budget::on_pressure(move || {
        let _ = purges.try_send(());
    });
    anyhow::ensure!(set, "the memory budget's relief was set twice");
    Ok(())
}

/// Gives the freed pages of every arena back to the kernel now, rather than after
/// `dirty_decay_ms` (not what threads' caches hold: those are small and reused at once).
fn purge_freed_pages() {
    // MALLCTL_ARENAS_ALL: every arena at once.
    const PURGE_ALL: &std::ffi::CStr = c"arena.4096.purge";
    // SAFETY: `arena.<i>.purge` is a void control: it reads and writes no values, so null
    // pointers and a zero length are what it takes; the name is a NUL-terminated constant.
    let failed = unsafe {
        tikv_jemalloc_sys::mallctl(
            PURGE_ALL.as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        )
    };
    if failed != 0 {
        tracing::warn!(code = failed, "jemalloc could not purge its freed pages");
    }
}

#[derive(Parser)]
#[command(name = "snowgate", version, about = "HTTP ingestion gateway: partner JSON batches to the warehouse")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// TOML config file (default: snowgate.toml if present).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Address to listen on (overrides server.listen).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Folder for the embedded stage, ledger and warehouse (overrides server.data_dir).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Print the OpenAPI spec (what openapi/openapi.json holds).
    Openapi,
    /// Validate the configuration and print it with secrets hidden.
    CheckConfig {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Create, list and revoke partner API keys (in the ledger the configuration names).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Run a read-only SQL query on the embedded DuckDB warehouse (stop the gateway first).
    Sql {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The statement, e.g. 'SELECT COUNT(*) FROM LOANS'.
        query: String,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key; it is printed alone on the last line of stdout, and never shown again.
    Create {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The partner the key's batches belong to (default `operator` with --operator).
        #[arg(long)]
        partner: Option<String>,
        /// Tables the key may write, comma-separated (required for a partner key).
        #[arg(long, value_delimiter = ',')]
        tables: Vec<String>,
        /// An operator key: declares tables, manages keys, reads every batch.
        #[arg(long)]
        operator: bool,
    },
    /// List keys (never their secrets).
    List {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Revoke a key by its id; running gateways stop taking it within auth.cache_secs.
    Revoke {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        data_dir: Option<PathBuf>,
        id: String,
    },
}

fn load(config: Option<PathBuf>, data_dir: Option<PathBuf>) -> anyhow::Result<Config> {
    let mut loaded = Config::load(config.as_deref()).context("invalid configuration")?;
    if let Some(dir) = data_dir {
        loaded.server.data_dir = dir;
    }
    Ok(loaded)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Openapi => print!("{}", snowgate::openapi_json()),
        Command::CheckConfig { config } => {
            let loaded = load(config, None)?;
            println!("{}", config_text(&loaded)?);
        }
        Command::Sql { config, data_dir, query } => {
            let loaded = load(config, data_dir)?;
            let snowgate::config::WarehouseBackend::DuckDb { path } = loaded.warehouse_backend()? else {
                anyhow::bail!("snowgate sql reads the embedded DuckDB warehouse; this configuration names another");
            };
            let text = snowgate::sql_query(&path, &query).with_context(|| format!("query on {}", path.display()))?;
            println!("{text}");
        }
        Command::Keys { command } => tokio::runtime::Runtime::new()?.block_on(keys(command))?,
        Command::Serve { config, listen, data_dir } => {
            start_purging()?;
            let mut loaded = load(config, data_dir)?;
            if let Some(listen) = listen {
                loaded.server.listen = listen;
            }
            let traces = init_tracing(&loaded.log)?;
            let served = tokio::runtime::Runtime::new()?.block_on(serve(loaded));
            // Spans still batched go out before the process ends.
            if let Some(Err(e)) = traces.map(|provider| provider.shutdown()) {
                tracing::warn!(error = %e, "could not send the last spans to log.otlp_endpoint");
            }
            served?;
        }
    }
    Ok(())
}

async fn keys(command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::Create { config, data_dir, partner, tables, operator } => {
            let ledger = snowgate::open_ledger(&load(config, data_dir)?).await.context("cannot open the ledger")?;
            let partner = match partner {
                Some(name) => name.parse().map_err(|e: String| anyhow::anyhow!("--partner: {e}"))?,
                None if operator => "operator".parse().map_err(|e: String| anyhow::anyhow!(e))?,
                None => anyhow::bail!("--partner is required for a partner key (or pass --operator)"),
            };
            let tables = tables
                .iter()
                .map(|t| snowgate::schema::TableName::parse(t).map_err(|e| anyhow::anyhow!("--tables: {t:?}: {e}")))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let created = snowgate::auth::create_key(ledger.as_ref(), partner, &tables, operator).await?;
            let record = &created.record;
            let scope = if record.operator { "operator".to_string() } else { record.tables.join(",") };
            println!(
                "created key {} for partner {} ({scope}); it is shown once, on the next line",
                record.id, record.partner
            );
            println!("{}", created.token);
        }
        KeysCommand::List { config, data_dir } => {
            let ledger = snowgate::open_ledger(&load(config, data_dir)?).await.context("cannot open the ledger")?;
            let keys = ledger.list_keys().await?;
            println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "keys": keys }))?);
        }
        KeysCommand::Revoke { config, data_dir, id } => {
            let ledger = snowgate::open_ledger(&load(config, data_dir)?).await.context("cannot open the ledger")?;
            let Some(key) = ledger.revoke_key(&id).await? else { anyhow::bail!("no API key {id:?}") };
            println!("revoked key {} of partner {}", key.id, key.partner);
        }
    }
    Ok(())
}

fn config_text(config: &Config) -> anyhow::Result<String> {
    let value = serde_json::to_value(config)?;
    Ok(serde_json::to_string_pretty(&value)?)
}

/// Logs to stderr as `log.format` says, and the spans to `log.otlp_endpoint` when one is set
/// (the provider returned is shut down at exit, to send what it still holds).
fn init_tracing(log: &snowgate::config::LogConfig) -> anyhow::Result<Option<SdkTracerProvider>> {
    // `RUST_LOG` picks what is logged; the exported spans are the info-level ones whatever it says.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,tower_http=warn"));
    let provider = log.otlp_endpoint.as_deref().map(otlp_provider).transpose()?;
    let spans = provider.as_ref().map(|p| {
        let spans = tracing_opentelemetry::layer().with_tracer(p.tracer("snowgate"));
        spans.with_filter(Targets::new().with_target("snowgate", Level::INFO))
    });
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(spans);
    match log.format {
        snowgate::config::LogFormat::Text => {
            registry.with(logs.with_ansi(std::io::stderr().is_terminal()).with_filter(filter)).init()
        }
        // The event's fields at the top level, and every span it is in (the request's) under `spans`.
        snowgate::config::LogFormat::Json => {
            registry.with(logs.json().flatten_event(true).with_span_list(true).with_filter(filter)).init()
        }
    }
    Ok(provider)
}

/// Spans exported in batches, from a thread of their own, over OTLP/HTTP with protobuf.
fn otlp_provider(endpoint: &str) -> anyhow::Result<SdkTracerProvider> {
    use opentelemetry_otlp::WithExportConfig;
    let url = snowgate::config::otlp_traces_url(endpoint).context("log.otlp_endpoint: not an http(s) URL")?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(url)
        .build()
        .context("log.otlp_endpoint: cannot make the span exporter")?;
    let resource = opentelemetry_sdk::Resource::builder().with_service_name("snowgate").build();
    Ok(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build())
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.server.listen))?;
    let app = snowgate::App::build(config).await.context("cannot start")?;
    let shutdown = async {
        shutdown_signal().await;
        tracing::info!("shutting down; a second signal exits at once");
        // Exiting at once loses nothing acknowledged: a 202 is sent only after the ledger commit.
        tokio::spawn(async {
            shutdown_signal().await;
            tracing::warn!("second signal: exiting now; requests not yet answered are dropped");
            std::process::exit(130);
        });
    };
    snowgate::serve(app, listener, shutdown).await?;
    Ok(())
}

/// SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

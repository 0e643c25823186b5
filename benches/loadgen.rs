//! Load generator and benchmark: realistic partner loan records posted to a real `snowgate serve`
//! process (on its embedded backends, and with `--backends` also on Postgres and s3s-fs), beside the library limit (arrow-json decode with the table
//! schema plus a Parquet write, in-process, one thread, on the same bytes) and, when a Python
//! with pandas and duckdb is given, the seed's pandas pipeline and row-by-row inserts.
//!
//! `scripts/bench.sh` runs it in release and writes BENCHMARKS.md and a chart; `--quick` is the
//! smoke test that `scripts/test.sh` runs on the debug build (figures meaningless, counts checked).
//!
//! Every scenario checks exactly-once: the rows loaded in DuckDB equal the records accepted, and
//! `(_BATCH_ID, _RECORD_INDEX)` is unique; a mismatch ends the run with an error.
//!
//! `--backends embedded,postgres-s3` runs each scenario twice: on the embedded backends, then
//! with the production ledger and stage (a fresh schema in Postgres, an s3s-fs server of its
//! own). The warehouse stays DuckDB: the Snowflake emulator loads through Python, so its figures
//! would measure the emulator.

#[path = "../tests/common/peers.rs"]
#[allow(dead_code)]
mod peers;
#[path = "../tests/common/postgres.rs"]
#[allow(dead_code)]
mod postgres;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use clap::Parser;
use serde_json::{json, Value};

#[derive(Parser, Debug)]
struct Args {
    /// Records in scenario 1 (and 3).
    #[arg(long, default_value_t = 1_000_000)]
    records: usize,
    /// Records per POST in scenario 1.
    #[arg(long, default_value_t = 10_000)]
    batch: usize,
    /// Concurrent POSTs in scenario 1.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Partners (concurrent clients) in scenario 2; each sends batches of 100.
    #[arg(long, default_value_t = 100)]
    partners: usize,
    /// Records in scenario 2.
    #[arg(long, default_value_t = 200_000)]
    partner_records: usize,
    /// Small sizes, for the smoke test: the figures mean nothing, the checks still hold.
    #[arg(long)]
    quick: bool,
    /// A Python with pandas, pyarrow and duckdb, for the seed's baselines (skipped without).
    #[arg(long)]
    python: Option<PathBuf>,
    /// The gateway binary to run (default: this build's); to compare two builds on the same bytes.
    #[arg(long)]
    gateway: Option<PathBuf>,
    /// Which scenarios to run (the library limit and baselines always run).
    #[arg(long, value_delimiter = ',', default_values_t = [1, 2, 3])]
    scenarios: Vec<u8>,
    /// Ledger and stage of the gateway, each run in turn: `embedded` (SQLite, local folder) and
    /// `postgres-s3` (Postgres at `SGTEST_PG_URL` or 127.0.0.1:5432/test, and s3s-fs).
    #[arg(long, value_delimiter = ',', default_values_t = [Backends::Embedded])]
    backends: Vec<Backends>,
    /// Write the figures as JSON here (scripts/bench.sh turns them into BENCHMARKS.md).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.quick {
        args.records = 20_000;
        args.batch = 2_000;
        args.partners = 10;
        args.partner_records = 2_000;
    }
    let work = tempfile::tempdir()?;
    let mut results = serde_json::Map::new();
    results.insert("machine".into(), machine());
    results.insert("args".into(), json!(format!("{args:?}")));

    // The same bytes for every contender.
    let lines = records(args.records, 0.0);
    let ndjson: String = lines.iter().flat_map(|l| [l.as_str(), "\n"]).collect();
    let data = work.path().join("loans.ndjson");
    std::fs::write(&data, &ndjson)?;
    let mb = ndjson.len() as f64 / 1e6;
    println!("{} records, {:.1} MB of NDJSON ({:.0} bytes a record)", args.records, mb, mb * 1e6 / args.records as f64);
    results.insert("records".into(), json!(args.records));
    results.insert("ndjson_mb".into(), json!(mb));

    let limit = library_limit(ndjson.as_bytes())?;
    println!("library limit (arrow-json + Parquet, 1 thread): {:.0} rows/s", limit);
    results.insert("library_limit_rows_per_s".into(), json!(limit));

    // The gateway reads every body once before parsing it, to reserve memory for the parse.
    let started = Instant::now();
    let estimate = snowgate::ingest::decode::parsed_footprint(std::hint::black_box(ndjson.as_bytes()));
    let scan = mb / started.elapsed().as_secs_f64();
    println!("parse estimate, the scan before parsing: {scan:.0} MB/s ({estimate} bytes estimated for all records)");
    results.insert("parse_estimate_mb_per_s".into(), json!(scan.round()));

    if let Some(python) = &args.python {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/bench/baselines.py");
        let out = Command::new(python).arg(&script).arg(&data).output().context("running the Python baselines")?;
        ensure!(out.status.success(), "baselines failed: {}", String::from_utf8_lossy(&out.stderr));
        let baselines: Value = serde_json::from_slice(&out.stdout)?;
        println!("python baselines: {baselines}");
        results.insert("baselines".into(), baselines);
    }

    let runtime = tokio::runtime::Runtime::new()?;
    let binary = args.gateway.clone().unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_snowgate")));
    for backends in &args.backends {
        let run = |name: &str, lines: &[String], batch, clients, bad| {
            let name = format!("{name}{}", backends.suffix());
            runtime.block_on(scenario(&binary, work.path(), *backends, &name, lines, batch, clients, bad))
        };
        for n in &args.scenarios {
            let figures = match n {
                1 => run("1", &lines, args.batch, args.concurrency, None)?,
                2 => run("2", &records(args.partner_records, 0.0), 100, args.partners, None)?,
                3 => run("3", &records(args.records, 0.01), args.batch, args.concurrency, Some(0.01))?,
                other => bail!("no scenario {other}"),
            };
            println!("scenario {n}{}: {figures}", backends.suffix());
            results.insert(format!("scenario_{n}{}", backends.suffix()), figures);
        }
    }

    let results = Value::Object(results);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&results)?)?;
    }
    Ok(())
}

/// The table every scenario loads into.
fn table() -> Value {
    json!({"columns": [
        {"name": "id", "type": "NUMBER", "nullable": false},
        {"name": "partner_id", "type": "VARCHAR(32)"},
        {"name": "borrower_id", "type": "VARCHAR(32)"},
        {"name": "loan_type", "type": "VARCHAR(16)"},
        {"name": "amount", "type": "NUMBER(12,2)"},
        {"name": "currency", "type": "VARCHAR(3)"},
        {"name": "interest_rate", "type": "NUMBER(5,2)"},
        {"name": "tenure_months", "type": "NUMBER"},
        {"name": "status", "type": "VARCHAR(16)"},
        {"name": "is_first_loan", "type": "BOOLEAN"},
        {"name": "city", "type": "VARCHAR(64)"},
        {"name": "created_at", "type": "TIMESTAMP_TZ"},
        {"name": "disbursed_on", "type": "DATE"},
        {"name": "emi", "type": "NUMBER(12,2)"}
    ]})
}

/// A small deterministic generator (xorshift64*), so every run posts the same bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

/// `n` loan records as NDJSON lines. With `bad` > 0, that share of records has an amount that is
/// not a number, and every record carries a field the table does not have yet (`channel`).
fn records(n: usize, bad: f64) -> Vec<String> {
    const TYPES: [&str; 5] = ["personal", "business", "home", "education", "vehicle"];
    const STATUS: [&str; 4] = ["disbursed", "approved", "closed", "overdue"];
    const CITIES: [&str; 8] = ["Bengaluru", "Mumbai", "Delhi", "Chennai", "Hyderabad", "Pune", "Kolkata", "Ahmedabad"];
    let mut rng = Rng(0x5EED_2026_1125_0001);
    let every = if bad > 0.0 { (1.0 / bad).round() as usize } else { 0 };
    (0..n)
        .map(|i| {
            let amount = format!("{}.{:02}", 5_000 + rng.below(995_000), rng.below(100));
            let mut record = json!({
                "id": i,
                "partner_id": format!("partner-{:03}", rng.below(100)),
                "borrower_id": format!("b-{:010}", rng.below(10_000_000_000)),
                "loan_type": rng.pick(&TYPES),
                "amount": serde_json::Number::from_string_unchecked(amount),
                "currency": "INR",
                "interest_rate": serde_json::Number::from_string_unchecked(format!("{}.{:02}", 8 + rng.below(16), rng.below(100))),
                "tenure_months": 6 * (1 + rng.below(40)),
                "status": rng.pick(&STATUS),
                "is_first_loan": rng.below(2) == 0,
                "city": rng.pick(&CITIES),
                "created_at": format!("2026-11-{:02}T{:02}:{:02}:{:02}Z", 1 + rng.below(25), rng.below(24), rng.below(60), rng.below(60)),
                "disbursed_on": format!("2026-11-{:02}", 1 + rng.below(25)),
                "emi": serde_json::Number::from_string_unchecked(format!("{}.{:02}", 500 + rng.below(50_000), rng.below(100))),
            });
            if every > 0 {
                record["channel"] = json!(if i % 2 == 0 { "app" } else { "branch" });
                if i % every == every / 2 {
                    record["amount"] = json!("N/A");
                }
            }
            record.to_string()
        })
        .collect()
}

/// Rows per second of arrow-json decoding `ndjson` with the table's Arrow schema and writing it
/// as Parquet (snappy, as the gateway writes), in 10,000-row batches, on this thread.
fn library_limit(ndjson: &[u8]) -> anyhow::Result<f64> {
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("partner_id", DataType::Utf8, true),
        Field::new("borrower_id", DataType::Utf8, true),
        Field::new("loan_type", DataType::Utf8, true),
        Field::new("amount", DataType::Decimal128(12, 2), true),
        Field::new("currency", DataType::Utf8, true),
        Field::new("interest_rate", DataType::Decimal128(5, 2), true),
        Field::new("tenure_months", DataType::Int64, true),
        Field::new("status", DataType::Utf8, true),
        Field::new("is_first_loan", DataType::Boolean, true),
        Field::new("city", DataType::Utf8, true),
        Field::new("created_at", DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())), true),
        Field::new("disbursed_on", DataType::Date32, true),
        Field::new("emi", DataType::Decimal128(12, 2), true),
    ]));
    let started = Instant::now();
    let reader = arrow_json::ReaderBuilder::new(schema.clone()).with_batch_size(10_000).build(ndjson)?;
    let props = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::SNAPPY)
        .build();
    let mut out = Vec::new();
    let mut writer = parquet::arrow::ArrowWriter::try_new(&mut out, schema, Some(props))?;
    let mut rows = 0;
    for batch in reader {
        let batch = batch?;
        rows += batch.num_rows();
        writer.write(&batch)?;
    }
    writer.close()?;
    let secs = started.elapsed().as_secs_f64();
    ensure!(rows == ndjson.iter().filter(|b| **b == b'\n').count(), "arrow-json read {rows} rows");
    Ok(rows as f64 / secs)
}

/// The gateway's ledger and stage in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Backends {
    Embedded,
    PostgresS3,
}

impl std::fmt::Display for Backends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backends::Embedded => "embedded",
            Backends::PostgresS3 => "postgres-s3",
        })
    }
}

impl Backends {
    /// What the figures of a scenario on these backends are named after (`scenario_1_postgres_s3`).
    fn suffix(self) -> &'static str {
        match self {
            Backends::Embedded => "",
            Backends::PostgresS3 => "_postgres_s3",
        }
    }
}

/// The production ledger and stage of one scenario: a fresh Postgres schema and an s3s-fs
/// server of its own, both removed when dropped (also when the scenario fails).
struct ProductionPeers {
    s3: peers::S3Server,
    pg: postgres::PgSchema,
}

impl ProductionPeers {
    async fn start() -> ProductionPeers {
        ProductionPeers { s3: peers::S3Server::start(), pg: postgres::PgSchema::create().await }
    }

    /// The gateway's environment for these peers.
    fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = self.s3.gateway_env();
        env.push(("SNOWGATE_LEDGER__URL", self.pg.url.clone()));
        env
    }

    /// Checks that the run used these peers: the batches are in Postgres, the files in s3s-fs.
    async fn check(&self, posts: usize) -> anyhow::Result<()> {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&self.pg.base).await?;
        let ledger: i64 =
            sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {}.batches", self.pg.name)).fetch_one(&mut conn).await?;
        ensure!(ledger as usize == posts, "{ledger} batches in Postgres for {posts} POSTs");
        ensure!(self.s3.object_path("LOANS").is_dir(), "no files of LOANS in s3s-fs");
        Ok(())
    }
}

/// A `snowgate serve` process in its own folder; killed on drop.
struct Gateway {
    child: Child,
    base: String,
    dir: PathBuf,
}

impl Gateway {
    async fn start(binary: &Path, dir: &Path, env: &[(&str, String)]) -> anyhow::Result<Gateway> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let base = format!("http://127.0.0.1:{port}");
        let child = Command::new(binary)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
            .arg(dir)
            .env("RUST_LOG", "warn")
            .envs(env.iter().map(|(key, value)| (key, value)))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?;
        let gateway = Gateway { child, base, dir: dir.to_path_buf() };
        let client = reqwest::Client::new();
        for _ in 0..600 {
            if client.get(format!("{}/readyz", gateway.base)).send().await.is_ok_and(|r| r.status() == 200) {
                return Ok(gateway);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("the gateway did not become ready within 60 s")
    }

    /// Peak resident memory of the process so far, in MiB (`VmHWM`).
    fn peak_rss_mib(&self) -> anyhow::Result<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).context("no VmHWM")?;
        let kib: f64 = line.split_whitespace().nth(1).context("VmHWM value")?.parse()?;
        Ok(kib / 1024.0)
    }

    /// CPU time the process has used so far (user and system, all threads) in seconds, and its
    /// minor page faults, from `/proc/<pid>/stat` (times in USER_HZ, 100 a second on Linux).
    fn usage(&self) -> anyhow::Result<(f64, u64)> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))?;
        // Fields after the command name, which is in parentheses and may hold spaces.
        let fields: Vec<&str> =
            stat.rsplit_once(')').context("no command name in stat")?.1.split_whitespace().collect();
        let field = |i: usize| -> anyhow::Result<u64> { Ok(fields.get(i).context("short stat")?.parse()?) };
        Ok(((field(11)? + field(12)?) as f64 / 100.0, field(7)?))
    }

    /// SIGTERM, then a clean exit within 60 s (else it is killed and the run fails).
    fn stop(mut self) -> anyhow::Result<()> {
        Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.child.try_wait()?.is_none() {
            ensure!(Instant::now() < deadline, "the gateway did not stop within 60 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Posts `lines` in batches of `batch` with `concurrency` clients to a fresh gateway; returns
/// the figures. With `bad`, that share of records must come back rejected.
#[allow(clippy::too_many_arguments)]
async fn scenario(
    binary: &Path,
    work: &Path,
    backends: Backends,
    name: &str,
    lines: &[String],
    batch: usize,
    concurrency: usize,
    bad: Option<f64>,
) -> anyhow::Result<Value> {
    let dir = work.join(format!("scenario-{name}"));
    let peers = match backends {
        Backends::Embedded => None,
        Backends::PostgresS3 => Some(ProductionPeers::start().await),
    };
    let env = peers.as_ref().map(ProductionPeers::env).unwrap_or_default();
    let gateway = Gateway::start(binary, &dir, &env).await?;
    let client = reqwest::Client::builder().pool_max_idle_per_host(concurrency).build()?;
    let declared = client.put(format!("{}/v1/tables/loans", gateway.base)).json(&table()).send().await?;
    ensure!(declared.status() == 201, "declaring the table: {}", declared.text().await?);

    // Shared, so a POST sends its body without copying it.
    let bodies: Vec<bytes::Bytes> = lines.chunks(batch).map(|chunk| chunk.join("\n").into()).collect();
    let bytes: usize = bodies.iter().map(bytes::Bytes::len).sum();
    let bodies = Arc::new(bodies);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..concurrency {
        let (client, bodies, next, url) =
            (client.clone(), bodies.clone(), next.clone(), format!("{}/v1/tables/loans/batches", gateway.base));
        clients.push(tokio::spawn(async move {
            let mut acks = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(body) = bodies.get(i) else { return Ok::<_, anyhow::Error>(acks) };
                let sent = Instant::now();
                let response =
                    client.post(&url).header("content-type", "application/x-ndjson").body(body.clone()).send().await?;
                let latency = sent.elapsed();
                let status = response.status();
                let answer: Value = response.json().await?;
                ensure!(status == 202 || status == 200, "POST answered {status}: {answer}");
                acks.push((latency, answer));
            }
        }));
    }
    let mut acks = Vec::new();
    for client in clients {
        acks.extend(client.await??);
    }
    let acked = started.elapsed();
    let mut latencies: Vec<Duration> = acks.iter().map(|(l, _)| *l).collect();
    latencies.sort();
    let ids: Vec<String> = acks.iter().map(|(_, a)| a["id"].as_str().unwrap_or_default().to_string()).collect();
    let rejected: u64 = acks.iter().map(|(_, a)| a["counts"]["rejected"].as_u64().unwrap_or(0)).sum();
    let accepted: u64 = acks.iter().map(|(_, a)| a["counts"]["accepted"].as_u64().unwrap_or(0)).sum();

    // Loaded: no batch of the table left open. Polled after the last ack through the list
    // endpoint, one GET per open status a pass, so the figure includes up to one pass (20 ms
    // apart) and does not grow with the number of batches; every batch's own status is then
    // checked, untimed.
    let deadline = Instant::now() + Duration::from_secs(600);
    let open_url = |status: &str| format!("{}/v1/batches?table=loans&status={status}&limit=1", gateway.base);
    loop {
        ensure!(Instant::now() < deadline, "batches not final after 600 s");
        let mut any_open = false;
        for status in ["staged", "loading"] {
            let page: Value = client.get(open_url(status)).send().await?.json().await?;
            let items = page["batches"].as_array().with_context(|| format!("GET /v1/batches answered {page}"))?;
            any_open |= !items.is_empty();
        }
        if !any_open {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let loaded = started.elapsed();
    // What the gateway spent from its start to this point: the scenario, and its start-up.
    let (cpu_s, page_faults) = gateway.usage()?;
    for id in &ids {
        let batch: Value = client.get(format!("{}/v1/batches/{id}", gateway.base)).send().await?.json().await?;
        match batch["status"].as_str() {
            Some("loaded") | Some("rejected") => {}
            _ => bail!("batch {id} is not loaded once none is open: {batch}"),
        }
    }
    let peak = gateway.peak_rss_mib()?;
    let metrics = client.get(format!("{}/metrics", gateway.base)).send().await?.error_for_status()?.text().await?;
    let flushes = flush_steps(&metrics)?;
    gateway_stop_and_check(gateway, accepted)?;
    if let Some(peers) = &peers {
        peers.check(ids.len()).await?;
    }

    let n = lines.len() as u64;
    if let Some(share) = bad {
        let expected = (n as f64 * share).round() as u64;
        ensure!(rejected == expected, "scenario {name}: {rejected} rejected, expected {expected}");
    }
    ensure!(accepted + rejected == n, "scenario {name}: {accepted} + {rejected} != {n}");
    let quantile = |q: f64| latencies[((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1];
    let ms = |d: Duration| (d.as_secs_f64() * 1e4).round() / 10.0;
    Ok(json!({
        "records": n,
        "posts": ids.len(),
        "batch": batch,
        "concurrency": concurrency,
        "accepted": accepted,
        "rejected": rejected,
        "ack_records_per_s": (n as f64 / acked.as_secs_f64()).round(),
        "ack_mb_per_s": (bytes as f64 / 1e6 / acked.as_secs_f64() * 10.0).round() / 10.0,
        "end_to_end_records_per_s": (n as f64 / loaded.as_secs_f64()).round(),
        "first_post_to_all_loaded_s": (loaded.as_secs_f64() * 100.0).round() / 100.0,
        "ack_latency_ms": {"p50": ms(quantile(0.5)), "p99": ms(quantile(0.99)), "max": ms(quantile(1.0))},
        "peak_rss_mib": peak.round(),
        "gateway_cpu_s": (cpu_s * 100.0).round() / 100.0,
        "gateway_page_faults": page_faults,
        "flushes": flushes,
    }))
}

/// Where a POST's wait for durability went, from the gateway's own histograms: the number of
/// files written, and the mean milliseconds of each step of a flush (encode, stage write, ledger
/// commit; the commit mean also counts batches without accepted rows, which have no file).
fn flush_steps(metrics: &str) -> anyhow::Result<Value> {
    let sample = |name: &str| -> anyhow::Result<f64> {
        let line = metrics
            .lines()
            .find(|line| line.split_whitespace().next() == Some(name))
            .with_context(|| format!("no {name} in /metrics"))?;
        Ok(line.split_whitespace().nth(1).context("no value")?.parse()?)
    };
    let mut steps = serde_json::Map::new();
    for (step, histogram) in [
        ("encode", "snowgate_flush_encode_duration_seconds"),
        ("stage_put", "snowgate_stage_put_duration_seconds"),
        ("commit", "snowgate_ledger_commit_duration_seconds"),
    ] {
        let count = sample(&format!("{histogram}_count"))?;
        let mean_ms = if count > 0.0 {
            json!((sample(&format!("{histogram}_sum"))? / count * 1e4).round() / 10.0)
        } else {
            Value::Null
        };
        steps.insert(format!("{step}_mean_ms"), mean_ms);
        if step == "stage_put" {
            steps.insert("files".into(), json!(count));
        }
    }
    Ok(Value::Object(steps))
}

/// Stops the gateway (a clean shutdown) and checks in its DuckDB file that every accepted record
/// is there exactly once.
fn gateway_stop_and_check(gateway: Gateway, accepted: u64) -> anyhow::Result<()> {
    let dir = gateway.dir.clone();
    gateway.stop()?;
    let conn = duckdb::Connection::open(dir.join("warehouse.duckdb"))?;
    let (rows, distinct): (i64, i64) =
        conn.query_row("SELECT COUNT(*), COUNT(DISTINCT (_BATCH_ID, _RECORD_INDEX)) FROM LOANS", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    ensure!(rows as u64 == accepted && distinct == rows, "{rows} rows ({distinct} distinct) for {accepted} accepted");
    Ok(())
}

/// What the figures were measured on.
fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next().map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_string()))
        .and_then(|kib| kib.parse::<f64>().ok())
        .map(|kib| kib / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    let _ = std::io::stdout().flush();
    json!({"cpu": cpu, "cores": cores, "memory_gib": (mem * 10.0).round() / 10.0, "profile": if cfg!(debug_assertions) { "debug" } else { "release" }})
}

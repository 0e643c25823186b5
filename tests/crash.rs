//! Crash safety, one crash point at a time. A gateway built with `fault-injection` aborts where
//! `SNOWGATE_CRASH_AT` says (`src/fault.rs`): no destructor, no flush, no commit, as `kill -9`.
//! A restarted gateway on the same data folder must then load every acknowledged record exactly
//! once and within seconds, load nothing of a request it never acknowledged, and leave no stage
//! file the ledger does not know. Each point runs on the embedded backends (SQLite, local
//! folder, DuckDB) and on the production ones (Postgres, s3s-fs, fakesnow).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::production::Peers;
use common::Process;
use serde_json::{json, Value};
use snowgate::fault::CrashPoint;

/// Batches posted per test, one after another.
const BATCHES: usize = 6;
/// Good records per batch; each batch also carries one bad record.
const GOOD: usize = 40;
/// How soon after a restart every acknowledged batch must be loaded.
const RESUME_WITHIN: Duration = Duration::from_secs(30);

enum Stack {
    Embedded(tempfile::TempDir),
    Production(Box<Peers>),
}

impl Stack {
    async fn start(production: bool) -> Stack {
        if production {
            Stack::Production(Box::new(Peers::start().await))
        } else {
            Stack::Embedded(tempfile::tempdir().unwrap())
        }
    }

    /// The gateway's data folder: the same for every incarnation, so a restart keeps its
    /// replica id.
    fn data_dir(&self) -> PathBuf {
        match self {
            Stack::Embedded(dir) => dir.path().to_path_buf(),
            Stack::Production(peers) => peers.dir.path().join("gateway"),
        }
    }

    /// A gateway process on this stack. Leases are long, so that a prompt load after a restart
    /// proves the restarted process took its claims back rather than waiting them out.
    async fn gateway(&self, loader: bool, crash_at: Option<String>) -> Process {
        self.replica(&self.data_dir(), loader, crash_at, &[]).await
    }

    /// A gateway after a crash: it sweeps the stage for files older than a second (only a
    /// gateway that does not ingest may sweep that eagerly).
    async fn recovery(&self, data_dir: &Path, env: &[(&str, &str)]) -> Process {
        let env: Vec<_> = env.iter().copied().chain([("SNOWGATE_LOADER__ORPHAN_AFTER_SECS", "1")]).collect();
        self.replica(data_dir, true, None, &env).await
    }

    /// A gateway process on `data_dir` (which holds its replica id), with more environment.
    async fn replica(&self, data_dir: &Path, loader: bool, crash_at: Option<String>, env: &[(&str, &str)]) -> Process {
        let (mut command, base) = common::gateway_command(data_dir);
        if let Stack::Production(peers) = self {
            peers.process_env(&mut command);
        }
        command.env("SNOWGATE_LOADER__ENABLED", loader.to_string()).env("SNOWGATE_LOADER__LEASE_SECS", "300");
        if let Some(point) = crash_at {
            command.env("SNOWGATE_CRASH_AT", point);
        }
        command.envs(env.iter().copied());
        Process::start(command, base).await
    }

    /// Parquet files in the stage, relative to it (as the ledger names them).
    fn stage_files(&self) -> BTreeSet<String> {
        let root = match self {
            Stack::Embedded(dir) => dir.path().join("stage"),
            Stack::Production(peers) => peers.s3.root.join(&peers.s3.bucket).join(&peers.s3.prefix),
        };
        let mut found = BTreeSet::new();
        walk(&root, &root, &mut found);
        found
    }

    /// Per `_BATCH_ID`: rows, distinct record indexes, SUM(amount). The gateway must be stopped
    /// for DuckDB.
    async fn warehouse_batches(&self) -> BTreeMap<String, (u64, u64, f64)> {
        let rows = match self {
            Stack::Embedded(dir) => common::duckdb_query(
                dir.path(),
                "SELECT CAST(_BATCH_ID AS VARCHAR), CAST(COUNT(*) AS VARCHAR),
                     CAST(COUNT(DISTINCT _RECORD_INDEX) AS VARCHAR), CAST(SUM(amount) AS VARCHAR)
                 FROM loans GROUP BY 1",
            ),
            Stack::Production(peers) => {
                let sql = "SELECT \"_BATCH_ID\", COUNT(*), COUNT(DISTINCT \"_RECORD_INDEX\"), SUM(AMOUNT) FROM LOANS GROUP BY 1";
                peers.warehouse().query(sql).await.unwrap().rows
            }
        };
        rows.into_iter()
            .map(|row| {
                let text = |i: usize| row[i].clone().unwrap_or_default();
                (text(0), (text(1).parse().unwrap(), text(2).parse().unwrap(), text(3).parse().unwrap()))
            })
            .collect()
    }
}

fn walk(root: &Path, dir: &Path, found: &mut BTreeSet<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            walk(root, &path, found);
        } else if path.extension().is_some_and(|e| e == "parquet") {
            found.insert(path.strip_prefix(root).unwrap().to_string_lossy().into_owned());
        }
    }
}

/// Batch `b`: GOOD loans with amounts 1..=GOOD and one record with a null id.
fn records(b: usize) -> Value {
    let mut records: Vec<Value> = (0..GOOD).map(|i| json!({"id": b * 1000 + i, "amount": i + 1})).collect();
    records.insert(GOOD / 2, json!({"id": null, "amount": 1}));
    json!(records)
}

fn good_sum() -> f64 {
    (1..=GOOD).sum::<usize>() as f64
}

/// Posts the batches one after another until the gateway stops answering; returns the ids of
/// the acknowledged ones. Every answer is a 202 or no answer at all.
async fn post_until_down(base: &str) -> Vec<String> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    let mut acked = Vec::new();
    for b in 0..BATCHES {
        match client.post(format!("{base}/v1/tables/loans/batches")).json(&records(b)).send().await {
            Ok(response) => {
                assert_eq!(response.status(), 202, "batch {b}");
                let body: Value = response.json().await.unwrap();
                assert_eq!(body["counts"], json!({"received": GOOD + 1, "accepted": GOOD, "rejected": 1, "loaded": 0}));
                acked.push(body["id"].as_str().unwrap().to_string());
            }
            Err(e) => {
                assert!(!e.is_status(), "{e}");
                break;
            }
        }
    }
    acked
}

async fn declare(base: &str) {
    let response = reqwest::Client::new()
        .put(format!("{base}/v1/tables/loans"))
        .json(&json!({"columns": [{"name": "id", "type": "NUMBER", "nullable": false}, {"name": "amount", "type": "NUMBER(12,2)"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
}

/// Restarts, and checks that the acknowledged batches, and only they, load exactly once, soon,
/// and that the stage holds exactly the files the ledger knows.
async fn recover_and_reconcile(stack: &Stack, acked: &[String]) {
    let started = Instant::now();
    let gateway = stack.recovery(&stack.data_dir(), &[]).await;
    reconcile(stack, gateway, acked, started + RESUME_WITHIN, None).await;
}

/// Checks, through `gateway`, that the acknowledged batches, and only they, are loaded exactly
/// once by `deadline`, and that the stage holds exactly the files the ledger knows. `refused`
/// names the good record the warehouse refuses in every batch, if it refuses one.
async fn reconcile(stack: &Stack, gateway: Process, acked: &[String], deadline: Instant, refused: Option<usize>) {
    let client = reqwest::Client::new();
    let mut ledger_files = BTreeSet::new();
    let refused_rows = usize::from(refused.is_some());
    for id in acked {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let batch = common::wait_final(&client, &gateway.base, id, remaining).await;
        assert_eq!(batch["status"], "loaded", "{batch}");
        let counts = json!({"received": GOOD + 1, "accepted": GOOD, "rejected": 1 + refused_rows,
            "loaded": GOOD - refused_rows});
        assert_eq!(batch["counts"], counts, "{batch}");
        for file in batch["files"].as_array().unwrap() {
            ledger_files.insert(file["path"].as_str().unwrap().to_string());
        }
        if let Some(index) = refused {
            let url = format!("{}/v1/batches/{id}/rejects", gateway.base);
            let page: Value = client.get(url).send().await.unwrap().json().await.unwrap();
            let warehouse: Vec<u64> = page["rejects"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|r| r["stage"] == "warehouse")
                .map(|r| r["index"].as_u64().unwrap())
                .collect();
            assert_eq!(warehouse, [index as u64], "the refused row is a reject once: {page}");
        }
    }
    let listed: Value = client
        .get(format!("{}/v1/batches?table=loans&limit=1000", gateway.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let known: BTreeSet<&str> =
        listed["batches"].as_array().unwrap().iter().map(|b| b["id"].as_str().unwrap()).collect();
    let expected: BTreeSet<&str> = acked.iter().map(String::as_str).collect();
    assert_eq!(known, expected, "the ledger holds the acknowledged batches and nothing of the crashed request");

    // The sweeper removes what a crash left in the stage without a ledger record.
    let deadline = Instant::now() + Duration::from_secs(20);
    while stack.stage_files() != ledger_files {
        assert!(Instant::now() < deadline, "stage {:?} != ledger {ledger_files:?}", stack.stage_files());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    gateway.terminate();

    let loaded = stack.warehouse_batches().await;
    let in_warehouse: BTreeSet<&str> = loaded.keys().map(String::as_str).collect();
    assert_eq!(in_warehouse, expected, "rows of exactly the acknowledged batches");
    let good = (GOOD - refused_rows) as u64;
    let sum = good_sum() - refused.map_or(0.0, |i| (i + 1) as f64);
    for (id, (rows, distinct, loaded_sum)) in &loaded {
        assert_eq!((*rows, *distinct), (good, good), "batch {id} loaded exactly once");
        assert!((loaded_sum - sum).abs() < 1e-9, "batch {id}: SUM(amount) {loaded_sum}, expected {sum}");
    }
}

/// A crash while a request is handled: requests before it were acknowledged, the crashed one
/// was not (and must leave nothing behind but, at most, an orphan stage file).
async fn crash_in_request(point: CrashPoint, production: bool) {
    let stack = Stack::start(production).await;
    // The third time the point is reached: two requests are acknowledged first.
    let gateway = stack.gateway(true, Some(format!("{}:3", point.name()))).await;
    declare(&gateway.base).await;
    let acked = post_until_down(&gateway.base).await;
    gateway.crashed().await;
    assert_eq!(acked.len(), 2, "two batches were acknowledged before the crash");
    let orphans = usize::from(matches!(point, CrashPoint::StagedBeforeCommit | CrashPoint::DuringCommit));
    assert_eq!(stack.stage_files().len(), acked.len() + orphans, "the crashed request's file is in the stage or not");
    recover_and_reconcile(&stack, &acked).await;
}

/// A crash while loading: every batch was acknowledged by a gateway without a loader, then a
/// loader dies mid-load.
async fn crash_in_load(point: CrashPoint, production: bool) {
    let stack = Stack::start(production).await;
    let ingest = stack.gateway(false, None).await;
    declare(&ingest.base).await;
    let acked = post_until_down(&ingest.base).await;
    assert_eq!(acked.len(), BATCHES);
    ingest.terminate();
    let loader = stack.gateway(true, Some(point.name().to_string())).await;
    loader.crashed().await;
    recover_and_reconcile(&stack, &acked).await;
}

/// A crash as a graceful shutdown begins, with the rows of a request still buffered: every batch
/// but that one filled its own file and was acknowledged; it waits for a ten-minute linger, and
/// is lost unacknowledged.
async fn crash_in_shutdown(production: bool) {
    let stack = Stack::start(production).await;
    let rows = GOOD.to_string();
    let files_of_one_batch =
        [("SNOWGATE_DEFAULTS__LINGER_MS", "600000"), ("SNOWGATE_DEFAULTS__MAX_ROWS_PER_FILE", &rows)];
    let crash = Some(CrashPoint::Shutdown.name().to_string());
    let gateway = stack.replica(&stack.data_dir(), false, crash, &files_of_one_batch).await;
    declare(&gateway.base).await;
    let acked = post_until_down(&gateway.base).await;
    assert_eq!(acked.len(), BATCHES);
    let url = format!("{}/v1/tables/loans/batches", gateway.base);
    let waiting =
        tokio::spawn(
            async move { reqwest::Client::new().post(url).json(&json!([{"id": 1, "amount": 1}])).send().await },
        );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "the last request waits for its linger");
    gateway.signal("-TERM");
    gateway.crashed().await;
    assert!(waiting.await.unwrap().is_err(), "never acknowledged");
    recover_and_reconcile(&stack, &acked).await;
}

/// A replica that dies for good mid-load: another one, with its own replica id, takes its files
/// over once their lease (5 s here, `loader.lease_secs`) expires. Production backends only: on
/// the embedded ones a second data folder is a second ledger and warehouse.
async fn another_replica_takes_over(production: bool) {
    let stack = Stack::start(production).await;
    let ingest = stack.gateway(false, None).await;
    declare(&ingest.base).await;
    let acked = post_until_down(&ingest.base).await;
    ingest.terminate();
    let lease = [("SNOWGATE_LOADER__LEASE_SECS", "5")];
    let dead = stack.replica(&stack.data_dir(), true, Some(CrashPoint::DuringCopy.name().to_string()), &lease).await;
    dead.crashed().await;
    let crashed_at = Instant::now();
    let other = stack.recovery(&stack.data_dir().with_extension("other"), &lease).await;
    reconcile(&stack, other, &acked, crashed_at + Duration::from_secs(20), None).await;
}

/// The good record of every batch that the warehouse refuses once it changes behind the
/// gateway's back (its id ends in 007; it precedes the batch's bad record, so its index is 7).
const REFUSED: usize = 7;

/// A crash in the middle of isolating the rows the warehouse refuses (`crash_at` names the
/// point and the how-manieth time): every batch was acknowledged, then the DuckDB table gained a
/// CHECK that refuses one good row per batch, then a loader dies mid-bisection. After a restart
/// each refused row is a reject exactly once and every other row is loaded exactly once.
async fn crash_in_isolation(crash_at: &str) {
    let stack = Stack::start(false).await;
    let ingest = stack.gateway(false, None).await;
    declare(&ingest.base).await;
    let acked = post_until_down(&ingest.base).await;
    assert_eq!(acked.len(), BATCHES);
    ingest.terminate();
    let warehouse = duckdb::Connection::open(stack.data_dir().join("warehouse.duckdb")).unwrap();
    warehouse
        .execute_batch(&format!(
            "DROP TABLE LOANS;
             CREATE TABLE LOANS (ID DECIMAL(38,0) NOT NULL CHECK (ID % 1000 <> {REFUSED}), AMOUNT DECIMAL(12,2),
                 _BATCH_ID VARCHAR NOT NULL, _RECORD_INDEX BIGINT NOT NULL, _INGESTED_AT TIMESTAMPTZ NOT NULL)"
        ))
        .unwrap();
    drop(warehouse);
    let loader = stack.gateway(true, Some(crash_at.to_string())).await;
    loader.crashed().await;
    let started = Instant::now();
    let gateway = stack.recovery(&stack.data_dir(), &[]).await;
    reconcile(&stack, gateway, &acked, started + RESUME_WITHIN, Some(REFUSED)).await;
}

macro_rules! crash_tests {
    ($($name:ident: $run:expr;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            $run.await
        }
    )*};
}

crash_tests! {
    embedded_receiving: crash_in_request(CrashPoint::Receiving, false);
    embedded_validating: crash_in_request(CrashPoint::Validating, false);
    embedded_staged_before_commit: crash_in_request(CrashPoint::StagedBeforeCommit, false);
    embedded_during_commit: crash_in_request(CrashPoint::DuringCommit, false);
    embedded_during_copy: crash_in_load(CrashPoint::DuringCopy, false);
    embedded_after_copy: crash_in_load(CrashPoint::AfterCopy, false);
    embedded_shutdown: crash_in_shutdown(false);
    // The first COPY that succeeds is a part's, mid-bisection.
    embedded_during_a_part_copy: crash_in_isolation("during_copy:1");
    embedded_parts_staged: crash_in_isolation("parts_staged:2");
    embedded_during_split: crash_in_isolation("during_split:2");
    production_receiving: crash_in_request(CrashPoint::Receiving, true);
    production_validating: crash_in_request(CrashPoint::Validating, true);
    production_staged_before_commit: crash_in_request(CrashPoint::StagedBeforeCommit, true);
    production_during_commit: crash_in_request(CrashPoint::DuringCommit, true);
    production_during_copy: crash_in_load(CrashPoint::DuringCopy, true);
    production_after_copy: crash_in_load(CrashPoint::AfterCopy, true);
    production_shutdown: crash_in_shutdown(true);
    production_takeover_by_another_replica: another_replica_takes_over(true);
}

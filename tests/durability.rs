//! Group commit under concurrency, and recovery after `kill -9` of a real gateway process.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{duckdb_count, loan, spawn_app, Process};
use serde_json::{json, Value};

#[tokio::test]
async fn hundred_concurrent_posts_share_files_and_load_once() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app(dir.path()).await;
    app.declare_loans().await;
    let mut tasks = Vec::new();
    for request in 0..100 {
        let client = app.client.clone();
        let url = app.url("/v1/tables/loans/batches");
        tasks.push(tokio::spawn(async move {
            let records: Vec<Value> = (0..100).map(|i| loan(request * 100 + i)).collect();
            let response = client.post(url).json(&records).send().await.unwrap();
            assert_eq!(response.status(), 202);
            let batch: Value = response.json().await.unwrap();
            assert_eq!(batch["counts"]["accepted"], 100);
            batch["id"].as_str().unwrap().to_string()
        }));
    }
    let mut ids = Vec::new();
    for task in tasks {
        ids.push(task.await.unwrap());
    }
    let mut files = BTreeSet::new();
    for id in &ids {
        let batch = app.wait_final(id, Duration::from_secs(60)).await;
        assert_eq!(batch["status"], "loaded", "{batch}");
        assert_eq!(batch["counts"]["loaded"], 100);
        for file in batch["files"].as_array().unwrap() {
            files.insert(file["path"].as_str().unwrap().to_string());
        }
    }
    assert!(files.len() <= 25, "100 requests went into {} files; group commit should share them", files.len());
    app.shutdown().await;
    assert_eq!(duckdb_count(dir.path(), "SELECT COUNT(*) FROM loans"), 10_000);
    assert_eq!(duckdb_count(dir.path(), "SELECT COUNT(DISTINCT id) FROM loans"), 10_000);
    assert_eq!(duckdb_count(dir.path(), "SELECT COUNT(DISTINCT (_BATCH_ID, _RECORD_INDEX)) FROM loans"), 10_000);
}

#[tokio::test]
async fn large_posts_split_into_several_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::test_config(dir.path());
    config.defaults.max_rows_per_file = 1_000;
    let app = common::spawn_app_with(config).await;
    app.declare_loans().await;
    let lines: Vec<String> = (0..4_500).map(|i| loan(i).to_string()).collect();
    let response = app.post_ndjson("loans", "?wait=loaded", lines.join("\n")).await;
    assert_eq!(response.status(), 200);
    let batch: Value = response.json().await.unwrap();
    assert_eq!(batch["status"], "loaded", "{batch}");
    let files = batch["files"].as_array().unwrap();
    assert_eq!(files.len(), 5);
    assert!(files.iter().all(|f| f["rows"].as_u64().unwrap() <= 1_000 && f["status"] == "loaded"));
    app.shutdown().await;
    assert_eq!(duckdb_count(dir.path(), "SELECT COUNT(*) FROM loans"), 4_500);
}

async fn start_process(dir: &Path, loader: bool) -> Process {
    let (mut command, base) = common::gateway_command(dir);
    command
        .env("SNOWGATE_LOADER__ENABLED", loader.to_string())
        // What a Kubernetes Service named snowgate injects: not configuration, must be ignored.
        .env("SNOWGATE_PORT", "tcp://10.0.0.1:8080")
        .current_dir(dir);
    Process::start(command, base).await
}

#[tokio::test]
async fn kill_9_after_202_then_restart_loads_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let gateway = start_process(dir.path(), false).await;
    let response = client
        .put(format!("{}/v1/tables/loans", gateway.base))
        .json(&json!({"columns": [{"name": "id", "type": "NUMBER", "nullable": false}, {"name": "amount", "type": "NUMBER(12,2)"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let records: Vec<Value> = (0..500).map(|i| json!({"id": i, "amount": i})).collect();
    let response =
        client.post(format!("{}/v1/tables/loans/batches", gateway.base)).json(&records).send().await.unwrap();
    assert_eq!(response.status(), 202);
    let batch: Value = response.json().await.unwrap();
    assert_eq!(batch["status"], "staged");
    let id = batch["id"].as_str().unwrap().to_string();
    gateway.kill_9();

    let gateway = start_process(dir.path(), true).await;
    let status = common::wait_final(&client, &gateway.base, &id, Duration::from_secs(30)).await;
    assert_eq!(status["status"], "loaded", "{status}");
    assert_eq!(status["counts"]["loaded"], 500);
    gateway.terminate();

    // A third start finds nothing left to load and loads nothing twice.
    let gateway = start_process(dir.path(), true).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    gateway.terminate();
    assert_eq!(duckdb_count(dir.path(), "SELECT COUNT(*) FROM loans"), 500);
    assert_eq!(duckdb_count(dir.path(), "SELECT COUNT(DISTINCT (_BATCH_ID, _RECORD_INDEX)) FROM loans"), 500);
    assert_eq!(duckdb_count(dir.path(), "SELECT CAST(SUM(amount) AS BIGINT) FROM loans"), (0..500).sum::<i64>());
}

/// SIGTERM flushes buffered rows at once, so a request waiting for its linger is answered within
/// the grace period; a second SIGTERM exits at once (130), and what was acknowledged still loads.
#[tokio::test]
async fn sigterm_answers_waiting_requests_and_a_second_signal_exits_at_once() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let (mut command, base) = common::gateway_command(dir.path());
    command.env("SNOWGATE_LOADER__ENABLED", "false").env("SNOWGATE_DEFAULTS__LINGER_MS", "600000");
    let mut child = common::start_gateway(command, &base).await;
    common::declare_ids(&base, "loans").await;

    // A client that sends half a body and stalls keeps the shutdown waiting for its grace period.
    let mut stalled = std::net::TcpStream::connect(base.trim_start_matches("http://")).unwrap();
    stalled
        .write_all(b"POST /v1/tables/loans/batches HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n[{\"id\": 1}")
        .unwrap();
    // A request waiting for its linger (ten minutes).
    let client = reqwest::Client::new();
    let url = format!("{base}/v1/tables/loans/batches");
    let waiting = tokio::spawn(async move { client.post(url).json(&json!([{"id": 7}, {"id": 8}])).send().await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "the request waits for its linger");

    let pid = child.id().to_string();
    let sigterm = || assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    sigterm();
    let response =
        tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("answered at shutdown").unwrap().unwrap();
    assert_eq!(response.status(), 202);
    let id = response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    assert!(child.try_wait().unwrap().is_none(), "still draining the stalled request");

    sigterm();
    let started = std::time::Instant::now();
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "a second signal exits at once");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(exit.code(), Some(130));
    drop(stalled);

    let gateway = start_process(dir.path(), true).await;
    let batch = common::wait_final(&reqwest::Client::new(), &gateway.base, &id, Duration::from_secs(30)).await;
    assert_eq!((batch["status"].as_str(), batch["counts"]["loaded"].as_u64()), (Some("loaded"), Some(2)), "{batch}");
    gateway.terminate();
    assert_eq!(duckdb_count(dir.path(), "SELECT COUNT(*) FROM loans"), 2);
}

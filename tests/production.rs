//! The gateway on its production backends, each a real server on loopback: Postgres ledger,
//! S3 stage (s3s-fs), Snowflake warehouse (fakesnow behind the response shim).

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use common::production::{one_number, Peers};
use common::{loan, spawn_app_with};
use serde_json::{json, Value};

#[tokio::test]
async fn post_to_loaded_on_postgres_s3_and_snowflake() {
    let peers = Peers::start().await;
    let app = spawn_app_with(peers.config(&peers.dir.path().join("gateway"))).await;
    app.declare_loans().await;
    let (status, ready) = app.get_json("/readyz").await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["checks"]["ledger (postgres)"], "ok");
    assert_eq!(ready["checks"]["warehouse (snowflake)"], "ok");

    let mut records: Vec<Value> = (0..2_000).map(loan).collect();
    records[7]["amount"] = json!("not a number");
    let response = app.post_json("loans", &json!(records)).await;
    assert_eq!(response.status(), 202);
    let batch: Value = response.json().await.unwrap();
    assert_eq!(batch["counts"], json!({"received": 2000, "accepted": 1999, "rejected": 1, "loaded": 0}));
    let id = batch["id"].as_str().unwrap().to_string();
    let done = app.wait_final(&id, Duration::from_secs(120)).await;
    assert_eq!(done["status"], "loaded", "{done}");
    assert_eq!(done["counts"]["loaded"], 1999);
    let file = &done["files"][0];
    assert!(file["query_id"].as_str().is_some_and(|q| !q.is_empty()), "{done}");
    // The file went through the S3 API and sits where s3s-fs keeps objects.
    assert!(peers.s3.object_path(file["path"].as_str().unwrap()).exists());

    // The reject is a line of an object in S3 beside the file, read back by a ranged GET.
    let (status, page) = app.get_json(&format!("/v1/batches/{id}/rejects")).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["rejects"][0]["index"], 7, "{page}");
    assert_eq!(page["rejects"][0]["record"]["amount"], "not a number", "{page}");
    let received: chrono::DateTime<chrono::Utc> = done["received_at"].as_str().unwrap().parse().unwrap();
    let object = peers.s3.object_path(&format!("LOANS/{}/{id}.rejects.ndjson", received.format("%Y/%m/%d")));
    let line: Value = serde_json::from_str(std::fs::read_to_string(&object).unwrap().trim_end()).unwrap();
    assert_eq!(line, page["rejects"][0]);

    let warehouse = peers.warehouse();
    assert_eq!(one_number(&warehouse, "SELECT COUNT(*) FROM LOANS").await, "1999");
    let expected: f64 = (0..2_000).filter(|i| *i != 7).map(|i| (100 + i) as f64 + (i % 100) as f64 / 100.0).sum();
    let sum: f64 = one_number(&warehouse, "SELECT SUM(AMOUNT) FROM LOANS").await.parse().unwrap();
    assert!((sum - expected).abs() < 0.001, "sum {sum} != {expected}");
    let distinct = "SELECT COUNT(*) FROM (SELECT DISTINCT \"_BATCH_ID\", \"_RECORD_INDEX\" FROM LOANS)";
    assert_eq!(one_number(&warehouse, distinct).await, "1999");

    // Numbers land exactly however long they are: parsed from their text, never a double. (On
    // fakesnow a NUMBER(38,0) column is a 64-bit BIGINT, so 38 integer digits are tried on
    // DuckDB, in tests/api.rs; here an integer just past 64 bits, in a NUMBER(30,0).)
    let response = app
        .put_table(
            "exact",
            json!({"columns": [{"name": "id", "type": "NUMBER(30,0)"}, {"name": "amount", "type": "NUMBER(38,10)"}]}),
        )
        .await;
    assert_eq!(response.status(), 201);
    let body = format!("[{{\"id\": 18446744073709551617, \"amount\": {EXACT_AMOUNT}}}]");
    let response = app
        .client
        .post(app.url("/v1/tables/exact/batches?wait=loaded"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let batch: Value = response.json().await.unwrap();
    assert_eq!(batch["status"], "loaded", "{batch}");
    assert_eq!(batch["counts"]["loaded"], 1, "{batch}");
    assert_eq!(one_number(&warehouse, "SELECT CAST(ID AS VARCHAR) FROM EXACT").await, "18446744073709551617");
    assert_eq!(one_number(&warehouse, "SELECT CAST(AMOUNT AS VARCHAR) FROM EXACT").await, EXACT_AMOUNT);
    app.shutdown().await;
}

/// 28 digits before the point and 10 after: a double keeps about 16 of them.
const EXACT_AMOUNT: &str = "1234567890123456789012345678.0123456789";

#[tokio::test]
async fn readiness_and_posts_report_unreachable_backends() {
    let mut peers = Peers::start().await;
    let app = spawn_app_with(peers.config(&peers.dir.path().join("gateway"))).await;
    app.declare_loans().await;

    peers.fakesnow.stop();
    // The warehouse being away does not stop ingestion: records are staged and load later, so
    // the gateway stays ready (a load balancer keeps sending) and reports the warehouse.
    let (status, body) = app.get_json("/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert_ne!(body["checks"]["warehouse (snowflake)"], "ok", "{body}");
    assert_eq!(body["checks"]["stage"], "ok");
    let response = app.post_json("loans", &json!([loan(1)])).await;
    assert_eq!(response.status(), 202);

    peers.s3.stop();
    let (status, body) = app.get_json("/readyz").await;
    assert_eq!(status, 503);
    assert_eq!(body["error"]["code"], "not_ready");
    assert!(body["error"]["message"].as_str().unwrap().contains("stage"), "{body}");
    assert!(!body["error"]["message"].as_str().unwrap().contains("warehouse"), "{body}");
    let response = app.post_json("loans", &json!([loan(2)])).await;
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "stage_unavailable");
    app.shutdown().await;
}

/// A gateway process configured through environment variables only.
struct Gateway {
    child: Child,
    base: String,
}

impl Gateway {
    async fn start(peers: &Peers, data_dir: &Path) -> Gateway {
        let (mut command, base) = common::gateway_command(data_dir);
        peers.process_env(&mut command);
        command.env("SNOWGATE_LOADER__MAX_FILES_PER_COPY", "4");
        let child = common::start_gateway(command, &base).await;
        Gateway { child, base }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_gateway_processes_load_every_record_exactly_once() {
    let peers = Peers::start().await;
    let first = Gateway::start(&peers, &peers.dir.path().join("one")).await;
    let second = Gateway::start(&peers, &peers.dir.path().join("two")).await;
    let client = reqwest::Client::new();
    let declared = client
        .put(format!("{}/v1/tables/loans", first.base))
        .json(&json!({"columns": [{"name": "id", "type": "NUMBER", "nullable": false}, {"name": "amount", "type": "NUMBER(12,2)"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(declared.status(), 201);

    let mut posts = Vec::new();
    for request in 0..24 {
        let base = if request % 2 == 0 { first.base.clone() } else { second.base.clone() };
        let client = client.clone();
        posts.push(tokio::spawn(async move {
            let records: Vec<Value> = (0..150).map(|i| json!({"id": request * 1000 + i, "amount": i})).collect();
            let response = client.post(format!("{base}/v1/tables/loans/batches")).json(&records).send().await.unwrap();
            assert_eq!(response.status(), 202);
            response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string()
        }));
    }
    let mut ids = BTreeSet::new();
    for post in posts {
        ids.insert(post.await.unwrap());
    }
    for id in &ids {
        let batch = common::wait_final(&client, &second.base, id, Duration::from_secs(60)).await;
        assert_eq!(batch["status"], "loaded", "{batch}");
        assert_eq!(batch["counts"]["loaded"], 150);
    }
    drop(first);
    drop(second);

    let warehouse = peers.warehouse();
    assert_eq!(one_number(&warehouse, "SELECT COUNT(*) FROM LOANS").await, (24 * 150).to_string());
    let distinct = "SELECT COUNT(*) FROM (SELECT DISTINCT \"_BATCH_ID\", \"_RECORD_INDEX\" FROM LOANS)";
    assert_eq!(one_number(&warehouse, distinct).await, (24 * 150).to_string());
    assert_eq!(one_number(&warehouse, "SELECT COUNT(DISTINCT ID) FROM LOANS").await, (24 * 150).to_string());
    assert_eq!(one_number(&warehouse, "SELECT COUNT(DISTINCT \"_BATCH_ID\") FROM LOANS").await, "24");
}

/// A COPY from a stage that does not exist yet (Snowflake code 002003) is a configuration
/// error: the files stay claimable, the error shows in `/readyz` and on the batch, nothing is
/// failed, and the load goes through once an admin creates the stage.
#[tokio::test]
async fn a_missing_snowflake_stage_holds_files_back_until_it_exists() {
    let peers = Peers::start().await;
    let mut config = peers.config(&peers.dir.path().join("gateway"));
    let mut later = peers.snowflake.clone();
    later.stage = "CREATED_LATER".into();
    config.warehouse.snowflake = Some(later.clone());
    config.loader.configuration_retry = Duration::from_secs(1);
    let app = spawn_app_with(config).await;
    app.declare_loans().await;
    let response = app.post_json("loans", &json!((0..10).map(loan).collect::<Vec<_>>())).await;
    assert_eq!(response.status(), 202);
    let id = response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();

    let mut seen = None;
    for _ in 0..100 {
        let (status, ready) = app.get_json("/readyz").await;
        assert_eq!(status, 200, "a configuration error does not make the gateway unready: {ready}");
        if let Some(error) = ready["loader"]["configuration_errors"]["LOANS"]["error"].as_str() {
            seen = Some(error.to_string());
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let error = seen.expect("the configuration error shows in /readyz");
    assert!(error.contains("002003") && error.contains("configuration"), "{error}");
    let (_, batch) = app.get_json(&format!("/v1/batches/{id}")).await;
    assert_ne!(batch["status"], "failed", "{batch}");
    assert_eq!(batch["files"][0]["status"], "staged", "released, not failed: {batch}");
    assert!(batch["files"][0]["error"].as_str().unwrap().contains("configuration"), "{batch}");

    let folder = peers.s3.root.join(&peers.s3.bucket).join(&peers.s3.prefix);
    peers.fakesnow.prepare(&later, &folder.canonicalize().unwrap()).await;
    let done = app.wait_final(&id, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "loaded", "{done}");
    assert_eq!(done["counts"]["loaded"], 10);
    let (_, ready) = app.get_json("/readyz").await;
    assert_eq!(ready["loader"]["configuration_errors"], json!({}), "cleared by the load: {ready}");
    assert_eq!(one_number(&peers.warehouse(), "SELECT COUNT(*) FROM LOANS").await, "10");
    app.shutdown().await;
}

/// A stage that refuses the gateway's credentials is an operator's problem, not "retry later".
#[tokio::test]
async fn a_stage_that_refuses_the_credentials_is_not_a_503() {
    let peers = Peers::start().await;
    let (mut command, base) = common::gateway_command(&peers.dir.path().join("gateway"));
    peers.s3_env(&mut command);
    command.env("SNOWGATE_LOADER__ENABLED", "false").env("AWS_SECRET_ACCESS_KEY", "not-the-secret");
    let mut child = common::start_gateway(command, &base).await;
    common::declare_ids(&base, "loans").await;
    let client = reqwest::Client::new();
    let response =
        client.post(format!("{base}/v1/tables/loans/batches")).json(&json!([{"id": 1}])).send().await.unwrap();
    let status = response.status().as_u16();
    assert!(!response.headers().contains_key("retry-after"));
    let body: Value = response.json().await.unwrap();
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = child.wait();
    assert_eq!((status, body["error"]["code"].as_str()), (500, Some("stage_misconfigured")), "{body}");
    assert!(!body.to_string().contains("not-the-secret"), "{body}");
}

//! Outages of each production peer, through a real TCP proxy that cuts or stalls its connections
//! (tests/common/proxy.rs): a stage or ledger outage answers 503 with `Retry-After` within a
//! documented bound and acknowledges nothing; a warehouse outage keeps POSTs acknowledged and the
//! loads resume when it returns; `/readyz` names the backend that is down (and stays ready while
//! only the warehouse is).

mod common;

use std::time::{Duration, Instant};

use common::production::{one_number, Peers};
use common::proxy::{Mode, Proxy};
use common::{loan, socket_of, spawn_app_with, through_proxy, TestApp};
use serde_json::{json, Value};
use snowgate::config::Config;

/// Every peer behind its own proxy.
struct Proxied {
    peers: Peers,
    stage: Proxy,
    ledger: Proxy,
    warehouse: Proxy,
}

impl Proxied {
    async fn start() -> Proxied {
        let peers = Peers::start().await;
        let stage = Proxy::start(socket_of(&peers.s3.endpoint)).await;
        let ledger = Proxy::start(socket_of(&peers.pg.url)).await;
        let warehouse = Proxy::start(socket_of(peers.snowflake.base_url.as_ref().unwrap())).await;
        Proxied { peers, stage, ledger, warehouse }
    }

    /// Production backends, every one reached through its proxy; short bounds so that the test
    /// sees them.
    fn config(&self) -> Config {
        let mut config = self.peers.config(&self.peers.dir.path().join("gateway"));
        config.stage.endpoint = Some(through_proxy(&self.peers.s3.endpoint, self.stage.addr));
        config.stage.timeout = Duration::from_secs(2);
        config.ledger.url = Some(snowgate::config::Secret::new(through_proxy(&self.peers.pg.url, self.ledger.addr)));
        config.ledger.timeout = Duration::from_secs(2);
        config.limits.processing = Duration::from_secs(4);
        let snowflake = config.warehouse.snowflake.as_mut().unwrap();
        snowflake.base_url = Some(through_proxy(snowflake.base_url.as_ref().unwrap(), self.warehouse.addr));
        config
    }
}

async fn post(app: &TestApp, first: usize) -> reqwest::Response {
    app.post_json("loans", &json!((first..first + 10).map(loan).collect::<Vec<_>>())).await
}

/// A 503 with `Retry-After` and one of `codes`, within `bound`.
async fn refused(app: &TestApp, first: usize, codes: &[&str], bound: Duration) {
    let started = Instant::now();
    let response = post(app, first).await;
    let elapsed = started.elapsed();
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let body: Value = response.json().await.unwrap();
    assert!(codes.contains(&body["error"]["code"].as_str().unwrap()), "{body}");
    assert!(elapsed < bound, "answered after {elapsed:?}, bound {bound:?}");
}

/// `/readyz` names `backend` alone as down: 503 for the ledger or the stage; 200 for the
/// warehouse, whose outage does not stop acknowledgements.
async fn readiness_names(app: &TestApp, backend: &str) {
    let (status, body) = app.get_json("/readyz").await;
    let checks = if backend == "warehouse" {
        assert_eq!(status, 200, "{body}");
        &body["checks"]
    } else {
        assert_eq!(status, 503, "{body}");
        &body["error"]["details"]["checks"]
    };
    let failing: Vec<&String> =
        checks.as_object().unwrap().iter().filter(|(_, v)| *v != "ok").map(|(k, _)| k).collect();
    assert!(failing.len() == 1 && failing[0].starts_with(backend), "{body}");
}

async fn accepted(app: &TestApp, first: usize) -> String {
    let response = post(app, first).await;
    assert_eq!(response.status(), 202);
    response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_outage_or_stall_answers_503_within_its_bound_and_stores_nothing() {
    let proxied = Proxied::start().await;
    let app = spawn_app_with(proxied.config()).await;
    app.declare_loans().await;

    proxied.stage.set(Mode::Down);
    refused(&app, 0, &["stage_unavailable"], Duration::from_secs(10)).await;
    readiness_names(&app, "stage").await;
    // stage.timeout_secs (2 s) bounds a stage that accepts connections and never answers.
    proxied.stage.set(Mode::Stall);
    refused(&app, 100, &["stage_unavailable"], Duration::from_secs(6)).await;
    let (_, listed) = app.get_json("/v1/batches?table=loans").await;
    assert_eq!(listed["batches"], json!([]), "nothing acknowledged, nothing in the ledger");

    proxied.stage.set(Mode::Pass);
    let id = accepted(&app, 200).await;
    let done = app.wait_final(&id, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "loaded", "{done}");
    app.shutdown().await;
    assert_eq!(one_number(&proxied.peers.warehouse(), "SELECT COUNT(*) FROM LOANS").await, "10");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ledger_outage_or_stall_answers_503_within_its_bound() {
    let proxied = Proxied::start().await;
    let app = spawn_app_with(proxied.config()).await;
    app.declare_loans().await;
    // The table is cached; the ledger is still needed to acknowledge.
    let before = accepted(&app, 0).await;

    proxied.ledger.set(Mode::Down);
    refused(&app, 100, &["ledger_unavailable", "timeout"], Duration::from_secs(8)).await;
    readiness_names(&app, "ledger").await;
    proxied.ledger.set(Mode::Stall);
    // ledger.timeout_secs (2 s) bounds the commit, limits.processing_secs (4 s) the work before it.
    refused(&app, 200, &["ledger_unavailable", "timeout"], Duration::from_secs(8)).await;
    let started = Instant::now();
    let (status, body) = app.get_json("/v1/batches?table=loans").await;
    assert_eq!(status, 503, "{body}");
    assert!(["ledger_unavailable", "timeout"].contains(&body["error"]["code"].as_str().unwrap()), "{body}");
    assert!(started.elapsed() < Duration::from_secs(8));

    proxied.ledger.set(Mode::Pass);
    let mut id = None;
    // Pooled connections cut by the outage are replaced on first use.
    for attempt in 0..20 {
        let response = post(&app, 300 + attempt * 10).await;
        if response.status() == 202 {
            id = Some(response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string());
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let id = id.expect("the ledger is back: a POST is acknowledged");
    for acked in [&before, &id] {
        let done = app.wait_final(acked, Duration::from_secs(60)).await;
        assert_eq!(done["status"], "loaded", "{done}");
    }
    app.shutdown().await;
    // What was acknowledged loaded, and nothing else: 10 before the outage, 10 after.
    let warehouse = proxied.peers.warehouse();
    let distinct = "SELECT COUNT(*) FROM (SELECT DISTINCT \"_BATCH_ID\", \"_RECORD_INDEX\" FROM LOANS)";
    assert_eq!(one_number(&warehouse, distinct).await, "20");
    assert_eq!(one_number(&warehouse, "SELECT COUNT(*) FROM LOANS").await, "20");
    let batches = warehouse.query("SELECT DISTINCT \"_BATCH_ID\" FROM LOANS").await.unwrap().rows;
    let mut loaded: Vec<String> = batches.into_iter().map(|row| row[0].clone().unwrap()).collect();
    let mut acknowledged = vec![before, id];
    loaded.sort();
    acknowledged.sort();
    assert_eq!(loaded, acknowledged, "the batches refused during the outage left nothing behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warehouse_outage_keeps_acknowledging_and_loads_resume() {
    let proxied = Proxied::start().await;
    let app = spawn_app_with(proxied.config()).await;
    app.declare_loans().await;

    proxied.warehouse.set(Mode::Down);
    let ids = [accepted(&app, 0).await, accepted(&app, 100).await];
    readiness_names(&app, "warehouse").await;
    // The loader retries with growing delays and never fails the files.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for id in &ids {
        let (_, batch) = app.get_json(&format!("/v1/batches/{id}")).await;
        assert!(["staged", "loading"].contains(&batch["status"].as_str().unwrap()), "{batch}");
        let file = &batch["files"][0];
        assert!(["staged", "loading"].contains(&file["status"].as_str().unwrap()), "retried, not failed: {batch}");
        assert!(file["attempts"].as_u64().unwrap() >= 2, "retried: {batch}");
    }

    proxied.warehouse.set(Mode::Pass);
    for id in &ids {
        let done = app.wait_final(id, Duration::from_secs(60)).await;
        assert_eq!(done["status"], "loaded", "{done}");
        assert_eq!(done["counts"]["loaded"], 10);
    }
    app.shutdown().await;
    assert_eq!(one_number(&proxied.peers.warehouse(), "SELECT COUNT(*) FROM LOANS").await, "20");
}

/// A warehouse that takes requests and never answers: the loader gives up each statement at its
/// deadline, releases the file with that reason (retried, not failed), and loads it once when the
/// warehouse answers again. Without the deadline the loader would wait on its session for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_warehouse_statement_is_abandoned_at_its_deadline_and_retried() {
    let proxied = Proxied::start().await;
    let mut config = proxied.config();
    config.warehouse.snowflake.as_mut().unwrap().statement_timeout = Duration::from_secs(2);
    let app = spawn_app_with(config).await;
    app.declare_loans().await;

    proxied.warehouse.set(Mode::Stall);
    let id = accepted(&app, 0).await;
    let started = Instant::now();
    let released = loop {
        let (_, batch) = app.get_json(&format!("/v1/batches/{id}")).await;
        let file = &batch["files"][0];
        let error = file["error"].as_str().unwrap_or_default();
        if error.contains("statement_timeout_secs") {
            break batch;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "the stalled statement was never given up: {batch}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(["staged", "loading"].contains(&released["files"][0]["status"].as_str().unwrap()), "{released}");
    assert_ne!(released["status"], "failed", "{released}");

    proxied.warehouse.set(Mode::Pass);
    let done = app.wait_final(&id, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "loaded", "{done}");
    assert_eq!(done["counts"]["loaded"], 10);
    assert!(done["files"][0]["attempts"].as_u64().unwrap() >= 2, "{done}");
    app.shutdown().await;
    assert_eq!(one_number(&proxied.peers.warehouse(), "SELECT COUNT(*) FROM LOANS").await, "10");
}

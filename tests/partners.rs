//! Partners over HTTP: API keys and their scopes, the operator role, visibility between
//! partners, quotas, and Idempotency-Key; on SQLite and Postgres, in-process and as processes.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::postgres::PgSchema;
use common::production::{one_number, Peers};
use common::{gateway_command, loan, spawn_app_with, test_config, Process, TestApp};
use serde_json::{json, Value};
use snowgate::config::{Quota, Secret};

/// A request to `app` with `key` (if any) as its bearer.
fn with_key(request: reqwest::RequestBuilder, key: Option<&str>) -> reqwest::RequestBuilder {
    match key {
        Some(key) => request.bearer_auth(key),
        None => request,
    }
}

async fn status_and_body(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

async fn get(app: &TestApp, path: &str, key: Option<&str>) -> (u16, Value) {
    status_and_body(with_key(app.client.get(app.url(path)), key).send().await.unwrap()).await
}

async fn post_loans(app: &TestApp, table: &str, key: Option<&str>, records: Value) -> (u16, Value) {
    let request = app.client.post(app.url(&format!("/v1/tables/{table}/batches"))).json(&records);
    status_and_body(with_key(request, key).send().await.unwrap()).await
}

/// Creates a key through the operator API; returns the key text.
async fn create_key(app: &TestApp, operator: Option<&str>, request: Value) -> String {
    let response = with_key(app.client.post(app.url("/v1/keys")), operator).json(&request).send().await.unwrap();
    let (status, body) = status_and_body(response).await;
    assert_eq!(status, 201, "{body}");
    body["key"].as_str().unwrap().to_string()
}

/// The whole key story on one ledger: open until the first key, then 401 without a valid key,
/// 403 outside a key's scope, 404 for another partner's batch, revocation.
async fn keys_scopes_and_visibility(config: snowgate::Config) {
    let app = spawn_app_with(config).await;
    // No key exists and the gateway is on loopback: the quickstart works without one.
    app.declare_loans().await;
    let operator = create_key(&app, None, json!({"operator": true})).await;
    assert!(operator.starts_with("sgk_"), "{operator}");

    // From the first key on, every request needs one, without a restart.
    let response = app.client.get(app.url("/v1/tables")).send().await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    let (_, body) = status_and_body(response).await;
    assert_eq!(body["error"]["code"], "unauthorized");
    let forged = format!("sgk_{}_{}", &operator[4..20], "0".repeat(64));
    for wrong in [forged.as_str(), "sgk_nothing", "hello", ""] {
        let (status, body) = get(&app, "/v1/tables", Some(wrong)).await;
        assert_eq!(status, 401, "{wrong:?}: {body}");
    }
    assert_eq!(get(&app, "/v1/tables", Some(&operator)).await.0, 200);

    let declared = app
        .client
        .put(app.url("/v1/tables/other"))
        .bearer_auth(&operator)
        .json(&json!({"columns": [{"name": "id", "type": "NUMBER"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(declared.status(), 201);
    let acme = create_key(&app, Some(&operator), json!({"partner": "acme", "tables": ["loans"]})).await;
    let beta = create_key(&app, Some(&operator), json!({"partner": "beta", "tables": ["Loans"]})).await;

    for (request, why) in [
        (json!({"partner": "anonymous", "tables": ["loans"]}), "a reserved partner name"),
        (json!({"operator": true, "tables": ["loans"]}), "an operator key with tables"),
        (json!({"partner": "gamma"}), "a partner key without tables"),
    ] {
        let response = app.client.post(app.url("/v1/keys")).bearer_auth(&operator).json(&request).send().await;
        assert_eq!(response.unwrap().status(), 400, "{why}");
    }

    let (status, batch) = post_loans(&app, "loans", Some(&acme), json!([loan(1), loan(2)])).await;
    assert_eq!(status, 202, "{batch}");
    assert_eq!(batch["partner"], "acme");
    let id = batch["id"].as_str().unwrap().to_string();
    let (status, body) = post_loans(&app, "other", Some(&acme), json!([{"id": 1}])).await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("forbidden")), "{body}");

    // Only the operator declares tables and manages keys.
    let response = app
        .client
        .put(app.url("/v1/tables/loans"))
        .bearer_auth(&acme)
        .json(&json!({"columns": [], "drift": "discard_row"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let response = app.client.post(app.url("/v1/keys")).bearer_auth(&acme).json(&json!({"operator": true}));
    assert_eq!(response.send().await.unwrap().status(), 403);
    assert_eq!(get(&app, "/v1/keys", Some(&acme)).await.0, 403);

    // A partner sees its own batches; another partner's are not there at all.
    assert_eq!(get(&app, &format!("/v1/batches/{id}"), Some(&acme)).await.0, 200);
    let (status, body) = get(&app, &format!("/v1/batches/{id}"), Some(&beta)).await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("batch_not_found")), "{body}");
    assert_eq!(get(&app, &format!("/v1/batches/{id}/rejects"), Some(&beta)).await.0, 404);
    let (_, listed) = get(&app, "/v1/batches?partner=acme", Some(&beta)).await;
    assert_eq!(listed["batches"], json!([]), "beta cannot list acme's batches");
    let (_, listed) = get(&app, "/v1/batches", Some(&acme)).await;
    assert_eq!(listed["batches"].as_array().unwrap().len(), 1, "{listed}");
    let (_, listed) = get(&app, "/v1/batches?partner=acme", Some(&operator)).await;
    assert_eq!(listed["batches"][0]["id"], id.as_str());
    let (_, tables) = get(&app, "/v1/tables", Some(&acme)).await;
    let names: Vec<&str> = tables["tables"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["LOANS"], "a partner lists the tables it may write");
    assert_eq!(get(&app, "/v1/tables/other", Some(&acme)).await.0, 403);
    // The audit log names who added a column, to the operator and to that partner only.
    let mut widened = loan(9);
    widened["acme_ref"] = json!("r-9");
    assert_eq!(post_loans(&app, "loans", Some(&acme), json!([widened])).await.0, 202);
    let changes = |key: String| {
        let app = &app;
        async move { get(app, "/v1/tables/loans/schema-changes", Some(&key)).await.1["changes"][0].clone() }
    };
    assert_eq!(changes(acme.clone()).await["partner"], "acme");
    assert_eq!(changes(operator.clone()).await["partner"], "acme");
    let seen_by_beta = changes(beta.clone()).await;
    assert_eq!((seen_by_beta["column"].as_str(), &seen_by_beta["partner"]), (Some("ACME_REF"), &Value::Null));
    assert_eq!(seen_by_beta["batch_id"], Value::Null);

    // Keys are listed without their secrets; a revoked key is refused at once on this replica.
    let (status, keys) = get(&app, "/v1/keys", Some(&operator)).await;
    assert_eq!(status, 200);
    assert_eq!(keys["keys"].as_array().unwrap().len(), 3);
    let text = keys.to_string();
    for key in [&operator, &acme, &beta] {
        assert!(!text.contains(&key[21..]), "a secret appears in the key list");
    }
    let acme_id = &acme[4..20];
    let revoked = app.client.delete(app.url(&format!("/v1/keys/{acme_id}"))).bearer_auth(&operator).send();
    let (status, body) = status_and_body(revoked.await.unwrap()).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["revoked_at"].is_string(), "{body}");
    assert_eq!(post_loans(&app, "loans", Some(&acme), json!([loan(3)])).await.0, 401);
    assert_eq!(get(&app, "/v1/tables/loans", Some(&beta)).await.0, 200, "other keys are unaffected");
    let missing = app.client.delete(app.url("/v1/keys/ffffffffffffffff")).bearer_auth(&operator).send();
    assert_eq!(missing.await.unwrap().status(), 404);
    app.shutdown().await;
}

#[tokio::test]
async fn keys_scopes_and_visibility_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    keys_scopes_and_visibility(test_config(dir.path())).await;
}

#[tokio::test]
async fn keys_scopes_and_visibility_on_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let pg = PgSchema::create().await;
    let mut config = test_config(dir.path());
    config.ledger.url = Some(Secret::new(pg.url.clone()));
    keys_scopes_and_visibility(config).await;
}

/// `snowgate keys ...` with `args`, on the ledger `env` names; returns stdout, or panics.
fn keys_command(args: &[&str], env: &[(&str, &str)]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_snowgate"))
        .arg("keys")
        .args(args)
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(output.status.success(), "keys {args:?}: {stdout}{}", String::from_utf8_lossy(&output.stderr));
    stdout
}

#[tokio::test]
async fn keys_made_on_the_command_line_close_a_running_gateway_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    let (mut command, base) = gateway_command(dir.path());
    command.env("SNOWGATE_AUTH__CACHE_SECS", "0");
    let gateway = Process::start(command, base.clone()).await;
    let client = reqwest::Client::new();
    assert_eq!(client.get(format!("{base}/v1/tables")).send().await.unwrap().status(), 200, "open until a key exists");

    let created = keys_command(&["create", "--data-dir", data_dir, "--operator"], &[]);
    let operator = created.lines().last().unwrap().to_string();
    assert!(operator.starts_with("sgk_") && !operator.contains(' '), "the key alone on the last line: {created:?}");
    assert_eq!(client.get(format!("{base}/v1/tables")).send().await.unwrap().status(), 401, "closed, no restart");
    let tables = client.get(format!("{base}/v1/tables")).bearer_auth(&operator).send().await.unwrap();
    assert_eq!(tables.status(), 200);

    let created =
        keys_command(&["create", "--data-dir", data_dir, "--partner", "acme", "--tables", "loans,repayments"], &[]);
    let acme = created.lines().last().unwrap().to_string();
    let listed: Value = serde_json::from_str(&keys_command(&["list", "--data-dir", data_dir], &[])).unwrap();
    let keys = listed["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[1]["tables"], json!(["LOANS", "REPAYMENTS"]));
    assert!(!listed.to_string().contains(&acme[21..]), "list never shows a secret");
    let bad = Command::new(env!("CARGO_BIN_EXE_snowgate"))
        .args(["keys", "create", "--data-dir", data_dir, "--partner", "Acme Corp", "--tables", "loans"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--partner"), "the error names the flag");

    let declared = client
        .put(format!("{base}/v1/tables/loans"))
        .bearer_auth(&operator)
        .json(&json!({"columns": [{"name": "id", "type": "NUMBER"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(declared.status(), 201);
    let post = || client.post(format!("{base}/v1/tables/loans/batches")).bearer_auth(&acme).json(&json!([{"id": 1}]));
    assert_eq!(post().send().await.unwrap().status(), 202);
    let acme_id = keys[1]["id"].as_str().unwrap();
    keys_command(&["revoke", "--data-dir", data_dir, acme_id], &[]);
    assert_eq!(post().send().await.unwrap().status(), 401, "revoked in the ledger, refused by the running gateway");
    let listed: Value = serde_json::from_str(&keys_command(&["list", "--data-dir", data_dir], &[])).unwrap();
    assert!(listed["keys"][1]["last_used_at"].is_string(), "the key's last use is recorded: {listed}");
    gateway.terminate();
}

/// Starts `snowgate serve` on every interface; returns its exit status and stderr if it stops
/// within 30 s, or `None` (after checking it serves) if it keeps running.
async fn serve_on_all_interfaces(data_dir: &std::path::Path, env: &[(&str, &str)]) -> Option<(bool, String)> {
    let port = common::peers::free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_snowgate"))
        .args(["serve", "--listen", &format!("0.0.0.0:{port}"), "--data-dir"])
        .arg(data_dir)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    for _ in 0..600 {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
            return Some((status.success(), stderr));
        }
        if reqwest::get(format!("http://127.0.0.1:{port}/healthz")).await.is_ok_and(|r| r.status().is_success()) {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    panic!("snowgate neither served nor stopped");
}

#[tokio::test]
async fn off_loopback_the_gateway_refuses_to_start_without_keys() {
    let dir = tempfile::tempdir().unwrap();
    let (success, stderr) = serve_on_all_interfaces(dir.path(), &[]).await.expect("refuses to start");
    assert!(!success);
    assert!(stderr.contains("auth.mode"), "the error names auth.mode: {stderr}");
    assert!(serve_on_all_interfaces(dir.path(), &[("SNOWGATE_AUTH__MODE", "open")]).await.is_none(), "open on request");
    keys_command(&["create", "--data-dir", dir.path().to_str().unwrap(), "--operator"], &[]);
    assert!(serve_on_all_interfaces(dir.path(), &[]).await.is_none(), "serves once a key exists");
}

#[tokio::test]
async fn a_partner_over_its_quota_gets_429_and_another_is_unaffected() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config
        .quotas
        .partners
        .insert("greedy".into(), Quota { requests_per_sec: 2.0, burst_secs: 2.0, ..Quota::default() });
    config
        .quotas
        .partners
        .insert("bulky".into(), Quota { records_per_sec: 100.0, burst_secs: 1.0, ..Quota::default() });
    let app = spawn_app_with(config).await;
    app.declare_loans().await;
    let operator = create_key(&app, None, json!({"operator": true})).await;
    let greedy = create_key(&app, Some(&operator), json!({"partner": "greedy", "tables": ["loans"]})).await;
    let bulky = create_key(&app, Some(&operator), json!({"partner": "bulky", "tables": ["loans"]})).await;
    let fair = create_key(&app, Some(&operator), json!({"partner": "fair", "tables": ["loans"]})).await;

    // A burst from the greedy partner: four at once, then about two a second.
    let (mut accepted, mut refused) = (0, 0);
    let started = std::time::Instant::now();
    for i in 0..12 {
        let response = app
            .client
            .post(app.url("/v1/tables/loans/batches"))
            .bearer_auth(&greedy)
            .json(&json!([loan(i)]))
            .send()
            .await
            .unwrap();
        let headers = response.headers().clone();
        assert!(headers.contains_key("ratelimit-remaining"), "every answer carries the quota left");
        match response.status().as_u16() {
            202 => accepted += 1,
            429 => {
                refused += 1;
                let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
                assert_eq!(retry, 1, "one request refills in half a second");
                assert_eq!(headers["ratelimit-remaining"], "0");
                let (_, body) = status_and_body(response).await;
                assert_eq!(body["error"]["code"], "quota_exceeded");
            }
            other => panic!("unexpected {other}"),
        }
    }
    let refilled = (2.0 * started.elapsed().as_secs_f64()).ceil() as usize;
    assert!(accepted >= 4 && accepted <= 4 + refilled, "{accepted} accepted in {:?}", started.elapsed());
    assert!(refused >= 1, "the burst ran out");
    // The fair partner, on the same gateway right after, is not held back at all.
    for i in 0..12 {
        let (status, body) = post_loans(&app, "loans", Some(&fair), json!([loan(100 + i)])).await;
        assert_eq!(status, 202, "{body}");
    }
    let (_, listed) = get(&app, "/v1/batches?partner=greedy&limit=100", Some(&operator)).await;
    assert_eq!(listed["batches"].as_array().unwrap().len(), accepted, "nothing stored for a 429");

    // Records: a large batch is let in, and the partner then waits until its bucket refills.
    let big: Vec<Value> = (0..300).map(loan).collect();
    assert_eq!(post_loans(&app, "loans", Some(&bulky), json!(big)).await.0, 202);
    let response = app.client.post(app.url("/v1/tables/loans/batches")).bearer_auth(&bulky).json(&json!([loan(1)]));
    let response = response.send().await.unwrap();
    assert_eq!(response.status(), 429);
    let retry: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=3).contains(&retry), "about 200 records over at 100 a second: {retry}");
    let (_, body) = status_and_body(response).await;
    assert_eq!(body["error"]["details"]["limit"], "records_per_sec");
    app.shutdown().await;
}

async fn post_with_idempotency(app: &TestApp, key: &str, table: &str, records: &Value) -> (u16, bool, Value) {
    let response = app
        .client
        .post(app.url(&format!("/v1/tables/{table}/batches")))
        .header("idempotency-key", key)
        .json(records)
        .send()
        .await
        .unwrap();
    let replayed = response.headers().get("idempotent-replayed").is_some_and(|v| v == "true");
    let (status, body) = status_and_body(response).await;
    (status, replayed, body)
}

#[tokio::test]
async fn an_idempotency_key_makes_one_batch_and_a_failed_first_request_may_be_retried() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app_with(test_config(dir.path())).await;
    app.declare_loans().await;
    let first = json!([loan(1), loan(2)]);
    let (status, replayed, batch) = post_with_idempotency(&app, "order-1", "loans", &first).await;
    assert_eq!((status, replayed), (202, false), "{batch}");
    let id = batch["id"].as_str().unwrap().to_string();
    let (status, replayed, again) = post_with_idempotency(&app, "order-1", "loans", &first).await;
    assert_eq!((status, replayed, again["id"].as_str()), (202, true, Some(id.as_str())), "{again}");

    let (status, _, conflict) = post_with_idempotency(&app, "order-1", "loans", &json!([loan(3)])).await;
    assert_eq!(status, 409, "{conflict}");
    assert_eq!(conflict["error"]["code"], "idempotency_conflict");
    assert_eq!(conflict["error"]["details"]["batch_id"], id.as_str());

    // Concurrent duplicates: one batch, every answer names it.
    let second = json!([loan(10), loan(11), loan(12)]);
    let answers =
        futures::future::join_all((0..5).map(|_| post_with_idempotency(&app, "order-2", "loans", &second))).await;
    let ids: std::collections::BTreeSet<&str> = answers.iter().map(|(_, _, b)| b["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 1, "{answers:?}");
    assert!(answers.iter().all(|(status, _, _)| *status == 202), "{answers:?}");
    assert_eq!(answers.iter().filter(|(_, replayed, _)| !replayed).count(), 1, "one request made it");

    // A request that fails before its batch is committed lets go of the key.
    let (status, _, missing) = post_with_idempotency(&app, "order-3", "later", &json!([{"id": 1}])).await;
    assert_eq!(status, 404, "{missing}");
    common::declare_ids(&app.base, "later").await;
    let (status, replayed, made) = post_with_idempotency(&app, "order-3", "later", &json!([{"id": 1}])).await;
    assert_eq!((status, replayed), (202, false), "{made}");

    let (status, _, bad) = post_with_idempotency(&app, "has space", "loans", &first).await;
    assert_eq!((status, bad["error"]["code"].as_str()), (400, Some("invalid_header")));

    let loaded = app.wait_final(&id, Duration::from_secs(30)).await;
    assert_eq!(loaded["counts"]["loaded"], 2);
    let (_, listed) = app.get_json("/v1/batches?table=loans").await;
    assert_eq!(listed["batches"].as_array().unwrap().len(), 2, "two keys, two batches: {listed}");
    app.shutdown().await;
    let rows = common::duckdb_count(dir.path(), "SELECT COUNT(*) FROM loans");
    assert_eq!(rows, 5, "each record once");
}

/// The acceptance test of Idempotency-Key: every request sent three times at once, with one
/// key, to two gateway processes on one Postgres (and the production stage and warehouse).
#[tokio::test]
async fn a_retry_storm_across_two_gateways_loads_every_record_once() {
    const BATCHES: usize = 12;
    const RECORDS: usize = 25;
    let peers = Peers::start().await;
    let ledger_env = [("SNOWGATE_LEDGER__URL", peers.pg.url.as_str())];
    let operator = keys_command(&["create", "--operator"], &ledger_env).lines().last().unwrap().to_string();
    let partner = keys_command(&["create", "--partner", "storm", "--tables", "loans"], &ledger_env);
    let partner = partner.lines().last().unwrap().to_string();
    let mut gateways = Vec::new();
    for _ in 0..2 {
        let data = tempfile::tempdir().unwrap();
        let (mut command, base) = gateway_command(data.path());
        peers.process_env(&mut command);
        gateways.push((Process::start(command, base).await, data));
    }
    let bases: Vec<String> = gateways.iter().map(|(g, _)| g.base.clone()).collect();
    let client = reqwest::Client::new();
    let declared = client
        .put(format!("{}/v1/tables/loans", bases[0]))
        .bearer_auth(&operator)
        .json(&json!({"columns": [{"name": "id", "type": "NUMBER", "nullable": false}, {"name": "amount", "type": "NUMBER(12,2)"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(declared.status(), 201);

    let sends = (0..BATCHES).flat_map(|b| (0..3).map(move |copy| (b, copy))).map(|(b, copy)| {
        let (client, partner) = (client.clone(), partner.clone());
        let base = bases[(b + copy) % 2].clone();
        let records: Vec<Value> =
            (0..RECORDS).map(|i| json!({"id": b * RECORDS + i, "amount": format!("{}.25", b * RECORDS + i)})).collect();
        async move {
            let response = client
                .post(format!("{base}/v1/tables/loans/batches"))
                .bearer_auth(&partner)
                .header("idempotency-key", format!("storm-{b}"))
                .json(&records)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap();
            (b, status, body)
        }
    });
    let answers = futures::future::join_all(sends).await;
    let mut batch_of = std::collections::BTreeMap::new();
    for (b, status, body) in &answers {
        assert_eq!(*status, 202, "{body}");
        let id = body["id"].as_str().unwrap().to_string();
        assert_eq!(batch_of.entry(*b).or_insert_with(|| id.clone()), &id, "every answer names the same batch");
    }
    for id in batch_of.values() {
        let batch = common::wait_final(&client_with(&partner), &bases[0], id, Duration::from_secs(120)).await;
        assert_eq!(batch["counts"]["loaded"], RECORDS, "{batch}");
    }
    let (_, listed) = status_and_body(
        client.get(format!("{}/v1/batches?limit=1000", bases[1])).bearer_auth(&operator).send().await.unwrap(),
    )
    .await;
    assert_eq!(listed["batches"].as_array().unwrap().len(), BATCHES, "one batch per key");
    let warehouse = peers.warehouse();
    let total = BATCHES * RECORDS;
    assert_eq!(one_number(&warehouse, "SELECT COUNT(*) FROM LOANS").await, total.to_string());
    let distinct = "SELECT COUNT(DISTINCT \"_BATCH_ID\" || ':' || CAST(\"_RECORD_INDEX\" AS VARCHAR)) FROM LOANS";
    assert_eq!(one_number(&warehouse, distinct).await, total.to_string());
    assert_eq!(one_number(&warehouse, "SELECT COUNT(DISTINCT ID) FROM LOANS").await, total.to_string());
    for (gateway, _) in gateways {
        gateway.terminate();
    }
}

/// A client that sends `key` as its bearer on every request.
fn client_with(key: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {key}").parse().unwrap());
    reqwest::Client::builder().default_headers(headers).build().unwrap()
}

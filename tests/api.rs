//! The HTTP API against a real gateway on the embedded backends (SQLite, local stage, DuckDB).

mod common;

use std::io::Write;

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::{duckdb_count, duckdb_query, loan, spawn_app};
use serde_json::{json, Value};

#[tokio::test]
async fn ten_thousand_loans_with_two_bad_records_load_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app(dir.path()).await;
    app.declare_loans().await;

    let mut lines = Vec::with_capacity(10_000);
    for i in 0..10_000 {
        let mut record = loan(i);
        if i == 17 {
            record["id"] = Value::Null;
        }
        if i == 4242 {
            record["amount"] = json!("abc");
        }
        lines.push(record.to_string());
    }
    let response = app.post_ndjson("loans", "", lines.join("\n")).await;
    assert_eq!(response.status(), 202);
    let batch: Value = response.json().await.unwrap();
    assert_eq!(batch["counts"], json!({"received": 10000, "accepted": 9998, "rejected": 2, "loaded": 0}));
    assert_eq!(batch["table"], "LOANS");
    assert_eq!(batch["rejects_by_code"], json!({"null_in_not_null": 1, "type_mismatch": 1}));
    assert!(batch["staged_at"].is_string());
    let id = batch["id"].as_str().unwrap().to_string();

    let done = app.wait_final(&id, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "loaded", "{done}");
    assert_eq!(done["counts"]["loaded"], 9998);
    assert!(done["loaded_at"].is_string());
    let files = done["files"].as_array().unwrap();
    assert!(!files.is_empty());
    assert!(files.iter().all(|f| f["status"] == "loaded" && f["query_id"].is_string()), "{done}");
    assert_eq!(files.iter().map(|f| f["rows"].as_u64().unwrap()).sum::<u64>(), 9998);

    let (status, page) = app.get_json(&format!("/v1/batches/{id}/rejects")).await;
    assert_eq!(status, 200);
    let rejects = page["rejects"].as_array().unwrap();
    assert_eq!(rejects.len(), 2);
    assert_eq!(rejects[0]["index"], 17);
    assert_eq!(rejects[0]["stage"], "gateway");
    assert_eq!(rejects[0]["record"]["id"], Value::Null);
    assert_eq!(rejects[0]["errors"][0]["path"], "/id");
    assert_eq!(rejects[0]["errors"][0]["column"], "ID");
    assert_eq!(rejects[0]["errors"][0]["code"], "null_in_not_null");
    assert_eq!(rejects[1]["index"], 4242);
    assert_eq!(rejects[1]["errors"][0]["path"], "/amount");
    assert_eq!(rejects[1]["errors"][0]["code"], "type_mismatch");
    assert!(rejects[1]["errors"][0]["message"].as_str().unwrap().contains("abc"));
    assert_eq!(page["next"], Value::Null);

    app.shutdown().await;
    assert_eq!(duckdb_count(dir.path(), "SELECT COUNT(*) FROM loans"), 9998);
    assert_eq!(duckdb_count(dir.path(), "SELECT COUNT(DISTINCT (_BATCH_ID, _RECORD_INDEX)) FROM loans"), 9998);
    assert_eq!(duckdb_count(dir.path(), "SELECT COUNT(*) FROM loans WHERE _RECORD_INDEX IN (17, 4242)"), 0);
    let row = duckdb_query(
        dir.path(),
        "SELECT CAST(amount AS VARCHAR), borrower, CAST(issued_on AS VARCHAR), CAST(approved AS VARCHAR), attributes
         FROM loans WHERE id = 5",
    );
    assert_eq!(
        row,
        vec![vec![
            Some("105.05".to_string()),
            Some("borrower-5".to_string()),
            Some("2026-11-23".to_string()),
            Some("false".to_string()),
            Some(r#"{"score":5,"tags":["a","b"]}"#.to_string()),
        ]]
    );
}

#[tokio::test]
async fn new_fields_add_nullable_columns_and_are_audited() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app(dir.path()).await;
    app.declare_loans().await;
    let mut first = loan(1);
    first["partner_reference_id"] = json!("ref-1");
    first["risk score"] = json!(3);
    let mut second = loan(2);
    second["Risk Score"] = json!(4.5);
    second["never_set"] = Value::Null;
    let response = app.post_json("loans", &json!([first, second])).await;
    assert_eq!(response.status(), 202);
    let batch: Value = response.json().await.unwrap();
    let changes: Vec<(String, String)> = batch["schema_changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["column"].as_str().unwrap().to_string(), c["type"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(changes, vec![("PARTNER_REFERENCE_ID".into(), "VARCHAR".into()), ("RISK_SCORE".into(), "FLOAT".into())]);
    assert_eq!(batch["counts"]["accepted"], 2);

    let (_, table) = app.get_json("/v1/tables/LOANS").await;
    let names: Vec<&str> = table["columns"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert!(names.ends_with(&["PARTNER_REFERENCE_ID", "RISK_SCORE"]), "{names:?}");
    assert!(!names.contains(&"NEVER_SET"));
    let (_, audit) = app.get_json("/v1/tables/loans/schema-changes").await;
    assert_eq!(audit["changes"].as_array().unwrap().len(), 2);
    assert_eq!(audit["changes"][0]["batch_id"], batch["id"]);

    let id = batch["id"].as_str().unwrap().to_string();
    assert_eq!(app.wait_final(&id, Duration::from_secs(30)).await["status"], "loaded");
    app.shutdown().await;
    let rows =
        duckdb_query(dir.path(), "SELECT partner_reference_id, CAST(risk_score AS VARCHAR) FROM loans ORDER BY id");
    assert_eq!(rows, vec![vec![Some("ref-1".into()), Some("3.0".into())], vec![None, Some("4.5".into())]]);
}

#[tokio::test]
async fn bodies_in_every_format_and_encoding() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app(dir.path()).await;
    app.declare_loans().await;
    let url = app.url("/v1/tables/loans/batches");

    let envelope = app.post_json("loans", &json!({"records": [loan(1), loan(2)]})).await;
    assert_eq!(envelope.status(), 202);

    let ndjson = format!("{}\n{}\n", loan(3), loan(4));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(ndjson.as_bytes()).unwrap();
    let response = app
        .client
        .post(&url)
        .header("content-type", "application/x-ndjson")
        .header("content-encoding", "gzip")
        .body(gz.finish().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let batch: Value = response.json().await.unwrap();
    assert_eq!(batch["counts"]["accepted"], 2);

    let body = serde_json::to_vec(&json!([loan(5)])).unwrap();
    let response = app
        .client
        .post(&url)
        .header("content-type", "application/json")
        .header("content-encoding", "zstd")
        .body(zstd::encode_all(&body[..], 3).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);

    // A malformed NDJSON line is a reject, not a failed batch.
    let response = app.post_ndjson("loans", "", format!("{}\n{{\"id\": 7,\n{}\n", loan(6), loan(8))).await;
    assert_eq!(response.status(), 202);
    let batch: Value = response.json().await.unwrap();
    assert_eq!(batch["counts"], json!({"received": 3, "accepted": 2, "rejected": 1, "loaded": 0}));
    assert_eq!(batch["rejects_by_code"], json!({"invalid_json": 1}));
    app.shutdown().await;
}

#[tokio::test]
async fn whole_request_errors_have_one_shape_and_precise_status() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::test_config(dir.path());
    config.limits.max_body_bytes = 4096;
    config.limits.max_decompressed_bytes = 8192;
    let app = common::spawn_app_with(config).await;
    app.declare_loans().await;
    let url = app.url("/v1/tables/loans/batches");

    let expect = |status: u16, code: &'static str| {
        move |response: (u16, Value)| {
            assert_eq!(response.0, status, "{}", response.1);
            assert_eq!(response.1["error"]["code"], code, "{}", response.1);
            assert!(response.1["error"]["message"].is_string());
            response.1
        }
    };
    async fn send(request: reqwest::RequestBuilder) -> (u16, Value) {
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    let c = &app.client;
    expect(404, "table_not_found")(send(c.post(app.url("/v1/tables/nope/batches")).json(&json!([{}]))).await);
    let broken = expect(400, "invalid_json")(send(c.post(&url).body("[{\"id\": 1}, {\"id\": ]")).await);
    assert_eq!(broken["error"]["details"]["offset"], 19);
    expect(400, "invalid_body")(send(c.post(&url).body("{\"rows\": []}")).await);
    expect(400, "empty_batch")(send(c.post(&url).body("[]")).await);
    expect(415, "unsupported_media_type")(send(c.post(&url).header("content-type", "text/csv").body("id\n1")).await);
    expect(415, "unsupported_encoding")(send(c.post(&url).header("content-encoding", "br").body("x")).await);
    expect(413, "payload_too_large")(send(c.post(&url).body(vec![b' '; 5000])).await);
    // A small gzip bomb: 1 MB of spaces in a few KB; refused once it inflates past the limit.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&vec![b' '; 1 << 20]).unwrap();
    let bomb = gz.finish().unwrap();
    assert!(bomb.len() < 4096);
    expect(413, "payload_too_large")(send(c.post(&url).header("content-encoding", "gzip").body(bomb)).await);
    expect(400, "invalid_body")(send(c.post(&url).header("content-encoding", "gzip").body("not gzip")).await);
    expect(404, "batch_not_found")(app.get_json("/v1/batches/not-a-uuid").await);
    expect(404, "batch_not_found")(app.get_json("/v1/batches/0193a000-0000-7000-8000-000000000000").await);
    expect(400, "invalid_table_name")(send(c.put(app.url("/v1/tables/%20")).json(&json!({"columns": []}))).await);
    expect(400, "invalid_definition")(
        send(c.put(app.url("/v1/tables/t")).json(&json!({"columns": [{"name": "a", "type": "GEOGRAPHY"}]}))).await,
    );
    expect(409, "table_conflict")(
        send(c.put(app.url("/v1/tables/loans")).json(&json!({"columns": [{"name": "id", "type": "VARCHAR"}]}))).await,
    );
    expect(404, "not_found")(app.get_json("/v2/nothing").await);
    let plain = expect(404, "table_not_found")(app.get_json("/v1/tables/nope").await);
    assert_eq!(plain["error"]["details"], json!({}), "details is always an object");
    for limit in ["0", "1001", "-1", "x"] {
        expect(400, "invalid_query")(app.get_json(&format!("/v1/batches?limit={limit}")).await);
    }
    let (status, page) = app.get_json("/v1/batches?limit=1000").await;
    assert_eq!(status, 200, "{page}");
    app.shutdown().await;
}

#[tokio::test]
async fn table_names_are_identifiers_never_mapped_onto_another_name() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app(dir.path()).await;
    let declaration = json!({"columns": [{"name": "id", "type": "NUMBER", "nullable": false}]});
    for raw in ["a%22b", "a%2Fb", "a%20b", "a-b", "1ab", "%24x", "a.b", "_snowgate_load_history"] {
        let response = app.put_table(raw, declaration.clone()).await;
        assert_eq!(response.status(), 400, "{raw}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_table_name", "{raw}: {body}");
        let (status, body) = app.get_json(&format!("/v1/tables/{raw}")).await;
        assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_table_name")), "{raw}");
        let posted = app.client.post(app.url(&format!("/v1/tables/{raw}/batches"))).json(&json!([{"id": 1}])).send();
        assert_eq!(posted.await.unwrap().status(), 400, "{raw}");
    }
    assert_eq!(app.put_table("a_b", declaration.clone()).await.status(), 201);
    assert_eq!(app.put_table("A_b", declaration).await.status(), 200, "case-insensitive: the same table");
    let (_, tables) = app.get_json("/v1/tables").await;
    let names: Vec<&str> = tables["tables"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["A_B"], "nothing else was created");
    app.shutdown().await;
}

#[tokio::test]
async fn reading_a_table_runs_no_ddl() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app(dir.path()).await;
    app.shutdown().await;
    // A table made outside snowgate: no metadata columns, unknown to the ledger.
    {
        let conn = duckdb::Connection::open(dir.path().join("warehouse.duckdb")).unwrap();
        conn.execute_batch("CREATE TABLE outside (id BIGINT, note VARCHAR)").unwrap();
    }
    let app = spawn_app(dir.path()).await;
    let (status, table) = app.get_json("/v1/tables/outside").await;
    assert_eq!(status, 200, "{table}");
    assert_eq!(table["columns"].as_array().unwrap().len(), 2);
    let (status, changes) = app.get_json("/v1/tables/outside/schema-changes").await;
    assert_eq!((status, changes["changes"].clone()), (200, json!([])));
    let (_, tables) = app.get_json("/v1/tables").await;
    assert_eq!(tables["tables"], json!([]), "a GET recorded nothing in the ledger");
    app.shutdown().await;
    let columns =
        duckdb_count(dir.path(), "SELECT COUNT(*) FROM information_schema.columns WHERE lower(table_name) = 'outside'");
    assert_eq!(columns, 2, "a GET added no metadata column");
}

#[tokio::test]
async fn dry_run_validates_without_storing_anything() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app(dir.path()).await;
    app.declare_loans().await;
    let mut extra = loan(1);
    extra["brand_new"] = json!(true);
    let response = app
        .client
        .post(app.url("/v1/tables/loans/batches?dry_run=true"))
        .json(&json!([extra, {"id": "x"}]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let report: Value = response.json().await.unwrap();
    assert_eq!(report["dry_run"], true);
    assert_eq!(report["counts"], json!({"received": 2, "accepted": 1, "rejected": 1, "loaded": 0}));
    assert_eq!(report["schema_changes"], json!([{"name": "BRAND_NEW", "type": "BOOLEAN", "nullable": true}]));
    assert_eq!(report["rejects"][0]["errors"][0]["code"], "type_mismatch");
    let (_, table) = app.get_json("/v1/tables/loans").await;
    assert!(!table["columns"].to_string().contains("BRAND_NEW"));
    let (_, list) = app.get_json("/v1/batches").await;
    assert_eq!(list["batches"], json!([]));
    app.shutdown().await;
}

#[tokio::test]
async fn wait_loaded_answers_200_once_loaded_and_lists_filter() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app(dir.path()).await;
    app.declare_loans().await;
    let response = app
        .client
        .post(app.url("/v1/tables/loans/batches?wait=loaded&timeout=30"))
        .json(&json!([loan(1), loan(2), loan(3)]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let batch: Value = response.json().await.unwrap();
    assert_eq!(batch["status"], "loaded");
    assert_eq!(batch["counts"]["loaded"], 3);

    // Every record rejected: final at once, status rejected, nothing staged.
    let response = app.post_json("loans", &json!([{"id": null}, 5])).await;
    assert_eq!(response.status(), 200);
    let rejected: Value = response.json().await.unwrap();
    assert_eq!(rejected["status"], "rejected");
    assert_eq!(rejected["files"], json!([]));
    assert_eq!(rejected["rejects_by_code"], json!({"not_an_object": 1, "null_in_not_null": 1}));

    let (_, page) = app.get_json("/v1/batches?status=rejected").await;
    assert_eq!(page["batches"].as_array().unwrap().len(), 1);
    assert_eq!(page["batches"][0]["id"], rejected["id"]);
    let (_, page) = app.get_json("/v1/batches?table=loans&limit=1").await;
    assert_eq!(page["batches"][0]["id"], rejected["id"], "newest first");
    let next = page["next"].as_str().unwrap().to_string();
    let (_, page) = app.get_json(&format!("/v1/batches?table=LOANS&limit=1&after={next}")).await;
    assert_eq!(page["batches"][0]["id"], batch["id"]);
    let (status, _) = app.get_json("/v1/batches?status=bogus").await;
    assert_eq!(status, 400);
    app.shutdown().await;
}

#[tokio::test]
async fn rejects_paginate_and_stream_as_ndjson() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app(dir.path()).await;
    app.declare_loans().await;
    let records: Vec<Value> =
        (0..250usize).map(|i| if i.is_multiple_of(2) { json!({"id": "bad"}) } else { loan(i) }).collect();
    let batch: Value = app.post_json("loans", &json!(records)).await.json().await.unwrap();
    assert_eq!(batch["counts"]["rejected"], 125);
    let id = batch["id"].as_str().unwrap();

    let mut seen = Vec::new();
    let mut after = String::new();
    loop {
        let (status, page) = app.get_json(&format!("/v1/batches/{id}/rejects?limit=50{after}")).await;
        assert_eq!(status, 200);
        seen.extend(page["rejects"].as_array().unwrap().iter().map(|r| r["index"].as_u64().unwrap()));
        match page["next"].as_str() {
            Some(next) => after = format!("&after={next}"),
            None => break,
        }
    }
    assert_eq!(seen, (0..250).step_by(2).collect::<Vec<u64>>());

    let response = app
        .client
        .get(app.url(&format!("/v1/batches/{id}/rejects")))
        .header("accept", "application/x-ndjson")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let text = response.text().await.unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 125);
    assert_eq!(lines[124]["index"], 248);

    // The rejects are one NDJSON object in the stage beside the table's files, each line the
    // reject as served; the ledger keeps no record of them, only where each line is.
    let received: chrono::DateTime<chrono::Utc> = batch["received_at"].as_str().unwrap().parse().unwrap();
    let day = received.format("%Y/%m/%d");
    let object = dir.path().join(format!("stage/LOANS/{day}/{id}.rejects.ndjson"));
    let stored: Vec<Value> =
        std::fs::read_to_string(&object).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(stored, lines, "the object holds exactly what the stream served");
    let ledger =
        sqlx::SqlitePool::connect(&format!("sqlite://{}", dir.path().join("snowgate.db").display())).await.unwrap();
    let kept: (i64, i64) =
        sqlx::query_as("SELECT COUNT(*), COUNT(record) FROM rejects").fetch_one(&ledger).await.unwrap();
    assert_eq!(kept, (125, 0));
    // Filtered pages read only the lines they return.
    let (status, page) =
        app.get_json(&format!("/v1/batches/{id}/rejects?code=type_mismatch&column=ID&after=100")).await;
    assert_eq!(status, 200);
    let indexes: Vec<u64> = page["rejects"].as_array().unwrap().iter().map(|r| r["index"].as_u64().unwrap()).collect();
    assert_eq!(indexes, (102..250).step_by(2).collect::<Vec<u64>>());
    assert_eq!(page["rejects"][0], lines[51]);
    app.shutdown().await;
}

#[tokio::test]
async fn health_docs_and_spec() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app(dir.path()).await;
    let (status, health) = app.get_json("/healthz").await;
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")));
    let (status, ready) = app.get_json("/readyz").await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["checks"]["stage"], "ok");

    let docs = app.client.get(app.url("/docs/")).send().await.unwrap();
    assert_eq!(docs.status(), 200);
    assert!(docs.text().await.unwrap().contains("swagger-ui"));
    let served: Value = app.client.get(app.url("/openapi.json")).send().await.unwrap().json().await.unwrap();
    let file: Value = serde_json::from_str(include_str!("../openapi/openapi.json")).unwrap();
    assert_eq!(served, file, "openapi/openapi.json is stale: run `cargo run -- openapi > openapi/openapi.json`");
    assert!(served["paths"]["/v1/tables/{table}/batches"]["post"].is_object());
    app.shutdown().await;
}

#[tokio::test]
async fn a_drift_override_from_the_config_file_takes_effect() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("snowgate.toml");
    std::fs::write(&file, "[defaults]\ndrift = \"evolve\"\n\n[tables.Strict]\ndrift = \"discard_row\"\n").unwrap();
    let mut config = snowgate::Config::load(Some(&file)).unwrap();
    let defaults = common::test_config(dir.path());
    (config.server, config.loader, config.defaults.linger) =
        (defaults.server, defaults.loader, defaults.defaults.linger);
    let app = common::spawn_app_with(config).await;
    let declaration = json!({"columns": [{"name": "id", "type": "NUMBER", "nullable": false}]});
    for table in ["strict", "loose"] {
        assert_eq!(app.put_table(table, declaration.clone()).await.status(), 201);
    }
    let (_, strict) = app.get_json("/v1/tables/STRICT").await;
    assert_eq!(strict["drift"], "discard_row", "declared without a policy: the config's [tables.Strict]");
    assert_eq!(strict["version"], 1, "{strict}");
    let (_, loose) = app.get_json("/v1/tables/loose").await;
    assert_eq!(loose["drift"], "evolve");

    let records = json!([{"id": 1, "extra": "x"}, {"id": 2}]);
    let strict: Value = app.post_json("strict", &records).await.json().await.unwrap();
    assert_eq!(strict["counts"]["accepted"], 1, "{strict}");
    assert_eq!(strict["rejects_by_code"], json!({"unknown_field": 1}), "{strict}");
    assert_eq!(strict["schema_changes"], json!([]));
    let loose: Value = app.post_json("loose", &records).await.json().await.unwrap();
    assert_eq!(loose["counts"]["accepted"], 2, "{loose}");
    assert_eq!(loose["schema_changes"][0]["column"], "EXTRA", "{loose}");

    // A policy given in a PUT wins over the config.
    let evolve = json!({"columns": [], "drift": "evolve"});
    let response = app.put_table("strict", evolve).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap()["version"], 2, "a PUT answers with the ledger's version");
    let (_, strict) = app.get_json("/v1/tables/strict").await;
    assert_eq!(strict["drift"], "evolve");
    app.shutdown().await;
}

/// One memory budget covers a body as it arrives, as it inflates and as it is parsed: while one
/// request holds part of it, a body whose parsing would not fit, even one that is tiny on the
/// wire, is refused with 503 and `Retry-After` before it is parsed, and the first still completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_and_inflation_are_reserved_against_the_memory_budget() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::test_config(dir.path());
    (config.limits.memory_budget_bytes, config.limits.max_decompressed_bytes) = (4 << 20, 1 << 20);
    config.limits.max_body_bytes = 1 << 20;
    let app = common::spawn_app_with(config).await;
    app.declare_loans().await;

    // A partner that declares a 1,000 KB body, sends most of it and stalls holds 1,000 KB.
    let body = format!("{}\n{}\n{}\n", loan(0), " ".repeat(1000 * 1024 - 1024), loan(1));
    let (head, tail) = body.as_bytes().split_at(body.len() - 200);
    let address = app.base.trim_start_matches("http://").to_string();
    let mut stalled = tokio::net::TcpStream::connect(&address).await.unwrap();
    let request = format!(
        "POST /v1/tables/loans/batches HTTP/1.1\r\nhost: {address}\r\ncontent-type: application/x-ndjson\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stalled.write_all(request.as_bytes()).await.unwrap();
    stalled.write_all(head).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;

    let expect_over_budget = |response: reqwest::Response| async move {
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()["retry-after"], "1");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "over_budget", "{body}");
    };
    // 900 KB of text would hold about 3.6 MB while parsed: more than the 3 MB left.
    let big = format!("[{}{{}}]", " ".repeat(900 * 1024));
    expect_over_budget(app.client.post(app.url("/v1/tables/loans/batches")).body(big.clone()).send().await.unwrap())
        .await;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(big.as_bytes()).unwrap();
    let bomb = gz.finish().unwrap();
    assert!(bomb.len() < 16 * 1024);
    let bomb = app.client.post(app.url("/v1/tables/loans/batches")).header("content-encoding", "gzip").body(bomb);
    expect_over_budget(bomb.send().await.unwrap()).await;

    // The stalled partner finishes; its batch is staged as usual.
    stalled.write_all(tail).await.unwrap();
    let mut answer = String::new();
    stalled.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    assert!(answer.contains("\"accepted\":2"), "{answer}");
    app.shutdown().await;
}

/// A client that stalls in the middle of its body is answered 408 after `limits.body_idle_secs`
/// and lets go of the memory it held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_is_cut_off_and_lets_go_of_its_memory() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::test_config(dir.path());
    (config.limits.memory_budget_bytes, config.limits.max_decompressed_bytes) = (8 << 20, 1 << 20);
    config.limits.max_body_bytes = 1 << 20;
    config.limits.body_idle = Duration::from_secs(1);
    let app = common::spawn_app_with(config).await;
    app.declare_loans().await;

    let address = app.base.trim_start_matches("http://").to_string();
    let mut stalled = tokio::net::TcpStream::connect(&address).await.unwrap();
    let head = format!(
        "POST /v1/tables/loans/batches HTTP/1.1\r\nhost: {address}\r\ncontent-type: application/x-ndjson\r\n\
         content-length: {}\r\n\r\n",
        1000 * 1024
    );
    stalled.write_all(head.as_bytes()).await.unwrap();
    stalled.write_all(format!("{}\n", loan(0)).as_bytes()).await.unwrap();
    let started = std::time::Instant::now();
    let mut answer = vec![0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(10), stalled.read(&mut answer)).await.unwrap().unwrap();
    let answer = String::from_utf8_lossy(&answer[..read]).to_string();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(5), "cut off after {:?}", started.elapsed());

    // Its 1,000 KB are free again: a body that needs 7.2 to 7.5 MiB while parsed fits the 8 MiB
    // budget, which it would not beside the stalled request.
    let need = |body: &str| body.len() + snowgate::ingest::decode::parsed_footprint(body.as_bytes());
    let mut lines: Vec<String> = Vec::new();
    while need(&lines.join("\n")) < 7_200 << 10 {
        lines.push(loan(lines.len()).to_string());
    }
    let body = lines.join("\n");
    assert!(need(&body) < 7_500 << 10 && body.len() < 1 << 20, "{}", need(&body));
    let response = app.post_ndjson("loans", "", body).await;
    assert_eq!(response.status(), 202);
    app.shutdown().await;
}

/// A client that never finishes its headers is disconnected after `server.header_timeout_secs`.
#[tokio::test]
async fn half_sent_headers_are_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::test_config(dir.path());
    config.server.header_timeout = Duration::from_secs(1);
    let app = common::spawn_app_with(config).await;
    let address = app.base.trim_start_matches("http://").to_string();
    let mut stalled = tokio::net::TcpStream::connect(&address).await.unwrap();
    stalled.write_all(b"POST /v1/tables/loans/batches HTTP/1.1\r\nhost: x\r\n").await.unwrap();
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stalled.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the connection was still open after 10 s");
    assert!(started.elapsed() < Duration::from_secs(5), "closed after {:?}", started.elapsed());
    // The gateway still serves everyone else.
    assert_eq!(app.get_json("/healthz").await.0, 200);
    app.shutdown().await;
}

/// 500 slow-loris clients (half stalled in their headers, half in their bodies) do not stop other
/// partners from being served, and every one of them is let go within its timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_stalled_connections_do_not_stop_other_partners() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::test_config(dir.path());
    config.server.header_timeout = Duration::from_secs(2);
    config.limits.body_idle = Duration::from_secs(2);
    let app = common::spawn_app_with(config).await;
    app.declare_loans().await;
    let address = app.base.trim_start_matches("http://").to_string();
    let mut stalled = Vec::new();
    for i in 0..500 {
        let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
        let request = if i % 2 == 0 {
            "POST /v1/tables/loans/batches HTTP/1.1\r\nhost: x\r\n".to_string()
        } else {
            format!("POST /v1/tables/loans/batches HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n[{}", loan(i))
        };
        stream.write_all(request.as_bytes()).await.unwrap();
        stalled.push(stream);
    }
    let started = std::time::Instant::now();
    for i in 0..5 {
        let response = app.post_json("loans", &json!([loan(10_000 + i)])).await;
        assert_eq!(response.status(), 202);
    }
    assert!(started.elapsed() < Duration::from_secs(5), "served in {:?}", started.elapsed());

    // Every stalled connection is closed (a 408 first, for those inside their body).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut timed_out_bodies = 0;
    for mut stream in stalled {
        let mut answer = Vec::new();
        tokio::time::timeout_at(deadline, stream.read_to_end(&mut answer)).await.expect("closed in time").ok();
        timed_out_bodies += usize::from(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 408"));
    }
    assert_eq!(timed_out_bodies, 250);
    app.shutdown().await;
}

/// Past `server.max_concurrent_requests` API requests in flight, the next is refused at once with
/// 503 `over_capacity`; health probes are not counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_past_the_concurrency_cap_are_shed_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::test_config(dir.path());
    config.server.max_concurrent_requests = 1;
    let app = common::spawn_app_with(config).await;
    app.declare_loans().await;
    // One request in flight: its body never finishes.
    let address = app.base.trim_start_matches("http://").to_string();
    let mut held = tokio::net::TcpStream::connect(&address).await.unwrap();
    held.write_all(b"POST /v1/tables/loans/batches HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n[")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = std::time::Instant::now();
    let response = app.post_json("loans", &json!([loan(1)])).await;
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "over_capacity", "{body}");
    assert!(started.elapsed() < Duration::from_secs(2), "refused at once, not queued");
    assert_eq!(app.get_json("/healthz").await.0, 200);

    drop(held);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.post_json("loans", &json!([loan(2)])).await.status(), 202, "the slot is free again");
    app.shutdown().await;
}

#[tokio::test]
async fn a_replay_corrects_each_reject_once_under_its_original_index() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app(dir.path()).await;
    app.declare_loans().await;
    let records = json!([loan(0), {"id": "bad"}, loan(2), {"id": null}, {"id": "worse"}]);
    let response = app.client.post(app.url("/v1/tables/loans/batches?wait=loaded")).json(&records).send().await;
    let original: Value = response.unwrap().json().await.unwrap();
    assert_eq!(original["counts"], json!({"received": 5, "accepted": 2, "rejected": 3, "loaded": 2}));
    let id = original["id"].as_str().unwrap().to_string();
    let replay_url = |query: &str| app.url(&format!("/v1/batches/{id}/replay{query}"));
    let replay = |body: Value, query: &'static str| app.client.post(replay_url(query)).json(&body).send();

    // Whole-request refusals say what and where; nothing is stored.
    let refusal = |response: reqwest::Response| async move {
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap();
        (status, body["error"]["code"].as_str().unwrap().to_string(), body["error"]["details"].clone())
    };
    let (status, code, details) = refusal(replay(json!([{"index": 1}]), "").await.unwrap()).await;
    assert_eq!((status, code.as_str(), &details["pointer"]), (422, "invalid_replay", &json!("/0/record")));
    let (status, code, details) = refusal(
        replay(json!({"records": [{"index": 0, "record": {}}, {"index": 99, "record": {}}]}), "").await.unwrap(),
    )
    .await;
    assert_eq!((status, code.as_str(), &details["indexes"]), (422, "invalid_replay", &json!([0, 99])));
    let twice = json!([{"index": 1, "record": loan(1)}, {"index": 1, "record": loan(1)}]);
    let (status, code, details) = refusal(replay(twice, "").await.unwrap()).await;
    assert_eq!((status, code.as_str(), &details["pointer"]), (422, "invalid_replay", &json!("/1/index")));
    let (status, code, _) = refusal(
        app.client
            .post(app.url(&format!("/v1/batches/{}/replay", uuid::Uuid::now_v7())))
            .json(&json!([]))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, code.as_str()), (404, "batch_not_found"));

    // A dry run validates under the original indexes and holds nothing.
    let response =
        replay(json!([{"index": 1, "record": loan(1)}, {"index": 3, "record": {"id": null}}]), "?dry_run=true");
    let report: Value = response.await.unwrap().json().await.unwrap();
    assert_eq!(report["counts"], json!({"received": 2, "accepted": 1, "rejected": 1, "loaded": 0}));
    assert_eq!(report["rejects"][0]["index"], 3);

    // Record 1 fixed, record 3 still bad: the replay's reject keeps the original index.
    let response =
        replay(json!([{"index": 1, "record": loan(1)}, {"index": 3, "record": {"id": null}}]), "?wait=loaded");
    let fix: Value = response.await.unwrap().json().await.unwrap();
    assert_eq!(fix["status"], "loaded", "{fix}");
    assert_eq!(fix["replay_of"], json!(id));
    assert_eq!(fix["counts"], json!({"received": 2, "accepted": 1, "rejected": 1, "loaded": 1}));
    let fix_id = fix["id"].as_str().unwrap().to_string();
    let (_, rejects) = app.get_json(&format!("/v1/batches/{fix_id}/rejects")).await;
    assert_eq!(rejects["rejects"][0]["index"], 3);
    let (_, batch) = app.get_json(&format!("/v1/batches/{id}")).await;
    assert_eq!((batch["fixed"].clone(), batch["fixing"].clone()), (json!(1), json!(0)));

    // A loaded correction is not loaded again; a record rejected again may be replayed again,
    // here as NDJSON and through the replay's own id (it corrects the same batch).
    let (status, code, details) = refusal(replay(json!([{"index": 1, "record": loan(1)}]), "").await.unwrap()).await;
    assert_eq!((status, code.as_str(), &details["batch_id"]), (409, "already_replayed", &json!(fix_id)));
    let lines = format!("{}\n{}\n", json!({"index": 3, "record": loan(3)}), json!({"index": 4, "record": loan(4)}));
    let response = app
        .client
        .post(app.url(&format!("/v1/batches/{fix_id}/replay?wait=loaded")))
        .header("content-type", "application/x-ndjson")
        .body(lines)
        .send()
        .await
        .unwrap();
    let second: Value = response.json().await.unwrap();
    assert_eq!(second["counts"]["loaded"], 2, "{second}");
    assert_eq!(second["replay_of"], json!(id));
    let (_, batch) = app.get_json(&format!("/v1/batches/{id}")).await;
    assert_eq!(batch["fixed"], 3, "every reject of the batch is fixed");
    let (_, list) = app.get_json("/v1/batches?limit=1000").await;
    let listed = list["batches"].as_array().unwrap().iter().find(|b| b["id"] == json!(id)).unwrap().clone();
    assert_eq!(listed["fixed"], 3);
    app.shutdown().await;

    // In the warehouse: each index of the original loaded once, under the batch that loaded it.
    let rows = duckdb_query(
        dir.path(),
        "SELECT CAST(_RECORD_INDEX AS VARCHAR), CAST(_BATCH_ID AS VARCHAR) FROM LOANS ORDER BY _RECORD_INDEX",
    );
    let indexes: Vec<&str> = rows.iter().map(|r| r[0].as_deref().unwrap()).collect();
    assert_eq!(indexes, ["0", "1", "2", "3", "4"]);
    assert_eq!(rows[1][1].as_deref(), Some(fix_id.as_str()));
    assert_eq!(rows[0][1].as_deref(), Some(id.as_str()));
}

#[tokio::test]
async fn numbers_land_exactly_however_long_they_are() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app(dir.path()).await;
    let columns =
        json!({"columns": [{"name": "id", "type": "NUMBER(38,0)"}, {"name": "amount", "type": "NUMBER(38,10)"}]});
    assert_eq!(app.put_table("exact", columns).await.status(), 201);
    let nines = "9".repeat(38);
    let amount = "1234567890123456789012345678.0123456789";
    // A 39-digit id is out of range; a new field with a 30-digit integer becomes NUMBER(38,0).
    let body = format!(
        "{{\"id\": {nines}, \"amount\": {amount}}}\n{{\"id\": 1{nines}}}\n{{\"id\": 1, \"big\": 123456789012345678901234567890}}\n"
    );
    let response = app.post_ndjson("exact", "?wait=loaded", body).await;
    let batch: Value = response.json().await.unwrap();
    assert_eq!(batch["status"], "loaded", "{batch}");
    assert_eq!(batch["rejects_by_code"], json!({"out_of_range": 1}));
    assert_eq!(batch["schema_changes"][0]["type"], "NUMBER(38,0)", "{batch}");
    app.shutdown().await;
    let rows = duckdb_query(
        dir.path(),
        "SELECT CAST(ID AS VARCHAR), CAST(AMOUNT AS VARCHAR), CAST(BIG AS VARCHAR) FROM EXACT ORDER BY _RECORD_INDEX",
    );
    assert_eq!(rows[0][0].as_deref(), Some(nines.as_str()));
    assert_eq!(rows[0][1].as_deref(), Some(amount));
    assert_eq!(rows[1][2].as_deref(), Some("123456789012345678901234567890"));
}

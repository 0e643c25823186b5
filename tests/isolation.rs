//! Rows the warehouse refuses are isolated by group testing, on DuckDB and on Snowflake
//! (fakesnow): the warehouse changes behind the gateway's back, so records the gateway accepts
//! are refused by COPY. Exactly those rows become rejects (stage `warehouse`, code `warehouse_rejected`,
//! with the row as loaded and its index), every other row loads once, the batch reconciles
//! (received = loaded + rejected), and the COPY statements stay within k·⌈log2 n⌉ + 9.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use common::production::{one_number, Peers};
use common::{serve_app, test_config, TestApp};
use serde_json::{json, Value};
use snowgate::warehouse::duckdb::DuckDbWarehouse;
use snowgate::warehouse::Warehouse;
use snowgate::App;

/// Every page of a batch's rejects that `filter` (query parameters) selects, by record index.
async fn all_rejects(app: &TestApp, id: &str, filter: &str) -> BTreeMap<u64, Value> {
    let mut rejects = BTreeMap::new();
    let mut after = String::new();
    loop {
        let (status, page) = app.get_json(&format!("/v1/batches/{id}/rejects?limit=1000{filter}{after}")).await;
        assert_eq!(status, 200, "{page}");
        for reject in page["rejects"].as_array().unwrap() {
            rejects.insert(reject["index"].as_u64().unwrap(), reject.clone());
        }
        match page["next"].as_str() {
            Some(next) => after = format!("&after={next}"),
            None => return rejects,
        }
    }
}

/// COPY statements a batch took: the distinct statements named on its files (the refused and
/// the loaded ones; a part split without a COPY of its own names none).
fn statements(batch: &Value) -> usize {
    let ids: BTreeSet<&str> =
        batch["files"].as_array().unwrap().iter().filter_map(|f| f["query_id"].as_str()).collect();
    ids.len()
}

/// Checks a final batch of `received` records: `gateway` rejected by the gateway with their
/// codes, `refused` rejected by the warehouse, everything else loaded. Returns the statements.
async fn check_batch(
    app: &TestApp,
    batch: &Value,
    received: usize,
    gateway: &BTreeMap<u64, (&str, String)>,
    refused: &BTreeSet<u64>,
    names_refusals: bool,
) -> usize {
    let id = batch["id"].as_str().unwrap();
    assert_eq!(batch["status"], "loaded", "{batch}");
    let rejected = gateway.len() + refused.len();
    let counts = json!({"received": received, "accepted": received - gateway.len(), "rejected": rejected,
        "loaded": received - rejected});
    assert_eq!(batch["counts"], counts, "received = loaded + rejected");
    assert_eq!(batch["rejects_by_code"]["warehouse_rejected"], refused.len(), "{}", batch["rejects_by_code"]);

    let rejects = all_rejects(app, id, "").await;
    let by_warehouse = all_rejects(app, id, "&code=warehouse_rejected").await;
    assert_eq!(by_warehouse.keys().copied().collect::<BTreeSet<u64>>(), *refused, "filtered by code");
    let about_id: BTreeSet<u64> = all_rejects(app, id, "&column=id").await.keys().copied().collect();
    let expected_about_id: BTreeSet<u64> =
        gateway.iter().filter(|(_, (_, pointer))| pointer == "/id").map(|(i, _)| *i).collect();
    assert_eq!(about_id, expected_about_id, "filtered by column, named as the field was");
    let indexes: BTreeSet<u64> = rejects.keys().copied().collect();
    let expected: BTreeSet<u64> = gateway.keys().copied().chain(refused.iter().copied()).collect();
    assert_eq!(indexes, expected, "exactly the defective records are rejected");
    for (index, (code, pointer)) in gateway {
        assert_eq!(rejects[index]["stage"], "gateway");
        assert_eq!(rejects[index]["errors"][0]["code"], *code, "{}", rejects[index]);
        assert_eq!(rejects[index]["errors"][0]["path"], *pointer, "{}", rejects[index]);
    }
    for index in refused {
        let reject = &rejects[index];
        assert_eq!(reject["stage"], "warehouse", "{reject}");
        assert_eq!(reject["errors"][0]["code"], "warehouse_rejected", "{reject}");
        assert!(!reject["errors"][0]["message"].as_str().unwrap().is_empty(), "{reject}");
        // The row as it was loaded, so that the partner can fix and resend it.
        assert_eq!(reject["record"]["ID"], json!(index), "{reject}");
    }
    // The batch lists each statement, and the loaded ones account for every loaded row.
    let copies = batch["copies"].as_array().unwrap();
    let statements = copies.len();
    assert_eq!(statements, self::statements(batch), "one entry per statement named on the files");
    let loaded: u64 = copies.iter().filter(|c| c["outcome"] == "loaded").map(|c| c["rows"].as_u64().unwrap()).sum();
    assert_eq!(loaded as usize, received - rejected, "{copies:?}");
    // DuckDB names every statement; fakesnow gives refused ones no query id.
    if names_refusals {
        let refused_statements = copies.iter().filter(|c| c["outcome"] == "refused").count();
        assert!(refused_statements >= refused.len(), "each refused row was refused by a statement of its own");
    }
    let rows = (received - gateway.len()) as f64;
    // The search's bound (checked on every pattern in `src/loader/search.rs`), plus the first
    // COPY of the whole file.
    let bound = refused.len() * rows.log2().ceil() as usize + 9;
    println!("{} rows, {} refused: {statements} COPY statements (bound {bound})", rows, refused.len());
    assert!(statements <= bound, "{statements} COPY statements, bound {bound}");
    statements
}

/// A gateway on the embedded backends, with a handle on its DuckDB warehouse so that the test
/// can change the table behind its back.
async fn duckdb_app(config: snowgate::Config) -> (TestApp, Arc<DuckDbWarehouse>) {
    let path = config.server.data_dir.join("warehouse.duckdb");
    let built = App::build(config).await.unwrap();
    let (config, stage, ledger) = (built.config.clone(), built.stage.clone(), built.ledger.clone());
    drop(built);
    let duck = Arc::new(DuckDbWarehouse::open(&path, stage.clone()).unwrap());
    let warehouse: Arc<dyn Warehouse> = duck.clone();
    (serve_app(App::from_parts(config, stage, ledger, warehouse)).await, duck)
}

/// Past `loader.isolation_statements` COPY statements, the parts still refused fail whole
/// instead of being split further: the batch ends `failed`, naming why, and no more statements
/// ran than the cap (beside the first COPY of the whole file).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolation_stops_at_its_statement_cap() {
    const CAP: usize = 4;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.loader.isolation_statements = CAP as u32;
    let (app, duck) = duckdb_app(config).await;
    let declared =
        app.put_table("loans", json!({"columns": [{"name": "id", "type": "NUMBER", "nullable": false}]})).await;
    assert_eq!(declared.status(), 201);
    duck.connection()
        .unwrap()
        .execute_batch(
            "DROP TABLE LOANS;
             CREATE TABLE LOANS (ID DECIMAL(38,0) NOT NULL CHECK (ID <> 777), _BATCH_ID VARCHAR NOT NULL,
                 _RECORD_INDEX BIGINT NOT NULL, _INGESTED_AT TIMESTAMPTZ NOT NULL)",
        )
        .unwrap();
    let records: Vec<Value> = (0..1000).map(|i| json!({"id": i})).collect();
    let response = app.post_json("loans", &json!(records)).await;
    assert_eq!(response.status(), 202);
    let id = response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    let batch = app.wait_final(&id, Duration::from_secs(120)).await;
    assert_eq!(batch["status"], "failed", "{batch}");
    assert!(batch["error"].as_str().unwrap().contains("isolation stopped after 4 COPY statements"), "{batch}");
    assert!(statements(&batch) <= CAP + 1, "{} statements: {batch}", statements(&batch));
    assert_eq!(batch["counts"]["rejected"], 0, "no row was rejected for a refusal it never got");
    app.shutdown().await;
}

/// 100,000 records, 1% with defects the gateway catches (three kinds) and 14 that only the
/// warehouse refuses: a CHECK on ids ending in 0007 and a NOT NULL on NOTE, added to the DuckDB
/// table behind the gateway's back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_duckdb_refuses_are_isolated_and_every_other_row_loads() {
    const N: u64 = 100_000;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    // Claims are renewed every 1.7 s while the isolation works: renewals must never stall it.
    config.loader.lease = Duration::from_secs(5);
    let (app, duck) = duckdb_app(config).await;
    let declared = app
        .put_table(
            "loans",
            json!({"columns": [
                {"name": "id", "type": "NUMBER", "nullable": false},
                {"name": "amount", "type": "NUMBER(12,2)"},
                {"name": "code", "type": "VARCHAR(8)"},
                {"name": "note", "type": "VARCHAR"}
            ]}),
        )
        .await;
    assert_eq!(declared.status(), 201);
    duck.connection()
        .unwrap()
        .execute_batch(
            "DROP TABLE LOANS;
             CREATE TABLE LOANS (ID DECIMAL(38,0) NOT NULL CHECK (ID % 10000 <> 7), AMOUNT DECIMAL(12,2),
                 CODE VARCHAR, NOTE VARCHAR NOT NULL, _BATCH_ID VARCHAR NOT NULL, _RECORD_INDEX BIGINT NOT NULL,
                 _INGESTED_AT TIMESTAMPTZ NOT NULL)",
        )
        .unwrap();

    let (mut gateway, mut refused) = (BTreeMap::new(), BTreeSet::new());
    let records: Vec<Value> = (0..N)
        .map(|i| {
            let mut record = json!({"id": i, "amount": format!("{}.25", i % 5000), "code": "AB", "note": "ok"});
            if i % 100 == 13 {
                let (field, value, code) = match (i / 100) % 3 {
                    0 => ("id", Value::Null, "null_in_not_null"),
                    1 => ("amount", json!("abc"), "type_mismatch"),
                    _ => ("code", json!("TOO-LONG-CODE"), "too_long"),
                };
                record[field] = value;
                gateway.insert(i, (code, format!("/{field}")));
            } else if i % 10_000 == 7 || i % 25_000 == 1234 {
                if i % 25_000 == 1234 {
                    record["note"] = Value::Null;
                }
                refused.insert(i);
            }
            record
        })
        .collect();
    assert_eq!((gateway.len(), refused.len()), (1000, 14));
    let response = app.post_json("loans", &json!(records)).await;
    assert_eq!(response.status(), 202);
    let id = response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    let batch = app.wait_final(&id, Duration::from_secs(300)).await;
    check_batch(&app, &batch, N as usize, &gateway, &refused, true).await;
    app.shutdown().await;

    let conn = duck.connection().unwrap();
    let count = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap();
    let loaded = (N as usize - gateway.len() - refused.len()) as i64;
    assert_eq!(count("SELECT COUNT(*) FROM loans"), loaded);
    let distinct = "SELECT COUNT(*) FROM (SELECT DISTINCT _BATCH_ID, _RECORD_INDEX FROM loans)";
    assert_eq!(count(distinct), loaded, "no row twice");
    assert_eq!(count("SELECT COUNT(*) FROM loans WHERE ID % 10000 = 7"), 0);
}

/// Snowflake through fakesnow: a VARCHAR column dropped and re-added as NUMBER behind the
/// gateway's back; the notes that are not numbers are refused (a conversion error, 100038).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_snowflake_refuses_are_isolated_and_every_other_row_loads() {
    const N: u64 = 2_000;
    let peers = Peers::start().await;
    let app = common::spawn_app_with(peers.config(&peers.dir.path().join("gateway"))).await;
    let declared = app
        .put_table(
            "loans",
            json!({"columns": [{"name": "id", "type": "NUMBER", "nullable": false}, {"name": "note", "type": "VARCHAR"}]}),
        )
        .await;
    assert_eq!(declared.status(), 201);
    let warehouse = peers.warehouse();
    warehouse.query("ALTER TABLE LOANS DROP COLUMN NOTE").await.unwrap();
    warehouse.query("ALTER TABLE LOANS ADD COLUMN NOTE NUMBER(38,0)").await.unwrap();

    let refused: BTreeSet<u64> = [3, 777, 1999].into();
    let records: Vec<Value> = (0..N)
        .map(|i| json!({"id": i, "note": if refused.contains(&i) { "n/a".to_string() } else { i.to_string() }}))
        .collect();
    let response = app.post_json("loans", &json!(records)).await;
    assert_eq!(response.status(), 202);
    let id = response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    let batch = app.wait_final(&id, Duration::from_secs(300)).await;
    check_batch(&app, &batch, N as usize, &BTreeMap::new(), &refused, false).await;
    let reject = &all_rejects(&app, &id, "").await[&777];
    assert_eq!(reject["record"], json!({"ID": 777, "NOTE": "n/a"}), "{reject}");
    app.shutdown().await;

    let loaded = N - refused.len() as u64;
    assert_eq!(one_number(&warehouse, "SELECT COUNT(*) FROM LOANS").await, loaded.to_string());
    let distinct = "SELECT COUNT(*) FROM (SELECT DISTINCT \"_BATCH_ID\", \"_RECORD_INDEX\" FROM LOANS)";
    assert_eq!(one_number(&warehouse, distinct).await, loaded.to_string(), "no row twice");
    assert_eq!(one_number(&warehouse, "SELECT SUM(NOTE) FROM LOANS").await, {
        let sum: u64 = (0..N).filter(|i| !refused.contains(i)).sum();
        sum.to_string()
    });
}

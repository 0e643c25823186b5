//! Two gateways on one Postgres ledger, one stage and one warehouse: what one replica changes,
//! the other uses.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::postgres::PgSchema;
use common::{serve_app, test_config, TestApp};
use serde_json::{json, Value};
use snowgate::config::StageConfig;
use snowgate::stage::Stage;
use snowgate::warehouse::duckdb::DuckDbWarehouse;
use snowgate::warehouse::Warehouse;
use snowgate::App;

/// Two gateways (no loader) on one Postgres ledger, stage folder and DuckDB warehouse, each
/// trusting its cached tables for `schema_refresh`. The folder and schema live as long as the
/// first two values.
async fn two_replicas(schema_refresh: Duration) -> (tempfile::TempDir, PgSchema, TestApp, TestApp) {
    let dir = tempfile::tempdir().unwrap();
    let pg = PgSchema::create().await;
    let stage_url = format!("file://{}", dir.path().join("stage").display());
    let stage = Arc::new(Stage::open(&stage_url, &StageConfig::default()).unwrap());
    let warehouse: Arc<dyn Warehouse> =
        Arc::new(DuckDbWarehouse::open(&dir.path().join("w.duckdb"), stage.clone()).unwrap());
    let mut config = test_config(dir.path());
    config.server.schema_refresh = schema_refresh;
    config.loader.enabled = false;
    // Each replica has its own pool to the one schema, as separate processes would.
    let a = serve_app(App::from_parts(config.clone(), stage.clone(), pg.ledger().await, warehouse.clone())).await;
    let b = serve_app(App::from_parts(config, stage, pg.ledger().await, warehouse)).await;
    (dir, pg, a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declaration_or_policy_change_through_one_replica_is_used_by_the_other() {
    let (_dir, _pg, a, b) = two_replicas(Duration::from_millis(300)).await;

    let codes = json!({"columns": [{"name": "id", "type": "NUMBER", "nullable": false}]});
    assert_eq!(a.put_table("codes", codes).await.status(), 201);
    // B learns the table by ingesting into it, and caches it.
    let first: Value = b.post_json("codes", &json!([{"id": 1}])).await.json().await.unwrap();
    assert_eq!(first["counts"]["accepted"], 1, "{first}");

    // A adds a column with a length limit; B's cache does not have it yet.
    let wider = json!({"columns": [{"name": "code", "type": "VARCHAR(2)"}]});
    assert_eq!(a.put_table("codes", wider).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let response = b.post_json("codes", &json!([{"id": 2, "code": "ABC"}, {"id": 3, "code": "AB"}])).await;
    let batch: Value = response.json().await.unwrap();
    assert_eq!(batch["counts"]["accepted"], 1, "B validates against A's declaration: {batch}");
    assert_eq!(batch["rejects_by_code"], json!({"too_long": 1}), "{batch}");
    let (_, table) = b.get_json("/v1/tables/codes").await;
    assert_eq!(table["columns"][1]["type"], "VARCHAR(2)", "{table}");

    // A changes the table's drift policy; B follows it.
    let strict = json!({"columns": [], "drift": "discard_row"});
    assert_eq!(a.put_table("codes", strict).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let batch: Value = b.post_json("codes", &json!([{"id": 4, "colour": "red"}])).await.json().await.unwrap();
    assert_eq!(batch["rejects_by_code"], json!({"unknown_field": 1}), "B uses A's policy: {batch}");
    assert_eq!(batch["schema_changes"], json!([]), "{batch}");
    a.shutdown().await;
    b.shutdown().await;
}

/// A replica whose cache predates an alias another replica declared does not add a column for
/// the aliased field (which would shadow the alias for good): it re-reads the table under the
/// DDL lock, and the field lands in its column. Nor does it evolve a table frozen meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_replica_never_adds_a_column_for_a_new_alias() {
    // B trusts its cache for the whole test.
    let (_dir, _pg, a, b) = two_replicas(Duration::from_secs(600)).await;

    let loans = json!({"columns": [{"name": "id", "type": "NUMBER", "nullable": false}, {"name": "amount", "type": "NUMBER(12,2)"}]});
    assert_eq!(a.put_table("loans", loans).await.status(), 201);
    let first: Value = b.post_json("loans", &json!([{"id": 1, "amount": 1}])).await.json().await.unwrap();
    assert_eq!(first["counts"]["accepted"], 1, "B caches the table: {first}");

    let renamed = json!({"columns": [], "aliases": {"loanAmount": "amount"}});
    assert_eq!(a.put_table("loans", renamed).await.status(), 200);
    let batch: Value = b.post_json("loans", &json!([{"id": 2, "loanAmount": 5}])).await.json().await.unwrap();
    assert_eq!(batch["counts"]["accepted"], 1, "{batch}");
    assert_eq!(batch["schema_changes"], json!([]), "no LOANAMOUNT column: {batch}");
    // The same for a policy: A freezes the table, B (stale) adds no column for a new field.
    let frozen = json!({"columns": [], "drift": "freeze"});
    assert_eq!(a.put_table("loans", frozen).await.status(), 200);
    let batch: Value = b.post_json("loans", &json!([{"id": 3, "colour": "red"}])).await.json().await.unwrap();
    assert_eq!(batch["rejects_by_code"], json!({"unknown_field": 1}), "{batch}");
    let (_, table) = a.get_json("/v1/tables/loans").await;
    let names: Vec<&str> = table["columns"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["ID", "AMOUNT"]);
    a.shutdown().await;
    b.shutdown().await;
}

//! Schema drift as policy, end to end on DuckDB and on Snowflake (fakesnow): a partner sends
//! 1,000 records, then 1,000 carrying a field the table does not have, under each policy.

mod common;

use std::time::Duration;

use common::production::{one_number, Peers};
use common::{spawn_app_with, test_config, TestApp};
use serde_json::{json, Value};
use snowgate::config::TableOverrides;
use snowgate::schema::{DriftPolicy, TableName};
use snowgate::warehouse::snowflake::SnowflakeWarehouse;

const N: usize = 1000;

fn records(from: usize, with_reference: bool) -> Value {
    let records: Vec<Value> = (from..from + N)
        .map(|i| {
            let mut record = json!({"id": i, "amount": format!("{i}.50")});
            if with_reference {
                record["partner_reference_id"] = json!(format!("ref-{i}"));
            }
            record
        })
        .collect();
    Value::Array(records)
}

async fn post(app: &TestApp, table: &str, body: &Value) -> (u16, Value) {
    let response = app.post_json(table, body).await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn declare(app: &TestApp, table: &str, drift: Option<&str>) {
    let mut declaration = json!({"columns": [
        {"name": "id", "type": "NUMBER", "nullable": false},
        {"name": "amount", "type": "NUMBER(12,2)"}
    ]});
    if let Some(drift) = drift {
        declaration["drift"] = json!(drift);
    }
    let response = app.put_table(table, declaration).await;
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
}

async fn loaded(app: &TestApp, body: &Value) -> Value {
    app.wait_final(body["id"].as_str().unwrap(), Duration::from_secs(60)).await
}

async fn column_names(app: &TestApp, table: &str) -> Vec<String> {
    let (_, table) = app.get_json(&format!("/v1/tables/{table}")).await;
    table["columns"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap().to_string()).collect()
}

/// A scenario run against a gateway; returns the warehouse checks `(sql, expected count)`.
type Scenario = for<'a> fn(&'a TestApp) -> futures::future::BoxFuture<'a, Vec<(String, usize)>>;

/// Runs `scenario` on the embedded backends and checks its answers in DuckDB.
async fn on_duckdb(scenario: Scenario) {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app_with(test_config(dir.path())).await;
    let expected = scenario(&app).await;
    app.shutdown().await;
    for (sql, n) in expected {
        assert_eq!(common::duckdb_count(dir.path(), &sql), n as i64, "{sql}");
    }
}

/// Runs `scenario` on the production backends and checks its answers in Snowflake (fakesnow).
async fn on_snowflake(scenario: Scenario) {
    let peers = Peers::start().await;
    let app = spawn_app_with(peers.config(&peers.dir.path().join("gateway"))).await;
    let expected = scenario(&app).await;
    let warehouse: SnowflakeWarehouse = peers.warehouse();
    for (sql, n) in expected {
        assert_eq!(one_number(&warehouse, &sql).await, n.to_string(), "{sql}");
    }
    app.shutdown().await;
}

/// Posts the scenario under every policy and checks what the API says; returns the queries whose
/// answers the warehouse must give, as `(sql, expected count)`.
async fn scenario(app: &TestApp) -> Vec<(String, usize)> {
    for policy in ["evolve", "rescue", "discard_value", "discard_row", "freeze"] {
        declare(app, &format!("t_{policy}"), Some(policy)).await;
        let (status, first) = post(app, &format!("t_{policy}"), &records(0, false)).await;
        assert_eq!(status, 202, "{policy}: {first}");
        assert_eq!(loaded(app, &first).await["counts"]["loaded"], N);
    }

    // evolve: the column appears; the first rows hold NULL there, the later ones the value.
    let (status, batch) = post(app, "t_evolve", &records(N, true)).await;
    assert_eq!(status, 202, "{batch}");
    let batch = loaded(app, &batch).await;
    assert_eq!(batch["counts"]["loaded"], N);
    assert_eq!(batch["schema_changes"][0]["column"], "PARTNER_REFERENCE_ID", "the batch lists the change");
    let (_, changes) = app.get_json("/v1/tables/t_evolve/schema-changes").await;
    assert_eq!(changes["changes"][0]["partner"], "anonymous", "the audit log names who changed it");

    // rescue: no new column; the value is kept as sent, and so is one that does not fit.
    let (status, batch) = post(app, "t_rescue", &records(N, true)).await;
    assert_eq!(status, 202, "{batch}");
    let batch = loaded(app, &batch).await;
    assert_eq!(
        (batch["counts"]["loaded"].as_u64(), batch["drift"]["rescued_values"].as_u64()),
        (Some(N as u64), Some(N as u64))
    );
    let (status, misfit) = post(app, "t_rescue", &json!([{"id": 5000, "amount": "N/A"}])).await;
    assert_eq!(status, 202, "{misfit}");
    assert_eq!(loaded(app, &misfit).await["counts"]["loaded"], 1, "a value that does not fit is rescued, not rejected");
    let columns = column_names(app, "t_rescue").await;
    assert_eq!(columns, ["ID", "AMOUNT", "_RESCUED_DATA"]);

    // discard_value: loaded without the field, counted.
    let (status, batch) = post(app, "t_discard_value", &records(N, true)).await;
    assert_eq!(status, 202, "{batch}");
    let batch = loaded(app, &batch).await;
    assert_eq!(batch["counts"]["loaded"], N);
    assert_eq!(batch["drift"]["discarded_values"], N);
    assert_eq!(column_names(app, "t_discard_value").await, ["ID", "AMOUNT"]);

    // discard_row: every record rejected with unknown_field (final at once: 200).
    let (status, batch) = post(app, "t_discard_row", &records(N, true)).await;
    assert_eq!(status, 200, "{batch}");
    assert_eq!(batch["status"], "rejected");
    assert_eq!(batch["rejects_by_code"]["unknown_field"], N);

    // freeze: the whole request refused, naming the field; nothing stored.
    let (status, refused) = post(app, "t_freeze", &records(N, true)).await;
    assert_eq!(status, 422, "{refused}");
    assert_eq!(refused["error"]["code"], "schema_frozen");
    assert_eq!(refused["error"]["details"]["fields"], json!(["partner_reference_id"]));
    let (_, listed) = app.get_json("/v1/batches?table=t_freeze").await;
    assert_eq!(listed["batches"].as_array().unwrap().len(), 1, "the frozen request made no batch");

    [
        ("SELECT COUNT(*) FROM T_EVOLVE WHERE PARTNER_REFERENCE_ID IS NULL", N),
        ("SELECT COUNT(*) FROM T_EVOLVE WHERE PARTNER_REFERENCE_ID LIKE 'ref-%'", N),
        ("SELECT COUNT(*) FROM T_RESCUE", 2 * N + 1),
        ("SELECT COUNT(*) FROM T_RESCUE WHERE _RESCUED_DATA IS NULL", N),
        ("SELECT COUNT(*) FROM T_RESCUE WHERE CAST(_RESCUED_DATA AS VARCHAR) LIKE '%partner_reference_id%ref-%'", N),
        ("SELECT COUNT(*) FROM T_RESCUE WHERE AMOUNT IS NULL AND CAST(_RESCUED_DATA AS VARCHAR) LIKE '%N/A%'", 1),
        ("SELECT COUNT(*) FROM T_DISCARD_VALUE", 2 * N),
        ("SELECT COUNT(*) FROM T_DISCARD_ROW", N),
        ("SELECT COUNT(*) FROM T_FREEZE", N),
    ]
    .into_iter()
    .map(|(sql, n)| (sql.to_string(), n))
    .collect()
}

#[tokio::test]
async fn every_policy_on_duckdb() {
    on_duckdb(|app| Box::pin(scenario(app))).await;
}

#[tokio::test]
async fn every_policy_on_snowflake() {
    on_snowflake(|app| Box::pin(scenario(app))).await;
}

#[tokio::test]
async fn the_config_policy_applies_to_a_table_declared_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    let frozen = TableOverrides { drift: Some(DriftPolicy::Freeze), ..Default::default() };
    config.tables.insert(TableName::parse("loans").unwrap(), frozen.clone());
    config.tables.insert(TableName::parse("explicit").unwrap(), frozen);
    config.limits.max_columns = 3;
    let app = spawn_app_with(config).await;
    declare(&app, "loans", None).await;
    let (status, refused) = post(&app, "loans", &json!([{"id": 1, "note": "x"}])).await;
    assert_eq!((status, refused["error"]["code"].as_str()), (422, Some("schema_frozen")), "{refused}");
    // A policy given in the declaration wins over the config's.
    declare(&app, "explicit", Some("evolve")).await;
    let (status, batch) = post(&app, "explicit", &json!([{"id": 1, "note": "x"}])).await;
    assert_eq!(status, 202, "{batch}");

    // The column cap: one more column fits (3), the others are rejects naming the limit.
    declare(&app, "capped", None).await;
    let (status, batch) = post(&app, "capped", &json!([{"id": 1, "a": 1}, {"id": 2, "b": 2, "c": 3}])).await;
    assert_eq!(status, 202, "{batch}");
    assert_eq!((batch["counts"]["accepted"].as_u64(), batch["counts"]["rejected"].as_u64()), (Some(1), Some(1)));
    assert_eq!(column_names(&app, "capped").await, ["ID", "AMOUNT", "A"]);
    let id = batch["id"].as_str().unwrap();
    let (_, rejects) = app.get_json(&format!("/v1/batches/{id}/rejects")).await;
    let message = rejects["rejects"][0]["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("limits.max_columns (3)"), "{message}");
    app.shutdown().await;
}

#[tokio::test]
async fn a_renamed_field_lands_in_its_aliased_column() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app_with(test_config(dir.path())).await;
    let declaration = json!({
        "columns": [{"name": "id", "type": "NUMBER", "nullable": false}, {"name": "amount", "type": "NUMBER(12,2)"}],
        "drift": "freeze",
        "aliases": {"loanAmount": "amount"}
    });
    let response = app.put_table("loans", declaration).await;
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    let (_, table) = app.get_json("/v1/tables/loans").await;
    assert_eq!(table["aliases"], json!({"LOANAMOUNT": "AMOUNT"}));
    // Even a frozen table takes the renamed field: it is not unknown.
    let (status, batch) = post(&app, "loans", &json!([{"id": 1, "loanAmount": "12.50"}, {"id": 2, "amount": 3}])).await;
    assert_eq!(status, 202, "{batch}");
    assert_eq!(loaded(&app, &batch).await["counts"]["loaded"], 2);
    assert_eq!(column_names(&app, "loans").await, ["ID", "AMOUNT"], "no column for the renamed field");
    // Both names in one record is one column named twice: a reject, never a silent pick.
    let (_, both) = post(&app, "loans", &json!([{"id": 3, "amount": 1, "LoanAmount": 2}])).await;
    assert_eq!(both["rejects_by_code"]["unknown_field"], 1, "{both}");
    // An alias must name a column, and must not be one.
    for aliases in [json!({"x": "missing"}), json!({"amount": "id"})] {
        let response = app.put_table("loans", json!({"columns": [], "aliases": aliases})).await;
        assert_eq!(response.status(), 400, "{aliases}");
    }
    app.shutdown().await;
    assert_eq!(common::duckdb_count(dir.path(), "SELECT COUNT(*) FROM loans WHERE amount = 12.50"), 1);
}

#[tokio::test]
async fn only_accepted_records_shape_the_table_and_redeclarations_never_change_it_silently() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app_with(test_config(dir.path())).await;
    let code = json!({"columns": [
        {"name": "id", "type": "NUMBER", "nullable": false},
        {"name": "code", "type": "VARCHAR(3)"}
    ]});
    assert_eq!(app.put_table("loans", code.clone()).await.status(), 201);

    // The only record with `ghost` is rejected for its null id: no GHOST column.
    let (status, batch) = post(&app, "loans", &json!([{"id": null, "ghost": "x"}, {"id": 1, "seen": true}])).await;
    assert_eq!(status, 202, "{batch}");
    assert_eq!((batch["counts"]["accepted"].as_u64(), batch["counts"]["rejected"].as_u64()), (Some(1), Some(1)));
    assert_eq!(column_names(&app, "loans").await, ["ID", "CODE", "SEEN"]);

    // Re-declaring a column differently is a conflict naming it; the same declaration is fine.
    assert_eq!(app.put_table("loans", code).await.status(), 200);
    for (column, why) in [
        (json!({"name": "code", "type": "VARCHAR"}), "dropping the length check"),
        (json!({"name": "code", "type": "VARCHAR(2)"}), "narrowing"),
        (json!({"name": "code", "type": "VARCHAR(3)", "nullable": false}), "tightening nullability"),
        (json!({"name": "id", "type": "NUMBER", "nullable": true}), "removing NOT NULL"),
    ] {
        let response = app.put_table("loans", json!({"columns": [column]})).await;
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap();
        assert_eq!((status, body["error"]["code"].as_str()), (409, Some("table_conflict")), "{why}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("CODE") || message.contains("ID"), "names the column: {message}");
    }
    // A declaration that leaves columns out keeps what the ledger enforces (DuckDB says VARCHAR).
    assert_eq!(app.put_table("loans", json!({"columns": [], "aliases": {"kode": "code"}})).await.status(), 200);
    let (status, batch) = post(&app, "loans", &json!([{"id": 2, "code": "ABCD"}])).await;
    assert_eq!((status, batch["rejects_by_code"]["too_long"].as_u64()), (200, Some(1)), "the length check stands");

    // The same for a rescue table's _RESCUED_DATA, which no declaration can name.
    declare(&app, "rescued", Some("rescue")).await;
    let (_, first) = post(&app, "rescued", &json!([{"id": 1, "extra": 1}])).await;
    assert_eq!(loaded(&app, &first).await["drift"]["rescued_values"], 1);
    assert_eq!(app.put_table("rescued", json!({"columns": [], "aliases": {"amt": "amount"}})).await.status(), 200);
    let (status, again) = post(&app, "rescued", &json!([{"id": 2, "extra": 2}])).await;
    assert_eq!(status, 202, "{again}");
    assert_eq!(loaded(&app, &again).await["drift"]["rescued_values"], 1, "still rescued after the re-declaration");
    app.shutdown().await;
}

/// Hostile field names each get a defined outcome, a column with a safe quoted name or a reject
/// naming why, and the table and its rows survive them; on DuckDB and on Snowflake.
async fn hostile_keys(app: &TestApp) -> Vec<(String, usize)> {
    declare(app, "hostile", None).await;
    let long = "k".repeat(300);
    let records = json!([
        {"id": 1, "a\"b": "quote"},
        {"id": 2, "x; DROP TABLE hostile; --": "sql"},
        {"id": 3, "ünïcode": "accents"},
        {"id": 4, "": "empty"},
        {"id": 5, long.clone(): "too long"},
        {"id": 6, "nul\u{0}byte": "nul"},
        {"id": 7, "Ref": 1, "ref": 2},
        {"id": 8, "_batch_id": "forged"},
    ]);
    let (status, batch) = post(app, "hostile", &records).await;
    assert_eq!(status, 202, "{batch}");
    let batch = loaded(app, &batch).await;
    assert_eq!(
        (batch["counts"]["loaded"].as_u64(), batch["counts"]["rejected"].as_u64()),
        (Some(4), Some(4)),
        "{batch}"
    );
    let id = batch["id"].as_str().unwrap();
    let (_, rejects) = app.get_json(&format!("/v1/batches/{id}/rejects")).await;
    let rejected: Vec<(u64, String)> = rejects["rejects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["index"].as_u64().unwrap(), r["errors"][0]["message"].as_str().unwrap().to_string()))
        .collect();
    let indexes: Vec<u64> = rejected.iter().map(|(i, _)| *i).collect();
    assert_eq!(indexes, [3, 4, 6, 7], "{rejected:?}");
    assert!(rejected[0].1.contains("empty"), "{rejected:?}");
    assert!(rejected[1].1.contains("longer than"), "{rejected:?}");
    assert!(rejected[2].1.contains("both name column REF"), "{rejected:?}");
    assert!(rejected[3].1.contains("reserved"), "{rejected:?}");
    let columns = column_names(app, "hostile").await;
    // REF comes from record 7, whose two keys are only ambiguous once the column exists.
    assert_eq!(columns, ["ID", "AMOUNT", "A_B", "X__DROP_TABLE_HOSTILE____", "_N_CODE", "NUL_BYTE", "REF"]);
    vec![
        ("SELECT COUNT(*) FROM HOSTILE".into(), 4),
        ("SELECT COUNT(*) FROM HOSTILE WHERE \"X__DROP_TABLE_HOSTILE____\" = 'sql'".into(), 1),
        ("SELECT COUNT(*) FROM HOSTILE WHERE NUL_BYTE = 'nul' AND A_B IS NULL".into(), 1),
    ]
}

#[tokio::test]
async fn hostile_keys_on_duckdb() {
    on_duckdb(|app| Box::pin(hostile_keys(app))).await;
}

#[tokio::test]
async fn hostile_keys_on_snowflake() {
    on_snowflake(|app| Box::pin(hostile_keys(app))).await;
}

#[tokio::test]
async fn the_drift_report_counts_mismatches_per_column_and_partner() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app_with(test_config(dir.path())).await;
    declare(&app, "loans", Some("discard_row")).await;
    let records = json!([
        {"id": 1, "amount": "N/A"}, {"id": 2, "amount": "N/A"}, {"id": 3, "amount": true},
        {"id": null, "amount": 1}, {"id": 5, "amount": 2, "surprise": 1}, {"id": 6, "amount": 3}
    ]);
    let (status, batch) = post(&app, "loans", &records).await;
    assert_eq!(status, 202, "{batch}");
    let (status, report) = app.get_json("/v1/tables/loans/drift?window_secs=3600").await;
    assert_eq!(status, 200, "{report}");
    assert_eq!((report["scanned"].as_u64(), report["truncated"].as_bool()), (Some(5), Some(false)));
    let amount = &report["columns"][0];
    assert_eq!((amount["column"].as_str(), amount["mismatches"].as_u64()), (Some("AMOUNT"), Some(3)), "{report}");
    assert_eq!(amount["by_partner"][0]["partner"], "anonymous");
    assert_eq!(amount["by_partner"][0]["codes"]["type_mismatch"], 3);
    let columns: Vec<&str> =
        report["columns"].as_array().unwrap().iter().map(|c| c["column"].as_str().unwrap()).collect();
    assert_eq!(columns.len(), 3, "AMOUNT, then ID and SURPRISE: {columns:?}");
    assert!(columns.contains(&"ID") && columns.contains(&"SURPRISE"), "{columns:?}");
    assert_eq!(app.get_json("/v1/tables/loans/drift?window_secs=0").await.0, 400);
    assert_eq!(app.get_json("/v1/tables/nothing/drift").await.0, 404);
    app.shutdown().await;
}

/// A re-declaration that widens a column (a longer VARCHAR, a NUMBER with more digits) is applied
/// in the warehouse and the ledger and audited with the type it replaced; rows staged before it
/// and values that only fit after it load. Returns the warehouse checks `(sql, expected count)`.
async fn widening(app: &TestApp) -> Vec<(String, usize)> {
    let narrow = json!({"columns": [
        {"name": "id", "type": "NUMBER", "nullable": false},
        {"name": "code", "type": "VARCHAR(3)"},
        {"name": "amount", "type": "NUMBER(5,2)"}
    ]});
    assert_eq!(app.put_table("widened", narrow).await.status(), 201);
    let (_, before) = post(app, "widened", &json!([{"id": 1, "code": "ABC", "amount": "123.45"}])).await;
    let (status, refused) = post(app, "widened", &json!([{"id": 2, "code": "ABCDE", "amount": "12345.67"}])).await;
    assert_eq!(status, 200, "{refused}");
    assert_eq!(refused["counts"]["rejected"], 1, "too long and too large before the widening: {refused}");

    let wide = json!({"columns": [
        {"name": "code", "type": "VARCHAR(5)"},
        {"name": "amount", "type": "NUMBER(12,2)"}
    ]});
    let response = app.put_table("widened", wide).await;
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    let (_, table) = app.get_json("/v1/tables/widened").await;
    let types: Vec<&str> = table["columns"].as_array().unwrap().iter().map(|c| c["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["NUMBER(38,0)", "VARCHAR(5)", "NUMBER(12,2)"], "{table}");
    let (_, changes) = app.get_json("/v1/tables/widened/schema-changes").await;
    let widened: Vec<(&str, &str, &str)> = changes["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| Some((c["column"].as_str()?, c["previous_type"].as_str()?, c["type"].as_str()?)))
        .collect();
    assert_eq!(widened, [("CODE", "VARCHAR(3)", "VARCHAR(5)"), ("AMOUNT", "NUMBER(5,2)", "NUMBER(12,2)")]);

    let (status, after) = post(app, "widened", &json!([{"id": 3, "code": "ABCDE", "amount": "12345.67"}])).await;
    assert_eq!(status, 202, "{after}");
    for batch in [&before, &after] {
        assert_eq!(loaded(app, batch).await["counts"]["loaded"], 1, "{batch}");
    }
    // Narrowing back, or changing the scale, is still a conflict.
    for column in [json!({"name": "code", "type": "VARCHAR(4)"}), json!({"name": "amount", "type": "NUMBER(13,3)"})] {
        let response = app.put_table("widened", json!({"columns": [column]})).await;
        assert_eq!(response.status(), 409, "{column}");
    }
    vec![
        ("SELECT COUNT(*) FROM widened WHERE code = 'ABCDE' AND amount = 12345.67".into(), 1),
        ("SELECT COUNT(*) FROM widened WHERE amount = 123.45".into(), 1),
    ]
}

#[tokio::test]
async fn widening_on_duckdb() {
    on_duckdb(|app| Box::pin(widening(app))).await;
}

#[tokio::test]
async fn widening_on_snowflake() {
    on_snowflake(|app| Box::pin(widening(app))).await;
}

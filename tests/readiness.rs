//! `/readyz` answers within its timeout while the loader's COPY is running.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{serve_app, test_config};
use snowgate::buffer::encode::{file_bytes, RowGroup};
use snowgate::ingest::coerce::Cell;
use snowgate::ingest::{Row, Rows};
use snowgate::schema::{Column, ColumnName, TableSchema};
use snowgate::warehouse::duckdb::DuckDbWarehouse;
use snowgate::warehouse::{StagedFile, Warehouse};
use snowgate::App;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readyz_stays_ready_during_a_long_copy() {
    let dir = tempfile::tempdir().unwrap();
    let built = App::build(test_config(dir.path())).await.unwrap();
    // The gateway's own warehouse, opened on the same file, runs the long COPY beside it.
    let (config, stage, ledger) = (built.config.clone(), built.stage.clone(), built.ledger.clone());
    drop(built);
    let duck = Arc::new(DuckDbWarehouse::open(&dir.path().join("warehouse.duckdb"), stage.clone()).unwrap());
    let warehouse: Arc<dyn Warehouse> = duck.clone();
    let app = serve_app(App::from_parts(config, stage.clone(), ledger, warehouse.clone())).await;

    let columns =
        vec![Column { name: ColumnName::normalize("N").unwrap(), ty: "NUMBER".parse().unwrap(), nullable: false }];
    warehouse.create_table("BIG", &columns).await.unwrap();
    let schema = TableSchema { name: "BIG".into(), columns };
    let rows: Vec<Row> = (0..1_000_000u64).map(|i| Row { index: i, cells: vec![Cell::Decimal(i as i128)] }).collect();
    let batch_id = uuid::Uuid::now_v7().to_string();
    let rows = Rows::from_rows(std::sync::Arc::new(schema.clone()), &rows).unwrap().finish().unwrap();
    let group = RowGroup { batch_id: &batch_id, ingested_at: 1_700_000_000_000_000, rows: &rows };
    stage.put_new("BIG/big.parquet", file_bytes(&schema, &[group]).unwrap()).await.unwrap();

    let copy = tokio::spawn(async move {
        warehouse.copy_files("BIG", &[StagedFile { path: "BIG/big.parquet".into(), columns: None }]).await
    });
    let (mut during, mut slowest) = (0, Duration::ZERO);
    while !copy.is_finished() {
        let started = Instant::now();
        let (status, body) = app.get_json("/readyz").await;
        slowest = slowest.max(started.elapsed());
        assert_eq!(status, 200, "{body}");
        if !copy.is_finished() {
            during += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(copy.await.unwrap().unwrap()[0].rows_loaded, 1_000_000);
    assert!(during > 0, "the COPY finished before a probe could overlap it");
    // Behind the COPY, the warehouse probe would have timed out (3 s) and /readyz answered 503.
    assert!(slowest < Duration::from_millis(2500), "/readyz took {slowest:?} during the COPY");
    app.shutdown().await;
}

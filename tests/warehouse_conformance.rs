//! One conformance suite for every warehouse backend: the same tests, each against a real engine.

mod common;

use std::sync::Arc;

use futures::future::BoxFuture;

use snowgate::buffer::encode::{arrow_type, file_bytes, RowGroup};
use snowgate::config::StageConfig;
use snowgate::ingest::coerce::Cell;
use snowgate::ingest::{Row, Rows};
use snowgate::schema::{Column, ColumnName, TableSchema};
use snowgate::stage::Stage;
use snowgate::warehouse::{CopyResult, CopyStatus, ErrorKind, StagedFile, Warehouse};

/// Runs SQL on the backend and returns rows of text (columns must be cast to text by the query).
type Peek = Box<dyn Fn(String) -> BoxFuture<'static, Vec<Vec<Option<String>>>> + Send + Sync>;

/// Which SQL dialect the peek queries speak.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Dialect {
    DuckDb,
    Snowflake,
}

struct Harness {
    warehouse: Arc<dyn Warehouse>,
    stage: Arc<Stage>,
    peek: Peek,
    dialect: Dialect,
    _peer: Option<common::fakesnow::Fakesnow>,
    _dir: tempfile::TempDir,
}

fn col(name: &str, ty: &str, nullable: bool) -> Column {
    Column { name: ColumnName::normalize(name).unwrap(), ty: ty.parse().unwrap(), nullable }
}

fn all_types() -> Vec<Column> {
    vec![
        col("ID", "NUMBER(38,0)", false),
        col("AMOUNT", "NUMBER(12,2)", true),
        col("RATIO", "FLOAT", true),
        col("NAME", "VARCHAR", true),
        col("CODE", "VARCHAR(8)", true),
        col("FLAG", "BOOLEAN", true),
        col("DAY", "DATE", true),
        col("AT_TIME", "TIME", true),
        col("AT_NTZ", "TIMESTAMP_NTZ", true),
        col("AT_TZ", "TIMESTAMP_TZ", true),
        col("DOC", "VARIANT", true),
        col("BLOB", "BINARY", true),
    ]
}

/// Writes rows as a stage file, the way the gateway does, and returns its path.
/// Stages a file written with `columns`, and returns it as the loader would hand it over.
async fn stage_file(h: &Harness, table: &str, columns: &[Column], rows: Vec<Row>, name: &str) -> StagedFile {
    let schema = TableSchema { name: table.into(), columns: columns.to_vec() };
    let rows = Rows::from_rows(std::sync::Arc::new(schema.clone()), &rows).unwrap().finish().unwrap();
    let bytes =
        file_bytes(&schema, &[RowGroup { batch_id: "b-1", ingested_at: 1_700_000_000_000_000, rows: &rows }]).unwrap();
    let path = format!("{table}/{name}.parquet");
    h.stage.put_new(&path, bytes).await.unwrap();
    StagedFile { path, columns: Some(columns.to_vec()) }
}

async fn count(h: &Harness, sql: &str) -> i64 {
    (h.peek)(sql.to_string()).await[0][0].as_deref().unwrap().parse().unwrap()
}

async fn describe_create_and_add_columns(h: Harness) {
    let w = &h.warehouse;
    assert!(w.describe("T").await.unwrap().is_none());
    w.create_table("T", &all_types()).await.unwrap();
    w.create_table("T", &all_types()).await.unwrap();
    let desc = w.describe("T").await.unwrap().expect("table exists");
    assert!(desc.has_metadata);
    assert_eq!(desc.columns.len(), all_types().len());
    for (got, want) in desc.columns.iter().zip(all_types()) {
        assert_eq!(got.name, want.name);
        assert_eq!(arrow_type(got.ty), arrow_type(want.ty), "{} described as {}", want.name, got.ty);
        assert_eq!(got.nullable, want.nullable, "{}", want.name);
    }
    let extra = [col("ADDED", "VARCHAR", true), col("ID", "NUMBER(38,0)", true)];
    w.add_columns("T", &extra).await.unwrap();
    w.add_columns("T", &extra).await.unwrap();
    let desc = w.describe("T").await.unwrap().unwrap();
    assert_eq!(desc.columns.last().unwrap().name, "ADDED");
    assert_eq!(desc.columns.len(), all_types().len() + 1);

    // A key is data, never SQL: a hostile column name is just a column.
    let hostile = col("X\"; DROP TABLE T; --", "VARCHAR", true);
    w.add_columns("T", std::slice::from_ref(&hostile)).await.unwrap();
    assert!(w.describe("T").await.unwrap().unwrap().columns.iter().any(|c| c.name == hostile.name));
}

async fn copy_is_idempotent_and_loads_by_name(h: Harness) {
    let w = &h.warehouse;
    let narrow = vec![col("ID", "NUMBER(38,0)", false)];
    w.create_table("T", &narrow).await.unwrap();
    let rows = (0..3).map(|i| Row { index: i, cells: vec![Cell::Decimal(i as i128 + 1)] }).collect();
    let path = stage_file(&h, "T", &narrow, rows, "first").await;
    // Added after the file was written: the file still loads, the new column is NULL.
    w.add_columns("T", &[col("LATER", "VARCHAR", true)]).await.unwrap();

    let results = w.copy_files("T", std::slice::from_ref(&path)).await.unwrap();
    assert_eq!(results.len(), 1);
    assert_eq!((results[0].status.clone(), results[0].rows_loaded), (CopyStatus::Loaded, 3));
    assert!(results[0].query_id.is_some());
    let again = w.copy_files("T", std::slice::from_ref(&path)).await.unwrap();
    assert_eq!(again[0].status, CopyStatus::Skipped, "load history makes a repeated COPY a no-op");
    assert_eq!(again[0].rows_loaded, 0, "nothing loaded by the repeated COPY");
    assert_eq!(count(&h, "SELECT CAST(COUNT(*) AS VARCHAR) FROM \"T\"").await, 3);
    assert_eq!(count(&h, "SELECT CAST(COUNT(*) AS VARCHAR) FROM \"T\" WHERE \"LATER\" IS NULL").await, 3);
    assert_eq!(
        count(&h, "SELECT CAST(COUNT(DISTINCT \"_RECORD_INDEX\") AS VARCHAR) FROM \"T\" WHERE \"_BATCH_ID\" = 'b-1'")
            .await,
        3
    );

    // A COPY of a loaded file and a new one loads only the new one, and records it: the next
    // COPY of both loads nothing.
    let rows = (0..2).map(|i| Row { index: i, cells: vec![Cell::Decimal(i as i128 + 10)] }).collect();
    let second = stage_file(&h, "T", &narrow, rows, "second").await;
    let both = [path.clone(), second.clone()];
    let mixed = w.copy_files("T", &both).await.unwrap();
    let paths: Vec<&str> = mixed.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, [path.path.as_str(), second.path.as_str()], "one result a file, in order");
    let outcome = |results: &[CopyResult], file: &StagedFile| {
        let result = results.iter().find(|r| r.path == file.path).expect("a result for every file");
        (result.status.clone(), result.rows_loaded)
    };
    assert_eq!(outcome(&mixed, &path), (CopyStatus::Skipped, 0));
    assert_eq!(outcome(&mixed, &second), (CopyStatus::Loaded, 2));
    let repeated = w.copy_files("T", &both).await.unwrap();
    assert_eq!(
        (outcome(&repeated, &path).0, outcome(&repeated, &second).0),
        (CopyStatus::Skipped, CopyStatus::Skipped)
    );
    assert_eq!(count(&h, "SELECT CAST(COUNT(*) AS VARCHAR) FROM \"T\"").await, 5);
}

async fn data_errors_load_nothing(h: Harness) {
    let w = &h.warehouse;
    let columns = vec![col("ID", "NUMBER(38,0)", false)];
    w.create_table("T", &columns).await.unwrap();
    let good = stage_file(&h, "T", &columns, vec![Row { index: 0, cells: vec![Cell::Decimal(1)] }], "good").await;
    // A file whose ID is text the warehouse cannot convert (written under a wrong schema).
    let text = vec![col("ID", "VARCHAR", true)];
    let bad = stage_file(&h, "T", &text, vec![Row { index: 0, cells: vec![Cell::Str("abc".into())] }], "bad").await;
    let result = w.copy_files("T", &[good.clone(), bad]).await;
    assert!(matches!(&result, Err(e) if e.kind == ErrorKind::Data), "{result:?}");
    assert_eq!(count(&h, "SELECT CAST(COUNT(*) AS VARCHAR) FROM \"T\"").await, 0, "all or nothing");
    let results = w.copy_files("T", &[good]).await.unwrap();
    assert_eq!(results[0].status, CopyStatus::Loaded);
    assert_eq!(count(&h, "SELECT CAST(COUNT(*) AS VARCHAR) FROM \"T\"").await, 1);
}

async fn every_type_round_trips(h: Harness) {
    let w = &h.warehouse;
    w.create_table("ALL_TYPES", &all_types()).await.unwrap();
    // fakesnow stores NUMBER(38,0) as a 64-bit integer; real Snowflake and DuckDB hold 38 digits.
    let (big, big_text) = match h.dialect {
        Dialect::DuckDb => (12345678901234567890123456789012345678, "12345678901234567890123456789012345678"),
        Dialect::Snowflake => (i64::MAX as i128, "9223372036854775807"),
    };
    let cells = vec![
        Cell::Decimal(big),
        Cell::Decimal(-1234),
        Cell::Float(0.25),
        Cell::Str("héllo".into()),
        Cell::Str("ABC".into()),
        Cell::Bool(true),
        Cell::Date(20_000),
        Cell::Time(3_723_000_001),
        Cell::Timestamp(1_700_000_000_123_456),
        Cell::Timestamp(1_700_000_000_000_000),
        Cell::Str(r#"{"a":[1,2]}"#.into()),
        Cell::Binary(vec![0xde, 0xad]),
    ];
    let nulls = std::iter::once(Cell::Decimal(2)).chain(std::iter::repeat_n(Cell::Null, 11)).collect();
    let rows = vec![Row { index: 0, cells }, Row { index: 1, cells: nulls }];
    let path = stage_file(&h, "ALL_TYPES", &all_types(), rows, "types").await;
    w.copy_files("ALL_TYPES", &[path]).await.unwrap();
    // Timestamps with a zone and binaries print differently per engine: compare their epoch and hex.
    let (tz_epoch, hex) = match h.dialect {
        Dialect::DuckDb => ("epoch_us(\"AT_TZ\")", "hex(\"BLOB\")"),
        Dialect::Snowflake => ("DATE_PART(epoch_microsecond, \"AT_TZ\")", "HEX_ENCODE(\"BLOB\")"),
    };
    let sql = format!(
        "SELECT CAST(\"ID\" AS VARCHAR), CAST(\"AMOUNT\" AS VARCHAR), CAST(\"RATIO\" AS VARCHAR), \"NAME\", \"CODE\",
                CAST(\"FLAG\" AS VARCHAR), CAST(\"DAY\" AS VARCHAR), CAST(\"AT_TIME\" AS VARCHAR),
                CAST(\"AT_NTZ\" AS VARCHAR), CAST({tz_epoch} AS VARCHAR), CAST(\"DOC\" AS VARCHAR), {hex}
         FROM \"ALL_TYPES\" ORDER BY \"_RECORD_INDEX\""
    );
    let got = (h.peek)(sql).await;
    let want: Vec<Option<String>> = [
        big_text,
        "-12.34",
        "0.25",
        "héllo",
        "ABC",
        "true",
        "2024-10-04",
        "01:02:03.000001",
        "2023-11-14 22:13:20.123456",
        "1700000000000000",
        r#"{"a":[1,2]}"#,
        "DEAD",
    ]
    .iter()
    .map(|s| Some(s.to_string()))
    .collect();
    assert_eq!(got[0], want);
    assert_eq!(got[1][0].as_deref(), Some("2"));
    assert!(got[1][1..11].iter().all(Option::is_none), "{:?}", got[1]);
}

/// Runs every suite test against one backend; `$make` builds a fresh harness.
macro_rules! warehouse_suite {
    ($module:ident, $make:expr) => {
        mod $module {
            use super::*;

            #[tokio::test]
            async fn describe_create_and_add_columns() {
                super::describe_create_and_add_columns($make.await).await;
            }

            #[tokio::test]
            async fn copy_is_idempotent_and_loads_by_name() {
                super::copy_is_idempotent_and_loads_by_name($make.await).await;
            }

            #[tokio::test]
            async fn data_errors_load_nothing() {
                super::data_errors_load_nothing($make.await).await;
            }

            #[tokio::test]
            async fn every_type_round_trips() {
                super::every_type_round_trips($make.await).await;
            }
        }
    };
}

async fn duckdb() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let stage = Arc::new(
        Stage::open(&format!("file://{}", dir.path().join("stage").display()), &StageConfig::default()).unwrap(),
    );
    let warehouse =
        snowgate::warehouse::duckdb::DuckDbWarehouse::open(&dir.path().join("w.duckdb"), stage.clone()).unwrap();
    let conn = Arc::new(std::sync::Mutex::new(warehouse.connection().unwrap()));
    let peek: Peek = Box::new(move |sql| {
        let conn = conn.clone();
        Box::pin(async move {
            let conn = conn.lock().unwrap();
            let mut statement = conn.prepare(&sql).unwrap();
            let mut rows = statement.query([]).unwrap();
            let mut out = Vec::new();
            while let Some(row) = rows.next().unwrap() {
                let n = row.as_ref().column_count();
                out.push((0..n).map(|i| row.get::<_, Option<String>>(i).unwrap()).collect());
            }
            out
        })
    });
    Harness { warehouse: Arc::new(warehouse), stage, peek, dialect: Dialect::DuckDb, _peer: None, _dir: dir }
}

/// Snowflake's REST API against fakesnow; the external stage points at the local stage folder.
async fn snowflake() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("stage");
    let stage = Arc::new(Stage::open(&format!("file://{}", folder.display()), &StageConfig::default()).unwrap());
    let peer = common::fakesnow::Fakesnow::start(dir.path()).await;
    let config = peer.config("SNOWGATE_STAGE");
    peer.prepare(&config, &folder.canonicalize().unwrap()).await;
    let warehouse = Arc::new(peer.warehouse(&config));
    let reader = warehouse.clone();
    let peek: Peek = Box::new(move |sql| {
        let reader = reader.clone();
        Box::pin(async move { reader.query(&sql).await.expect("peek query").rows })
    });
    Harness { warehouse, stage, peek, dialect: Dialect::Snowflake, _peer: Some(peer), _dir: dir }
}

warehouse_suite!(on_duckdb, duckdb());
warehouse_suite!(on_snowflake, snowflake());

/// The loader's COPY has a connection of its own: a readiness probe or a request's DESCRIBE
/// answers while a long COPY runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn duckdb_probes_and_describes_never_wait_behind_a_copy() {
    let harness = duckdb().await;
    let columns = vec![col("N", "NUMBER", false), col("NOTE", "VARCHAR", true)];
    harness.warehouse.create_table("BIG", &columns).await.unwrap();
    let schema = TableSchema { name: "BIG".into(), columns };
    let rows: Vec<Row> = (0..1_000_000u64)
        .map(|i| Row { index: i, cells: vec![Cell::Decimal(i as i128), Cell::Str(format!("note {i}"))] })
        .collect();
    let batch_id = uuid::Uuid::now_v7().to_string();
    let rows = Rows::from_rows(std::sync::Arc::new(schema.clone()), &rows).unwrap().finish().unwrap();
    let group = RowGroup { batch_id: &batch_id, ingested_at: 1_700_000_000_000_000, rows: &rows };
    let bytes = file_bytes(&schema, &[group]).unwrap();
    harness.stage.put_new("BIG/big.parquet", bytes).await.unwrap();

    let warehouse = harness.warehouse.clone();
    let copy = tokio::spawn(async move {
        warehouse.copy_files("BIG", &[StagedFile { path: "BIG/big.parquet".into(), columns: None }]).await
    });
    let mut answered_during_copy = 0;
    let mut slowest = std::time::Duration::ZERO;
    while !copy.is_finished() {
        let started = std::time::Instant::now();
        harness.warehouse.ping().await.unwrap();
        assert!(harness.warehouse.describe("BIG").await.unwrap().is_some());
        slowest = slowest.max(started.elapsed());
        if !copy.is_finished() {
            answered_during_copy += 1;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let results = copy.await.unwrap().unwrap();
    assert_eq!(results[0].rows_loaded, 1_000_000);
    assert!(answered_during_copy > 0, "the COPY finished before a probe could overlap it");
    assert!(slowest < std::time::Duration::from_secs(2), "a probe waited {slowest:?} behind the COPY");
}

/// Semi-structured values land as navigable JSON, not as JSON text, and files written with
/// different column lists load in one transaction, each with NULL where it has no column.
#[tokio::test]
async fn snowflake_variants_are_objects_and_older_files_load_null_in_newer_columns() {
    let h = snowflake().await;
    let w = &h.warehouse;
    let before = vec![col("ID", "NUMBER(38,0)", false)];
    w.create_table("DOCS", &before).await.unwrap();
    let old = stage_file(&h, "DOCS", &before, vec![Row { index: 0, cells: vec![Cell::Decimal(1)] }], "old").await;
    let after = vec![col("ID", "NUMBER(38,0)", false), col("V", "VARIANT", true)];
    w.add_columns("DOCS", &after[1..]).await.unwrap();
    let doc = Cell::Str(r#"{"a":{"b":1},"tags":["x","y"]}"#.into());
    let new = stage_file(&h, "DOCS", &after, vec![Row { index: 0, cells: vec![Cell::Decimal(2), doc] }], "new").await;
    let results = w.copy_files("DOCS", &[old, new]).await.unwrap();
    assert!(results.iter().all(|r| r.status == CopyStatus::Loaded && r.rows_loaded == 1), "{results:?}");
    assert_eq!(count(&h, "SELECT CAST(V:a.b AS NUMBER) FROM DOCS WHERE ID = 2").await, 1, "V:a.b navigates the object");
    assert_eq!(count(&h, "SELECT COUNT(*) FROM DOCS WHERE ID = 1 AND V IS NULL").await, 1, "the older file has no V");
}

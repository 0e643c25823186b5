//! The loader against real backends: a crash between COPY and the ledger update loads nothing twice.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use snowgate::budget::MemoryBudget;
use snowgate::buffer::{Buffers, FlushPolicy, Submission};
use snowgate::config::{LoaderConfig, StageConfig};
use snowgate::ingest::coerce::Cell;
use snowgate::ingest::{Accepted, Row, Rows};
use snowgate::ledger::sqlite::SqliteLedger;
use snowgate::ledger::{BatchStatus, Counts, Ledger, NewBatch, NewRejects};
use snowgate::loader::Loader;
use snowgate::schema::{Column, ColumnName, ColumnType, TableSchema};
use snowgate::stage::Stage;
use snowgate::warehouse::duckdb::DuckDbWarehouse;
use snowgate::warehouse::{StagedFile, Warehouse};
use tokio::sync::Notify;
use uuid::Uuid;

/// The embedded backends in `dir`: a local stage, a SQLite ledger and a DuckDB warehouse.
async fn backends(dir: &std::path::Path) -> (Arc<Stage>, Arc<dyn Ledger>, Arc<DuckDbWarehouse>) {
    let stage =
        Arc::new(Stage::open(&format!("file://{}", dir.join("stage").display()), &StageConfig::default()).unwrap());
    let url = format!("sqlite://{}", dir.join("ledger.db").display());
    let ledger: Arc<dyn Ledger> = Arc::new(SqliteLedger::connect(&url).await.unwrap());
    let warehouse = Arc::new(DuckDbWarehouse::open(&dir.join("w.duckdb"), stage.clone()).unwrap());
    (stage, ledger, warehouse)
}

/// Buffers over the test's stage and ledger, with a budget that never refuses.
fn buffers(stage: &Arc<Stage>, ledger: &Arc<dyn Ledger>) -> Buffers {
    Buffers::new(
        stage.clone(),
        ledger.clone(),
        MemoryBudget::new(1 << 30),
        Arc::new(Notify::new()),
        Duration::from_secs(10),
        Arc::new(snowgate::metrics::Metrics::new()),
        None,
    )
}

/// A loader over the test's backends that nothing else notifies.
fn loader(
    ledger: &Arc<dyn Ledger>,
    warehouse: Arc<dyn Warehouse>,
    stage: &Arc<Stage>,
    settings: LoaderConfig,
    owner: &str,
) -> Loader {
    let notify = || Arc::new(Notify::new());
    Loader::new(ledger.clone(), warehouse, stage.clone(), settings, owner.into(), notify(), notify())
}

/// Loader settings for tests: quick polls and retries, the given lease.
fn settings(lease: Duration) -> LoaderConfig {
    LoaderConfig {
        enabled: true,
        interval: Duration::from_millis(50),
        lease,
        max_files_per_copy: 100,
        retry_base: Duration::from_millis(50),
        configuration_retry: Duration::from_secs(60),
        ..LoaderConfig::default()
    }
}

#[tokio::test]
async fn copy_committed_but_not_recorded_is_skipped_on_retry() {
    let dir = tempfile::tempdir().unwrap();
    let (stage, ledger, duck) = backends(dir.path()).await;
    let warehouse: Arc<dyn Warehouse> = duck.clone();
    let columns = id_column();
    warehouse.create_table("T", &columns).await.unwrap();

    let buffers = buffers(&stage, &ledger);
    let id = Uuid::now_v7();
    let rows: Vec<Row> = (0..50).map(|i| Row { index: i, cells: vec![Cell::Decimal(i as i128)] }).collect();
    let batch = NewBatch {
        id,
        table: "T".into(),
        partner: "acme".parse().unwrap(),
        counts: Counts { received: 50, accepted: 50, rejected: 0, loaded: 0 },
        rejects_by_code: BTreeMap::new(),
        drift: Default::default(),
        received_at: Utc::now(),
        rejects: NewRejects::none(),
        replay_of: None,
    };
    let schema = Arc::new(TableSchema { name: "T".into(), columns });
    let policy =
        FlushPolicy { max_rows: 1000, max_bytes: 1 << 20, linger: Duration::from_millis(10), flush_at_bytes: 1 << 20 };
    buffers.submit(Submission { batch, rows: accepted(&schema, rows), grant: None }, policy).await.unwrap();

    // A loader claims the file, COPYs it, and dies before telling the ledger.
    let claimed = ledger.claim_files("crashed", Duration::from_millis(200), 10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    let staged = StagedFile { path: claimed[0].path.clone(), columns: claimed[0].columns.clone() };
    warehouse.copy_files("T", &[staged]).await.unwrap();
    assert_eq!(ledger.get_batch(id).await.unwrap().unwrap().status, BatchStatus::Loading);

    tokio::time::sleep(Duration::from_millis(300)).await;
    let settings = settings(Duration::from_secs(60));
    let loader = loader(&ledger, warehouse.clone(), &stage, settings, "survivor");
    assert_eq!(loader.round().await.unwrap(), 1, "the expired claim is taken over");
    let batch = ledger.get_batch(id).await.unwrap().unwrap();
    assert_eq!(batch.status, BatchStatus::Loaded);
    assert_eq!(batch.counts.loaded, 50);
    let conn = duck.connection().unwrap();
    let rows: i64 = conn.query_row("SELECT COUNT(*) FROM \"T\"", [], |r| r.get(0)).unwrap();
    assert_eq!(rows, 50, "loaded once, not twice");
    assert_eq!(loader.round().await.unwrap(), 0);
}

/// A file missing from the stage is a configuration problem (the stage is not the one the
/// gateway wrote to): it is held back, never failed, and the file beside it still loads.
#[tokio::test]
async fn a_file_missing_from_the_stage_holds_back_only_itself() {
    let dir = tempfile::tempdir().unwrap();
    let (stage, ledger, duck) = backends(dir.path()).await;
    let warehouse: Arc<dyn Warehouse> = duck;
    let columns = id_column();
    warehouse.create_table("T", &columns).await.unwrap();
    let schema = Arc::new(TableSchema { name: "T".into(), columns });
    let buffers = buffers(&stage, &ledger);
    let policy =
        FlushPolicy { max_rows: 1000, max_bytes: 1 << 20, linger: Duration::from_millis(10), flush_at_bytes: 1 << 20 };
    let mut ids = Vec::new();
    for n in 0..2u64 {
        let id = Uuid::now_v7();
        let rows: Vec<Row> = (0..10).map(|i| Row { index: i, cells: vec![Cell::Decimal(i as i128)] }).collect();
        let batch = NewBatch {
            id,
            table: "T".into(),
            partner: "acme".parse().unwrap(),
            counts: Counts { received: 10, accepted: 10, rejected: 0, loaded: 0 },
            rejects_by_code: BTreeMap::new(),
            drift: Default::default(),
            received_at: Utc::now(),
            rejects: NewRejects::none(),
            replay_of: None,
        };
        let submission = Submission { batch, rows: accepted(&schema, rows), grant: None };
        buffers.submit(submission, policy).await.unwrap();
        ids.push(id);
        if n == 0 {
            // The first file disappears from the stage after it was acknowledged.
            let path = ledger.get_batch(id).await.unwrap().unwrap().files[0].path.clone();
            std::fs::remove_file(dir.path().join("stage").join(&path)).unwrap();
        }
    }
    let settings = settings(Duration::from_secs(60));
    let health = Arc::new(snowgate::loader::LoaderHealth::default());
    let (staged, loaded) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let loader = Loader::new(ledger.clone(), warehouse, stage.clone(), settings, "me".into(), staged, loaded)
        .with_health(health.clone());
    assert_eq!(loader.round().await.unwrap(), 2, "both files claimed in one round");
    let missing = ledger.get_batch(ids[0]).await.unwrap().unwrap();
    assert_eq!(missing.status, BatchStatus::Loading, "held back, not failed: {missing:?}");
    assert_eq!(missing.files[0].status, snowgate::ledger::FileStatus::Staged);
    assert!(missing.files[0].error.as_deref().unwrap().contains("configuration"), "{missing:?}");
    let present = ledger.get_batch(ids[1]).await.unwrap().unwrap();
    assert_eq!(present.status, BatchStatus::Loaded, "the good file beside it loaded: {present:?}");
    let held = &health.status().configuration_errors["T"];
    assert_eq!(held.file.as_deref(), Some(missing.files[0].path.as_str()), "the good file's load did not hide it");
}

/// A COPY that outlasts its lease (twice over) keeps its claims (they are renewed while it runs), so no other
/// loader takes the files meanwhile; they still expire within one lease if the loader dies.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_long_copy_renews_its_claims() {
    use snowgate::buffer::encode::{file_bytes, RowGroup};
    use snowgate::ledger::{NewFile, StageCommit};

    let dir = tempfile::tempdir().unwrap();
    let (stage, ledger, duck) = backends(dir.path()).await;
    let warehouse: Arc<dyn Warehouse> = duck;
    let columns = id_column();
    warehouse.create_table("T", &columns).await.unwrap();
    let schema = TableSchema { name: "T".into(), columns };
    let batch_id = Uuid::now_v7();
    let rows: Vec<Row> = (0..1_000_000u64).map(|i| Row { index: i, cells: vec![Cell::Decimal(i as i128)] }).collect();
    let id = batch_id.to_string();
    let rows = accepted(&Arc::new(schema.clone()), rows);
    let bytes = file_bytes(&schema, &[RowGroup { batch_id: &id, ingested_at: 0, rows: &rows }]).unwrap();
    let file = NewFile {
        id: Uuid::now_v7(),
        table: "T".into(),
        path: "T/big.parquet".into(),
        rows: 1_000_000,
        bytes: 0,
        columns: vec![],
    };
    stage.put_new(&file.path, bytes).await.unwrap();
    let batch = NewBatch {
        id: batch_id,
        table: "T".into(),
        partner: "acme".parse().unwrap(),
        counts: Counts { received: 1_000_000, accepted: 1_000_000, rejected: 0, loaded: 0 },
        rejects_by_code: BTreeMap::new(),
        drift: Default::default(),
        received_at: Utc::now(),
        rejects: NewRejects::none(),
        replay_of: None,
    };
    let commit =
        StageCommit { file: Some(file), parts: vec![(batch_id, 1_000_000)], completed: vec![batch], pending: false };
    ledger.commit_stage(&commit).await.unwrap();

    let settings = settings(Duration::from_millis(300));
    let loader = loader(&ledger, warehouse, &stage, settings, "live");
    let round = tokio::spawn(async move { loader.round().await });
    let started = std::time::Instant::now();
    let mut checks_past_the_first_lease = 0;
    while !round.is_finished() {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if round.is_finished() {
            break;
        }
        let stolen = ledger.claim_files("other", Duration::from_secs(60), 10).await.unwrap();
        assert!(stolen.is_empty(), "a live COPY's file was claimed by another loader after {:?}", started.elapsed());
        if started.elapsed() > Duration::from_millis(600) {
            checks_past_the_first_lease += 1;
        }
    }
    assert_eq!(round.await.unwrap().unwrap(), 1);
    assert!(checks_past_the_first_lease > 0, "the COPY ended within its first lease; nothing was shown");
    assert_eq!(ledger.get_batch(batch_id).await.unwrap().unwrap().status, BatchStatus::Loaded);
}

/// Two requests of one table validated against the same number of columns in different orders
/// (two replicas added X and Y at once) never share a file: rows are written by position.
#[tokio::test]
async fn requests_with_columns_in_another_order_never_share_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let (stage, ledger, duck) = backends(dir.path()).await;
    let warehouse: Arc<dyn Warehouse> = duck.clone();
    let col =
        |name: &str, ty: ColumnType, nullable| Column { name: ColumnName::normalize(name).unwrap(), ty, nullable };
    let id = col("ID", ColumnType::INTEGER, false);
    let (x, y) = (col("X", ColumnType::VARCHAR, true), col("Y", ColumnType::INTEGER, true));
    warehouse.create_table("T", &[id.clone(), x.clone(), y.clone()]).await.unwrap();

    let buffers = buffers(&stage, &ledger);
    let policy =
        FlushPolicy { max_rows: 1000, max_bytes: 1 << 20, linger: Duration::from_millis(200), flush_at_bytes: 1 << 20 };
    let submission = |columns: Vec<Column>, cells: Vec<Cell>| {
        let batch = NewBatch {
            id: Uuid::now_v7(),
            table: "T".into(),
            partner: "acme".parse().unwrap(),
            counts: Counts { received: 1, accepted: 1, rejected: 0, loaded: 0 },
            rejects_by_code: BTreeMap::new(),
            drift: Default::default(),
            received_at: Utc::now(),
            rejects: NewRejects::none(),
            replay_of: None,
        };
        let schema = Arc::new(TableSchema { name: "T".into(), columns });
        Submission { batch, rows: accepted(&schema, vec![Row { index: 0, cells }]), grant: None }
    };
    let with_x = submission(vec![id.clone(), x.clone()], vec![Cell::Decimal(1), Cell::Str("x-value".into())]);
    let with_y = submission(vec![id.clone(), y.clone()], vec![Cell::Decimal(2), Cell::Decimal(42)]);
    let (a, b) = tokio::join!(buffers.submit(with_x, policy), buffers.submit(with_y, policy));
    a.unwrap();
    b.unwrap();

    let loader = loader(&ledger, warehouse.clone(), &stage, settings(Duration::from_secs(60)), "me");
    assert_eq!(loader.round().await.unwrap(), 2, "two files, one per column order");
    let conn = duck.connection().unwrap();
    let row = |id: i64| {
        conn.query_row("SELECT CAST(\"X\" AS VARCHAR), CAST(\"Y\" AS VARCHAR) FROM \"T\" WHERE \"ID\" = ?", [id], |r| {
            Ok((r.get::<_, Option<String>>(0)?, r.get::<_, Option<String>>(1)?))
        })
        .unwrap()
    };
    assert_eq!(row(1), (Some("x-value".into()), None));
    assert_eq!(row(2), (None, Some("42".into())));
}

/// A segment that reaches `flush_at_bytes` is written at once: a request bringing a file's worth
/// of rows is not held for the linger, and the smaller one waiting in the segment rides along.
#[tokio::test]
async fn a_segment_reaching_flush_at_bytes_is_written_without_its_linger() {
    let dir = tempfile::tempdir().unwrap();
    let (stage, ledger, _duck) = backends(dir.path()).await;
    let schema = Arc::new(TableSchema { name: "T".into(), columns: id_column() });
    let buffers = buffers(&stage, &ledger);
    let policy =
        FlushPolicy { max_rows: 1000, max_bytes: 1 << 20, linger: Duration::from_secs(600), flush_at_bytes: 4096 };
    let submission = |rows: u64| numbered(&schema, rows);
    let (small_id, small) = submission(2);
    let waiting = {
        let buffers = buffers.clone();
        tokio::spawn(async move { buffers.submit(small, policy).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "two rows wait for the linger");
    assert!(ledger.get_batch(small_id).await.unwrap().is_none(), "nothing is committed yet");

    // 400 rows of a NUMBER column take more than 4096 bytes of arrays (16 bytes a value).
    let (large_id, large) = submission(400);
    tokio::time::timeout(Duration::from_secs(10), buffers.submit(large, policy))
        .await
        .expect("written without waiting ten minutes")
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), waiting).await.expect("answered with it").unwrap().unwrap();
    let (small, large) =
        (ledger.get_batch(small_id).await.unwrap().unwrap(), ledger.get_batch(large_id).await.unwrap().unwrap());
    assert_eq!((small.status, large.status), (BatchStatus::Staged, BatchStatus::Staged));
    assert_eq!(small.files.len(), 1);
    assert_eq!(small.files[0].path, large.files[0].path, "one file holds both");
}

/// A request whose bytes alone call for more files than it has rows is split into one file a
/// row, never into pieces past its end.
#[tokio::test]
async fn a_request_split_by_bytes_gets_at_most_one_file_a_row() {
    let dir = tempfile::tempdir().unwrap();
    let (stage, ledger, _duck) = backends(dir.path()).await;
    let schema = Arc::new(TableSchema { name: "T".into(), columns: id_column() });
    let buffers = buffers(&stage, &ledger);
    let policy = FlushPolicy { max_rows: 1000, max_bytes: 1, linger: Duration::from_millis(10), flush_at_bytes: 1 };
    for rows in 1..=3u64 {
        let (id, submission) = numbered(&schema, rows);
        tokio::time::timeout(Duration::from_secs(10), buffers.submit(submission, policy)).await.unwrap().unwrap();
        let stored = ledger.get_batch(id).await.unwrap().unwrap();
        assert_eq!(stored.status, BatchStatus::Staged, "{rows} rows");
        assert_eq!(stored.files.len() as u64, rows, "one file a row for {rows} rows");
        assert_eq!(stored.files.iter().map(|f| f.rows).sum::<u64>(), rows);
    }
}

/// A round of many rows (more than two of DuckDB's row groups) is split among
/// `loader.parallel_copies` COPYs that run at once on DuckDB's load connections: appends from two
/// transactions to one table do not conflict, and every row loads once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_large_round_loads_in_parallel_copies_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let (stage, ledger, duck) = backends(dir.path()).await;
    let warehouse: Arc<dyn Warehouse> = duck.clone();
    let columns = id_column();
    warehouse.create_table("T", &columns).await.unwrap();
    let schema = Arc::new(TableSchema { name: "T".into(), columns });
    let buffers = buffers(&stage, &ledger);
    let policy = FlushPolicy {
        max_rows: 10_000,
        max_bytes: 64 << 20,
        linger: Duration::from_millis(10),
        flush_at_bytes: 64 << 20,
    };
    let mut ids = Vec::new();
    // 260,000 rows in files of 10,000: the least cut that leaves a row group (122,880) on both sides.
    for _ in 0..26 {
        let (id, submission) = numbered(&schema, 10_000);
        buffers.submit(submission, policy).await.unwrap();
        ids.push(id);
    }
    let settings = LoaderConfig { parallel_copies: 2, ..settings(Duration::from_secs(60)) };
    let loader = loader(&ledger, warehouse.clone(), &stage, settings, "parallel");
    assert_eq!(loader.round().await.unwrap(), 26, "one round claims every file");
    for id in &ids {
        let batch = ledger.get_batch(*id).await.unwrap().unwrap();
        assert_eq!((batch.status, batch.counts.loaded), (BatchStatus::Loaded, 10_000), "{id}");
    }
    let conn = duck.connection().unwrap();
    let (rows, distinct): (i64, i64) = conn
        .query_row("SELECT COUNT(*), COUNT(DISTINCT (\"_BATCH_ID\", \"_RECORD_INDEX\")) FROM \"T\"", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!((rows, distinct), (260_000, 260_000), "every row once");
    let (files, copies): (i64, i64) = conn
        .query_row("SELECT COUNT(*), COUNT(DISTINCT query_id) FROM \"_SNOWGATE_LOAD_HISTORY\"", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!((files, copies), (26, 2), "the round's 26 files went to two COPYs");
    assert_eq!(loader.round().await.unwrap(), 0);
}

/// Rows made of owned cells, as a request's accepted rows.
fn accepted(schema: &Arc<TableSchema>, rows: Vec<Row>) -> Accepted {
    Rows::from_rows(schema.clone(), &rows).unwrap().finish().unwrap()
}

/// The one column of table `T` in these tests: `ID NUMBER NOT NULL`.
fn id_column() -> Vec<Column> {
    vec![Column { name: ColumnName::normalize("ID").unwrap(), ty: ColumnType::INTEGER, nullable: false }]
}

/// A batch of `rows` accepted rows of table T, whose one NUMBER column holds each row's index.
fn numbered(schema: &Arc<TableSchema>, rows: u64) -> (Uuid, Submission) {
    let batch = NewBatch {
        id: Uuid::now_v7(),
        table: "T".into(),
        partner: "acme".parse().unwrap(),
        counts: Counts { received: rows, accepted: rows, rejected: 0, loaded: 0 },
        rejects_by_code: BTreeMap::new(),
        drift: Default::default(),
        received_at: Utc::now(),
        rejects: NewRejects::none(),
        replay_of: None,
    };
    let cells = (0..rows).map(|i| Row { index: i, cells: vec![Cell::Decimal(i as i128)] }).collect();
    (batch.id, Submission { batch, rows: accepted(schema, cells), grant: None })
}

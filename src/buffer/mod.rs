//! Per-table micro-batches: rows from many requests share one Parquet file and one ledger commit.
//!
//! A request's rows join the table's open segment; the segment is cut when it reaches its row or
//! byte limit, its linger time, or a file's worth of rows (`flush_at_bytes`), then written to the
//! stage and committed to the ledger, and every request with rows in it gets its answer. A request
//! larger than one file is split into files of its own: all but the last are committed as
//! `pending`, and the last commit makes them loadable, so nothing of a batch loads before the
//! whole batch was acknowledged.

pub mod encode;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{watch, Notify};
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::budget::{Grant, MemoryBudget};
use crate::ingest::Accepted;
use crate::ledger::{Ledger, LedgerError, NewBatch, NewFile, StageCommit};
use crate::metrics::SharedMetrics;
use crate::schema::TableSchema;
use crate::stage::recent::RecentFiles;
use crate::stage::{Stage, StageError};
use encode::RowGroup;

/// When a table's open segment becomes a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlushPolicy {
    pub max_rows: usize,
    pub max_bytes: usize,
    pub linger: Duration,
    /// Bytes of rows at which a segment is written without waiting for its linger.
    pub flush_at_bytes: usize,
}

impl FlushPolicy {
    /// A table's flush policy from its settings (defaults with its overrides applied).
    pub fn from_settings(settings: &crate::config::TableSettings) -> Self {
        FlushPolicy {
            max_rows: settings.max_rows_per_file,
            max_bytes: settings.max_bytes_per_file,
            linger: settings.linger,
            flush_at_bytes: settings.flush_at_bytes,
        }
    }
}

/// Why rows could not be made durable; the request that sent them gets no 202.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BufferError {
    #[error("gateway is over its memory budget")]
    OverBudget,
    #[error("gateway is shutting down")]
    ShuttingDown,
    #[error("stage unavailable: {0}")]
    StageUnavailable(String),
    #[error("stage refused access: {0}")]
    StageDenied(String),
    #[error("ledger unavailable: {0}")]
    LedgerUnavailable(String),
    #[error("flush failed: {0}")]
    Internal(String),
}

impl From<StageError> for BufferError {
    fn from(e: StageError) -> Self {
        match e {
            StageError::Unavailable(m) => BufferError::StageUnavailable(m),
            StageError::Denied(m) => BufferError::StageDenied(m),
            other => BufferError::Internal(other.to_string()),
        }
    }
}

impl From<LedgerError> for BufferError {
    fn from(e: LedgerError) -> Self {
        // One flush answers many requests, so the cause travels as text from here on.
        if e.is_unavailable() {
            BufferError::LedgerUnavailable(e.to_string())
        } else {
            BufferError::Internal(e.to_string())
        }
    }
}

type Outcome = Option<Result<(), BufferError>>;

/// Rows of one request inside a segment.
struct Entry {
    batch_id: Uuid,
    ingested_at: i64,
    rows: Accepted,
    /// The batch record, on the entry holding the batch's last rows.
    completes: Option<NewBatch>,
}

struct Segment {
    id: u64,
    schema: Arc<TableSchema>,
    entries: Vec<Entry>,
    rows: usize,
    bytes: usize,
    pending: bool,
    done: watch::Sender<Outcome>,
    /// The budget grants of the requests whose rows are here, released once the file is staged
    /// (even when a request gave up waiting: its rows are still here).
    grants: Vec<Grant>,
}

impl Segment {
    fn new(schema: Arc<TableSchema>, pending: bool) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Segment {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            schema,
            entries: Vec::new(),
            rows: 0,
            bytes: 0,
            pending,
            done: watch::channel(None).0,
            grants: Vec::new(),
        }
    }

    fn push(&mut self, entry: Entry, bytes: usize) {
        self.rows += entry.rows.len();
        self.bytes += bytes;
        self.entries.push(entry);
    }
}

#[derive(Default)]
struct TableBuffer {
    open: Option<Segment>,
}

struct Inner {
    stage: Arc<Stage>,
    ledger: Arc<dyn Ledger>,
    tables: Mutex<HashMap<String, Arc<Mutex<TableBuffer>>>>,
    flushes: TaskTracker,
    closing: AtomicBool,
    /// Shutdown has begun: rows are flushed as they come, without waiting for the linger.
    hurry: AtomicBool,
    budget: Arc<MemoryBudget>,
    /// Wakes the loader when a file is committed.
    staged: Arc<Notify>,
    /// Bound on a ledger commit (`ledger.timeout_secs`).
    commit_timeout: Duration,
    /// Where a flush's encoding, stage write and ledger commit are measured.
    metrics: SharedMetrics,
    /// Where a file's rows are kept for a loader in this process, when the warehouse has one.
    recent: Option<Arc<RecentFiles>>,
}

impl Inner {
    /// Commits to the ledger within `commit_timeout`. One that outlasts it answers its requests
    /// 503; if it lands after all, its batches are whole and load like any other.
    async fn commit(&self, commit: &StageCommit) -> Result<(), BufferError> {
        let started = std::time::Instant::now();
        match tokio::time::timeout(self.commit_timeout, self.ledger.commit_stage(commit)).await {
            Ok(done) => {
                done?;
                self.metrics.ledger_commit.observe(started.elapsed().as_secs_f64());
                Ok(())
            }
            Err(_) => Err(BufferError::LedgerUnavailable(format!(
                "the ledger did not commit within ledger.timeout_secs ({}s)",
                self.commit_timeout.as_secs()
            ))),
        }
    }
}

/// Copies of a segment's rows that encoding holds at its peak beside the rows' own arrays: the
/// Parquet pages of the row group being written, and the file.
const ENCODING_COPIES: usize = 2;

/// All table buffers of one gateway.
#[derive(Clone)]
pub struct Buffers {
    inner: Arc<Inner>,
}

/// One request's accepted rows, ready to buffer.
pub struct Submission {
    pub batch: NewBatch,
    /// The rows, with the schema they were checked against.
    pub rows: Accepted,
    /// The request's hold on the memory budget, kept until the rows are staged; without one,
    /// the rows' memory is reserved here.
    pub grant: Option<Grant>,
}

impl Buffers {
    pub fn new(
        stage: Arc<Stage>,
        ledger: Arc<dyn Ledger>,
        budget: Arc<MemoryBudget>,
        staged: Arc<Notify>,
        commit_timeout: Duration,
        metrics: SharedMetrics,
        recent: Option<Arc<RecentFiles>>,
    ) -> Self {
        Buffers {
            inner: Arc::new(Inner {
                stage,
                ledger,
                tables: Mutex::new(HashMap::new()),
                flushes: TaskTracker::new(),
                closing: AtomicBool::new(false),
                hurry: AtomicBool::new(false),
                budget,
                staged,
                commit_timeout,
                metrics,
                recent,
            }),
        }
    }

    /// Buffers a request's rows and returns once they are in the stage and the ledger.
    pub async fn submit(&self, mut submission: Submission, policy: FlushPolicy) -> Result<(), BufferError> {
        if self.inner.closing.load(Ordering::Acquire) {
            return Err(BufferError::ShuttingDown);
        }
        if submission.rows.is_empty() {
            let commit =
                StageCommit { file: None, parts: Vec::new(), completed: vec![submission.batch], pending: false };
            return self.inner.commit(&commit).await;
        }
        // Held until the rows are staged: the request's own grant when it has one.
        let mut grant = match submission.grant.take() {
            Some(grant) => grant,
            None => self.inner.budget.reserve(0).map_err(|_| BufferError::OverBudget)?,
        };
        let bytes = submission.rows.memory_bytes();
        grant.grow_to(bytes).map_err(|_| BufferError::OverBudget)?;
        let pieces = submission.rows.len().div_ceil(policy.max_rows).max(bytes.div_ceil(policy.max_bytes));
        if pieces > 1 {
            // A task of its own, so that the batch is stored whole (or not at all) even if the
            // request gives up waiting between its pieces.
            let this = self.clone();
            let large = self.inner.flushes.spawn(async move { this.submit_large(submission, pieces, grant).await });
            return large.await.map_err(|e| BufferError::Internal(format!("large batch task: {e}")))?;
        }
        let mut done = self.join_open_segment(submission, policy, grant);
        wait(&mut done).await
    }

    fn join_open_segment(&self, submission: Submission, policy: FlushPolicy, grant: Grant) -> watch::Receiver<Outcome> {
        let schema = submission.rows.schema().clone();
        let bytes = submission.rows.memory_bytes();
        let table = self.table(&schema.name);
        let mut buffer = table.lock().expect("buffer lock");
        let rows = submission.rows.len();
        // Rows are written by position, missing trailing columns as NULL: a submission joins only a
        // segment whose columns begin with its own, by name and type. Two replicas adding columns
        // at once can hand requests one table's columns in different orders.
        let fits = |s: &Segment| {
            s.schema.columns.len() >= schema.columns.len()
                && s.schema.columns.iter().zip(&schema.columns).all(|(a, b)| a == b)
                && s.rows + rows <= policy.max_rows
                && s.bytes + bytes <= policy.max_bytes
        };
        if buffer.open.as_ref().is_some_and(|s| !fits(s)) {
            let full = buffer.open.take().expect("checked above");
            self.spawn_flush(full);
        }
        let segment = buffer.open.get_or_insert_with(|| {
            let segment = Segment::new(schema.clone(), false);
            self.spawn_linger(table.clone(), segment.id, policy.linger);
            segment
        });
        let receiver = segment.done.subscribe();
        let entry = entry(submission.batch, submission.rows, true);
        segment.push(entry, bytes);
        segment.grants.push(grant);
        let hurry = self.inner.hurry.load(Ordering::Acquire);
        let full = segment.rows >= policy.max_rows || segment.bytes >= policy.max_bytes;
        if hurry || full || segment.bytes >= policy.flush_at_bytes {
            let full = buffer.open.take().expect("just filled");
            self.spawn_flush(full);
        }
        receiver
    }

    /// Splits a request into files of its own, of balanced sizes (at most one a row); the last one
    /// completes the batch.
    async fn submit_large(&self, submission: Submission, pieces: usize, grant: Grant) -> Result<(), BufferError> {
        let Submission { batch, rows, .. } = submission;
        let schema = rows.schema().clone();
        let pieces = pieces.clamp(1, rows.len().max(1));
        // Piece `i` holds rows `bounds(i)..bounds(i + 1)`; slices share the request's arrays,
        // which stay in memory (and on its grant) until the last piece is staged.
        let bounds = |piece: usize| rows.len() * piece / pieces;
        let piece = |i: usize| rows.slice(bounds(i), bounds(i + 1) - bounds(i));
        let mut early = Vec::with_capacity(pieces - 1);
        for i in 0..pieces - 1 {
            let chunk = piece(i);
            let mut segment = Segment::new(schema.clone(), true);
            let mut done = segment.done.subscribe();
            let bytes = chunk.memory_bytes();
            let part = Entry {
                batch_id: batch.id,
                ingested_at: batch.received_at.timestamp_micros(),
                rows: chunk,
                completes: None,
            };
            segment.push(part, bytes);
            self.spawn_flush(segment);
            early.push(async move { wait(&mut done).await });
        }
        for result in futures::future::join_all(early).await {
            result?;
        }
        let mut segment = Segment::new(schema, false);
        let mut done = segment.done.subscribe();
        let last = piece(pieces - 1);
        let bytes = last.memory_bytes();
        segment.push(entry(batch, last, true), bytes);
        segment.grants.push(grant);
        self.spawn_flush(segment);
        wait(&mut done).await
    }

    fn table(&self, name: &str) -> Arc<Mutex<TableBuffer>> {
        let mut tables = self.inner.tables.lock().expect("tables lock");
        tables.entry(name.to_string()).or_default().clone()
    }

    fn spawn_linger(&self, table: Arc<Mutex<TableBuffer>>, segment_id: u64, linger: Duration) {
        let this = self.clone();
        self.inner.flushes.spawn(async move {
            tokio::time::sleep(linger).await;
            let due = {
                let mut buffer = table.lock().expect("buffer lock");
                match &buffer.open {
                    Some(open) if open.id == segment_id => buffer.open.take(),
                    _ => None,
                }
            };
            if let Some(segment) = due {
                this.spawn_flush(segment);
            }
        });
    }

    fn spawn_flush(&self, segment: Segment) {
        let inner = self.inner.clone();
        self.inner.flushes.spawn(async move {
            let Segment { schema, entries, pending, done, rows, bytes, grants, .. } = segment;
            // Encoding writes the rows' arrays, with their metadata columns, into Parquet pages
            // and a file: held on the budget until the file is staged, so requests wait while
            // files are being written.
            let metadata = rows.saturating_mul(encode::METADATA_BYTES_PER_ROW);
            let encoding = inner.budget.force(bytes.saturating_mul(ENCODING_COPIES).saturating_add(metadata));
            let result = flush(&inner, schema, entries, rows, pending, grants).await;
            drop(encoding);
            if let Err(e) = &result {
                tracing::error!(error = %e, "flush failed");
            } else {
                inner.staged.notify_one();
            }
            done.send_replace(Some(result));
        });
    }

    /// Flushes every open segment now, and from here on every submission as it comes: requests
    /// still running when shutdown begins get their answer without waiting for the linger.
    pub fn hurry(&self) {
        self.inner.hurry.store(true, Ordering::Release);
        self.flush_open();
    }

    fn flush_open(&self) {
        let tables: Vec<_> = self.inner.tables.lock().expect("tables lock").values().cloned().collect();
        for table in tables {
            let open = table.lock().expect("buffer lock").open.take();
            if let Some(segment) = open {
                self.spawn_flush(segment);
            }
        }
    }

    /// Stops taking rows, flushes every open segment and waits for all flushes to finish.
    pub async fn close(&self) {
        self.inner.closing.store(true, Ordering::Release);
        self.flush_open();
        self.inner.flushes.close();
        self.inner.flushes.wait().await;
    }
}

fn entry(batch: NewBatch, rows: Accepted, completes: bool) -> Entry {
    Entry {
        batch_id: batch.id,
        ingested_at: batch.received_at.timestamp_micros(),
        rows,
        completes: completes.then_some(batch),
    }
}

async fn wait(done: &mut watch::Receiver<Outcome>) -> Result<(), BufferError> {
    match done.wait_for(Option::is_some).await {
        Ok(outcome) => outcome.clone().expect("waited for Some"),
        Err(_) => Err(BufferError::Internal("flush task ended without an outcome".into())),
    }
}

/// Encodes a segment, writes it to the stage, and commits it to the ledger. `grants` hold the
/// rows on the budget until then, or become the hold of the rows kept for the loader.
async fn flush(
    inner: &Inner,
    schema: Arc<TableSchema>,
    mut entries: Vec<Entry>,
    rows: usize,
    pending: bool,
    grants: Vec<Grant>,
) -> Result<(), BufferError> {
    let parts: Vec<(Uuid, u64)> = entries.iter().map(|e| (e.batch_id, e.rows.len() as u64)).collect();
    let completed: Vec<NewBatch> = entries.iter_mut().filter_map(|e| e.completes.take()).collect();
    let encode_schema = schema.clone();
    // The rows are also kept for the loader when the warehouse reads in this process and there
    // is room for them now (checked before the batch is made). Not a piece of a larger batch
    // (`pending`): it cannot load before the batch's last piece is staged, and it shares the
    // request's arrays with the other pieces.
    let memory: usize = entries.iter().map(|e| e.rows.memory_bytes()).sum::<usize>()
        + rows.saturating_mul(encode::METADATA_BYTES_PER_ROW);
    let recent = inner.recent.clone().filter(|recent| !pending && recent.has_room(&inner.budget, memory));
    let keep = recent.is_some();
    let metrics = inner.metrics.clone();
    let (data, batch) = tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        let ids: Vec<String> = entries.iter().map(|e| e.batch_id.to_string()).collect();
        let groups: Vec<RowGroup<'_>> = entries
            .iter()
            .zip(&ids)
            .map(|(e, id)| RowGroup { batch_id: id, ingested_at: e.ingested_at, rows: &e.rows })
            .collect();
        let encoded = if keep {
            encode::file_bytes_and_batch(&encode_schema, &groups).map(|(data, batch)| (data, Some(batch)))
        } else {
            encode::file_bytes(&encode_schema, &groups).map(|data| (data, None))
        };
        if encoded.is_ok() {
            metrics.flush_encode.observe(started.elapsed().as_secs_f64());
        }
        encoded
    })
    .await
    .map_err(|e| BufferError::Internal(format!("encoder task: {e}")))?
    .map_err(|e| BufferError::Internal(e.to_string()))?;
    let id = Uuid::now_v7();
    let path = format!("{}/{}/{id}.parquet", schema.name, Utc::now().format("%Y/%m/%d"));
    let bytes = data.len() as u64;
    let started = std::time::Instant::now();
    inner.stage.put_new(&path, data).await?;
    inner.metrics.stage_put.observe(started.elapsed().as_secs_f64());
    crate::fault::crash_point(crate::fault::CrashPoint::StagedBeforeCommit);
    // Kept before the commit that lets the loader see the file. The requests' grants become the
    // kept rows' hold (their parsed records are gone by now); when the rows are not kept, the
    // grants hold them until the commit is done, as they do without a loader in this process.
    let _held = match (&recent, batch) {
        (Some(recent), Some(batch)) => recent.keep(&inner.budget, &path, batch, grants).err().unwrap_or_default(),
        _ => grants,
    };
    let file = NewFile {
        id,
        table: schema.name.clone(),
        path: path.clone(),
        rows: rows as u64,
        bytes,
        columns: schema.columns.clone(),
    };
    let commit = StageCommit { file: Some(file), parts, completed, pending };
    if let Err(e) = inner.commit(&commit).await {
        // A commit that timed out may still land: the loader then reads the file from the stage.
        if let Some(recent) = &recent {
            recent.forget(&path);
        }
        return Err(e);
    }
    tracing::debug!(table = %schema.name, file_id = %id, rows, bytes, "staged file");
    Ok(())
}

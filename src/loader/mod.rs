//! The loader: claims staged files, runs COPY, and reconciles batches in the ledger.

mod isolate;
mod search;
mod supervisor;
mod sweeper;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use supervisor::{supervise, ConfigurationError, LoaderHealth, LoaderState, LoaderStatus};
pub use sweeper::{run_idempotency_sweeper, run_retention_sweeper, run_sweeper, sweep_orphans, SweepError};

use self::isolate::Held;
use crate::config::LoaderConfig;
use crate::ledger::{ClaimedFile, FileOutcome, Ledger, LedgerError};
use crate::metrics::{Metrics, SharedMetrics};
use crate::stage::Stage;
use crate::warehouse::{copy_outcome, ErrorKind, StagedFile, Warehouse, WarehouseError};

/// Longest delay between retries of a file.
const MAX_RETRY: Duration = Duration::from_secs(300);

/// One loader per gateway process.
pub struct Loader {
    ledger: Arc<dyn Ledger>,
    warehouse: Arc<dyn Warehouse>,
    /// Where refused files are read back and split (see `isolate`).
    stage: Arc<Stage>,
    settings: LoaderConfig,
    owner: String,
    /// Notified when files are staged.
    staged: Arc<Notify>,
    /// Notified (all waiters) after every round that changed batch status.
    loaded: Arc<Notify>,
    health: Arc<LoaderHealth>,
    metrics: SharedMetrics,
}

impl Loader {
    pub fn new(
        ledger: Arc<dyn Ledger>,
        warehouse: Arc<dyn Warehouse>,
        stage: Arc<Stage>,
        settings: LoaderConfig,
        owner: String,
        staged: Arc<Notify>,
        loaded: Arc<Notify>,
    ) -> Self {
        let health = Arc::new(LoaderHealth::default());
        let metrics = Arc::new(Metrics::new());
        Loader { ledger, warehouse, stage, settings, owner, staged, loaded, health, metrics }
    }

    /// Counts rows, COPY statements and warehouse rejects in `metrics` (shared with `/metrics`).
    pub fn with_metrics(mut self, metrics: SharedMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Reports rounds and errors to `health` (shared with `/readyz`).
    pub fn with_health(mut self, health: Arc<LoaderHealth>) -> Self {
        self.health = health;
        self
    }

    /// Runs until `cancel` fires; a round in progress finishes first.
    pub async fn run(self, cancel: CancellationToken) {
        // Claims under this loader's name belong to a previous life (a crashed or restarted
        // process holding the same replica id, or this loader before a panic): loadable now.
        match self.ledger.release_claims_of(&self.owner).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::warn!(files = n, owner = %self.owner, "took back the claims of this replica's previous run")
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not take back earlier claims; they load when their lease expires")
            }
        }
        match self.ledger.abandon_pending(Duration::from_secs(3600)).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(files = n, "abandoned pending files of batches that never completed"),
            Err(e) => tracing::warn!(error = %e, "could not sweep pending files"),
        }
        loop {
            loop {
                match self.round().await {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "loader round failed");
                        self.health.round_failed(&e.to_string());
                        break;
                    }
                }
                if cancel.is_cancelled() {
                    return;
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = self.staged.notified() => {}
                _ = tokio::time::sleep(self.settings.interval) => {}
            }
        }
    }

    /// Claims and loads one round of files; returns how many were claimed. A failure on one
    /// table is logged and never holds back another table's files.
    pub async fn round(&self) -> Result<usize, LedgerError> {
        let claimed =
            self.ledger.claim_files(&self.owner, self.settings.lease, self.settings.max_files_per_copy).await?;
        let count = claimed.len();
        let held: Held = std::sync::Mutex::new(claimed.iter().map(|f| f.id).collect());
        let mut by_table: BTreeMap<String, Vec<ClaimedFile>> = BTreeMap::new();
        for file in claimed {
            by_table.entry(file.table.clone()).or_default().push(file);
        }
        let parallel = self.settings.parallel_copies.min(self.warehouse.parallel_copies());
        let copies = split_copies(by_table, parallel, self.warehouse.min_rows_per_parallel_copy());
        let loads = async {
            use futures::StreamExt as _;
            let loads = futures::stream::iter(copies)
                .map(|(table, files)| {
                    let span = tracing::info_span!("load", table = %table, files = files.len(), owner = %self.owner);
                    let held = &held;
                    async move {
                        let loaded = self.load(&table, files, held).instrument(span).await;
                        // The claims stay until their lease expires; the next claim retries them.
                        loaded.inspect_err(|e| {
                            tracing::error!(table, error = %e, "could not record a load; files retried after the lease")
                        })
                    }
                })
                .buffer_unordered(parallel);
            loads.filter_map(|loaded| async move { loaded.err() }).collect::<Vec<_>>().await.pop()
        };
        let failed = self.holding_claims(&held, loads).await;
        if count > 0 {
            self.loaded.notify_waiters();
        }
        match failed {
            Some(e) => self.health.round_failed(&e.to_string()),
            None => self.health.round_succeeded(),
        }
        Ok(count)
    }

    /// One COPY for `files` of a table (a round may run several at once, see [`split_copies`]).
    /// A data error retries the files one by one so that a bad file cannot hold back the good
    /// ones, and isolates the refused rows of a file alone.
    async fn load(&self, table: &str, files: Vec<ClaimedFile>, held: &Held) -> Result<(), LedgerError> {
        let staged: Vec<StagedFile> =
            files.iter().map(|f| StagedFile { path: f.path.clone(), columns: f.columns.clone() }).collect();
        let (started, started_at) = (std::time::Instant::now(), chrono::Utc::now());
        let copied = self.warehouse.copy_files(table, &staged).await;
        self.measure_copy(table, &copied, started.elapsed());
        let error = match copied {
            Ok(results) => {
                crate::fault::crash_point(crate::fault::CrashPoint::AfterCopy);
                let outcomes: Vec<FileOutcome> =
                    files.iter().map(|file| copy_outcome(file.id, &file.path, &results)).collect();
                self.count_loaded(table, &files, &outcomes);
                tracing::info!(table, files = files.len(), "loaded files");
                let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
                self.health.clear_configuration_error(table, &paths, started_at);
                return self.ledger.complete_files(&self.owner, &outcomes).await.map(|_| ());
            }
            Err(error) => error,
        };
        // An error that names one file of several (a file missing from the stage, a bad row)
        // must not hold the others back: they are tried one by one.
        let one_of_several = files.len() > 1 && error.file().is_some();
        match error.kind {
            ErrorKind::Configuration | ErrorKind::Data | ErrorKind::Statement if one_of_several => {
                tracing::warn!(table, error = %error, "COPY failed on one file; loading files one by one");
                for file in files {
                    Box::pin(self.load(table, vec![file], held)).await?;
                }
                Ok(())
            }
            ErrorKind::Transient => {
                let attempts = files.iter().map(|f| f.attempts).max().unwrap_or(1);
                let delay = jittered(backoff(self.settings.retry_base, attempts)).max(error.retry_after());
                tracing::warn!(table, error = %error, retry_in = ?delay, "warehouse unavailable; files released");
                self.release(&files, &error, delay, false).await
            }
            ErrorKind::Configuration => {
                // Never the data's fault: the files wait for an operator, and say why.
                let delay = self.settings.configuration_retry;
                tracing::error!(table, error = %error, code = ?error.code(), retry_in = ?delay,
                    "warehouse configuration error; files held back until it is fixed");
                self.health.configuration_error(table, &error);
                self.release(&files, &error, delay, false).await
            }
            ErrorKind::Data | ErrorKind::Statement if files.len() > 1 => {
                tracing::warn!(table, error = %error, "COPY failed; loading files one by one");
                for file in files {
                    Box::pin(self.load(table, vec![file], held)).await?;
                }
                Ok(())
            }
            // An error of no known kind may be passing (an emulator's write conflict, say): the
            // file is tried a few times, with backoff, before it fails.
            ErrorKind::Statement if files[0].statement_failures + 1 < self.settings.statement_attempts => {
                let failures = files[0].statement_failures + 1;
                let delay = jittered(backoff(self.settings.retry_base, failures));
                tracing::warn!(table, path = %files[0].path, error = %error, failures, retry_in = ?delay,
                    "COPY failed with an unclassified error; file released for another try");
                self.release(&files, &error, delay, true).await
            }
            ErrorKind::Data => {
                tracing::warn!(table, path = %files[0].path, error = %error, "file refused; isolating its bad rows");
                self.health.clear_configuration_error(table, &[files[0].path.as_str()], started_at);
                let file = files.into_iter().next().expect("one file");
                self.isolate(table, file, error, held).await
            }
            ErrorKind::Statement => {
                tracing::error!(table, path = %files[0].path, error = %error, "file failed to load");
                // The warehouse reached the data, so no configuration problem stands in the way.
                self.health.clear_configuration_error(table, &[files[0].path.as_str()], started_at);
                let query_id = error.query_id().map(str::to_string);
                let outcome = FileOutcome::Failed { id: files[0].id, error: error.to_string(), query_id };
                self.ledger.complete_files(&self.owner, &[outcome]).await.map(|_| ())
            }
        }
    }

    /// Runs `work` while renewing the round's claims every third of a lease, so every file the
    /// round holds (the one being copied and those waiting their turn) stays claimed however long
    /// the round takes, and a dead process's claims expire within one lease (`loader.lease_secs`).
    /// The renewals run beside the work, never instead of it: a renewal waiting for the ledger
    /// connection that the work's open transaction holds (SQLite has one writer) would otherwise
    /// stall both until the pool gave up.
    async fn holding_claims<T>(&self, held: &Held, work: impl std::future::Future<Output = T>) -> T {
        let renewals = async {
            let mut renew = tokio::time::interval((self.settings.lease / 3).max(Duration::from_millis(10)));
            // A renewal that took long is followed by one a period later, not by a burst.
            renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            renew.tick().await;
            loop {
                renew.tick().await;
                let ids = held.lock().unwrap_or_else(|p| p.into_inner()).clone();
                // Files finished in this round are no longer held; fewer renewed is expected.
                if let Err(e) = self.ledger.renew_claims(&self.owner, &ids, self.settings.lease).await {
                    tracing::warn!(error = %e, "could not renew file claims");
                }
            }
        };
        tokio::pin!(work, renewals);
        tokio::select! {
            done = &mut work => done,
            never = &mut renewals => never,
        }
    }

    /// Measures a COPY statement by its outcome.
    fn measure_copy<T>(&self, table: &str, copied: &Result<T, WarehouseError>, took: Duration) {
        let outcome = match copied {
            Ok(_) => "loaded",
            Err(e) if e.kind == ErrorKind::Data => "refused",
            Err(_) => "failed",
        };
        self.metrics.copy(table, outcome, took);
    }

    /// Counts the rows a COPY loaded from `files`, and how long they waited in the stage.
    fn count_loaded(&self, table: &str, files: &[ClaimedFile], outcomes: &[FileOutcome]) {
        for (file, outcome) in files.iter().zip(outcomes) {
            if let FileOutcome::Loaded { rows, .. } = outcome {
                self.metrics.loaded(table, *rows, Some(file.staged_at));
            }
        }
    }

    async fn release(
        &self,
        files: &[ClaimedFile],
        error: &WarehouseError,
        delay: Duration,
        unclassified: bool,
    ) -> Result<(), LedgerError> {
        let ids: Vec<_> = files.iter().map(|f| f.id).collect();
        self.ledger.release_files(&self.owner, &ids, &error.to_string(), delay, unclassified).await
    }
}

/// The COPY statements of a round, which run up to `parallel` at once (those of different
/// tables too): each table's files in up to `parallel` runs of consecutive files of about equal
/// rows, none of fewer than `min_rows` rows unless the table has fewer in all
/// ([`Warehouse::min_rows_per_parallel_copy`]).
fn split_copies(
    by_table: BTreeMap<String, Vec<ClaimedFile>>,
    parallel: usize,
    min_rows: u64,
) -> Vec<(String, Vec<ClaimedFile>)> {
    let min_rows = min_rows.max(1);
    let mut copies = Vec::new();
    for (table, files) in by_table {
        let rows: u64 = files.iter().map(|f| f.rows).sum();
        let parts = (rows / min_rows).clamp(1, parallel.max(1) as u64);
        let (mut copy, mut copied, mut in_part, mut part) = (Vec::new(), 0, 0, 1);
        for file in files {
            copied += file.rows;
            in_part += file.rows;
            copy.push(file);
            // A part ends once the parts so far hold their share of the table's rows, it holds
            // the least size itself, and what is left still makes parts of the least size; the
            // last part takes the rest.
            let left = rows - copied;
            let share = copied * parts >= rows * part;
            if part < parts && share && in_part >= min_rows && left >= min_rows * (parts - part) {
                copies.push((table.clone(), std::mem::take(&mut copy)));
                (in_part, part) = (0, part + 1);
            }
        }
        if !copy.is_empty() {
            copies.push((table.clone(), copy));
        }
    }
    copies
}

/// `base` doubled per earlier attempt, capped at [`MAX_RETRY`].
fn backoff(base: Duration, attempts: u32) -> Duration {
    let factor = 1u32 << attempts.saturating_sub(1).min(16);
    base.saturating_mul(factor).min(MAX_RETRY)
}

/// A delay drawn uniformly from `[delay / 2, delay]`, so that replicas released together do not
/// retry together.
fn jittered(delay: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded randomly per process and per call: enough randomness for jitter.
    let random = std::collections::hash_map::RandomState::new().build_hasher().finish();
    let half = delay / 2;
    half + half.mul_f64((random % 1_000_000) as f64 / 1_000_000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_then_caps_and_jitter_stays_in_range() {
        let base = Duration::from_secs(1);
        assert_eq!(backoff(base, 1), Duration::from_secs(1));
        assert_eq!(backoff(base, 3), Duration::from_secs(4));
        assert_eq!(backoff(base, 40), MAX_RETRY);
        let draws: Vec<Duration> = (0..200).map(|_| jittered(Duration::from_secs(8))).collect();
        assert!(draws.iter().all(|d| *d >= Duration::from_secs(4) && *d <= Duration::from_secs(8)));
        let distinct: std::collections::BTreeSet<_> = draws.iter().collect();
        assert!(distinct.len() > 50, "jitter spreads retries: {} distinct of 200", distinct.len());
    }

    fn files(table: &str, rows: &[u64]) -> Vec<ClaimedFile> {
        rows.iter()
            .map(|&rows| ClaimedFile {
                id: uuid::Uuid::now_v7(),
                table: table.into(),
                path: format!("{table}/{rows}.parquet"),
                rows,
                attempts: 1,
                statement_failures: 0,
                columns: None,
                staged_at: chrono::Utc::now(),
            })
            .collect()
    }

    /// Rows of each COPY, by table.
    fn split(tables: &[(&str, &[u64])], parallel: usize) -> Vec<(String, Vec<u64>)> {
        split_at_least(tables, parallel, 20_000)
    }

    /// Rows of each COPY, by table, with parts of at least `min_rows`.
    fn split_at_least(tables: &[(&str, &[u64])], parallel: usize, min_rows: u64) -> Vec<(String, Vec<u64>)> {
        let by_table = tables.iter().map(|(t, rows)| (t.to_string(), files(t, rows))).collect();
        split_copies(by_table, parallel, min_rows)
            .into_iter()
            .map(|(t, f)| (t, f.iter().map(|f| f.rows).collect()))
            .collect()
    }

    #[test]
    fn a_large_round_is_split_into_parallel_copies_of_even_rows_and_a_small_one_is_not() {
        let s = |t: &str, rows: &[u64]| (t.to_string(), rows.to_vec());
        let even = [5_000; 40];
        assert_eq!(split(&[("A", &even)], 2), vec![s("A", &even[..20]), s("A", &even[20..])]);
        assert_eq!(split(&[("A", &even)], 3).iter().map(|(_, r)| r.len()).collect::<Vec<_>>(), vec![14, 13, 13]);
        // Uneven files: cut where the rows so far reach each part's share.
        assert_eq!(
            split(&[("A", &[60_000, 5_000, 5_000, 50_000])], 2),
            vec![s("A", &[60_000]), s("A", &[5_000, 5_000, 50_000])]
        );
        // Too few rows for a second COPY to pay: one COPY, whatever `parallel` says.
        assert_eq!(split(&[("A", &[5_000, 5_000, 5_000])], 4), vec![s("A", &[5_000, 5_000, 5_000])]);
        // A first file with nearly all the rows leaves too few for a second part.
        assert_eq!(split(&[("A", &[39_000, 1_000])], 2), vec![s("A", &[39_000, 1_000])]);
        assert_eq!(split(&[("A", &[0, 0, 0])], 2), vec![s("A", &[0, 0, 0])]);
        assert_eq!(split(&[("A", &[30_000, 30_000])], 1), vec![s("A", &[30_000, 30_000])]);
        // No COPY mixes tables; each table is split on its own rows.
        assert_eq!(
            split(&[("A", &[25_000, 25_000]), ("B", &[1_000])], 2),
            vec![s("A", &[25_000]), s("A", &[25_000]), s("B", &[1_000])]
        );
    }

    #[test]
    fn the_warehouse_sets_the_least_rows_of_a_parallel_copy() {
        let s = |t: &str, rows: &[u64]| (t.to_string(), rows.to_vec());
        // DuckDB's row group: 200,000 rows stay one COPY (20,000 would have made two), and so
        // do 250,000 in files of 10,000 (no cut leaves a row group on both sides); 260,000 are two.
        let files = [10_000; 20];
        assert_eq!(split_at_least(&[("A", &files)], 2, 122_880), vec![s("A", &files)]);
        assert_eq!(split_at_least(&[("A", &files)], 2, 20_000).len(), 2);
        let files = [10_000; 25];
        assert_eq!(split_at_least(&[("A", &files)], 2, 122_880), vec![s("A", &files)]);
        let files = [10_000; 26];
        assert_eq!(split_at_least(&[("A", &files)], 2, 122_880), vec![s("A", &files[..13]), s("A", &files[13..])]);
        // A first part past its share never leaves a middle part under the least.
        assert_eq!(
            split_at_least(&[("A", &[500_000, 10_000, 240_000])], 3, 20_000),
            vec![s("A", &[500_000]), s("A", &[10_000, 240_000])]
        );
        // A least of 0 is taken as 1, never a division by zero.
        assert_eq!(split_at_least(&[("A", &[1, 1])], 2, 0), vec![s("A", &[1]), s("A", &[1])]);
    }
}

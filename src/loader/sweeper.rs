//! The stage sweeper: deletes Parquet files that a crash left in the stage without a ledger
//! record, and rejects objects whose batch the ledger no longer (or never) held.
//!
//! A staged file gets its ledger record in the same transaction that acknowledges its records,
//! so a file without one was never acknowledged: the process died (or the ledger refused the
//! commit and the client got 503) between the stage write and the ledger commit. Such a file is
//! only deleted once it is older than `loader.orphan_after_secs`, far longer than any commit in
//! flight can take, so a file whose commit is still on its way is never touched.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::ledger::{Ledger, LedgerError};
use crate::stage::{Stage, StageError};

/// Why a sweep stopped early; the next one starts over.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error(transparent)]
    Stage(#[from] StageError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// Paths checked against the ledger per query.
const PATHS_PER_CHECK: usize = 1_000;

/// Deletes stage files older than `older_than` that the ledger does not know; returns them.
pub async fn sweep_orphans(
    stage: &Stage,
    ledger: &dyn Ledger,
    older_than: Duration,
) -> Result<Vec<String>, SweepError> {
    let cutoff = Utc::now() - chrono::Duration::from_std(older_than).unwrap_or(chrono::Duration::MAX);
    let candidates = stage.gateway_files_before(cutoff).await?;
    let mut deleted = Vec::new();
    for chunk in candidates.chunks(PATHS_PER_CHECK) {
        let known = ledger.known_paths(chunk).await?;
        for path in chunk.iter().filter(|p| !known.contains(*p)) {
            stage.delete(path).await?;
            deleted.push(path.clone());
        }
    }
    Ok(deleted)
}

/// Sweeps at start, then every `older_than`, until `cancel` fires.
pub async fn run_sweeper(stage: Arc<Stage>, ledger: Arc<dyn Ledger>, older_than: Duration, cancel: CancellationToken) {
    loop {
        let swept = tokio::select! {
            _ = cancel.cancelled() => return,
            swept = sweep_orphans(&stage, ledger.as_ref(), older_than) => swept,
        };
        match swept {
            Ok(deleted) if deleted.is_empty() => {}
            Ok(deleted) => tracing::warn!(files = deleted.len(), first = %deleted[0],
                "deleted stage files that were never committed to the ledger (left by a crash)"),
            Err(e) => tracing::warn!(error = %e, "stage sweep failed; retried at the next sweep"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(older_than) => {}
        }
    }
}

/// How often every replica forgets idempotency keys past their window.
const IDEMPOTENCY_SWEEP_EVERY: Duration = Duration::from_secs(3600);

/// Forgets idempotency keys older than `window` (whose lease is over) at start, then hourly,
/// until `cancel` fires. Every replica runs one, loader or not; a sweep is idempotent.
pub async fn run_idempotency_sweeper(ledger: Arc<dyn Ledger>, window: Duration, cancel: CancellationToken) {
    loop {
        let swept = tokio::select! {
            _ = cancel.cancelled() => return,
            swept = ledger.sweep_idempotency(window) => swept,
        };
        match swept {
            Ok(0) => {}
            Ok(n) => tracing::info!(keys = n, "forgot idempotency keys older than idempotency.window_secs"),
            Err(e) => tracing::warn!(error = %e, "idempotency key sweep failed; retried at the next sweep"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(IDEMPOTENCY_SWEEP_EVERY) => {}
        }
    }
}

/// How often every replica removes batches past `retention.keep_secs`.
const RETENTION_SWEEP_EVERY: Duration = Duration::from_secs(3600);
/// Batches removed per ledger transaction: small, so that the writer (SQLite has one) is never
/// held long away from ingest commits, however many rejects the batches carry.
const PURGE_CHUNK: u32 = 100;

/// Removes final batches older than `keep` (with their rejects and the files no batch needs),
/// at start and then hourly, until `cancel` fires. Idempotent across replicas.
pub async fn run_retention_sweeper(ledger: Arc<dyn Ledger>, keep: Duration, cancel: CancellationToken) {
    loop {
        let mut purged = 0;
        loop {
            let chunk = tokio::select! {
                _ = cancel.cancelled() => return,
                chunk = ledger.purge_batches(keep, PURGE_CHUNK) => chunk,
            };
            match chunk {
                Ok(n) => {
                    purged += n;
                    if n < u64::from(PURGE_CHUNK) {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "retention sweep failed; retried at the next sweep");
                    break;
                }
            }
        }
        if purged > 0 {
            tracing::info!(batches = purged, "removed batches older than retention.keep_secs");
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(RETENTION_SWEEP_EVERY) => {}
        }
    }
}

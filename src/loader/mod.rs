//! The loader: claims staged files, runs COPY, and reconciles batches in the ledger.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::ledger::{ClaimedFile, FileOutcome, Ledger};
use crate::warehouse::{Warehouse, WarehouseError};

/// Loader timing and sizes.
#[derive(Debug, Clone)]
pub struct LoaderSettings {
    /// Poll interval when nothing wakes the loader.
    pub interval: Duration,
    /// How long a claim holds before another loader may take the file.
    pub lease: Duration,
    /// Files per COPY statement (Snowflake allows 1000).
    pub max_files_per_copy: usize,
    /// First retry delay after a transient failure; doubles per attempt, capped at 5 minutes.
    pub retry_base: Duration,
}

/// One loader per gateway process.
pub struct Loader {
    ledger: Arc<dyn Ledger>,
    warehouse: Arc<dyn Warehouse>,
    settings: LoaderSettings,
    owner: String,
    /// Notified when files are staged.
    staged: Arc<Notify>,
    /// Notified (all waiters) after every round that changed batch status.
    loaded: Arc<Notify>,
}

impl Loader {
    pub fn new(
        ledger: Arc<dyn Ledger>,
        warehouse: Arc<dyn Warehouse>,
        settings: LoaderSettings,
        owner: String,
        staged: Arc<Notify>,
        loaded: Arc<Notify>,
    ) -> Self {
        Loader { ledger, warehouse, settings, owner, staged, loaded }
    }

    /// Runs until `cancel` fires; a round in progress finishes first.
    pub async fn run(self, cancel: CancellationToken) {
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

    /// Claims and loads one round of files; returns how many were claimed.
    pub async fn round(&self) -> Result<usize, crate::ledger::LedgerError> {
        let claimed =
            self.ledger.claim_files(&self.owner, self.settings.lease, self.settings.max_files_per_copy).await?;
        let count = claimed.len();
        let mut by_table: BTreeMap<String, Vec<ClaimedFile>> = BTreeMap::new();
        for file in claimed {
            by_table.entry(file.table.clone()).or_default().push(file);
        }
        for (table, files) in by_table {
            self.load(&table, files).await?;
        }
        if count > 0 {
            self.loaded.notify_waiters();
        }
        Ok(count)
    }

    /// One COPY for all files of a table; a data error retries the files one by one so that a bad
    /// file cannot hold back the good ones.
    async fn load(&self, table: &str, files: Vec<ClaimedFile>) -> Result<(), crate::ledger::LedgerError> {
        let paths: Vec<String> = files.iter().map(|f| f.path.clone()).collect();
        match self.warehouse.copy_files(table, &paths).await {
            Ok(results) => {
                let outcomes: Vec<FileOutcome> = files
                    .iter()
                    .map(|file| match results.iter().find(|r| r.path == file.path) {
                        Some(r) => {
                            FileOutcome::Loaded { id: file.id, rows: r.rows_loaded, query_id: r.query_id.clone() }
                        }
                        None => FileOutcome::Failed {
                            id: file.id,
                            error: "warehouse returned no result for this file".into(),
                            query_id: None,
                        },
                    })
                    .collect();
                tracing::info!(table, files = files.len(), "loaded files");
                self.ledger.complete_files(&outcomes).await
            }
            Err(WarehouseError::Unavailable(message)) => {
                let attempts = files.iter().map(|f| f.attempts).max().unwrap_or(1);
                let delay = self.backoff(attempts);
                tracing::warn!(table, error = %message, retry_in = ?delay, "warehouse unavailable; files released");
                let ids: Vec<_> = files.iter().map(|f| f.id).collect();
                self.ledger.release_files(&ids, &message, delay).await
            }
            Err(error) if files.len() > 1 => {
                tracing::warn!(table, error = %error, "COPY failed; loading files one by one");
                for file in files {
                    Box::pin(self.load(table, vec![file])).await?;
                }
                Ok(())
            }
            Err(error) => {
                tracing::error!(table, path = %files[0].path, error = %error, "file failed to load");
                let outcome = FileOutcome::Failed { id: files[0].id, error: error.to_string(), query_id: None };
                self.ledger.complete_files(&[outcome]).await
            }
        }
    }

    fn backoff(&self, attempts: u32) -> Duration {
        let factor = 1u32 << attempts.saturating_sub(1).min(10);
        (self.settings.retry_base * factor).min(Duration::from_secs(300))
    }
}

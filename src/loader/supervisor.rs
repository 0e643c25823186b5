//! Keeps the loader running: a panic is logged and the loader restarted with backoff, and what it
//! is doing is shared with `/readyz`.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

use crate::warehouse::WarehouseError;

/// Longest pause between restarts after repeated panics.
const MAX_RESTART_DELAY: Duration = Duration::from_secs(60);

/// What the loader of this process is doing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LoaderState {
    /// `loader.enabled = false`: this replica only ingests.
    #[default]
    Disabled,
    Running,
    /// It panicked and is about to be started again.
    Restarting,
    /// It finished (shutdown).
    Stopped,
}

/// The loader's health, as `/readyz` reports it.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct LoaderStatus {
    pub state: LoaderState,
    /// Restarts after a panic since the process started.
    pub restarts: u32,
    /// End of the last round that completed without an error.
    pub last_round_at: Option<DateTime<Utc>>,
    /// The last error of a round, if the last round failed.
    pub last_error: Option<String>,
    /// Warehouse configuration errors (a missing privilege, stage or table) holding files back,
    /// by table; a table's entry goes when this replica next reaches its data.
    pub configuration_errors: BTreeMap<String, ConfigurationError>,
}

/// A configuration error and when this replica last met it (another replica may have loaded the
/// files since, which an old `at` suggests).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ConfigurationError {
    pub error: String,
    /// The stage file the error is about, when it is about one file (say, missing from the stage).
    pub file: Option<String>,
    pub at: DateTime<Utc>,
}

/// Shared between the loader, its supervisor and `/readyz`.
#[derive(Debug, Default)]
pub struct LoaderHealth {
    status: Mutex<LoaderStatus>,
}

impl LoaderHealth {
    pub fn status(&self) -> LoaderStatus {
        self.update(|s| s.clone())
    }

    fn update<T>(&self, change: impl FnOnce(&mut LoaderStatus) -> T) -> T {
        // A panic while holding this lock cannot leave the status half-written in a harmful way.
        let mut status = self.status.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        change(&mut status)
    }

    fn set_state(&self, state: LoaderState) {
        self.update(|s| s.state = state);
    }

    pub(crate) fn round_succeeded(&self) {
        self.update(|s| {
            s.last_round_at = Some(Utc::now());
            s.last_error = None;
        });
    }

    pub(crate) fn round_failed(&self, error: &str) {
        self.update(|s| s.last_error = Some(error.to_string()));
    }

    pub(crate) fn configuration_error(&self, table: &str, error: &WarehouseError) {
        let entry =
            ConfigurationError { error: error.to_string(), file: error.file().map(str::to_string), at: Utc::now() };
        self.update(|s| s.configuration_errors.insert(table.to_string(), entry));
    }

    /// The warehouse reached `table`'s data in `files` with a COPY that started at `since`: a
    /// table-wide configuration error is gone, and so is one about one of those files, unless
    /// another COPY running alongside recorded it after this one began.
    pub(crate) fn clear_configuration_error(&self, table: &str, files: &[&str], since: DateTime<Utc>) {
        self.update(|s| {
            let resolved = s
                .configuration_errors
                .get(table)
                .is_some_and(|e| e.at <= since && e.file.as_deref().is_none_or(|file| files.contains(&file)));
            if resolved {
                s.configuration_errors.remove(table);
            }
        });
    }
}

/// Runs the task `start` makes until it returns or `cancel` fires; when it panics, logs the
/// panic and starts a new one after `first_delay`, doubling per restart up to a minute.
pub async fn supervise<F, Fut>(
    health: Arc<LoaderHealth>,
    cancel: CancellationToken,
    first_delay: Duration,
    mut start: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut delay = first_delay;
    loop {
        health.set_state(LoaderState::Running);
        let outcome = tokio::spawn(start()).await;
        let panic = match outcome {
            Ok(()) => break,
            Err(e) if e.is_panic() => e.into_panic(),
            Err(e) => {
                tracing::error!(error = %e, "loader task was cancelled");
                break;
            }
        };
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "non-text panic".into());
        let restarts = health.update(|s| {
            s.state = LoaderState::Restarting;
            s.restarts += 1;
            s.last_error = Some(format!("panicked: {message}"));
            s.restarts
        });
        tracing::error!(panic = %message, restarts, restart_in = ?delay, "loader panicked; restarting");
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(MAX_RESTART_DELAY);
    }
    health.set_state(LoaderState::Stopped);
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test]
    async fn a_panicking_loader_is_restarted_and_reported() {
        let health = Arc::new(LoaderHealth::default());
        let starts = Arc::new(AtomicU32::new(0));
        let counter = starts.clone();
        supervise(health.clone(), CancellationToken::new(), Duration::from_millis(5), move || {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 2 {
                    panic!("round {n} exploded");
                }
            }
        })
        .await;
        assert_eq!(starts.load(Ordering::SeqCst), 3, "two panics, then a run that returned");
        let status = health.status();
        assert_eq!(status.restarts, 2);
        assert_eq!(status.state, LoaderState::Stopped);
        assert!(status.last_error.unwrap().contains("round 1 exploded"));
    }

    #[tokio::test]
    async fn cancel_stops_the_restarts() {
        let health = Arc::new(LoaderHealth::default());
        let cancel = CancellationToken::new();
        cancel.cancel();
        supervise(health.clone(), cancel, Duration::from_secs(3600), || async { panic!("always") }).await;
        assert_eq!(health.status().restarts, 1);
        assert_eq!(health.status().state, LoaderState::Stopped);
    }
}

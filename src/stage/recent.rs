//! Files this process has just staged, kept in memory as the Arrow batch they were written from,
//! for a loader in the same process (DuckDB) to insert without reading the file back from the
//! stage and decoding its Parquet.
//!
//! Only a cache: the staged file stays the record. A file not kept here (another replica staged
//! it, it was crowded out, the process restarted, a COPY took it and failed) is read from the
//! stage as before. Its memory is held on the gateway's budget, at most [`SHARE`] of it, and a
//! file nobody takes within [`MAX_AGE`] is dropped at the next call.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::record_batch::RecordBatch;

use crate::budget::{Grant, MemoryBudget};

/// The part of the memory budget kept files may hold together: one eighth.
pub const SHARE: usize = 8;

/// How long a file waits to be taken before it is dropped: a loader that has not taken it by
/// then is behind, gone, or another replica's, and it reads the file from the stage.
pub const MAX_AGE: Duration = Duration::from_secs(60);

/// Staged files' rows by stage path, oldest first.
#[derive(Default)]
pub struct RecentFiles {
    kept: Mutex<Kept>,
    /// Files taken so far.
    taken: AtomicU64,
}

#[derive(Default)]
struct Kept {
    files: HashMap<String, Entry>,
    /// Paths in the order they were kept, with when; a path already taken is skipped when met.
    order: VecDeque<(String, Instant)>,
    bytes: usize,
}

struct Entry {
    batch: RecordBatch,
    grant: Grant,
}

/// A kept file's rows, handed to the loader with their hold on the budget, given back when
/// dropped (once they are inserted).
pub struct KeptFile {
    pub batch: RecordBatch,
    _grant: Grant,
}

impl RecentFiles {
    pub fn new() -> Arc<Self> {
        Arc::new(RecentFiles::default())
    }

    /// Whether a file of `bytes` would be kept now, before the work of making its batch.
    pub fn has_room(&self, budget: &MemoryBudget, bytes: usize) -> bool {
        let mut kept = self.lock();
        kept.expire(Instant::now());
        kept.bytes.saturating_add(bytes) <= budget.max() / SHARE
    }

    /// Keeps `batch` as the rows of the file staged at `path`, if it fits within [`SHARE`] of the
    /// budget and the budget grants its memory now. False if it was not kept.
    pub fn keep(&self, budget: &Arc<MemoryBudget>, path: &str, batch: RecordBatch) -> bool {
        self.keep_at(budget, path, batch, Instant::now())
    }

    fn keep_at(&self, budget: &Arc<MemoryBudget>, path: &str, batch: RecordBatch, now: Instant) -> bool {
        let bytes = batch.get_array_memory_size();
        let mut kept = self.lock();
        kept.expire(now);
        if kept.bytes.saturating_add(bytes) > budget.max() / SHARE || kept.files.contains_key(path) {
            return false;
        }
        let Ok(grant) = budget.reserve(bytes) else { return false };
        kept.bytes += bytes;
        kept.order.push_back((path.to_string(), now));
        kept.files.insert(path.to_string(), Entry { batch, grant });
        true
    }

    /// The rows of the file staged at `path`, if they are kept; they are kept no longer.
    pub fn take(&self, path: &str) -> Option<KeptFile> {
        self.take_at(path, Instant::now())
    }

    fn take_at(&self, path: &str, now: Instant) -> Option<KeptFile> {
        let mut kept = self.lock();
        kept.expire(now);
        let entry = kept.files.remove(path)?;
        kept.bytes -= entry.grant.bytes();
        self.taken.fetch_add(1, Ordering::Relaxed);
        Some(KeptFile { batch: entry.batch, _grant: entry.grant })
    }

    /// Drops the rows kept for `path` (a file whose ledger commit failed: it never loads).
    pub fn forget(&self, path: &str) {
        let mut kept = self.lock();
        if let Some(entry) = kept.files.remove(path) {
            kept.bytes -= entry.grant.bytes();
        }
    }

    /// How many files were taken so far, each one a file not read back from the stage.
    pub fn taken(&self) -> u64 {
        self.taken.load(Ordering::Relaxed)
    }

    /// Memory the kept files hold.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Kept> {
        // Every change under the lock is whole before it can panic, so a poisoned lock holds a
        // consistent map.
        self.kept.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Kept {
    /// Drops the files kept before `now - MAX_AGE`, and forgets the order of files taken since.
    fn expire(&mut self, now: Instant) {
        while let Some((path, at)) = self.order.front() {
            let stale = now.saturating_duration_since(*at) >= MAX_AGE;
            if stale {
                if let Some(entry) = self.files.remove(path) {
                    self.bytes -= entry.grant.bytes();
                }
            } else if self.files.contains_key(path) {
                break;
            }
            self.order.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, Int64Array};

    fn batch(rows: i64) -> RecordBatch {
        let values: ArrayRef = Arc::new(Int64Array::from_iter_values(0..rows));
        RecordBatch::try_from_iter([("A", values)]).unwrap()
    }

    #[test]
    fn a_kept_file_is_taken_once_and_its_memory_held_on_the_budget_until_dropped() {
        let budget = MemoryBudget::new(1 << 20);
        let recent = RecentFiles::new();
        let rows = batch(1_000);
        let bytes = rows.get_array_memory_size();
        assert!(recent.keep(&budget, "T/a.parquet", rows.clone()));
        assert!(!recent.keep(&budget, "T/a.parquet", rows.clone()), "one entry a path");
        assert_eq!((recent.bytes(), budget.used()), (bytes, bytes));
        assert!(recent.take("T/b.parquet").is_none());
        let taken = recent.take("T/a.parquet").expect("kept");
        assert_eq!(recent.taken(), 1);
        assert_eq!(taken.batch, rows);
        assert!(recent.take("T/a.parquet").is_none(), "taken once");
        assert_eq!((recent.bytes(), budget.used()), (0, bytes), "held until the loader drops it");
        drop(taken);
        assert_eq!(budget.used(), 0);
        assert!(recent.keep(&budget, "T/c.parquet", rows));
        recent.forget("T/c.parquet");
        assert_eq!((recent.bytes(), budget.used(), recent.taken()), (0, 0, 1), "forgotten, not taken");
    }

    #[test]
    fn files_are_kept_within_an_eighth_of_the_budget_and_only_what_it_grants() {
        let rows = batch(1_000);
        let bytes = rows.get_array_memory_size();
        let budget = MemoryBudget::new(bytes * SHARE * 2);
        let recent = RecentFiles::new();
        assert!(recent.has_room(&budget, bytes * 2));
        assert!(!recent.has_room(&budget, bytes * 2 + 1));
        assert!(recent.keep(&budget, "1", rows.clone()));
        assert!(recent.keep(&budget, "2", rows.clone()));
        assert!(!recent.has_room(&budget, 1));
        assert!(!recent.keep(&budget, "3", rows.clone()), "a third would pass the share");
        drop(recent.take("1"));
        assert!(recent.keep(&budget, "3", rows.clone()), "room again once one is taken");
        // Requests hold the rest of the budget: the share has room, the budget refuses, and the
        // file is not kept.
        drop(recent.take("2"));
        let _requests = budget.reserve(budget.max() - budget.used()).unwrap();
        assert!(recent.has_room(&budget, bytes));
        assert!(!recent.keep(&budget, "4", rows));
        assert_eq!(recent.bytes(), bytes);
    }

    #[test]
    fn a_file_not_taken_within_the_max_age_is_dropped_at_the_next_call() {
        let budget = MemoryBudget::new(1 << 20);
        let recent = RecentFiles::new();
        let start = Instant::now();
        assert!(recent.keep_at(&budget, "old", batch(10), start));
        assert!(recent.keep_at(&budget, "taken", batch(10), start + Duration::from_secs(1)));
        assert!(recent.keep_at(&budget, "new", batch(10), start + MAX_AGE / 2));
        assert!(recent.take_at("taken", start + Duration::from_secs(2)).is_some());
        assert!(recent.take_at("old", start + MAX_AGE).is_none(), "expired");
        let one = batch(10).get_array_memory_size();
        assert_eq!((recent.bytes(), budget.used()), (one, one), "only the new file is held");
        assert!(recent.take_at("new", start + MAX_AGE).is_some(), "not yet expired");
        assert!(recent.has_room(&budget, 0));
        assert!(recent.lock().order.is_empty(), "the taken file's place is forgotten too");
    }
}

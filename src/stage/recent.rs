//! Files this process has just staged, kept in memory as the Arrow batch they were written from,
//! for a loader in the same process (DuckDB) to insert without reading the file back from the
//! stage and decoding its Parquet.
//!
//! Only a cache: the staged file stays the record. A file not kept here (another replica staged
//! it, it was crowded out, the process restarted, a COPY took it and failed) is read from the
//! stage as before. Its memory is held on the gateway's budget, at most [`SHARE`] of it, and a
//! file nobody takes within [`MAX_AGE`] is dropped by the next file kept or taken.

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

/// A kept file's rows, handed to the loader with their hold on the budget.
pub struct KeptFile(Entry);

impl KeptFile {
    /// The rows, and their hold on the budget, to be dropped once they are inserted.
    pub fn into_parts(self) -> (RecordBatch, Grant) {
        (self.0.batch, self.0.grant)
    }
}

impl RecentFiles {
    pub fn new() -> Arc<Self> {
        Arc::new(RecentFiles::default())
    }

    /// Whether a file of `bytes` would be kept now, before the work of making its batch.
    pub fn has_room(&self, budget: &MemoryBudget, bytes: usize) -> bool {
        let (room, _expired) = {
            let mut kept = self.lock();
            let expired = kept.expire(Instant::now());
            (kept.bytes.saturating_add(bytes) <= budget.max() / SHARE, expired)
        };
        room
    }

    /// Keeps `batch` as the rows of the file staged at `path`, if it fits within [`SHARE`] of the
    /// budget and the budget grants its memory now. `held` are grants that cover these rows until
    /// now (the requests'): the kept file's grant is made of them, so the rows are never counted
    /// twice. When the file is not kept, they come back as they were.
    pub fn keep(
        &self,
        budget: &Arc<MemoryBudget>,
        path: &str,
        batch: RecordBatch,
        held: Vec<Grant>,
    ) -> Result<(), Vec<Grant>> {
        self.keep_at(budget, path, batch, held, Instant::now())
    }

    fn keep_at(
        &self,
        budget: &Arc<MemoryBudget>,
        path: &str,
        batch: RecordBatch,
        held: Vec<Grant>,
        now: Instant,
    ) -> Result<(), Vec<Grant>> {
        // Every byte its arrays hold, a slice's whole buffers included: what keeping it pins.
        let bytes = batch.get_array_memory_size();
        let (kept, _expired) = {
            let mut kept = self.lock();
            let expired = kept.expire(now);
            let fits = kept.bytes.saturating_add(bytes) <= budget.max() / SHARE && !kept.files.contains_key(path);
            let grant = if fits { one_grant(budget, held, bytes) } else { Err(held) };
            match grant {
                Ok(grant) => {
                    kept.bytes += bytes;
                    kept.order.push_back((path.to_string(), now));
                    kept.files.insert(path.to_string(), Entry { batch, grant });
                    (Ok(()), expired)
                }
                Err(held) => (Err(held), expired),
            }
        };
        // Expired rows (and rows not kept) are freed once the lock is let go.
        kept
    }

    /// The rows of the file staged at `path`, if they are kept; they are kept no longer.
    pub fn take(&self, path: &str) -> Option<KeptFile> {
        self.take_at(path, Instant::now())
    }

    fn take_at(&self, path: &str, now: Instant) -> Option<KeptFile> {
        let (entry, _expired) = {
            let mut kept = self.lock();
            let expired = kept.expire(now);
            (kept.remove(path), expired)
        };
        let entry = entry?;
        self.taken.fetch_add(1, Ordering::Relaxed);
        Some(KeptFile(entry))
    }

    /// Drops the rows kept for `path` (a file whose ledger commit failed: it never loads).
    pub fn forget(&self, path: &str) {
        let entry = self.lock().remove(path);
        drop(entry);
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

/// One grant of exactly `bytes` made of `held` (taken over, never given back in between), grown
/// within the budget where they held less; `held` as it was when the budget refuses.
fn one_grant(budget: &Arc<MemoryBudget>, held: Vec<Grant>, bytes: usize) -> Result<Grant, Vec<Grant>> {
    let mut held = held.into_iter();
    let mut grant = match held.next() {
        Some(first) => first,
        None => budget.reserve(0).map_err(|_| Vec::new())?,
    };
    for other in held {
        grant.absorb(other);
    }
    match grant.resize(bytes) {
        Ok(()) => Ok(grant),
        Err(_) => Err(vec![grant]),
    }
}

impl Kept {
    fn remove(&mut self, path: &str) -> Option<Entry> {
        let entry = self.files.remove(path)?;
        self.bytes -= entry.grant.bytes();
        Some(entry)
    }

    /// Takes out the files kept before `now - MAX_AGE`, to be dropped once the lock is let go,
    /// and forgets the place of files taken since.
    #[must_use]
    fn expire(&mut self, now: Instant) -> Vec<Entry> {
        let mut expired = Vec::new();
        while let Some((path, at)) = self.order.front() {
            if now.saturating_duration_since(*at) >= MAX_AGE {
                let path = path.clone();
                expired.extend(self.remove(&path));
            } else if self.files.contains_key(path) {
                break;
            }
            self.order.pop_front();
        }
        expired
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
        assert!(recent.keep(&budget, "T/a.parquet", rows.clone(), Vec::new()).is_ok());
        assert!(recent.keep(&budget, "T/a.parquet", rows.clone(), Vec::new()).is_err(), "one entry a path");
        assert_eq!((recent.bytes(), budget.used()), (bytes, bytes));
        assert!(recent.take("T/b.parquet").is_none());
        let taken = recent.take("T/a.parquet").expect("kept");
        assert_eq!(recent.taken(), 1);
        let (batch, grant) = taken.into_parts();
        assert_eq!((batch, grant.bytes()), (rows.clone(), bytes));
        assert!(recent.take("T/a.parquet").is_none(), "taken once");
        assert_eq!((recent.bytes(), budget.used()), (0, bytes), "held until the loader drops it");
        drop(grant);
        assert_eq!(budget.used(), 0);
        assert!(recent.keep(&budget, "T/c.parquet", rows, Vec::new()).is_ok());
        recent.forget("T/c.parquet");
        assert_eq!((recent.bytes(), budget.used(), recent.taken()), (0, 0, 1), "forgotten, not taken");
    }

    #[test]
    fn the_requests_grants_become_the_kept_files_so_its_rows_are_counted_once() {
        let rows = batch(1_000);
        let bytes = rows.get_array_memory_size();
        let budget = MemoryBudget::new(bytes * SHARE * 4);
        let recent = RecentFiles::new();
        // Two requests held more than the kept batch takes (their parsed records are gone now),
        // and others hold all the rest of the budget: only the requests' own bytes can keep it.
        let held = vec![budget.reserve(bytes).unwrap(), budget.reserve(bytes * 2).unwrap()];
        let others = budget.reserve(budget.max() - budget.used()).unwrap();
        assert!(recent.keep(&budget, "T/a.parquet", rows.clone(), held).is_ok());
        assert_eq!(budget.used(), bytes + others.bytes(), "only the kept rows stay held");
        // Held less than the batch takes, and the budget has no more: not kept, and the grant
        // comes back as it was, to be held until the file is committed.
        let held = vec![budget.reserve(bytes / 2).unwrap()];
        let rest = budget.reserve(budget.max() - budget.used()).unwrap();
        let back = recent.keep(&budget, "T/b.parquet", rows.clone(), held).unwrap_err();
        assert_eq!(back.iter().map(Grant::bytes).collect::<Vec<_>>(), [bytes / 2]);
        drop((back, others, rest));
        // With room in the budget, the grant grows to the batch.
        let held = vec![budget.reserve(bytes / 2).unwrap()];
        assert!(recent.keep(&budget, "T/b.parquet", rows.clone(), held).is_ok());
        assert_eq!(budget.used(), bytes * 2);
        // Refused as a second entry for a path: the held grants come back whole.
        let held = vec![budget.reserve(bytes).unwrap(), budget.reserve(3).unwrap()];
        let back = recent.keep(&budget, "T/a.parquet", rows, held).unwrap_err();
        assert_eq!(back.iter().map(Grant::bytes).sum::<usize>(), bytes + 3);
    }

    #[test]
    fn files_are_kept_within_an_eighth_of_the_budget_and_only_what_it_grants() {
        let rows = batch(1_000);
        let bytes = rows.get_array_memory_size();
        let budget = MemoryBudget::new(bytes * SHARE * 2);
        let recent = RecentFiles::new();
        assert!(recent.has_room(&budget, bytes * 2));
        assert!(!recent.has_room(&budget, bytes * 2 + 1));
        assert!(recent.keep(&budget, "1", rows.clone(), Vec::new()).is_ok());
        assert!(recent.keep(&budget, "2", rows.clone(), Vec::new()).is_ok());
        assert!(!recent.has_room(&budget, 1));
        assert!(recent.keep(&budget, "3", rows.clone(), Vec::new()).is_err(), "a third would pass the share");
        drop(recent.take("1"));
        assert!(recent.keep(&budget, "3", rows.clone(), Vec::new()).is_ok(), "room again once one is taken");
        // Requests hold the rest of the budget: the share has room, the budget refuses, and the
        // file is not kept.
        drop(recent.take("2"));
        let _requests = budget.reserve(budget.max() - budget.used()).unwrap();
        assert!(recent.has_room(&budget, bytes));
        assert!(recent.keep(&budget, "4", rows, Vec::new()).is_err());
        assert_eq!(recent.bytes(), bytes);
    }

    #[test]
    fn a_file_not_taken_within_the_max_age_is_dropped_at_the_next_call() {
        let budget = MemoryBudget::new(1 << 20);
        let recent = RecentFiles::new();
        let start = Instant::now();
        assert!(recent.keep_at(&budget, "old", batch(10), Vec::new(), start).is_ok());
        assert!(recent.keep_at(&budget, "taken", batch(10), Vec::new(), start + Duration::from_secs(1)).is_ok());
        assert!(recent.keep_at(&budget, "new", batch(10), Vec::new(), start + MAX_AGE / 2).is_ok());
        assert!(recent.take_at("taken", start + Duration::from_secs(2)).is_some());
        assert!(recent.take_at("old", start + MAX_AGE).is_none(), "expired");
        let one = batch(10).get_array_memory_size();
        assert_eq!((recent.bytes(), budget.used()), (one, one), "only the new file is held");
        assert!(recent.take_at("new", start + MAX_AGE).is_some(), "not yet expired");
        assert!(recent.has_room(&budget, 0));
        assert!(recent.lock().order.is_empty(), "the taken file's place is forgotten too");
    }
}

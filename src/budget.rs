//! One memory budget for everything a request holds: its body as it arrives, the body once
//! decompressed, the parsed records and the rows waiting in a buffer. Each request reserves
//! before the work and grows its grant as the work grows, so a flood of large or compressed
//! bodies is refused (503 `over_budget`) instead of making memory grow.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// What the process does when the budget runs low to give back memory its allocator keeps
/// for reuse: freed pages count in the process's resident memory but in no grant. It must not
/// block (the binary's hook wakes a thread of its own). Process-wide, like the allocator it
/// speaks for; set once, by the binary (test binaries run on the system allocator and set none).
static RELIEF: OnceLock<Box<dyn Fn() + Send + Sync>> = OnceLock::new();

/// Sets the relief the budget asks for when a grant takes it to [`PRESSURE`] of its size or
/// more, or is refused, at most once every [`RELIEF_EVERY`]. False if one was set already.
#[must_use]
pub fn on_pressure(relief: impl Fn() + Send + Sync + 'static) -> bool {
    RELIEF.set(Box::new(relief)).is_ok()
}

/// The share of the budget from which it asks for relief: three quarters.
const PRESSURE: (usize, usize) = (3, 4);
/// At most one relief this often.
pub const RELIEF_EVERY: Duration = Duration::from_millis(100);

/// The gateway's memory budget.
#[derive(Debug)]
pub struct MemoryBudget {
    used: AtomicUsize,
    max: usize,
    /// When the budget last asked for relief, in milliseconds after `born` (plus one; 0: never).
    relieved: AtomicU64,
    born: Instant,
    /// How many times it asked for relief.
    reliefs: AtomicU64,
}

/// The budget cannot cover what a request needs now; it may retry shortly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the gateway is over its memory budget")]
pub struct OverBudget;

/// Bytes one request holds against the budget, released when dropped.
#[derive(Debug)]
pub struct Grant {
    budget: Arc<MemoryBudget>,
    bytes: usize,
}

impl MemoryBudget {
    pub fn new(max: usize) -> Arc<Self> {
        let (used, relieved, reliefs) = (AtomicUsize::new(0), AtomicU64::new(0), AtomicU64::new(0));
        Arc::new(MemoryBudget { used, max, relieved, born: Instant::now(), reliefs })
    }

    /// Asks for the relief set by [`on_pressure`] if `used` (held, or asked for by a refused
    /// grant) is [`PRESSURE`] of the budget or more and none was asked for in the last
    /// [`RELIEF_EVERY`].
    fn under_pressure(&self, used: usize) {
        // The clock is read only under pressure: this runs at every grant's growth.
        if !self.pressed(used) {
            return;
        }
        let now = self.born.elapsed().as_millis() as u64 + 1;
        if self.relief_due(used, now) {
            if let Some(relief) = RELIEF.get() {
                relief();
            }
        }
    }

    /// Whether `used` bytes are [`PRESSURE`] of the budget or more.
    fn pressed(&self, used: usize) -> bool {
        used >= self.max / PRESSURE.1 * PRESSURE.0
    }

    /// Whether a relief is due at `now` (milliseconds after `born`, plus one) with `used` bytes,
    /// counting it if so: of the callers that find one due, one wins, the others go on.
    fn relief_due(&self, used: usize, now: u64) -> bool {
        if !self.pressed(used) {
            return false;
        }
        let last = self.relieved.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= RELIEF_EVERY.as_millis() as u64;
        let won = due && self.relieved.compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed).is_ok();
        if won {
            self.reliefs.fetch_add(1, Ordering::Relaxed);
        }
        won
    }

    /// The budget's size.
    pub fn max(&self) -> usize {
        self.max
    }

    /// How many times the budget asked for relief (see [`on_pressure`]), set or not.
    pub fn reliefs(&self) -> u64 {
        self.reliefs.load(Ordering::Relaxed)
    }

    /// Bytes held by every grant.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// A grant of `bytes` that is never refused, for work that must go on once started (encoding
    /// rows that requests are waiting on): it may take the budget past its size, so that new
    /// requests are refused until that work is done.
    pub fn force(self: &Arc<Self>, bytes: usize) -> Grant {
        let used = self.used.fetch_add(bytes, Ordering::AcqRel) + bytes;
        self.under_pressure(used);
        Grant { budget: self.clone(), bytes }
    }

    /// A grant of `bytes`, or `OverBudget`.
    pub fn reserve(self: &Arc<Self>, bytes: usize) -> Result<Grant, OverBudget> {
        let mut grant = Grant { budget: self.clone(), bytes: 0 };
        grant.grow_to(bytes)?;
        Ok(grant)
    }
}

impl Grant {
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Grows the grant to `total` bytes (never shrinks it). One request may go past the whole
    /// budget while no other holds anything, so that a single large request is never starved.
    pub fn grow_to(&mut self, total: usize) -> Result<(), OverBudget> {
        let Some(more) = total.checked_sub(self.bytes).filter(|more| *more > 0) else { return Ok(()) };
        let budget = &self.budget;
        let mut used = budget.used.load(Ordering::Relaxed);
        loop {
            let next = used.saturating_add(more);
            let others = used - self.bytes;
            if next > budget.max && others > 0 {
                budget.under_pressure(next);
                return Err(OverBudget);
            }
            match budget.used.compare_exchange_weak(used, next, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => {
                    self.bytes = total;
                    budget.under_pressure(next);
                    return Ok(());
                }
                Err(actual) => used = actual,
            }
        }
    }
}

impl Grant {
    /// Gives back what the request no longer holds, keeping `total` bytes.
    pub fn shrink_to(&mut self, total: usize) {
        if total < self.bytes {
            self.budget.used.fetch_sub(self.bytes - total, Ordering::AcqRel);
            self.bytes = total;
        }
    }

    /// Holds exactly `total` bytes from now on: shrinks freely, grows only within the budget.
    /// When refused, the grant is as it was.
    pub fn resize(&mut self, total: usize) -> Result<(), OverBudget> {
        self.shrink_to(total);
        self.grow_to(total)
    }

    /// Takes over what `other` holds on the same budget, without giving it back in between.
    pub fn absorb(&mut self, mut other: Grant) {
        debug_assert!(Arc::ptr_eq(&self.budget, &other.budget), "grants of one budget");
        self.bytes += std::mem::take(&mut other.bytes);
    }
}

impl Drop for Grant {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_grow_until_the_budget_is_spent_and_give_back_on_drop() {
        let budget = MemoryBudget::new(100);
        let mut first = budget.reserve(30).unwrap();
        first.grow_to(60).unwrap();
        first.grow_to(10).unwrap();
        assert_eq!((first.bytes(), budget.used()), (60, 60), "grants never shrink");
        let mut second = budget.reserve(40).unwrap();
        assert_eq!(second.grow_to(41), Err(OverBudget), "101 of 100 with another holder");
        assert_eq!(budget.reserve(1).map(|_| ()), Err(OverBudget));
        drop(first);
        second.grow_to(500).expect("alone, one request may pass the whole budget");
        assert_eq!(budget.used(), 500);
        second.resize(70).unwrap();
        assert_eq!((second.bytes(), budget.used()), (70, 70), "what is no longer held goes back");
        let third = budget.reserve(20).unwrap();
        second.absorb(third);
        assert_eq!((second.bytes(), budget.used()), (90, 90), "taken over, not given back");
        drop(second);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn from_three_quarters_the_budget_asks_for_relief_at_most_once_a_period() {
        let budget = MemoryBudget::new(100);
        assert!(!budget.relief_due(74, 1), "74 of 100 is no pressure");
        assert!(budget.relief_due(75, 1), "75 of 100 is, and the first is due at once");
        assert!(!budget.relief_due(90, 100), "not again within the period");
        assert!(budget.relief_due(90, 101), "once the period has passed");
        assert!(!budget.relief_due(10, 500), "10 of 100 is no pressure, however long since the last");
        assert!(budget.relief_due(120, 500), "a refused grant's total counts");
        assert_eq!(budget.reliefs(), 3);
        // Through grants: reserving three quarters asks once (the first is due whatever the clock).
        let fresh = MemoryBudget::new(100);
        let _grant = fresh.reserve(80).unwrap();
        assert_eq!(fresh.reliefs(), 1);
    }
}

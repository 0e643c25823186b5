//! One memory budget for everything a request holds: its body as it arrives, the body once
//! decompressed, the parsed records and the rows waiting in a buffer. Each request reserves
//! before the work and grows its grant as the work grows, so a flood of large or compressed
//! bodies is refused (503 `over_budget`) instead of making memory grow.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The gateway's memory budget.
#[derive(Debug)]
pub struct MemoryBudget {
    used: AtomicUsize,
    max: usize,
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
        Arc::new(MemoryBudget { used: AtomicUsize::new(0), max })
    }

    /// The budget's size.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Bytes held by every grant.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// A grant of `bytes` that is never refused, for work that must go on once started (encoding
    /// rows that requests are waiting on): it may take the budget past its size, so that new
    /// requests are refused until that work is done.
    pub fn force(self: &Arc<Self>, bytes: usize) -> Grant {
        self.used.fetch_add(bytes, Ordering::AcqRel);
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
                return Err(OverBudget);
            }
            match budget.used.compare_exchange_weak(used, next, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => {
                    self.bytes = total;
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
    pub fn resize(&mut self, total: usize) -> Result<(), OverBudget> {
        self.shrink_to(total);
        self.grow_to(total)
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
        drop(second);
        assert_eq!(budget.used(), 0);
    }
}

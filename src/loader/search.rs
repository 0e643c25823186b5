//! The order in which isolation copies the rows of a refused file, kept apart from the stage,
//! the ledger and the warehouse so that it can be checked against any pattern of bad rows.
//!
//! It is adaptive group testing. A part known to hold a refused row is halved and its first half
//! copied: if that loads, the refusal is in the second half; if not, the search goes on in the
//! first half and the second joins the pool of rows not tried yet. So each halving costs one
//! COPY. A row found this way was refused alone (a row whose refusal was only inferred is copied
//! alone to confirm it) and becomes a reject. Then the pool is tried in groups, in row order: a
//! group that loads makes the next one four times as large; a refused group is searched like the file was; each
//! row found shrinks the group to half its size, or to the distance from the row found before
//! if that is less. So sparse bad rows are met in large groups and a run of them row by row.
//! Parts of the pool are merged into a group, or cut into groups of growing size, by writing
//! new files in their place.
//!
//! k bad rows in n cost about k·log2(n/k) + 2k statements when they are spread out, and about
//! k + 2·log2(n) when they are together; halving alone, copying both halves, costs about
//! 1.5·k·log2(n/k) + 2k. The tests below check k·⌈log2 n⌉ + 8 on both kinds of pattern: the 8
//! is what it takes, after a run of bad rows, for the groups to grow back.

/// Names a part: a file of the isolation, open in the ledger.
pub(super) type Key = u64;

/// A set of rows of the refused file, by position in it, in the order they are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Part {
    pub key: Key,
    pub rows: Vec<u32>,
}

/// Why files are replaced by new ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cause {
    /// The one file was refused by its own COPY.
    Refused,
    /// The one file holds a refused row because its sibling loaded and their parent was refused.
    Inferred,
    /// Files not tried yet are merged into a group, or one is cut into groups.
    Regrouped,
}

/// What the isolation does next.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// Write `into` as new files and record them in place of the open files `from`, in one
    /// ledger transaction.
    Replace { from: Vec<Key>, into: Vec<Part>, cause: Cause },
    /// COPY the part alone, and report whether it loaded with [`Search::copied`].
    Copy(Key),
    /// The part is one row that the warehouse refused alone: it becomes a reject.
    Reject(Key),
    /// Every row was loaded or rejected.
    Done,
}

enum State {
    /// `part` holds a refused row; `inferred` where that is known from its parent, not its own
    /// COPY.
    Searching {
        part: Part,
        inferred: bool,
    },
    /// The halves of a searched part are written; the first is to be copied.
    Halved {
        first: Part,
        second: Part,
    },
    /// A group is written and is to be copied.
    Grouped(Part),
    /// A COPY is out; what its outcome means.
    Copying(Trial),
    /// Choose the next group from the pool.
    Pooled,
    Done,
}

enum Trial {
    Half { first: Part, second: Part },
    Confirm(Part),
    Group(Part),
}

/// The search through one refused file of `rows` rows.
pub(super) struct Search {
    state: State,
    /// Rows not tried yet, in parts ordered by their first row.
    pool: Vec<Part>,
    /// The size of the next group.
    group: usize,
    /// The position of the last row found refused.
    previous: Option<u32>,
    next_key: Key,
}

impl Search {
    /// The root: the refused file itself, as part `0`.
    pub fn new(rows: u32) -> Self {
        let part = Part { key: 0, rows: (0..rows).collect() };
        Search {
            state: State::Searching { part, inferred: false },
            pool: Vec::new(),
            group: rows as usize,
            previous: None,
            next_key: 1,
        }
    }

    fn part(&mut self, rows: Vec<u32>) -> Part {
        self.next_key += 1;
        Part { key: self.next_key - 1, rows }
    }

    pub fn next(&mut self) -> Step {
        match std::mem::replace(&mut self.state, State::Done) {
            State::Searching { part, inferred } if part.rows.len() <= 1 => {
                if inferred {
                    let key = part.key;
                    self.state = State::Copying(Trial::Confirm(part));
                    return Step::Copy(key);
                }
                self.found(part.rows[0]);
                self.state = State::Pooled;
                Step::Reject(part.key)
            }
            State::Searching { part, inferred } => {
                let half = part.rows.len() / 2;
                let first = self.part(part.rows[..half].to_vec());
                let second = self.part(part.rows[half..].to_vec());
                let into = vec![first.clone(), second.clone()];
                self.state = State::Halved { first, second };
                let cause = if inferred { Cause::Inferred } else { Cause::Refused };
                Step::Replace { from: vec![part.key], into, cause }
            }
            State::Halved { first, second, .. } => {
                let key = first.key;
                self.state = State::Copying(Trial::Half { first, second });
                Step::Copy(key)
            }
            State::Grouped(part) => {
                let key = part.key;
                self.state = State::Copying(Trial::Group(part));
                Step::Copy(key)
            }
            State::Pooled => self.regroup(),
            State::Copying(trial) => {
                // The driver asked again without reporting the outcome: ask for the same COPY.
                let key = match &trial {
                    Trial::Half { first, .. } => first.key,
                    Trial::Confirm(part) | Trial::Group(part) => part.key,
                };
                self.state = State::Copying(trial);
                Step::Copy(key)
            }
            State::Done => Step::Done,
        }
    }

    /// Reports the outcome of the last [`Step::Copy`]: loaded, or refused for its data.
    pub fn copied(&mut self, loaded: bool) {
        let State::Copying(trial) = std::mem::replace(&mut self.state, State::Done) else {
            debug_assert!(false, "an outcome without a COPY");
            return;
        };
        self.state = match (trial, loaded) {
            // Every row the parent was refused for is in the second half.
            (Trial::Half { second, .. }, true) => State::Searching { part: second, inferred: true },
            (Trial::Half { first, second }, false) => {
                self.defer(second);
                State::Searching { part: first, inferred: false }
            }
            // The refusal was not this row's (the table may have changed back).
            (Trial::Confirm(_), true) => State::Pooled,
            (Trial::Confirm(part), false) => State::Searching { part, inferred: false },
            (Trial::Group(_), true) => {
                self.group = self.group.saturating_mul(4);
                State::Pooled
            }
            (Trial::Group(part), false) => State::Searching { part, inferred: false },
        };
    }

    /// Every part open now: what is left to load or reject (and what is being copied).
    pub fn open(&self) -> Vec<Key> {
        let mut keys: Vec<Key> = self.pool.iter().map(|p| p.key).collect();
        match &self.state {
            State::Searching { part, .. } | State::Grouped(part) => keys.push(part.key),
            State::Copying(Trial::Confirm(part) | Trial::Group(part)) => keys.push(part.key),
            State::Halved { first, second, .. } | State::Copying(Trial::Half { first, second }) => {
                keys.extend([first.key, second.key])
            }
            State::Pooled | State::Done => {}
        }
        keys
    }

    fn found(&mut self, row: u32) {
        let half = (self.group / 2).max(1);
        self.group = match self.previous {
            Some(previous) => half.min(row.abs_diff(previous) as usize).max(1),
            None => half,
        };
        self.previous = Some(row);
    }

    /// Puts rows not tried yet in the pool, in order.
    fn defer(&mut self, part: Part) {
        let at = self.pool.partition_point(|p| p.rows[0] < part.rows[0]);
        self.pool.insert(at, part);
    }

    /// The next group: the first part of the pool as it is, parts merged up to the group size,
    /// or a large part cut into a group and pieces of growing size after it.
    fn regroup(&mut self) -> Step {
        if self.pool.is_empty() {
            self.state = State::Done;
            return Step::Done;
        }
        let size = self.group.max(1);
        if self.pool[0].rows.len() > size {
            let whole = self.pool.remove(0);
            let mut cuts = Vec::new();
            let (mut at, mut width) = (0, size);
            while at < whole.rows.len() {
                let end = (at + width).min(whole.rows.len());
                cuts.push(self.part(whole.rows[at..end].to_vec()));
                at = end;
                if cuts.len() >= 2 {
                    width = width.saturating_mul(2);
                }
            }
            let into = cuts.clone();
            let mut cuts = cuts.into_iter();
            let group = cuts.next().expect("a part holds rows");
            self.pool.splice(0..0, cuts);
            self.state = State::Grouped(group);
            return Step::Replace { from: vec![whole.key], into, cause: Cause::Regrouped };
        }
        let mut taken = 1;
        let mut total = self.pool[0].rows.len();
        while taken < self.pool.len() && total + self.pool[taken].rows.len() <= size {
            total += self.pool[taken].rows.len();
            taken += 1;
        }
        let parts: Vec<Part> = self.pool.drain(..taken).collect();
        if parts.len() == 1 {
            let part = parts.into_iter().next().expect("one part");
            let key = part.key;
            self.state = State::Copying(Trial::Group(part));
            return Step::Copy(key);
        }
        let from = parts.iter().map(|p| p.key).collect();
        let group = self.part(parts.into_iter().flat_map(|p| p.rows).collect());
        self.state = State::Grouped(group.clone());
        Step::Replace { from, into: vec![group], cause: Cause::Regrouped }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    /// What became of each row, and the statements it took.
    #[derive(Debug, Default)]
    struct Run {
        loaded: BTreeSet<u32>,
        rejected: BTreeSet<u32>,
        copies: usize,
    }

    /// Runs a search against a warehouse that refuses exactly the rows in `bad`, checking each
    /// step against the open parts as it goes.
    fn run(rows: u32, bad: &BTreeSet<u32>) -> Run {
        let mut search = Search::new(rows);
        let mut open: BTreeMap<Key, Vec<u32>> = BTreeMap::from([(0, (0..rows).collect())]);
        // The file was refused by its first COPY, before the search: alone, if it is one row.
        let mut refused_alone: BTreeSet<Key> = if rows == 1 { BTreeSet::from([0]) } else { BTreeSet::new() };
        let mut run = Run::default();
        for _ in 0..10 * rows as usize + 100 {
            let mut keys: Vec<Key> = search.open();
            keys.sort_unstable();
            assert_eq!(keys, open.keys().copied().collect::<Vec<_>>(), "open parts as the driver holds them");
            match search.next() {
                Step::Done => {
                    assert!(open.is_empty(), "done with parts open: {open:?}");
                    return run;
                }
                Step::Replace { from, into, .. } => {
                    let mut before: Vec<u32> = from.iter().flat_map(|k| open.remove(k).expect("open")).collect();
                    let mut after: Vec<u32> = into.iter().flat_map(|p| p.rows.clone()).collect();
                    before.sort_unstable();
                    after.sort_unstable();
                    assert_eq!(before, after, "a replacement keeps exactly its rows");
                    for part in into {
                        assert!(!part.rows.is_empty());
                        assert!(open.insert(part.key, part.rows).is_none(), "keys are new");
                    }
                }
                Step::Copy(key) => {
                    run.copies += 1;
                    let part = &open[&key];
                    let loaded = part.iter().all(|r| !bad.contains(r));
                    if loaded {
                        run.loaded.extend(open.remove(&key).unwrap());
                    } else if part.len() == 1 {
                        refused_alone.insert(key);
                    }
                    search.copied(loaded);
                }
                Step::Reject(key) => {
                    assert!(refused_alone.contains(&key), "a row is rejected only when refused alone");
                    let part = open.remove(&key).unwrap();
                    assert_eq!(part.len(), 1);
                    run.rejected.insert(part[0]);
                }
            }
        }
        panic!("the search did not end");
    }

    /// A small deterministic generator, so that every pattern is reproducible.
    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u32) -> u32 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % u64::from(n)) as u32
        }
    }

    fn check(rows: u32, bad: &BTreeSet<u32>) -> usize {
        let run = run(rows, bad);
        assert_eq!(run.rejected, *bad, "exactly the bad rows are rejected");
        let good: BTreeSet<u32> = (0..rows).filter(|r| !bad.contains(r)).collect();
        assert_eq!(run.loaded, good, "every other row loads, once");
        let bound = bad.len() * (f64::from(rows).log2().ceil() as usize) + 8;
        assert!(run.copies <= bound, "{} bad of {rows}: {} COPYs, bound {bound}", bad.len(), run.copies);
        run.copies
    }

    #[test]
    fn every_pattern_of_bad_rows_is_isolated_within_the_bound() {
        let mut rng = Rng(0x5eed);
        for rows in [1, 2, 3, 5, 8, 17, 100, 1000, 4096, 10_000] {
            for k in [1, 2, 3, 7, 20, 100, 1000] {
                if k > rows {
                    continue;
                }
                for _ in 0..4 {
                    let mut spread = BTreeSet::new();
                    while spread.len() < k as usize {
                        spread.insert(rng.below(rows));
                    }
                    check(rows, &spread);
                    let start = rng.below(rows - k + 1);
                    check(rows, &(start..start + k).collect());
                }
            }
            check(rows, &(0..rows).collect());
        }
    }

    #[test]
    fn sparse_rows_cost_less_than_halving_alone() {
        // The pattern of the DuckDB isolation test: 14 refused rows in 99,000.
        let rows: Vec<u32> = (0..100_000u32).filter(|i| i % 100 != 13).collect();
        let bad: BTreeSet<u32> = rows
            .iter()
            .enumerate()
            .filter(|(_, &i)| i % 10_000 == 7 || i % 25_000 == 1234)
            .map(|(at, _)| at as u32)
            .collect();
        assert_eq!(bad.len(), 14);
        let copies = check(rows.len() as u32, &bad);
        println!("14 bad rows of 99,000: {copies} COPY statements");
        // Halving alone, each refused half searched and its sibling copied whole, took 301.
        assert!(copies < 240, "{copies}");
        // A run of 300 bad rows costs about one statement each, not log2(n).
        let copies = check(100_000, &(40_000..40_300).collect());
        println!("a run of 300 bad rows in 100,000: {copies} COPY statements");
        assert!(copies < 2 * 300, "{copies}");
    }
}

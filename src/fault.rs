//! Crash points for the crash-safety tests.
//!
//! Built with the `fault-injection` feature (the test suite's build, never a release), a process
//! started with `SNOWGATE_CRASH_AT=<point>` aborts the first time it reaches that point: no
//! destructor runs, no buffer is flushed, no transaction is committed, as with `kill -9`. Without
//! the feature every crash point compiles to nothing.

/// Where a process can be made to crash; each name is the value `SNOWGATE_CRASH_AT` takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// Part of a request body has arrived.
    Receiving,
    /// Records are parsed, not yet validated.
    Validating,
    /// A Parquet file is in the stage, its ledger commit not begun.
    StagedBeforeCommit,
    /// Inside the ledger transaction that commits a staged file, before it commits.
    DuringCommit,
    /// The warehouse has run COPY (DuckDB: inside its transaction, before it commits).
    DuringCopy,
    /// COPY has committed; the ledger does not know yet.
    AfterCopy,
    /// The two parts of a file being split are in the stage; the ledger does not know them yet.
    PartsStaged,
    /// Inside the ledger transaction that records a split, before it commits.
    DuringSplit,
    /// Shutdown has begun: rows of requests still waiting for their linger are buffered, not
    /// yet flushed.
    Shutdown,
}

impl CrashPoint {
    pub const ALL: [CrashPoint; 9] = [
        CrashPoint::Receiving,
        CrashPoint::Validating,
        CrashPoint::StagedBeforeCommit,
        CrashPoint::DuringCommit,
        CrashPoint::DuringCopy,
        CrashPoint::AfterCopy,
        CrashPoint::PartsStaged,
        CrashPoint::DuringSplit,
        CrashPoint::Shutdown,
    ];

    pub fn name(self) -> &'static str {
        match self {
            CrashPoint::Receiving => "receiving",
            CrashPoint::Validating => "validating",
            CrashPoint::StagedBeforeCommit => "staged_before_commit",
            CrashPoint::DuringCommit => "during_commit",
            CrashPoint::DuringCopy => "during_copy",
            CrashPoint::AfterCopy => "after_copy",
            CrashPoint::PartsStaged => "parts_staged",
            CrashPoint::DuringSplit => "during_split",
            CrashPoint::Shutdown => "shutdown",
        }
    }
}

/// Aborts the process if `SNOWGATE_CRASH_AT` names `point` (with the `fault-injection` feature).
/// `<point>:<n>` aborts on the n-th time the point is reached instead of the first, so that a
/// test can have some requests acknowledged before the crash.
#[cfg(feature = "fault-injection")]
pub fn crash_point(point: CrashPoint) {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static TARGET: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static HITS: AtomicU64 = AtomicU64::new(0);
    let target = TARGET.get_or_init(|| {
        let value = std::env::var("SNOWGATE_CRASH_AT").ok()?;
        let (name, nth) = value.split_once(':').unwrap_or((&value, "1"));
        Some((name.to_string(), nth.parse().expect("SNOWGATE_CRASH_AT=<point>[:<n>]")))
    });
    let Some((name, nth)) = target else { return };
    if name == point.name() && HITS.fetch_add(1, Ordering::SeqCst) + 1 == *nth {
        eprintln!("snowgate: crash point {name} reached ({nth}), aborting");
        std::process::abort();
    }
}

/// Crash points do nothing in a build without the `fault-injection` feature.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn crash_point(_point: CrashPoint) {}

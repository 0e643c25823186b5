//! What parsed records really take on the heap, against the estimate the memory budget reserves
//! before parsing (`decode::parsed_footprint`). Measured with a counting global allocator in this
//! test binary; only the parser runs here.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{json, Value};
use snowgate::ingest::decode::{parse_records, parsed_footprint, BodyFormat, DecodeLimits};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(now, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on as is.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Peak heap bytes taken while parsing `text` (beyond what was live before).
fn measured(text: &[u8], format: BodyFormat) -> usize {
    let limits = DecodeLimits {
        max_decompressed_bytes: 1 << 30,
        max_record_bytes: 1 << 20,
        max_records: 10_000_000,
        max_depth: 64,
    };
    let before = LIVE.load(Ordering::SeqCst);
    PEAK.store(before, Ordering::SeqCst);
    let parsed = parse_records(text, format, &limits).unwrap();
    let peak = PEAK.load(Ordering::SeqCst) - before;
    drop(parsed);
    peak
}

/// Body shapes a partner may send: real loan records, long strings, wide rows of small numbers,
/// nested arrays, escapes.
fn shapes() -> Vec<(&'static str, Vec<Value>)> {
    vec![
        (
            "loans",
            (0..20_000)
                .map(|i| {
                    json!({"id": i, "amount": format!("{}.{:02}", 100 + i, i % 100), "borrower": format!("borrower-{i}"),
                        "issued_on": "2026-11-23", "approved": i % 2 == 0, "updated_at": "2026-11-23T10:00:00Z",
                        "attributes": {"score": i % 700, "tags": ["a", "b"]}})
                })
                .collect(),
        ),
        ("long strings", (0..20_000).map(|i| json!({"id": i, "note": "x".repeat(200)})).collect()),
        ("wide numbers", (0..5_000).map(|i| Value::Object((0..60).map(|c| (format!("c{c}"), json!(i % 10))).collect())).collect()),
        ("nested arrays", (0..10_000).map(|i| json!({"id": i, "m": [[1, 2], [3, [4, 5]], []], "o": {"a": {"b": {}}}})).collect()),
        ("escapes", (0..20_000).map(|i| json!({"id": i, "q": "say \"hi\", {ok}: [1,2]\n"})).collect()),
    ]
}

#[test]
fn the_estimate_covers_what_parsing_takes() {
    for (name, records) in shapes() {
        let array = serde_json::to_vec(&records).unwrap();
        let ndjson: Vec<u8> =
            records.iter().flat_map(|r| serde_json::to_vec(r).unwrap().into_iter().chain([b'\n'])).collect();
        drop(records);
        for (text, format) in [(&array, BodyFormat::Json), (&ndjson, BodyFormat::Ndjson)] {
            let (actual, estimate) = (measured(text, format), parsed_footprint(text));
            println!(
                "{name} {format:?}: text {} KiB, parsed {:.2}x text, estimate {:.2}x",
                text.len() >> 10,
                actual as f64 / text.len() as f64,
                estimate as f64 / text.len() as f64
            );
            assert!(estimate >= actual, "{name} {format:?}: estimate {estimate} < measured {actual}");
            // Not so far above that the budget refuses what it could hold.
            assert!(estimate < actual * 3, "{name} {format:?}: estimate {estimate} far above measured {actual}");
        }
    }
}

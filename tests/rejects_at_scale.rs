//! The rejects of one large batch with 10% bad records are all retrievable, page by page and as
//! one NDJSON stream, and serving them keeps the gateway's memory flat. CI runs 100,000 records;
//! `SNOWGATE_SCALE_RECORDS=1000000` runs the million the README quotes, on default settings.

mod common;

use std::collections::BTreeSet;
use std::process::Child;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::Value;

const MIB: u64 = 1 << 20;

/// Resident memory of a process now (VmRSS).
fn rss(child: &Child) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// Samples `child`'s resident memory until `stop`; returns the highest.
fn sample_rss(pid: u32, stop: Arc<AtomicBool>, peak: Arc<AtomicU64>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                if let Some(kib) = status
                    .lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|n| n.parse::<u64>().ok())
                {
                    peak.fetch_max(kib * 1024, Ordering::Relaxed);
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reject_of_a_large_batch_pages_and_streams_in_flat_memory() {
    let n: u64 = std::env::var("SNOWGATE_SCALE_RECORDS").ok().and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let dir = tempfile::tempdir().unwrap();
    let (command, base) = common::gateway_command(dir.path());
    let gateway = common::Process::start(command, base.clone()).await;
    let child = &gateway.child;
    common::declare_ids(&base, "loans").await;

    // One record in ten has a null id.
    let mut body = String::with_capacity(n as usize * 16);
    let mut bad = BTreeSet::new();
    for i in 0..n {
        if i % 10 == 3 {
            body.push_str("{\"id\":null}\n");
            bad.insert(i);
        } else {
            body.push_str(&format!("{{\"id\":{i}}}\n"));
        }
    }
    let client = reqwest::Client::builder().timeout(Duration::from_secs(600)).build().unwrap();
    let started = Instant::now();
    let response = client
        .post(format!("{base}/v1/tables/loans/batches"))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let id = response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    let batch = common::wait_final(&client, &base, &id, Duration::from_secs(600)).await;
    let ingested = started.elapsed();
    assert_eq!(batch["counts"]["rejected"], bad.len(), "{batch}");
    assert_eq!(batch["counts"]["loaded"], n - bad.len() as u64, "{batch}");

    // Page by page.
    let started = Instant::now();
    let (mut paged, mut after) = (Vec::with_capacity(bad.len()), String::new());
    loop {
        let response = client.get(format!("{base}/v1/batches/{id}/rejects?limit=1000{after}")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let page: Value = response.json().await.unwrap();
        paged.extend(page["rejects"].as_array().unwrap().iter().map(|r| r["index"].as_u64().unwrap()));
        match page["next"].as_str() {
            Some(next) => after = format!("&after={next}"),
            None => break,
        }
    }
    let paging = started.elapsed();
    assert_eq!(paged, bad.iter().copied().collect::<Vec<_>>(), "every reject once, in index order");

    // As one stream, with the gateway's memory sampled throughout.
    let before = rss(child);
    let (stop, peak) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(before)));
    let sampler = sample_rss(child.id(), stop.clone(), peak.clone());
    let started = Instant::now();
    let response = client
        .get(format!("{base}/v1/batches/{id}/rejects"))
        .header("accept", "application/x-ndjson")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let mut stream = response.bytes_stream();
    let (mut streamed, mut pending, mut bytes) = (Vec::with_capacity(bad.len()), Vec::new(), 0usize);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        bytes += chunk.len();
        pending.extend_from_slice(&chunk);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let reject: Value = serde_json::from_slice(&line).unwrap();
            assert_eq!(reject["errors"][0]["code"], "null_in_not_null");
            streamed.push(reject["index"].as_u64().unwrap());
        }
    }
    let streaming = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    assert!(pending.is_empty(), "the stream ends with a whole line");
    assert_eq!(streamed, paged, "the stream holds what the pages hold");
    let growth = peak.load(Ordering::Relaxed).saturating_sub(before);
    println!(
        "rejects at scale: {n} records, {} rejects; ingest+load {ingested:?}; paged (1000 a page) in {paging:?}; \
         streamed {} MiB in {streaming:?}; gateway RSS {} MiB before the stream, peak {} MiB during it",
        bad.len(),
        bytes as u64 / MIB,
        before / MIB,
        peak.load(Ordering::Relaxed) / MIB
    );
    // Flat: the stream reads a page at a time (ledger rows, then their lines from the stage), so
    // what it holds does not grow with the number of rejects.
    assert!(growth < 48 * MIB, "streaming grew the gateway by {} MiB", growth / MIB);
    gateway.terminate();
}

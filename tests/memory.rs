//! Peak memory of a real gateway process under hostile and heavy bodies, read from the kernel
//! (`VmHWM` in /proc/<pid>/status), against `limits.memory_budget_bytes` plus the fixed overhead
//! the README states.

mod common;

use std::io::Write;
use std::process::Child;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const MIB: u64 = 1 << 20;
/// The budget these tests run with.
const BUDGET: u64 = 256 * MIB;
/// What the README states a process needs beyond its budget (runtime, DuckDB, buffers, allocator).
const OVERHEAD: u64 = 192 * MIB;
/// Records per body in the flood: about 10 MB of JSON.
const RECORDS: usize = 47_000;

fn peak_rss(child: &Child) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

async fn gateway(dir: &std::path::Path) -> (Child, String) {
    let (mut command, base) = common::gateway_command(dir);
    command
        .env("SNOWGATE_LIMITS__MEMORY_BUDGET_BYTES", BUDGET.to_string())
        .env("SNOWGATE_LIMITS__MAX_DECOMPRESSED_BYTES", (64 * MIB).to_string())
        .env("SNOWGATE_LIMITS__MAX_BODY_BYTES", (16 * MIB).to_string());
    let child = common::start_gateway(command, &base).await;
    common::declare_ids(&base, "loans").await;
    (child, base)
}

/// About 230 MB of JSON records, compressed.
fn bomb(gzip: bool) -> Vec<u8> {
    let chunk = "{\"id\": 1},".repeat(100_000);
    let mut encoded: Vec<u8> = Vec::new();
    {
        let mut encoder: Box<dyn Write + '_> = if gzip {
            Box::new(flate2::write::GzEncoder::new(&mut encoded, flate2::Compression::best()))
        } else {
            Box::new(zstd::stream::write::Encoder::new(&mut encoded, 19).unwrap().auto_finish())
        };
        encoder.write_all(b"[").unwrap();
        for _ in 0..230 {
            encoder.write_all(chunk.as_bytes()).unwrap();
        }
        encoder.write_all(b"{\"id\": 1}]").unwrap();
    }
    encoded
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_decompression_bombs_stay_within_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, base) = gateway(dir.path()).await;
    let idle = peak_rss(&child);
    let bodies: Vec<(bool, Vec<u8>)> = [true, false, true, false].into_iter().map(|gzip| (gzip, bomb(gzip))).collect();
    let client = reqwest::Client::new();
    let posts = bodies.into_iter().map(|(gzip, body)| {
        let request = client
            .post(format!("{base}/v1/tables/loans/batches"))
            .header("content-type", "application/json")
            .header("content-encoding", if gzip { "gzip" } else { "zstd" })
            .body(body);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let retry = response.headers().contains_key("retry-after");
            let body: Value = response.json().await.unwrap();
            (status, retry, body)
        }
    });
    for (status, retry, body) in futures::future::join_all(posts).await {
        assert!([413, 503].contains(&status), "{status} {body}");
        assert_eq!(status == 503, retry, "a 503 carries Retry-After");
    }
    let peak = peak_rss(&child);
    let _ = child.kill();
    let _ = child.wait();
    println!("bombs: idle {} MiB, peak {} MiB (budget {} MiB)", idle / MIB, peak / MIB, BUDGET / MIB);
    assert!(peak < BUDGET + OVERHEAD, "peak RSS {} MiB", peak / MIB);
}

/// Many clients posting gzip bodies of real records as fast as they can: every answer is 202 or a
/// 503 with Retry-After, memory stays within budget plus overhead, every acknowledged record loads.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_gzip_bodies_is_refused_not_held() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, base) = gateway(dir.path()).await;
    // About 10 MB of JSON per body.
    let records: Vec<Value> = (0..RECORDS).map(|i| json!({"id": i, "note": "x".repeat(200)})).collect();
    let text = serde_json::to_vec(&records).unwrap();
    assert!(text.len() >= 10_000_000, "{} bytes", text.len());
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(&text).unwrap();
    let body = bytes::Bytes::from(encoder.finish().unwrap());
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    let clients = (0..16).map(|_| {
        let (client, base, body) = (client.clone(), base.clone(), body.clone());
        tokio::spawn(async move {
            let (mut acked, mut refused) = (Vec::new(), 0);
            while Instant::now() < deadline {
                let response = client
                    .post(format!("{base}/v1/tables/loans/batches"))
                    .header("content-type", "application/json")
                    .header("content-encoding", "gzip")
                    .body(body.clone())
                    .send()
                    .await
                    .unwrap();
                match response.status().as_u16() {
                    202 => acked.push(response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string()),
                    503 => {
                        assert!(response.headers().contains_key("retry-after"));
                        refused += 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    other => panic!("{other}: {}", response.text().await.unwrap()),
                }
            }
            (acked, refused)
        })
    });
    let (mut acked, mut refused) = (Vec::new(), 0);
    for (ids, n) in futures::future::try_join_all(clients).await.unwrap() {
        acked.extend(ids);
        refused += n;
    }
    let peak = peak_rss(&child);
    let metrics = client.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    let reliefs: u64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("snowgate_memory_reliefs_total "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no snowgate_memory_reliefs_total in\n{metrics}"));
    println!(
        "flood: {} x {} KiB gzip bodies acknowledged, {refused} refused, {reliefs} reliefs; peak {} MiB (budget {} MiB)",
        acked.len(),
        body.len() / 1024,
        peak / MIB,
        BUDGET / MIB
    );
    assert!(reliefs > 0, "a flood that fills the budget asks the allocator to give its freed pages back");
    for id in &acked {
        let batch = common::wait_final(&client, &base, id, Duration::from_secs(120)).await;
        assert_eq!(batch["counts"]["loaded"], RECORDS, "{batch}");
    }
    let _ = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    assert!(child.wait().unwrap().success());
    assert!(!acked.is_empty());
    assert!(peak < BUDGET + OVERHEAD, "peak RSS {} MiB", peak / MIB);
    assert_eq!(common::duckdb_count(dir.path(), "SELECT COUNT(*) FROM loans"), RECORDS as i64 * acked.len() as i64);
}

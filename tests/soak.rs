//! The soak: two gateway processes on the production backends (Postgres, s3s-fs, fakesnow behind
//! a TCP proxy), clients posting to both (some records bad, some with new fields), one gateway
//! `kill -9`ed and restarted every few seconds, a warehouse outage in the middle; then an exact
//! per-record reconciliation of every acknowledged batch.
//!
//! `SNOWGATE_SOAK_SECS` sets how long clients post (default 20, the short mode CI runs; try 300).

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::production::Peers;
use common::proxy::{Mode, Proxy};
use common::Process;
use serde_json::{json, Value};

const TABLES: [&str; 3] = ["loans", "repayments", "events"];
const CLIENTS: usize = 6;

/// What a client was told: batch id -> (table, accepted records, SUM(amount) of them).
type Acked = Arc<Mutex<BTreeMap<String, (String, u64, i64)>>>;

async fn start(peers: &Peers, warehouse: &Proxy, name: &str, port: u16) -> Process {
    let (mut command, base) = common::gateway_command_on(&peers.dir.path().join(name), port);
    peers.process_env(&mut command);
    command
        .env("SNOWGATE_WAREHOUSE__SNOWFLAKE__BASE_URL", format!("http://{}", warehouse.addr))
        .env("SNOWGATE_LOADER__LEASE_SECS", "5")
        .env("SNOWGATE_LOADER__RETRY_BASE_MS", "200")
        // A statement caught in the outage is given up well within the test's wait for loads.
        .env("SNOWGATE_WAREHOUSE__SNOWFLAKE__STATEMENT_TIMEOUT_SECS", "15");
    Process::start(command, base).await
}

/// Batch `n` of a client: 1 to 60 records, about one in eight bad (a null id), and from time to
/// time a field the table does not have yet.
fn batch(client: usize, n: usize) -> (Vec<Value>, u64, i64) {
    let size = 1 + (client * 31 + n * 17) % 60;
    let (mut good, mut sum) = (0, 0i64);
    let records = (0..size)
        .map(|i| {
            let amount = ((client * 1000 + n * 7 + i) % 5000) as i64;
            if (n + i) % 8 == 3 {
                return json!({"id": null, "amount": amount});
            }
            good += 1;
            sum += amount;
            let mut record = json!({"id": (client * 1_000_000 + n * 100 + i), "amount": amount});
            if n % 5 == 4 {
                record[format!("note_{}", n % 3)] = json!(format!("client {client}"));
            }
            record
        })
        .collect();
    (records, good, sum)
}

async fn client(id: usize, bases: [String; 2], stop: Arc<AtomicBool>, acked: Acked) -> usize {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    let mut refused = 0;
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let table = TABLES[(id + n) % TABLES.len()];
        let (records, good, sum) = batch(id, n);
        let base = &bases[(id + n) % 2];
        match http.post(format!("{base}/v1/tables/{table}/batches")).json(&records).send().await {
            // 200: every record was rejected, so the batch is final at once.
            Ok(response) if response.status() == 202 || (response.status() == 200 && good == 0) => {
                let body: Value = response.json().await.unwrap();
                assert_eq!(body["counts"]["accepted"].as_u64(), Some(good), "{body}");
                let batch = body["id"].as_str().unwrap().to_string();
                acked.lock().unwrap().insert(batch, (table.to_string(), good, sum));
            }
            Ok(response) => {
                // Only a retryable refusal is acceptable.
                let status = response.status().as_u16();
                assert!(status == 503 && response.headers().contains_key("retry-after"), "{status}");
                refused += 1;
            }
            // The gateway was killed under this request: not acknowledged.
            Err(_) => refused += 1,
        }
        n += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    refused
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn soak_with_kills_and_an_outage_reconciles_exactly() {
    let secs: u64 = std::env::var("SNOWGATE_SOAK_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    let peers = Peers::start().await;
    let warehouse = Proxy::start(common::socket_of(peers.snowflake.base_url.as_ref().unwrap())).await;
    let ports = [common::peers::free_port(), common::peers::free_port()];
    let bases = ports.map(|p| format!("http://127.0.0.1:{p}"));
    let mut steady = Some(start(&peers, &warehouse, "steady", ports[0]).await);
    let mut victim = Some(start(&peers, &warehouse, "victim", ports[1]).await);
    for table in TABLES {
        let response = reqwest::Client::new()
            .put(format!("{}/v1/tables/{table}", bases[0]))
            .json(&json!({"columns": [{"name": "id", "type": "NUMBER", "nullable": false}, {"name": "amount", "type": "NUMBER(12,2)"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let acked: Acked = Arc::default();
    let clients: Vec<_> =
        (0..CLIENTS).map(|id| tokio::spawn(client(id, bases.clone(), stop.clone(), acked.clone()))).collect();
    let started = Instant::now();
    let period = Duration::from_secs(secs.clamp(6, 30) / 2);
    let mut kills = 0;
    let mut outage = false;
    while started.elapsed() < Duration::from_secs(secs) {
        tokio::time::sleep(period).await;
        drop(victim.take());
        kills += 1;
        if !outage && started.elapsed() >= Duration::from_secs(secs / 2) {
            // The warehouse goes away for a while; POSTs must keep being acknowledged.
            warehouse.set(Mode::Down);
            tokio::time::sleep(Duration::from_secs(3)).await;
            warehouse.set(Mode::Pass);
            outage = true;
        }
        victim = Some(start(&peers, &warehouse, "victim", ports[1]).await);
    }
    stop.store(true, Ordering::Relaxed);
    let mut refused = 0;
    for client in clients {
        refused += client.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(outage && kills >= 2, "kills {kills}, outage {outage}");
    assert!(acked.len() > 50, "only {} batches acknowledged", acked.len());

    let http = reqwest::Client::new();
    for (id, (_, good, _)) in &acked {
        let batch = common::wait_final(&http, &bases[0], id, Duration::from_secs(120)).await;
        let expected = if *good == 0 { "rejected" } else { "loaded" };
        assert_eq!(batch["status"], expected, "{batch}");
        assert_eq!(batch["counts"]["loaded"].as_u64(), Some(*good), "{batch}");
    }
    // Every batch in the ledger, acknowledged or not (an answer lost with a killed gateway).
    let mut ledger: BTreeMap<String, Value> = BTreeMap::new();
    let mut after = String::new();
    loop {
        let url = format!("{}/v1/batches?limit=1000{after}", bases[0]);
        let page: Value = http.get(url).send().await.unwrap().json().await.unwrap();
        for batch in page["batches"].as_array().unwrap() {
            ledger.insert(batch["id"].as_str().unwrap().to_string(), batch.clone());
        }
        match page["next"].as_str() {
            Some(next) => after = format!("&after={next}"),
            None => break,
        }
    }
    for id in ledger.keys().filter(|id| !acked.contains_key(*id)).cloned().collect::<Vec<_>>() {
        ledger.insert(id.clone(), common::wait_final(&http, &bases[0], &id, Duration::from_secs(120)).await);
    }
    assert!(acked.keys().all(|id| ledger.contains_key(id)));
    drop(victim.take());
    drop(steady.take());

    let client = peers.warehouse();
    let (mut rows, mut unacknowledged) = (0u64, 0);
    for table in TABLES {
        let sql = format!(
            "SELECT \"_BATCH_ID\", COUNT(*), COUNT(DISTINCT \"_RECORD_INDEX\"), SUM(AMOUNT) FROM {} GROUP BY 1",
            table.to_uppercase()
        );
        for row in client.query(&sql).await.unwrap().rows {
            let text = |i: usize| row[i].clone().unwrap_or_default();
            let id = text(0);
            let (count, distinct, sum): (u64, u64, f64) =
                (text(1).parse().unwrap(), text(2).parse().unwrap(), text(3).parse().unwrap());
            assert_eq!(count, distinct, "batch {id}: a record loaded twice");
            let known = ledger.get(&id).unwrap_or_else(|| panic!("batch {id} in the warehouse, not in the ledger"));
            assert_eq!(known["status"], "loaded", "{known}");
            assert_eq!(known["counts"]["accepted"].as_u64(), Some(count), "batch {id} loaded whole: {known}");
            match acked.get(&id) {
                Some((expected_table, good, expected_sum)) => {
                    assert_eq!((expected_table.as_str(), count), (table, *good), "batch {id}");
                    assert_eq!(sum, *expected_sum as f64, "batch {id}: SUM(amount)");
                    rows += count;
                }
                // Its answer was lost with a killed gateway: unacknowledged, yet whole.
                None => unacknowledged += 1,
            }
        }
    }
    let expected: u64 = acked.values().map(|(_, good, _)| good).sum();
    assert_eq!(rows, expected, "every acknowledged record is in the warehouse once");
    println!(
        "soak: {secs}s, {} batches acknowledged ({expected} records), {refused} refused or cut \
         ({unacknowledged} of them stored and loaded whole), {kills} kill -9s, one warehouse outage",
        acked.len()
    );
}

//! `GET /metrics` after a batch with 1% bad records: the counts of the batch, the loaded rows, the
//! backlog drained, and the error rate an alert would compute (rejected / received per partner)
//! at 0.01, all read from one scrape of a gateway on the embedded backends.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};

/// Samples of an OpenMetrics text: `name{labels}` as written, to its value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.rsplit_once(' '))
        .map(|(series, value)| (series.to_string(), value.parse().unwrap()))
        .collect()
}

/// The sum of the samples named `name` whose labels include every `label="value"` of `with`.
fn sum(samples: &BTreeMap<String, f64>, name: &str, with: &[&str]) -> f64 {
    samples
        .iter()
        .filter(|(series, _)| series.split('{').next() == Some(name))
        .filter(|(series, _)| with.iter().all(|label| series.contains(label)))
        .map(|(_, value)| value)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_shows_the_batch_and_its_error_rate() {
    let dir = tempfile::tempdir().unwrap();
    let app = common::spawn_app(dir.path()).await;
    app.declare_loans().await;
    let records: Vec<Value> = (0..1000)
        .map(|i| {
            let mut record = common::loan(i);
            if i % 100 == 7 {
                record["amount"] = json!("not a number");
            }
            record
        })
        .collect();
    let response = app.post_json("loans", &json!(records)).await;
    assert_eq!(response.status(), 202);
    let id = response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    let batch = app.wait_final(&id, Duration::from_secs(60)).await;
    assert_eq!(batch["status"], "loaded", "{batch}");

    let response = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap().to_string();
    assert!(content_type.starts_with("application/openmetrics-text"), "{content_type}");
    let text = response.text().await.unwrap();
    assert!(text.ends_with("# EOF\n"), "an OpenMetrics exposition ends with # EOF");
    let s = samples(&text);
    let source = ["table=\"LOANS\"", "partner=\"anonymous\""];
    assert_eq!(sum(&s, "snowgate_records_received_total", &source), 1000.0, "{text}");
    assert_eq!(sum(&s, "snowgate_records_accepted_total", &source), 990.0);
    let rejected = ["stage=\"gateway\"", "code=\"type_mismatch\""];
    assert_eq!(sum(&s, "snowgate_records_rejected_total", &[&source[..], &rejected[..]].concat()), 10.0);
    assert_eq!(sum(&s, "snowgate_records_loaded_total", &["table=\"LOANS\""]), 990.0);
    // The embedded warehouse took the file's rows from memory rather than reading it back.
    assert!(sum(&s, "snowgate_loader_files_from_memory_total", &[]) >= 1.0, "{text}");
    assert_eq!(sum(&s, "snowgate_batches_total", &["status=\"staged\""]), 1.0);
    assert_eq!(sum(&s, "snowgate_ack_duration_seconds_count", &["table=\"LOANS\""]), 1.0);
    assert!(sum(&s, "snowgate_copy_duration_seconds_count", &["outcome=\"loaded\""]) >= 1.0);
    assert!(sum(&s, "snowgate_stage_put_duration_seconds_count", &[]) >= 1.0);
    // One flush for the one POST: its file was encoded once and committed once.
    assert_eq!(sum(&s, "snowgate_flush_encode_duration_seconds_count", &[]), 1.0, "{text}");
    assert_eq!(sum(&s, "snowgate_ledger_commit_duration_seconds_count", &[]), 1.0, "{text}");
    assert!(sum(&s, "snowgate_received_bytes_total", &["form=\"wire\""]) > 0.0);
    assert!(
        sum(&s, "snowgate_received_bytes_total", &["form=\"decompressed\""])
            >= sum(&s, "snowgate_received_bytes_total", &["form=\"wire\""])
    );
    // The route as declared, never the raw path.
    let posts = ["method=\"POST\"", "route=\"/v1/tables/{table}/batches\"", "status=\"202\""];
    assert_eq!(sum(&s, "snowgate_http_request_duration_seconds_count", &posts), 1.0, "{text}");
    assert!(!text.contains(&id), "no batch id in a label");
    // Read from the ledger at the scrape: nothing waits, and LOANS loaded just now.
    assert_eq!(sum(&s, "snowgate_ledger_up", &[]), 1.0);
    assert_eq!(sum(&s, "snowgate_loader_up", &[]), 1.0);
    assert_eq!(sum(&s, "snowgate_backlog_files", &["table=\"LOANS\""]), 0.0);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let last = sum(&s, "snowgate_last_load_timestamp_seconds", &["table=\"LOANS\""]);
    assert!((now - last).abs() < 60.0, "last load {last}, now {now}");
    assert!(sum(&s, "snowgate_memory_budget_bytes", &[]) > 0.0);

    // The error-rate alert: sum by (partner) of rejected over received (both counters start at
    // zero, so their totals stand for their increase).
    let partner = ["partner=\"anonymous\""];
    let rate =
        sum(&s, "snowgate_records_rejected_total", &partner) / sum(&s, "snowgate_records_received_total", &partner);
    assert!((rate - 0.01).abs() < 1e-9, "error rate {rate}");
    app.shutdown().await;
}

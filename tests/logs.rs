//! Request ids and logs: every answer carries `X-Request-Id` (the client's, when acceptable, else
//! one the gateway made), and with `log.format = "json"` every log line about a request is one
//! JSON object carrying that id and, once known, the batch, table and partner.

mod common;

use std::process::Stdio;

use serde_json::{json, Value};

/// A gateway logging JSON at `rust_log` to a file in `dir`, with table `loans` declared.
async fn json_logging_gateway(dir: &std::path::Path, rust_log: &str) -> (common::Process, String, std::path::PathBuf) {
    let log_path = dir.join("gateway.log");
    let (mut command, base) = common::gateway_command(&dir.join("data"));
    command
        .env("SNOWGATE_LOG__FORMAT", "json")
        .env("RUST_LOG", rust_log)
        .stderr(Stdio::from(std::fs::File::create(&log_path).unwrap()));
    let gateway = common::Process::start(command, base.clone()).await;
    common::declare_ids(&base, "loans").await;
    (gateway, base, log_path)
}

/// Every line of a JSON log, each parsed (a line that is not JSON fails the test), and the text.
fn json_lines(log_path: &std::path::Path) -> (Vec<Value>, String) {
    let text = std::fs::read_to_string(log_path).unwrap();
    let lines = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}")))
        .collect();
    (lines, text)
}

#[tokio::test]
async fn request_ids_reach_the_answer_and_every_log_line_of_the_request() {
    let dir = tempfile::tempdir().unwrap();
    let (gateway, base, log_path) = json_logging_gateway(dir.path(), "info").await;
    let client = reqwest::Client::new();

    let sent = "partner-run-42:batch/7";
    let response = client
        .post(format!("{base}/v1/tables/loans/batches"))
        .header("x-request-id", sent)
        .json(&json!([{"id": 1}, {"id": null}]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    assert_eq!(response.headers()["x-request-id"], sent, "the client's id comes back");
    let batch_id = response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();

    // One the gateway will not log as sent (too long, or a character that could forge a log
    // line) is replaced by its own, as is a missing one; every answer has one, errors included.
    for (header, expected_kept) in [(Some("x".repeat(129)), false), (Some("bad\tid".into()), false), (None, false)] {
        let mut request = client.get(format!("{base}/v1/batches/{batch_id}"));
        if let Some(value) = &header {
            request = request.header("x-request-id", value.as_str());
        }
        let response = request.send().await.unwrap();
        let id = response.headers()["x-request-id"].to_str().unwrap().to_string();
        assert_eq!(Some(&id) == header.as_ref(), expected_kept);
        assert!(uuid::Uuid::parse_str(&id).is_ok(), "a made id is a UUID: {id}");
    }
    let missing = client.get(format!("{base}/v1/nowhere")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    assert!(missing.headers().contains_key("x-request-id"));
    gateway.terminate();

    let (lines, text) = json_lines(&log_path);
    assert!(!lines.is_empty());
    // The line that says the batch was staged is in the request's span, with everything known.
    let staged = lines
        .iter()
        .find(|l| l["message"] == "batch staged")
        .unwrap_or_else(|| panic!("no 'batch staged' line in:\n{text}"));
    let request = staged["spans"].as_array().unwrap().iter().find(|s| s["name"] == "request").unwrap();
    assert_eq!(request["request_id"], sent, "{staged}");
    assert_eq!(request["batch_id"], batch_id.as_str(), "{staged}");
    assert_eq!(request["table"], "LOANS", "{staged}");
    assert_eq!(request["partner"], "anonymous", "{staged}");
    assert_eq!(staged["batch_id"], batch_id.as_str());
}

/// The request span names a batch only once it is the one the request answers with: a dry run
/// (which stores nothing) names none, and a request repeating an `Idempotency-Key` names the
/// batch the first one made, not the id it would have had.
#[tokio::test]
async fn the_request_span_names_only_the_batch_it_answers_with() {
    let dir = tempfile::tempdir().unwrap();
    // tower_http logs the start and end of every request at debug, inside the request span.
    let (gateway, base, log_path) = json_logging_gateway(dir.path(), "info,tower_http=debug").await;
    let client = reqwest::Client::new();
    let url = format!("{base}/v1/tables/loans/batches");
    let mut ids = Vec::new();
    for request_id in ["first", "again"] {
        let response = client
            .post(&url)
            .header("x-request-id", request_id)
            .header("idempotency-key", "order-7")
            .json(&json!([{"id": 1}]))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
        ids.push(response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string());
    }
    assert_eq!(ids[0], ids[1], "the repeat answers with the first batch");
    let dry = client.post(format!("{url}?dry_run=true")).header("x-request-id", "dry").json(&json!([{"id": 2}]));
    assert_eq!(dry.send().await.unwrap().status(), 200);
    gateway.terminate();

    let (lines, text) = json_lines(&log_path);
    let spans: Vec<Value> = lines
        .iter()
        .filter_map(|line| line["spans"].as_array()?.iter().find(|s| s["name"] == "request").cloned())
        .collect();
    let of = |request_id: &str| -> Vec<&Value> { spans.iter().filter(|s| s["request_id"] == request_id).collect() };
    for request_id in ["first", "again"] {
        let lines = of(request_id);
        assert!(!lines.is_empty(), "no line of request {request_id} in:\n{text}");
        let last = lines.last().unwrap();
        assert_eq!(last["batch_id"], ids[0].as_str(), "{last}");
        assert!(lines.iter().all(|s| s["batch_id"].is_null() || s["batch_id"] == ids[0].as_str()), "{lines:?}");
    }
    let dry = of("dry");
    assert!(!dry.is_empty(), "no line of the dry run in:\n{text}");
    assert!(dry.iter().all(|s| s["batch_id"].is_null()), "{dry:?}");
    assert_eq!(dry.last().unwrap()["table"], "LOANS", "the table is named all the same: {dry:?}");
}

/// With `log.otlp_endpoint` set, the spans go to an OTLP collector over HTTP as protobuf: the
/// request span with the batch it stored, under the service name `snowgate`; a graceful stop
/// sends what is still batched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_otlp_collector() {
    use std::sync::{Arc, Mutex};

    type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;
    let received: Received = Arc::default();
    let store = received.clone();
    let collector = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: bytes::Bytes| async move {
            let content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
            store.lock().unwrap().push((content_type, body.to_vec()));
            axum::http::StatusCode::OK
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, collector).await });

    let dir = tempfile::tempdir().unwrap();
    let (mut command, base) = common::gateway_command(&dir.path().join("data"));
    command.env("SNOWGATE_LOG__OTLP_ENDPOINT", format!("http://{address}/"));
    let gateway = common::Process::start(command, base.clone()).await;
    common::declare_ids(&base, "loans").await;
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/tables/loans/batches"))
        .json(&json!([{"id": 1}, {"id": 2}]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let batch_id = response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    // The exporter sends every few seconds; the stop sends the rest (waited for off the
    // runtime, which serves the collector meanwhile).
    tokio::task::spawn_blocking(move || gateway.terminate()).await.unwrap();

    let received = received.lock().unwrap();
    assert!(!received.is_empty(), "no spans reached the collector");
    assert!(
        received.iter().all(|(content_type, _)| content_type == "application/x-protobuf"),
        "{:?}",
        received.iter().map(|(c, _)| c).collect::<Vec<_>>()
    );
    // Strings travel as they are inside protobuf: the names and values can be found in the bytes.
    let bytes: Vec<u8> = received.iter().flat_map(|(_, body)| body.iter().copied()).collect();
    let holds = |needle: &str| bytes.windows(needle.len()).any(|w| w == needle.as_bytes());
    for needle in ["snowgate", "request", "batch_id", batch_id.as_str(), "/v1/tables/loans/batches"] {
        assert!(holds(needle), "{needle:?} is not in what the collector received");
    }
}

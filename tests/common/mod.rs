//! Test helpers: spawn a gateway on port 0 with its own temp folder and talk HTTP to it.
#![allow(dead_code)]

pub mod fakesnow;
pub mod peers;
pub mod postgres;
pub mod production;
pub mod proxy;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use snowgate::Config;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A running gateway.
pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub data_dir: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<()>>,
}

/// Config for tests: everything under `dir`, short linger and poll interval.
pub fn test_config(dir: &Path) -> Config {
    let mut config = Config::default();
    config.server.data_dir = dir.to_path_buf();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.defaults.linger = Duration::from_millis(50);
    config.loader.interval = Duration::from_millis(100);
    config.loader.retry_base = Duration::from_millis(100);
    config
}

pub async fn spawn_app(dir: &Path) -> TestApp {
    spawn_app_with(test_config(dir)).await
}

pub async fn spawn_app_with(config: Config) -> TestApp {
    let app = snowgate::App::build(config).await.expect("app builds");
    serve_app(app).await
}

/// Serves an already wired app (tests that share backends between replicas build their own).
pub async fn serve_app(app: snowgate::App) -> TestApp {
    let listener = TcpListener::bind(app.config.server.listen).await.expect("bind");
    let addr = listener.local_addr().unwrap();
    let data_dir = app.config.server.data_dir.clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        snowgate::serve(app, listener, async move {
            let _ = stopped.await;
        })
        .await
        .expect("serve");
    });
    TestApp {
        base: format!("http://{addr}"),
        client: reqwest::Client::builder().timeout(Duration::from_secs(120)).build().unwrap(),
        data_dir,
        stop: Some(stop),
        handle: Some(handle),
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Graceful stop: returns once buffers are flushed and every backend is closed.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(handle) = self.handle.take() {
            handle.await.expect("server task");
        }
    }

    pub async fn put_table(&self, table: &str, body: Value) -> reqwest::Response {
        self.client.put(self.url(&format!("/v1/tables/{table}"))).json(&body).send().await.unwrap()
    }

    /// Declares the loans table used across tests.
    pub async fn declare_loans(&self) {
        let response = self
            .put_table(
                "loans",
                json!({"columns": [
                    {"name": "id", "type": "NUMBER", "nullable": false},
                    {"name": "amount", "type": "NUMBER(12,2)"},
                    {"name": "borrower", "type": "VARCHAR(64)"},
                    {"name": "issued_on", "type": "DATE"},
                    {"name": "approved", "type": "BOOLEAN"},
                    {"name": "updated_at", "type": "TIMESTAMP_TZ"},
                    {"name": "attributes", "type": "VARIANT"}
                ]}),
            )
            .await;
        assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    }

    pub async fn post_json(&self, table: &str, body: &Value) -> reqwest::Response {
        self.client.post(self.url(&format!("/v1/tables/{table}/batches"))).json(body).send().await.unwrap()
    }

    pub async fn post_ndjson(&self, table: &str, query: &str, body: String) -> reqwest::Response {
        self.client
            .post(self.url(&format!("/v1/tables/{table}/batches{query}")))
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let response = self.client.get(self.url(path)).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    /// Polls a batch until its status is final; panics after `timeout`.
    pub async fn wait_final(&self, id: &str, timeout: Duration) -> Value {
        wait_final(&self.client, &self.base, id, timeout).await
    }
}

/// Declares `table` with one NOT NULL `id NUMBER` column through the API of the gateway at `base`.
pub async fn declare_ids(base: &str, table: &str) {
    let declared = reqwest::Client::new()
        .put(format!("{base}/v1/tables/{table}"))
        .json(&json!({"columns": [{"name": "id", "type": "NUMBER", "nullable": false}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(declared.status(), 201, "{}", declared.text().await.unwrap());
}

/// Polls a batch on the gateway at `base` until its status is final; panics after `timeout`.
pub async fn wait_final(client: &reqwest::Client, base: &str, id: &str, timeout: Duration) -> Value {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let response = client.get(format!("{base}/v1/batches/{id}")).send().await.unwrap();
        let status = response.status().as_u16();
        let batch: Value = response.json().await.unwrap();
        assert_eq!(status, 200, "{batch}");
        if ["loaded", "rejected", "failed"].contains(&batch["status"].as_str().unwrap()) {
            return batch;
        }
        assert!(tokio::time::Instant::now() < deadline, "batch {id} not final in time: {batch}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `snowgate serve` on a free port with its data under `data_dir`, short linger and poll interval;
/// callers add their own environment and spawn it with [`start_gateway`].
pub fn gateway_command(data_dir: &Path) -> (Command, String) {
    gateway_command_on(data_dir, peers::free_port())
}

/// [`gateway_command`] on a given port (a gateway restarted where its clients expect it).
pub fn gateway_command_on(data_dir: &Path, port: u16) -> (Command, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_snowgate"));
    command
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(data_dir)
        .env("SNOWGATE_DEFAULTS__LINGER_MS", "50")
        .env("SNOWGATE_LOADER__INTERVAL_MS", "100")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    (command, format!("http://127.0.0.1:{port}"))
}

/// Spawns a gateway process and waits until `/healthz` answers; kills it and panics otherwise.
pub async fn start_gateway(mut command: Command, base: &str) -> Child {
    let mut child = command.spawn().expect("start snowgate");
    for _ in 0..600 {
        if reqwest::get(format!("{base}/healthz")).await.is_ok_and(|r| r.status().is_success()) {
            return child;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("snowgate did not start at {base}");
}

/// A gateway process a test started; killed if the test ends (or fails) without stopping it.
pub struct Process {
    pub child: Child,
    pub base: String,
}

impl Process {
    /// Spawns `command` (from [`gateway_command`]) and waits until it answers at `base`.
    pub async fn start(command: Command, base: String) -> Process {
        Process { child: start_gateway(command, &base).await, base }
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill").args([signal, &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
    }

    /// SIGTERM, then the exit, which must be 0.
    pub fn terminate(mut self) {
        self.signal("-TERM");
        let exit = self.child.wait().unwrap();
        assert!(exit.success(), "graceful stop exits 0, got {exit:?}");
    }

    pub fn kill_9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Waits for the process to die at its crash point (SIGABRT, from `abort`).
    pub async fn crashed(mut self) {
        use std::os::unix::process::ExitStatusExt;
        const SIGABRT: i32 = 6;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert_eq!(status.signal(), Some(SIGABRT), "the process died at its crash point: {status:?}");
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "the crash point was never reached");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // Does nothing to a process already waited for.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loan record; `i` makes it unique.
pub fn loan(i: usize) -> Value {
    json!({
        "id": i,
        "amount": format!("{}.{:02}", 100 + i, i % 100),
        "borrower": format!("borrower-{i}"),
        "issued_on": "2026-11-23",
        "approved": i.is_multiple_of(2),
        "updated_at": "2026-11-23T10:00:00Z",
        "attributes": {"score": i % 700, "tags": ["a", "b"]}
    })
}

/// Rows of a query on the DuckDB file; select VARCHAR columns (the gateway must be stopped).
pub fn duckdb_query(dir: &Path, sql: &str) -> Vec<Vec<Option<String>>> {
    let conn = duckdb::Connection::open(dir.join("warehouse.duckdb")).expect("open duckdb");
    let mut statement = conn.prepare(sql).expect("prepare");
    let mut rows = statement.query([]).expect("query");
    let mut out = Vec::new();
    while let Some(row) = rows.next().unwrap() {
        let n = row.as_ref().column_count();
        out.push((0..n).map(|i| row.get::<_, Option<String>>(i).unwrap()).collect());
    }
    out
}

/// One number from a single-value query on the DuckDB file.
pub fn duckdb_count(dir: &Path, sql: &str) -> i64 {
    let conn = duckdb::Connection::open(dir.join("warehouse.duckdb")).expect("open duckdb");
    conn.query_row(sql, [], |row| row.get::<_, i64>(0)).expect("count query")
}

/// `host:port` of a URL, for a TCP proxy in front of it.
pub fn socket_of(url: &str) -> std::net::SocketAddr {
    let parsed = url::Url::parse(url).unwrap();
    let host = parsed.host_str().unwrap().replace("localhost", "127.0.0.1");
    format!("{host}:{}", parsed.port_or_known_default().unwrap()).parse().unwrap()
}

/// `url` with its host and port replaced by the proxy's.
pub fn through_proxy(url: &str, proxy: std::net::SocketAddr) -> String {
    let mut parsed = url::Url::parse(url).unwrap();
    parsed.set_host(Some("127.0.0.1")).unwrap();
    parsed.set_port(Some(proxy.port())).unwrap();
    parsed.to_string().trim_end_matches('/').to_string()
}

//! The Snowflake emulator (fakesnow) as a test peer, behind the shim it needs.
//!
//! fakesnow leaves out fields that real Snowflake sends and that snowflake-api requires. A proxy in
//! the test process fills them in (never overwriting), so the production client, in-process or in
//! a gateway process, runs unchanged against it through its `base_url`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use serde_json::{json, Value};
use snowgate::config::{Secret, SnowflakeConfig};
use snowgate::warehouse::snowflake::SnowflakeWarehouse;
use snowgate::warehouse::snowflake_http::buffer;

/// A running fakesnow server and the shim proxy in front of it.
pub struct Fakesnow {
    /// The proxy's URL: what clients use as `base_url`.
    pub base_url: String,
    child: Child,
    _proxy: ShimProxy,
}

fn fakesnow_binary() -> PathBuf {
    match std::env::var_os("SGTEST_FAKESNOW") {
        Some(path) => PathBuf::from(path),
        None => dirs_home().join(".cache/snowgate/venv/bin/fakesnow"),
    }
}

/// How long fakesnow may take to listen.
const STARTUP: Duration = Duration::from_secs(90);

/// The last lines fakesnow wrote, for a failure message.
fn log_tail(path: &Path) -> String {
    let text = String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

fn dirs_home() -> PathBuf {
    PathBuf::from(std::env::var_os("HOME").expect("HOME is set"))
}

impl Fakesnow {
    /// Starts fakesnow on a free port, with its databases under `dir`.
    pub async fn start(dir: &Path) -> Fakesnow {
        let binary = fakesnow_binary();
        assert!(
            binary.exists(),
            "fakesnow not found at {}: run scripts/test.sh (it installs the peers)",
            binary.display()
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        // Its output goes to a file beside its databases, shown if it never listens.
        let log_path = dir.join(format!("fakesnow-{port}.log"));
        let log = std::fs::File::create(&log_path).expect("fakesnow log file");
        let mut child = Command::new(&binary)
            .args(["-s", "-p", &port.to_string()])
            .current_dir(dir)
            // Written as it comes, so a kill at the deadline loses none of it.
            .env("PYTHONUNBUFFERED", "1")
            .stdout(log.try_clone().expect("fakesnow log file"))
            .stderr(log)
            .spawn()
            .expect("start fakesnow");
        let upstream = format!("http://127.0.0.1:{port}");
        // It listened within 1.4 to 2.7 s with a build on both cores, and once took over 20 s in
        // a CI run while other tests' gateways, DuckDBs and emulators kept both cores busy.
        let deadline = tokio::time::Instant::now() + STARTUP;
        while tokio::time::Instant::now() < deadline {
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                let proxy = ShimProxy::start(&upstream).await;
                return Fakesnow { base_url: proxy.base_url.clone(), child, _proxy: proxy };
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("fakesnow exited early: {status}\n{}", log_tail(&log_path));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("fakesnow did not listen on port {port} within {STARTUP:?}\n{}", log_tail(&log_path));
    }

    /// A config for the `SNOWGATE` database and `PARTNERS` schema, loading from `stage`.
    pub fn config(&self, stage: &str) -> SnowflakeConfig {
        SnowflakeConfig {
            account: "fake".into(),
            user: "snowgate".into(),
            password: Some(Secret::new("not-checked")),
            private_key_path: None,
            role: Some("LOADER".into()),
            warehouse: Some("LOAD_WH".into()),
            database: "SNOWGATE".into(),
            schema: "PARTNERS".into(),
            stage: stage.into(),
            base_url: Some(self.base_url.clone()),
            ..SnowflakeConfig::default()
        }
    }

    /// Connects the production client (through the shim proxy, as `config` says).
    pub fn warehouse(&self, config: &SnowflakeConfig) -> SnowflakeWarehouse {
        SnowflakeWarehouse::connect(config).expect("snowflake client")
    }

    /// Creates the database, schema and an external stage reading `folder` (what an admin does).
    pub async fn prepare(&self, config: &SnowflakeConfig, folder: &Path) {
        let admin = self.warehouse(config);
        admin.query("CREATE SCHEMA IF NOT EXISTS SNOWGATE.PARTNERS").await.expect("create schema");
        let url = format!("file://{}/", folder.display());
        admin
            .query(&format!("CREATE OR REPLACE STAGE SNOWGATE.PARTNERS.{} URL='{url}'", config.stage))
            .await
            .expect("create stage");
    }

    /// Stops the emulator; the proxy stays and answers 502, like an unreachable warehouse.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Fakesnow {
    fn drop(&mut self) {
        self.stop();
    }
}

fn fill(target: &mut Value, pointer: &str, key: &str, value: Value) {
    if let Some(Value::Object(map)) = target.pointer_mut(pointer) {
        map.entry(key.to_string()).or_insert(value);
    }
}

/// Fills in what fakesnow leaves out of its responses; never overwrites a field it sent.
fn patch(path: &str, body: &mut Value) {
    if path.ends_with("/session/v1/login-request") {
        fill(body, "/data", "masterToken", json!("fakesnow-master-token"));
        fill(body, "/data", "sessionId", json!(1));
        fill(body, "/data", "masterValidityInSeconds", json!(14_400));
        fill(body, "/data", "validityInSeconds", json!(3_600));
        fill(body, "/data", "sessionInfo", json!({}));
        fill(body, "/data/sessionInfo", "roleName", json!("PUBLIC"));
    }
    if path.ends_with("/queries/v1/query-request") {
        let success = body.get("success").and_then(Value::as_bool).unwrap_or(false);
        if success {
            let returned = body.pointer("/data/rowset").and_then(Value::as_array).map(Vec::len).unwrap_or(0);
            let total = body.pointer("/data/total").cloned().unwrap_or(json!(returned));
            fill(body, "/data", "returned", total);
            fill(body, "/data", "finalRoleName", json!("PUBLIC"));
            fill(body, "/data", "version", json!(1));
            fill(body, "/data", "parameters", json!([]));
            fill(body, "/data", "rowtype", json!([]));
            fill(body, "/data", "total", json!(returned));
            fill(body, "/data", "statementTypeId", json!(0));
            fill(body, "/data", "queryId", json!(""));
        } else {
            if body.get("data").is_none_or(Value::is_null) {
                body["data"] = json!({});
            }
            fill(body, "/data", "age", json!(0));
            fill(body, "/data", "internalError", json!(false));
            fill(body, "/data", "queryId", json!(""));
            let code = body.get("code").cloned().unwrap_or(json!("000000"));
            fill(body, "/data", "errorCode", code);
            fill(body, "/data", "sqlState", json!("00000"));
        }
    }
}

/// An HTTP proxy in front of fakesnow that applies [`patch`] to every JSON response.
pub struct ShimProxy {
    pub base_url: String,
    task: tokio::task::JoinHandle<()>,
}

impl ShimProxy {
    pub async fn start(upstream: &str) -> ShimProxy {
        use axum::body::{to_bytes, Body};
        use axum::extract::{Request, State};
        use axum::response::Response;

        #[derive(Clone)]
        struct Upstream {
            base: String,
            client: reqwest::Client,
        }

        async fn forward(State(up): State<Upstream>, request: Request) -> Response {
            let path = request.uri().path().to_string();
            let target = format!("{}{}", up.base, request.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/"));
            let method = request.method().clone();
            let mut headers = request.headers().clone();
            headers.remove(http::header::HOST);
            let body = to_bytes(request.into_body(), 256 << 20).await.unwrap_or_default();
            let upstream = up.client.request(method, target).headers(headers).body(body).send().await;
            let Ok(upstream) = upstream else {
                return Response::builder().status(502).body(Body::empty()).unwrap();
            };
            let (parts, bytes) = buffer(upstream).await.expect("upstream body");
            let body = match serde_json::from_slice::<Value>(&bytes) {
                Ok(mut value) => {
                    patch(&path, &mut value);
                    serde_json::to_vec(&value).unwrap().into()
                }
                Err(_) => bytes,
            };
            Response::from_parts(parts, Body::from(body))
        }

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        let state = Upstream { base: upstream.to_string(), client: reqwest::Client::new() };
        let router = axum::Router::new().fallback(forward).with_state(state);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        ShimProxy { base_url, task }
    }
}

impl Drop for ShimProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

//! Real peers started by tests: an `s3s-fs` S3 server per test, on a free port over a temp folder.
//! The binaries are installed by `scripts/peers.sh install`, which `scripts/test.sh` runs.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use object_store::aws::AmazonS3Builder;
use object_store::{BackoffConfig, ClientOptions, RetryConfig};
use snowgate::config::StageConfig;
use snowgate::stage::Stage;

/// Test-only credentials that every s3s-fs started here accepts.
pub const S3_ACCESS_KEY: &str = "snowgate-test";
/// Secret paired with [`S3_ACCESS_KEY`].
pub const S3_SECRET_KEY: &str = "snowgate-test-secret";

/// Path of the s3s-fs binary: `SGTEST_S3S_FS`, else where `scripts/peers.sh` installs it.
pub fn s3s_fs_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("SGTEST_S3S_FS") {
        return PathBuf::from(path);
    }
    let home = std::env::var_os("HOME").expect("HOME is set");
    PathBuf::from(home).join(".cache/snowgate/tools/bin/s3s-fs")
}

/// A port nobody listens on right now (the server binds it a moment later).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A running s3s-fs with one bucket; killed on drop.
pub struct S3Server {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// Folder that s3s-fs serves: objects are at `root/<bucket>/<key>`.
    pub root: PathBuf,
    /// The bucket created at start.
    pub bucket: String,
    /// Prefix used by [`S3Server::stage_config`].
    pub prefix: String,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl S3Server {
    /// Starts s3s-fs on a free port over a new temp folder, with bucket `snowgate`.
    pub fn start() -> S3Server {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("s3");
        let bucket = "snowgate".to_string();
        // s3s-fs maps a bucket to a folder under its root, so the folder is the bucket.
        std::fs::create_dir_all(root.join(&bucket)).unwrap();
        let binary = s3s_fs_binary();
        // The free port can be taken between the probe and the bind: try a few.
        for _ in 0..5 {
            let port = free_port();
            let mut child = Command::new(&binary)
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--access-key", S3_ACCESS_KEY, "--secret-key", S3_SECRET_KEY])
                .arg(&root)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {} ({e}); run scripts/peers.sh install", binary.display()));
            if wait_listening(&mut child, SocketAddr::from(([127, 0, 0, 1], port))) {
                return S3Server {
                    endpoint: format!("http://127.0.0.1:{port}"),
                    root,
                    bucket,
                    prefix: "stage".into(),
                    child: Some(child),
                    _dir: dir,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("s3s-fs did not start listening");
    }

    /// `s3://<bucket>/<prefix>`.
    pub fn stage_url(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }

    /// The `[stage]` section pointing at this server (credentials are not part of it).
    pub fn stage_config(&self) -> StageConfig {
        StageConfig {
            url: Some(self.stage_url()),
            endpoint: Some(self.endpoint.clone()),
            region: Some("us-east-1".into()),
            allow_http: true,
            path_style: true,
            ..StageConfig::default()
        }
    }

    /// What points a gateway process at this server: the `[stage]` keys and the AWS_*
    /// credentials, as environment variables.
    pub fn gateway_env(&self) -> Vec<(&'static str, String)> {
        let stage = self.stage_config();
        let mut env = vec![
            ("SNOWGATE_STAGE__URL", stage.url.unwrap_or_default()),
            ("SNOWGATE_STAGE__ENDPOINT", stage.endpoint.unwrap_or_default()),
            ("SNOWGATE_STAGE__REGION", "us-east-1".to_string()),
            ("SNOWGATE_STAGE__ALLOW_HTTP", "true".to_string()),
            ("SNOWGATE_STAGE__PATH_STYLE", "true".to_string()),
        ];
        env.extend(self.credentials_env().map(|(key, value)| (key, value.to_string())));
        env
    }

    /// Credentials as environment variables, for gateway processes that a test spawns.
    pub fn credentials_env(&self) -> [(&'static str, &'static str); 2] {
        [("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY), ("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY)]
    }

    /// Builder with this server's credentials and short retries, so a stopped server fails fast;
    /// tests use it instead of process env, which parallel tests would share.
    pub fn builder(&self) -> AmazonS3Builder {
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(50),
                max_backoff: Duration::from_millis(200),
                base: 2.0,
            },
            max_retries: 2,
            retry_timeout: Duration::from_secs(3),
        };
        let client =
            ClientOptions::new().with_connect_timeout(Duration::from_secs(2)).with_timeout(Duration::from_secs(10));
        AmazonS3Builder::new()
            .with_access_key_id(S3_ACCESS_KEY)
            .with_secret_access_key(S3_SECRET_KEY)
            .with_client_options(client)
            .with_retry(retry)
    }

    /// A stage on this server under [`S3Server::prefix`].
    pub fn open_stage(&self) -> Stage {
        let config = self.stage_config();
        Stage::open_s3(&self.stage_url(), self.builder(), &config).expect("s3 stage opens")
    }

    /// Where an object under the stage prefix lands on disk.
    pub fn object_path(&self, relative: &str) -> PathBuf {
        self.root.join(&self.bucket).join(&self.prefix).join(relative)
    }

    /// Kills the server now (the folder stays until drop), to test an unreachable stage.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits until `addr` accepts connections; false if the process exited or 10 s passed.
fn wait_listening(child: &mut Child, addr: SocketAddr) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

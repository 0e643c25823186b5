//! One conformance suite for every stage backend: the same tests, each against a real store
//! (a local folder, and S3 served by a real `s3s-fs` process).

mod common;

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use common::peers::S3Server;
use snowgate::config::StageConfig;
use snowgate::stage::{Stage, StageError};

/// A stage plus what keeps its backend alive and where its files land on disk.
struct Harness {
    stage: Stage,
    /// Folder that holds the stage's files (`ROOT/<bucket>/<prefix>` for S3).
    disk: PathBuf,
    server: Option<S3Server>,
    _dir: Option<tempfile::TempDir>,
}

/// Upper bound for any call against a stopped server: a hang fails the test instead of blocking it.
const DEADLINE: Duration = Duration::from_secs(30);

async fn put_new_then_get_returns_the_bytes(h: Harness) {
    let data = Bytes::from(vec![7u8; 100_000]);
    h.stage.put_new("LOANS/a.parquet", data.clone()).await.unwrap();
    assert_eq!(h.stage.get("LOANS/a.parquet").await.unwrap(), data);
    assert_eq!(std::fs::read(h.disk.join("LOANS/a.parquet")).unwrap(), data, "file lands under the prefix");
}

async fn second_put_new_is_already_exists(h: Harness) {
    h.stage.put_new("LOANS/b.parquet", Bytes::from_static(b"first")).await.unwrap();
    let again = h.stage.put_new("LOANS/b.parquet", Bytes::from_static(b"second")).await;
    assert!(matches!(again, Err(StageError::AlreadyExists(_))), "{again:?}");
    assert_eq!(h.stage.get("LOANS/b.parquet").await.unwrap(), Bytes::from_static(b"first"));
    assert_eq!(std::fs::read(h.disk.join("LOANS/b.parquet")).unwrap(), b"first");
}

async fn get_of_a_missing_path_is_not_found(h: Harness) {
    let got = h.stage.get("LOANS/missing.parquet").await;
    assert!(matches!(got, Err(StageError::NotFound(_))), "{got:?}");
}

async fn ping_is_ok(h: Harness) {
    h.stage.ping().await.unwrap();
    h.stage.put_new("LOANS/c.parquet", Bytes::from_static(b"c")).await.unwrap();
    h.stage.ping().await.unwrap();
}

macro_rules! stage_suite {
    ($name:ident, $make:expr) => {
        mod $name {
            #[tokio::test]
            async fn put_new_then_get_returns_the_bytes() {
                super::put_new_then_get_returns_the_bytes($make.await).await;
            }

            #[tokio::test]
            async fn second_put_new_is_already_exists() {
                super::second_put_new_is_already_exists($make.await).await;
            }

            #[tokio::test]
            async fn get_of_a_missing_path_is_not_found() {
                super::get_of_a_missing_path_is_not_found($make.await).await;
            }

            #[tokio::test]
            async fn ping_is_ok() {
                super::ping_is_ok($make.await).await;
            }
        }
    };
}

async fn local() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("stage");
    let stage = Stage::open(&format!("file://{}", disk.display()), &StageConfig::default()).unwrap();
    Harness { stage, disk, server: None, _dir: Some(dir) }
}

async fn s3() -> Harness {
    let server = S3Server::start();
    let stage = server.open_stage();
    let disk = server.object_path("");
    Harness { stage, disk, server: Some(server), _dir: None }
}

stage_suite!(local_folder, super::local());
stage_suite!(s3s_fs, super::s3());

#[tokio::test]
async fn s3_stage_is_unavailable_once_the_server_is_gone() {
    let mut h = s3().await;
    h.stage.ping().await.unwrap();
    h.server.as_mut().unwrap().stop();

    let ping = tokio::time::timeout(DEADLINE, h.stage.ping()).await.expect("ping returns in time");
    assert!(matches!(ping, Err(StageError::Unavailable(_))), "{ping:?}");
    let put = tokio::time::timeout(DEADLINE, h.stage.put_new("LOANS/d.parquet", Bytes::from_static(b"d")))
        .await
        .expect("put_new returns in time");
    assert!(matches!(put, Err(StageError::Unavailable(_))), "{put:?}");
    let message = put.unwrap_err().to_string();
    assert!(!message.contains(common::peers::S3_SECRET_KEY), "no secret in errors: {message}");
}

#[tokio::test]
async fn s3_stage_config_and_env_credentials_reach_the_server() {
    // Through the production path: `Stage::open` with `[stage]` settings and AWS_* from env.
    // Each nextest test is its own process, so this env is not shared with other tests.
    let server = S3Server::start();
    for (key, value) in server.credentials_env() {
        std::env::set_var(key, value);
    }
    let config = server.stage_config();
    let stage = Stage::open(config.url.as_deref().unwrap(), &config).unwrap();
    stage.put_new("T/e.parquet", Bytes::from_static(b"e")).await.unwrap();
    assert_eq!(std::fs::read(server.object_path("T/e.parquet")).unwrap(), b"e");
}

#[tokio::test]
async fn s3_stage_with_a_wrong_secret_is_refused_without_echoing_it() {
    let server = S3Server::start();
    let builder = server.builder().with_secret_access_key("not-the-secret");
    let stage = Stage::open_s3(&server.stage_url(), builder, &server.stage_config()).unwrap();
    let put = stage.put_new("T/f.parquet", Bytes::from_static(b"f")).await;
    let message = format!("{put:?}");
    assert!(matches!(put, Err(StageError::Denied(_))), "a refused credential is not \"retry later\": {message}");
    assert!(!message.contains("not-the-secret"), "{message}");
    assert!(!server.object_path("T/f.parquet").exists());
}

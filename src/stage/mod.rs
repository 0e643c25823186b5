//! The stage: where Parquet files wait for the warehouse. A local folder or an object store.

pub mod recent;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload};

use crate::config::StageConfig;

/// Stage failures.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("stage configuration: {0}")]
    Config(String),
    #[error("stage file {0} already exists")]
    AlreadyExists(String),
    #[error("stage file {0} not found")]
    NotFound(String),
    #[error("stage unavailable: {0}")]
    Unavailable(String),
    /// The store refused snowgate's credentials or permissions: an operator must act, and
    /// retrying will not help.
    #[error("stage refused access: {0}")]
    Denied(String),
}

impl From<object_store::Error> for StageError {
    fn from(e: object_store::Error) -> Self {
        match e {
            object_store::Error::AlreadyExists { path, .. } | object_store::Error::Precondition { path, .. } => {
                StageError::AlreadyExists(path)
            }
            object_store::Error::NotFound { path, .. } => StageError::NotFound(path),
            object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. } => {
                StageError::Denied(e.to_string())
            }
            other => StageError::Unavailable(other.to_string()),
        }
    }
}

/// A stage location: an object store plus the prefix every file lives under.
pub struct Stage {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    url: String,
    /// Set for `file://` stages: files are fsynced, since a 202 promises they survive a crash.
    local_root: Option<PathBuf>,
    /// Bound on every operation (`stage.timeout_secs`).
    timeout: Duration,
}

impl Stage {
    /// Opens a stage from its URL and the `[stage]` settings; S3 credentials come from `AWS_*` env.
    pub fn open(url: &str, options: &StageConfig) -> Result<Self, StageError> {
        let Some((scheme, _)) = url.split_once("://") else {
            return Err(StageError::Config(format!("invalid stage url {url:?}: expected scheme://location")));
        };
        match scheme {
            "file" => Self::open_local(url, options),
            "s3" => Self::open_s3(url, production_builder(), options),
            other => Err(StageError::Config(format!(
                "unsupported stage scheme {other:?}; this build supports file:// and s3://"
            ))),
        }
    }

    fn open_local(url: &str, options: &StageConfig) -> Result<Self, StageError> {
        let root = file_url_path(url);
        std::fs::create_dir_all(&root)
            .map_err(|e| StageError::Config(format!("cannot create stage folder {}: {e}", root.display())))?;
        let root =
            root.canonicalize().map_err(|e| StageError::Config(format!("stage folder {}: {e}", root.display())))?;
        let store = LocalFileSystem::new_with_prefix(&root).map_err(|e| StageError::Config(e.to_string()))?;
        Ok(Stage {
            store: Arc::new(store),
            prefix: Path::default(),
            url: url.to_string(),
            local_root: Some(root),
            timeout: options.timeout,
        })
    }

    /// Opens an `s3://bucket/prefix` stage on top of `builder`, which brings credentials and client
    /// settings (`AmazonS3Builder::from_env()` in production; tests pass their own so that they
    /// never share process env); the config's endpoint, region, allow_http and path_style win.
    pub fn open_s3(url: &str, builder: AmazonS3Builder, options: &StageConfig) -> Result<Self, StageError> {
        let (bucket, prefix) = parse_s3_url(url)?;
        let mut builder = builder.with_bucket_name(bucket);
        if let Some(region) = &options.region {
            builder = builder.with_region(region);
        }
        // Only ever turned on here, so that AWS_ALLOW_HTTP from the environment still counts.
        if options.allow_http {
            builder = builder.with_allow_http(true);
        }
        let virtual_hosted = !options.path_style;
        if let Some(endpoint) = &options.endpoint {
            // object_store takes a virtual-hosted endpoint as the bucket's own host, so build it.
            let endpoint = if virtual_hosted { virtual_hosted_endpoint(endpoint, bucket)? } else { endpoint.clone() };
            builder = builder.with_endpoint(endpoint);
        }
        let store = builder
            .with_virtual_hosted_style_request(virtual_hosted)
            .build()
            .map_err(|e| StageError::Config(format!("s3 stage {url}: {e}")))?;
        Ok(Stage { store: Arc::new(store), prefix, url: url.to_string(), local_root: None, timeout: options.timeout })
    }

    /// The configured URL (no credentials are ever part of it).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Folder on this machine holding the files, for `file://` stages.
    pub fn local_root(&self) -> Option<&std::path::Path> {
        self.local_root.as_deref()
    }

    fn full_path(&self, relative: &str) -> Path {
        let relative = Path::from(relative);
        self.prefix.parts().chain(relative.parts()).collect()
    }

    /// `work`, failed as unavailable if it outlasts `stage.timeout_secs`.
    async fn bounded<T>(
        &self,
        operation: &str,
        work: impl std::future::Future<Output = Result<T, StageError>>,
    ) -> Result<T, StageError> {
        match tokio::time::timeout(self.timeout, work).await {
            Ok(done) => done,
            Err(_) => Err(StageError::Unavailable(format!(
                "{operation} did not finish within stage.timeout_secs ({}s)",
                self.timeout.as_secs()
            ))),
        }
    }

    /// Writes a new file; never overwrites one that exists.
    pub async fn put_new(&self, relative: &str, data: Bytes) -> Result<(), StageError> {
        let path = self.full_path(relative);
        self.bounded("writing a stage file", async {
            let options = PutOptions { mode: PutMode::Create, ..Default::default() };
            self.store.put_opts(&path, PutPayload::from(data), options).await?;
            if let Some(root) = &self.local_root {
                sync_local(root.join(path.as_ref())).await?;
            }
            Ok(())
        })
        .await
    }

    /// Reads a whole file.
    pub async fn get(&self, relative: &str) -> Result<Bytes, StageError> {
        self.bounded("reading a stage file", async {
            let result = self.store.get(&self.full_path(relative)).await?;
            Ok(result.bytes().await?)
        })
        .await
    }

    /// Reads byte ranges of one file (nearby ranges in one request, on an object store).
    pub async fn get_ranges(&self, relative: &str, ranges: &[std::ops::Range<u64>]) -> Result<Vec<Bytes>, StageError> {
        self.bounded("reading a stage file", async {
            Ok(self.store.get_ranges(&self.full_path(relative), ranges).await?)
        })
        .await
    }

    /// Files the gateway wrote before `cutoff` (`<TABLE>/<yyyy>/<mm>/<dd>/<uuid>.parquet`, or a
    /// batch's `<uuid>.rejects.ndjson` there; any other object under the prefix is not the
    /// gateway's and is never listed), as paths relative to the stage, as the ledger records
    /// them. Lists the whole stage: an occasional sweep.
    pub async fn gateway_files_before(&self, cutoff: DateTime<Utc>) -> Result<Vec<String>, StageError> {
        use futures::TryStreamExt;
        let skip = self.prefix.parts().count();
        let listed: Vec<object_store::ObjectMeta> = self
            .bounded("listing the stage", async { Ok(self.store.list(Some(&self.prefix)).try_collect().await?) })
            .await?;
        Ok(listed
            .into_iter()
            .filter(|meta| meta.last_modified < cutoff)
            .map(|meta| meta.location.parts().skip(skip).map(|p| p.as_ref().to_string()).collect::<Vec<_>>())
            .filter(|parts| is_gateway_file(parts))
            .map(|parts| parts.join("/"))
            .collect())
    }

    /// Deletes a file; one already gone is not an error.
    pub async fn delete(&self, relative: &str) -> Result<(), StageError> {
        self.bounded("deleting a stage file", async {
            match self.store.delete(&self.full_path(relative)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(e.into()),
            }
        })
        .await
    }

    /// Round trip to the store, for readiness.
    pub async fn ping(&self) -> Result<(), StageError> {
        use futures::StreamExt;
        let mut listing = self.store.list(Some(&self.prefix));
        match listing.next().await {
            // Any failure here, a missing bucket included, means the stage cannot take files.
            Some(Err(e)) => Err(StageError::Unavailable(e.to_string())),
            _ => Ok(()),
        }
    }
}

/// How a batch's rejects object ends (see [`crate::rejects`]).
pub const REJECTS_SUFFIX: &str = ".rejects.ndjson";

/// Whether path parts name a file as the gateway writes them: `<TABLE>/<yyyy>/<mm>/<dd>/<uuid>.parquet`
/// (rows), or `<uuid>.rejects.ndjson` in the same place (a batch's rejects).
fn is_gateway_file(parts: &[String]) -> bool {
    let [_, year, month, day, file] = parts else { return false };
    let digits = |part: &str, n: usize| part.len() == n && part.bytes().all(|b| b.is_ascii_digit());
    digits(year, 4)
        && digits(month, 2)
        && digits(day, 2)
        && [".parquet", REJECTS_SUFFIX]
            .iter()
            .any(|suffix| file.strip_suffix(suffix).is_some_and(|id| uuid::Uuid::parse_str(id).is_ok()))
}

/// `s3://bucket/some/prefix` to the bucket and the prefix every file lives under.
fn parse_s3_url(url: &str) -> Result<(&str, Path), StageError> {
    let rest = url.strip_prefix("s3://").unwrap_or(url);
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(StageError::Config(format!("invalid stage url {url:?}: expected s3://bucket/prefix")));
    }
    let prefix = Path::parse(prefix.trim_matches('/'))
        .map_err(|e| StageError::Config(format!("invalid stage url {url:?}: {e}")))?;
    Ok((bucket, prefix))
}

/// `http://host:port` to `http://bucket.host:port`: a virtual-hosted bucket is named by its host.
fn virtual_hosted_endpoint(endpoint: &str, bucket: &str) -> Result<String, StageError> {
    let mut parsed = url::Url::parse(endpoint)
        .map_err(|e| StageError::Config(format!("invalid stage endpoint {endpoint:?}: {e}")))?;
    let host =
        parsed.host_str().ok_or_else(|| StageError::Config(format!("invalid stage endpoint {endpoint:?}: no host")))?;
    let host = format!("{bucket}.{host}");
    parsed
        .set_host(Some(&host))
        .map_err(|e| StageError::Config(format!("invalid stage endpoint {endpoint:?} for bucket {bucket}: {e}")))?;
    Ok(parsed.as_str().trim_end_matches('/').to_string())
}

/// Credentials from `AWS_*` env, and retries bounded well under a partner's request timeout: a
/// stage outage should answer 503 within seconds, not after object_store's default 3 minutes.
fn production_builder() -> AmazonS3Builder {
    use object_store::aws::AmazonS3ConfigKey;
    use object_store::{BackoffConfig, ClientConfigKey, RetryConfig};
    let retry = RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            base: 2.0,
        },
        max_retries: 3,
        retry_timeout: Duration::from_secs(15),
    };
    // Set key by key: replacing the client options would drop what from_env read (AWS_ALLOW_HTTP...).
    AmazonS3Builder::from_env()
        .with_config(AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout), "5s")
        .with_config(AmazonS3ConfigKey::Client(ClientConfigKey::Timeout), "60s")
        .with_retry(retry)
}

/// `file://./data/stage` and `file:///abs/path` both name a folder; relative paths stay relative.
fn file_url_path(url: &str) -> PathBuf {
    let rest = url.strip_prefix("file://").unwrap_or(url);
    PathBuf::from(if rest.is_empty() { "." } else { rest })
}

/// fsync the file and its folder so the rename that published it is durable too.
async fn sync_local(file: PathBuf) -> Result<(), StageError> {
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        std::fs::File::open(&file)?.sync_all()?;
        if let Some(dir) = file.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })
    .await
    .map_err(|e| StageError::Unavailable(e.to_string()))?
    .map_err(|e| StageError::Unavailable(format!("fsync failed: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sweeper_only_sees_files_shaped_as_the_gateway_writes_them() {
        let parts = |path: &str| path.split('/').map(str::to_string).collect::<Vec<_>>();
        assert!(is_gateway_file(&parts("LOANS/2026/11/25/01a21332-f52d-77dd-bf8b-6de9fed10851.parquet")));
        assert!(is_gateway_file(&parts("LOANS/2026/11/25/01a21332-f52d-77dd-bf8b-6de9fed10851.rejects.ndjson")));
        for other in [
            "LOANS/2026/11/25/report.parquet",
            "LOANS/2026/11/25/01a21332-f52d-77dd-bf8b-6de9fed10851.csv",
            "LOANS/2026/11/25/01a21332-f52d-77dd-bf8b-6de9fed10851.ndjson",
            "exports/LOANS/2026/11/25/01a21332-f52d-77dd-bf8b-6de9fed10851.parquet",
            "LOANS/26/11/25/01a21332-f52d-77dd-bf8b-6de9fed10851.parquet",
        ] {
            assert!(!is_gateway_file(&parts(other)), "{other}");
        }
    }

    #[tokio::test]
    async fn local_stage_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let stage = Stage::open(&format!("file://{}", dir.path().display()), &StageConfig::default()).unwrap();
        stage.put_new("T/a.parquet", Bytes::from_static(b"one")).await.unwrap();
        let again = stage.put_new("T/a.parquet", Bytes::from_static(b"two")).await;
        assert!(matches!(again, Err(StageError::AlreadyExists(_))), "{again:?}");
        assert_eq!(stage.get("T/a.parquet").await.unwrap(), Bytes::from_static(b"one"));
        assert!(dir.path().join("T/a.parquet").exists());
        assert!(matches!(stage.get("T/missing.parquet").await, Err(StageError::NotFound(_))));
        stage.ping().await.unwrap();
    }

    #[test]
    fn relative_file_urls_stay_relative() {
        assert_eq!(file_url_path("file://./data/stage"), PathBuf::from("./data/stage"));
        assert_eq!(file_url_path("file:///srv/stage"), PathBuf::from("/srv/stage"));
    }

    #[test]
    fn s3_urls_split_into_bucket_and_prefix() {
        let (bucket, prefix) = parse_s3_url("s3://raw/partners/stage/").unwrap();
        assert_eq!((bucket, prefix.as_ref()), ("raw", "partners/stage"));
        let (bucket, prefix) = parse_s3_url("s3://raw").unwrap();
        assert_eq!((bucket, prefix.as_ref()), ("raw", ""));
        assert!(matches!(parse_s3_url("s3:///x"), Err(StageError::Config(_))));
        assert_eq!(virtual_hosted_endpoint("http://localhost:9000", "raw").unwrap(), "http://raw.localhost:9000");
        assert_eq!(virtual_hosted_endpoint("https://minio.internal/", "raw").unwrap(), "https://raw.minio.internal");
    }

    #[test]
    fn s3_stage_opens_without_network() {
        let options = StageConfig {
            endpoint: Some("http://127.0.0.1:9".into()),
            allow_http: true,
            path_style: true,
            ..Default::default()
        };
        let builder = AmazonS3Builder::new().with_access_key_id("k").with_secret_access_key("s");
        let stage = Stage::open_s3("s3://raw/stage", builder, &options).unwrap();
        assert_eq!(stage.url(), "s3://raw/stage");
        assert!(stage.local_root().is_none());
        assert_eq!(stage.full_path("T/a.parquet").as_ref(), "stage/T/a.parquet");
        assert!(matches!(Stage::open("gs://b/p", &options), Err(StageError::Config(_))));
    }
}

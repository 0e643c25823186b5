//! The stage: where Parquet files wait for the warehouse. A local folder or an object store.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload};

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
}

impl From<object_store::Error> for StageError {
    fn from(e: object_store::Error) -> Self {
        match e {
            object_store::Error::AlreadyExists { path, .. } | object_store::Error::Precondition { path, .. } => {
                StageError::AlreadyExists(path)
            }
            object_store::Error::NotFound { path, .. } => StageError::NotFound(path),
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
}

impl Stage {
    /// Opens a stage from its URL. Only `file://` is supported in this build.
    pub fn open(url: &str) -> Result<Self, StageError> {
        let Some((scheme, _)) = url.split_once("://") else {
            return Err(StageError::Config(format!("invalid stage url {url:?}: expected scheme://location")));
        };
        match scheme {
            "file" => {
                let root = file_url_path(url);
                std::fs::create_dir_all(&root)
                    .map_err(|e| StageError::Config(format!("cannot create stage folder {}: {e}", root.display())))?;
                let root = root
                    .canonicalize()
                    .map_err(|e| StageError::Config(format!("stage folder {}: {e}", root.display())))?;
                let store = LocalFileSystem::new_with_prefix(&root).map_err(|e| StageError::Config(e.to_string()))?;
                Ok(Stage {
                    store: Arc::new(store),
                    prefix: Path::default(),
                    url: url.to_string(),
                    local_root: Some(root),
                })
            }
            other => {
                Err(StageError::Config(format!("unsupported stage scheme {other:?}; this build supports file://")))
            }
        }
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

    /// Writes a new file; never overwrites one that exists.
    pub async fn put_new(&self, relative: &str, data: Bytes) -> Result<(), StageError> {
        let path = self.full_path(relative);
        let options = PutOptions { mode: PutMode::Create, ..Default::default() };
        self.store.put_opts(&path, PutPayload::from(data), options).await?;
        if let Some(root) = &self.local_root {
            sync_local(root.join(path.as_ref())).await?;
        }
        Ok(())
    }

    /// Reads a whole file.
    pub async fn get(&self, relative: &str) -> Result<Bytes, StageError> {
        let result = self.store.get(&self.full_path(relative)).await?;
        Ok(result.bytes().await?)
    }

    /// Round trip to the store, for readiness.
    pub async fn ping(&self) -> Result<(), StageError> {
        use futures::StreamExt;
        let mut listing = self.store.list(Some(&self.prefix));
        match listing.next().await {
            Some(Err(e)) => Err(e.into()),
            _ => Ok(()),
        }
    }
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

    #[tokio::test]
    async fn local_stage_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let stage = Stage::open(&format!("file://{}", dir.path().display())).unwrap();
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
}

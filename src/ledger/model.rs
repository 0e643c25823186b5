//! What the ledger stores: tables, batches, rejects, staged files and schema changes.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::ingest::drift::DriftPolicy;
use crate::ingest::reject::Reject;
use crate::schema::Column;

/// Lifecycle of a batch: `staged -> loading -> loaded`, or `rejected` / `failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BatchStatus {
    Staged,
    Loading,
    Loaded,
    Rejected,
    Failed,
}

impl BatchStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            BatchStatus::Staged => "staged",
            BatchStatus::Loading => "loading",
            BatchStatus::Loaded => "loaded",
            BatchStatus::Rejected => "rejected",
            BatchStatus::Failed => "failed",
        }
    }

    /// True once nothing more will happen to the batch.
    pub fn is_final(self) -> bool {
        matches!(self, BatchStatus::Loaded | BatchStatus::Rejected | BatchStatus::Failed)
    }
}

impl fmt::Display for BatchStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BatchStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "staged" => BatchStatus::Staged,
            "loading" => BatchStatus::Loading,
            "loaded" => BatchStatus::Loaded,
            "rejected" => BatchStatus::Rejected,
            "failed" => BatchStatus::Failed,
            other => return Err(format!("unknown batch status {other:?}")),
        })
    }
}

/// Lifecycle of a staged file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FileStatus {
    /// Part of a large batch whose other parts are not staged yet: not loadable.
    Pending,
    Staged,
    Loading,
    Loaded,
    Failed,
    /// A pending part whose batch never completed (the gateway stopped mid-request).
    Abandoned,
}

impl FileStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            FileStatus::Pending => "pending",
            FileStatus::Staged => "staged",
            FileStatus::Loading => "loading",
            FileStatus::Loaded => "loaded",
            FileStatus::Failed => "failed",
            FileStatus::Abandoned => "abandoned",
        }
    }
}

impl FromStr for FileStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "pending" => FileStatus::Pending,
            "staged" => FileStatus::Staged,
            "loading" => FileStatus::Loading,
            "loaded" => FileStatus::Loaded,
            "failed" => FileStatus::Failed,
            "abandoned" => FileStatus::Abandoned,
            other => return Err(format!("unknown file status {other:?}")),
        })
    }
}

/// Record counts of a batch; once final, `received = loaded + rejected`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Counts {
    pub received: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub loaded: u64,
}

/// A batch about to be recorded, with its gateway rejects.
#[derive(Debug, Clone)]
pub struct NewBatch {
    pub id: Uuid,
    pub table: String,
    pub partner: String,
    pub counts: Counts,
    pub rejects_by_code: BTreeMap<String, u64>,
    pub received_at: DateTime<Utc>,
    pub rejects: Vec<Reject>,
}

/// A Parquet file written to the stage.
#[derive(Debug, Clone)]
pub struct NewFile {
    pub id: Uuid,
    pub table: String,
    pub path: String,
    pub rows: u64,
    pub bytes: u64,
}

/// One group commit: a staged file, the batches with rows in it, and the batches it completes.
#[derive(Debug, Clone)]
pub struct StageCommit {
    /// `None` for a batch whose every record was rejected.
    pub file: Option<NewFile>,
    /// `(batch id, rows of that batch in the file)`.
    pub parts: Vec<(Uuid, u64)>,
    /// Batches whose last rows are in this file (or that have no rows): recorded as staged
    /// (or rejected), and their earlier pending files become loadable.
    pub completed: Vec<NewBatch>,
    /// True when the file is an early part of a large batch that is not complete yet.
    pub pending: bool,
}

/// A file the loader has claimed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedFile {
    pub id: Uuid,
    pub table: String,
    pub path: String,
    pub rows: u64,
    pub attempts: u32,
}

/// What the warehouse did with one claimed file.
#[derive(Debug, Clone, PartialEq)]
pub enum FileOutcome {
    Loaded { id: Uuid, rows: u64, query_id: Option<String> },
    Failed { id: Uuid, error: String, query_id: Option<String> },
}

/// A column added to a table, with the batch that brought it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SchemaChange {
    pub table: String,
    pub column: String,
    #[serde(rename = "type")]
    pub ty: String,
    pub batch_id: Option<Uuid>,
    pub at: DateTime<Utc>,
}

/// A table as the ledger knows it: policy and the columns snowgate validates against.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TableRecord {
    pub name: String,
    pub drift: DriftPolicy,
    pub columns: Vec<Column>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A file as seen from one batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BatchFile {
    pub path: String,
    /// Rows of this batch in the file.
    pub rows: u64,
    pub status: FileStatus,
    /// Warehouse query that loaded the file.
    pub query_id: Option<String>,
    pub error: Option<String>,
}

/// A column added while the batch was ingested.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AppliedChange {
    pub column: String,
    #[serde(rename = "type")]
    pub ty: String,
    pub at: DateTime<Utc>,
}

/// Status of one batch, as partners and operators read it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BatchRecord {
    pub id: Uuid,
    pub table: String,
    pub partner: String,
    pub status: BatchStatus,
    pub counts: Counts,
    pub rejects_by_code: BTreeMap<String, u64>,
    pub schema_changes: Vec<AppliedChange>,
    pub files: Vec<BatchFile>,
    pub received_at: DateTime<Utc>,
    pub staged_at: Option<DateTime<Utc>>,
    pub loaded_at: Option<DateTime<Utc>>,
    pub error: Option<String>,
}

/// Filters for listing batches; newest first, `after` is the last id of the previous page.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BatchFilter {
    /// Table name (case-insensitive).
    pub table: Option<String>,
    pub partner: Option<String>,
    pub status: Option<BatchStatus>,
    /// Received at or after this time (RFC 3339).
    pub since: Option<DateTime<Utc>>,
    /// Received before this time (RFC 3339).
    pub until: Option<DateTime<Utc>>,
    /// Cursor: the last id of the previous page.
    pub after: Option<Uuid>,
    /// Page size, 1 to 1000 (default 100).
    pub limit: Option<u32>,
}

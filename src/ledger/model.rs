//! What the ledger stores: tables, batches, rejects, staged files and schema changes.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::ingest::drift::DriftPolicy;
use crate::ingest::reject::{Reject, RejectCode};
pub use crate::partner::Partner;
use crate::schema::Column;

/// An enum stored and served as its snake_case name: `as_str`, `ALL`, `Display` and `FromStr`
/// from one list, so the names exist once (the migrations' CHECK constraints list them too).
macro_rules! text_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::ALL
                    .iter()
                    .copied()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| format!("unknown {} {s:?}", stringify!($name)))
            }
        }
    };
}

text_enum! {
    /// Lifecycle of a batch: `staged -> loading -> loaded`, or `rejected` / `failed`.
    BatchStatus {
        Staged = "staged",
        Loading = "loading",
        Loaded = "loaded",
        Rejected = "rejected",
        Failed = "failed",
    }
}

impl BatchStatus {
    /// True once nothing more will happen to the batch.
    pub fn is_final(self) -> bool {
        matches!(self, BatchStatus::Loaded | BatchStatus::Rejected | BatchStatus::Failed)
    }

    /// A new batch: `rejected` when nothing was accepted, otherwise `staged`.
    pub fn on_commit(accepted: u64) -> Self {
        if accepted == 0 {
            BatchStatus::Rejected
        } else {
            BatchStatus::Staged
        }
    }

    /// A staged batch from the state of its files: `loading` while any file is still open, then
    /// `failed` if one failed, else `loaded`. The one place this transition is defined.
    pub fn from_files(open_files: u64, failed: bool) -> Self {
        match (open_files, failed) {
            (0, true) => BatchStatus::Failed,
            (0, false) => BatchStatus::Loaded,
            _ => BatchStatus::Loading,
        }
    }
}

text_enum! {
    /// Lifecycle of a staged file.
    FileStatus {
        /// Part of a large batch whose other parts are not staged yet: not loadable.
        Pending = "pending",
        Staged = "staged",
        Loading = "loading",
        Loaded = "loaded",
        Failed = "failed",
        /// A pending part whose batch never completed (the gateway stopped mid-request).
        Abandoned = "abandoned",
        /// Replaced by parts holding its rows while the rows the warehouse refused are isolated:
        /// its rows load through those parts.
        Split = "split",
        /// A part of one row that the warehouse refused: the row is a reject of its batch.
        Rejected = "rejected",
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

/// What a batch's drift policy did to its accepted records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct DriftCounts {
    /// Unknown fields dropped (`discard_value`).
    pub discarded_values: u64,
    /// Unknown fields, and values that did not fit their column, kept in `_RESCUED_DATA` (`rescue`).
    pub rescued_values: u64,
}

/// A batch about to be recorded, with its gateway rejects.
#[derive(Debug, Clone)]
pub struct NewBatch {
    pub id: Uuid,
    pub table: String,
    pub partner: Partner,
    pub counts: Counts,
    pub rejects_by_code: BTreeMap<String, u64>,
    pub drift: DriftCounts,
    pub received_at: DateTime<Utc>,
    pub rejects: NewRejects,
    /// The batch whose rejects this one corrects, for a replay.
    pub replay_of: Option<Uuid>,
}

/// A new batch's gateway rejects, as the ledger is to keep them.
#[derive(Debug, Clone, PartialEq)]
pub enum NewRejects {
    /// Whole, in the ledger.
    Whole(Vec<Reject>),
    /// Already written to the stage as one NDJSON object, a line per reject; the ledger keeps
    /// where each line is and the keys of its errors.
    Staged(StagedRejects),
}

impl NewRejects {
    pub fn none() -> Self {
        NewRejects::Whole(Vec::new())
    }
}

/// A batch's rejects in one stage object.
#[derive(Debug, Clone, PartialEq)]
pub struct StagedRejects {
    /// The object, relative to the stage.
    pub path: String,
    /// One entry per line, by index.
    pub entries: Vec<StagedReject>,
}

/// Where one reject's line is in its object, and what its errors are about.
#[derive(Debug, Clone, PartialEq)]
pub struct StagedReject {
    pub index: u64,
    /// Byte offset of the line in the object.
    pub at: u64,
    /// Its length in bytes, without the newline.
    pub len: u64,
    pub keys: Vec<ErrorKey>,
}

/// What the ledger keeps of one error of a staged reject: enough to filter, count by code and
/// report drift by column, not its message or pointer (those are in the stage).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorKey {
    pub code: RejectCode,
    pub column: Option<String>,
}

/// A reject as the ledger lists it: whole, or a line of an object in the stage.
#[derive(Debug, Clone, PartialEq)]
pub enum RejectEntry {
    Whole(Reject),
    Staged { index: u64, path: String, at: u64, len: u64 },
}

impl RejectEntry {
    pub fn index(&self) -> u64 {
        match self {
            RejectEntry::Whole(reject) => reject.index,
            RejectEntry::Staged { index, .. } => *index,
        }
    }
}

/// A Parquet file written to the stage.
#[derive(Debug, Clone)]
pub struct NewFile {
    pub id: Uuid,
    pub table: String,
    pub path: String,
    pub rows: u64,
    pub bytes: u64,
    /// The table's columns the file was written with, in file order.
    pub columns: Vec<Column>,
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
    /// COPY failures of no known kind so far (see `release_files`).
    pub statement_failures: u32,
    /// The columns the file was written with; `None` for files staged before they were kept.
    pub columns: Option<Vec<Column>>,
    /// When the file was recorded in the ledger (a part of an isolation: when it was split off).
    pub staged_at: DateTime<Utc>,
}

/// What waits to load into one table, and when it last loaded.
#[derive(Debug, Clone, PartialEq)]
pub struct TableLoadState {
    pub table: String,
    /// Files staged or loading.
    pub waiting: u64,
    pub oldest_waiting: Option<DateTime<Utc>>,
    pub last_loaded: Option<DateTime<Utc>>,
}

impl TableLoadState {
    pub fn new(table: String) -> Self {
        TableLoadState { table, waiting: 0, oldest_waiting: None, last_loaded: None }
    }
}

/// What the warehouse did with one claimed file.
#[derive(Debug, Clone, PartialEq)]
pub enum FileOutcome {
    Loaded {
        id: Uuid,
        rows: u64,
        query_id: Option<String>,
    },
    Failed {
        id: Uuid,
        error: String,
        query_id: Option<String>,
    },
    /// A file of one row that the warehouse refused: the row becomes a reject of `batch`.
    Rejected {
        id: Uuid,
        batch: Uuid,
        reject: Reject,
        query_id: Option<String>,
    },
}

/// Files replaced by parts holding the same rows, while isolating the rows the warehouse
/// refused: one refused file halved, or files not tried yet merged into a group or cut into
/// groups.
#[derive(Debug, Clone, PartialEq)]
pub struct FileSplit<'a> {
    pub files: &'a [Uuid],
    /// The refusal, and the statement that got it (none where the refusal was inferred: the
    /// file's sibling loaded, so the rows its parent was refused for are in this file; neither
    /// where untried files are regrouped).
    pub error: Option<&'a str>,
    pub query_id: Option<&'a str>,
    pub parts: &'a [FilePart],
}

/// A part of a file being split, written to the stage already.
#[derive(Debug, Clone, PartialEq)]
pub struct FilePart {
    pub id: Uuid,
    pub path: String,
    pub rows: u64,
    pub bytes: u64,
    /// Rows of each batch in the part.
    pub batches: Vec<(Uuid, u64)>,
}

/// A column added to a table, with the batch that brought it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SchemaChange {
    pub table: String,
    pub column: String,
    #[serde(rename = "type")]
    pub ty: String,
    pub batch_id: Option<Uuid>,
    /// Who made the change: the partner whose batch brought the column, or who declared it
    /// (absent on changes recorded before partners existed).
    pub partner: Option<Partner>,
    /// The type a column widened in place had before; absent where the column was added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_type: Option<String>,
    pub at: DateTime<Utc>,
}

/// A change to a table's columns, as the ledger records and audits it.
#[derive(Debug, Clone, PartialEq)]
pub enum ColumnChange {
    /// A new nullable column.
    Added(Column),
    /// An existing column with a wider type (a longer VARCHAR, a wider NUMBER).
    Widened(Column),
}

impl ColumnChange {
    pub fn column(&self) -> &Column {
        match self {
            ColumnChange::Added(column) | ColumnChange::Widened(column) => column,
        }
    }
}

/// Why columns are added, for the audit log.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeCause {
    /// The batch whose new fields brought the columns; `None` for a declaration.
    pub batch_id: Option<Uuid>,
    pub partner: Partner,
}

/// A table as the ledger knows it: policy and the columns snowgate validates against.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TableRecord {
    pub name: String,
    pub drift: DriftPolicy,
    pub columns: Vec<Column>,
    /// Renamed fields: a field name (normalised as columns are) to the column it loads into.
    #[serde(default)]
    pub aliases: BTreeMap<String, String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Grows by one with every change the ledger records; replicas compare it to know when their
    /// cached definition is stale (clocks are not compared). The ledger assigns it: a record about
    /// to be written carries 0.
    pub version: u64,
}

/// A file as seen from one batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BatchFile {
    pub path: String,
    /// Rows of this batch in the file.
    pub rows: u64,
    pub status: FileStatus,
    /// Times a loader has taken the file to load it (retries after a warehouse outage count).
    pub attempts: u32,
    /// Warehouse query that loaded the file, or that refused it (`split`, `rejected`, `failed`).
    pub query_id: Option<String>,
    pub error: Option<String>,
}

/// Which rejects of a batch to list: those with one error of this code and about this column
/// (either may be left out).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RejectFilter {
    pub code: Option<RejectCode>,
    /// A column name as the errors give it (normalised).
    pub column: Option<String>,
}

/// What one COPY statement did, as seen from one batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CopyStatement {
    /// The warehouse's id of the statement.
    pub query_id: String,
    /// Files of this batch the statement copied.
    pub files: u64,
    /// Rows of this batch it loaded.
    pub rows: u64,
    pub outcome: CopyOutcome,
}

text_enum! {
    /// How a COPY statement ended for the files it copied.
    CopyOutcome {
        Loaded = "loaded",
        /// The warehouse refused a row in them; their rows were isolated (files `split` or
        /// `rejected`).
        Refused = "refused",
        Failed = "failed",
    }
}

impl CopyStatement {
    /// The statements named on a batch's files, in the order the files were made. A file split
    /// without a COPY of its own names none.
    pub fn of(files: &[BatchFile]) -> Vec<CopyStatement> {
        let mut statements: Vec<CopyStatement> = Vec::new();
        for file in files {
            let Some(query_id) = &file.query_id else { continue };
            let (outcome, rows) = match file.status {
                FileStatus::Loaded => (CopyOutcome::Loaded, file.rows),
                FileStatus::Split | FileStatus::Rejected => (CopyOutcome::Refused, 0),
                FileStatus::Failed => (CopyOutcome::Failed, 0),
                // A query id on an open file is an earlier, failed try's; it loaded nothing.
                _ => continue,
            };
            match statements.iter_mut().find(|s| &s.query_id == query_id) {
                Some(statement) => {
                    statement.files += 1;
                    statement.rows += rows;
                }
                None => statements.push(CopyStatement { query_id: query_id.clone(), files: 1, rows, outcome }),
            }
        }
        statements
    }
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
    pub partner: Partner,
    pub status: BatchStatus,
    pub counts: Counts,
    pub rejects_by_code: BTreeMap<String, u64>,
    /// What the table's drift policy did to the accepted records.
    pub drift: DriftCounts,
    pub schema_changes: Vec<AppliedChange>,
    pub files: Vec<BatchFile>,
    /// The COPY statements named on the batch's files: the one that loaded each loaded file and
    /// the one that refused each file split or rejected after a refusal of its own (a multi-file
    /// COPY refused before its files were tried one by one names none).
    pub copies: Vec<CopyStatement>,
    pub received_at: DateTime<Utc>,
    pub staged_at: Option<DateTime<Utc>>,
    pub loaded_at: Option<DateTime<Utc>>,
    pub error: Option<String>,
    /// For a replay: the batch whose rejects it corrects. Its record indexes are that batch's.
    pub replay_of: Option<Uuid>,
    /// Rejects of this batch whose correction a replay has since loaded.
    pub fixed: u64,
    /// Rejects of this batch whose correction a replay is storing or loading.
    pub fixing: u64,
}

/// Filters for listing batches; newest first, `after` is the last id of the previous page.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BatchFilter {
    /// Table name: an identifier, case-insensitive.
    #[param(pattern = r"^[A-Za-z_][A-Za-z0-9_$]{0,254}$")]
    pub table: Option<String>,
    #[param(inline)]
    pub partner: Option<Partner>,
    pub status: Option<BatchStatus>,
    /// Received at or after this time (RFC 3339).
    pub since: Option<DateTime<Utc>>,
    /// Received before this time (RFC 3339).
    pub until: Option<DateTime<Utc>>,
    /// Cursor: the last id of the previous page.
    pub after: Option<Uuid>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// A partner API key as the ledger holds it: its public id and a SHA-256 of its secret part,
/// never the secret itself.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ApiKey {
    /// The key's public id (the part of the key before its secret).
    pub id: String,
    pub partner: Partner,
    /// Tables the key may write (normalised names); every table when `operator` is true.
    pub tables: Vec<String>,
    /// Operator keys declare tables, manage keys, and read every partner's batches.
    pub operator: bool,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// Hex SHA-256 of the secret; never serialised.
    #[serde(skip)]
    pub secret_hash: String,
}

/// A request asking to make the batch of an `Idempotency-Key`.
#[derive(Debug, Clone)]
pub struct IdempotencyClaim {
    pub partner: Partner,
    pub key: String,
    /// Hex SHA-256 of what the request sent (table, content type and encoding, body).
    pub body_hash: String,
    /// The batch this request will make if it gets the key.
    pub batch_id: Uuid,
    /// The replica making it.
    pub owner: String,
    /// How long the key is held for this request before another may take it over.
    pub lease: std::time::Duration,
    /// How long a key is remembered; an older one is free again.
    pub window: std::time::Duration,
}

/// Where an `Idempotency-Key` stands for a request that asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyState {
    /// The request holds the key: it makes its batch.
    Claimed,
    /// The key's batch is committed.
    Committed { batch_id: Uuid, body_hash: String },
    /// Another request holds the key and has not committed yet.
    InProgress { batch_id: Uuid, body_hash: String },
}

/// A replay request's hold on the rejects it corrects: record `indexes` of batch `original`, for
/// replay batch `replay`.
#[derive(Debug, Clone)]
pub struct ReplayClaim {
    pub original: Uuid,
    pub replay: Uuid,
    pub indexes: Vec<u64>,
    /// How long the hold lasts if the replay batch is never stored.
    pub lease: std::time::Duration,
}

/// Why a replay may not correct the records it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayRefusal {
    /// These indexes (the first 100) are not rejects of the original batch.
    NotRejected(Vec<u64>),
    /// Record `index` is corrected by batch `by`, loaded or on its way.
    AlreadyReplayed { index: u64, by: Uuid },
}

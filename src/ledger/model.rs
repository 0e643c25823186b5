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
    }
}

/// Who sent a batch: a partner's name as operators give it (`acme`, `bank-7`): 1 to 64 lowercase
/// letters, digits, `-` or `_`, starting with a letter or a digit. Checked once, where it enters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Partner(String);

impl Partner {
    /// The partner of every batch while partner keys do not exist yet.
    pub fn anonymous() -> Partner {
        Partner("anonymous".to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Partner {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        let mut bytes = name.bytes();
        let first_ok = bytes.next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        let rest_ok = bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if first_ok && rest_ok && name.len() <= 64 {
            Ok(Partner(name.to_string()))
        } else {
            Err(format!(
                "invalid partner {name:?}: 1 to 64 lowercase letters, digits, '-' or '_', starting with a letter or digit"
            ))
        }
    }
}

impl TryFrom<String> for Partner {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        name.parse()
    }
}

impl From<Partner> for String {
    fn from(partner: Partner) -> String {
        partner.0
    }
}

impl fmt::Display for Partner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The pattern the API documents for partner names (what `Partner::from_str` accepts).
const PARTNER_PATTERN: &str = "^[a-z0-9][a-z0-9_-]{0,63}$";

impl utoipa::PartialSchema for Partner {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some(PARTNER_PATTERN))
            .description(Some("A partner's name: lowercase letters, digits, '-' or '_'."))
            .into()
    }
}

impl ToSchema for Partner {}

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
    pub partner: Partner,
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
    /// COPY failures of no known kind so far (see `release_files`).
    pub statement_failures: u32,
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
    pub partner: Partner,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partner_names_are_checked_where_they_enter() {
        for good in ["acme", "bank-7", "a", "0day_partner", &"p".repeat(64)] {
            assert_eq!(good.parse::<Partner>().unwrap().as_str(), good);
        }
        for bad in ["", "Acme", "-acme", "acme corp", "acmé", "a/b", &"p".repeat(65)] {
            assert!(bad.parse::<Partner>().is_err(), "{bad:?}");
        }
        assert!(serde_json::from_str::<Partner>("\"ACME\"").is_err(), "deserialising checks too");
        assert_eq!(Partner::anonymous().as_str(), "anonymous");
    }
}

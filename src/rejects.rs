//! A batch's gateway rejects live in the stage, next to its data: one NDJSON object per batch,
//! `<TABLE>/<yyyy>/<mm>/<dd>/<batch id>.rejects.ndjson`, a line per reject in index order, each
//! line the reject exactly as the API serves it. The ledger keeps an index row per reject (where
//! its line is, and the code and column of each error), so that a page of rejects is one ledger
//! query and one ranged read, filters and replays never open the object, and a million-record
//! batch with 100,000 rejects commits a few megabytes to the ledger instead of its records.
//!
//! Warehouse rejects are found one at a time by the loader and stay whole in the ledger.

use std::ops::Range;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::ingest::reject::Reject;
use crate::ledger::{
    ErrorKey, Ledger, LedgerError, NewRejects, RejectEntry, RejectFilter, StagedReject, StagedRejects,
};
use crate::stage::{Stage, StageError, REJECTS_SUFFIX};

/// Why rejects could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum RejectsError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Stage(#[from] StageError),
    /// A line is not the reject the ledger says it is (the object was changed or cut short).
    #[error("rejects object {path}: {problem}")]
    Corrupt { path: String, problem: String },
}

/// Where a batch's rejects object goes: beside the files of its table on the day it arrived.
pub fn object_path(table: &str, batch: Uuid, received_at: DateTime<Utc>) -> String {
    format!("{table}/{}/{batch}{REJECTS_SUFFIX}", received_at.format("%Y/%m/%d"))
}

/// The NDJSON object of `rejects` (in index order) and where each line is in it.
pub fn encode(rejects: &[Reject]) -> Result<(Vec<u8>, Vec<StagedReject>), serde_json::Error> {
    let mut out = Vec::with_capacity(rejects.len() * 256);
    let mut entries = Vec::with_capacity(rejects.len());
    for reject in rejects {
        let at = out.len();
        serde_json::to_writer(&mut out, reject)?;
        let keys = reject.errors.iter().map(|e| ErrorKey { code: e.code, column: e.column.clone() }).collect();
        entries.push(StagedReject { index: reject.index, at: at as u64, len: (out.len() - at) as u64, keys });
        out.push(b'\n');
    }
    Ok((out, entries))
}

/// Writes a batch's rejects to the stage (never over an object that exists) and returns what
/// the ledger is to keep of them; a batch without rejects writes nothing.
pub async fn store(
    stage: &Stage,
    table: &str,
    batch: Uuid,
    received_at: DateTime<Utc>,
    rejects: Vec<Reject>,
) -> Result<NewRejects, StageError> {
    if rejects.is_empty() {
        return Ok(NewRejects::none());
    }
    let encoded = tokio::task::spawn_blocking(move || encode(&rejects))
        .await
        .map_err(|e| StageError::Unavailable(format!("rejects encoder task: {e}")))?;
    // A reject is plain JSON values and strings: it always serialises.
    let (data, entries) = encoded.map_err(|e| StageError::Unavailable(format!("encoding rejects: {e}")))?;
    let path = object_path(table, batch, received_at);
    stage.put_new(&path, Bytes::from(data)).await?;
    Ok(NewRejects::Staged(StagedRejects { path, entries }))
}

/// Up to `limit` rejects of `batch` after index `after` that `filter` selects, whole: the
/// ledger's page, with the lines of staged ones read from the stage in one ranged read.
pub async fn page(
    ledger: &dyn Ledger,
    stage: &Stage,
    batch: Uuid,
    filter: &RejectFilter,
    after: Option<u64>,
    limit: u32,
) -> Result<Vec<Reject>, RejectsError> {
    let entries = ledger.list_rejects(batch, filter, after, limit).await?;
    resolve(stage, entries).await
}

/// Reads the staged entries' lines and returns every entry whole, in the same order.
pub async fn resolve(stage: &Stage, entries: Vec<RejectEntry>) -> Result<Vec<Reject>, RejectsError> {
    // Every staged entry of one batch names the same object; group by path all the same.
    let mut wanted: Vec<(&str, Vec<Range<u64>>)> = Vec::new();
    for entry in &entries {
        if let RejectEntry::Staged { path, at, len, .. } = entry {
            if wanted.last().is_none_or(|(last, _)| *last != path.as_str()) {
                wanted.push((path.as_str(), Vec::new()));
            }
            if let Some((_, ranges)) = wanted.last_mut() {
                ranges.push(*at..at + len);
            }
        }
    }
    let mut lines = Vec::with_capacity(entries.len());
    for (path, ranges) in &wanted {
        lines.extend(stage.get_ranges(path, ranges).await?);
    }
    let mut lines = lines.into_iter();
    entries
        .into_iter()
        .map(|entry| match entry {
            RejectEntry::Whole(reject) => Ok(reject),
            RejectEntry::Staged { index, path, .. } => {
                let corrupt = |problem: String| RejectsError::Corrupt { path: path.clone(), problem };
                let line = lines.next().ok_or_else(|| corrupt("fewer lines than asked for".into()))?;
                let reject: Reject =
                    serde_json::from_slice(&line).map_err(|e| corrupt(format!("the line of reject {index}: {e}")))?;
                if reject.index != index {
                    return Err(corrupt(format!("the line of reject {index} holds reject {}", reject.index)));
                }
                Ok(reject)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::reject::{FieldError, RejectCode, RejectStage};

    fn reject(index: u64, code: RejectCode, column: Option<&str>) -> Reject {
        Reject {
            index,
            record: serde_json::json!({"id": index, "note": "line\nbreak \u{2028} \"quoted\""}),
            errors: vec![FieldError {
                path: "/id".into(),
                column: column.map(str::to_string),
                code,
                message: "bad".into(),
            }],
            stage: RejectStage::Gateway,
        }
    }

    #[test]
    fn each_entry_locates_exactly_its_own_line() {
        let rejects = vec![
            reject(3, RejectCode::TypeMismatch, Some("ID")),
            reject(17, RejectCode::InvalidJson, None),
            reject(18, RejectCode::TooLong, Some("NOTE")),
        ];
        let (data, entries) = encode(&rejects).unwrap();
        assert_eq!(data.iter().filter(|b| **b == b'\n').count(), 3, "one line per reject, newlines in values escaped");
        for (entry, original) in entries.iter().zip(&rejects) {
            let line = &data[entry.at as usize..(entry.at + entry.len) as usize];
            assert_eq!(&serde_json::from_slice::<Reject>(line).unwrap(), original);
            assert_eq!(entry.index, original.index);
            assert_eq!(entry.keys[0].code, original.errors[0].code);
            assert_eq!(entry.keys[0].column, original.errors[0].column);
        }
        let text = std::str::from_utf8(&data).unwrap();
        for line in text.lines() {
            serde_json::from_str::<Reject>(line).expect("every line is a reject on its own");
        }
    }

    #[test]
    fn the_object_sits_beside_the_tables_files() {
        let at = DateTime::parse_from_rfc3339("2026-11-30T23:59:59Z").unwrap().with_timezone(&Utc);
        let batch: Uuid = "01a21332-f52d-77dd-bf8b-6de9fed10851".parse().unwrap();
        assert_eq!(
            object_path("LOANS", batch, at),
            "LOANS/2026/11/30/01a21332-f52d-77dd-bf8b-6de9fed10851.rejects.ndjson"
        );
    }
}

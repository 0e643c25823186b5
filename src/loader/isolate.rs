//! Isolating the rows the warehouse refuses. A file whose COPY fails alone with a data error is
//! read back and searched (see `search`): parts of it are written to the stage as new files and
//! recorded in the ledger in place of the files they come from, and each part is copied on its
//! own. A part that loads is done; a row refused alone becomes a reject of its batch carrying
//! the warehouse's error and the row as it was loaded. k bad rows in n rows cost about
//! k·log2(n/k) + 2k statements, not n.
//!
//! Each replacement is one ledger transaction that ends the files replaced and records the new
//! ones, so a crash at any point leaves every row in exactly one open file, and a restart loads
//! those like any other files: no row is loaded twice. Parts written to the stage but never
//! recorded are orphans for the stage sweeper.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use arrow::array::{Array, AsArray, RecordBatch, UInt32Array};
use arrow::compute::{concat_batches, take_record_batch};
use arrow::datatypes::{DataType, Decimal128Type, Float64Type, Int64Type};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::Value;
use uuid::Uuid;

use super::search::{Cause, Key, Part, Search, Step};
use super::{backoff, jittered, Loader};
use crate::buffer::encode::parquet_bytes;
use crate::ingest::reject::{pointer, FieldError, Reject, RejectCode, RejectStage};
use crate::ledger::{ClaimedFile, FileOutcome, FilePart, FileSplit, LedgerError};
use crate::schema::{Column, META_BATCH_ID, META_COLUMNS, META_RECORD_INDEX};
use crate::stage::StageError;
use crate::warehouse::{copy_outcome, ErrorKind, StagedFile, WarehouseError};

/// Ids of the files a round holds, renewed together; isolation adds the parts it creates.
pub(super) type Held = Mutex<Vec<Uuid>>;

/// An open file of the isolation: its ledger id, stage path and rows (by position in the
/// refused file).
struct Node {
    id: Uuid,
    path: String,
    rows: Vec<u32>,
}

/// What one isolation holds: the table, the columns its files were written with, the refused
/// file's rows, the claims to extend with new parts, the file's earlier attempts (for backoff),
/// its open files, the refusal each is known by, and the statements spent.
struct Isolation<'a> {
    table: &'a str,
    columns: Option<Vec<Column>>,
    rows: RecordBatch,
    held: &'a Held,
    attempts: u32,
    /// The refusal of the whole file.
    refusal: Arc<WarehouseError>,
    nodes: HashMap<Key, Node>,
    /// The refusal each refused part is known by: its own COPY's (`own`), or its parent's.
    errors: HashMap<Key, Arc<WarehouseError>>,
    own: HashSet<Key>,
    statements: u32,
}

impl Isolation<'_> {
    fn error(&self, key: Key) -> &WarehouseError {
        self.errors.get(&key).unwrap_or(&self.refusal)
    }

    fn ids(&self, keys: &[Key]) -> Vec<Uuid> {
        keys.iter().filter_map(|k| self.nodes.get(k)).map(|n| n.id).collect()
    }
}

/// How a step of an isolation ended.
#[derive(Debug, PartialEq)]
enum Flow {
    /// Go on with the next step.
    Next,
    /// The warehouse or the stage failed for a reason that is not the data's, and the open files
    /// were released for a later round; or a claim was lost to another loader; or the files
    /// left were failed.
    Stopped,
}

/// Why a refused file could not be read back for splitting.
enum Unreadable {
    Stage(StageError),
    Parquet(String),
}

impl Loader {
    /// Isolates the rows of `file`, which the warehouse refused alone with `error` (a data error).
    pub(super) async fn isolate(
        &self,
        table: &str,
        file: ClaimedFile,
        error: WarehouseError,
        held: &Held,
    ) -> Result<(), LedgerError> {
        let rows = match self.read_rows(&file.path).await {
            Ok(rows) if rows.num_rows() > 0 => rows,
            Ok(_) => return self.fail(file.id, &error, true, "the refused file holds no rows").await.map(|_| ()),
            Err(Unreadable::Stage(e)) => {
                let failure = WarehouseError::from_stage(e, &file.path);
                tracing::warn!(table, path = %file.path, error = %failure,
                    "could not read a refused file back to isolate its rows; released for another try");
                return self.release_ids(table, &[file.id], &failure, file.attempts).await;
            }
            Err(Unreadable::Parquet(e)) => {
                // A file the gateway cannot decode cannot be split: it fails as a whole.
                tracing::error!(table, path = %file.path, error = %error, unreadable = %e,
                    "file refused and not readable for isolation");
                return self.fail(file.id, &error, true, &format!("could not be split: {e}")).await.map(|_| ());
            }
        };
        let Ok(count) = u32::try_from(rows.num_rows()) else {
            return self.fail(file.id, &error, true, "too many rows to split").await.map(|_| ());
        };
        let root = Node { id: file.id, path: file.path.clone(), rows: (0..count).collect() };
        let mut isolation = Isolation {
            table,
            columns: file.columns.clone(),
            rows,
            held,
            attempts: file.attempts,
            refusal: Arc::new(error),
            nodes: HashMap::from([(0, root)]),
            errors: HashMap::new(),
            own: HashSet::from([0]),
            statements: 0,
        };
        let mut search = Search::new(count);
        let finished = loop {
            let flow = match search.next() {
                Step::Done => break true,
                Step::Replace { from, into, cause } => {
                    self.replace(&mut isolation, &search, &from, &into, cause).await?
                }
                Step::Copy(key) => self.try_part(&mut isolation, &mut search, key).await?,
                Step::Reject(key) => self.reject_row(&mut isolation, key).await?,
            };
            if flow == Flow::Stopped {
                break false;
            }
        };
        tracing::info!(table, path = %file.path, rows = file.rows, statements = isolation.statements, finished,
            "isolated the rows the warehouse refused");
        Ok(())
    }

    /// Reads a staged file back into one record batch.
    async fn read_rows(&self, path: &str) -> Result<RecordBatch, Unreadable> {
        let data = self.stage.get(path).await.map_err(Unreadable::Stage)?;
        let parquet = |e: &dyn std::fmt::Display| Unreadable::Parquet(e.to_string());
        let reader = ParquetRecordBatchReaderBuilder::try_new(data).map_err(|e| parquet(&e))?;
        let schema = reader.schema().clone();
        let batches = reader.build().map_err(|e| parquet(&e))?.collect::<Result<Vec<_>, _>>();
        let batches = batches.map_err(|e| parquet(&e))?;
        concat_batches(&schema, &batches).map_err(|e| parquet(&e))
    }

    /// Marks a file failed with the refusal and why isolation ended there. The file names the
    /// statement only where it refused the file itself (`own`), not where the refusal was an
    /// ancestor's.
    async fn fail(&self, id: Uuid, error: &WarehouseError, own: bool, why: &str) -> Result<Flow, LedgerError> {
        let query_id = if own { error.query_id().map(str::to_string) } else { None };
        let outcome = FileOutcome::Failed { id, error: format!("{error}; {why}"), query_id };
        Ok(self.recorded(self.ledger.complete_files(&self.owner, &[outcome]).await?))
    }

    /// Fails every open file in `keys`, each with the refusal it is known by.
    async fn fail_open(&self, isolation: &Isolation<'_>, keys: &[Key], why: &str) -> Result<Flow, LedgerError> {
        for key in keys {
            if let Some(node) = isolation.nodes.get(key) {
                self.fail(node.id, isolation.error(*key), isolation.own.contains(key), why).await?;
            }
        }
        Ok(Flow::Stopped)
    }

    /// `Next` when the ledger recorded an outcome, `Stopped` when the claim was lost.
    fn recorded(&self, recorded: usize) -> Flow {
        if recorded == 0 {
            tracing::warn!(owner = %self.owner, "lost the claim on a file while isolating its rows");
            return Flow::Stopped;
        }
        Flow::Next
    }

    /// Writes the parts `into` to the stage and records them in place of the open files `from`.
    async fn replace(
        &self,
        isolation: &mut Isolation<'_>,
        search: &Search,
        from: &[Key],
        into: &[Part],
        cause: Cause,
    ) -> Result<Flow, LedgerError> {
        // What is open until the replacement is recorded: the search counts `into` already.
        let new: HashSet<Key> = into.iter().map(|p| p.key).collect();
        let open: Vec<Key> =
            search.open().into_iter().filter(|k| !new.contains(k)).chain(from.iter().copied()).collect();
        let parent = &isolation.nodes[&from[0]];
        // Beside the parent, named as the gateway names files, so the sweeper knows them.
        let dir = parent.path.rsplit_once('/').map_or("", |(dir, _)| dir).to_string();
        let mut parts = Vec::with_capacity(into.len());
        for part in into {
            let id = Uuid::now_v7();
            let path = if dir.is_empty() { format!("{id}.parquet") } else { format!("{dir}/{id}.parquet") };
            let encoded = take_rows(&isolation.rows, &part.rows)
                .and_then(|rows| Ok((parquet_bytes(&rows).map_err(|e| e.to_string())?, batch_rows(&rows)?)));
            let (bytes, batches) = match encoded {
                Ok(encoded) => encoded,
                // Rows the gateway wrote and read back always encode again; if not, nothing can
                // split this file.
                Err(e) => return self.fail_open(isolation, &open, &format!("could not be split: {e}")).await,
            };
            let size = bytes.len() as u64;
            if let Err(e) = self.stage.put_new(&path, bytes).await {
                let failure = WarehouseError::from_stage(e, &path);
                tracing::warn!(table = isolation.table, path = %parent.path, error = %failure,
                    "could not write the parts of a refused file; released for another try");
                return self.release_open(isolation, &open, &failure).await;
            }
            parts.push(FilePart { id, path, rows: part.rows.len() as u64, bytes: size, batches });
        }
        crate::fault::crash_point(crate::fault::CrashPoint::PartsStaged);
        let refusal = isolation.errors.get(&from[0]).unwrap_or(&isolation.refusal).clone();
        let message = refusal.to_string();
        let (error, query_id) = match cause {
            Cause::Refused => (Some(message.as_str()), refusal.query_id()),
            Cause::Inferred => (Some(message.as_str()), None),
            Cause::Regrouped => (None, None),
        };
        let files = isolation.ids(from);
        let split = FileSplit { files: &files, error, query_id, parts: &parts };
        if !self.ledger.split_file(&split, &self.owner, self.settings.lease).await? {
            tracing::warn!(table = isolation.table, path = %parent.path,
                "lost the claim on a file while isolating its rows; the new parts are left to the sweeper");
            return Ok(Flow::Stopped);
        }
        isolation.held.lock().unwrap_or_else(|p| p.into_inner()).extend(parts.iter().map(|p| p.id));
        for key in from {
            isolation.nodes.remove(key);
            isolation.own.remove(key);
        }
        for (part, file) in into.iter().zip(parts) {
            // A refused file's halves are known by its refusal; regrouped parts by none yet.
            if cause != Cause::Regrouped {
                isolation.errors.insert(part.key, refusal.clone());
            }
            isolation.nodes.insert(part.key, Node { id: file.id, path: file.path, rows: part.rows.clone() });
        }
        for key in from {
            isolation.errors.remove(key);
        }
        Ok(Flow::Next)
    }

    /// Copies one part on its own, if the isolation has a statement left, records what became
    /// of it and tells the search.
    async fn try_part(
        &self,
        isolation: &mut Isolation<'_>,
        search: &mut Search,
        key: Key,
    ) -> Result<Flow, LedgerError> {
        if isolation.statements >= self.settings.isolation_statements {
            let why = format!("isolation stopped after {} COPY statements", self.settings.isolation_statements);
            return self.fail_open(isolation, &search.open(), &why).await;
        }
        isolation.statements += 1;
        let node = &isolation.nodes[&key];
        let staged = StagedFile { path: node.path.clone(), columns: isolation.columns.clone() };
        let started = std::time::Instant::now();
        let copied = self.warehouse.copy_files(isolation.table, &[staged]).await;
        self.measure_copy(isolation.table, &copied, started.elapsed());
        match copied {
            Ok(results) => {
                let outcome = copy_outcome(node.id, &node.path, &results);
                if let FileOutcome::Loaded { rows, .. } = &outcome {
                    self.metrics.loaded(isolation.table, *rows, None);
                }
                if self.recorded(self.ledger.complete_files(&self.owner, &[outcome]).await?) == Flow::Stopped {
                    return Ok(Flow::Stopped);
                }
                isolation.nodes.remove(&key);
                isolation.errors.remove(&key);
                search.copied(true);
                Ok(Flow::Next)
            }
            Err(e) if e.kind == ErrorKind::Data => {
                isolation.errors.insert(key, Arc::new(e));
                isolation.own.insert(key);
                search.copied(false);
                Ok(Flow::Next)
            }
            Err(e) => {
                tracing::warn!(table = isolation.table, path = %node.path, error = %e,
                    "COPY of a part failed for a reason not the data's; released for another try");
                self.release_open(isolation, &search.open(), &e).await
            }
        }
    }

    /// Makes the open files `keys` loadable again by any loader.
    async fn release_open(
        &self,
        isolation: &Isolation<'_>,
        keys: &[Key],
        failure: &WarehouseError,
    ) -> Result<Flow, LedgerError> {
        self.release_ids(isolation.table, &isolation.ids(keys), failure, isolation.attempts).await?;
        Ok(Flow::Stopped)
    }

    /// Makes files loadable again by any loader, after a delay fitting the failure.
    async fn release_ids(
        &self,
        table: &str,
        ids: &[Uuid],
        failure: &WarehouseError,
        attempts: u32,
    ) -> Result<(), LedgerError> {
        let backoff = jittered(backoff(self.settings.retry_base, attempts)).max(failure.retry_after());
        let (delay, unclassified) = match failure.kind {
            ErrorKind::Configuration => {
                self.health.configuration_error(table, failure);
                (self.settings.configuration_retry, false)
            }
            ErrorKind::Statement => (backoff, true),
            ErrorKind::Transient | ErrorKind::Data => (backoff, false),
        };
        self.ledger.release_files(&self.owner, ids, &failure.to_string(), delay, unclassified).await
    }

    /// Makes the one row of part `key` a warehouse reject of its batch.
    async fn reject_row(&self, isolation: &mut Isolation<'_>, key: Key) -> Result<Flow, LedgerError> {
        let node = &isolation.nodes[&key];
        let error = isolation.error(key);
        let row = isolation.rows.slice(node.rows[0] as usize, 1);
        let (batch, index) = match row_identity(&row) {
            Ok(identity) => identity,
            Err(e) => {
                let flow =
                    self.fail(node.id, error, true, &format!("the refused row has no batch identity: {e}")).await;
                isolation.nodes.remove(&key);
                isolation.errors.remove(&key);
                return flow;
            }
        };
        let record = row_json(&row, isolation.columns.as_deref());
        let column = error.column().and_then(|named| {
            let fields = row.schema();
            let found = fields.fields().iter().map(|f| f.name().clone()).find(|name| {
                !META_COLUMNS.contains(&name.as_str())
                    && (name.as_str() == named || named.contains(&format!("\"{name}\"")))
            });
            found
        });
        // The part's path means nothing to the partner; the warehouse's words do.
        let message = error.message();
        let message = message.strip_prefix(&format!("{}: ", node.path)).unwrap_or(message).to_string();
        let field = FieldError {
            path: column.as_deref().map(pointer).unwrap_or_default(),
            column,
            code: RejectCode::WarehouseRejected,
            message: match error.code() {
                Some(code) if !message.starts_with(code) => format!("{code}: {message}"),
                _ => message,
            },
        };
        let reject = Reject { index, record, errors: vec![field], stage: RejectStage::Warehouse };
        let outcome =
            FileOutcome::Rejected { id: node.id, batch, reject, query_id: error.query_id().map(str::to_string) };
        let flow = self.recorded(self.ledger.complete_files(&self.owner, &[outcome]).await?);
        if flow == Flow::Next {
            // Rare (isolation is capped), so the batch's partner is looked up for each.
            let partner = match self.ledger.get_batch(batch).await {
                Ok(Some(record)) => record.partner.to_string(),
                Ok(None) | Err(_) => "unknown".to_string(),
            };
            self.metrics.warehouse_reject(isolation.table, &partner);
        }
        isolation.nodes.remove(&key);
        isolation.errors.remove(&key);
        Ok(flow)
    }
}

/// The rows at `positions` of `rows`, in that order.
fn take_rows(rows: &RecordBatch, positions: &[u32]) -> Result<RecordBatch, String> {
    take_record_batch(rows, &UInt32Array::from(positions.to_vec())).map_err(|e| e.to_string())
}

/// Rows of each batch in `rows`, from its `_BATCH_ID` column.
fn batch_rows(rows: &RecordBatch) -> Result<Vec<(Uuid, u64)>, String> {
    let column = rows.column_by_name(META_BATCH_ID).ok_or("no _BATCH_ID column")?;
    let ids = column.as_string_opt::<i32>().ok_or("_BATCH_ID is not text")?;
    let mut counts: BTreeMap<Uuid, u64> = BTreeMap::new();
    for id in ids.iter() {
        let id = id.and_then(|id| Uuid::parse_str(id).ok()).ok_or("a row without a batch id")?;
        *counts.entry(id).or_default() += 1;
    }
    Ok(counts.into_iter().collect())
}

/// The batch and record index of the first row of `rows`.
fn row_identity(rows: &RecordBatch) -> Result<(Uuid, u64), String> {
    let batch = batch_rows(&rows.slice(0, 1))?.first().map(|(id, _)| *id).ok_or("no row")?;
    let index = rows
        .column_by_name(META_RECORD_INDEX)
        .and_then(|c| c.as_primitive_opt::<Int64Type>())
        .filter(|c| c.is_valid(0))
        .map(|c| c.value(0))
        .ok_or("no _RECORD_INDEX")?;
    Ok((batch, u64::try_from(index).map_err(|_| "a negative _RECORD_INDEX")?))
}

/// The first row of `rows` as loaded, by column name, without the metadata columns: numbers as
/// JSON numbers (decimals as exact text), semi-structured values as the JSON they hold, others
/// as the warehouse would print them.
fn row_json(rows: &RecordBatch, columns: Option<&[Column]>) -> Value {
    let schema = rows.schema();
    let mut record = serde_json::Map::new();
    for (field, array) in schema.fields().iter().zip(rows.columns()) {
        if META_COLUMNS.contains(&field.name().as_str()) {
            continue;
        }
        let semi_structured = columns
            .and_then(|columns| columns.iter().find(|c| c.name.as_str() == field.name()))
            .is_some_and(|c| c.ty.is_semi_structured());
        record.insert(field.name().clone(), cell_json(array.as_ref(), semi_structured));
    }
    Value::Object(record)
}

fn cell_json(array: &dyn Array, semi_structured: bool) -> Value {
    if array.is_null(0) {
        return Value::Null;
    }
    match array.data_type() {
        DataType::Boolean => Value::Bool(array.as_boolean().value(0)),
        DataType::Int64 => Value::from(array.as_primitive::<Int64Type>().value(0)),
        DataType::Float64 => serde_json::Number::from_f64(array.as_primitive::<Float64Type>().value(0))
            .map_or(Value::Null, Value::Number),
        // Integers as numbers where they fit; other decimals as exact text.
        DataType::Decimal128(_, 0) => match i64::try_from(array.as_primitive::<Decimal128Type>().value(0)) {
            Ok(integer) => Value::from(integer),
            Err(_) => Value::String(array.as_primitive::<Decimal128Type>().value_as_string(0)),
        },
        DataType::Utf8 => {
            let text = array.as_string::<i32>().value(0);
            match semi_structured {
                true => serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string())),
                false => Value::String(text.to_string()),
            }
        }
        _ => ArrayFormatter::try_new(array, &FormatOptions::default())
            .map_or(Value::Null, |format| Value::String(format.value(0).to_string())),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{BooleanArray, Decimal128Array, Int64Array, StringArray};
    use arrow::datatypes::{Field, Schema};

    use super::*;
    use crate::schema::{ColumnName, ColumnType};

    fn rows() -> RecordBatch {
        let batch = Uuid::now_v7().to_string();
        let schema = Schema::new(vec![
            Field::new("AMOUNT", DataType::Decimal128(12, 2), true),
            Field::new("ID", DataType::Decimal128(38, 0), true),
            Field::new("DOC", DataType::Utf8, true),
            Field::new("OK", DataType::Boolean, true),
            Field::new(META_BATCH_ID, DataType::Utf8, false),
            Field::new(META_RECORD_INDEX, DataType::Int64, false),
        ]);
        RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(Decimal128Array::from(vec![Some(12345), None]).with_precision_and_scale(12, 2).unwrap()),
                Arc::new(
                    Decimal128Array::from(vec![Some(7), Some(i128::MAX)]).with_precision_and_scale(38, 0).unwrap(),
                ),
                Arc::new(StringArray::from(vec![Some(r#"{"a":[1,2]}"#), Some("x")])),
                Arc::new(BooleanArray::from(vec![Some(true), None])),
                Arc::new(StringArray::from(vec![batch.clone(), batch])),
                Arc::new(Int64Array::from(vec![7, 8])),
            ],
        )
        .unwrap()
    }

    #[test]
    fn a_refused_row_reads_back_as_loaded_with_its_identity() {
        let rows = rows();
        let doc = Column { name: ColumnName::normalize("doc").unwrap(), ty: ColumnType::Variant, nullable: true };
        let record = row_json(&rows, Some(&[doc]));
        assert_eq!(record, serde_json::json!({"AMOUNT": "123.45", "ID": 7, "DOC": {"a": [1, 2]}, "OK": true}));
        assert_eq!(
            row_json(&rows.slice(1, 1), None),
            serde_json::json!({"AMOUNT": null, "ID": i128::MAX.to_string(), "DOC": "x", "OK": null})
        );
        let (batch, index) = row_identity(&rows.slice(1, 1)).unwrap();
        assert_eq!(index, 8);
        assert_eq!(batch_rows(&rows).unwrap(), vec![(batch, 2)]);
    }
}

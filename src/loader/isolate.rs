//! Isolating the rows the warehouse refuses. A file whose COPY fails alone with a data error is
//! split in halves, written to the stage as new files and recorded in the ledger in its place,
//! and each half is copied on its own. A half that loads is done; a half that is refused is split
//! again, down to single rows, which become rejects of their batches carrying the warehouse's
//! error and the row as it was loaded. A half whose sibling loaded holds every row its parent was
//! refused for, so it is split without a COPY of its own: k bad rows in n rows cost about
//! k·log2(n) statements, not n.
//!
//! Each split is one ledger transaction that ends the parent and records its parts, so a crash at
//! any point leaves every row in exactly one open file (the parent, or its parts), and a restart
//! loads those like any other files: no row is loaded twice. Parts written to the stage but never
//! recorded are orphans for the stage sweeper.

use std::collections::BTreeMap;
use std::sync::Mutex;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::concat_batches;
use arrow::datatypes::{DataType, Decimal128Type, Float64Type, Int64Type};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use futures::future::BoxFuture;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::Value;
use uuid::Uuid;

use super::{backoff, jittered, Loader};
use crate::buffer::encode::parquet_bytes;
use crate::ingest::reject::{pointer, FieldError, Reject, RejectCode, RejectStage};
use crate::ledger::{ClaimedFile, FileOutcome, FilePart, FileSplit, LedgerError};
use crate::schema::{Column, META_BATCH_ID, META_COLUMNS, META_RECORD_INDEX};
use crate::stage::StageError;
use crate::warehouse::{copy_outcome, ErrorKind, StagedFile, WarehouseError};

/// Ids of the files a round holds, renewed together; isolation adds the parts it creates.
pub(super) type Held = Mutex<Vec<Uuid>>;

/// One file of the tree being isolated: its ledger id, stage path and rows, held in memory.
struct Node {
    id: Uuid,
    path: String,
    rows: RecordBatch,
}

/// What one isolation shares: the table, the columns its files were written with, the claims to
/// extend with new parts, the file's earlier attempts (for backoff), and the statements spent.
struct Isolation<'a> {
    table: &'a str,
    columns: Option<Vec<Column>>,
    held: &'a Held,
    attempts: u32,
    statements: Mutex<u32>,
}

/// How a step of an isolation ended.
#[derive(Debug, PartialEq)]
enum Flow {
    /// Every row of the node was loaded or rejected.
    Done,
    /// The warehouse or the stage failed for a reason that is not the data's, and the node's
    /// open files were released for a later round; or the claim was lost to another loader.
    Stopped,
}

/// The outcome of copying one part.
enum Copied {
    Loaded,
    Refused(WarehouseError),
    Stopped,
    /// Not copied: the isolation spent its statements (`loader.isolation_statements`).
    Capped,
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
        let isolation = Isolation {
            table,
            columns: file.columns.clone(),
            held,
            attempts: file.attempts,
            statements: Mutex::new(0),
        };
        let rows = match self.read_rows(&file.path).await {
            Ok(rows) if rows.num_rows() > 0 => rows,
            Ok(_) => return self.fail(file.id, &error, true, "the refused file holds no rows").await.map(|_| ()),
            Err(Unreadable::Stage(e)) => {
                let failure = WarehouseError::from_stage(e, &file.path);
                tracing::warn!(table, path = %file.path, error = %failure,
                    "could not read a refused file back to isolate its rows; released for another try");
                return self.release_parts(&isolation, &[file.id], &failure).await;
            }
            Err(Unreadable::Parquet(e)) => {
                // A file the gateway cannot decode cannot be split: it fails as a whole.
                tracing::error!(table, path = %file.path, error = %error, unreadable = %e,
                    "file refused and not readable for isolation");
                return self.fail(file.id, &error, true, &format!("could not be split: {e}")).await.map(|_| ());
            }
        };
        let node = Node { id: file.id, path: file.path.clone(), rows };
        let flow = self.bisect(&isolation, node, error, false).await?;
        let statements = self.spent(&isolation);
        tracing::info!(table, path = %file.path, rows = file.rows, statements, finished = flow == Flow::Done,
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

    /// `Done` when the ledger recorded an outcome, `Stopped` when the claim was lost.
    fn recorded(&self, recorded: usize) -> Flow {
        if recorded == 0 {
            tracing::warn!(owner = %self.owner, "lost the claim on a file while isolating its rows");
            return Flow::Stopped;
        }
        Flow::Done
    }

    /// Loads or rejects every row of `node`, which the warehouse refused with `error`, or whose
    /// refusal is `inferred` from its parent's (its sibling loaded).
    fn bisect<'a>(
        &'a self,
        isolation: &'a Isolation<'a>,
        node: Node,
        error: WarehouseError,
        inferred: bool,
    ) -> BoxFuture<'a, Result<Flow, LedgerError>> {
        Box::pin(async move {
            if node.rows.num_rows() == 1 {
                // A row is only rejected for a refusal of its own: an inferred one is tried
                // alone first (the table may have changed back, or the refusal was not a row's).
                if !inferred {
                    return self.reject_row(isolation, &node, &error).await;
                }
                return match self.copy_part(isolation, &node).await? {
                    Copied::Loaded => Ok(Flow::Done),
                    Copied::Refused(refused) => self.reject_row(isolation, &node, &refused).await,
                    Copied::Stopped => Ok(Flow::Stopped),
                    Copied::Capped => self.capped(&[node.id], &error, false).await,
                };
            }
            // Splitting is only worth it while statements are left to copy the halves.
            if self.spent(isolation) >= self.settings.isolation_statements {
                return self.capped(&[node.id], &error, !inferred).await;
            }
            let Some([first, second]) = self.split(isolation, node, &error, inferred).await? else {
                return Ok(Flow::Stopped);
            };
            match self.copy_part(isolation, &first).await? {
                // Every row the parent was refused for is in the second half.
                Copied::Loaded => self.bisect(isolation, second, error, true).await,
                Copied::Refused(refused) => {
                    if self.bisect(isolation, first, refused, false).await? == Flow::Stopped {
                        self.release_parts(isolation, &[second.id], &error).await?;
                        return Ok(Flow::Stopped);
                    }
                    match self.copy_part(isolation, &second).await? {
                        Copied::Loaded => Ok(Flow::Done),
                        Copied::Refused(refused) => self.bisect(isolation, second, refused, false).await,
                        Copied::Stopped => Ok(Flow::Stopped),
                        Copied::Capped => self.capped(&[second.id], &error, false).await,
                    }
                }
                Copied::Stopped => {
                    self.release_parts(isolation, &[second.id], &error).await?;
                    Ok(Flow::Stopped)
                }
                Copied::Capped => self.capped(&[first.id, second.id], &error, false).await,
            }
        })
    }

    /// Writes the halves of `node` to the stage and records them in its place; `None` when that
    /// could not be done (the node is released, or its claim was lost).
    async fn split(
        &self,
        isolation: &Isolation<'_>,
        node: Node,
        error: &WarehouseError,
        inferred: bool,
    ) -> Result<Option<[Node; 2]>, LedgerError> {
        let n = node.rows.num_rows();
        let halves = [node.rows.slice(0, n / 2), node.rows.slice(n / 2, n - n / 2)];
        // Beside the parent, named as the gateway names files, so the sweeper knows them.
        let dir = node.path.rsplit_once('/').map_or("", |(dir, _)| dir);
        let mut parts = Vec::with_capacity(2);
        let mut nodes = Vec::with_capacity(2);
        for rows in halves {
            let id = Uuid::now_v7();
            let path = if dir.is_empty() { format!("{id}.parquet") } else { format!("{dir}/{id}.parquet") };
            let encoded = parquet_bytes(&rows).map_err(|e| e.to_string()).and_then(|b| Ok((b, batch_rows(&rows)?)));
            let (bytes, batches) = match encoded {
                Ok(encoded) => encoded,
                // Rows the gateway wrote and read back always encode again; if not, nothing can
                // split this file.
                Err(e) => {
                    let why = format!("could not be split: {e}");
                    return self.fail(node.id, error, !inferred, &why).await.map(|_| None);
                }
            };
            let size = bytes.len() as u64;
            if let Err(e) = self.stage.put_new(&path, bytes).await {
                let failure = WarehouseError::from_stage(e, &path);
                tracing::warn!(table = isolation.table, path = %node.path, error = %failure,
                    "could not write the parts of a refused file; released for another try");
                self.release_parts(isolation, &[node.id], &failure).await?;
                return Ok(None);
            }
            parts.push(FilePart { id, path: path.clone(), rows: rows.num_rows() as u64, bytes: size, batches });
            nodes.push(Node { id, path, rows });
        }
        crate::fault::crash_point(crate::fault::CrashPoint::PartsStaged);
        let message = error.to_string();
        let query_id = if inferred { None } else { error.query_id() };
        let split = FileSplit { file: node.id, error: &message, query_id, parts: &parts };
        if !self.ledger.split_file(&split, &self.owner, self.settings.lease).await? {
            tracing::warn!(table = isolation.table, path = %node.path,
                "lost the claim on a refused file while splitting it; its parts are left to the sweeper");
            return Ok(None);
        }
        isolation.held.lock().unwrap_or_else(|p| p.into_inner()).extend(parts.iter().map(|p| p.id));
        let [first, second]: [Node; 2] = nodes.try_into().unwrap_or_else(|_| unreachable!("two halves"));
        Ok(Some([first, second]))
    }

    /// COPY statements the isolation has spent so far.
    fn spent(&self, isolation: &Isolation<'_>) -> u32 {
        *isolation.statements.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Fails files the isolation has no statements left for, with the refusal they are part of.
    async fn capped(&self, ids: &[Uuid], error: &WarehouseError, own: bool) -> Result<Flow, LedgerError> {
        let why = format!("isolation stopped after {} COPY statements", self.settings.isolation_statements);
        let mut flow = Flow::Done;
        for id in ids {
            if self.fail(*id, error, own, &why).await? == Flow::Stopped {
                flow = Flow::Stopped;
            }
        }
        Ok(flow)
    }

    /// Copies one part on its own, if the isolation has a statement left, and records what
    /// became of it.
    async fn copy_part(&self, isolation: &Isolation<'_>, node: &Node) -> Result<Copied, LedgerError> {
        {
            let mut spent = isolation.statements.lock().unwrap_or_else(|p| p.into_inner());
            if *spent >= self.settings.isolation_statements {
                return Ok(Copied::Capped);
            }
            *spent += 1;
        }
        let staged = StagedFile { path: node.path.clone(), columns: isolation.columns.clone() };
        match self.warehouse.copy_files(isolation.table, &[staged]).await {
            Ok(results) => {
                let outcome = copy_outcome(node.id, &node.path, &results);
                Ok(match self.recorded(self.ledger.complete_files(&self.owner, &[outcome]).await?) {
                    Flow::Done => Copied::Loaded,
                    Flow::Stopped => Copied::Stopped,
                })
            }
            Err(e) if e.kind == ErrorKind::Data => Ok(Copied::Refused(e)),
            Err(e) => {
                tracing::warn!(table = isolation.table, path = %node.path, error = %e,
                    "COPY of a part failed for a reason not the data's; released for another try");
                self.release_parts(isolation, &[node.id], &e).await?;
                Ok(Copied::Stopped)
            }
        }
    }

    /// Makes files loadable again by any loader, after a delay fitting the failure.
    async fn release_parts(
        &self,
        isolation: &Isolation<'_>,
        ids: &[Uuid],
        failure: &WarehouseError,
    ) -> Result<(), LedgerError> {
        let backoff = jittered(backoff(self.settings.retry_base, isolation.attempts)).max(failure.retry_after());
        let (delay, unclassified) = match failure.kind {
            ErrorKind::Configuration => {
                self.health.configuration_error(isolation.table, failure);
                (self.settings.configuration_retry, false)
            }
            ErrorKind::Statement => (backoff, true),
            ErrorKind::Transient | ErrorKind::Data => (backoff, false),
        };
        self.ledger.release_files(&self.owner, ids, &failure.to_string(), delay, unclassified).await
    }

    /// Makes the one row of `node` a warehouse reject of its batch.
    async fn reject_row(
        &self,
        isolation: &Isolation<'_>,
        node: &Node,
        error: &WarehouseError,
    ) -> Result<Flow, LedgerError> {
        let (batch, index) = match row_identity(&node.rows) {
            Ok(identity) => identity,
            Err(e) => {
                return self.fail(node.id, error, true, &format!("the refused row has no batch identity: {e}")).await
            }
        };
        let record = row_json(&node.rows, isolation.columns.as_deref());
        let column = error.column().and_then(|named| {
            let fields = node.rows.schema();
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
        Ok(self.recorded(self.ledger.complete_files(&self.owner, &[outcome]).await?))
    }
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

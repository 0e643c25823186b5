//! Accepted rows to Parquet, with snowgate's metadata columns.

use std::sync::Arc;

use arrow::array::{new_null_array, ArrayRef, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

pub use crate::ingest::rows::arrow_type;
use crate::ingest::rows::UTC;
use crate::ingest::Accepted;
use crate::schema::{TableSchema, META_BATCH_ID, META_INGESTED_AT, META_RECORD_INDEX};

/// Encoding failures; they mean a bug, never bad partner data (that was rejected earlier).
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("rows checked against {had} columns do not fit a file of {columns}")]
    TooManyColumns { had: usize, columns: usize },
}

/// Arrow schema of a stage file: the table's columns, then the metadata columns.
pub fn file_schema(schema: &TableSchema) -> SchemaRef {
    let mut fields: Vec<Field> =
        schema.columns.iter().map(|c| Field::new(c.name.as_str(), arrow_type(c.ty), true)).collect();
    fields.push(Field::new(META_BATCH_ID, DataType::Utf8, false));
    fields.push(Field::new(META_RECORD_INDEX, DataType::Int64, false));
    fields.push(Field::new(META_INGESTED_AT, DataType::Timestamp(TimeUnit::Microsecond, Some(UTC.into())), false));
    Arc::new(Schema::new(fields))
}

/// Rows of one batch inside a file.
pub struct RowGroup<'a> {
    pub batch_id: &'a str,
    /// `_INGESTED_AT`, microseconds since the epoch.
    pub ingested_at: i64,
    pub rows: &'a Accepted,
}

/// The record batch of one group in `file`, the file schema of `schema`. A group checked against
/// an older prefix of `schema` gets NULL in the columns added since; a column whose arrays are
/// not of the file's type is an error.
fn group_batch(file: &SchemaRef, schema: &TableSchema, group: &RowGroup<'_>) -> Result<RecordBatch, EncodeError> {
    let rows = group.rows.len();
    let columns = group.rows.columns();
    if columns.len() > schema.columns.len() {
        return Err(EncodeError::TooManyColumns { had: columns.len(), columns: schema.columns.len() });
    }
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(schema.columns.len() + 3);
    arrays.extend(columns.iter().cloned());
    for column in &schema.columns[columns.len()..] {
        arrays.push(new_null_array(&arrow_type(column.ty), rows));
    }
    arrays.push(Arc::new(StringArray::from_iter_values(std::iter::repeat_n(group.batch_id, rows))));
    arrays.push(group.rows.indexes().clone());
    arrays.push(Arc::new(TimestampMicrosecondArray::from_value(group.ingested_at, rows).with_timezone(UTC)));
    Ok(RecordBatch::try_new(file.clone(), arrays)?)
}

/// Bytes a row's metadata columns take while its group is written: `_BATCH_ID` (36 characters
/// and an offset), `_INGESTED_AT` and the validity of a NULL column added since.
pub const METADATA_BYTES_PER_ROW: usize = 48;

/// The Parquet file of `groups`, each group with its metadata columns; the metadata arrays of
/// one group at a time are in memory (see [`METADATA_BYTES_PER_ROW`]).
pub fn file_bytes(schema: &TableSchema, groups: &[RowGroup<'_>]) -> Result<Bytes, EncodeError> {
    write_file(schema, &file_schema(schema), groups, drop)
}

/// The Parquet file of `groups`, as [`file_bytes`], and its rows as one record batch of the file's
/// schema: the groups' batches concatenated, once the writer has closed and given back its pages;
/// a single group's batch as it is, sharing the request's arrays.
pub fn file_bytes_and_batch(
    schema: &TableSchema,
    groups: &[RowGroup<'_>],
) -> Result<(Bytes, RecordBatch), EncodeError> {
    let file = file_schema(schema);
    let mut written = Vec::with_capacity(groups.len());
    let bytes = write_file(schema, &file, groups, |batch| written.push(batch))?;
    Ok((bytes, arrow::compute::concat_batches(&file, &written)?))
}

/// Writes each group's batch into the file and hands it to `written`.
fn write_file(
    schema: &TableSchema,
    file: &SchemaRef,
    groups: &[RowGroup<'_>],
    mut written: impl FnMut(RecordBatch),
) -> Result<Bytes, EncodeError> {
    let memory: usize = groups.iter().map(|g| g.rows.memory_bytes()).sum();
    let mut out = Vec::with_capacity(memory / 2);
    let mut writer = ArrowWriter::try_new(&mut out, file.clone(), Some(writer_properties()))?;
    for group in groups {
        let batch = group_batch(file, schema, group)?;
        writer.write(&batch)?;
        written(batch);
    }
    writer.close()?;
    Ok(Bytes::from(out))
}

/// Encodes a record batch as one Parquet file, as stage files are written.
pub fn parquet_bytes(batch: &RecordBatch) -> Result<Bytes, EncodeError> {
    let mut out = Vec::with_capacity(batch.get_array_memory_size() / 2);
    let mut writer = ArrowWriter::try_new(&mut out, batch.schema(), Some(writer_properties()))?;
    writer.write(batch)?;
    writer.close()?;
    Ok(Bytes::from(out))
}

/// Snappy, one row group per 64k rows.
fn writer_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(65_536))
        .set_created_by(format!("snowgate {}", env!("CARGO_PKG_VERSION")))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::coerce::Cell;
    use crate::ingest::{Row, Rows};
    use crate::schema::ColumnName;
    use crate::schema::{Column, ColumnType};
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::Decimal128Type;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    #[test]
    fn rows_round_trip_through_parquet_with_metadata() {
        let old = TableSchema {
            name: "T".into(),
            columns: vec![Column {
                name: ColumnName::normalize("AMOUNT").unwrap(),
                ty: ColumnType::Number { precision: 12, scale: 2 },
                nullable: false,
            }],
        };
        let mut new = old.clone();
        new.columns.push(Column {
            name: ColumnName::normalize("NOTE").unwrap(),
            ty: ColumnType::VARCHAR,
            nullable: true,
        });
        let first = rows(&old, vec![Row { index: 0, cells: vec![Cell::Decimal(1250)] }]);
        let second = rows(&new, vec![Row { index: 3, cells: vec![Cell::Decimal(-5), Cell::Str("hi".into())] }]);
        let groups = [
            RowGroup { batch_id: "a", ingested_at: 1, rows: &first },
            RowGroup { batch_id: "b", ingested_at: 2, rows: &second },
        ];
        let bytes = file_bytes(&new, &groups).unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes).unwrap().build().unwrap();
        let read: Vec<RecordBatch> = reader.collect::<Result<_, _>>().unwrap();
        assert_eq!(read.len(), 1);
        let got = &read[0];
        assert_eq!(got.schema().field(0).data_type(), &DataType::Decimal128(12, 2));
        let amounts = got.column(0).as_primitive::<Decimal128Type>();
        assert_eq!((amounts.value(0), amounts.value(1)), (1250, -5));
        let notes = got.column(1).as_string::<i32>();
        assert!(notes.is_null(0));
        assert_eq!(notes.value(1), "hi");
        assert_eq!(
            got.column_by_name(META_RECORD_INDEX).unwrap().as_primitive::<arrow::datatypes::Int64Type>().value(1),
            3
        );
        assert_eq!(got.column_by_name(META_BATCH_ID).unwrap().as_string::<i32>().value(0), "a");
        assert_eq!(got.column_by_name(META_BATCH_ID).unwrap().as_string::<i32>().value(1), "b");
        let ingested = got.column_by_name(META_INGESTED_AT).unwrap();
        assert_eq!(ingested.as_primitive::<arrow::datatypes::TimestampMicrosecondType>().value(1), 2);
    }

    #[test]
    fn the_kept_batch_holds_what_the_file_decodes_to() {
        let col = |name: &str, ty| Column { name: ColumnName::normalize(name).unwrap(), ty, nullable: true };
        let old = TableSchema {
            name: "T".into(),
            columns: vec![col("AMOUNT", ColumnType::Number { precision: 12, scale: 2 })],
        };
        let mut new = old.clone();
        new.columns.push(col("NOTE", ColumnType::VARCHAR));
        new.columns.push(col("AT", ColumnType::TimestampTz));
        new.columns.push(col("PRICE", ColumnType::Number { precision: 38, scale: 4 }));
        let row = |index, cells| Row { index, cells };
        // A slice of a request checked against the older schema, then a group of the newer one.
        let first = rows(&old, (0..3).map(|i| row(i, vec![Cell::Decimal(i as i128 * 100)])).collect()).slice(1, 2);
        let second = rows(
            &new,
            vec![row(
                7,
                vec![Cell::Decimal(-5), Cell::Str("hi".into()), Cell::Timestamp(1_700_000_000_000_000), Cell::Null],
            )],
        );
        let groups = [
            RowGroup { batch_id: "a", ingested_at: 1, rows: &first },
            RowGroup { batch_id: "b", ingested_at: 2, rows: &second },
        ];
        for groups in [&groups[..1], &groups[1..], &groups[..]] {
            let (bytes, kept) = file_bytes_and_batch(&new, groups).unwrap();
            let reader = ParquetRecordBatchReaderBuilder::try_new(bytes).unwrap().build().unwrap();
            let read: Vec<RecordBatch> = reader.collect::<Result<_, _>>().unwrap();
            let decoded = arrow::compute::concat_batches(&read[0].schema(), &read).unwrap();
            assert_eq!(kept.schema().fields(), read[0].schema().fields(), "the types the file decodes to");
            assert_eq!(kept.num_rows(), groups.iter().map(|g| g.rows.len()).sum::<usize>());
            assert_eq!(kept.columns(), decoded.columns());
        }
    }

    #[test]
    fn rows_of_another_schema_are_an_error_not_a_panic() {
        let table = |ty| TableSchema {
            name: "T".into(),
            columns: vec![Column { name: ColumnName::normalize("B").unwrap(), ty, nullable: true }],
        };
        let text = rows(&table(ColumnType::VARCHAR), vec![Row { index: 0, cells: vec![Cell::Str("x".into())] }]);
        let group = RowGroup { batch_id: "a", ingested_at: 0, rows: &text };
        let err = file_bytes(&table(ColumnType::Boolean), std::slice::from_ref(&group)).unwrap_err();
        assert!(matches!(err, EncodeError::Arrow(_)), "{err}");
        let none = TableSchema { name: "T".into(), columns: Vec::new() };
        assert!(matches!(file_bytes(&none, &[group]), Err(EncodeError::TooManyColumns { had: 1, columns: 0 })));
    }

    fn rows(schema: &TableSchema, rows: Vec<Row>) -> Accepted {
        Rows::from_rows(Arc::new(schema.clone()), &rows).unwrap().finish().unwrap()
    }
}

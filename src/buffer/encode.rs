//! Validated rows to Arrow and Parquet, with snowgate's metadata columns.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder, Float64Builder, Int64Builder,
    StringBuilder, Time64MicrosecondBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use crate::ingest::coerce::Cell;
use crate::ingest::Row;
use crate::schema::{ColumnType, TableSchema, META_BATCH_ID, META_INGESTED_AT, META_RECORD_INDEX};

/// Encoding failures; they mean a bug, never bad partner data (that was rejected earlier).
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("cell {cell:?} does not fit column {column} of type {ty}")]
    CellMismatch { column: String, ty: ColumnType, cell: String },
}

const UTC: &str = "UTC";

/// The Arrow type snowgate writes for a column type.
pub fn arrow_type(ty: ColumnType) -> DataType {
    match ty {
        ColumnType::Number { precision, scale } => DataType::Decimal128(precision, scale as i8),
        ColumnType::Float => DataType::Float64,
        ColumnType::Varchar { .. } | ColumnType::Variant | ColumnType::Object | ColumnType::Array => DataType::Utf8,
        ColumnType::Boolean => DataType::Boolean,
        ColumnType::Date => DataType::Date32,
        ColumnType::Time => DataType::Time64(TimeUnit::Microsecond),
        ColumnType::TimestampNtz => DataType::Timestamp(TimeUnit::Microsecond, None),
        ColumnType::TimestampLtz | ColumnType::TimestampTz => {
            DataType::Timestamp(TimeUnit::Microsecond, Some(UTC.into()))
        }
        ColumnType::Binary => DataType::Binary,
    }
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
    pub rows: &'a [Row],
}

/// Builds one record batch from rows validated against `schema` or an older prefix of it.
pub fn record_batch(schema: &TableSchema, groups: &[RowGroup<'_>]) -> Result<RecordBatch, EncodeError> {
    let total: usize = groups.iter().map(|g| g.rows.len()).sum();
    let cells = || groups.iter().flat_map(|g| g.rows.iter());
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(schema.columns.len() + 3);
    for (i, column) in schema.columns.iter().enumerate() {
        let column_cells = cells().map(|row| row.cells.get(i).unwrap_or(&Cell::Null));
        arrays.push(column_array(column.ty, &column.name, total, column_cells)?);
    }
    let mut batch_ids = StringBuilder::with_capacity(total, total * 36);
    let mut indexes = Int64Builder::with_capacity(total);
    let mut ingested = TimestampMicrosecondBuilder::with_capacity(total).with_timezone(UTC);
    for group in groups {
        for row in group.rows {
            batch_ids.append_value(group.batch_id);
            indexes.append_value(row.index as i64);
            ingested.append_value(group.ingested_at);
        }
    }
    arrays.push(Arc::new(batch_ids.finish()));
    arrays.push(Arc::new(indexes.finish()));
    arrays.push(Arc::new(ingested.finish()));
    Ok(RecordBatch::try_new(file_schema(schema), arrays)?)
}

fn column_array<'c>(
    ty: ColumnType,
    name: &str,
    capacity: usize,
    cells: impl Iterator<Item = &'c Cell>,
) -> Result<ArrayRef, EncodeError> {
    let mismatch = |cell: &Cell| EncodeError::CellMismatch { column: name.to_string(), ty, cell: format!("{cell:?}") };
    macro_rules! build {
        ($builder:expr, $pattern:pat => $value:expr) => {{
            let mut builder = $builder;
            for cell in cells {
                match cell {
                    Cell::Null => builder.append_null(),
                    $pattern => builder.append_value($value),
                    other => return Err(mismatch(other)),
                }
            }
            Arc::new(builder.finish()) as ArrayRef
        }};
    }
    Ok(match ty {
        ColumnType::Number { precision, scale } => build!(
            Decimal128Builder::with_capacity(capacity).with_precision_and_scale(precision, scale as i8)?,
            Cell::Decimal(v) => *v
        ),
        ColumnType::Float => build!(Float64Builder::with_capacity(capacity), Cell::Float(v) => *v),
        ColumnType::Varchar { .. } | ColumnType::Variant | ColumnType::Object | ColumnType::Array => {
            build!(StringBuilder::with_capacity(capacity, capacity * 16), Cell::Str(v) => v)
        }
        ColumnType::Boolean => build!(BooleanBuilder::with_capacity(capacity), Cell::Bool(v) => *v),
        ColumnType::Date => build!(Date32Builder::with_capacity(capacity), Cell::Date(v) => *v),
        ColumnType::Time => build!(Time64MicrosecondBuilder::with_capacity(capacity), Cell::Time(v) => *v),
        ColumnType::TimestampNtz => {
            build!(TimestampMicrosecondBuilder::with_capacity(capacity), Cell::Timestamp(v) => *v)
        }
        ColumnType::TimestampLtz | ColumnType::TimestampTz => build!(
            TimestampMicrosecondBuilder::with_capacity(capacity).with_timezone(UTC),
            Cell::Timestamp(v) => *v
        ),
        ColumnType::Binary => build!(BinaryBuilder::with_capacity(capacity, capacity * 16), Cell::Binary(v) => v),
    })
}

/// Encodes a record batch as one Parquet file (Snappy, one row group per 64k rows).
pub fn parquet_bytes(batch: &RecordBatch) -> Result<Bytes, EncodeError> {
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(65_536))
        .set_created_by(format!("snowgate {}", env!("CARGO_PKG_VERSION")))
        .build();
    let mut out = Vec::with_capacity(batch.get_array_memory_size() / 2);
    let mut writer = ArrowWriter::try_new(&mut out, batch.schema(), Some(props))?;
    writer.write(batch)?;
    writer.close()?;
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::Column;
    use crate::schema::ColumnName;
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
        let first = vec![Row { index: 0, cells: vec![Cell::Decimal(1250)] }];
        let second = vec![Row { index: 3, cells: vec![Cell::Decimal(-5), Cell::Str("hi".into())] }];
        let groups = [
            RowGroup { batch_id: "a", ingested_at: 1, rows: &first },
            RowGroup { batch_id: "b", ingested_at: 2, rows: &second },
        ];
        let batch = record_batch(&new, &groups).unwrap();
        let bytes = parquet_bytes(&batch).unwrap();
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
    }

    #[test]
    fn mismatched_cells_are_an_error_not_a_panic() {
        let schema = TableSchema {
            name: "T".into(),
            columns: vec![Column {
                name: ColumnName::normalize("B").unwrap(),
                ty: ColumnType::Boolean,
                nullable: true,
            }],
        };
        let rows = vec![Row { index: 0, cells: vec![Cell::Str("x".into())] }];
        let err = record_batch(&schema, &[RowGroup { batch_id: "a", ingested_at: 0, rows: &rows }]).unwrap_err();
        assert!(matches!(err, EncodeError::CellMismatch { .. }));
    }
}

//! Accepted records in columns: a record's cells go straight into one Arrow builder per column,
//! so a request's rows are held as arrays from the moment they are checked (no row of cells is
//! kept, and text read as it was sent is copied once, into its column), and are written to
//! Parquet without another pass over them.

use std::sync::Arc;

use arrow::array::{
    ArrayBuilder, ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder, Float64Builder,
    Int64Array, StringBuilder, Time64MicrosecondBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;

use super::coerce::{Cell, CellRef};
use crate::schema::{ColumnType, TableSchema, META_RECORD_INDEX};

/// The zone of the timestamp types that hold an instant.
pub const UTC: &str = "UTC";

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

/// A cell as a builder takes it: everything borrowed, so a string read from the request's text
/// goes into its column without a copy of its own.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scalar<'a> {
    Null,
    Decimal(i128),
    Float(f64),
    Str(&'a str),
    Bool(bool),
    Date(i32),
    Time(i64),
    Timestamp(i64),
    Binary(&'a [u8]),
}

/// What a cell of a row is made of: an owned [`Cell`], or text borrowed from the request.
pub trait AsScalar {
    fn scalar(&self) -> Scalar<'_>;
}

impl AsScalar for Cell {
    fn scalar(&self) -> Scalar<'_> {
        match self {
            Cell::Null => Scalar::Null,
            Cell::Decimal(v) => Scalar::Decimal(*v),
            Cell::Float(v) => Scalar::Float(*v),
            Cell::Str(v) => Scalar::Str(v),
            Cell::Bool(v) => Scalar::Bool(*v),
            Cell::Date(v) => Scalar::Date(*v),
            Cell::Time(v) => Scalar::Time(*v),
            Cell::Timestamp(v) => Scalar::Timestamp(*v),
            Cell::Binary(v) => Scalar::Binary(v),
        }
    }
}

impl AsScalar for CellRef<'_> {
    fn scalar(&self) -> Scalar<'_> {
        match self {
            CellRef::Text(text) => Scalar::Str(text),
            CellRef::Cell(cell) => cell.scalar(),
        }
    }
}

impl AsScalar for Scalar<'_> {
    fn scalar(&self) -> Scalar<'_> {
        *self
    }
}

/// A row whose cell does not have its column's type: a bug in validation, never partner data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the cell for column {column} ({ty}) is {cell}")]
pub struct Mismatch {
    pub column: String,
    pub ty: ColumnType,
    pub cell: String,
}

/// Text bytes a string column reserves a row before it grows.
const TEXT_BYTES: usize = 8;

/// Bytes a row reserves up front in a schema of `columns` columns: 16 a column at most (a
/// decimal; a string's offset and [`TEXT_BYTES`] are less) and 8 for its index.
pub fn reserved_per_row(columns: usize) -> usize {
    8 + 16 * columns
}

enum Builder {
    Decimal(Decimal128Builder),
    Float(Float64Builder),
    Str(StringBuilder),
    Bool(BooleanBuilder),
    Date(Date32Builder),
    Time(Time64MicrosecondBuilder),
    Timestamp(TimestampMicrosecondBuilder),
    Binary(BinaryBuilder),
}

impl Builder {
    fn new(ty: ColumnType, rows: usize) -> Self {
        match ty {
            ColumnType::Number { .. } => Builder::Decimal(Decimal128Builder::with_capacity(rows)),
            ColumnType::Float => Builder::Float(Float64Builder::with_capacity(rows)),
            ColumnType::Varchar { .. } | ColumnType::Variant | ColumnType::Object | ColumnType::Array => {
                Builder::Str(StringBuilder::with_capacity(rows, rows * TEXT_BYTES))
            }
            ColumnType::Boolean => Builder::Bool(BooleanBuilder::with_capacity(rows)),
            ColumnType::Date => Builder::Date(Date32Builder::with_capacity(rows)),
            ColumnType::Time => Builder::Time(Time64MicrosecondBuilder::with_capacity(rows)),
            ColumnType::TimestampNtz | ColumnType::TimestampLtz | ColumnType::TimestampTz => {
                Builder::Timestamp(TimestampMicrosecondBuilder::with_capacity(rows))
            }
            ColumnType::Binary => Builder::Binary(BinaryBuilder::with_capacity(rows, rows * TEXT_BYTES)),
        }
    }

    fn takes(&self, cell: Scalar<'_>) -> bool {
        matches!(
            (self, cell),
            (_, Scalar::Null)
                | (Builder::Decimal(_), Scalar::Decimal(_))
                | (Builder::Float(_), Scalar::Float(_))
                | (Builder::Str(_), Scalar::Str(_))
                | (Builder::Bool(_), Scalar::Bool(_))
                | (Builder::Date(_), Scalar::Date(_))
                | (Builder::Time(_), Scalar::Time(_))
                | (Builder::Timestamp(_), Scalar::Timestamp(_))
                | (Builder::Binary(_), Scalar::Binary(_))
        )
    }

    /// Appends a cell [`Builder::takes`] said yes to.
    fn append(&mut self, cell: Scalar<'_>) {
        match (self, cell) {
            (Builder::Decimal(b), Scalar::Decimal(v)) => b.append_value(v),
            (Builder::Float(b), Scalar::Float(v)) => b.append_value(v),
            (Builder::Str(b), Scalar::Str(v)) => b.append_value(v),
            (Builder::Bool(b), Scalar::Bool(v)) => b.append_value(v),
            (Builder::Date(b), Scalar::Date(v)) => b.append_value(v),
            (Builder::Time(b), Scalar::Time(v)) => b.append_value(v),
            (Builder::Timestamp(b), Scalar::Timestamp(v)) => b.append_value(v),
            (Builder::Binary(b), Scalar::Binary(v)) => b.append_value(v),
            (builder, _) => builder.append_null(),
        }
    }

    fn append_null(&mut self) {
        match self {
            Builder::Decimal(b) => b.append_null(),
            Builder::Float(b) => b.append_null(),
            Builder::Str(b) => b.append_null(),
            Builder::Bool(b) => b.append_null(),
            Builder::Date(b) => b.append_null(),
            Builder::Time(b) => b.append_null(),
            Builder::Timestamp(b) => b.append_null(),
            Builder::Binary(b) => b.append_null(),
        }
    }

    fn finish(self, ty: ColumnType) -> Result<ArrayRef, ArrowError> {
        Ok(match self {
            Builder::Decimal(mut b) => match ty {
                ColumnType::Number { precision, scale } => {
                    Arc::new(b.finish().with_precision_and_scale(precision, scale as i8)?)
                }
                _ => Arc::new(b.finish()),
            },
            Builder::Float(mut b) => Arc::new(b.finish()),
            Builder::Str(mut b) => Arc::new(b.finish()),
            Builder::Bool(mut b) => Arc::new(b.finish()),
            Builder::Date(mut b) => Arc::new(b.finish()),
            Builder::Time(mut b) => Arc::new(b.finish()),
            Builder::Timestamp(mut b) => match ty {
                ColumnType::TimestampNtz => Arc::new(b.finish()),
                _ => Arc::new(b.finish().with_timezone(UTC)),
            },
            Builder::Binary(mut b) => Arc::new(b.finish()),
        })
    }

    fn len(&self) -> usize {
        match self {
            Builder::Decimal(b) => b.len(),
            Builder::Float(b) => b.len(),
            Builder::Str(b) => b.len(),
            Builder::Bool(b) => b.len(),
            Builder::Date(b) => b.len(),
            Builder::Time(b) => b.len(),
            Builder::Timestamp(b) => b.len(),
            Builder::Binary(b) => b.len(),
        }
    }
}

/// One accepted record with owned cells, in schema order (for rows made outside a request).
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub index: u64,
    pub cells: Vec<Cell>,
}

/// The accepted rows of one request as they are checked: a builder per column of the schema
/// they were checked against, and the index of each row's record in the request.
pub struct Rows {
    schema: Arc<TableSchema>,
    builders: Vec<Builder>,
    indexes: Vec<u64>,
}

impl Rows {
    /// Room for `rows` rows before the builders grow ([`reserved_per_row`] bytes each).
    pub fn new(schema: Arc<TableSchema>, rows: usize) -> Self {
        let builders = schema.columns.iter().map(|c| Builder::new(c.ty, rows)).collect();
        Rows { schema, builders, indexes: Vec::with_capacity(rows) }
    }

    /// Rows made of owned cells (tests, tools).
    pub fn from_rows(schema: Arc<TableSchema>, rows: &[Row]) -> Result<Self, Mismatch> {
        let mut out = Rows::new(schema, rows.len());
        for row in rows {
            out.push(row.index, &row.cells)?;
        }
        Ok(out)
    }

    pub fn schema(&self) -> &Arc<TableSchema> {
        &self.schema
    }

    pub fn len(&self) -> usize {
        self.indexes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.indexes.is_empty()
    }

    /// Rows there is room for before the builders' fixed-width buffers grow (text buffers may
    /// grow sooner, with the length of their values).
    pub fn capacity(&self) -> usize {
        self.indexes.capacity()
    }

    /// Appends one row: its cells in schema order, missing trailing cells NULL. Every cell is
    /// checked against its column before any is appended, so a row is taken whole or not at all.
    pub fn push<C: AsScalar>(&mut self, index: u64, cells: &[C]) -> Result<(), Mismatch> {
        if cells.len() > self.builders.len() {
            return Err(Mismatch {
                column: format!("#{}", self.builders.len() + 1),
                ty: ColumnType::VARCHAR,
                cell: format!("one of {} cells for {} columns", cells.len(), self.builders.len()),
            });
        }
        for (i, (builder, cell)) in self.builders.iter().zip(cells).enumerate() {
            let cell = cell.scalar();
            if !builder.takes(cell) {
                let column = &self.schema.columns[i];
                return Err(Mismatch { column: column.name.to_string(), ty: column.ty, cell: format!("{cell:?}") });
            }
        }
        for (builder, cell) in self.builders.iter_mut().zip(cells) {
            builder.append(cell.scalar());
        }
        for builder in &mut self.builders[cells.len()..] {
            builder.append_null();
        }
        self.indexes.push(index);
        debug_assert!(self.builders.iter().all(|b| b.len() == self.indexes.len()));
        Ok(())
    }

    /// The index of each row's record, in row order, for a replay to map back to the batch it
    /// corrects.
    pub fn indexes_mut(&mut self) -> &mut [u64] {
        &mut self.indexes
    }

    /// The rows as arrays: the schema's columns, then [`META_RECORD_INDEX`].
    pub fn finish(self) -> Result<Accepted, ArrowError> {
        let Rows { schema, builders, indexes } = self;
        let mut arrays = Vec::with_capacity(builders.len() + 1);
        for (builder, column) in builders.into_iter().zip(&schema.columns) {
            arrays.push(builder.finish(column.ty)?);
        }
        arrays.push(Arc::new(Int64Array::from_iter_values(indexes.into_iter().map(|i| i as i64))) as ArrayRef);
        let batch = RecordBatch::try_new(rows_schema(&schema), arrays)?;
        let bytes = batch.get_array_memory_size();
        Ok(Accepted { schema, batch, bytes })
    }
}

/// The Arrow schema of a request's accepted rows: the table's columns, then the record index.
fn rows_schema(schema: &TableSchema) -> SchemaRef {
    let mut fields: Vec<Field> =
        schema.columns.iter().map(|c| Field::new(c.name.as_str(), arrow_type(c.ty), true)).collect();
    fields.push(Field::new(META_RECORD_INDEX, DataType::Int64, false));
    Arc::new(Schema::new(fields))
}

/// A request's accepted rows, finished: one array per column of `schema`, then the index of
/// each row's record in the request. Cheap to clone and slice (the arrays are shared).
#[derive(Debug, Clone)]
pub struct Accepted {
    schema: Arc<TableSchema>,
    batch: RecordBatch,
    /// Memory of these rows: the arrays' whole capacity, or a slice's share of it by rows.
    bytes: usize,
}

impl Accepted {
    /// The schema the rows were checked against.
    pub fn schema(&self) -> &Arc<TableSchema> {
        &self.schema
    }

    pub fn len(&self) -> usize {
        self.batch.num_rows()
    }

    pub fn is_empty(&self) -> bool {
        self.batch.num_rows() == 0
    }

    /// The arrays of the schema's columns, in order.
    pub fn columns(&self) -> &[ArrayRef] {
        let columns = self.batch.columns();
        &columns[..columns.len() - 1]
    }

    /// The index of each row's record in its request.
    pub fn indexes(&self) -> &ArrayRef {
        let columns = self.batch.columns();
        &columns[columns.len() - 1]
    }

    /// Memory the rows hold, for the memory budget and the flush policy: the capacity of the
    /// arrays they were finished with, and of a slice its share by rows (slices share buffers).
    pub fn memory_bytes(&self) -> usize {
        self.bytes
    }

    /// `len` rows from `offset`, sharing the arrays. Panics if they are not all within.
    pub fn slice(&self, offset: usize, len: usize) -> Accepted {
        let share = self.bytes.checked_div(self.len()).unwrap_or(0).saturating_mul(len);
        Accepted { schema: self.schema.clone(), batch: self.batch.slice(offset, len), bytes: share }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{Column, ColumnName};
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Decimal128Type, Int64Type};

    fn schema() -> Arc<TableSchema> {
        let col = |name: &str, ty| Column { name: ColumnName::normalize(name).unwrap(), ty, nullable: true };
        Arc::new(TableSchema {
            name: "T".into(),
            columns: vec![
                col("AMOUNT", ColumnType::Number { precision: 12, scale: 2 }),
                col("NOTE", ColumnType::VARCHAR),
                col("AT", ColumnType::TimestampTz),
            ],
        })
    }

    #[test]
    fn rows_become_typed_arrays_with_their_indexes() {
        let mut rows = Rows::new(schema(), 1);
        rows.push(4, &[Scalar::Decimal(1250), Scalar::Str("hi"), Scalar::Timestamp(7)]).unwrap();
        rows.push(9, &[Cell::Null, Cell::Str("there".into())]).unwrap();
        let accepted = rows.finish().unwrap();
        assert_eq!(accepted.len(), 2);
        let amounts = accepted.columns()[0].as_primitive::<Decimal128Type>();
        assert_eq!(amounts.data_type(), &DataType::Decimal128(12, 2));
        assert_eq!(amounts.value(0), 1250);
        assert!(amounts.is_null(1));
        assert_eq!(accepted.columns()[1].as_string::<i32>().value(1), "there");
        assert_eq!(accepted.columns()[2].data_type(), &arrow_type(ColumnType::TimestampTz));
        assert!(accepted.columns()[2].is_null(1), "a missing trailing cell is NULL");
        let indexes = accepted.indexes().as_primitive::<Int64Type>();
        assert_eq!((indexes.value(0), indexes.value(1)), (4, 9));
        let tail = accepted.slice(1, 1);
        assert_eq!(tail.columns()[1].as_string::<i32>().value(0), "there");
        assert_eq!(tail.len(), 1);
        assert!(accepted.memory_bytes() > 0);
        assert_eq!(tail.memory_bytes(), accepted.memory_bytes() / 2, "a slice counts its share");
    }

    #[test]
    fn a_row_with_a_cell_of_the_wrong_type_is_refused_whole() {
        let mut rows = Rows::new(schema(), 1);
        let err = rows.push(0, &[Scalar::Decimal(1), Scalar::Bool(true)]).unwrap_err();
        assert_eq!(err.column, "NOTE");
        assert!(rows.push(0, &[Cell::Null, Cell::Null, Cell::Null, Cell::Null]).is_err(), "more cells than columns");
        assert_eq!(rows.len(), 0);
        rows.push(1, &[Scalar::Decimal(2)]).unwrap();
        let accepted = rows.finish().unwrap();
        assert_eq!(accepted.len(), 1, "nothing of the refused rows was appended");
        assert_eq!(accepted.columns()[0].as_primitive::<Decimal128Type>().value(0), 2);
    }

    /// The default `flush_at_bytes` is meant to be reached by many small requests arriving
    /// together, not only by one large one: of 100 clients posting 100 loan records each, about
    /// half are in the open segment at a time (the others are being answered or decoded), and
    /// those must fill it, or every request waits out the linger. That cost scenario 2 of the
    /// benchmarks two thirds of its throughput at 2 and 4 MiB, once rows were counted as arrays.
    /// Records shaped like the load generator's, in builders sized as a 100-line body sizes them.
    #[test]
    fn a_hundred_small_loan_requests_fill_the_default_flush_size() {
        use crate::config::TableSettings;
        let col = |name: &str, ty| Column { name: ColumnName::normalize(name).unwrap(), ty, nullable: true };
        let money = ColumnType::Number { precision: 12, scale: 2 };
        let text = ColumnType::VARCHAR;
        let schema = Arc::new(TableSchema {
            name: "LOANS".into(),
            columns: vec![
                col("ID", ColumnType::INTEGER),
                col("PARTNER_ID", text),
                col("BORROWER_ID", text),
                col("LOAN_TYPE", text),
                col("AMOUNT", money),
                col("CURRENCY", text),
                col("INTEREST_RATE", ColumnType::Number { precision: 5, scale: 2 }),
                col("TENURE_MONTHS", ColumnType::INTEGER),
                col("STATUS", text),
                col("IS_FIRST_LOAN", ColumnType::Boolean),
                col("CITY", text),
                col("CREATED_AT", ColumnType::TimestampTz),
                col("DISBURSED_ON", ColumnType::Date),
                col("EMI", money),
            ],
        });
        let mut rows = Rows::new(schema, 100);
        for i in 0..100 {
            let partner = format!("partner-{:03}", i % 100);
            let borrower = format!("b-{:010}", i * 7_919);
            let cells = [
                Scalar::Decimal(i),
                Scalar::Str(&partner),
                Scalar::Str(&borrower),
                Scalar::Str(["personal", "business", "education"][i as usize % 3]),
                Scalar::Decimal(5_123_456),
                Scalar::Str("INR"),
                Scalar::Decimal(1_250),
                Scalar::Decimal(36),
                Scalar::Str(["disbursed", "approved", "closed"][i as usize % 3]),
                Scalar::Bool(i % 2 == 0),
                Scalar::Str(["Bengaluru", "Mumbai", "Delhi"][i as usize % 3]),
                Scalar::Timestamp(1_795_000_000_000_000),
                Scalar::Date(20_400),
                Scalar::Decimal(234_567),
            ];
            rows.push(i as u64, &cells).unwrap();
        }
        let request = rows.finish().unwrap().memory_bytes();
        let flush_at = TableSettings::default().flush_at_bytes;
        println!("100 loan records: {request} bytes, {} a record", request / 100);
        assert!(50 * request >= flush_at, "50 requests of {request} bytes do not reach flush_at_bytes ({flush_at})");
    }
}

//! Converts one JSON value into a typed cell for one warehouse column.
//!
//! Only safe coercions are made: a value is accepted when its meaning for the column is unambiguous,
//! and every refusal carries a [`RejectCode`] and a short message naming the value and the type.
//! This runs for every field of every record, so the happy paths avoid heap allocations where
//! the cell itself does not need one.

mod number;
mod time;

use std::fmt;

use serde_json::Value;

use crate::ingest::reject::RejectCode;
use crate::schema::ColumnType;
use number::{coerce_float, coerce_number};
use time::{coerce_date, coerce_time, coerce_timestamp};

/// A typed value ready for an Arrow builder.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    /// Unscaled value at the column's scale (NUMBER(p,s)): 12.34 in NUMBER(12,2) is 1234.
    Decimal(i128),
    Float(f64),
    /// VARCHAR text, and VARIANT/OBJECT/ARRAY as compact JSON text.
    Str(String),
    Bool(bool),
    /// Days since 1970-01-01.
    Date(i32),
    /// Microseconds since midnight.
    Time(i64),
    /// Microseconds since the Unix epoch: wall clock for TIMESTAMP_NTZ, UTC instant for LTZ/TZ.
    Timestamp(i64),
    Binary(Vec<u8>),
}

/// Why a value cannot be stored in its column.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct CoerceError {
    pub code: RejectCode,
    pub message: String,
}

impl CoerceError {
    fn new(code: RejectCode, message: String) -> Self {
        Self { code, message }
    }
}

/// A JSON value as the scalar coercions see it: a scalar borrowed from where it was read (a
/// number as its text, exactly as sent), or only the kind of a container.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ValueRef<'a> {
    Null,
    Bool(bool),
    Number(&'a str),
    String(&'a str),
    Array,
    Object,
}

impl<'a> From<&'a Value> for ValueRef<'a> {
    fn from(value: &'a Value) -> Self {
        match value {
            Value::Null => ValueRef::Null,
            Value::Bool(b) => ValueRef::Bool(*b),
            Value::Number(n) => ValueRef::Number(n.as_str()),
            Value::String(s) => ValueRef::String(s),
            Value::Array(_) => ValueRef::Array,
            Value::Object(_) => ValueRef::Object,
        }
    }
}

/// Converts a non-null JSON value for a column of type `ty`. `max_depth` bounds nesting of VARIANT/OBJECT/ARRAY values.
pub fn coerce(value: &Value, ty: ColumnType, max_depth: usize) -> Result<Cell, CoerceError> {
    if ty.is_semi_structured() && !value.is_null() {
        return coerce_semi(value, ty, max_depth);
    }
    coerce_scalar(value.into(), ty)
}

/// [`coerce`] for a column of a scalar type, from a value that need not be parsed into a
/// [`Value`]: the same cell, or the same error. A VARIANT, OBJECT or ARRAY column needs the
/// whole value ([`coerce`]) and refuses here.
pub fn coerce_scalar(value: ValueRef<'_>, ty: ColumnType) -> Result<Cell, CoerceError> {
    match ty {
        _ if value == ValueRef::Null => Ok(Cell::Null),
        ColumnType::Number { precision, scale } => coerce_number(value, ty, precision, scale),
        ColumnType::Float => coerce_float(value, ty),
        ColumnType::Varchar { max_len } => coerce_varchar(value, ty, max_len),
        ColumnType::Boolean => coerce_bool(value, ty),
        ColumnType::Date => coerce_date(value, ty),
        ColumnType::Time => coerce_time(value, ty),
        ColumnType::TimestampNtz => coerce_timestamp(value, ty, false),
        ColumnType::TimestampLtz | ColumnType::TimestampTz => coerce_timestamp(value, ty, true),
        ColumnType::Variant | ColumnType::Object | ColumnType::Array => Err(mismatch(value, ty)),
        ColumnType::Binary => coerce_binary(value, ty),
    }
}

/// How many characters of the input an error message quotes.
const QUOTE_CHARS: usize = 40;

/// Names a value in an error message: its JSON type and, for scalars, a truncated rendering.
struct Brief<'a>(ValueRef<'a>);

impl fmt::Display for Brief<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            ValueRef::Null => f.write_str("null"),
            ValueRef::Bool(b) => write!(f, "boolean {b}"),
            // Numbers keep the digits they were sent with, so they can be long: truncated too.
            ValueRef::Number(text) => {
                let (head, cut) = truncate(text);
                write!(f, "number {head}{}", if cut { "…" } else { "" })
            }
            ValueRef::String(s) => {
                let (head, cut) = truncate(s);
                write!(f, "string {head:?}{}", if cut { "…" } else { "" })
            }
            ValueRef::Array => f.write_str("array"),
            ValueRef::Object => f.write_str("object"),
        }
    }
}

/// Cuts `text` to [`QUOTE_CHARS`] characters, on a char boundary; true when something was cut.
fn truncate(text: &str) -> (&str, bool) {
    match text.char_indices().nth(QUOTE_CHARS) {
        Some((end, _)) => (text.get(..end).unwrap_or(text), true),
        None => (text, false),
    }
}

fn mismatch(value: ValueRef<'_>, ty: ColumnType) -> CoerceError {
    CoerceError::new(RejectCode::TypeMismatch, format!("expected {ty}, got {}", Brief(value)))
}

fn coerce_varchar(value: ValueRef<'_>, ty: ColumnType, max_len: u32) -> Result<Cell, CoerceError> {
    varchar_text(value, ty, max_len).map(|text| Cell::Str(text.to_owned()))
}

/// The text a value stores in a VARCHAR column, borrowed from the value.
fn varchar_text<'t>(value: ValueRef<'t>, ty: ColumnType, max_len: u32) -> Result<&'t str, CoerceError> {
    let text = match value {
        ValueRef::String(s) | ValueRef::Number(s) => s,
        ValueRef::Bool(true) => "true",
        ValueRef::Bool(false) => "false",
        _ => return Err(mismatch(value, ty)),
    };
    let max = usize::try_from(max_len).unwrap_or(usize::MAX);
    // The byte length bounds the char count from above, so most values skip counting.
    if text.len() > max {
        let chars = text.chars().count();
        if chars > max {
            return Err(CoerceError::new(
                RejectCode::TooLong,
                format!("{} has {chars} characters, more than the {max_len} allowed by {ty}", Brief(value)),
            ));
        }
    }
    Ok(text)
}

/// A cell read from a record's text: VARCHAR text borrowed from it, anything else owned.
#[derive(Debug, Clone, PartialEq)]
pub enum CellRef<'t> {
    Text(&'t str),
    Cell(Cell),
}

/// [`coerce_scalar`] that borrows VARCHAR text from `value` instead of copying it: the same
/// cell, or the same error.
pub fn coerce_scalar_ref(value: ValueRef<'_>, ty: ColumnType) -> Result<CellRef<'_>, CoerceError> {
    match ty {
        ColumnType::Varchar { max_len } if value != ValueRef::Null => {
            varchar_text(value, ty, max_len).map(CellRef::Text)
        }
        _ => coerce_scalar(value, ty).map(CellRef::Cell),
    }
}

const TRUE_WORDS: [&str; 6] = ["true", "t", "yes", "y", "on", "1"];
const FALSE_WORDS: [&str; 6] = ["false", "f", "no", "n", "off", "0"];

fn coerce_bool(value: ValueRef<'_>, ty: ColumnType) -> Result<Cell, CoerceError> {
    let parsed = match value {
        ValueRef::Bool(b) => Some(b),
        ValueRef::Number(text) => match text.parse::<u64>() {
            Ok(0) => Some(false),
            Ok(1) => Some(true),
            _ => None,
        },
        ValueRef::String(s) => {
            let word = s.trim();
            let is = |words: &[&str]| words.iter().any(|w| w.eq_ignore_ascii_case(word));
            is(&TRUE_WORDS).then_some(true).or_else(|| is(&FALSE_WORDS).then_some(false))
        }
        _ => None,
    };
    parsed.map(Cell::Bool).ok_or_else(|| mismatch(value, ty))
}

fn coerce_semi(value: &Value, ty: ColumnType, max_depth: usize) -> Result<Cell, CoerceError> {
    let shape_ok = match ty {
        ColumnType::Object => value.is_object(),
        ColumnType::Array => value.is_array(),
        _ => true,
    };
    if !shape_ok {
        return Err(mismatch(value.into(), ty));
    }
    if nests_deeper_than(value, max_depth) {
        return Err(CoerceError::new(
            RejectCode::RecordTooLarge,
            format!("value nests deeper than {max_depth} levels"),
        ));
    }
    serde_json::to_string(value)
        .map(Cell::Str)
        .map_err(|e| CoerceError::new(RejectCode::TypeMismatch, format!("cannot serialize {ty} value: {e}")))
}

/// The children of one container being walked.
enum Children<'a> {
    Array(std::slice::Iter<'a, Value>),
    Object(serde_json::map::Values<'a>),
}

impl<'a> Children<'a> {
    fn of(value: &'a Value) -> Option<Self> {
        match value {
            Value::Array(items) => Some(Children::Array(items.iter())),
            Value::Object(map) => Some(Children::Object(map.values())),
            _ => None,
        }
    }

    fn next(&mut self) -> Option<&'a Value> {
        match self {
            Children::Array(iter) => iter.next(),
            Children::Object(iter) => iter.next(),
        }
    }
}

/// Depth-first walk with an explicit stack that stops at `max_depth + 1` levels, so neither a
/// deep value nor a large limit can overflow the call stack or grow the walk beyond the limit.
fn nests_deeper_than(value: &Value, max_depth: usize) -> bool {
    let Some(root) = Children::of(value) else {
        return false;
    };
    if max_depth == 0 {
        return true;
    }
    let mut stack = vec![root];
    while let Some(top) = stack.last_mut() {
        match top.next() {
            None => {
                stack.pop();
            }
            Some(child) => {
                if let Some(children) = Children::of(child) {
                    if stack.len() >= max_depth {
                        return true;
                    }
                    stack.push(children);
                }
            }
        }
    }
    false
}

fn coerce_binary(value: ValueRef<'_>, ty: ColumnType) -> Result<Cell, CoerceError> {
    let invalid =
        || CoerceError::new(RejectCode::TypeMismatch, format!("expected {ty} as hex digits, got {}", Brief(value)));
    let ValueRef::String(s) = value else {
        return Err(invalid());
    };
    let hex = s.trim().as_bytes();
    if hex.len() % 2 != 0 {
        return Err(invalid());
    }
    hex.chunks_exact(2)
        .map(|pair| match pair {
            [high, low] => Some(hex_value(*high)? << 4 | hex_value(*low)?),
            _ => None,
        })
        .collect::<Option<Vec<u8>>>()
        .map(Cell::Binary)
        .ok_or_else(invalid)
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    pub(super) const INT: ColumnType = ColumnType::INTEGER;

    /// Parses JSON text, so numbers keep exactly the form a partner sent.
    fn v(json: &str) -> Value {
        serde_json::from_str(json).expect("test JSON")
    }

    pub(super) fn ok(json: &str, ty: ColumnType) -> Cell {
        coerce(&v(json), ty, 8).unwrap_or_else(|e| panic!("{json} as {ty}: {e}"))
    }

    pub(super) fn err(json: &str, ty: ColumnType) -> CoerceError {
        match coerce(&v(json), ty, 8) {
            Ok(cell) => panic!("{json} as {ty} should fail, got {cell:?}"),
            Err(e) => e,
        }
    }

    pub(super) fn code(json: &str, ty: ColumnType) -> RejectCode {
        err(json, ty).code
    }

    pub(super) fn quote(text: &str) -> String {
        Value::from(text).to_string()
    }

    #[test]
    fn null_is_null() {
        assert_eq!(coerce(&Value::Null, INT, 8), Ok(Cell::Null));
    }

    #[test]
    fn messages_truncate_long_multibyte_input() {
        let e = err(&format!("\"{}\"", "é".repeat(100)), INT);
        assert_eq!(e.message, format!("expected NUMBER(38,0), got string \"{}\"…", "é".repeat(40)));
        assert_eq!(err("\"a\\\"b\"", INT).message, "expected NUMBER(38,0), got string \"a\\\"b\"");
    }

    #[test]
    fn varchar_counts_characters() {
        let ty = ColumnType::Varchar { max_len: 5 };
        assert_eq!(ok("\"héllo\"", ty), Cell::Str("héllo".into()));
        assert_eq!(ok("12.5", ty), Cell::Str("12.5".into()));
        assert_eq!(ok("true", ty), Cell::Str("true".into()));
        assert_eq!(ok("\" a \"", ty), Cell::Str(" a ".into()));
        let e = err("\"héllo!\"", ty);
        assert_eq!(e.code, RejectCode::TooLong);
        assert_eq!(e.message, "string \"héllo!\" has 6 characters, more than the 5 allowed by VARCHAR(5)");
        assert_eq!(code("123456", ty), RejectCode::TooLong);
        assert_eq!(code("{\"a\":1}", ty), RejectCode::TypeMismatch);
        assert_eq!(code("[]", ColumnType::VARCHAR), RejectCode::TypeMismatch);
    }

    #[test]
    fn boolean_accepts_common_spellings() {
        for yes in ["true", "1", "\"TRUE\"", "\" t \"", "\"Yes\"", "\"y\"", "\"ON\"", "\"1\""] {
            assert_eq!(ok(yes, ColumnType::Boolean), Cell::Bool(true), "{yes}");
        }
        for no in ["false", "0", "\"False\"", "\"F\"", "\"no\"", "\"N\"", "\"off\"", "\"0\""] {
            assert_eq!(ok(no, ColumnType::Boolean), Cell::Bool(false), "{no}");
        }
        for bad in ["2", "-1", "1.0", "\"maybe\"", "\"\"", "\"10\"", "[]", "{}"] {
            assert_eq!(code(bad, ColumnType::Boolean), RejectCode::TypeMismatch, "{bad}");
        }
    }

    #[test]
    fn semi_structured_values_become_compact_json() {
        assert_eq!(ok("{ \"a\" : [1, 2.5, null] }", ColumnType::Variant), Cell::Str("{\"a\":[1,2.5,null]}".into()));
        assert_eq!(ok("\"x\"", ColumnType::Variant), Cell::Str("\"x\"".into()));
        assert_eq!(ok("42", ColumnType::Variant), Cell::Str("42".into()));
        assert_eq!(ok("{}", ColumnType::Object), Cell::Str("{}".into()));
        assert_eq!(ok("[true]", ColumnType::Array), Cell::Str("[true]".into()));
        assert_eq!(code("[]", ColumnType::Object), RejectCode::TypeMismatch);
        assert_eq!(code("{}", ColumnType::Array), RejectCode::TypeMismatch);
        assert_eq!(code("\"[1]\"", ColumnType::Array), RejectCode::TypeMismatch);
    }

    #[test]
    fn semi_structured_depth_is_bounded() {
        let depth = |value: &Value, max| coerce(value, ColumnType::Variant, max);
        assert!(depth(&json!(1), 0).is_ok());
        assert!(depth(&json!({"a": 1}), 1).is_ok());
        assert!(depth(&json!({"a": 1}), 0).is_err());
        assert!(depth(&json!([[1]]), 2).is_ok());
        assert!(depth(&json!([1, [2], {"b": [3]}]), 3).is_ok());
        let e = depth(&json!([1, [2], {"b": [3]}]), 2).unwrap_err();
        assert_eq!((e.code, e.message.as_str()), (RejectCode::RecordTooLarge, "value nests deeper than 2 levels"));
        let mut deep = json!(0);
        for _ in 0..1_000 {
            deep = json!([deep]);
        }
        assert!(depth(&deep, 1_000).is_ok());
        assert_eq!(depth(&deep, 999).unwrap_err().code, RejectCode::RecordTooLarge);
        assert_eq!(depth(&deep, usize::MAX).map(|_| ()), Ok(()));
    }

    #[test]
    fn binary_takes_hex() {
        let b = ColumnType::Binary;
        assert_eq!(ok("\"DEADbeef\"", b), Cell::Binary(vec![0xde, 0xad, 0xbe, 0xef]));
        assert_eq!(ok("\"00ff\"", b), Cell::Binary(vec![0, 255]));
        assert_eq!(ok("\"\"", b), Cell::Binary(vec![]));
        let e = err("\"abc\"", b);
        assert_eq!(
            (e.code, e.message.as_str()),
            (RejectCode::TypeMismatch, "expected BINARY as hex digits, got string \"abc\"")
        );
        for bad in ["\"zz\"", "\"0x00\"", "\"éé\"", "12", "true", "[]"] {
            assert_eq!(code(bad, b), RejectCode::TypeMismatch, "{bad}");
        }
    }
}

//! Table schemas as snowgate sees them: column types, identifier rules, metadata columns.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Metadata columns written with every row; partners can never set them.
pub const META_BATCH_ID: &str = "_BATCH_ID";
pub const META_RECORD_INDEX: &str = "_RECORD_INDEX";
pub const META_INGESTED_AT: &str = "_INGESTED_AT";
pub const META_COLUMNS: [&str; 3] = [META_BATCH_ID, META_RECORD_INDEX, META_INGESTED_AT];
/// The VARIANT column where the `rescue` policy keeps what did not fit: `{field: value as sent}`.
pub const RESCUED_DATA: &str = "_RESCUED_DATA";

/// Longest identifier accepted (Snowflake allows 255 characters).
pub const MAX_IDENTIFIER_LEN: usize = 255;
/// Snowflake's VARCHAR default and maximum length in characters.
pub const MAX_VARCHAR_LEN: u32 = 16_777_216;

/// A warehouse column type, in Snowflake's vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ColumnType {
    Number { precision: u8, scale: u8 },
    Float,
    Varchar { max_len: u32 },
    Boolean,
    Date,
    Time,
    TimestampNtz,
    TimestampLtz,
    TimestampTz,
    Variant,
    Object,
    Array,
    Binary,
}

impl ColumnType {
    pub const INTEGER: ColumnType = ColumnType::Number { precision: 38, scale: 0 };
    pub const VARCHAR: ColumnType = ColumnType::Varchar { max_len: MAX_VARCHAR_LEN };

    /// Whether a column of this type can become `to` in place, keeping every value it holds: a
    /// longer VARCHAR with a length still given (a bare VARCHAR would drop the check, not widen
    /// it), or a NUMBER with more digits and the same scale (what Snowflake's
    /// `ALTER COLUMN ... SET DATA TYPE` allows).
    pub fn widens_to(self, to: ColumnType) -> bool {
        match (self, to) {
            (ColumnType::Varchar { max_len: from }, ColumnType::Varchar { max_len: to }) => {
                to > from && to < MAX_VARCHAR_LEN
            }
            (ColumnType::Number { precision: p1, scale: s1 }, ColumnType::Number { precision: p2, scale: s2 }) => {
                s1 == s2 && p2 > p1
            }
            _ => false,
        }
    }

    /// True for the types whose values are JSON documents.
    pub fn is_semi_structured(self) -> bool {
        matches!(self, ColumnType::Variant | ColumnType::Object | ColumnType::Array)
    }
}

impl fmt::Display for ColumnType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ColumnType::Number { precision, scale } => write!(f, "NUMBER({precision},{scale})"),
            ColumnType::Float => f.write_str("FLOAT"),
            ColumnType::Varchar { max_len } if max_len == MAX_VARCHAR_LEN => f.write_str("VARCHAR"),
            ColumnType::Varchar { max_len } => write!(f, "VARCHAR({max_len})"),
            ColumnType::Boolean => f.write_str("BOOLEAN"),
            ColumnType::Date => f.write_str("DATE"),
            ColumnType::Time => f.write_str("TIME"),
            ColumnType::TimestampNtz => f.write_str("TIMESTAMP_NTZ"),
            ColumnType::TimestampLtz => f.write_str("TIMESTAMP_LTZ"),
            ColumnType::TimestampTz => f.write_str("TIMESTAMP_TZ"),
            ColumnType::Variant => f.write_str("VARIANT"),
            ColumnType::Object => f.write_str("OBJECT"),
            ColumnType::Array => f.write_str("ARRAY"),
            ColumnType::Binary => f.write_str("BINARY"),
        }
    }
}

/// Why a type name could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TypeParseError(String);

impl FromStr for ColumnType {
    type Err = TypeParseError;

    /// Parses Snowflake type names and their common synonyms, case-insensitively.
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let text = input.trim().to_ascii_uppercase();
        let (base, args) = match text.find('(') {
            Some(open) if text.ends_with(')') => {
                let inner = &text[open + 1..text.len() - 1];
                let args = inner
                    .split(',')
                    .map(|a| a.trim().parse::<u32>())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| TypeParseError(format!("invalid type arguments in {input:?}")))?;
                (text[..open].trim().to_string(), args)
            }
            Some(_) => return Err(TypeParseError(format!("unbalanced parenthesis in {input:?}"))),
            None => (text.clone(), Vec::new()),
        };
        let no_args = |ty: ColumnType| {
            if args.is_empty() {
                Ok(ty)
            } else {
                Err(TypeParseError(format!("type {base} takes no arguments")))
            }
        };
        match base.as_str() {
            "NUMBER" | "DECIMAL" | "NUMERIC" => {
                let (precision, scale) = match args.as_slice() {
                    [] => (38, 0),
                    [p] => (*p, 0),
                    [p, s] => (*p, *s),
                    _ => return Err(TypeParseError(format!("too many arguments in {input:?}"))),
                };
                if !(1..=38).contains(&precision) || scale > precision {
                    return Err(TypeParseError(format!("{input:?}: precision must be 1..=38 and scale 0..=precision")));
                }
                Ok(ColumnType::Number { precision: precision as u8, scale: scale as u8 })
            }
            "INT" | "INTEGER" | "BIGINT" | "SMALLINT" | "TINYINT" | "BYTEINT" => no_args(ColumnType::INTEGER),
            "FLOAT" | "FLOAT4" | "FLOAT8" | "DOUBLE" | "DOUBLE PRECISION" | "REAL" => no_args(ColumnType::Float),
            "VARCHAR" | "STRING" | "TEXT" | "CHAR VARYING" | "NVARCHAR" | "CHAR" | "CHARACTER" | "NCHAR" => {
                let max_len = match args.as_slice() {
                    [] if base.starts_with('C') || base == "NCHAR" => 1,
                    [] => MAX_VARCHAR_LEN,
                    [n] if (1..=MAX_VARCHAR_LEN).contains(n) => *n,
                    _ => return Err(TypeParseError(format!("{input:?}: length must be 1..={MAX_VARCHAR_LEN}"))),
                };
                Ok(ColumnType::Varchar { max_len })
            }
            "BOOLEAN" | "BOOL" => no_args(ColumnType::Boolean),
            "DATE" => no_args(ColumnType::Date),
            "TIME" => Ok(ColumnType::Time),
            "TIMESTAMP" | "TIMESTAMP_NTZ" | "DATETIME" | "TIMESTAMP WITHOUT TIME ZONE" => Ok(ColumnType::TimestampNtz),
            "TIMESTAMP_LTZ" | "TIMESTAMP WITH LOCAL TIME ZONE" => Ok(ColumnType::TimestampLtz),
            "TIMESTAMP_TZ" | "TIMESTAMPTZ" | "TIMESTAMP WITH TIME ZONE" => Ok(ColumnType::TimestampTz),
            "VARIANT" | "JSON" => no_args(ColumnType::Variant),
            "OBJECT" => no_args(ColumnType::Object),
            "ARRAY" => no_args(ColumnType::Array),
            "BINARY" | "VARBINARY" | "BLOB" | "BYTEA" => Ok(ColumnType::Binary),
            _ => Err(TypeParseError(format!("unsupported column type {input:?}"))),
        }
    }
}

impl Serialize for ColumnType {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ColumnType {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// One column of a table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Column {
    /// Column name, normalised as JSON keys are (ASCII letters upper-cased; characters other than
    /// letters, digits, `_` and `$` become `_`; a leading digit gets a `_`). Not blank; the
    /// metadata names `_BATCH_ID`, `_RECORD_INDEX` and `_INGESTED_AT` are reserved.
    #[schema(value_type = String, min_length = 1, max_length = 255, pattern = r"\S")]
    pub name: ColumnName,
    /// Snowflake type name, e.g. `NUMBER(12,2)`, `VARCHAR(64)`, `TIMESTAMP_TZ`.
    #[serde(rename = "type")]
    #[schema(value_type = String, example = "NUMBER(12,2)")]
    pub ty: ColumnType,
    #[serde(default = "default_true")]
    pub nullable: bool,
}

fn default_true() -> bool {
    true
}

/// The columns of one table, partner columns first, in warehouse order; metadata columns excluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSchema {
    pub name: String,
    /// Columns are only ever appended, so an older schema is a prefix of a newer one.
    pub columns: Vec<Column>,
}

impl TableSchema {
    /// Position of a column by its normalised name.
    pub fn position(&self, normalized: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name.as_str() == normalized)
    }
}

/// Why a name cannot be an identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentifierError {
    #[error("name is empty")]
    Empty,
    #[error("name is longer than {MAX_IDENTIFIER_LEN} characters")]
    TooLong,
    #[error("name {0:?} is reserved for snowgate's own columns")]
    Reserved(String),
    #[error("name {0:?} is not an identifier: letters, digits, _ and $, not starting with a digit or $")]
    NotAnIdentifier(String),
    #[error("table name {0:?} is reserved for snowgate")]
    ReservedTable(String),
}

/// A table name, made once where it enters (a URL path, a config key): an identifier
/// (`[A-Za-z_][A-Za-z0-9_$]*`, at most 255 characters), case-insensitive, so held upper-cased.
/// Nothing else is mapped onto a table name: `a-b` is refused, never turned into `A_B`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct TableName(String);

impl TableName {
    pub fn parse(raw: &str) -> Result<Self, IdentifierError> {
        let mut chars = raw.chars();
        let first = chars.next().ok_or(IdentifierError::Empty)?;
        let valid = (first.is_ascii_alphabetic() || first == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$');
        if !valid {
            return Err(IdentifierError::NotAnIdentifier(raw.to_string()));
        }
        if raw.len() > MAX_IDENTIFIER_LEN {
            return Err(IdentifierError::TooLong);
        }
        let name = raw.to_ascii_uppercase();
        if name.starts_with("_SNOWGATE") {
            return Err(IdentifierError::ReservedTable(raw.to_string()));
        }
        Ok(TableName(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::ops::Deref for TableName {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl FromStr for TableName {
    type Err = IdentifierError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TableName::parse(s)
    }
}

impl<'de> Deserialize<'de> for TableName {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        TableName::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// Per-table policy for fields the table does not have yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DriftPolicy {
    /// Add a nullable column for every new field, typed from the batch.
    #[default]
    Evolve,
    /// Keep every unknown field, and every value that does not fit its (nullable) column, in the
    /// `_RESCUED_DATA` VARIANT column as `{field: value as sent}`; the rest of the row loads.
    Rescue,
    /// Drop unknown fields, counted per batch; the rest of the row loads.
    DiscardValue,
    /// Reject each record that carries a field the table does not have (`unknown_field`); the
    /// table never changes.
    DiscardRow,
    /// Refuse the whole request (422 `schema_frozen`) if any record carries an unknown field.
    Freeze,
}

impl DriftPolicy {
    pub const ALL: [DriftPolicy; 5] = [
        DriftPolicy::Evolve,
        DriftPolicy::Rescue,
        DriftPolicy::DiscardValue,
        DriftPolicy::DiscardRow,
        DriftPolicy::Freeze,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DriftPolicy::Evolve => "evolve",
            DriftPolicy::Rescue => "rescue",
            DriftPolicy::DiscardValue => "discard_value",
            DriftPolicy::DiscardRow => "discard_row",
            DriftPolicy::Freeze => "freeze",
        }
    }
}

impl fmt::Display for DriftPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DriftPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim().to_ascii_lowercase();
        DriftPolicy::ALL.into_iter().find(|p| p.as_str() == wanted).ok_or_else(|| {
            format!(
                "unsupported drift policy {wanted:?}; supported: evolve, rescue, discard_value, discard_row, freeze"
            )
        })
    }
}

/// Maps a JSON key or a table name to a warehouse identifier.
///
/// Upper-cases ASCII letters, keeps digits, `_` and `$`, and turns every other character into `_`,
/// so `partner-ref` and `partner_ref` name the same column. A leading digit gets a `_` prefix.
/// The result is always quoted in SQL; this rule only keeps names readable and case-insensitive.
pub fn normalize_identifier(name: &str) -> Result<String, IdentifierError> {
    let trimmed = name.trim();
    if trimmed.is_empty() {
        return Err(IdentifierError::Empty);
    }
    let mut out = String::with_capacity(trimmed.len() + 1);
    if trimmed.starts_with(|c: char| c.is_ascii_digit()) {
        out.push('_');
    }
    for c in trimmed.chars() {
        match c {
            'a'..='z' => out.push(c.to_ascii_uppercase()),
            'A'..='Z' | '0'..='9' | '_' | '$' => out.push(c),
            _ => out.push('_'),
        }
    }
    if out.chars().count() > MAX_IDENTIFIER_LEN {
        return Err(IdentifierError::TooLong);
    }
    Ok(out)
}

/// A column name, made once where it enters: a partner's JSON key or declaration, normalised by
/// [`normalize_identifier`] and never a metadata name; or a name the warehouse reports, taken
/// as it is (upper-cased). The ledger stores and returns names made these ways, so reading one
/// back does not make it again.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ColumnName(String);

impl ColumnName {
    pub fn normalize(raw: &str) -> Result<Self, IdentifierError> {
        let normalized = normalize_identifier(raw)?;
        if META_COLUMNS.contains(&normalized.as_str()) || normalized == RESCUED_DATA {
            return Err(IdentifierError::Reserved(normalized));
        }
        Ok(ColumnName(normalized))
    }

    /// `_RESCUED_DATA`, which no JSON key can name.
    pub fn rescued() -> Self {
        ColumnName(RESCUED_DATA.to_string())
    }

    /// A column as the warehouse describes it; unquoted names fold to upper case there.
    pub fn from_warehouse(raw: &str) -> Self {
        ColumnName(raw.to_ascii_uppercase())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for ColumnName {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ColumnName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for ColumnName {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for ColumnName {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

/// Quotes an identifier for SQL: wraps it in double quotes and doubles any inner quote.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes a string literal for SQL.
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_type_names_and_synonyms() {
        let cases = [
            ("number(12,2)", ColumnType::Number { precision: 12, scale: 2 }),
            ("NUMBER", ColumnType::INTEGER),
            ("int", ColumnType::INTEGER),
            ("decimal(10)", ColumnType::Number { precision: 10, scale: 0 }),
            ("varchar(64)", ColumnType::Varchar { max_len: 64 }),
            ("string", ColumnType::VARCHAR),
            ("double", ColumnType::Float),
            ("timestamp", ColumnType::TimestampNtz),
            ("timestamp_tz", ColumnType::TimestampTz),
            ("json", ColumnType::Variant),
            ("binary", ColumnType::Binary),
        ];
        for (text, want) in cases {
            assert_eq!(text.parse::<ColumnType>().unwrap(), want, "{text}");
        }
    }

    #[test]
    fn refuses_bad_types() {
        for text in ["number(40,2)", "number(5,6)", "varchar(0)", "geography", "number(1", "date(3)"] {
            assert!(text.parse::<ColumnType>().is_err(), "{text} should not parse");
        }
    }

    #[test]
    fn display_round_trips() {
        for text in ["NUMBER(12,2)", "VARCHAR", "VARCHAR(10)", "TIMESTAMP_LTZ", "VARIANT", "ARRAY"] {
            let ty: ColumnType = text.parse().unwrap();
            assert_eq!(ty.to_string(), text);
        }
    }

    #[test]
    fn normalizes_identifiers() {
        assert_eq!(normalize_identifier("partner_reference_id").unwrap(), "PARTNER_REFERENCE_ID");
        assert_eq!(normalize_identifier("first-name").unwrap(), "FIRST_NAME");
        assert_eq!(normalize_identifier("1st").unwrap(), "_1ST");
        assert_eq!(normalize_identifier("a\"; DROP TABLE x; --").unwrap(), "A___DROP_TABLE_X____");
        assert_eq!(normalize_identifier(" "), Err(IdentifierError::Empty));
        assert_eq!(normalize_identifier(&"x".repeat(256)), Err(IdentifierError::TooLong));
        assert!(matches!(ColumnName::normalize("_batch_id"), Err(IdentifierError::Reserved(_))));
        assert_eq!(ColumnName::normalize("first-name").unwrap().as_str(), "FIRST_NAME");
        assert_eq!(ColumnName::from_warehouse("my col").as_str(), "MY COL", "the warehouse's own name, kept");
    }

    #[test]
    fn table_names_are_identifiers_and_nothing_else() {
        assert_eq!(TableName::parse("loans").unwrap().as_str(), "LOANS");
        assert_eq!(TableName::parse("Loans_2$x").unwrap().as_str(), "LOANS_2$X");
        assert_eq!(TableName::parse("_x").unwrap().as_str(), "_X");
        for bad in ["a\"b", "a/b", "a b", "a-b", "1ab", "$ab", "", "é", "a.b"] {
            assert!(TableName::parse(bad).is_err(), "{bad:?} must be refused");
        }
        assert_eq!(TableName::parse(&"x".repeat(256)), Err(IdentifierError::TooLong));
        assert!(TableName::parse(&"x".repeat(255)).is_ok());
        assert!(matches!(TableName::parse("_snowgate_load_history"), Err(IdentifierError::ReservedTable(_))));
    }

    #[test]
    fn quotes_identifiers_and_literals() {
        assert_eq!(quote_ident("A\"B"), "\"A\"\"B\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}

//! Per-record rejects: what was wrong, where, and in which stage it was found.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Machine-readable reason a record was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RejectCode {
    InvalidJson,
    NotAnObject,
    MissingRequired,
    NullInNotNull,
    TypeMismatch,
    OutOfRange,
    TooLong,
    InvalidDate,
    UnknownField,
    RecordTooLarge,
    WarehouseRejected,
}

impl RejectCode {
    /// The code as it appears in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectCode::InvalidJson => "invalid_json",
            RejectCode::NotAnObject => "not_an_object",
            RejectCode::MissingRequired => "missing_required",
            RejectCode::NullInNotNull => "null_in_not_null",
            RejectCode::TypeMismatch => "type_mismatch",
            RejectCode::OutOfRange => "out_of_range",
            RejectCode::TooLong => "too_long",
            RejectCode::InvalidDate => "invalid_date",
            RejectCode::UnknownField => "unknown_field",
            RejectCode::RecordTooLarge => "record_too_large",
            RejectCode::WarehouseRejected => "warehouse_rejected",
        }
    }
}

/// One problem with one record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FieldError {
    /// JSON pointer into the record (`""` for the record itself).
    pub path: String,
    /// Normalised column name, when the problem concerns a column.
    pub column: Option<String>,
    pub code: RejectCode,
    pub message: String,
}

/// Where a reject was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RejectStage {
    Gateway,
    Warehouse,
}

impl RejectStage {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectStage::Gateway => "gateway",
            RejectStage::Warehouse => "warehouse",
        }
    }
}

/// A rejected record with every error found in it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Reject {
    /// Position of the record in the request (0-based).
    pub index: u64,
    /// The record as received (a JSON value, or a string holding an unparseable line).
    #[schema(value_type = serde_json::Value)]
    pub record: serde_json::Value,
    pub errors: Vec<FieldError>,
    pub stage: RejectStage,
}

/// Escapes one JSON-pointer reference token (RFC 6901).
pub fn pointer_token(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// JSON pointer to a top-level key of a record.
pub fn pointer(key: &str) -> String {
    format!("/{}", pointer_token(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointers_escape_slash_and_tilde() {
        assert_eq!(pointer("a/b~c"), "/a~1b~0c");
        assert_eq!(pointer("id"), "/id");
    }

    #[test]
    fn codes_serialize_as_documented() {
        let json = serde_json::to_string(&RejectCode::NullInNotNull).unwrap();
        assert_eq!(json, "\"null_in_not_null\"");
        assert_eq!(RejectCode::WarehouseRejected.as_str(), "warehouse_rejected");
    }
}

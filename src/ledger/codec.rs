//! Conversions every ledger backend shares: enums and JSON documents held as text.

use std::str::FromStr;

use super::{LedgerError, Result};
use crate::ingest::reject::RejectStage;

/// Parses an enum stored as its text name.
pub(crate) fn parse<T: FromStr<Err = String>>(text: &str) -> Result<T> {
    text.parse().map_err(LedgerError::Corrupt)
}

/// Reads a JSON document the ledger wrote.
pub(crate) fn from_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| LedgerError::Corrupt(e.to_string()))
}

/// Writes a ledger value as JSON text.
pub(crate) fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("ledger values serialize")
}

/// Where a stored reject was found; anything but `warehouse` was found by the gateway.
pub(crate) fn reject_stage(text: &str) -> RejectStage {
    match text {
        "warehouse" => RejectStage::Warehouse,
        _ => RejectStage::Gateway,
    }
}

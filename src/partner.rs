//! Partners: who sends batches and whom keys and quotas belong to. A leaf of vocabulary, like
//! [`crate::schema`]: the ledger, the config and the API all name partners with it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Who sent a batch: a partner's name as operators give it (`acme`, `bank-7`): 1 to 64 lowercase
/// letters, digits, `-` or `_`, starting with a letter or a digit. Checked once, where it enters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Partner(String);

impl Partner {
    /// Who sends requests that carry no key, where the gateway serves those (open, or no key yet).
    pub fn anonymous() -> Partner {
        Partner("anonymous".to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Partner {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        let mut bytes = name.bytes();
        let first_ok = bytes.next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        let rest_ok = bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if first_ok && rest_ok && name.len() <= 64 {
            Ok(Partner(name.to_string()))
        } else {
            Err(format!(
                "invalid partner {name:?}: 1 to 64 lowercase letters, digits, '-' or '_', starting with a letter or digit"
            ))
        }
    }
}

impl TryFrom<String> for Partner {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        name.parse()
    }
}

impl From<Partner> for String {
    fn from(partner: Partner) -> String {
        partner.0
    }
}

impl fmt::Display for Partner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The pattern the API documents for partner names (what `Partner::from_str` accepts).
const PARTNER_PATTERN: &str = "^[a-z0-9][a-z0-9_-]{0,63}$";

impl utoipa::PartialSchema for Partner {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some(PARTNER_PATTERN))
            .description(Some("A partner's name: lowercase letters, digits, '-' or '_'."))
            .into()
    }
}

impl ToSchema for Partner {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partner_names_are_checked_where_they_enter() {
        for good in ["acme", "bank-7", "a", "0day_partner", &"p".repeat(64)] {
            assert_eq!(good.parse::<Partner>().unwrap().as_str(), good);
        }
        for bad in ["", "Acme", "-acme", "acme corp", "acmé", "a/b", &"p".repeat(65)] {
            assert!(bad.parse::<Partner>().is_err(), "{bad:?}");
        }
        assert!(serde_json::from_str::<Partner>("\"ACME\"").is_err(), "deserialising checks too");
        assert_eq!(Partner::anonymous().as_str(), "anonymous");
    }
}

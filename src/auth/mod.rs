//! Who is asking: partner API keys, the operator role, and per-partner quotas.
//!
//! A key reads `sgk_<id>_<secret>`. The id is public (it names the key in lists, logs and
//! revocations); the secret is 32 random bytes, shown once at creation and kept only as its
//! SHA-256, compared in constant time. A secret of that entropy needs no slow hash: nothing
//! short of the secret itself matches the digest.

pub mod quota;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::AuthMode;
use crate::ledger::{ApiKey, Ledger, LedgerError, Partner};
use crate::schema::TableName;

/// Every key starts with this, so that secret scanners and people can tell one at a glance.
const PREFIX: &str = "sgk_";
/// How often a key's `last_used_at` is written at most.
const TOUCH_EVERY: Duration = Duration::from_secs(60);

/// What a request may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Declares tables, manages keys, writes every table and reads every batch.
    Operator,
    /// Writes the tables listed and reads its own batches.
    Partner { tables: BTreeSet<TableName> },
}

/// The caller of a request, once its key (or the lack of one) is accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub partner: Partner,
    pub role: Role,
    /// The key's public id; `None` for requests served without a key.
    pub key_id: Option<String>,
}

impl Principal {
    /// A request served without a key (open mode, or no key exists yet on loopback).
    pub fn keyless() -> Principal {
        Principal { partner: Partner::anonymous(), role: Role::Operator, key_id: None }
    }

    pub fn is_operator(&self) -> bool {
        self.role == Role::Operator
    }

    pub fn may_write(&self, table: &TableName) -> bool {
        match &self.role {
            Role::Operator => true,
            Role::Partner { tables } => tables.contains(table),
        }
    }

    /// Whether the caller may see a batch sent by `owner`.
    pub fn may_read(&self, owner: &Partner) -> bool {
        self.is_operator() || &self.partner == owner
    }

    fn of(key: &ApiKey) -> Result<Principal, LedgerError> {
        let role = if key.operator {
            Role::Operator
        } else {
            let tables = key
                .tables
                .iter()
                .map(|t| TableName::parse(t).map_err(|e| LedgerError::Corrupt(format!("key {}: {e}", key.id))))
                .collect::<Result<_, _>>()?;
            Role::Partner { tables }
        };
        Ok(Principal { partner: key.partner.clone(), role, key_id: Some(key.id.clone()) })
    }
}

/// Why a request was not let in.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("an API key is required: send `Authorization: Bearer <key>`")]
    Missing,
    /// Malformed, unknown, wrong secret or revoked: one answer for all, so that a caller learns
    /// nothing about which keys exist.
    #[error("the API key is not valid")]
    Invalid,
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// A key as created: the full text, shown once, and its ledger record.
pub struct NewKey {
    pub token: String,
    pub record: ApiKey,
}

/// Makes a key for `partner`; not stored yet.
pub fn generate_key(partner: Partner, tables: &[TableName], operator: bool) -> Result<NewKey, getrandom::Error> {
    let mut id = [0u8; 8];
    let mut secret = [0u8; 32];
    getrandom::fill(&mut id)?;
    getrandom::fill(&mut secret)?;
    let (id, secret) = (hex::encode(id), hex::encode(secret));
    let record = ApiKey {
        id: id.clone(),
        partner,
        tables: if operator { Vec::new() } else { tables.iter().map(ToString::to_string).collect() },
        operator,
        created_at: Utc::now(),
        last_used_at: None,
        revoked_at: None,
        secret_hash: digest(&secret),
    };
    Ok(NewKey { token: format!("{PREFIX}{id}_{secret}"), record })
}

/// Why a key could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateKeyError {
    #[error("a partner key must name at least one table it may write")]
    NoTables,
    #[error("an operator key writes every table; leave `tables` out")]
    OperatorTables,
    #[error("partner name {0:?} is reserved; a partner key needs another")]
    ReservedPartner(String),
    #[error("no randomness for a key: {0}")]
    Random(getrandom::Error),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// Makes a key and stores it (its digest); returns the key text, which exists nowhere else.
pub async fn create_key(
    ledger: &dyn Ledger,
    partner: Partner,
    tables: &[TableName],
    operator: bool,
) -> Result<NewKey, CreateKeyError> {
    if !operator && tables.is_empty() {
        return Err(CreateKeyError::NoTables);
    }
    if operator && !tables.is_empty() {
        return Err(CreateKeyError::OperatorTables);
    }
    if !operator && RESERVED_PARTNERS.contains(&partner.as_str()) {
        return Err(CreateKeyError::ReservedPartner(partner.to_string()));
    }
    let new = generate_key(partner, tables, operator).map_err(CreateKeyError::Random)?;
    ledger.insert_key(&new.record).await?;
    tracing::info!(key_id = %new.record.id, partner = %new.record.partner, operator, "API key created");
    Ok(new)
}

fn digest(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// `sgk_<id>_<secret>` split into its id and secret.
fn split_token(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.strip_prefix(PREFIX)?.split_once('_')?;
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex(id, 16) && hex(secret, 64)).then_some((id, secret))
}

/// Whether `secret` is the one `key` was made with, in time independent of where they differ.
fn secret_matches(key: &ApiKey, secret: &str) -> bool {
    digest(secret).as_bytes().ct_eq(key.secret_hash.as_bytes()).into()
}

struct Cached {
    key: ApiKey,
    read_at: Instant,
    touched_at: Option<Instant>,
}

/// Checks keys for every request. Keys are read from the ledger and trusted for
/// `auth.cache_secs`; whether any key exists is read until one does, after which it is known.
pub struct Authenticator {
    mode: AuthMode,
    ledger: Arc<dyn Ledger>,
    ttl: Duration,
    keys_exist: AtomicBool,
    cache: Mutex<HashMap<String, Cached>>,
}

impl Authenticator {
    pub fn new(mode: AuthMode, ledger: Arc<dyn Ledger>, ttl: Duration) -> Self {
        Authenticator { mode, ledger, ttl, keys_exist: AtomicBool::new(false), cache: Mutex::new(HashMap::new()) }
    }

    /// Whether a key must be sent: in `keys` mode once any key exists (checked on each request
    /// until then, so a key created by the CLI closes a running gateway at once).
    async fn keys_required(&self) -> Result<bool, LedgerError> {
        if self.mode == AuthMode::Open {
            return Ok(false);
        }
        if self.keys_exist.load(Ordering::Acquire) {
            return Ok(true);
        }
        let exist = self.ledger.any_keys().await?;
        if exist {
            self.keys_exist.store(true, Ordering::Release);
        }
        Ok(exist)
    }

    /// The principal of a request from its `Authorization` header.
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Principal, AuthError> {
        let Some(header) = authorization else {
            return if self.keys_required().await? { Err(AuthError::Missing) } else { Ok(Principal::keyless()) };
        };
        let token = header
            .split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .ok_or(AuthError::Invalid)?;
        let (id, secret) = split_token(token).ok_or(AuthError::Invalid)?;
        let key = self.key(id).await?.ok_or(AuthError::Invalid)?;
        if key.revoked_at.is_some() || !secret_matches(&key, secret) {
            return Err(AuthError::Invalid);
        }
        self.keys_exist.store(true, Ordering::Release);
        self.touch(&key.id);
        Ok(Principal::of(&key)?)
    }

    /// The key `id`, from the cache while fresh, else from the ledger.
    async fn key(&self, id: &str) -> Result<Option<ApiKey>, LedgerError> {
        if let Some(cached) = self.cache.lock().expect("key cache").get(id) {
            if cached.read_at.elapsed() < self.ttl {
                return Ok(Some(cached.key.clone()));
            }
        }
        let key = self.ledger.get_key(id).await?;
        let mut cache = self.cache.lock().expect("key cache");
        match &key {
            Some(key) => {
                let touched_at = cache.get(id).and_then(|c| c.touched_at);
                cache.insert(id.to_string(), Cached { key: key.clone(), read_at: Instant::now(), touched_at });
            }
            None => {
                cache.remove(id);
            }
        }
        Ok(key)
    }

    /// Records the key's use, at most once a minute per key and replica, off the request path.
    fn touch(&self, id: &str) {
        {
            let mut cache = self.cache.lock().expect("key cache");
            let Some(cached) = cache.get_mut(id) else { return };
            if cached.touched_at.is_some_and(|at| at.elapsed() < TOUCH_EVERY) {
                return;
            }
            cached.touched_at = Some(Instant::now());
        }
        let (ledger, id) = (self.ledger.clone(), id.to_string());
        tokio::spawn(async move {
            if let Err(e) = ledger.touch_key(&id).await {
                tracing::debug!(key_id = %id, error = %e, "could not record a key's last use");
            }
        });
    }

    /// Forgets a key this replica has cached (after revoking it here).
    pub fn forget(&self, id: &str) {
        self.cache.lock().expect("key cache").remove(id);
    }
}

/// Why the gateway may not serve where it was asked to.
#[derive(Debug, thiserror::Error)]
pub enum ExposureError {
    #[error(
        "auth.mode: no API key exists and {0} is not a loopback address, so the gateway would be open to \
         the network: create a key first (`snowgate keys create --operator`), or set auth.mode = \"open\" \
         to serve without keys"
    )]
    Exposed(SocketAddr),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// Refuses to serve on `addr` when no key exists, the mode is `keys` and the address is not
/// loopback: such a gateway would be open to its whole network.
pub async fn check_exposure(mode: AuthMode, ledger: &dyn Ledger, addr: SocketAddr) -> Result<(), ExposureError> {
    if mode == AuthMode::Open || addr.ip().is_loopback() || ledger.any_keys().await? {
        return Ok(());
    }
    Err(ExposureError::Exposed(addr))
}

/// Partner names a partner key may not take: `anonymous` is who requests without a key are,
/// `operator` whom operator keys act as by default; a partner key under either name would read
/// their batches.
pub const RESERVED_PARTNERS: [&str; 2] = ["anonymous", "operator"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked_by_their_digest() {
        let loans = TableName::parse("loans").unwrap();
        let new = generate_key("acme".parse().unwrap(), std::slice::from_ref(&loans), false).unwrap();
        let (id, secret) = split_token(&new.token).expect("a generated key parses");
        assert_eq!(id, new.record.id);
        assert!(secret_matches(&new.record, secret));
        assert!(!new.record.secret_hash.contains(secret), "only the digest is kept");
        let mut wrong = secret.to_string();
        wrong.replace_range(0..1, if &secret[0..1] == "0" { "1" } else { "0" });
        assert!(!secret_matches(&new.record, &wrong));
        assert_eq!(new.record.tables, vec!["LOANS".to_string()]);
        assert!(Principal::of(&new.record).unwrap().may_write(&loans));
        assert!(!Principal::of(&new.record).unwrap().may_write(&TableName::parse("other").unwrap()));
    }

    #[test]
    fn malformed_tokens_are_refused_before_any_lookup() {
        for bad in ["", "sgk_", "sgk_abc_def", "Bearer x", &format!("sgk_{}_{}", "g".repeat(16), "0".repeat(64))] {
            assert!(split_token(bad).is_none(), "{bad:?}");
        }
        assert!(split_token(&format!("sgk_{}_{}", "a".repeat(16), "0".repeat(64))).is_some());
    }
}

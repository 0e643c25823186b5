//! Per-partner quotas: requests, records and bytes per second, each a token bucket that holds
//! `burst_secs` of its rate.
//!
//! A request is let in while every bucket of its partner is in credit (the request bucket holds
//! a whole token); it then spends one request, and its bytes and records as they become known.
//! A large batch may so take a bucket below zero, and the partner waits until it refills: over
//! time the partner gets its rate, whatever the size of its batches, and a batch is never refused
//! for being larger than a burst. Each replica keeps its own buckets with `1 / quotas.replicas`
//! of every rate.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use crate::config::{Quota, QuotasConfig};
use crate::partner::Partner;

/// Which rate a refused request is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Requests,
    Records,
    Bytes,
}

impl Limit {
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Requests => "requests_per_sec",
            Limit::Records => "records_per_sec",
            Limit::Bytes => "bytes_per_sec",
        }
    }
}

/// A request over its partner's quota.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OverQuota {
    pub limit: Limit,
    /// Whole seconds until the request would be let in.
    pub retry_after: u64,
}

/// What the `RateLimit-*` headers of a response say: the partner's most used bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Remaining {
    /// What the bucket holds when full.
    pub limit: u64,
    pub remaining: u64,
    /// Whole seconds until it is full again.
    pub reset: u64,
}

#[derive(Debug, Clone)]
struct Bucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// `None` when the rate is 0 (no limit).
    fn new(rate: f64, burst_secs: f64, floor: f64, now: Instant) -> Option<Bucket> {
        (rate > 0.0).then(|| {
            let capacity = (rate * burst_secs).max(floor);
            Bucket { rate, capacity, tokens: capacity, at: now }
        })
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        self.at = now;
    }

    /// Seconds until the bucket holds `needed`.
    fn wait_for(&self, needed: f64) -> u64 {
        let missing = (needed - self.tokens).max(0.0);
        (missing / self.rate).ceil().max(1.0) as u64
    }

    fn remaining(&self) -> Remaining {
        Remaining {
            limit: self.capacity.floor() as u64,
            remaining: self.tokens.max(0.0).floor() as u64,
            reset: ((self.capacity - self.tokens).max(0.0) / self.rate).ceil() as u64,
        }
    }

    /// Used share, for picking the bucket the headers report.
    fn used(&self) -> f64 {
        1.0 - self.tokens / self.capacity
    }
}

#[derive(Debug, Clone)]
struct Buckets {
    requests: Option<Bucket>,
    records: Option<Bucket>,
    bytes: Option<Bucket>,
}

impl Buckets {
    fn all(&mut self) -> impl Iterator<Item = &mut Bucket> {
        [&mut self.requests, &mut self.records, &mut self.bytes].into_iter().flatten()
    }

    fn remaining(&self) -> Option<Remaining> {
        [&self.requests, &self.records, &self.bytes]
            .into_iter()
            .flatten()
            .max_by(|a, b| a.used().total_cmp(&b.used()))
            .map(Bucket::remaining)
    }
}

/// Every partner's buckets on this replica.
pub struct Quotas {
    config: QuotasConfig,
    buckets: Mutex<HashMap<Partner, Buckets>>,
}

impl Quotas {
    pub fn new(config: QuotasConfig) -> Quotas {
        Quotas { config, buckets: Mutex::new(HashMap::new()) }
    }

    fn quota_of(&self, partner: &Partner) -> &Quota {
        self.config.partners.get(partner.as_str()).unwrap_or(&self.config.default)
    }

    /// Runs `f` on the partner's buckets, refilled to `now`; `None` for a partner with no limit.
    fn with<T>(&self, partner: &Partner, now: Instant, f: impl FnOnce(&mut Buckets) -> T) -> Option<T> {
        let quota = self.quota_of(partner);
        let share = f64::from(self.config.replicas.max(1));
        let mut all = self.buckets.lock().expect("quota buckets");
        if !all.contains_key(partner) {
            let buckets = Buckets {
                requests: Bucket::new(quota.requests_per_sec / share, quota.burst_secs, 1.0, now),
                records: Bucket::new(quota.records_per_sec / share, quota.burst_secs, 0.0, now),
                bytes: Bucket::new(quota.bytes_per_sec / share, quota.burst_secs, 0.0, now),
            };
            if buckets.requests.is_none() && buckets.records.is_none() && buckets.bytes.is_none() {
                return None;
            }
            all.insert(partner.clone(), buckets);
        }
        let buckets = all.get_mut(partner)?;
        buckets.all().for_each(|b| b.refill(now));
        Some(f(buckets))
    }

    /// Lets a request in and spends one request token, or says how long to wait.
    pub fn admit(&self, partner: &Partner) -> Result<Option<Remaining>, OverQuota> {
        self.admit_at(partner, Instant::now())
    }

    fn admit_at(&self, partner: &Partner, now: Instant) -> Result<Option<Remaining>, OverQuota> {
        let outcome = self.with(partner, now, |b| {
            let over = |bucket: &Option<Bucket>, needed: f64, limit| {
                bucket
                    .as_ref()
                    .filter(|b| b.tokens < needed)
                    .map(|b| OverQuota { limit, retry_after: b.wait_for(needed) })
            };
            let refused = over(&b.requests, 1.0, Limit::Requests)
                .or_else(|| over(&b.records, f64::MIN_POSITIVE, Limit::Records))
                .or_else(|| over(&b.bytes, f64::MIN_POSITIVE, Limit::Bytes));
            if let Some(refused) = refused {
                return Err(refused);
            }
            if let Some(requests) = &mut b.requests {
                requests.tokens -= 1.0;
            }
            Ok(b.remaining())
        });
        outcome.unwrap_or(Ok(None))
    }

    /// Spends `n` records of the partner's quota.
    pub fn spend_records(&self, partner: &Partner, n: u64) {
        self.with(partner, Instant::now(), |b| {
            if let Some(records) = &mut b.records {
                records.tokens -= n as f64;
            }
        });
    }

    /// Spends `n` bytes of the partner's quota.
    pub fn spend_bytes(&self, partner: &Partner, n: u64) {
        self.with(partner, Instant::now(), |b| {
            if let Some(bytes) = &mut b.bytes {
                bytes.tokens -= n as f64;
            }
        });
    }

    /// What the partner has left, for the headers of a response.
    pub fn remaining(&self, partner: &Partner) -> Option<Remaining> {
        self.with(partner, Instant::now(), |b| b.remaining()).flatten()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn quotas(quota: Quota, replicas: u32) -> Quotas {
        let mut config = QuotasConfig { replicas, ..QuotasConfig::default() };
        config.partners.insert("acme".into(), quota);
        Quotas::new(config)
    }

    #[test]
    fn requests_are_refused_past_the_burst_and_let_in_as_the_bucket_refills() {
        let q = quotas(Quota { requests_per_sec: 2.0, burst_secs: 2.0, ..Quota::default() }, 1);
        let (acme, other) = ("acme".parse().unwrap(), "other".parse().unwrap());
        let start = Instant::now();
        for _ in 0..4 {
            assert!(q.admit_at(&acme, start).is_ok());
        }
        let refused = q.admit_at(&acme, start).unwrap_err();
        assert_eq!(refused, OverQuota { limit: Limit::Requests, retry_after: 1 });
        assert!(q.admit_at(&acme, start + Duration::from_millis(500)).is_ok(), "half a second buys one request");
        assert_eq!(q.admit_at(&other, start), Ok(None), "a partner without a quota is not limited");
    }

    #[test]
    fn a_large_batch_is_let_in_and_the_partner_then_waits_for_its_records() {
        let q = quotas(Quota { records_per_sec: 1000.0, burst_secs: 1.0, ..Quota::default() }, 1);
        let acme: Partner = "acme".parse().unwrap();
        let start = Instant::now();
        assert!(q.admit_at(&acme, start).is_ok());
        q.spend_records(&acme, 5000);
        let refused = q.admit_at(&acme, start).unwrap_err();
        assert_eq!(refused.limit, Limit::Records);
        assert!((4..=6).contains(&refused.retry_after), "{refused:?}");
    }

    #[test]
    fn each_replica_enforces_its_share() {
        let q = quotas(Quota { requests_per_sec: 10.0, burst_secs: 1.0, ..Quota::default() }, 2);
        let acme: Partner = "acme".parse().unwrap();
        let start = Instant::now();
        let admitted = (0..10).filter(|_| q.admit_at(&acme, start).is_ok()).count();
        assert_eq!(admitted, 5, "half of the rate on each of two replicas");
    }
}

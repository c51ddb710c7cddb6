//! Admission control: what is shed before any work is done, and when to come back.
//!
//! Four gates, in the order a request meets them:
//! 0. **Queue delay** (`admission.queue_delay_target_ms`): while the runtime's scheduling
//!    delay or the shards' standing queue stands over the target, a share of new orders (and, past
//!    half, of actions) is refused with 503 `overloaded` before any work is done; see
//!    [`crate::http::queue_delay`] for the signal and the control law.
//! 1. **In flight** (`admission.in_flight_max`): order and action requests admitted and not
//!    yet answered, across the server. Past it, 429 `overloaded`. This bounds the memory and
//!    the tasks a burst can pin, whatever the shards' mailboxes hold.
//! 2. **Per client** (`admission.client_rate_per_s`, off by default): a token bucket per
//!    peer address (one second of burst). Load balancers share addresses, so this is for
//!    deployments that see buyers' addresses.
//! 3. **Per buyer** (`admission.user_orders_per_s`, off by default): a token bucket per
//!    `user_id`, applied to `POST /v1/orders` once the body is decoded.
//!
//! Then the shard's own bounded mailbox sheds what the shard cannot take (429). Every shed
//! answer carries `Retry-After`: for a full mailbox or the in-flight bound, the backlog
//! divided by the rate the shards actually drain it (measured), rounded up, 1 to 60 s; for a
//! rate limit, the time until the bucket has a token again.
//!
//! The buckets live in a table bounded by `admission.rate_table_max`. A full bucket is the
//! same as no bucket, so idle ones are swept (at most once a second); if the table is still
//! full, a new key is admitted untracked (fail open) and counted, rather than refused or
//! letting the table grow.

use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use dashmap::DashMap;

/// A token bucket: `tokens` in millitokens, refilled at `rate` per second up to one second's
/// worth (the burst).
#[derive(Debug, Clone, Copy)]
struct Bucket {
    millitokens: u64,
    refilled_us: u64,
}

/// Per-key token buckets with a bounded table.
pub struct RateLimiter {
    per_s: u64,
    table_max: usize,
    buckets: DashMap<u64, Bucket>,
    hasher: std::collections::hash_map::RandomState,
    last_sweep_us: AtomicU64,
    started: Instant,
    /// Keys admitted untracked because the table was full (`stampede_rate_limit_untracked`).
    pub untracked: AtomicU64,
}

pub use crate::http::reply::RetryAfter;

impl RateLimiter {
    /// `None` when `per_s` is 0 (the limit is off).
    pub fn new(per_s: u32, table_max: usize) -> Option<Self> {
        (per_s > 0).then(|| Self {
            per_s: u64::from(per_s),
            table_max,
            buckets: DashMap::new(),
            hasher: std::collections::hash_map::RandomState::new(),
            last_sweep_us: AtomicU64::new(0),
            started: Instant::now(),
            untracked: AtomicU64::new(0),
        })
    }

    fn now_us(&self) -> u64 {
        self.started.elapsed().as_micros() as u64
    }

    fn burst(&self) -> u64 {
        self.per_s * 1000
    }

    /// Takes one token for `key`, or says how long until one is there.
    pub fn check(&self, key: impl Hash) -> Result<(), RetryAfter> {
        let key = self.hasher.hash_one(key);
        let now = self.now_us();
        if let Some(mut bucket) = self.buckets.get_mut(&key) {
            let elapsed = now.saturating_sub(bucket.refilled_us);
            let refill = elapsed.saturating_mul(self.per_s) / 1000;
            bucket.millitokens = (bucket.millitokens + refill).min(self.burst());
            bucket.refilled_us = now;
            if bucket.millitokens >= 1000 {
                bucket.millitokens -= 1000;
                return Ok(());
            }
            let missing = 1000 - bucket.millitokens;
            let wait_us = missing * 1_000 / self.per_s;
            return Err(RetryAfter((wait_us.div_ceil(1_000_000) as u32).max(1)));
        }
        if self.buckets.len() >= self.table_max {
            self.sweep(now);
            if self.buckets.len() >= self.table_max {
                self.untracked.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
        }
        self.buckets.insert(
            key,
            Bucket {
                millitokens: self.burst() - 1000,
                refilled_us: now,
            },
        );
        Ok(())
    }

    /// Drops the buckets that have refilled completely (at most once a second).
    fn sweep(&self, now: u64) {
        let last = self.last_sweep_us.load(Ordering::Relaxed);
        if now.saturating_sub(last) < 1_000_000
            || self
                .last_sweep_us
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let per_s = self.per_s;
        let burst = self.burst();
        self.buckets.retain(|_, bucket| {
            let refill = now.saturating_sub(bucket.refilled_us).saturating_mul(per_s) / 1000;
            bucket.millitokens + refill < burst
        });
    }

    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

/// The gates, as configured.
pub struct Admission {
    /// `None` when `admission.queue_delay_target_ms` is 0.
    pub queue_delay: Option<std::sync::Arc<crate::http::queue_delay::QueueDelayGate>>,
    pub in_flight: InFlight,
    pub per_client: Option<RateLimiter>,
    pub per_user: Option<RateLimiter>,
}

impl Admission {
    pub fn new(config: &crate::config::AdmissionConfig) -> Self {
        let target = std::time::Duration::from_millis(config.queue_delay_target_ms);
        Self {
            queue_delay: crate::http::queue_delay::QueueDelayGate::new(target)
                .map(std::sync::Arc::new),
            in_flight: InFlight::new(config.in_flight_max),
            per_client: RateLimiter::new(config.client_rate_per_s, config.rate_table_max),
            per_user: RateLimiter::new(config.user_orders_per_s, config.rate_table_max),
        }
    }

    /// No rate limits, no queue-delay gate, the default in-flight bound (in-process servers
    /// in tests and benches).
    pub fn unlimited() -> Self {
        Self {
            queue_delay: None,
            in_flight: InFlight::new(crate::limits::IN_FLIGHT_DEFAULT),
            per_client: None,
            per_user: None,
        }
    }
}

/// Requests admitted and not yet answered, with its bound.
pub struct InFlight {
    max: usize,
    now: AtomicUsize,
}

/// Holds one in-flight slot until dropped.
pub struct InFlightGuard<'a> {
    counter: &'a AtomicUsize,
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Ordering::Release);
    }
}

impl InFlight {
    pub fn new(max: usize) -> Self {
        Self {
            max,
            now: AtomicUsize::new(0),
        }
    }

    /// A slot, or `None` when `max` requests are in flight.
    pub fn enter(&self) -> Option<InFlightGuard<'_>> {
        let before = self.now.fetch_add(1, Ordering::AcqRel);
        if before >= self.max {
            self.now.fetch_sub(1, Ordering::Release);
            return None;
        }
        Some(InFlightGuard { counter: &self.now })
    }

    pub fn current(&self) -> usize {
        self.now.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_says_when_to_come_back() {
        let limiter = RateLimiter::new(5, 100).unwrap();
        for _ in 0..5 {
            assert_eq!(limiter.check("u1"), Ok(()));
        }
        assert_eq!(limiter.check("u1"), Err(RetryAfter(1)));
        // Another key has its own bucket.
        assert_eq!(limiter.check("u2"), Ok(()));
        assert!(RateLimiter::new(0, 100).is_none());
    }

    #[test]
    fn a_full_table_sweeps_idle_buckets_and_otherwise_fails_open() {
        let mut limiter = RateLimiter::new(1_000_000, 3).unwrap();
        for key in 0..3 {
            limiter.check(key).unwrap();
        }
        assert_eq!(limiter.len(), 3);
        // Refilled at once at this rate: a sweep empties the table for the new key.
        std::thread::sleep(std::time::Duration::from_millis(5));
        limiter.last_sweep_us.store(0, Ordering::Relaxed);
        limiter.started = Instant::now() - std::time::Duration::from_secs(2);
        limiter.check(99).unwrap();
        assert!(limiter.len() <= 3);
        // A table of busy keys admits a new one untracked.
        let busy = RateLimiter::new(1, 2).unwrap();
        busy.check("a").unwrap();
        busy.check("b").unwrap();
        busy.check("c").unwrap();
        assert_eq!(busy.untracked.load(Ordering::Relaxed), 1);
        assert_eq!(busy.len(), 2);
    }

    #[test]
    fn in_flight_is_bounded_and_released_on_drop() {
        let in_flight = InFlight::new(2);
        let a = in_flight.enter().unwrap();
        let _b = in_flight.enter().unwrap();
        assert!(in_flight.enter().is_none());
        drop(a);
        assert!(in_flight.enter().is_some());
        assert_eq!(in_flight.current(), 1);
    }
}

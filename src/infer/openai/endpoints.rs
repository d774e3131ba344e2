//! Several replicas of one served model, and which one gets the next request.
//!
//! Each endpoint has a fixed number of slots (requests in flight at once, like a server's
//! parallel slots) and a health record. A request takes a slot at the least loaded healthy
//! endpoint (fewest requests in flight per slot; ties rotate), so a fast replica, which frees its
//! slots sooner, gets more of the work. A failure takes the endpoint out of rotation for a
//! backoff that doubles with each failure in a row (and is at least what a `Retry-After` asked);
//! when it comes back it is *half-open*: one request at a time until one succeeds. When every
//! endpoint is out, requests wait for the first to come back, which is the retry backoff of the
//! single-endpoint case.
//!
//! The pool also learns how long a request takes per token (an exponentially weighted mean over
//! successful replies), from which [`Pool::hedge_after`] says when a request has waited so long
//! that a copy should go to another endpoint.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{Notify, Semaphore, SemaphorePermit};
use tokio::time::Instant;

use super::OpenAiConfig;

/// Successful replies seen before the latency estimate is trusted for hedging.
const WARM_UP: u64 = 4;
/// Weight of the newest reply in the per-token latency mean.
const EWMA_WEIGHT: f64 = 0.2;

/// One server of the pool.
pub(super) struct Endpoint {
    /// The base URL, normalized.
    pub base: String,
    /// Where requests are posted.
    pub url: String,
    slots: Semaphore,
    capacity: usize,
    in_flight: AtomicUsize,
    health: Mutex<Health>,
    completed: AtomicU64,
    failed: AtomicU64,
    hedged: AtomicU64,
}

#[derive(Debug, Default)]
struct Health {
    /// Failures in a row (a success resets it).
    failures: u32,
    /// Out of rotation until then.
    down_until: Option<Instant>,
    /// The last failure was a refused or failed connection.
    unreachable: bool,
}

/// What one endpoint did, for logs and measurements.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EndpointStats {
    pub endpoint: String,
    /// Replies used (a hedged request that both endpoints answered counts once, where it won).
    pub completed: u64,
    /// Attempts that failed (errors, timeouts, refused connections).
    pub failed: u64,
    /// Requests that waited here so long that a copy went to another endpoint.
    pub hedged: u64,
    /// Requests in flight now.
    pub in_flight: usize,
    /// Whether the endpoint is out of rotation now.
    pub down: bool,
}

/// How an attempt at an endpoint ended, for its health record.
pub(super) enum Outcome {
    /// A reply was used; it took this long for this many completion tokens.
    Success { elapsed: Duration, tokens: usize },
    /// A failure worth retrying (HTTP 429/408/5xx, timeout, reset): out for a backoff.
    Transient { retry_after: Option<Duration> },
    /// Nothing answers there (refused, DNS, unreachable): out for a backoff, and the request
    /// moves on without spending a retry.
    Unreachable,
    /// A reply that says the request is wrong (4xx, malformed): the endpoint is fine.
    Answered,
}

/// The endpoints and the shared state that picks among them.
pub(super) struct Pool {
    endpoints: Vec<Endpoint>,
    /// Signalled when a slot frees or an endpoint's health changes.
    changed: Notify,
    /// Where the rotation starts next, so ties spread.
    rotation: AtomicUsize,
    latency: Mutex<Latency>,
    backoff_base: Duration,
    backoff_max: Duration,
    hedge_factor: f64,
    hedge_min: Duration,
}

#[derive(Debug, Default)]
struct Latency {
    seconds_per_token: f64,
    samples: u64,
}

/// A slot held at one endpoint; freeing it wakes the requests waiting for one.
pub(super) struct Lease<'a> {
    pool: &'a Pool,
    pub index: usize,
    permit: Option<SemaphorePermit<'a>>,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        // Free the slot before waking the waiters, or they find it still taken.
        drop(self.permit.take());
        self.pool.endpoints[self.index].in_flight.fetch_sub(1, Ordering::SeqCst);
        self.pool.changed.notify_waiters();
    }
}

impl Pool {
    /// A pool over normalized base URLs, `config.concurrency` slots each.
    pub fn new(bases: Vec<String>, config: &OpenAiConfig) -> Pool {
        let capacity = config.concurrency.max(1);
        let endpoints = bases
            .into_iter()
            .map(|base| Endpoint {
                url: format!("{base}/v1/chat/completions"),
                base,
                slots: Semaphore::new(capacity),
                capacity,
                in_flight: AtomicUsize::new(0),
                health: Mutex::new(Health::default()),
                completed: AtomicU64::new(0),
                failed: AtomicU64::new(0),
                hedged: AtomicU64::new(0),
            })
            .collect();
        Pool {
            endpoints,
            changed: Notify::new(),
            rotation: AtomicUsize::new(0),
            latency: Mutex::new(Latency::default()),
            backoff_base: config.backoff_base,
            backoff_max: config.backoff_max,
            hedge_factor: config.hedge_factor,
            hedge_min: config.hedge_min,
        }
    }

    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    pub fn endpoint(&self, index: usize) -> &Endpoint {
        &self.endpoints[index]
    }

    pub fn endpoints(&self) -> impl Iterator<Item = &Endpoint> {
        self.endpoints.iter()
    }

    fn health(&self, index: usize) -> std::sync::MutexGuard<'_, Health> {
        // A panic while holding this lock cannot leave the record half-written (plain fields).
        self.endpoints[index].health.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether the endpoint may take a request now: in rotation, and if it is recovering from
    /// failures, not already trying one.
    fn eligible(&self, index: usize, now: Instant) -> bool {
        let endpoint = &self.endpoints[index];
        let health = self.health(index);
        let up = health.down_until.is_none_or(|until| until <= now);
        let probing = health.failures > 0 && endpoint.in_flight.load(Ordering::SeqCst) > 0;
        up && !probing
    }

    /// A free slot at the least loaded eligible endpoint other than `except`, without waiting.
    pub fn try_lease(&self, except: Option<usize>) -> Option<Lease<'_>> {
        let now = Instant::now();
        let n = self.endpoints.len();
        let start = self.rotation.fetch_add(1, Ordering::Relaxed) % n;
        let mut order: Vec<usize> = (0..n)
            .map(|k| (start + k) % n)
            .filter(|&i| Some(i) != except && self.eligible(i, now))
            .collect();
        // Stable sort: among equally loaded endpoints the rotation order decides.
        order.sort_by_key(|&i| {
            let e = &self.endpoints[i];
            e.in_flight.load(Ordering::SeqCst) * 1_000_000 / e.capacity
        });
        for index in order {
            let endpoint = &self.endpoints[index];
            if let Ok(permit) = endpoint.slots.try_acquire() {
                endpoint.in_flight.fetch_add(1, Ordering::SeqCst);
                return Some(Lease { pool: self, index, permit: Some(permit) });
            }
        }
        None
    }

    /// A free slot at the least loaded eligible endpoint other than `except`, waiting for one to
    /// free or to come back into rotation.
    pub async fn lease(&self, except: Option<usize>) -> Lease<'_> {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(lease) = self.try_lease(except) {
                return lease;
            }
            match self.next_return() {
                Some(at) => {
                    tokio::select! {
                        _ = &mut notified => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// When the first endpoint now out of rotation comes back.
    fn next_return(&self) -> Option<Instant> {
        let now = Instant::now();
        (0..self.endpoints.len())
            .filter_map(|i| self.health(i).down_until.filter(|&until| until > now))
            .min()
    }

    /// Updates the endpoint's health after an attempt there.
    pub fn record(&self, index: usize, outcome: &Outcome) {
        let endpoint = &self.endpoints[index];
        match outcome {
            Outcome::Success { elapsed, tokens } => {
                endpoint.completed.fetch_add(1, Ordering::Relaxed);
                *self.health(index) = Health::default();
                let per_token = elapsed.as_secs_f64() / (*tokens).max(1) as f64;
                let mut latency = self.latency.lock().unwrap_or_else(|p| p.into_inner());
                latency.seconds_per_token = if latency.samples == 0 {
                    per_token
                } else {
                    (1.0 - EWMA_WEIGHT) * latency.seconds_per_token + EWMA_WEIGHT * per_token
                };
                latency.samples += 1;
            }
            Outcome::Answered => {
                *self.health(index) = Health::default();
            }
            Outcome::Transient { retry_after } => {
                endpoint.failed.fetch_add(1, Ordering::Relaxed);
                self.take_out(index, *retry_after, false);
            }
            Outcome::Unreachable => {
                endpoint.failed.fetch_add(1, Ordering::Relaxed);
                self.take_out(index, None, true);
            }
        }
        self.changed.notify_waiters();
    }

    /// A request waited at the endpoint past [`Pool::hedge_after`]: out of rotation for a
    /// backoff, so new requests go elsewhere while it is slow.
    pub fn record_slow(&self, index: usize) {
        self.endpoints[index].hedged.fetch_add(1, Ordering::Relaxed);
        self.take_out(index, None, false);
        self.changed.notify_waiters();
    }

    fn take_out(&self, index: usize, retry_after: Option<Duration>, unreachable: bool) {
        let mut health = self.health(index);
        let wait =
            super::backoff(self.backoff_base, self.backoff_max, health.failures, retry_after);
        health.failures = health.failures.saturating_add(1);
        health.down_until = Some(Instant::now() + wait);
        health.unreachable = unreachable;
    }

    /// Whether an endpoint other than `index` is reachable as far as is known (it may be busy or
    /// backing off from an error reply, but its last attempt did not find it gone).
    pub fn has_alternative(&self, index: usize) -> bool {
        (0..self.endpoints.len()).any(|i| i != index && !self.health(i).unreachable)
    }

    /// Whether the last attempt at every endpoint found nothing listening.
    pub fn all_unreachable(&self) -> bool {
        (0..self.endpoints.len()).all(|i| {
            let health = self.health(i);
            health.unreachable && health.failures > 0
        })
    }

    /// How long a request of up to `max_tokens` may wait for its reply before a copy goes to
    /// another endpoint: `hedge_factor` times what the tokens take at the mean pace seen so far,
    /// at least `hedge_min`. `None` with one endpoint, hedging off, or before the pace is known.
    pub fn hedge_after(&self, max_tokens: usize) -> Option<Duration> {
        if self.endpoints.len() < 2 || self.hedge_factor <= 0.0 {
            return None;
        }
        let latency = self.latency.lock().unwrap_or_else(|p| p.into_inner());
        if latency.samples < WARM_UP {
            return None;
        }
        let expected = latency.seconds_per_token * max_tokens.max(1) as f64;
        let wait = Duration::try_from_secs_f64(self.hedge_factor * expected).ok()?;
        Some(wait.max(self.hedge_min))
    }

    /// What each endpoint did so far.
    pub fn stats(&self) -> Vec<EndpointStats> {
        let now = Instant::now();
        self.endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| EndpointStats {
                endpoint: e.base.clone(),
                completed: e.completed.load(Ordering::Relaxed),
                failed: e.failed.load(Ordering::Relaxed),
                hedged: e.hedged.load(Ordering::Relaxed),
                in_flight: e.in_flight.load(Ordering::SeqCst),
                down: self.health(i).down_until.is_some_and(|until| until > now),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: usize, slots: usize) -> Pool {
        let mut config = OpenAiConfig::new("http://h", "m");
        config.concurrency = slots;
        config.backoff_base = Duration::from_secs(1);
        config.backoff_max = Duration::from_secs(8);
        Pool::new((0..n).map(|i| format!("http://h{i}")).collect(), &config)
    }

    #[tokio::test(start_paused = true)]
    async fn leases_spread_over_endpoints_and_respect_slots() {
        let pool = pool(2, 2);
        let leases: Vec<_> = (0..4).filter_map(|_| pool.try_lease(None)).collect();
        let at: Vec<usize> = leases.iter().map(|l| l.index).collect();
        assert_eq!(at.iter().filter(|&&i| i == 0).count(), 2, "{at:?}");
        assert_eq!(at.iter().filter(|&&i| i == 1).count(), 2, "{at:?}");
        assert!(pool.try_lease(None).is_none(), "all four slots are taken");
        drop(leases);
        assert!(pool.try_lease(None).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_endpoint_leaves_rotation_then_comes_back_half_open() {
        let pool = pool(2, 4);
        pool.record(0, &Outcome::Unreachable);
        let mut held = Vec::new();
        for _ in 0..3 {
            let lease = pool.try_lease(None).expect("a slot");
            assert_eq!(lease.index, 1);
            held.push(lease);
        }
        assert!(!pool.all_unreachable());
        tokio::time::advance(Duration::from_secs(2)).await;
        // Back, but half-open: one request at a time until one succeeds.
        let probe = pool.try_lease(None).expect("the probe");
        assert_eq!(probe.index, 0);
        let next = pool.try_lease(None).expect("a slot");
        assert_eq!(next.index, 1, "no second request while the probe is out");
        pool.record(0, &Outcome::Success { elapsed: Duration::from_millis(10), tokens: 1 });
        drop(probe);
        let stats = pool.stats();
        assert_eq!((stats[0].failed, stats[0].completed, stats[0].down), (1, 1, false));
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_doubles_and_waiting_leases_wake_when_an_endpoint_returns() {
        let pool = pool(1, 1);
        pool.record(0, &Outcome::Transient { retry_after: None });
        pool.record(0, &Outcome::Transient { retry_after: None });
        let start = Instant::now();
        let lease = pool.lease(None).await;
        let waited = start.elapsed();
        // The second failure in a row waits between 1 and 2 s (base 1 s, doubled, jittered).
        assert!(waited >= Duration::from_secs(1) && waited <= Duration::from_secs(2), "{waited:?}");
        assert_eq!(lease.index, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn every_endpoint_refusing_is_noticed() {
        let pool = pool(2, 1);
        pool.record(0, &Outcome::Unreachable);
        assert!(!pool.all_unreachable());
        pool.record(1, &Outcome::Unreachable);
        assert!(pool.all_unreachable());
        pool.record(1, &Outcome::Answered);
        assert!(!pool.all_unreachable());
    }

    #[tokio::test(start_paused = true)]
    async fn hedging_waits_for_a_known_pace() {
        let pool = pool(2, 1);
        assert_eq!(pool.hedge_after(100), None);
        for _ in 0..WARM_UP {
            pool.record(0, &Outcome::Success { elapsed: Duration::from_secs(10), tokens: 100 });
        }
        // 0.1 s per token, 100 tokens, factor 3: 30 s.
        let after = pool.hedge_after(100).expect("warm");
        assert!((after.as_secs_f64() - 30.0).abs() < 1e-6, "{after:?}");
        // Never below the floor.
        assert_eq!(pool.hedge_after(1), Some(pool.hedge_min));
        assert_eq!(self::pool(1, 1).hedge_after(100), None, "one endpoint never hedges");
    }
}

//! One [`CredentialCache`] per key (an Azure resource, a set of Google scopes), for providers
//! whose clients name what they want a token for.
//!
//! Each key gets the full cache behaviour (single flight, background refresh, serve-stale):
//! 1,000 cold requests for one resource make one exchange. Clients choose the keys, so the set
//! is bounded: at most `max_keys` at once, and a key nobody asked for during `idle` is dropped
//! (its refresh task stops with it), so a client cycling through made-up resources cannot make
//! the broker refresh tokens forever or grow without bound.
//!
//! Looking a key up is lock-free, as in workload-client's JWT cache: the map lives behind an
//! `ArcSwap` and is copied on insert and eviction (rare: a few keys per broker), so a request
//! for a known key is an atomic load, a hash lookup and (at most once a millisecond per key) a
//! timestamp store. Inserts and evictions serialise on one mutex that reads never take.
//!
//! Eviction against a concurrent lookup: the evictor marks an idle entry `evicted`, then reads
//! its `last_used` again and keeps it if a lookup touched it meanwhile; a lookup touches first,
//! then checks `evicted` and, if set, looks again under the mutex. Both sides use `SeqCst`, so a
//! lookup that returns an entry's cache either sees it unmarked after its touch (and the
//! evictor, reading later, sees the touch) or goes the locked way.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::time::Instant;

use crate::cache::{CacheConfig, CacheStats, CredentialCache};
use crate::provider::{CredentialProvider, Expiring};

/// How often [`CacheSet::of_providers`] looks for idle keys.
pub const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Bounds of a [`CacheSet`].
#[derive(Clone, Copy, Debug)]
pub struct SetLimits {
    /// At most this many keys at once.
    pub max_keys: usize,
    /// A key not asked for during this long is dropped.
    pub idle: Duration,
}

impl Default for SetLimits {
    fn default() -> Self {
        Self {
            max_keys: 32,
            // Longer than a token's life: a client that asks once per token keeps its key.
            idle: Duration::from_secs(2 * 3600),
        }
    }
}

/// Every key is in use: a new one is refused until one goes idle.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("too many distinct {what} in use (at most {max}); unused ones are dropped after {idle:?}")]
pub struct SetFull {
    /// What the keys are (`resources`, `scope sets`).
    pub what: &'static str,
    /// The limit.
    pub max: usize,
    /// The idle time.
    pub idle: Duration,
}

type Start<C> = dyn Fn(&str) -> CredentialCache<C> + Send + Sync;

type Map<C> = HashMap<Arc<str>, Arc<Entry<C>>>;

struct Entry<C> {
    cache: CredentialCache<C>,
    /// Milliseconds since `Inner::epoch` of the last lookup.
    last_used: AtomicU64,
    /// Configured ahead of any request: never dropped.
    pinned: AtomicBool,
    /// Being dropped (or dropped): a lookup that sees this looks again under the mutex.
    evicted: AtomicBool,
}

impl<C> Entry<C> {
    /// Marks the entry used at `now_ms`; a store only when the millisecond changed, so requests
    /// for a hot key do not all write the same cache line.
    fn touch(&self, now_ms: u64) {
        if self.last_used.load(Ordering::SeqCst) < now_ms {
            self.last_used.store(now_ms, Ordering::SeqCst);
        }
    }
}

/// Caches by key, started on first use. Clones share the set.
pub struct CacheSet<C> {
    inner: Arc<Inner<C>>,
}

struct Inner<C> {
    what: &'static str,
    start: Box<Start<C>>,
    limits: SetLimits,
    entries: ArcSwap<Map<C>>,
    /// Serialises inserts, pins and evictions (and the counters of dropped keys); lookups of
    /// known keys never take it.
    write: Mutex<CacheStats>,
    /// Origin of `Entry::last_used` (tokio's clock, so tests can advance it).
    epoch: Instant,
}

impl<C> Inner<C> {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

impl<C> Clone for CacheSet<C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<C> fmt::Debug for CacheSet<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheSet")
            .field("what", &self.inner.what)
            .field("limits", &self.inner.limits)
            .finish_non_exhaustive()
    }
}

// === impl CacheSet ===

impl<C: Expiring + Send + Sync + 'static> CacheSet<C> {
    /// An empty set; `start` builds (and starts) the cache of a new key. `what` names the keys
    /// in errors.
    pub fn new(
        what: &'static str,
        limits: SetLimits,
        start: impl Fn(&str) -> CredentialCache<C> + Send + Sync + 'static,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                what,
                start: Box::new(start),
                limits,
                entries: ArcSwap::from_pointee(HashMap::new()),
                write: Mutex::new(CacheStats::default()),
                epoch: Instant::now(),
            }),
        }
    }

    /// A set giving each key a [`CredentialCache`] (default tuning) over the provider that
    /// `provider` builds for it, swept for idle keys every [`SWEEP_EVERY`]. Must be called inside
    /// a Tokio runtime.
    pub fn of_providers<P>(
        what: &'static str,
        limits: SetLimits,
        provider: impl Fn(&str) -> P + Send + Sync + 'static,
    ) -> Self
    where
        P: CredentialProvider<Credentials = C>,
    {
        let set = Self::new(what, limits, move |key| {
            CredentialCache::start(provider(key), CacheConfig::default())
        });
        set.spawn_sweeper(SWEEP_EVERY);
        set
    }

    /// The cache of `key`, started now if it is new. Lock-free when `key` is held.
    pub fn get(&self, key: &str) -> Result<CredentialCache<C>, SetFull> {
        let now = self.inner.now_ms();
        if let Some(entry) = self.inner.entries.load().get(key) {
            entry.touch(now);
            if !entry.evicted.load(Ordering::SeqCst) {
                return Ok(entry.cache.clone());
            }
        }
        self.get_locked(key, false)
    }

    /// Starts `key` now (so its token is ready before the first request) and never drops it;
    /// pinned keys count towards the limit.
    pub fn pin(&self, key: &str) -> Result<CredentialCache<C>, SetFull> {
        self.get_locked(key, true)
    }

    /// The slow way: under the write lock, where no eviction runs concurrently.
    fn get_locked(&self, key: &str, pin: bool) -> Result<CredentialCache<C>, SetFull> {
        let mut retired = self.write();
        let now = self.inner.now_ms();
        let current = self.inner.entries.load_full();
        if let Some(entry) = current.get(key) {
            entry.touch(now);
            if pin {
                entry.pinned.store(true, Ordering::SeqCst);
            }
            return Ok(entry.cache.clone());
        }
        let mut next = Map::clone(&current);
        let evicted = if next.len() >= self.inner.limits.max_keys {
            self.evict_idle_from(&mut next, &mut retired, now)
        } else {
            0
        };
        if next.len() >= self.inner.limits.max_keys {
            // Nothing idle enough to make room; publish what was dropped (rarely anything).
            if evicted > 0 {
                self.inner.entries.store(Arc::new(next));
            }
            return Err(SetFull {
                what: self.inner.what,
                max: self.inner.limits.max_keys,
                idle: self.inner.limits.idle,
            });
        }
        let cache = (self.inner.start)(key);
        next.insert(
            Arc::from(key),
            Arc::new(Entry {
                cache: cache.clone(),
                last_used: AtomicU64::new(now),
                pinned: AtomicBool::new(pin),
                evicted: AtomicBool::new(false),
            }),
        );
        self.inner.entries.store(Arc::new(next));
        Ok(cache)
    }

    /// Drops the keys idle for longer than the limit; returns how many.
    pub fn evict_idle(&self) -> usize {
        let mut retired = self.write();
        let current = self.inner.entries.load_full();
        let mut next = Map::clone(&current);
        let evicted = self.evict_idle_from(&mut next, &mut retired, self.inner.now_ms());
        if evicted > 0 {
            self.inner.entries.store(Arc::new(next));
        }
        evicted
    }

    /// Removes idle entries from `map` (a copy, published by the caller), adding their counters
    /// to `retired`. Caller holds the write lock.
    fn evict_idle_from(&self, map: &mut Map<C>, retired: &mut CacheStats, now: u64) -> usize {
        let idle = u64::try_from(self.inner.limits.idle.as_millis()).unwrap_or(u64::MAX);
        let is_idle = |e: &Entry<C>| now.saturating_sub(e.last_used.load(Ordering::SeqCst)) >= idle;
        let before = map.len();
        map.retain(|_, e| {
            if e.pinned.load(Ordering::SeqCst) || !is_idle(e) {
                return true;
            }
            e.evicted.store(true, Ordering::SeqCst);
            // A lookup that touched it before seeing the mark keeps it.
            if !is_idle(e) {
                e.evicted.store(false, Ordering::SeqCst);
                return true;
            }
            add_counters(retired, &e.cache.stats());
            false
        });
        before - map.len()
    }

    /// Drops idle keys every `every` until the last clone of the set is gone.
    pub fn spawn_sweeper(&self, every: Duration) {
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { break };
                let evicted = CacheSet { inner }.evict_idle();
                if evicted > 0 {
                    tracing::info!(evicted, "dropped idle credential caches");
                }
            }
        });
    }

    /// Number of keys held.
    pub fn len(&self) -> usize {
        self.inner.entries.load().len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Counters summed over every key ever held (dropped ones included, so they never go
    /// down); `expires_in`: the soonest of the keys held; `last_error`: any of theirs.
    pub fn stats(&self) -> CacheStats {
        // Under the write lock, so no key moves from the map to the retired counters while
        // they are summed (it would be counted twice or not at all).
        let retired = self.write();
        let mut total = CacheStats {
            expires_in: None,
            last_error: None,
            ..retired.clone()
        };
        for entry in self.inner.entries.load().values() {
            let s = entry.cache.stats();
            add_counters(&mut total, &s);
            total.expires_in = match (total.expires_in, s.expires_in) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            total.last_error = total.last_error.or(s.last_error);
        }
        total
    }

    fn write(&self) -> MutexGuard<'_, CacheStats> {
        self.inner
            .write
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

fn add_counters(total: &mut CacheStats, s: &CacheStats) {
    total.hits += s.hits;
    total.waits += s.waits;
    total.stale_served += s.stale_served;
    total.unavailable += s.unavailable;
    total.refreshes += s.refreshes;
    total.refresh_errors += s.refresh_errors;
    total.invalidations += s.invalidations;
}

#[cfg(test)]
#[path = "cache_set_tests.rs"]
mod tests;

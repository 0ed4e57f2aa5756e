//! One [`CredentialCache`] per key (an Azure resource, a set of Google scopes), for providers
//! whose clients name what they want a token for.
//!
//! Each key gets the full cache behaviour (single flight, background refresh, serve-stale):
//! 1,000 cold requests for one resource make one exchange. Clients choose the keys, so the set
//! is bounded: at most `max_keys` at once, and a key nobody asked for during `idle` is dropped
//! (its refresh task stops with it), so a client cycling through made-up resources cannot make
//! the broker refresh tokens forever or grow without bound.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::cache::{CacheStats, CredentialCache};
use crate::provider::Expiring;

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

struct Entry<C> {
    cache: CredentialCache<C>,
    last_used: Instant,
    /// Configured ahead of any request: never dropped.
    pinned: bool,
}

/// Caches by key, started on first use. Clones share the set.
pub struct CacheSet<C> {
    inner: Arc<Inner<C>>,
}

struct Inner<C> {
    what: &'static str,
    start: Box<Start<C>>,
    limits: SetLimits,
    entries: Mutex<HashMap<String, Entry<C>>>,
    /// Counters of dropped keys, so the exported totals never go down.
    retired: Mutex<CacheStats>,
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
                entries: Mutex::new(HashMap::new()),
                retired: Mutex::new(CacheStats::default()),
            }),
        }
    }

    /// The cache of `key`, started now if it is new.
    pub fn get(&self, key: &str) -> Result<CredentialCache<C>, SetFull> {
        let now = Instant::now();
        let mut entries = self.lock();
        if let Some(entry) = entries.get_mut(key) {
            entry.last_used = now;
            return Ok(entry.cache.clone());
        }
        if entries.len() >= self.inner.limits.max_keys {
            self.evict_idle_locked(&mut entries, now);
        }
        if entries.len() >= self.inner.limits.max_keys {
            return Err(SetFull {
                what: self.inner.what,
                max: self.inner.limits.max_keys,
                idle: self.inner.limits.idle,
            });
        }
        let cache = (self.inner.start)(key);
        entries.insert(
            key.to_owned(),
            Entry {
                cache: cache.clone(),
                last_used: now,
                pinned: false,
            },
        );
        Ok(cache)
    }

    /// Starts `key` now (so its token is ready before the first request) and never drops it;
    /// pinned keys count towards the limit.
    pub fn pin(&self, key: &str) -> Result<CredentialCache<C>, SetFull> {
        let cache = self.get(key)?;
        if let Some(entry) = self.lock().get_mut(key) {
            entry.pinned = true;
        }
        Ok(cache)
    }

    /// Drops the keys idle for longer than the limit; returns how many.
    pub fn evict_idle(&self) -> usize {
        let mut entries = self.lock();
        self.evict_idle_locked(&mut entries, Instant::now())
    }

    fn evict_idle_locked(&self, entries: &mut HashMap<String, Entry<C>>, now: Instant) -> usize {
        let idle = self.inner.limits.idle;
        let before = entries.len();
        let mut retired = self
            .inner
            .retired
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        entries.retain(|_, e| {
            let keep = e.pinned || now.saturating_duration_since(e.last_used) < idle;
            if !keep {
                add_counters(&mut retired, &e.cache.stats());
            }
            keep
        });
        before - entries.len()
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
        self.lock().len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Counters summed over every key ever held (dropped ones included, so they never go
    /// down); `expires_in`: the soonest of the keys held; `last_error`: any of theirs.
    pub fn stats(&self) -> CacheStats {
        let caches: Vec<_> = self.lock().values().map(|e| e.cache.clone()).collect();
        let mut total = {
            let retired = self
                .inner
                .retired
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            CacheStats {
                expires_in: None,
                last_error: None,
                ..retired.clone()
            }
        };
        for cache in caches {
            let s = cache.stats();
            add_counters(&mut total, &s);
            total.expires_in = match (total.expires_in, s.expires_in) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            total.last_error = total.last_error.or(s.last_error);
        }
        total
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry<C>>> {
        self.inner
            .entries
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
}

#[cfg(test)]
#[path = "cache_set_tests.rs"]
mod tests;

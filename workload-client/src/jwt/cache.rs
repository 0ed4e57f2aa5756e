//! The per-audience JWT-SVID cache: the only way sidecars obtain JWT-SVIDs.
//!
//! Why: SPIRE's FetchJWTSVID can block for ~30 s once its own cached token is past half-life
//! (spiffe/spire#5994), while Envoy gives ext_authz 0.5 s in the Istio deployment we target
//! (`docs/protocols.md#fetchjwtsvid-blocking`). So a request path must never call the agent. Each
//! key (audience set + optional SPIFFE ID) gets one background task that is the *only* caller of
//! FetchJWTSVID for that key:
//!
//! - the first `get` for a key creates the entry and waits (bounded) for the task's first fetch;
//!   however many callers arrive together, there is one fetch ("single flight");
//! - after each success the task sleeps until half the token's remaining life (minus up to 10 %
//!   jitter, so a fleet started together does not refresh together) and fetches again;
//! - on failure it retries with jittered backoff while the still-valid token keeps being served;
//! - a key unused for `idle_eviction` is dropped instead of refreshed, so a client that called
//!   a thousand audiences once does not keep a thousand refresh loops alive;
//! - "still valid" compares the token's `exp` with the wall clock ([`Clock`]) at each `get`, and
//!   a refresh is due at half-life by the monotonic clock *or* by the wall clock, whichever
//!   comes first; the timer wakes at least every `recheck` (a minute) to look, because tokio's
//!   timers stop during a suspend while `exp` keeps approaching;
//! - while any key is cached, one shared FetchJWTBundles watcher follows the trust bundles:
//!   when a `kid` leaves its trust domain's bundle (SPIRE tainted or revoked the key) every
//!   cached token signed with it stops being handed out and is refetched at once, instead of
//!   being stamped on requests that validators already reject until its half-life refresh.
//!
//! Reading is lock-free: the entry map and each token live behind `ArcSwap`, so the hot path is
//! a few atomic loads and a hash lookup, with no await and no Workload API call.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use spiffe::{JwtBundleSet, JwtSvid, SpiffeId};
use tokio::sync::{Notify, watch};
use tokio::task::AbortHandle;
use tracing::Instrument;

use crate::backoff::{BackoffPolicy, jitter};
use crate::client::WorkloadApiClient;
use crate::clock::{self, Clock, SharedClock};
use crate::jwt::bundles::JwtBundleWatcher;

/// What a cached token is for: a non-empty, sorted, de-duplicated audience set and optionally
/// the SPIFFE ID to request (for workloads with several identities).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JwtKey {
    audiences: Arc<[String]>,
    spiffe_id: Option<SpiffeId>,
}

impl JwtKey {
    /// A key for these audiences (order and duplicates do not matter).
    pub fn new<I, S>(audiences: I) -> Result<Self, CacheError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut v: Vec<String> = audiences.into_iter().map(Into::into).collect();
        if v.iter().any(String::is_empty) || v.is_empty() {
            return Err(CacheError::EmptyAudience);
        }
        v.sort();
        v.dedup();
        Ok(Self {
            audiences: v.into(),
            spiffe_id: None,
        })
    }

    /// Requests tokens for this identity instead of the workload's default one.
    #[must_use]
    pub fn with_spiffe_id(mut self, id: SpiffeId) -> Self {
        self.spiffe_id = Some(id);
        self
    }

    /// The audiences, sorted.
    pub fn audiences(&self) -> &[String] {
        &self.audiences
    }

    /// The requested identity, if any.
    pub fn spiffe_id(&self) -> Option<&SpiffeId> {
        self.spiffe_id.as_ref()
    }
}

impl fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.audiences.join(","))?;
        if let Some(id) = &self.spiffe_id {
            write!(f, "@{id}")?;
        }
        Ok(())
    }
}

/// Why no token could be handed out.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// An audience list was empty or held an empty string.
    #[error("audience must be a non-empty list of non-empty strings")]
    EmptyAudience,
    /// There is no valid token and the agent did not provide one in time.
    #[error("no valid JWT-SVID available{}", .last_error.as_ref().map(|e| format!(": {e}")).unwrap_or_default())]
    Unavailable {
        /// The last fetch error, if a fetch failed.
        last_error: Option<String>,
    },
}

/// Tuning. Defaults suit SPIRE's 5-minute JWT TTL.
#[derive(Clone, Debug)]
pub struct CacheConfig {
    /// Refresh when this fraction of the remaining lifetime has passed (0.5: half-life).
    pub refresh_fraction: f64,
    /// Up to this fraction earlier, at random.
    pub refresh_jitter: f64,
    /// Never hand out a token with less than this left: the receiver must still accept it.
    pub expiry_margin: Duration,
    /// Drop keys nobody asked for in this long.
    pub idle_eviction: Duration,
    /// Retry schedule for fetches the agent answered with an error.
    pub retry: BackoffPolicy,
    /// Retry schedule while the agent is unreachable (socket missing, refused): local
    /// connects are cheap, and a token should follow within a second of the agent appearing.
    pub reconnect: BackoffPolicy,
    /// A sleeping refresh timer wakes at least this often to compare `exp` with the wall
    /// clock (tokio's timers do not see a suspend or a clock step).
    pub recheck: Duration,
    /// Watch FetchJWTBundles while keys are cached and refetch tokens whose signing key left
    /// the bundle.
    pub watch_bundles: bool,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            refresh_fraction: 0.5,
            refresh_jitter: 0.1,
            expiry_margin: Duration::from_secs(1),
            idle_eviction: Duration::from_secs(15 * 60),
            retry: BackoffPolicy {
                initial: Duration::from_millis(100),
                max: Duration::from_secs(5),
                multiplier: 2.0,
            },
            reconnect: BackoffPolicy::RECONNECT,
            recheck: clock::RECHECK_INTERVAL,
            watch_bundles: true,
        }
    }
}

/// Counters for metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// `get` calls served from a valid cached token.
    pub hits: u64,
    /// `get` calls that had to wait for a fetch.
    pub misses: u64,
    /// Successful FetchJWTSVID calls.
    pub fetches: u64,
    /// Failed FetchJWTSVID calls.
    pub fetch_errors: u64,
    /// Keys evicted for idleness.
    pub evictions: u64,
    /// Cached tokens dropped and refetched because their signing key left the bundle.
    pub key_removals: u64,
    /// Cached tokens dropped because the agent said this workload has no identity any more.
    pub withdrawals: u64,
    /// One line per cached key.
    pub entries: Vec<EntryStatus>,
}

/// The state of one key, for metrics (never the token).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryStatus {
    /// The key.
    pub key: JwtKey,
    /// Time until the cached token expires, if there is one.
    pub expires_in: Option<Duration>,
    /// The last fetch error, if the last fetch failed.
    pub last_error: Option<String>,
}

/// The cache. Clones share state; background tasks stop when the last clone is dropped.
#[derive(Clone)]
pub struct JwtSvidCache {
    inner: Arc<Inner>,
}

struct Inner {
    client: WorkloadApiClient,
    config: CacheConfig,
    clock: SharedClock,
    /// The shared JWT bundle watcher's task, running while the map has entries.
    bundle_watch: Mutex<Option<AbortHandle>>,
    entries: ArcSwap<HashMap<JwtKey, Arc<Entry>>>,
    /// Serialises inserts and removals (rare); reads never take it.
    write: Mutex<()>,
    epoch: Instant,
    hits: AtomicU64,
    misses: AtomicU64,
    fetches: AtomicU64,
    fetch_errors: AtomicU64,
    evictions: AtomicU64,
    key_removals: AtomicU64,
    withdrawals: AtomicU64,
}

struct Entry {
    key: JwtKey,
    token: ArcSwapOption<JwtSvid>,
    /// The cached token, once its signing key left the bundle: no longer handed out.
    revoked: ArcSwapOption<JwtSvid>,
    /// Fetch now, whatever the schedule (the token's key left the bundle).
    refetch: Notify,
    /// Milliseconds since `Inner::epoch` of the last `get`.
    last_used: AtomicU64,
    pinned: AtomicBool,
    /// Removed from the map: a caller holding it must look the key up again.
    evicted: AtomicBool,
    /// A FetchJWTSVID call for this key is running.
    in_flight: AtomicBool,
    /// A caller found no usable token.
    wake: Notify,
    /// Bumped after every fetch attempt, success or failure.
    attempts: watch::Sender<u64>,
    last_error: Mutex<Option<String>>,
    task: OnceLock<AbortHandle>,
}

impl fmt::Debug for JwtSvidCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtSvidCache")
            .field("endpoint", &self.inner.client.endpoint())
            .field("keys", &self.inner.entries.load().len())
            .finish_non_exhaustive()
    }
}

// === impl JwtSvidCache ===

impl JwtSvidCache {
    /// A cache fetching from `client`. Must be called inside a Tokio runtime.
    pub fn new(client: WorkloadApiClient, config: CacheConfig) -> Self {
        Self::with_clock(client, config, clock::wall_clock())
    }

    /// [`JwtSvidCache::new`] reading wall-clock time from `clock` (tests step it).
    pub fn with_clock(client: WorkloadApiClient, config: CacheConfig, clock: SharedClock) -> Self {
        Self {
            inner: Arc::new(Inner {
                client,
                config,
                clock,
                bundle_watch: Mutex::new(None),
                entries: ArcSwap::from_pointee(HashMap::new()),
                write: Mutex::new(()),
                epoch: Instant::now(),
                hits: AtomicU64::new(0),
                misses: AtomicU64::new(0),
                fetches: AtomicU64::new(0),
                fetch_errors: AtomicU64::new(0),
                evictions: AtomicU64::new(0),
                key_removals: AtomicU64::new(0),
                withdrawals: AtomicU64::new(0),
            }),
        }
    }

    /// Starts fetching `key` now and keeps it fresh forever (never evicted): for the audiences
    /// a sidecar is configured with, so the first request finds a token.
    pub fn pin(&self, key: &JwtKey) {
        loop {
            let entry = self.entry(key);
            entry.pinned.store(true, Ordering::SeqCst);
            // Evicted between the lookup and the store: pin the fresh entry instead.
            if !entry.evicted.load(Ordering::SeqCst) {
                return;
            }
        }
    }

    /// A valid token for `key`, waiting at most `max_wait` if none is cached (first use, or the
    /// agent has been failing past expiry). Never calls the agent itself.
    pub async fn get(&self, key: &JwtKey, max_wait: Duration) -> Result<Arc<JwtSvid>, CacheError> {
        let entry = self.live_entry(key);
        if let Some(token) = entry.usable(&self.inner) {
            self.inner.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(token);
        }
        self.inner.misses.fetch_add(1, Ordering::Relaxed);
        // Subscribe before re-checking, so an attempt that completes in between is not missed.
        let mut attempts = entry.attempts.subscribe();
        if let Some(token) = entry.usable(&self.inner) {
            return Ok(token);
        }
        entry.wake.notify_one();
        // The agent answered the last attempt with an error and the next one is scheduled by
        // backoff: fail now rather than hold the request until Envoy's own timeout.
        if !entry.in_flight.load(Ordering::SeqCst) && entry.last_error().is_some() {
            return Err(CacheError::Unavailable {
                last_error: entry.last_error(),
            });
        }
        // Wait for the outcome of the attempt in flight (shared by every waiting caller).
        let _ = tokio::time::timeout(max_wait, attempts.changed()).await;
        entry
            .usable(&self.inner)
            .ok_or_else(|| CacheError::Unavailable {
                last_error: entry.last_error(),
            })
    }

    /// The cached token for `key` if it is valid now, without creating the entry, counting a
    /// hit or waking the refresher: for readiness probes and metrics.
    pub fn peek(&self, key: &JwtKey) -> Option<Arc<JwtSvid>> {
        self.inner
            .entries
            .load()
            .get(key)
            .and_then(|e| e.usable(&self.inner))
    }

    /// Wakes whenever a fetch attempt for `key` completes (e.g. to push refreshed tokens over
    /// SDS). Creates the entry if needed; while the receiver lives the key is never evicted.
    pub fn subscribe(&self, key: &JwtKey) -> watch::Receiver<u64> {
        self.live_entry(key).attempts.subscribe()
    }

    /// The entry for `key`, touched (so it is not evicted) and known to still be in the map.
    fn live_entry(&self, key: &JwtKey) -> Arc<Entry> {
        loop {
            let entry = self.entry(key);
            entry.touch(&self.inner);
            // Eviction re-reads `last_used` under the write lock, so after this check the task
            // sees our touch and keeps the entry; an entry already evicted is replaced.
            if !entry.evicted.load(Ordering::SeqCst) {
                return entry;
            }
        }
    }

    /// Counters and per-key state.
    pub fn stats(&self) -> CacheStats {
        let now = self.inner.clock.now();
        let entries = self
            .inner
            .entries
            .load()
            .values()
            .map(|e| EntryStatus {
                key: e.key.clone(),
                expires_in: e
                    .token
                    .load()
                    .as_ref()
                    .map(|t| Duration::try_from(t.expiry() - now).unwrap_or(Duration::ZERO)),
                last_error: e.last_error(),
            })
            .collect();
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CacheStats {
            hits: load(&self.inner.hits),
            misses: load(&self.inner.misses),
            fetches: load(&self.inner.fetches),
            fetch_errors: load(&self.inner.fetch_errors),
            evictions: load(&self.inner.evictions),
            key_removals: load(&self.inner.key_removals),
            withdrawals: load(&self.inner.withdrawals),
            entries,
        }
    }

    /// The entry for `key`, creating it and its refresh task on first use.
    fn entry(&self, key: &JwtKey) -> Arc<Entry> {
        if let Some(e) = self.inner.entries.load().get(key) {
            return e.clone();
        }
        let _guard = self
            .inner
            .write
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Double-check under the write lock: another caller may have inserted it.
        let current = self.inner.entries.load_full();
        if let Some(e) = current.get(key) {
            return e.clone();
        }
        let entry = Arc::new(Entry {
            key: key.clone(),
            token: ArcSwapOption::empty(),
            revoked: ArcSwapOption::empty(),
            refetch: Notify::new(),
            last_used: AtomicU64::new(self.inner.now_ms()),
            pinned: AtomicBool::new(false),
            evicted: AtomicBool::new(false),
            in_flight: AtomicBool::new(true), // the task starts with a fetch
            wake: Notify::new(),
            attempts: watch::channel(0).0,
            last_error: Mutex::new(None),
            task: OnceLock::new(),
        });
        let mut next = HashMap::clone(&current);
        next.insert(key.clone(), entry.clone());
        self.inner.entries.store(Arc::new(next));
        if current.is_empty() {
            self.inner.start_bundle_watch(&self.inner);
        }
        let span = tracing::info_span!("jwt_cache", key = ?key);
        let task =
            tokio::spawn(refresh_loop(Arc::downgrade(&self.inner), entry.clone()).instrument(span));
        let _ = entry.task.set(task.abort_handle());
        entry
    }
}

impl Inner {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Removes `entry` if it is still idle and unpinned, deciding under the write lock so a
    /// concurrent `get`/`pin` either lands before (and keeps it) or finds it evicted (and
    /// creates a fresh one).
    fn evict_if_idle(&self, entry: &Entry, idle_after: Duration) -> bool {
        let _guard = self
            .write
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let idle_ms = self
            .now_ms()
            .saturating_sub(entry.last_used.load(Ordering::SeqCst));
        // A key someone subscribed to (an SDS stream pushing its refreshes) is in use for as
        // long as the subscription lives, however long since the last `get`.
        if entry.pinned.load(Ordering::SeqCst)
            || entry.attempts.receiver_count() > 0
            || Duration::from_millis(idle_ms) < idle_after
        {
            return false;
        }
        entry.evicted.store(true, Ordering::SeqCst);
        let mut next = HashMap::clone(&self.entries.load_full());
        next.remove(&entry.key);
        let empty = next.is_empty();
        self.entries.store(Arc::new(next));
        if empty {
            self.stop_bundle_watch();
        }
        true
    }

    /// Starts the one bundle watcher (called under the write lock when the first key arrives).
    fn start_bundle_watch(&self, this: &Arc<Inner>) {
        if !self.config.watch_bundles {
            return;
        }
        let mut slot = self
            .bundle_watch
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if slot.is_none() {
            let watcher = JwtBundleWatcher::jwt_bundles(self.client.clone());
            let task = tokio::spawn(
                watch_bundles(Arc::downgrade(this), watcher)
                    .instrument(tracing::info_span!("jwt_cache_bundles")),
            );
            *slot = Some(task.abort_handle());
        }
    }

    /// Stops the bundle watcher (called under the write lock when the last key is evicted):
    /// nothing cached, nothing to revoke, no stream held open on the agent.
    fn stop_bundle_watch(&self) {
        if let Some(task) = self
            .bundle_watch
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        {
            task.abort();
        }
    }

    /// The agent says this workload has no identity any more: no cached token is handed out
    /// again, and each key refetches at once (which fails until an entry exists again).
    fn withdraw_all(&self) {
        for entry in self.entries.load().values() {
            if entry.token.swap(None).is_some() {
                tracing::warn!(
                    key = ?entry.key,
                    "the agent says this workload has no identity (its registration entry was deleted?): dropping the cached JWT-SVID"
                );
                self.withdrawals.fetch_add(1, Ordering::Relaxed);
            }
            entry.refetch.notify_one();
        }
    }

    /// Drops and refetches every cached token whose `kid` was in its trust domain's bundle in
    /// `before` and is not in `after`.
    fn revoke_removed_keys(&self, before: &JwtBundleSet, after: &JwtBundleSet) {
        let published = |set: &JwtBundleSet, token: &JwtSvid| {
            set.get_ref(token.spiffe_id().trust_domain())
                .is_some_and(|b| b.find_jwt_authority(token.key_id()).is_some())
        };
        for entry in self.entries.load().values() {
            let Some(token) = entry.token.load_full() else {
                continue;
            };
            if published(before, &token) && !published(after, &token) {
                tracing::info!(
                    key = ?entry.key,
                    kid = token.key_id(),
                    trust_domain = %token.spiffe_id().trust_domain(),
                    "the cached JWT-SVID's signing key left the bundle; refetching now"
                );
                entry.revoked.store(Some(token));
                self.key_removals.fetch_add(1, Ordering::Relaxed);
                entry.refetch.notify_one();
            }
        }
    }
}

/// Follows the JWT bundles while keys are cached; see [`Inner::revoke_removed_keys`]. Only a
/// key that *leaves* a bundle counts: a token whose key the watcher has not seen yet (fetched
/// just before the bundle update arrived) is not refetched in a loop.
async fn watch_bundles(inner: Weak<Inner>, watcher: JwtBundleWatcher) {
    let mut updates = watcher.subscribe();
    let mut status = watcher.subscribe_status();
    let mut previous = updates.borrow_and_update().clone();
    let mut withdrawn = false;
    loop {
        tokio::select! {
            changed = updates.changed() => {
                if changed.is_err() {
                    return;
                }
                let Some(current) = updates.borrow_and_update().clone() else {
                    continue;
                };
                let Some(cache) = inner.upgrade() else {
                    return;
                };
                if let Some(before) = &previous {
                    cache.revoke_removed_keys(before, &current);
                }
                previous = Some(current);
            }
            changed = status.changed() => {
                if changed.is_err() {
                    return;
                }
                // The agent ends the bundle stream with `PermissionDenied` as soon as this
                // workload's entry is deleted: drop the tokens now rather than at their next
                // refresh (up to half their life away).
                let now = status.borrow_and_update().withdrawn;
                if now && !withdrawn {
                    let Some(cache) = inner.upgrade() else {
                        return;
                    };
                    cache.withdraw_all();
                }
                withdrawn = now;
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop_bundle_watch();
        for entry in self.entries.load().values() {
            if let Some(task) = entry.task.get() {
                task.abort();
            }
        }
    }
}

// === impl Entry ===

impl Entry {
    fn touch(&self, inner: &Inner) {
        self.last_used.store(inner.now_ms(), Ordering::SeqCst);
    }

    /// The cached token if it has more than the expiry margin left by the wall clock now, and
    /// its signing key is still in the bundle.
    fn usable(&self, inner: &Inner) -> Option<Arc<JwtSvid>> {
        let token = self.token.load_full()?;
        if self
            .revoked
            .load()
            .as_ref()
            .is_some_and(|r| Arc::ptr_eq(r, &token))
        {
            return None;
        }
        (remaining(&*inner.clock, &token) > inner.config.expiry_margin).then_some(token)
    }

    fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn set_last_error(&self, e: Option<String>) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = e;
    }
}

fn remaining(clock: &dyn Clock, token: &JwtSvid) -> Duration {
    clock::remaining_until(clock, token.expiry())
}

/// Evicts `entry` if idle; true when it is gone (or the cache is), ending its task.
fn evict(inner: &Weak<Inner>, entry: &Entry, config: &CacheConfig) -> bool {
    let Some(cache) = inner.upgrade() else {
        return true;
    };
    if cache.evict_if_idle(entry, config.idle_eviction) {
        tracing::debug!("evicted idle JWT-SVID key");
        cache.evictions.fetch_add(1, Ordering::Relaxed);
        return true;
    }
    false
}

/// The one task allowed to call FetchJWTSVID for `entry.key`.
async fn refresh_loop(inner: Weak<Inner>, entry: Arc<Entry>) {
    let Some((client, config, clock)) = inner
        .upgrade()
        .map(|i| (i.client.clone(), i.config.clone(), i.clock.clone()))
    else {
        return;
    };
    let mut backoff = config.retry.start();
    let mut reconnect = config.reconnect.start();
    loop {
        entry.in_flight.store(true, Ordering::SeqCst);
        let result = client
            .fetch_jwt_svid(entry.key.audiences(), entry.key.spiffe_id())
            .await;
        let Some(cache) = inner.upgrade() else { return };
        let ok = result.is_ok();
        let next = match result {
            Ok(token) => {
                backoff.reset();
                reconnect.reset();
                let life = remaining(&*clock, &token);
                tracing::debug!(expires_in = ?life, spiffe_id = %token.spiffe_id(), "JWT-SVID refreshed");
                entry.token.store(Some(Arc::new(token)));
                entry.set_last_error(None);
                cache.fetches.fetch_add(1, Ordering::Relaxed);
                // Half the remaining life, up to 10 % earlier; never a hot loop on a token
                // that is (nearly) expired on arrival, e.g. under clock skew.
                jitter(
                    life.mul_f64(config.refresh_fraction.clamp(0.0, 1.0)),
                    config.refresh_jitter,
                )
                .max(Duration::from_millis(100))
            }
            Err(e) => {
                let unreachable = e.is_unreachable();
                if e.is_no_identity() && entry.token.swap(None).is_some() {
                    // No identity for this workload (entry deleted): the token must not be
                    // stamped on requests any more.
                    tracing::warn!(error = %e, "the agent says this workload has no identity: dropping the cached JWT-SVID");
                    cache.withdrawals.fetch_add(1, Ordering::Relaxed);
                }
                let message = e.to_string();
                if entry.last_error().as_deref() != Some(message.as_str()) {
                    let serving = entry.usable(&cache).is_some();
                    tracing::warn!(error = %message, serving_cached_token = serving, "JWT-SVID fetch failed");
                }
                entry.set_last_error(Some(message));
                cache.fetch_errors.fetch_add(1, Ordering::Relaxed);
                if unreachable {
                    reconnect.next_delay()
                } else {
                    backoff.next_delay()
                }
            }
        };
        // Due after `next` by the monotonic clock or by the wall clock, whichever comes first:
        // a suspend stops the first, a backward step holds back the second. Taken before the
        // subscribers hear of this attempt, so a clock step after it always counts.
        let mono_due = tokio::time::Instant::now() + next;
        let wall_due = clock.now() + next;
        entry.in_flight.store(false, Ordering::SeqCst);
        entry.attempts.send_modify(|n| *n += 1);
        drop(cache);

        let mut check_idle_at = tokio::time::Instant::now() + config.idle_eviction;
        loop {
            let now = tokio::time::Instant::now();
            if now >= mono_due || clock.now() >= wall_due {
                break;
            }
            let wake_at = mono_due.min(now + config.recheck);
            tokio::select! {
                () = tokio::time::sleep_until(wake_at) => {}
                // Wake at least once per idle period, so an unused key with a long-lived token
                // is evicted on time rather than at its next refresh.
                () = tokio::time::sleep_until(check_idle_at), if check_idle_at < wake_at => {
                    if evict(&inner, &entry, &config) {
                        return;
                    }
                    check_idle_at = tokio::time::Instant::now() + config.idle_eviction;
                }
                () = entry.wake.notified() => {
                    // A caller found no usable token. Fetch now only if the last attempt
                    // succeeded (the token simply ran out early); after a failure the backoff
                    // schedule governs, so a crowd of callers cannot hammer a failing agent.
                    let usable = inner.upgrade().and_then(|c| entry.usable(&c));
                    if ok && usable.is_none() {
                        break;
                    }
                }
                // The token's signing key left the bundle: it is refused everywhere already.
                () = entry.refetch.notified() => break,
            }
        }
        if evict(&inner, &entry, &config) {
            return;
        }
    }
}

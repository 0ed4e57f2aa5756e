//! The credential cache: one background task is the only caller of the provider.
//!
//! Why (`docs/protocols.md#aws-refresh-windows`): the SDKs refresh credentials when fewer than 15
//! minutes remain (botocore: advisory < 15 min, mandatory < 10 min). Credentials handed out with
//! less than that make every client call the broker on every request, and a broker that calls STS
//! per request melts under a fleet. So:
//!
//! - **Refresh early, in the background.** After each success the task sleeps until
//!   `refresh_margin` (25 min) before expiry, or half-life for sessions shorter than twice
//!   that, minus up to 10 % jitter so a fleet started together does not refresh together.
//! - **Hand out only fresh credentials**: more than `serve_margin` (15 min) left, or 40 % of
//!   the lifetime for short sessions. Inside that window a request waits (briefly) for the
//!   refresh in flight.
//! - **Unless refreshing fails**: on any error the still-valid credentials keep being served
//!   ("stale") until `expiry_margin` before expiry, while the task retries with jittered
//!   backoff. Clients keep working through an STS outage of up to ~15 minutes past the
//!   refresh window.
//! - **Single flight**: requests never call the provider. A request that finds nothing fresh
//!   wakes the task and waits (bounded) for the outcome of the one attempt, shared by all
//!   waiting requests: 1,000 cold requests cause one STS call.
//! - **Errors pick the schedule** ([`ErrorKind`]): identity errors retry fast (local agent),
//!   transient ones with backoff; a rejection (`AccessDenied`) is not retried on a timer at
//!   all: after a cool-down the next request triggers one new attempt, so fixing the role's
//!   trust policy needs no restart but a misconfigured broker does not hammer STS.
//!
//! - **Time left is read at the moment of each decision**, as the smaller of two readings: the
//!   provider's expiration against the wall clock ([`Clock`], injectable), and the lifetime at
//!   arrival counted down on the monotonic clock. The wall clock catches a suspend (monotonic
//!   time stops while STS's clock runs on: a VM asleep for 2 h must not wake up serving
//!   credentials that expired 70 minutes earlier) and forward steps; the monotonic clock catches
//!   a backward step (the credentials do not live longer because the clock went back). The
//!   refresh timer sleeps at most `recheck` (a minute) at a time, so after a resume it notices
//!   within a minute that the refresh point has passed.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use futures_util::FutureExt as _;
use time::OffsetDateTime;
use tokio::sync::{Notify, watch};
use tokio::task::AbortHandle;
use tokio::time::Instant;
use workload_client::backoff::{BackoffPolicy, jitter};
use workload_client::clock::{self, SharedClock};

use crate::provider::{CredentialProvider, ErrorKind, Expiring, ProviderError};

/// Tuning. Defaults follow the SDK refresh windows (`docs/protocols.md#aws-refresh-windows`).
#[derive(Clone, Debug)]
pub struct CacheConfig {
    /// Refresh when this much lifetime remains (at most half the lifetime).
    pub refresh_margin: Duration,
    /// Hand out freely only with more than this left (at most 40 % of the lifetime).
    pub serve_margin: Duration,
    /// Never hand out with less than this left (at most 10 % of the lifetime): the client
    /// still needs time to use them.
    pub expiry_margin: Duration,
    /// Refresh up to this fraction earlier, at random.
    pub refresh_jitter: f64,
    /// Retry schedule for transient provider errors (throttling, 5xx, transport).
    pub retry: BackoffPolicy,
    /// Retry schedule while no JWT-SVID is available (local agent: cheap, retry soon).
    pub identity_retry: BackoffPolicy,
    /// After a rejection, no new attempt before this, and then only when a client asks.
    pub rejected_cooldown: Duration,
    /// How long a request holding stale-but-valid credentials waits for a refresh in flight
    /// before answering with them.
    pub stale_wait: Duration,
    /// The refresh timer wakes at least this often to compare the expiration with the wall
    /// clock (a suspend or clock step does not move the monotonic timers).
    pub recheck: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            refresh_margin: Duration::from_secs(25 * 60),
            serve_margin: Duration::from_secs(15 * 60),
            expiry_margin: Duration::from_secs(60),
            refresh_jitter: 0.1,
            retry: BackoffPolicy {
                initial: Duration::from_secs(1),
                max: Duration::from_secs(20),
                multiplier: 2.0,
            },
            identity_retry: BackoffPolicy {
                initial: Duration::from_millis(200),
                max: Duration::from_secs(2),
                multiplier: 2.0,
            },
            rejected_cooldown: Duration::from_secs(30),
            stale_wait: Duration::from_secs(2),
            recheck: clock::RECHECK_INTERVAL,
        }
    }
}

impl CacheConfig {
    /// Time left at which the background refresh starts.
    pub fn refresh_left(&self, lifetime: Duration) -> Duration {
        self.refresh_margin.min(lifetime / 2)
    }

    /// Below this much time left, credentials are handed out only while refreshing fails.
    pub fn serve_min(&self, lifetime: Duration) -> Duration {
        self.serve_margin.min(lifetime.mul_f64(0.4))
    }

    /// Below this much time left, credentials are never handed out.
    pub fn expiry_min(&self, lifetime: Duration) -> Duration {
        self.expiry_margin.min(lifetime / 10)
    }
}

/// Credentials held by the cache, with their expiration and the monotonic instant they
/// arrived.
pub struct Held<C> {
    credentials: C,
    expiration: OffsetDateTime,
    received: Instant,
    lifetime: Duration,
    clock: SharedClock,
}

impl<C: Expiring> Held<C> {
    fn new(credentials: C, clock: SharedClock) -> Result<Self, ProviderError> {
        let expiration = credentials.expiration();
        let lifetime = clock::remaining_until(&*clock, expiration);
        if lifetime.is_zero() {
            return Err(ProviderError::new(
                ErrorKind::Transient,
                "credentials arrived already expired (clock skew between this node and the provider?)",
            ));
        }
        Ok(Self {
            credentials,
            expiration,
            received: Instant::now(),
            lifetime,
            clock,
        })
    }
}

impl<C> Held<C> {
    /// The credentials.
    pub fn credentials(&self) -> &C {
        &self.credentials
    }

    /// Time until they expire, read now: the smaller of the expiration against the wall clock
    /// (right after a suspend or a forward step) and the arrival lifetime counted down on the
    /// monotonic clock (right after a backward step).
    pub fn remaining(&self) -> Duration {
        let wall = clock::remaining_until(&*self.clock, self.expiration);
        let monotonic = self.lifetime.saturating_sub(self.received.elapsed());
        wall.min(monotonic)
    }

    /// Their lifetime when they arrived.
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }
}

impl<C: fmt::Debug> fmt::Debug for Held<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Held")
            .field("credentials", &self.credentials)
            .field("remaining", &self.remaining())
            .finish()
    }
}

/// Why no credentials could be handed out.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// No valid credentials, and none arrived in time.
    #[error("{}", match .last_error {
        Some(e) => format!("no valid credentials: {e}"),
        None => "no valid credentials yet: the first attempt is still in progress".to_owned(),
    })]
    Unavailable {
        /// The last attempt's error, if the last attempt failed.
        last_error: Option<ProviderError>,
    },
}

/// Counters and state for metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Requests answered from fresh credentials.
    pub hits: u64,
    /// Requests that waited for an attempt and got fresh credentials.
    pub waits: u64,
    /// Requests answered with stale-but-valid credentials.
    pub stale_served: u64,
    /// Requests with no valid credentials to answer.
    pub unavailable: u64,
    /// Successful attempts.
    pub refreshes: u64,
    /// Failed attempts.
    pub refresh_errors: u64,
    /// Held credentials dropped before their expiry because the issuer refused them.
    pub invalidations: u64,
    /// Time left on the held credentials.
    pub expires_in: Option<Duration>,
    /// The last attempt's error, if it failed.
    pub last_error: Option<ProviderError>,
}

/// The cache. Clones share state; the refresh task stops when the last clone is dropped.
pub struct CredentialCache<C> {
    handle: Arc<Handle<C>>,
}

impl<C> Clone for CredentialCache<C> {
    fn clone(&self) -> Self {
        Self {
            handle: self.handle.clone(),
        }
    }
}

impl<C> fmt::Debug for CredentialCache<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialCache")
            .field("provider", &self.handle.provider)
            .finish_non_exhaustive()
    }
}

struct Handle<C> {
    shared: Arc<Shared<C>>,
    provider: &'static str,
    task: AbortHandle,
}

impl<C> Drop for Handle<C> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Shared<C> {
    config: CacheConfig,
    clock: SharedClock,
    current: ArcSwapOption<Held<C>>,
    /// An attempt is running.
    in_flight: AtomicBool,
    /// The task waits for a request before its next attempt (after a rejection).
    awaiting_demand: AtomicBool,
    last_error: ArcSwapOption<ProviderError>,
    /// A request found nothing fresh.
    wake: Notify,
    /// Bumped after every attempt, success or failure.
    attempts: watch::Sender<u64>,
    hits: AtomicU64,
    waits: AtomicU64,
    stale_served: AtomicU64,
    unavailable: AtomicU64,
    refreshes: AtomicU64,
    refresh_errors: AtomicU64,
    invalidations: AtomicU64,
}

// === impl CredentialCache ===

impl<C: Expiring + Send + Sync + 'static> CredentialCache<C> {
    /// Starts the refresh task (its first attempt begins at once). Must be called inside a
    /// Tokio runtime.
    pub fn start<P>(provider: P, config: CacheConfig) -> Self
    where
        P: CredentialProvider<Credentials = C>,
    {
        Self::start_with_clock(provider, config, clock::wall_clock())
    }

    /// [`CredentialCache::start`] reading wall-clock time from `clock` (tests step it).
    pub fn start_with_clock<P>(provider: P, config: CacheConfig, clock: SharedClock) -> Self
    where
        P: CredentialProvider<Credentials = C>,
    {
        let shared = Arc::new(Shared {
            config,
            clock,
            current: ArcSwapOption::empty(),
            in_flight: AtomicBool::new(true), // the task starts with an attempt
            awaiting_demand: AtomicBool::new(false),
            last_error: ArcSwapOption::empty(),
            wake: Notify::new(),
            attempts: watch::channel(0).0,
            hits: AtomicU64::new(0),
            waits: AtomicU64::new(0),
            stale_served: AtomicU64::new(0),
            unavailable: AtomicU64::new(0),
            refreshes: AtomicU64::new(0),
            refresh_errors: AtomicU64::new(0),
            invalidations: AtomicU64::new(0),
        });
        let name = provider.name();
        let span = tracing::info_span!("credentials", provider = name);
        let task = tokio::spawn(tracing::Instrument::instrument(
            refresh_loop(shared.clone(), provider),
            span,
        ));
        Self {
            handle: Arc::new(Handle {
                shared,
                provider: name,
                task: task.abort_handle(),
            }),
        }
    }

    /// Credentials to hand out: fresh ones at once; otherwise waits at most `max_wait` for the
    /// attempt in flight (shared by every waiting caller), then falls back to still-valid
    /// credentials. Never calls the provider itself.
    pub async fn get(&self, max_wait: Duration) -> Result<Arc<Held<C>>, CacheError> {
        let s = &self.handle.shared;
        if let Some(held) = s.fresh() {
            s.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(held);
        }
        // Subscribe before re-checking, so an attempt finishing in between is not missed.
        let mut attempts = s.attempts.subscribe();
        if let Some(held) = s.fresh() {
            s.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(held);
        }
        s.wake.notify_one();
        let wait = if s.valid().is_some() {
            max_wait.min(s.config.stale_wait)
        } else {
            max_wait
        };
        let deadline = Instant::now() + wait;
        // Wait only while an attempt is running or about to run; after a failure the retry
        // schedule governs and waiting would only hold the client.
        while s.attempt_coming() {
            match tokio::time::timeout_at(deadline, attempts.changed()).await {
                Ok(Ok(())) => {
                    if let Some(held) = s.fresh() {
                        s.waits.fetch_add(1, Ordering::Relaxed);
                        return Ok(held);
                    }
                }
                Ok(Err(_)) | Err(_) => break,
            }
        }
        if let Some(held) = s.valid() {
            s.stale_served.fetch_add(1, Ordering::Relaxed);
            return Ok(held);
        }
        s.unavailable.fetch_add(1, Ordering::Relaxed);
        Err(CacheError::Unavailable {
            last_error: s.last_error.load_full().map(|e| (*e).clone()),
        })
    }

    /// The held credentials if they may be handed out now (fresh, or stale while refreshing
    /// fails), without waking anything: for readiness.
    pub fn peek(&self) -> Option<Arc<Held<C>>> {
        self.handle.shared.valid()
    }

    /// Drops `held` if it is still what the cache hands out, because the issuer refused it
    /// before its expiry (revoked behind the broker's back), and wakes the refresh task: the
    /// next request waits for new credentials instead of getting the refused ones, and
    /// readiness drops until they arrive. Returns whether `held` was dropped; credentials
    /// already replaced are left alone, so many requests refused at once cause one refresh.
    pub fn invalidate(&self, held: &Arc<Held<C>>) -> bool {
        let s = &self.handle.shared;
        let previous = s.current.compare_and_swap(&Some(held.clone()), None);
        let dropped = previous.as_ref().is_some_and(|p| Arc::ptr_eq(p, held));
        if dropped {
            s.invalidations.fetch_add(1, Ordering::Relaxed);
            s.wake.notify_one();
        }
        dropped
    }

    /// Counters and state.
    pub fn stats(&self) -> CacheStats {
        let s = &self.handle.shared;
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CacheStats {
            hits: load(&s.hits),
            waits: load(&s.waits),
            stale_served: load(&s.stale_served),
            unavailable: load(&s.unavailable),
            refreshes: load(&s.refreshes),
            refresh_errors: load(&s.refresh_errors),
            invalidations: load(&s.invalidations),
            expires_in: s.current.load().as_ref().map(|h| h.remaining()),
            last_error: s.last_error.load_full().map(|e| (*e).clone()),
        }
    }
}

// === impl Shared ===

impl<C> Shared<C> {
    /// Held credentials with more than the serve margin left.
    fn fresh(&self) -> Option<Arc<Held<C>>> {
        let held = self.current.load_full()?;
        (held.remaining() > self.config.serve_min(held.lifetime)).then_some(held)
    }

    /// Held credentials with more than the expiry margin left.
    fn valid(&self) -> Option<Arc<Held<C>>> {
        let held = self.current.load_full()?;
        (held.remaining() > self.config.expiry_min(held.lifetime)).then_some(held)
    }

    /// Whether an attempt is running, or will run as soon as the task sees the wake-up.
    fn attempt_coming(&self) -> bool {
        self.in_flight.load(Ordering::SeqCst)
            || self.awaiting_demand.load(Ordering::SeqCst)
            || self.last_error.load().is_none()
    }
}

/// When the refresh task makes its next attempt.
#[derive(Clone, Copy, Debug)]
enum Next {
    /// When the held credentials have this much time left (read at each check).
    WhenLeft { left: Duration, not_before: Instant },
    /// At this monotonic instant (retry schedules: short, so monotonic is fine).
    At(Instant),
}

impl Next {
    /// How long until the next attempt is due; `None`: due now.
    fn wait<C>(self, shared: &Shared<C>) -> Option<Duration> {
        let now = Instant::now();
        let wait = match self {
            Self::At(at) => at.saturating_duration_since(now),
            Self::WhenLeft { left, not_before } => {
                let remaining = shared
                    .current
                    .load()
                    .as_ref()
                    .map_or(Duration::ZERO, |h| h.remaining());
                remaining
                    .saturating_sub(left)
                    .max(not_before.saturating_duration_since(now))
            }
        };
        (!wait.is_zero()).then_some(wait)
    }
}

/// The one task allowed to call the provider.
async fn refresh_loop<P: CredentialProvider>(shared: Arc<Shared<P::Credentials>>, provider: P) {
    let config = shared.config.clone();
    let mut retry = config.retry.start();
    let mut identity = config.identity_retry.start();
    loop {
        shared.in_flight.store(true, Ordering::SeqCst);
        shared.awaiting_demand.store(false, Ordering::SeqCst);
        // A panic inside the provider (the SDK, say) must not kill the only task that
        // refreshes: count it as a transient failure and carry on.
        let result = match std::panic::AssertUnwindSafe(provider.fetch())
            .catch_unwind()
            .await
        {
            Ok(result) => result.and_then(|c| Held::new(c, shared.clock.clone())),
            Err(_) => Err(ProviderError::new(
                ErrorKind::Transient,
                "the credential provider panicked; retrying",
            )),
        };
        let mut demand_only = false;
        let next = match result {
            Ok(held) => {
                retry.reset();
                identity.reset();
                let lifetime = held.lifetime;
                shared.current.store(Some(Arc::new(held)));
                shared.refreshes.fetch_add(1, Ordering::Relaxed);
                if shared.last_error.swap(None).is_some() {
                    tracing::info!("credentials available again");
                }
                let until_refresh = lifetime.saturating_sub(config.refresh_left(lifetime));
                tracing::debug!(?lifetime, ?until_refresh, "credentials stored");
                let until_refresh =
                    jitter(until_refresh, config.refresh_jitter).max(Duration::from_secs(1));
                // Refresh when this much is left, however the clocks moved meanwhile; and not
                // within a second of arrival, so odd clocks cannot make a hot loop.
                Next::WhenLeft {
                    left: lifetime.saturating_sub(until_refresh),
                    not_before: Instant::now() + Duration::from_secs(1),
                }
            }
            Err(error) => {
                shared.refresh_errors.fetch_add(1, Ordering::Relaxed);
                let delay = match error.kind {
                    ErrorKind::Identity => identity.next_delay(),
                    // Once this identity has worked, a refusal is retried on the transient
                    // schedule (1 s doubling to 20 s): the cloud refuses a good JWT-SVID for as
                    // long as it cannot fetch the issuer's keys (SPIRE's OIDC discovery
                    // provider restarting). Measured by the soak run: the 30 s cooldown let
                    // working Entra, Google and Vault tokens expire after a 7.5 s outage, and
                    // kept failing for 30 s after the issuer was back. An identity that never
                    // worked (misconfigured) keeps the cooldown, so it cannot hammer the cloud.
                    ErrorKind::Rejected if shared.current.load().is_some() => retry.next_delay(),
                    ErrorKind::Rejected => {
                        demand_only = true;
                        config.rejected_cooldown
                    }
                    _ => retry.next_delay(),
                };
                let repeated = shared
                    .last_error
                    .load()
                    .as_ref()
                    .is_some_and(|e| **e == error);
                if !repeated {
                    let serving = shared.valid().map(|h| h.remaining());
                    tracing::warn!(
                        error = %error,
                        kind = error.kind.as_str(),
                        serving_cached_for = ?serving,
                        retry_in = ?delay,
                        "getting credentials failed"
                    );
                }
                shared.last_error.store(Some(Arc::new(error)));
                Next::At(Instant::now() + delay)
            }
        };
        let succeeded = shared.last_error.load().is_none();
        shared.in_flight.store(false, Ordering::SeqCst);
        shared.attempts.send_modify(|n| *n += 1);

        while let Some(wait) = next.wait(&shared) {
            tokio::select! {
                // At most `recheck` at a time: the monotonic timer does not see a suspend or a
                // clock step, so look at the time left again at least that often.
                () = tokio::time::sleep(wait.min(config.recheck)) => {}
                () = shared.wake.notified() => {
                    // A request found nothing fresh. Refresh now only if the last attempt
                    // succeeded (the credentials simply ran out early, e.g. a short session);
                    // after a failure the schedule governs, so a crowd cannot hammer STS.
                    if succeeded && shared.fresh().is_none() {
                        break;
                    }
                }
            }
        }
        if demand_only {
            shared.awaiting_demand.store(true, Ordering::SeqCst);
            shared.wake.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use futures_util::future::BoxFuture;
    use workload_client::{Clock as _, TestClock};

    use super::*;

    #[derive(Debug)]
    struct Creds {
        id: u64,
        expiration: OffsetDateTime,
    }

    impl Expiring for Creds {
        fn expiration(&self) -> OffsetDateTime {
            self.expiration
        }
    }

    /// A scripted provider: each call pops the next step (the last one repeats), waits
    /// `delay`, and answers credentials living `Ok(lifetime)` or the error.
    /// Expirations are set by `clock`, the wall clock the cache reads too: like STS, whose
    /// clock keeps running while this node is suspended.
    #[derive(Clone)]
    struct Script {
        steps: Arc<Mutex<VecDeque<Result<Duration, ErrorKind>>>>,
        calls: Arc<AtomicU64>,
        delay: Duration,
        clock: Arc<TestClock>,
    }

    impl Script {
        fn new(steps: &[Result<Duration, ErrorKind>], delay: Duration) -> Self {
            Self {
                steps: Arc::new(Mutex::new(steps.iter().copied().collect())),
                calls: Arc::new(AtomicU64::new(0)),
                delay,
                clock: TestClock::new(),
            }
        }
        fn calls(&self) -> u64 {
            self.calls.load(Ordering::SeqCst)
        }
        fn then(&self, steps: &[Result<Duration, ErrorKind>]) {
            *self.steps.lock().unwrap() = steps.iter().copied().collect();
        }
    }

    impl CredentialProvider for Script {
        type Credentials = Creds;
        fn name(&self) -> &'static str {
            "script"
        }
        fn fetch(&self) -> BoxFuture<'_, Result<Creds, ProviderError>> {
            Box::pin(async move {
                tokio::time::sleep(self.delay).await;
                let id = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
                let step = {
                    let mut steps = self.steps.lock().unwrap();
                    if steps.len() > 1 {
                        steps.pop_front().unwrap()
                    } else {
                        *steps.front().unwrap()
                    }
                };
                match step {
                    Ok(life) => Ok(Creds {
                        id,
                        expiration: self.clock.now() + life,
                    }),
                    Err(kind) => Err(ProviderError::new(kind, format!("scripted {kind:?}"))),
                }
            })
        }
    }

    /// Panics on its first call (a bug inside the SDK, say), then succeeds.
    struct PanicsOnce(Arc<AtomicU64>);

    impl CredentialProvider for PanicsOnce {
        type Credentials = Creds;
        fn name(&self) -> &'static str {
            "panics-once"
        }
        fn fetch(&self) -> BoxFuture<'_, Result<Creds, ProviderError>> {
            Box::pin(async move {
                let id = self.0.fetch_add(1, Ordering::SeqCst) + 1;
                assert!(id > 1, "simulated panic inside the provider");
                Ok(Creds {
                    id,
                    expiration: OffsetDateTime::now_utc() + HOUR,
                })
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_provider_does_not_stop_the_refresh_task() {
        let calls = Arc::new(AtomicU64::new(0));
        let c = CredentialCache::start(PanicsOnce(calls.clone()), CacheConfig::default());
        // The first attempt's panic is reported like any transient failure …
        let first = c.get(WAIT).await.unwrap_err();
        assert!(format!("{first:?}").contains("panicked"), "{first:?}");
        // … and the task lives on: its backoff retry succeeds.
        tokio::time::sleep(Duration::from_secs(30)).await;
        let held = c.get(WAIT).await.unwrap();
        assert_eq!(held.credentials().id, 2, "retried after the panic");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    const HOUR: Duration = Duration::from_secs(3600);
    const MIN: Duration = Duration::from_secs(60);
    const WAIT: Duration = Duration::from_secs(10);

    fn cache(script: &Script) -> CredentialCache<Creds> {
        CredentialCache::start_with_clock(
            script.clone(),
            CacheConfig::default(),
            script.clock.clone(),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn invalidated_credentials_are_replaced_at_once_and_only_once() {
        let script = Script::new(&[Ok(HOUR)], Duration::ZERO);
        let c = cache(&script);
        let first = c.get(WAIT).await.unwrap();
        assert_eq!(first.credentials().id, 1);
        assert!(c.invalidate(&first));
        assert!(
            c.peek().is_none(),
            "refused credentials still reported ready"
        );
        assert!(
            !c.invalidate(&first),
            "a second refusal of the same credentials dropped something"
        );
        let second = c.get(WAIT).await.unwrap();
        assert_eq!(
            second.credentials().id,
            2,
            "not refreshed after the refusal"
        );
        assert!(
            !c.invalidate(&first),
            "a late refusal of the old credentials dropped the new ones"
        );
        assert_eq!(c.get(WAIT).await.unwrap().credentials().id, 2);
        assert_eq!(script.calls(), 2);
        assert_eq!(c.stats().invalidations, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_suspend_past_expiry_the_expired_credentials_are_not_served_and_refresh_at_once()
     {
        let script = Script::new(&[Ok(HOUR)], Duration::ZERO);
        let c = cache(&script);
        assert_eq!(c.get(WAIT).await.unwrap().credentials().id, 1);
        tokio::time::sleep(10 * MIN).await;
        // The VM sleeps 2 h: the wall clock (and STS's) moves, tokio's monotonic clock does not.
        script.clock.jump(time::Duration::hours(2));
        // The held credentials expired 70 minutes ago: not even "valid" for readiness.
        assert!(c.peek().is_none(), "expired credentials reported valid");
        assert_eq!(c.stats().expires_in, Some(Duration::ZERO));
        let held = c.get(WAIT).await.unwrap();
        assert_eq!(
            held.credentials().id,
            2,
            "refreshed at once, not 25 minutes later"
        );
        assert!(held.remaining() > 59 * MIN, "{:?}", held.remaining());
        assert_eq!(script.calls(), 2);
        assert_eq!(c.stats().stale_served, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_suspend_the_timer_refreshes_within_a_minute_without_any_request() {
        let script = Script::new(&[Ok(HOUR)], Duration::ZERO);
        let c = cache(&script);
        c.get(WAIT).await.unwrap();
        tokio::time::sleep(10 * MIN).await;
        // Asleep 40 minutes: 10 minutes left, past the refresh point (25 minutes left).
        script.clock.jump(time::Duration::minutes(40));
        assert_eq!(script.calls(), 1);
        tokio::time::sleep(MIN + Duration::from_secs(1)).await;
        assert_eq!(
            script.calls(),
            2,
            "the timer re-read the wall clock within a minute"
        );
        let held = c.peek().unwrap();
        assert_eq!(held.credentials().id, 2);
        assert!(held.remaining() > 58 * MIN);
    }

    #[tokio::test(start_paused = true)]
    async fn a_backward_clock_step_neither_extends_the_credentials_nor_stops_refreshing() {
        let script = Script::new(&[Ok(HOUR)], Duration::ZERO);
        let c = cache(&script);
        c.get(WAIT).await.unwrap();
        tokio::time::sleep(10 * MIN).await;
        script.clock.jump(time::Duration::hours(-2));
        // By the wall clock they now have 2 h 50 min left; they do not: 50 minutes.
        let held = c.get(WAIT).await.unwrap();
        assert_eq!(held.credentials().id, 1);
        assert!(
            (49 * MIN..=50 * MIN).contains(&held.remaining()),
            "{:?}",
            held.remaining()
        );
        // Refreshed on the usual schedule (35 minutes after arrival, up to 3.5 min earlier).
        tokio::time::sleep(25 * MIN + Duration::from_secs(1)).await;
        assert_eq!(script.calls(), 2);
        assert_eq!(c.get(WAIT).await.unwrap().credentials().id, 2);
        // And no hot loop afterwards.
        tokio::time::sleep(10 * MIN).await;
        assert_eq!(script.calls(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn coalesces_concurrent_cold_callers_into_one_fetch() {
        let script = Script::new(&[Ok(HOUR)], Duration::from_millis(300));
        let c = cache(&script);
        let callers: Vec<_> = (0..1000)
            .map(|_| {
                let c = c.clone();
                tokio::spawn(async move { c.get(WAIT).await.map(|h| h.credentials().id) })
            })
            .collect();
        for caller in callers {
            assert_eq!(caller.await.unwrap(), Ok(1));
        }
        assert_eq!(script.calls(), 1);
        let stats = c.stats();
        assert_eq!(stats.hits + stats.waits, 1000);
        assert_eq!(stats.unavailable, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn refreshes_in_the_background_25_minutes_before_expiry() {
        let script = Script::new(&[Ok(HOUR)], Duration::ZERO);
        let c = cache(&script);
        c.get(WAIT).await.unwrap();
        // Refresh at 35 min, up to 10 % (3.5 min) earlier.
        tokio::time::sleep(31 * MIN).await;
        assert_eq!(script.calls(), 1, "no refresh before the window");
        for _ in 0..100 {
            assert_eq!(c.get(WAIT).await.unwrap().credentials().id, 1);
        }
        tokio::time::sleep(4 * MIN + Duration::from_secs(1)).await;
        assert_eq!(script.calls(), 2, "refreshed by 35 min with nobody asking");
        let held = c.get(WAIT).await.unwrap();
        assert_eq!(held.credentials().id, 2);
        assert!(held.remaining() > 55 * MIN);
        assert_eq!(c.stats().stale_served, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn short_sessions_refresh_at_half_life() {
        let script = Script::new(&[Ok(15 * MIN)], Duration::ZERO);
        let c = cache(&script);
        c.get(WAIT).await.unwrap();
        tokio::time::sleep(Duration::from_secs(400)).await;
        assert_eq!(script.calls(), 1);
        tokio::time::sleep(Duration::from_secs(51)).await;
        assert_eq!(script.calls(), 2, "refreshed by 450 s (half of 900 s)");
    }

    #[tokio::test(start_paused = true)]
    async fn never_hands_out_less_than_15_minutes_while_refresh_succeeds() {
        // A provider that always answers with credentials that have 14 minutes left would be
        // a broken provider; here a *slow* refresh must be waited for, not skipped.
        let script = Script::new(&[Ok(HOUR)], Duration::ZERO);
        let c = cache(&script);
        c.get(WAIT).await.unwrap();
        for _ in 0..60 {
            tokio::time::sleep(MIN).await;
            let held = c.get(WAIT).await.unwrap();
            assert!(held.remaining() > 15 * MIN, "{:?}", held.remaining());
        }
        assert_eq!(c.stats().stale_served, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn serves_still_valid_credentials_while_refreshing_fails_then_recovers() {
        let script = Script::new(&[Ok(HOUR), Err(ErrorKind::Transient)], Duration::ZERO);
        let c = cache(&script);
        assert_eq!(c.get(WAIT).await.unwrap().credentials().id, 1);
        // Past the refresh point and the serve margin: 10 minutes left, STS failing.
        tokio::time::sleep(50 * MIN).await;
        let before = script.calls();
        assert!(before > 3, "retried with backoff, {before} calls");
        let started = Instant::now();
        let held = c.get(WAIT).await.unwrap();
        assert_eq!(held.credentials().id, 1);
        assert!(
            started.elapsed() < Duration::from_millis(1),
            "stale answer at once"
        );
        assert!(c.stats().stale_served >= 1);
        assert!(c.stats().last_error.is_some());
        // Backoff is capped at 20 s: at most ~3 calls a minute, not a hot loop.
        assert!(before < 50 * 3 + 10, "{before} calls in 50 minutes");

        // STS back: recovered within one backoff period, no request needed.
        script.then(&[Ok(HOUR)]);
        tokio::time::sleep(Duration::from_secs(21)).await;
        let held = c.get(WAIT).await.unwrap();
        assert!(held.credentials().id > 1);
        assert!(held.remaining() > 59 * MIN);
        assert!(c.stats().last_error.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn never_hands_out_credentials_about_to_expire() {
        let script = Script::new(&[Ok(HOUR), Err(ErrorKind::Transient)], Duration::ZERO);
        let c = cache(&script);
        c.get(WAIT).await.unwrap();
        tokio::time::sleep(59 * MIN + Duration::from_secs(30)).await;
        let err = c.get(WAIT).await.unwrap_err();
        let CacheError::Unavailable { last_error } = err;
        assert_eq!(last_error.unwrap().kind, ErrorKind::Transient);
        assert!(c.peek().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn cold_failure_answers_at_once_and_recovers_on_the_retry_schedule() {
        let script = Script::new(&[Err(ErrorKind::Transient)], Duration::from_millis(5));
        let c = cache(&script);
        let started = Instant::now();
        let err = c.get(WAIT).await.unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "did not wait out max_wait"
        );
        assert!(err.to_string().contains("scripted Transient"), "{err}");
        // A crowd of requests does not add attempts beyond the schedule.
        for _ in 0..100 {
            let _ = c.get(WAIT).await;
        }
        assert_eq!(script.calls(), 1);
        script.then(&[Ok(HOUR)]);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(c.get(WAIT).await.is_ok());
        assert_eq!(script.calls(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn identity_errors_retry_fast() {
        let script = Script::new(&[Err(ErrorKind::Identity)], Duration::ZERO);
        let c = cache(&script);
        tokio::time::sleep(Duration::from_secs(10)).await;
        // 0.2, 0.4, 0.8, 1.6, then every ≤2 s: at least 6 attempts in 10 s.
        assert!(script.calls() >= 6, "{}", script.calls());
        script.then(&[Ok(HOUR)]);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(c.get(WAIT).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn rejections_are_not_retried_until_a_client_asks_after_the_cooldown() {
        let script = Script::new(&[Err(ErrorKind::Rejected)], Duration::ZERO);
        let c = cache(&script);
        let err = c.get(WAIT).await.unwrap_err();
        let CacheError::Unavailable { last_error } = err;
        assert_eq!(last_error.unwrap().kind, ErrorKind::Rejected);
        // A request during the cool-down does not retry...
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(c.get(WAIT).await.is_err());
        // ...nor does time alone.
        tokio::time::sleep(10 * MIN).await;
        assert_eq!(script.calls(), 1, "no timer-driven retry");
        // The first request after the cool-down triggers one attempt and waits for it.
        script.then(&[Ok(HOUR)]);
        let held = c.get(WAIT).await.unwrap();
        assert_eq!(held.credentials().id, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_while_credentials_still_work_is_retried_before_they_expire() {
        // 900 s credentials refresh at 450 s left; the refresh is refused twice (the cloud
        // could not fetch the issuer's keys), then works: new credentials long before the
        // old ones expire, without any client asking.
        let script = Script::new(&[Ok(Duration::from_secs(900))], Duration::ZERO);
        let c = cache(&script);
        assert_eq!(c.get(WAIT).await.unwrap().credentials().id, 1);
        script.then(&[Err(ErrorKind::Rejected), Err(ErrorKind::Rejected), Ok(HOUR)]);
        tokio::time::sleep(Duration::from_secs(500)).await;
        assert_eq!(
            script.calls(),
            4,
            "two refusals retried on the transient schedule"
        );
        assert_eq!(c.peek().unwrap().credentials().id, 4);
    }

    #[tokio::test(start_paused = true)]
    async fn after_expiry_a_refusal_of_an_identity_that_worked_keeps_being_retried() {
        // 60 s credentials; every refresh refused until well past their expiry, then it works:
        // no client needs to ask, and no 30 s cooldown stands in between.
        let script = Script::new(&[Ok(MIN)], Duration::ZERO);
        let c = cache(&script);
        assert_eq!(c.get(WAIT).await.unwrap().credentials().id, 1);
        script.then(&[Err(ErrorKind::Rejected); 6]);
        tokio::time::sleep(2 * MIN).await;
        assert!(
            c.get(Duration::ZERO).await.is_err(),
            "expired, nothing to serve"
        );
        let calls = script.calls();
        assert!(calls >= 6, "retried on the transient schedule: {calls}");
        script.then(&[Ok(HOUR)]);
        tokio::time::sleep(Duration::from_secs(21)).await;
        assert!(c.peek().is_some_and(|h| h.remaining() > 50 * MIN));
    }

    #[tokio::test(start_paused = true)]
    async fn cold_wait_is_bounded() {
        let script = Script::new(&[Ok(HOUR)], Duration::from_secs(60));
        let c = cache(&script);
        let started = Instant::now();
        let err = c.get(Duration::from_secs(3)).await.unwrap_err();
        assert!((Duration::from_secs(3)..Duration::from_secs(4)).contains(&started.elapsed()));
        assert!(err.to_string().contains("still in progress"), "{err}");
        assert!(c.peek().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn expired_on_arrival_is_an_error_not_a_hot_loop() {
        let script = Script::new(&[Ok(Duration::ZERO)], Duration::ZERO);
        let c = cache(&script);
        assert!(c.get(WAIT).await.is_err());
        tokio::time::sleep(MIN).await;
        assert!(script.calls() < 15, "{}", script.calls());
    }

    #[test]
    fn margins_scale_down_for_short_sessions() {
        let c = CacheConfig::default();
        assert_eq!(c.refresh_left(HOUR), 25 * MIN);
        assert_eq!(c.serve_min(HOUR), 15 * MIN);
        assert_eq!(c.expiry_min(HOUR), MIN);
        assert_eq!(c.refresh_left(15 * MIN), Duration::from_secs(450));
        assert_eq!(c.serve_min(15 * MIN), Duration::from_secs(360));
        assert_eq!(c.refresh_left(12 * HOUR), 25 * MIN);
        for life in [15 * MIN, 30 * MIN, 50 * MIN, HOUR, 12 * HOUR] {
            assert!(c.refresh_left(life) > c.serve_min(life));
            assert!(c.serve_min(life) > c.expiry_min(life));
        }
    }
}

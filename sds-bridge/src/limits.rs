//! Bounds on what clients of the SDS socket can make the bridge hold and fetch.
//!
//! Every `jwt-svid:<audience>` name a client invents is a JWT cache key: a FetchJWTSVID call
//! now (a signing on the SPIRE server), a refresh at every half-life after, a metric series,
//! and memory, kept for the cache's idle eviction (15 minutes) after the last use. Unbounded,
//! one FetchSecrets naming 5,000 audiences made 5,000 keys and 5,000 FetchJWTSVID calls.
//! So:
//!
//! - one request (a stream's subscription or a unary FetchSecrets) names at most
//!   [`MAX_NAMES`] resources, of which at most [`MAX_JWT_KEYS`] JWT-SVIDs;
//! - the bridge as a whole creates at most `--max-jwt-keys` distinct JWT keys
//!   ([`DEFAULT_MAX_JWT_KEYS_TOTAL`]); a key frees its slot once the cache has dropped it;
//! - one HTTP/2 connection carries at most [`MAX_CONCURRENT_STREAMS`] streams.
//!
//! Refusals are counted in `sds_bridge_refusals_total{reason}` and logged once per reason
//! (a client hammering a limit must not flood the log). `--allow-jwt-audience` is the real
//! fix: with it, no client can name an audience the workload did not intend.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use std::fmt::Write as _;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use workload_client::{JwtKey, JwtSvidCache};

/// Most names one request may subscribe to; more are ignored (a stream) or refused (a unary
/// fetch). Envoy asks for a handful per stream.
pub const MAX_NAMES: usize = 256;
/// Most JWT-SVID names one request may hold: each is a cache entry and a refresh task.
pub const MAX_JWT_KEYS: usize = 32;
/// Distinct JWT-SVID keys the bridge creates, all clients together, unless `--max-jwt-keys`
/// says otherwise. A pod's Envoy uses a few audiences; 256 leaves room for gateways.
pub const DEFAULT_MAX_JWT_KEYS_TOTAL: usize = 256;
/// HTTP/2 streams per connection. Envoy multiplexes all its SDS subscriptions (a handful per
/// listener or cluster) over one connection, and opens another connection when a peer's
/// limit is reached; 128 covers a gateway with many certificates and the bench's 100 streams
/// per connection, while one client can no longer park thousands of streams on a single
/// connection (3,000 were accepted before).
pub const MAX_CONCURRENT_STREAMS: u32 = 128;

/// Why a name or key was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// A request named more than [`MAX_NAMES`] resources.
    NamesPerRequest,
    /// A request named more than [`MAX_JWT_KEYS`] JWT-SVIDs.
    JwtKeysPerRequest,
    /// The bridge already holds `--max-jwt-keys` JWT keys.
    JwtKeysTotal,
}

impl Refusal {
    const ALL: [Self; 3] = [
        Self::NamesPerRequest,
        Self::JwtKeysPerRequest,
        Self::JwtKeysTotal,
    ];

    fn index(self) -> usize {
        self as usize
    }

    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            Self::NamesPerRequest => "names_per_request",
            Self::JwtKeysPerRequest => "jwt_keys_per_request",
            Self::JwtKeysTotal => "jwt_keys_total",
        }
    }

    /// The log line's explanation.
    fn explain(self) -> String {
        match self {
            Self::NamesPerRequest => {
                format!(
                    "an SDS request named more than {MAX_NAMES} resources; the rest are ignored"
                )
            }
            Self::JwtKeysPerRequest => format!(
                "an SDS request named more than {MAX_JWT_KEYS} JWT-SVIDs; the rest are refused"
            ),
            Self::JwtKeysTotal => "the bridge holds its maximum of distinct JWT-SVID keys \
                 (--max-jwt-keys); new audiences are refused until unused ones are evicted \
                 (set --allow-jwt-audience to serve only the audiences this workload needs)"
                .to_owned(),
        }
    }
}

impl EncodeLabelValue for Refusal {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.label())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RefusalLabels {
    reason: Refusal,
}

/// Counts refusals by reason and logs the first of each reason.
#[derive(Clone, Debug)]
pub struct Refusals {
    counter: Family<RefusalLabels, Counter>,
    logged: Arc<[AtomicBool; 3]>,
}

// === impl Refusals ===

impl Default for Refusals {
    fn default() -> Self {
        let counter = Family::<RefusalLabels, Counter>::default();
        // Every reason shows 0 from the start, so an alert can use rate() without absent().
        for reason in Refusal::ALL {
            let _ = counter.get_or_create(&RefusalLabels { reason });
        }
        Self {
            counter,
            logged: Arc::default(),
        }
    }
}

impl Refusals {
    /// Registers `refusals_total{reason}` in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "refusals",
            "Resource names or JWT-SVID keys refused by a limit, by reason (a stream's names \
             are counted again with every request that repeats them)",
            self.counter.clone(),
        );
    }

    /// Counts `count` refusals for `reason`; the first ever for this reason is logged.
    pub fn refused(&self, reason: Refusal, count: usize) {
        if count == 0 {
            return;
        }
        self.counter
            .get_or_create(&RefusalLabels { reason })
            .inc_by(u64::try_from(count).unwrap_or(u64::MAX));
        if !self.logged[reason.index()].swap(true, Ordering::Relaxed) {
            tracing::warn!(
                reason = reason.label(),
                refused = count,
                "{}; further refusals are only counted in sds_bridge_refusals_total",
                reason.explain()
            );
        }
    }
}

/// The bridge-wide cap on distinct JWT keys.
///
/// Every key the bridge puts in the cache goes through [`KeyLimit::admit`], which creates the
/// cache entry under its lock, so the cache never holds more than `max` keys from the bridge.
/// A slot is freed when the cache drops the key (idle eviction): when the set is full, it is
/// first pruned to the keys the cache still has.
#[derive(Debug)]
pub struct KeyLimit {
    max: usize,
    admitted: Mutex<HashSet<JwtKey>>,
}

// === impl KeyLimit ===

impl KeyLimit {
    /// At most `max` keys.
    pub fn new(max: usize) -> Self {
        Self {
            max,
            admitted: Mutex::new(HashSet::new()),
        }
    }

    /// Runs `create` (which must create `key`'s cache entry) if `key` is admitted, or was
    /// before; `None` if the cap is reached.
    pub fn admit<T>(
        &self,
        key: &JwtKey,
        cache: &JwtSvidCache,
        create: impl FnOnce() -> T,
    ) -> Option<T> {
        let mut admitted = self
            .admitted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !admitted.contains(key) {
            if admitted.len() >= self.max {
                let live: HashSet<JwtKey> =
                    cache.stats().entries.into_iter().map(|e| e.key).collect();
                admitted.retain(|k| live.contains(k));
            }
            if admitted.len() >= self.max {
                return None;
            }
            admitted.insert(key.clone());
        }
        // Under the lock: a concurrent prune must not see the slot taken and the entry absent.
        Some(create())
    }

    /// Keys admitted now (including ones the cache may since have dropped).
    pub fn len(&self) -> usize {
        self.admitted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    /// Whether no key has been admitted.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

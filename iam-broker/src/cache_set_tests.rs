use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::future::BoxFuture;
use time::OffsetDateTime;

use super::*;
use crate::cache::CacheConfig;
use crate::provider::{CredentialProvider, ProviderError};

#[derive(Debug)]
struct Token(String);

impl Expiring for Token {
    fn expiration(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc() + time::Duration::hours(1)
    }
}

/// Answers a token naming its key, counting calls per set.
struct Named(String, Arc<AtomicU64>);

impl CredentialProvider for Named {
    type Credentials = Token;
    fn name(&self) -> &'static str {
        "named"
    }
    fn fetch(&self) -> BoxFuture<'_, Result<Token, ProviderError>> {
        Box::pin(async move {
            self.1.fetch_add(1, Ordering::SeqCst);
            Ok(Token(self.0.clone()))
        })
    }
}

fn set(limits: SetLimits) -> (CacheSet<Token>, Arc<AtomicU64>) {
    let calls = Arc::new(AtomicU64::new(0));
    let c = calls.clone();
    let set = CacheSet::new("resources", limits, move |key| {
        CredentialCache::start(Named(key.to_owned(), c.clone()), CacheConfig::default())
    });
    (set, calls)
}

#[tokio::test]
async fn one_cache_per_key_and_many_callers_share_one_fetch() {
    let (set, calls) = set(SetLimits::default());
    let wait = Duration::from_secs(5);
    let gets = (0..100).map(|i| {
        let set = set.clone();
        async move {
            let key = if i % 2 == 0 { "a" } else { "b" };
            let held = set.get(key).unwrap().get(wait).await.unwrap();
            assert_eq!(held.credentials().0, key);
        }
    });
    futures_util::future::join_all(gets).await;
    assert_eq!(set.len(), 2);
    assert_eq!(calls.load(Ordering::SeqCst), 2, "one fetch per key");
    assert_eq!(set.stats().refreshes, 2);
    assert_eq!(set.stats().hits + set.stats().waits, 100);
}

#[tokio::test(start_paused = true)]
async fn counters_of_dropped_keys_are_kept() {
    let limits = SetLimits {
        max_keys: 4,
        idle: Duration::from_secs(60),
    };
    let (set, _) = set(limits);
    set.get("a")
        .unwrap()
        .get(Duration::from_secs(5))
        .await
        .unwrap();
    let before = set.stats();
    assert_eq!(before.refreshes, 1);
    tokio::time::advance(Duration::from_secs(61)).await;
    assert_eq!(set.evict_idle(), 1);
    let after = set.stats();
    assert_eq!(
        (after.refreshes, after.hits + after.waits),
        (1, 1),
        "{after:?}"
    );
    assert_eq!(after.expires_in, None, "nothing held");
}

#[tokio::test(start_paused = true)]
async fn the_set_is_capped_and_idle_keys_make_room() {
    let limits = SetLimits {
        max_keys: 2,
        idle: Duration::from_secs(60),
    };
    let (set, _) = set(limits);
    set.pin("a").unwrap();
    set.get("b").unwrap();
    let full = set.get("c").unwrap_err();
    assert_eq!(full.max, 2);
    assert!(
        full.to_string().contains("too many distinct resources"),
        "{full}"
    );
    tokio::time::advance(Duration::from_secs(30)).await;
    set.get("c").unwrap_err(); // "b" used 30 s ago: still in use
    tokio::time::advance(Duration::from_secs(31)).await;
    // "b" idle for 61 s: dropped to make room; "a" is pinned and stays.
    set.get("c").unwrap();
    assert_eq!(set.len(), 2);
    assert_eq!(set.evict_idle(), 0);
    tokio::time::advance(Duration::from_secs(61)).await;
    assert_eq!(set.evict_idle(), 1, "only c; a is pinned");
    assert_eq!(set.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_key_starts_a_new_cache_on_next_use() {
    let limits = SetLimits {
        max_keys: 4,
        idle: Duration::from_secs(60),
    };
    let (set, calls) = set(limits);
    let wait = Duration::from_secs(5);
    set.get("a").unwrap().get(wait).await.unwrap();
    tokio::time::advance(Duration::from_secs(59)).await;
    set.get("a").unwrap(); // used: the idle clock starts again
    tokio::time::advance(Duration::from_secs(59)).await;
    assert_eq!(set.evict_idle(), 0, "used 59 s ago");
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(set.evict_idle(), 1);
    assert!(set.is_empty());
    let held = set.get("a").unwrap().get(wait).await.unwrap();
    assert_eq!(held.credentials().0, "a");
    assert_eq!(calls.load(Ordering::SeqCst), 2, "a new cache, a new fetch");
    assert_eq!(
        set.stats().refreshes,
        2,
        "the dropped cache's fetch still counts"
    );
}

/// Lookups on several threads while keys are evicted as fast as they go idle: the cap holds,
/// every lookup gets its own key's cache, and nothing deadlocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lookups_racing_evictions_keep_the_cap_and_the_keys() {
    let limits = SetLimits {
        max_keys: 4,
        idle: Duration::from_millis(1),
    };
    let (set, _) = set(limits);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sweeper = {
        let (set, stop) = (set.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                set.evict_idle();
                assert!(set.len() <= 4);
                tokio::task::yield_now().await;
            }
        })
    };
    let workers = (0..4).map(|w| {
        let set = set.clone();
        tokio::spawn(async move {
            let mut served = 0;
            for i in 0..2_000 {
                let key = ["a", "b", "c", "d", "e", "f"][(i + w) % 6];
                match set.get(key) {
                    Ok(cache) => {
                        if let Ok(held) = cache.get(Duration::from_secs(5)).await {
                            assert_eq!(held.credentials().0, key);
                            served += 1;
                        }
                    }
                    Err(full) => assert_eq!(full.max, 4),
                }
                assert!(set.len() <= 4);
            }
            served
        })
    });
    let served: u64 = futures_util::future::join_all(workers)
        .await
        .into_iter()
        .map(Result::unwrap)
        .sum();
    stop.store(true, Ordering::SeqCst);
    sweeper.await.unwrap();
    assert!(served > 0);
}

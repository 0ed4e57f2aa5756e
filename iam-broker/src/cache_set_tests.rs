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

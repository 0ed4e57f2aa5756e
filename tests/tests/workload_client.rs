//! workload-client against a real dev agent process: start-up order, agent restarts,
//! rotation, the JWT-SVID cache's single flight and refresh rate, local validation.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers outside #[test] fns

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use suite_tests::DevAgent;
use workload_client::CacheConfig;
use workload_client::{
    Endpoint, JwtBundleWatcher, JwtKey, JwtSvidCache, TrustDomainPolicy, ValidationError,
    WorkloadApiClient, X509Context, X509Watcher, validate_jwt_svid,
};

fn client(endpoint: &str) -> WorkloadApiClient {
    WorkloadApiClient::new(Endpoint::parse(endpoint).unwrap())
}

fn serial(ctx: &X509Context) -> String {
    let der = ctx.default_svid().svid.leaf().as_bytes().to_vec();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    cert.raw_serial_as_string()
}

async fn next_snapshot(
    rx: &mut tokio::sync::watch::Receiver<Option<Arc<X509Context>>>,
    within: Duration,
) -> Arc<X509Context> {
    tokio::time::timeout(within, rx.changed())
        .await
        .expect("timed out waiting for an X.509 update")
        .unwrap();
    rx.borrow_and_update().clone().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_started_before_agent_gets_svid_within_a_second_of_it_appearing() {
    let dir = tempfile::tempdir().unwrap();
    let (socket, endpoint) = DevAgent::planned(dir.path());
    let watcher = X509Watcher::x509(client(&endpoint));

    // The client has been retrying against a missing socket for a while.
    let mut status = watcher.subscribe_status();
    tokio::time::timeout(Duration::from_secs(10), async {
        while status.borrow_and_update().failures < 3 {
            status.changed().await.unwrap();
        }
    })
    .await
    .unwrap();
    assert!(
        watcher.current().is_none(),
        "no SVID before the agent exists"
    );

    let dir_path = dir.path().to_path_buf();
    let agent = tokio::task::spawn_blocking(move || {
        DevAgent::start(&dir_path, &["--spiffe-id", "spiffe://example.org/late"])
    })
    .await
    .unwrap();
    let appeared = Instant::now();
    assert!(socket.exists());
    let ctx = tokio::time::timeout(Duration::from_secs(5), watcher.first())
        .await
        .expect("SVID after agent start")
        .unwrap();
    let waited = appeared.elapsed();
    assert_eq!(
        ctx.default_svid().svid.spiffe_id().to_string(),
        "spiffe://example.org/late"
    );
    assert!(
        waited < Duration::from_secs(1),
        "took {waited:?} after the agent was serving"
    );
    drop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_restart_keeps_last_snapshot_and_stream_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let state_arg = state.to_str().unwrap().to_owned();
    let mut agent = DevAgent::start(dir.path(), &["--state-dir", &state_arg]);
    let watcher = X509Watcher::x509(client(&agent.endpoint));
    let first = tokio::time::timeout(Duration::from_secs(5), watcher.first())
        .await
        .unwrap()
        .unwrap();
    let mut rx = watcher.subscribe();
    rx.borrow_and_update();

    // Crash the agent: the stream breaks, the snapshot stays.
    agent.proc.kill();
    let mut status = watcher.subscribe_status();
    tokio::time::timeout(Duration::from_secs(5), async {
        while status.borrow_and_update().connected {
            status.changed().await.unwrap();
        }
    })
    .await
    .expect("watcher notices the agent is gone");
    let kept = watcher
        .current()
        .expect("last snapshot kept while the agent is down");
    assert_eq!(serial(&kept), serial(&first));

    // Restart (same state dir, so the same CA): the watcher reconnects and gets a new SVID.
    let _agent = tokio::task::spawn_blocking(move || {
        agent.restart();
        agent
    })
    .await
    .unwrap();
    let resumed = next_snapshot(&mut rx, Duration::from_secs(10)).await;
    assert_ne!(serial(&resumed), serial(&first), "a new SVID after restart");
    assert_eq!(
        resumed.bundles(),
        first.bundles(),
        "state dir keeps the CA across restarts"
    );
    assert!(watcher.status().connected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_see_every_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let agent = DevAgent::start(dir.path(), &["--x509-ttl", "4s"]);
    let watcher = X509Watcher::x509(client(&agent.endpoint));
    let mut rx = watcher.subscribe();
    let mut serials = BTreeSet::new();
    let first = tokio::time::timeout(Duration::from_secs(5), watcher.first())
        .await
        .unwrap()
        .unwrap();
    rx.borrow_and_update();
    serials.insert(serial(&first));
    for _ in 0..3 {
        let ctx = next_snapshot(&mut rx, Duration::from_secs(6)).await;
        // Rotated before half-life: the new SVID is fresh, the old one still had time left.
        assert!(ctx.remaining(std::time::SystemTime::now()) > Duration::from_secs(2));
        assert!(
            serials.insert(serial(&ctx)),
            "each update is a new certificate"
        );
    }
    assert_eq!(serials.len(), 4);

    // JWT bundles: a forced key rotation reaches the bundle watcher; the old key stays.
    let bundles = JwtBundleWatcher::jwt_bundles(client(&agent.endpoint));
    let before = tokio::time::timeout(Duration::from_secs(5), bundles.first())
        .await
        .unwrap()
        .unwrap();
    let mut brx = bundles.subscribe();
    brx.borrow_and_update();
    let td = workload_client::spiffe::TrustDomain::new("example.org").unwrap();
    let kids = |set: &workload_client::spiffe::JwtBundleSet| -> BTreeSet<String> {
        set.get(&td)
            .unwrap()
            .jwt_authorities()
            .map(|a| a.key_id().to_owned())
            .collect()
    };
    let agent_admin = agent.admin;
    tokio::task::spawn_blocking(move || {
        let (status, _) = suite_tests::http(agent_admin, "POST", "/rotate/jwt").unwrap();
        assert_eq!(status, 200);
    })
    .await
    .unwrap();
    tokio::time::timeout(Duration::from_secs(5), brx.changed())
        .await
        .unwrap()
        .unwrap();
    let after = brx.borrow_and_update().clone().unwrap();
    assert!(
        kids(&after).is_superset(&kids(&before)),
        "old kid kept for tokens in flight"
    );
    assert_eq!(kids(&after).len(), kids(&before).len() + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_callers_cause_exactly_one_fetch() {
    let dir = tempfile::tempdir().unwrap();
    let agent = DevAgent::start(dir.path(), &[]);
    let cache = JwtSvidCache::new(client(&agent.endpoint), CacheConfig::default());
    let key = JwtKey::new(["single-flight"]).unwrap();
    let calls = (0..1000).map(|_| {
        let cache = cache.clone();
        let key = key.clone();
        tokio::spawn(async move { cache.get(&key, Duration::from_secs(10)).await })
    });
    let tokens = futures_util::future::join_all(calls).await;
    let first = tokens[0].as_ref().unwrap().as_ref().unwrap().clone();
    for t in &tokens {
        let t = t.as_ref().unwrap().as_ref().unwrap();
        assert!(
            Arc::ptr_eq(t, &first),
            "every caller got the same cached token"
        );
    }
    assert_eq!(cache.stats().fetches, 1);
    let fetches = tokio::task::spawn_blocking(move || agent.jwt_fetches())
        .await
        .unwrap();
    assert_eq!(fetches, 1, "agent saw exactly one FetchJWTSVID");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refreshes_about_once_per_half_token_lifetime_and_never_serves_expired() {
    let dir = tempfile::tempdir().unwrap();
    let agent = DevAgent::start(dir.path(), &["--jwt-ttl", "4s"]);
    let cache = JwtSvidCache::new(client(&agent.endpoint), CacheConfig::default());
    let key = JwtKey::new(["refresh-rate"]).unwrap();
    let run_for = Duration::from_secs(12);
    let start = Instant::now();
    let callers = (0..20).map(|_| {
        let cache = cache.clone();
        let key = key.clone();
        tokio::spawn(async move {
            let mut served = 0u32;
            while start.elapsed() < run_for {
                let token = cache.get(&key, Duration::from_secs(5)).await.unwrap();
                let remaining = token.expiry().unix_timestamp() - time_now_unix();
                assert!(remaining >= 1, "served a token with {remaining}s left");
                served += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            served
        })
    });
    let served: u32 = futures_util::future::join_all(callers)
        .await
        .into_iter()
        .map(Result::unwrap)
        .sum();
    let fetches = tokio::task::spawn_blocking(move || agent.jwt_fetches())
        .await
        .unwrap();
    // 12 s of 4 s tokens refreshed at (up to 10 % before) half-life: 1 initial + ~6 refreshes.
    assert!(
        (5..=9).contains(&fetches),
        "{fetches} fetches for {served} gets over {run_for:?}"
    );
    assert!(served > 1000, "callers were served from cache ({served})");
}

fn time_now_unix() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_validate_locally_against_watched_bundles() {
    let dir = tempfile::tempdir().unwrap();
    let agent = DevAgent::start(dir.path(), &["--federate-with", "partner.org"]);
    let c = client(&agent.endpoint);
    let cache = JwtSvidCache::new(c.clone(), CacheConfig::default());
    let token = cache
        .get(&JwtKey::new(["api"]).unwrap(), Duration::from_secs(5))
        .await
        .unwrap();
    let bundles = JwtBundleWatcher::jwt_bundles(c);
    let set = tokio::time::timeout(Duration::from_secs(5), bundles.first())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(set.len(), 2, "own and federated JWT bundles");
    let svid =
        validate_jwt_svid(token.token(), "api", &set, &TrustDomainPolicy::default()).unwrap();
    assert_eq!(
        svid.spiffe_id().to_string(),
        "spiffe://example.org/workload"
    );
    assert_eq!(
        validate_jwt_svid(token.token(), "other", &set, &TrustDomainPolicy::default()).unwrap_err(),
        ValidationError::AudienceMismatch {
            expected: "other".into()
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeps_serving_the_valid_token_while_the_agent_is_down_then_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let state_arg = state.to_str().unwrap().to_owned();
    let mut agent = DevAgent::start(dir.path(), &["--jwt-ttl", "6s", "--state-dir", &state_arg]);
    let cache = JwtSvidCache::new(client(&agent.endpoint), CacheConfig::default());
    let key = JwtKey::new(["outage"]).unwrap();
    let token = cache.get(&key, Duration::from_secs(5)).await.unwrap();

    agent.proc.kill();
    // Past half-life the refresh fails, but the still-valid token keeps being served.
    let failing = Instant::now();
    loop {
        let served = cache.get(&key, Duration::from_millis(200)).await;
        if cache.stats().fetch_errors > 0 {
            assert!(
                Arc::ptr_eq(&served.unwrap(), &token),
                "same token while refresh fails"
            );
            break;
        }
        assert!(
            failing.elapsed() < Duration::from_secs(6),
            "refresh never attempted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Once it is within the expiry margin, callers get a clear error instead of a stale token.
    let err = loop {
        match cache.get(&key, Duration::from_millis(200)).await {
            Ok(t) => assert!(Arc::ptr_eq(&t, &token)),
            Err(e) => break e,
        }
        assert!(
            failing.elapsed() < Duration::from_secs(10),
            "token outlived its expiry"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(err.to_string().contains("no valid JWT-SVID"), "{err}");

    let _agent = tokio::task::spawn_blocking(move || {
        agent.restart();
        agent
    })
    .await
    .unwrap();
    // Callers fail fast while the agent is in backoff, then get a token once it answers.
    let back = Instant::now();
    let fresh = loop {
        if let Ok(t) = cache.get(&key, Duration::from_secs(1)).await {
            break t;
        }
        assert!(
            back.elapsed() < Duration::from_secs(10),
            "no token after the agent came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        fresh.expiry() > token.expiry(),
        "a new token after the agent is back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keys_are_evicted() {
    let dir = tempfile::tempdir().unwrap();
    // 4 s, not 2 s: `exp` has whole seconds, so a 2 s token fetched late in a second has
    // barely more than the cache's 1 s expiry margin left, and was refused at once (seen in CI).
    let agent = DevAgent::start(dir.path(), &["--jwt-ttl", "4s"]);
    let config = CacheConfig {
        idle_eviction: Duration::from_millis(500),
        ..CacheConfig::default()
    };
    let cache = JwtSvidCache::new(client(&agent.endpoint), config);
    let pinned = JwtKey::new(["pinned"]).unwrap();
    cache.pin(&pinned);
    cache
        .get(&JwtKey::new(["used-once"]).unwrap(), Duration::from_secs(5))
        .await
        .unwrap();
    // Subscribed (as an SDS stream is), never asked for with `get`.
    let watched = JwtKey::new(["watched"]).unwrap();
    let mut refreshes = cache.subscribe(&watched);
    assert_eq!(cache.stats().entries.len(), 3);
    tokio::time::timeout(Duration::from_secs(10), async {
        while cache.stats().evictions == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("idle key evicted");
    // The first fetch, then the half-life refresh of a 4 s token, which comes after the
    // 500 ms idle check: an evicted entry would have closed the watch instead.
    for _ in 0..2 {
        tokio::time::timeout(Duration::from_secs(10), refreshes.changed())
            .await
            .expect("a refresh")
            .expect("the subscribed key is still cached");
    }
    let stats = cache.stats();
    let mut kept: Vec<&JwtKey> = stats.entries.iter().map(|e| &e.key).collect();
    kept.sort();
    assert_eq!(kept, [&pinned, &watched], "pinned and subscribed keys stay");
    assert_eq!(stats.evictions, 1);
}

// === wall clock ===

/// Waits for the next completed fetch of a subscribed key (as an SDS stream waits).
async fn next_fetch(rx: &mut tokio::sync::watch::Receiver<u64>, within: Duration) {
    tokio::time::timeout(within, rx.changed())
        .await
        .expect("a fetch in time")
        .expect("the key is still cached");
}

/// A JWT cache on a [`workload_client::TestClock`], re-checking it every 100 ms.
fn cache_on_test_clock(agent: &DevAgent) -> (JwtSvidCache, Arc<workload_client::TestClock>) {
    let clock = workload_client::TestClock::new();
    let config = CacheConfig {
        recheck: Duration::from_millis(100),
        ..CacheConfig::default()
    };
    let cache = JwtSvidCache::with_clock(client(&agent.endpoint), config, clock.clone());
    (cache, clock)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_suspend_the_refresh_timer_notices_the_wall_clock_without_any_get() {
    let dir = tempfile::tempdir().unwrap();
    // A 1 h token: its half-life refresh is 30 minutes away on tokio's (monotonic) clock.
    let agent = DevAgent::start(dir.path(), &["--jwt-ttl", "1h"]);
    let (cache, clock) = cache_on_test_clock(&agent);
    let key = JwtKey::new(["suspend"]).unwrap();
    // Subscribed and never asked with `get`, as sds-bridge's streams use the cache.
    let mut fetches = cache.subscribe(&key);
    next_fetch(&mut fetches, Duration::from_secs(5)).await;
    let first = cache.peek(&key).unwrap();

    // 40 minutes of suspend: wall time moves, the monotonic timers do not.
    clock.jump(time::Duration::minutes(40));
    let jumped = Instant::now();
    next_fetch(&mut fetches, Duration::from_secs(5)).await;
    let took = jumped.elapsed();
    eprintln!("refreshed {took:?} after the 40-minute jump");
    assert!(took < Duration::from_secs(1), "{took:?}");
    let second = cache.peek(&key).unwrap();
    assert_ne!(
        first.token(),
        second.token(),
        "a new token, not the half-spent one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_expired_by_a_clock_jump_is_never_served_and_a_backward_jump_is_harmless() {
    let dir = tempfile::tempdir().unwrap();
    let agent = DevAgent::start(dir.path(), &["--jwt-ttl", "1h"]);
    let (cache, clock) = cache_on_test_clock(&agent);
    let key = JwtKey::new(["jump"]).unwrap();
    let before = cache.get(&key, Duration::from_secs(5)).await.unwrap();
    let mut fetches = cache.subscribe(&key);

    // Two hours later by the wall clock: the cached token expired an hour ago.
    clock.jump(time::Duration::hours(2));
    assert!(cache.peek(&key).is_none(), "expired token reported valid");
    match cache.get(&key, Duration::from_secs(2)).await {
        // The agent (on the real clock here) hands out tokens that look expired too, so
        // nothing may be served; what matters is that the old one is not.
        Ok(token) => assert_ne!(token.token(), before.token()),
        Err(e) => assert!(e.to_string().contains("no valid JWT-SVID"), "{e}"),
    }
    next_fetch(&mut fetches, Duration::from_secs(2)).await;

    // Back to the real time, then two hours further back: no panic, tokens served, and the
    // monotonic schedule (not the now distant wall-clock one) keeps refreshing.
    clock.jump(time::Duration::hours(-4));
    let token = cache.get(&key, Duration::from_secs(5)).await.unwrap();
    assert!(token.expiry().unix_timestamp() > time_now_unix() + 3000);
    let count = cache.stats().fetches;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        cache.stats().fetches <= count + 1,
        "no refresh storm after the backward jump"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backward_clock_jump_does_not_hold_back_the_half_life_refresh() {
    let dir = tempfile::tempdir().unwrap();
    let agent = DevAgent::start(dir.path(), &["--jwt-ttl", "2s"]);
    let clock = workload_client::TestClock::new();
    let cache = JwtSvidCache::with_clock(
        client(&agent.endpoint),
        CacheConfig::default(),
        clock.clone(),
    );
    let key = JwtKey::new(["backward"]).unwrap();
    let mut fetches = cache.subscribe(&key);
    next_fetch(&mut fetches, Duration::from_secs(5)).await;
    // By the wall clock the 2 s token now has 2 h left; by the monotonic clock its half-life
    // refresh is 1 s away, and that one wins.
    clock.jump(time::Duration::hours(-2));
    next_fetch(&mut fetches, Duration::from_secs(3)).await;
}

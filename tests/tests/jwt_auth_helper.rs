//! jwt-auth-helper as Envoy sees it, over real gRPC, against a real dev agent: injection,
//! validation, start-up before the agent, agent restarts, config errors, shutdown, and the
//! FetchJWTSVID rate under load. (The same flows through real Envoy: envoy_jwt.rs.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers outside #[test] fns

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dev_agent::{Agent, Config as AgentConfig, JwtAlg};
use suite_tests::sidecars::{
    JwtHelper, Verdict, alg_none, check, claims, jwt_claims, tampered, unix_now,
};
use suite_tests::{DevAgent, bin, output};
use workload_client::Endpoint;
use workload_client::spiffe::TrustDomain;

const AUD: &str = "spiffe://example.org/backend";

fn bearer_of(v: &Verdict) -> String {
    let value = v.header("authorization").expect("authorization stamped");
    value
        .strip_prefix("Bearer ")
        .expect("Bearer scheme")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injection_stamps_a_cached_token_with_the_right_sub_and_aud() {
    let dir = tempfile::tempdir().unwrap();
    let agent = DevAgent::start(
        dir.path(),
        &["--spiffe-id", "spiffe://example.org/ns/default/sa/client"],
    );
    let mut helper = JwtHelper::start(dir.path(), &agent.endpoint, &["--audience", AUD]);
    helper.wait_ready(Duration::from_secs(10));
    let mut c = helper.client().await;

    let first = check(
        &mut c,
        "backend.default.svc:8080",
        &[("user-agent", "curl")],
    )
    .await;
    let claims = jwt_claims(&bearer_of(&first));
    assert_eq!(claims["sub"], "spiffe://example.org/ns/default/sa/client");
    assert_eq!(claims["aud"], serde_json::json!([AUD]));
    for _ in 0..50 {
        let again = check(&mut c, "backend.default.svc:8080", &[]).await;
        assert_eq!(
            bearer_of(&again),
            bearer_of(&first),
            "served from the cache"
        );
    }
    let fetches = tokio::task::spawn_blocking(move || agent.jwt_fetches())
        .await
        .unwrap();
    assert_eq!(fetches, 1, "51 checks, one FetchJWTSVID (pinned at start)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audience_per_destination_host() {
    let dir = tempfile::tempdir().unwrap();
    let agent = DevAgent::start(dir.path(), &[]);
    let mut helper = JwtHelper::start(
        dir.path(),
        &agent.endpoint,
        &[
            "--audience",
            "default-aud",
            "--audience-for",
            "billing.internal=billing-aud",
            "--audience-for",
            "api.internal:8443=api-aud",
        ],
    );
    helper.wait_ready(Duration::from_secs(10));
    let mut c = helper.client().await;
    let aud = |v: &Verdict| {
        jwt_claims(&bearer_of(v))["aud"][0]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(
        aud(&check(&mut c, "Billing.internal:9000", &[]).await),
        "billing-aud"
    );
    assert_eq!(
        aud(&check(&mut c, "billing.internal", &[]).await),
        "billing-aud"
    );
    assert_eq!(
        aud(&check(&mut c, "api.internal:8443", &[]).await),
        "api-aud"
    );
    assert_eq!(
        aud(&check(&mut c, "api.internal:80", &[]).await),
        "default-aud"
    );
    assert_eq!(aud(&check(&mut c, "other.svc", &[]).await), "default-aud");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_authorization_policies() {
    let dir = tempfile::tempdir().unwrap();
    let agent = DevAgent::start(dir.path(), &[]);
    let existing = [("authorization", "Basic dXNlcjpwYXNz")];
    for (policy, want) in [("deny", 403), ("keep", 200), ("replace", 200)] {
        let mut helper = JwtHelper::start(
            dir.path(),
            &agent.endpoint,
            &["--audience", AUD, "--existing-authorization", policy],
        );
        helper.wait_ready(Duration::from_secs(10));
        let mut c = helper.client().await;
        let v = check(&mut c, "svc", &existing).await;
        assert_eq!(v.status(), want, "{policy}: {v:?}");
        match policy {
            "keep" => assert_eq!(v.header("authorization"), None, "left untouched"),
            "replace" => assert!(v.header("authorization").unwrap().starts_with("Bearer ")),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_down_at_start_gives_503_then_200_within_a_second_of_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let (_, endpoint) = DevAgent::planned(dir.path());
    let helper = JwtHelper::start(dir.path(), &endpoint, &["--audience", AUD]);
    let mut c = helper.client().await;
    let v = check(&mut c, "svc", &[]).await;
    assert_eq!(v.status(), 503, "fails closed without a token: {v:?}");
    let Verdict::Denied { body, .. } = &v else {
        unreachable!()
    };
    assert!(body.contains("no JWT-SVID available"), "{body}");
    assert_eq!(helper.readyz(), 503);

    let dir_path = dir.path().to_path_buf();
    let agent = tokio::task::spawn_blocking(move || DevAgent::start(&dir_path, &[]))
        .await
        .unwrap();
    let up = Instant::now();
    loop {
        if check(&mut c, "svc", &[]).await.status() == 200 {
            break;
        }
        assert!(up.elapsed() < Duration::from_secs(5), "never recovered");
    }
    let took = up.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "200 only {took:?} after the agent was serving"
    );
    assert_eq!(helper.readyz(), 200);
    drop(agent);
}

/// `clients` gRPC connections calling Check in a loop until stopped, counting 200s and the rest.
struct Load {
    stop: Arc<std::sync::atomic::AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    async fn start(helper: &JwtHelper, clients: usize) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let mut c = helper.client().await;
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let counter = if check(&mut c, "svc", &[]).await.status() == 200 {
                        &ok
                    } else {
                        &failed
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        Self {
            stop,
            ok,
            failed,
            tasks,
        }
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_restart_under_load_fails_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut agent = DevAgent::start(dir.path(), &["--state-dir", state.to_str().unwrap()]);
    let mut helper = JwtHelper::start(dir.path(), &agent.endpoint, &["--audience", AUD]);
    helper.wait_ready(Duration::from_secs(10));
    let load = Load::start(&helper, 4).await;
    let (ok, failed) = (load.ok.clone(), load.failed.clone());
    let before = ok.load(Ordering::Relaxed);
    agent = tokio::task::spawn_blocking(move || {
        agent.proc.kill();
        std::thread::sleep(Duration::from_millis(300)); // an outage, not just a blip
        agent.restart();
        agent
    })
    .await
    .unwrap();
    let target = ok.load(Ordering::Relaxed) + 200;
    while ok.load(Ordering::Relaxed) < target {
        tokio::task::yield_now().await;
    }
    load.stop().await;
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "no failed check across the restart"
    );
    assert!(ok.load(Ordering::Relaxed) > before + 200);
    drop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetches_stay_at_one_per_half_life_whatever_the_request_rate() {
    let dir = tempfile::tempdir().unwrap();
    let agent = DevAgent::start(dir.path(), &["--jwt-ttl", "4s"]);
    let mut helper = JwtHelper::start(dir.path(), &agent.endpoint, &["--audience", AUD]);
    helper.wait_ready(Duration::from_secs(10));
    let run_for = Duration::from_secs(8);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let mut c = helper.client().await;
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while start.elapsed() < run_for {
                let v = check(&mut c, "svc", &[]).await;
                assert_eq!(v.status(), 200, "{v:?}");
                let exp = jwt_claims(&bearer_of(&v))["exp"].as_i64().unwrap();
                assert!(exp > unix_now(), "stamped an expired token");
                n += 1;
            }
            n
        }));
    }
    let mut checks = 0;
    for t in tasks {
        checks += t.await.unwrap();
    }
    let fetches = tokio::task::spawn_blocking(move || agent.jwt_fetches())
        .await
        .unwrap();
    // 8 s of 4 s tokens refreshed at (up to 10 % before) half-life: ~1 + 4.
    assert!(
        (3..=7).contains(&fetches),
        "{fetches} fetches for {checks} checks"
    );
    assert!(checks > 500, "load was real: {checks} checks");
}

// === Validation (in-process agent, so tests can sign tokens with its keys) ===

struct Validation {
    agent: dev_agent::RunningAgent,
    foreign: dev_agent::Authority,
    _dir: tempfile::TempDir,
}

async fn validation_agent() -> Validation {
    let dir = tempfile::tempdir().unwrap();
    let mut config = AgentConfig::new(
        Endpoint::Unix(dir.path().join("agent.sock")),
        TrustDomain::new("example.org").unwrap(),
    );
    config.federate_with = vec![TrustDomain::new("partner.org").unwrap()];
    let agent = Agent::start(config).await.unwrap();
    let foreign = tokio::task::spawn_blocking(|| {
        dev_agent::Authority::new(TrustDomain::new("evil.org").unwrap(), JwtAlg::Es256).unwrap()
    })
    .await
    .unwrap();
    Validation {
        agent,
        foreign,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validator_accepts_fresh_tokens_and_rejects_each_bad_one_with_the_right_status() {
    let v = validation_agent().await;
    let endpoint = v.agent.endpoint().to_string();
    let dir = tempfile::tempdir().unwrap();
    let mut helper = JwtHelper::start(
        dir.path(),
        &endpoint,
        &["--mode", "jwt_svid_validator", "--audience", AUD],
    );
    helper.wait_ready(Duration::from_secs(10));
    let mut c = helper.client().await;
    let own = v.agent.authority();
    let partner = v
        .agent
        .federated_authority(&TrustDomain::new("partner.org").unwrap())
        .unwrap();
    let client_id = "spiffe://example.org/ns/default/sa/client";

    let fresh = own.sign_claims(&claims(client_id, AUD, 300)).unwrap();
    let ok = check(
        &mut c,
        "svc",
        &[
            ("authorization", &format!("bearer {fresh}")),
            ("x-spiffe-id", "spiffe://example.org/forged"),
        ],
    )
    .await;
    assert_eq!(ok.status(), 200, "{ok:?}");
    assert_eq!(
        ok.header("x-spiffe-id"),
        Some(client_id),
        "client-sent copy overwritten"
    );

    let federated = partner
        .sign_claims(&claims("spiffe://partner.org/api", AUD, 300))
        .unwrap();
    assert_eq!(
        check(
            &mut c,
            "svc",
            &[("authorization", &format!("Bearer {federated}"))]
        )
        .await
        .status(),
        200
    );

    let tampered = tampered(
        &fresh,
        &own.sign_claims(&claims("spiffe://example.org/admin", AUD, 300))
            .unwrap(),
    );
    let alg_none = alg_none(&fresh, &own.current_kid());
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "expired",
            own.sign_claims(&claims(client_id, AUD, -10)).unwrap(),
            "expired",
        ),
        (
            "wrong audience",
            own.sign_claims(&claims(client_id, "someone-else", 300))
                .unwrap(),
            "audience",
        ),
        (
            "foreign trust domain",
            v.foreign
                .sign_claims(&claims("spiffe://evil.org/x", AUD, 300))
                .unwrap(),
            "evil.org",
        ),
        ("tampered", tampered, "signature"),
        ("alg none", alg_none, "\"none\""),
        ("garbage", "not.a.jwt".into(), "malformed"),
    ];
    for (what, token, reason) in cases {
        let r = check(
            &mut c,
            "svc",
            &[("authorization", &format!("Bearer {token}"))],
        )
        .await;
        let Verdict::Denied {
            status,
            body,
            headers,
        } = &r
        else {
            panic!("{what} allowed")
        };
        assert_eq!(*status, 401, "{what}: {r:?}");
        assert!(body.contains(reason), "{what}: {body}");
        assert!(
            !body.contains(&token[..token.len().min(20)]) || token.len() < 20,
            "{what}: body echoes the token"
        );
        assert!(
            headers
                .iter()
                .any(|(k, v)| k == "www-authenticate" && v.contains("invalid_token"))
        );
    }
    let missing = check(&mut c, "svc", &[]).await;
    assert_eq!(missing.status(), 401);
    let basic = check(&mut c, "svc", &[("authorization", "Basic dXNlcjpwYXNz")]).await;
    assert_eq!(basic.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validator_allow_lists_answer_403_for_valid_but_refused_identities() {
    let v = validation_agent().await;
    let endpoint = v.agent.endpoint().to_string();
    let dir = tempfile::tempdir().unwrap();
    let mut helper = JwtHelper::start(
        dir.path(),
        &endpoint,
        &[
            "--mode",
            "jwt_svid_validator",
            "--audience",
            AUD,
            "--allow-trust-domain",
            "example.org",
            "--allow-spiffe-id",
            "spiffe://example.org/good",
        ],
    );
    helper.wait_ready(Duration::from_secs(10));
    let mut c = helper.client().await;
    let own = v.agent.authority();
    let partner = v
        .agent
        .federated_authority(&TrustDomain::new("partner.org").unwrap())
        .unwrap();
    let mut status_for = async |a: &dev_agent::Authority, sub: &str| {
        let auth = format!("Bearer {}", a.sign_claims(&claims(sub, AUD, 300)).unwrap());
        check(&mut c, "s", &[("authorization", &auth)])
            .await
            .status()
    };
    assert_eq!(status_for(own, "spiffe://example.org/good").await, 200);
    assert_eq!(
        status_for(own, "spiffe://example.org/other").await,
        403,
        "ID not allowed"
    );
    assert_eq!(
        status_for(&partner, "spiffe://partner.org/good").await,
        403,
        "TD not allowed"
    );
}

// === Process behaviour ===

#[test]
fn bad_configuration_refuses_to_start_with_one_line_naming_the_setting() {
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    // Stamping JWT-SVIDs for anyone on the network needs --allow-non-loopback-listen.
    let anywhere = format!("0.0.0.0:{}", suite_tests::free_port());
    let cases: &[Case<'_>] = &[
        (
            &["--audience", "a", "--listen", &anywhere],
            &[],
            "--listen: not a loopback address",
        ),
        (
            &["--audience", "a"],
            &[("SPIRE_ENVOY_JWT_HELPER_JWT_MODE", "jwt_magic")],
            "SPIRE_ENVOY_JWT_HELPER_JWT_MODE",
        ),
        (&[], &[], "SPIRE_ENVOY_JWT_HELPER_AUDIENCE"),
        (
            &["--audience", "a", "--listen", "127.0.0.1"],
            &[],
            "--listen",
        ),
        (
            &["--audience", "a"],
            &[("SPIRE_ENVOY_JWT_HELPER_SOCKET_PATH", "tcp://localhost:1")],
            "SPIRE_ENVOY_JWT_HELPER_SOCKET_PATH",
        ),
    ];
    for (args, env, setting) in cases {
        let mut cmd = Command::new(bin("jwt-auth-helper"));
        cmd.args(*args).env_remove("SPIFFE_ENDPOINT_SOCKET");
        for (k, v) in *env {
            cmd.env(k, v);
        }
        let out = output(cmd);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains(setting), "{setting} named in: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let agent = DevAgent::start(dir.path(), &[]);
    let mut helper = JwtHelper::start(
        dir.path(),
        &agent.endpoint,
        &["--audience", AUD, "--log-format", "json"],
    );
    helper.wait_ready(Duration::from_secs(10));
    let mut c = helper.client().await;
    assert_eq!(check(&mut c, "svc", &[]).await.status(), 200);
    let clean = tokio::task::spawn_blocking(move || {
        let clean = helper.proc.terminate(Duration::from_secs(10));
        (clean, helper.proc.log())
    })
    .await
    .unwrap();
    assert!(clean.0, "exit 0 on SIGTERM:\n{}", clean.1);
    // JSON logs, and never a token in them.
    for line in clean.1.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        assert!(v.get("level").is_some());
        assert!(!line.contains("eyJ"), "a token in the logs: {line}");
    }
}

// === Key retirement ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retiring_the_signing_key_changes_the_stamped_token_within_a_second_under_load() {
    let dir = tempfile::tempdir().unwrap();
    // Default 5-minute tokens: without the bundle watch the old token would be stamped until
    // its half-life refresh, 2.5 minutes away.
    let agent = DevAgent::start(dir.path(), &[]);
    let mut helper = JwtHelper::start(dir.path(), &agent.endpoint, &["--audience", AUD]);
    helper.wait_ready(Duration::from_secs(10));
    let mut c = helper.client().await;
    let before = bearer_of(&check(&mut c, "svc", &[]).await);

    let load = Load::start(&helper, 4).await;
    let (ok, failed) = (load.ok.clone(), load.failed.clone());
    while ok.load(Ordering::Relaxed) < 100 {
        tokio::task::yield_now().await;
    }

    let (agent, retired_at) = tokio::task::spawn_blocking(move || {
        agent.post("/retire/jwt");
        (agent, Instant::now())
    })
    .await
    .unwrap();
    let after = loop {
        let token = bearer_of(&check(&mut c, "svc", &[]).await);
        if token != before {
            break token;
        }
        assert!(
            retired_at.elapsed() < Duration::from_secs(5),
            "still stamping the token of the retired key"
        );
    };
    let took = retired_at.elapsed();
    eprintln!("stamped token changed {took:?} after the key left the bundle");
    load.stop().await;
    assert!(took < Duration::from_secs(1), "{took:?}");
    let kid = |t: &str| {
        use base64::Engine as _;
        let header = t.split('.').next().unwrap();
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header)
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&bytes).unwrap()["kid"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_ne!(kid(&before), kid(&after), "signed with the new key");
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "no check failed meanwhile"
    );
    let fetches = tokio::task::spawn_blocking(move || agent.jwt_fetches())
        .await
        .unwrap();
    assert_eq!(
        fetches, 2,
        "one refetch for the retired key, not one per request"
    );
}

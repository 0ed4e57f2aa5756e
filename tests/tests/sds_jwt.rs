#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! JWT-SVIDs over SDS: a real Envoy's credential_injector, fed generic secrets by sds-bridge,
//! stamps `Authorization: Bearer <JWT-SVID>` with no per-request call; tokens refreshed before
//! expiry; two audiences on one Envoy get two tokens; about one fetch per half-life.

use std::time::{Duration, Instant};

use suite_tests::envoy::{EchoServer, Envoy, request, static_cluster};
use suite_tests::sds::{SdsBridge, bootstrap, credential_injector_listener, sds_cluster};
use suite_tests::sidecars::{jwt_claims, unix_now};
use suite_tests::{DevAgent, free_port, wait_until};

const TTL_SECS: u64 = 4;

fn bearer(echo: &serde_json::Value) -> String {
    echo["headers"]["authorization"]
        .as_str()
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_else(|| panic!("no bearer token upstream: {echo}"))
        .to_owned()
}

#[test]
fn credential_injector_stamps_refreshed_jwt_svids_for_two_audiences() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let agent = DevAgent::start(
        dir,
        &[
            "--trust-domain",
            "example.org",
            "--spiffe-id",
            "spiffe://example.org/ns/default/sa/client",
            "--jwt-ttl",
            &format!("{TTL_SECS}s"),
        ],
    );
    let mut bridge = SdsBridge::start(
        "sds-bridge",
        dir,
        &agent.endpoint,
        &[
            "--allow-jwt-audience",
            "backend",
            "--allow-jwt-audience",
            "sts.amazonaws.com",
        ],
    );
    bridge.wait_ready(Duration::from_secs(10));
    let echo = EchoServer::start();
    let (backend_port, sts_port) = (free_port(), free_port());
    let _envoy = Envoy::start(
        "envoy",
        dir,
        &bootstrap(
            free_port(),
            "client",
            &[
                credential_injector_listener("to_backend", backend_port, "sds", "jwt-svid:backend"),
                credential_injector_listener(
                    "to_sts",
                    sts_port,
                    "sds",
                    "jwt-svid:sts.amazonaws.com",
                ),
            ],
            &[
                sds_cluster("sds", &bridge.socket),
                static_cluster("upstream", echo.addr, false),
            ],
        ),
    );
    let get = |port: u16| {
        let addr = format!("127.0.0.1:{port}").parse().unwrap();
        request(addr, "GET", "/", &[("authorization", "Bearer client-sent")]).unwrap()
    };

    // Two audiences, two different tokens, both for our SPIFFE ID; the client's own
    // authorization header is overwritten.
    let to_backend = bearer(&get(backend_port).json());
    let to_sts = bearer(&get(sts_port).json());
    assert_ne!(to_backend, to_sts);
    for (token, aud) in [(&to_backend, "backend"), (&to_sts, "sts.amazonaws.com")] {
        let claims = jwt_claims(token);
        assert_eq!(claims["sub"], "spiffe://example.org/ns/default/sa/client");
        assert_eq!(claims["aud"], serde_json::json!([aud]));
    }

    // A loop across several token lifetimes: never a failed request, never an expired token.
    let fetches_before = agent.jwt_fetches();
    let started = Instant::now();
    let run = Duration::from_secs(3 * TTL_SECS);
    let mut requests = 0;
    let mut tokens = std::collections::BTreeSet::new();
    while started.elapsed() < run {
        for port in [backend_port, sts_port] {
            let r = get(port);
            assert_eq!(r.status, 200, "{}", r.body);
            let token = bearer(&r.json());
            let exp = jwt_claims(&token)["exp"].as_i64().unwrap();
            assert!(exp > unix_now(), "expired token stamped (exp {exp})");
            tokens.insert(token);
            requests += 1;
        }
    }
    let fetches = agent.jwt_fetches() - fetches_before;
    let half_lives = run.as_secs_f64() / (TTL_SECS as f64 / 2.0);
    eprintln!(
        "{requests} requests over {run:?}: {} distinct tokens, {fetches} FetchJWTSVID for 2 audiences \
         ({half_lives:.0} half-lives each)",
        tokens.len()
    );
    // About one fetch per half-life per audience (refresh at half-life minus up to 10 %).
    assert!(
        (2.0 * (half_lives - 2.0)..=2.0 * (half_lives + 2.0)).contains(&(fetches as f64)),
        "{fetches} fetches for 2 audiences over {half_lives:.1} half-lives"
    );
    assert!(
        tokens.len() >= 2 * 3,
        "tokens were refreshed: {}",
        tokens.len()
    );
    assert_eq!(bridge.metric("sds_bridge_nacks_total"), 0.0);
    let left =
        bridge.metric(r#"sds_bridge_jwt_svid_expiry_seconds{audience="backend",spiffe_id=""}"#);
    assert!(
        left > 0.0 && left <= TTL_SECS as f64,
        "token expiry exported: {left}"
    );
    // Tokens never reach the logs.
    let log = bridge.proc.log();
    for t in &tokens {
        assert!(!log.contains(t.as_str()), "a token was logged");
    }
}

/// The key that signed the pushed token leaves the bundle; sds-bridge pushes
/// a token signed by the new key at once, instead of at the token's half-life (2.5 minutes
/// with these 5-minute tokens).
#[test]
fn a_retired_signing_key_is_replaced_in_envoy_within_a_second() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let agent = DevAgent::start(
        dir,
        &["--spiffe-id", "spiffe://example.org/ns/default/sa/client"],
    );
    let mut bridge = SdsBridge::start(
        "sds-bridge",
        dir,
        &agent.endpoint,
        &["--allow-jwt-audience", "backend"],
    );
    bridge.wait_ready(Duration::from_secs(10));
    let echo = EchoServer::start();
    let port = free_port();
    let _envoy = Envoy::start(
        "envoy",
        dir,
        &bootstrap(
            free_port(),
            "client",
            &[credential_injector_listener(
                "to_backend",
                port,
                "sds",
                "jwt-svid:backend",
            )],
            &[
                sds_cluster("sds", &bridge.socket),
                static_cluster("upstream", echo.addr, false),
            ],
        ),
    );
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let get = || bearer(&request(addr, "GET", "/", &[]).unwrap().json());
    wait_until("Envoy stamps a token", Duration::from_secs(20), || {
        request(addr, "GET", "/", &[]).is_some_and(|r| r.status == 200)
    });
    let before = get();
    agent.post("/retire/jwt");
    let retired_at = Instant::now();
    while get() == before {
        assert!(
            retired_at.elapsed() < Duration::from_secs(5),
            "Envoy still stamps the token of the retired key"
        );
    }
    let took = retired_at.elapsed();
    eprintln!("Envoy's stamped token changed {took:?} after the key left the bundle");
    assert!(took < Duration::from_secs(1), "{took:?}");
}

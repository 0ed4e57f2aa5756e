//! jwt-auth-helper behind real Envoy 1.40, wired as in an Istio pod: an outbound Envoy with the
//! EnvoyFilter's ext_authz (google_grpc, 0.5 s timeout, failure_mode_allow false) stamps the
//! JWT-SVID; an inbound Envoy playing Istio's RequestAuthentication (jwt_authn, remote JWKS from
//! the dev agent's OIDC `/keys`) accepts it. And the validator mode as Envoy's ext_authz.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers outside #[test] fns

use std::net::SocketAddr;
use std::time::Duration;

use dev_agent::{Agent, Config as AgentConfig, JwtAlg};
use suite_tests::envoy::{
    EchoServer, Envoy, Response, ext_authz_proxy, ext_authz_proxy_envoy_grpc, jwt_authn_proxy,
    request,
};
use suite_tests::sidecars::{JwtHelper, alg_none, claims, jwt_claims, tampered};
use suite_tests::{DevAgent, free_port};
use workload_client::Endpoint;
use workload_client::spiffe::TrustDomain;

const AUD: &str = "spiffe://example.org/ns/default/sa/backend";
const CLIENT: &str = "spiffe://example.org/ns/default/sa/client";

fn get(addr: SocketAddr, headers: &[(&str, &str)]) -> Response {
    request(addr, "GET", "/hello", headers).expect("HTTP request through Envoy")
}

fn listen_addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[test]
fn outbound_envoy_stamps_the_jwt_and_inbound_jwt_authn_accepts_it() {
    let dir = tempfile::tempdir().unwrap();
    let oidc = free_port();
    let issuer = format!("http://127.0.0.1:{oidc}");
    let agent = DevAgent::start(
        dir.path(),
        &[
            "--spiffe-id",
            CLIENT,
            "--oidc-listen",
            &format!("127.0.0.1:{oidc}"),
            "--jwt-issuer",
            &issuer,
        ],
    );
    let mut helper = JwtHelper::start(dir.path(), &agent.endpoint, &["--audience", AUD]);
    helper.wait_ready(Duration::from_secs(10));

    let upstream = EchoServer::start();
    let inbound_port = free_port();
    let inbound = Envoy::start(
        "inbound",
        dir.path(),
        &jwt_authn_proxy(
            free_port(),
            inbound_port,
            upstream.addr,
            &issuer,
            &[AUD],
            listen_addr(oidc),
        ),
    );
    for (name, yaml) in [
        (
            "outbound-google-grpc",
            ext_authz_proxy as fn(u16, u16, SocketAddr, SocketAddr) -> String,
        ),
        ("outbound-envoy-grpc", ext_authz_proxy_envoy_grpc),
    ] {
        let out_port = free_port();
        let outbound = Envoy::start(
            name,
            dir.path(),
            &yaml(
                free_port(),
                out_port,
                listen_addr(inbound_port),
                helper.listen,
            ),
        );
        let r = get(listen_addr(out_port), &[("x-request", name)]);
        assert_eq!(r.status, 200, "{name}: {r:?}");
        let seen = r.json();
        let auth = seen["headers"]["authorization"]
            .as_str()
            .expect("authorization reached upstream");
        let claims = jwt_claims(auth.strip_prefix("Bearer ").unwrap());
        assert_eq!(claims["sub"], CLIENT);
        assert_eq!(claims["aud"], serde_json::json!([AUD]));
        assert_eq!(claims["iss"], issuer.as_str());
        assert_eq!(
            outbound.stat("http.ingress_http.ext_authz.ok"),
            Some(1),
            "{name}"
        );
    }
    assert_eq!(inbound.stat("http.ingress_http.jwt_authn.allowed"), Some(2));

    // Without the helper (straight to the inbound Envoy) there is no token: rejected.
    let direct = get(listen_addr(inbound_port), &[]);
    assert_eq!(direct.status, 401, "{direct:?}");
    assert_eq!(
        upstream.requests(),
        2,
        "the rejected request never reached the workload"
    );
}

#[test]
fn outbound_envoy_fails_closed_with_503_before_the_agent_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let (_, endpoint) = DevAgent::planned(dir.path());
    let helper = JwtHelper::start(dir.path(), &endpoint, &["--audience", AUD]);
    let upstream = EchoServer::start();
    let port = free_port();
    let _envoy = Envoy::start(
        "outbound",
        dir.path(),
        &ext_authz_proxy(free_port(), port, upstream.addr, helper.listen),
    );
    let r = get(listen_addr(port), &[]);
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.body.contains("no JWT-SVID available"), "{}", r.body);
    assert_eq!(upstream.requests(), 0);

    let _agent = DevAgent::start(dir.path(), &[]);
    suite_tests::wait_until("a stamped request", Duration::from_secs(5), || {
        get(listen_addr(port), &[]).status == 200
    });
    assert!(
        upstream.seen()[0]["headers"]["authorization"]
            .as_str()
            .unwrap()
            .starts_with("Bearer ")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_envoy_with_validator_accepts_fresh_tokens_and_rejects_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(AgentConfig::new(
        Endpoint::Unix(dir.path().join("agent.sock")),
        TrustDomain::new("example.org").unwrap(),
    ))
    .await
    .unwrap();
    let own = agent.authority().clone();
    let foreign = tokio::task::spawn_blocking(|| {
        dev_agent::Authority::new(TrustDomain::new("evil.org").unwrap(), JwtAlg::Es256).unwrap()
    })
    .await
    .unwrap();
    let endpoint = agent.endpoint().to_string();
    let fresh = own.sign_claims(&claims(CLIENT, AUD, 300)).unwrap();
    let tampered = tampered(
        &fresh,
        &own.sign_claims(&claims("spiffe://example.org/admin", AUD, 300))
            .unwrap(),
    );
    let alg_none = alg_none(&fresh, &own.current_kid());
    let cases = vec![
        ("fresh", fresh.clone(), 200),
        (
            "expired",
            own.sign_claims(&claims(CLIENT, AUD, -10)).unwrap(),
            401,
        ),
        (
            "wrong audience",
            own.sign_claims(&claims(CLIENT, "other", 300)).unwrap(),
            401,
        ),
        (
            "foreign trust domain",
            foreign
                .sign_claims(&claims("spiffe://evil.org/x", AUD, 300))
                .unwrap(),
            401,
        ),
        ("tampered", tampered, 401),
        ("alg none", alg_none, 401),
    ];
    let dir_path = dir.path().to_path_buf();
    // Processes and blocking HTTP run off the runtime that serves the in-process agent.
    tokio::task::spawn_blocking(move || {
        let mut helper = JwtHelper::start(
            &dir_path,
            &endpoint,
            &["--mode", "jwt_svid_validator", "--audience", AUD],
        );
        helper.wait_ready(Duration::from_secs(10));
        let upstream = EchoServer::start();
        let port = free_port();
        let _envoy = Envoy::start(
            "inbound",
            &dir_path,
            &ext_authz_proxy(free_port(), port, upstream.addr, helper.listen),
        );
        for (what, token, want) in cases {
            let auth = format!("Bearer {token}");
            let r = get(
                listen_addr(port),
                &[
                    ("authorization", &auth),
                    ("x-spiffe-id", "spiffe://example.org/forged"),
                ],
            );
            assert_eq!(r.status, want, "{what}: {r:?}");
            if want == 401 {
                assert_eq!(
                    r.header("www-authenticate"),
                    Some("Bearer error=\"invalid_token\""),
                    "{what}"
                );
                assert!(!r.body.contains(&token), "{what}: body echoes the token");
            }
        }
        let missing = get(listen_addr(port), &[]);
        assert_eq!(missing.status, 401);
        assert_eq!(
            upstream.requests(),
            1,
            "only the fresh token reached the workload"
        );
        let seen = &upstream.seen()[0];
        assert_eq!(
            seen["headers"]["x-spiffe-id"], CLIENT,
            "authenticated ID, not the forged one"
        );
    })
    .await
    .unwrap();
    agent.shutdown().await;
}

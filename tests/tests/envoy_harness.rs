//! The Envoy harness against a real Envoy 1.40: the bootstrap builders validate, a plain proxy
//! forwards to the echo upstream, ext_authz fails closed without its server, and jwt_authn
//! rejects a request without a token.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers outside #[test] fns

use std::net::SocketAddr;

use suite_tests::envoy::{
    EchoServer, Envoy, ext_authz_proxy, ext_authz_proxy_envoy_grpc, jwt_authn_proxy, plain_proxy,
    request,
};
use suite_tests::free_port;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[test]
fn every_builder_validates() {
    let dir = tempfile::tempdir().unwrap();
    let up = addr(18080);
    let side = addr(19010);
    for (name, yaml) in [
        ("plain", plain_proxy(9901, 10000, up)),
        (
            "ext_authz google_grpc",
            ext_authz_proxy(9901, 10000, up, side),
        ),
        (
            "ext_authz envoy_grpc",
            ext_authz_proxy_envoy_grpc(9901, 10000, up, side),
        ),
        (
            "jwt_authn",
            jwt_authn_proxy(
                9901,
                10000,
                up,
                "http://127.0.0.1:8443",
                &["sky-computing-demo", "other"],
                side,
            ),
        ),
    ] {
        if let Err(e) = Envoy::validate(dir.path(), &yaml) {
            panic!("{name}: {e}\n--- yaml ---\n{yaml}");
        }
    }
    assert!(Envoy::validate(dir.path(), "admin: {nonsense: 1}").is_err());
}

#[test]
fn plain_proxy_forwards_to_the_echo_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let echo = EchoServer::start();
    let (admin, listen) = (free_port(), free_port());
    let envoy = Envoy::start(
        "envoy-plain",
        dir.path(),
        &plain_proxy(admin, listen, echo.addr),
    );

    let r = request(
        addr(listen),
        "GET",
        "/some/path?q=1",
        &[("x-test", "1"), ("x-multi", "a"), ("x-multi", "b")],
    )
    .expect("request through envoy");
    assert_eq!(r.status, 200, "{r:?}");
    let echoed = r.json();
    assert_eq!(echoed["method"], "GET");
    assert_eq!(echoed["path"], "/some/path?q=1");
    assert_eq!(echoed["headers"]["x-test"], "1");
    assert_eq!(echoed["headers"]["x-multi"], "a, b");
    assert!(echoed["headers"]["x-request-id"].is_string(), "{echoed}");
    assert_eq!(echo.requests(), 1);
    assert_eq!(echo.seen()[0]["headers"]["x-test"], "1");
    assert_eq!(envoy.stat("cluster.upstream.upstream_rq_200"), Some(1));
    assert_eq!(envoy.stat("no.such.stat"), None);
    assert_eq!(envoy.warnings(), Vec::<String>::new());
}

#[test]
fn ext_authz_fails_closed_without_its_server() {
    let dir = tempfile::tempdir().unwrap();
    let echo = EchoServer::start();
    // Nothing listens on the authz port: both gRPC clients must deny, never pass through.
    let authz = addr(free_port());
    for (name, build) in [
        (
            "google",
            ext_authz_proxy as fn(u16, u16, SocketAddr, SocketAddr) -> String,
        ),
        ("envoy", ext_authz_proxy_envoy_grpc),
    ] {
        let (admin, listen) = (free_port(), free_port());
        let envoy = Envoy::start(
            &format!("envoy-authz-{name}"),
            dir.path(),
            &build(admin, listen, echo.addr, authz),
        );
        let r = request(addr(listen), "GET", "/", &[("x-test", "1")]).expect("request");
        assert!(
            r.status == 403 || r.status >= 500,
            "{name}: expected a denial, got {r:?}\n{}",
            envoy.stats_matching("ext_authz")
        );
        assert_eq!(echo.requests(), 0, "{name}: request reached the upstream");
        assert_eq!(
            envoy.stat("http.ingress_http.ext_authz.error"),
            Some(1),
            "{name}:\n{}",
            envoy.stats_matching("ext_authz")
        );
        assert_eq!(envoy.warnings(), Vec::<String>::new(), "{name}");
    }
}

#[test]
fn jwt_authn_rejects_a_request_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let echo = EchoServer::start();
    let jwks = EchoServer::start(); // not a JWKS: fine, a missing token never needs the keys
    let (admin, listen) = (free_port(), free_port());
    let envoy = Envoy::start(
        "envoy-jwt",
        dir.path(),
        &jwt_authn_proxy(
            admin,
            listen,
            echo.addr,
            "http://127.0.0.1:1",
            &["sky-computing-demo"],
            jwks.addr,
        ),
    );
    let r = request(addr(listen), "GET", "/", &[]).expect("request");
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(echo.requests(), 0);
    assert_eq!(
        envoy.stat("http.ingress_http.jwt_authn.denied"),
        Some(1),
        "{}",
        envoy.stats_matching("jwt_authn")
    );
    assert_eq!(envoy.warnings(), Vec::<String>::new());
}

/// A JWT-SVID from a real dev agent for `audience`.
fn jwt_svid(endpoint: &str, audience: &str) -> String {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = workload_client::WorkloadApiClient::new(
            workload_client::Endpoint::parse(endpoint).unwrap(),
        );
        client
            .fetch_jwt_svid(&[audience.to_owned()], None)
            .await
            .unwrap()
            .token()
            .to_owned()
    })
}

#[test]
fn jwt_authn_accepts_a_dev_agent_token_from_its_oidc_keys() {
    let dir = tempfile::tempdir().unwrap();
    let oidc = addr(free_port());
    let issuer = format!("http://{oidc}");
    let agent = suite_tests::DevAgent::start(
        dir.path(),
        &["--oidc-listen", &oidc.to_string(), "--jwt-issuer", &issuer],
    );
    let echo = EchoServer::start();
    let (admin, listen) = (free_port(), free_port());
    let envoy = Envoy::start(
        "envoy-jwt",
        dir.path(),
        &jwt_authn_proxy(
            admin,
            listen,
            echo.addr,
            &issuer,
            &["sky-computing-demo"],
            oidc,
        ),
    );

    let good = jwt_svid(&agent.endpoint, "sky-computing-demo");
    let bearer = format!("Bearer {good}");
    let r = request(addr(listen), "GET", "/", &[("authorization", &bearer)]).expect("request");
    assert_eq!(
        r.status,
        200,
        "{r:?}\n{}",
        envoy.stats_matching("jwt_authn")
    );
    assert_eq!(
        r.json()["headers"]["authorization"],
        bearer,
        "forward: true keeps the token"
    );

    let wrong_aud = format!("Bearer {}", jwt_svid(&agent.endpoint, "someone-else"));
    let r = request(addr(listen), "GET", "/", &[("authorization", &wrong_aud)]).expect("request");
    assert_eq!(r.status, 403, "{r:?}");
    let r = request(
        addr(listen),
        "GET",
        "/",
        &[("authorization", "Bearer not.a.jwt")],
    )
    .expect("request");
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(echo.requests(), 1);
    assert_eq!(
        envoy.stat("http.ingress_http.jwt_authn.jwks_fetch_success"),
        Some(1)
    );
    assert_eq!(envoy.warnings(), Vec::<String>::new());
}

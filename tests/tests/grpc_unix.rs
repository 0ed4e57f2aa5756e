#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Real gRPC clients on our Unix sockets with their default options: Envoy's
//! `google_grpc` client (gRPC C-core, which sends the socket path as `:authority`) gets its
//! certificates, bundle, a JWT-SVID and rotations from sds-bridge. The dev agent's side
//! (py-spiffe and raw grpcio) is in dev_agent_conformance.rs, jwt-auth-helper's in
//! jwt_auth_helper_unix.rs.

use std::collections::BTreeSet;
use std::time::Duration;

use suite_tests::envoy::{EchoServer, Envoy, request, static_cluster};
use suite_tests::sds::{
    Shape, Workload, bootstrap, common_tls_context, credential_injector_listener, http_listener,
    mtls_listener, sds_cluster, tls_cluster, xfcc_uri_and_serial,
};
use suite_tests::sidecars::jwt_claims;
use suite_tests::{free_port, wait_until};

fn get(port: u16, path: &str) -> suite_tests::envoy::Response {
    request(
        format!("127.0.0.1:{port}").parse().unwrap(),
        "GET",
        path,
        &[],
    )
    .unwrap_or_else(|| panic!("no response on port {port}"))
}

#[test]
fn envoy_google_grpc_sds_over_a_unix_socket_gets_default_rootca_a_jwt_and_rotations() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let state = root.join("state");
    let server = Workload::start(root, "server", "example.org", &state, &[], &[]);
    // The client's SVIDs live 4 s: a rotation about every 2 s.
    let client = Workload::start(
        root,
        "client",
        "example.org",
        &state,
        &["--x509-ttl", "4s"],
        &["--allow-jwt-audience", "backend"],
    );
    let (server_bridge, client_bridge) = (&server.bridge, &client.bridge);

    // Server Envoy with Envoy's own client, as the other tests; client Envoy with google_grpc
    // only: its certificate, ROOTCA and the JWT-SVID all come over gRPC C-core.
    let echo = EchoServer::start();
    let mtls_port = free_port();
    let _server_envoy = Envoy::start(
        "envoy-server",
        root,
        &bootstrap(
            free_port(),
            "server",
            &[mtls_listener(
                "mtls",
                mtls_port,
                &common_tls_context(Shape::Istio, "sds", "", ""),
            )],
            &[
                sds_cluster("sds", &server_bridge.socket),
                static_cluster("upstream", echo.addr, false),
            ],
        ),
    );
    let target = format!("unix://{}", client_bridge.socket.display());
    let (out_port, jwt_port) = (free_port(), free_port());
    let mtls: std::net::SocketAddr = format!("127.0.0.1:{mtls_port}").parse().unwrap();
    let client_envoy = Envoy::start(
        "envoy-client",
        root,
        &bootstrap(
            free_port(),
            "client",
            &[
                http_listener("out", out_port, &[("/", "mtls")]),
                credential_injector_listener("jwt", jwt_port, &target, "jwt-svid:backend"),
            ],
            &[
                // One request per connection: each handshake shows the current certificate.
                tls_cluster(
                    "mtls",
                    mtls,
                    &common_tls_context(Shape::Istio, &target, "", ""),
                    1,
                ),
                static_cluster("upstream", echo.addr, false),
            ],
        ),
    );

    // `default` and `ROOTCA`: mTLS works and the server sees the client's SPIFFE ID.
    let serial = |r: &suite_tests::envoy::Response| {
        let xfcc = r.json()["headers"]["x-forwarded-client-cert"]
            .as_str()
            .unwrap_or_else(|| panic!("no XFCC: {}", r.body))
            .to_owned();
        let (uri, serial) = xfcc_uri_and_serial(&xfcc);
        assert_eq!(uri, "spiffe://example.org/client");
        serial
    };
    let r = get(out_port, "/");
    assert_eq!(r.status, 200, "{}", r.body);
    let mut serials = BTreeSet::from([serial(&r)]);

    // The `jwt-svid:backend` generic secret: stamped by credential_injector.
    let r = get(jwt_port, "/");
    assert_eq!(r.status, 200, "{}", r.body);
    let token = r.json()["headers"]["authorization"]
        .as_str()
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_else(|| panic!("no bearer token: {}", r.body))
        .to_owned();
    let claims = jwt_claims(&token);
    assert_eq!(claims["sub"], "spiffe://example.org/client");
    assert_eq!(claims["aud"][0], "backend");

    // Rotations reach Envoy over the same google_grpc stream: new client certificates.
    wait_until(
        "two new client certificates",
        Duration::from_secs(30),
        || {
            let r = get(out_port, "/");
            assert_eq!(r.status, 200, "{}", r.body);
            serials.insert(serial(&r));
            serials.len() >= 3
        },
    );

    // The bridge replaced grpc-core's `:authority` and refused nothing; Envoy ACKed.
    let rewrites = client_bridge.metric("sds_bridge_grpc_unix_authority_rewrites_total");
    assert!(rewrites >= 1.0, "authority rewrites: {rewrites}");
    assert_eq!(
        client_bridge.metric("sds_bridge_grpc_unix_passthrough_connections_total"),
        0.0
    );
    assert_eq!(client_bridge.metric("sds_bridge_nacks_total"), 0.0);
    assert!(
        client_envoy.stat("sds.default.update_success").unwrap_or(0) >= 3,
        "{}",
        client_envoy.stats_matching("sds.")
    );
}

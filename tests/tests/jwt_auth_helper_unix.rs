#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! jwt-auth-helper as Envoy reaches it in a pod: ext_authz over a Unix socket with both of
//! Envoy's gRPC clients (`envoy_grpc` through a pipe cluster, `google_grpc` with a `unix:`
//! target, whose socket-path `:authority` the helper accepts), and two helpers started from
//! upstream HCL files alone in one network namespace (one stamping, one checking).

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use suite_tests::envoy::{AuthzVia, EchoServer, Envoy, ext_authz_proxy_via, request};
use suite_tests::sidecars::{JwtHelper, jwt_claims};
use suite_tests::{DevAgent, Proc, bin, free_port, free_port_pair, http, wait_until};

const AUD: &str = "spiffe://example.org/ns/default/sa/backend";
const CLIENT: &str = "spiffe://example.org/ns/default/sa/client";

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn bearer_sub(r: &suite_tests::envoy::Response) -> String {
    let auth = r.json()["headers"]["authorization"]
        .as_str()
        .unwrap_or_else(|| panic!("no authorization upstream: {}", r.body))
        .to_owned();
    jwt_claims(auth.strip_prefix("Bearer ").unwrap())["sub"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn ext_authz_over_a_unix_socket_with_envoy_grpc_and_google_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let agent = DevAgent::start(dir.path(), &["--spiffe-id", CLIENT]);
    let (mut helper, socket) =
        JwtHelper::start_unix(dir.path(), &agent.endpoint, &["--audience", AUD]);
    helper.wait_ready(Duration::from_secs(10));
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&socket).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "the socket is owner-only by default");

    let upstream = EchoServer::start();
    for (name, via) in [
        ("envoy-grpc-pipe", AuthzVia::EnvoyUnix(&socket)),
        ("google-grpc-unix", AuthzVia::GoogleUnix(&socket)),
    ] {
        let port = free_port();
        let envoy = Envoy::start(
            name,
            dir.path(),
            &ext_authz_proxy_via(free_port(), port, upstream.addr, via),
        );
        for _ in 0..3 {
            let r = request(local(port), "GET", "/", &[]).unwrap();
            assert_eq!(r.status, 200, "{name}: {}", r.body);
            assert_eq!(bearer_sub(&r), CLIENT, "{name}");
        }
        assert_eq!(
            envoy.stat("http.ingress_http.ext_authz.ok"),
            Some(3),
            "{name}"
        );
    }
    // google_grpc sent the socket path as :authority on its connection; it was replaced.
    let rewrites = helper.metric("jwt_auth_helper_grpc_unix_authority_rewrites_total");
    assert!(rewrites >= 3.0, "authority rewrites: {rewrites}");
    assert_eq!(
        helper.metric("jwt_auth_helper_grpc_unix_passthrough_connections_total"),
        0.0
    );

    // SIGTERM: the helper stops and removes its socket.
    assert!(helper.proc.terminate(Duration::from_secs(10)));
    assert!(!socket.exists(), "socket removed at shutdown");
}

/// Starts a helper the upstream way: only an HCL file, no flag or variable of ours.
fn helper_from_hcl(dir: &std::path::Path, name: &str, hcl: &str) -> Proc {
    let file = dir.join(format!("{name}.conf"));
    std::fs::write(&file, hcl).unwrap();
    let mut cmd = Command::new(bin("jwt-auth-helper"));
    cmd.arg("--config")
        .arg(&file)
        .env_remove("SPIFFE_ENDPOINT_SOCKET")
        .env("RUST_LOG", "info");
    Proc::spawn(name, cmd, dir)
}

#[test]
fn two_helpers_from_upstream_hcl_files_share_a_network_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let agent = DevAgent::start(dir.path(), &["--spiffe-id", CLIENT]);
    let (inject_port, check_port) = (free_port_pair(), free_port_pair());
    let hcl = |port: u16, mode: &str| {
        format!(
            "socket_path = \"{}\"\nhost = \"127.0.0.1\"\nport = {port}\njwt_mode = \"{mode}\"\naudience = \"{AUD}\"\n",
            agent.endpoint
        )
    };
    let mut injector = helper_from_hcl(dir.path(), "injector", &hcl(inject_port, "jwt_injection"));
    let mut validator = helper_from_hcl(
        dir.path(),
        "validator",
        &hcl(check_port, "jwt_svid_validator"),
    );
    // Both come up and become ready, each with its admin on the port after its ext_authz port.
    for (proc, port) in [(&mut injector, inject_port), (&mut validator, check_port)] {
        wait_until(
            "helper /readyz on ext_authz port + 1",
            Duration::from_secs(20),
            || {
                proc.assert_running();
                http(local(port + 1), "GET", "/readyz").is_some_and(|(s, _)| s == 200)
            },
        );
    }

    // Outbound Envoy stamps through the injector; inbound Envoy checks through the validator.
    let upstream = EchoServer::start();
    let inbound_port = free_port();
    let _inbound = Envoy::start(
        "inbound",
        dir.path(),
        &ext_authz_proxy_via(
            free_port(),
            inbound_port,
            upstream.addr,
            AuthzVia::GoogleTcp(local(check_port)),
        ),
    );
    let outbound_port = free_port();
    let _outbound = Envoy::start(
        "outbound",
        dir.path(),
        &ext_authz_proxy_via(
            free_port(),
            outbound_port,
            local(inbound_port),
            AuthzVia::GoogleTcp(local(inject_port)),
        ),
    );
    let r = request(local(outbound_port), "GET", "/", &[]).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(bearer_sub(&r), CLIENT);
    let direct = request(local(inbound_port), "GET", "/", &[]).unwrap();
    assert_eq!(direct.status, 401, "no token: refused by the validator");
    assert_eq!(upstream.requests(), 1);
    injector.assert_running();
    validator.assert_running();
}

#[test]
fn an_admin_address_set_explicitly_and_busy_fails_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_addr = busy.local_addr().unwrap().to_string();
    let out = Command::new(bin("jwt-auth-helper"))
        .args([
            "--audience",
            AUD,
            "--socket",
            "unix:///nonexistent/agent.sock",
            "--listen",
            &local(free_port()).to_string(),
            "--admin-listen",
            &busy_addr,
        ])
        .env_remove("SPIFFE_ENDPOINT_SOCKET")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("binding the admin listener on {busy_addr}")),
        "{stderr}"
    );
    drop(dir);
}

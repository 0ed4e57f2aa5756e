//! Go's and Java's gRPC clients on our Unix sockets, with their default options and none of
//! our code: go-spiffe (grpc-go) and java-spiffe (grpc-java over netty's epoll Unix-socket
//! channel) against spiffe-dev-agent, and a grpc-go SDS client with Envoy's own Go protos
//! (go-control-plane) against sds-bridge. Each runs with the `:authority` adapter on and off,
//! and what each sends as `:authority` is read off the wire on a bare socket, so the table
//! of clients in docs/architecture.md is measured, not assumed. The programs live in tests/go
//! and tests/java and are built by `suite_tests::clients` (`cargo xtask test` builds them first).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers outside #[test] fns

use std::io::{Read as _, Write as _};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use suite_tests::clients::{go_program, java_spiffe_client, json_lines, run_client};
use suite_tests::sds::SdsBridge;
use suite_tests::{DevAgent, Proc, python_with, wait_until};

const ID: &str = "spiffe://example.org/ns/default/sa/web";
const AUDIENCE: &str = "backend";
const RUN: Duration = Duration::from_secs(60);

/// An agent for [`ID`] federated with partner.org, its adapter `on` or `off`.
fn agent(dir: &Path, adapter: &str) -> DevAgent {
    DevAgent::start(
        dir,
        &[
            "--trust-domain",
            "example.org",
            "--spiffe-id",
            ID,
            "--federate-with",
            "partner.org",
            "--unix-authority-adapter",
            adapter,
        ],
    )
}

fn trust_domains(bundles: &Value) -> Vec<&str> {
    bundles
        .as_array()
        .unwrap_or_else(|| panic!("not a list of bundles: {bundles}"))
        .iter()
        .map(|b| {
            assert!(b["authorities"].as_u64().unwrap() >= 1, "empty bundle: {b}");
            b["trust_domain"].as_str().unwrap()
        })
        .collect()
}

/// What go-spiffe and java-spiffe must both have seen: the agent's SVIDs and every bundle,
/// own and federated, with the chain and the token verified by the library's own code
/// against the bundles it fetched, and the agent's ValidateJWTSVID for the right audience only.
fn assert_workload_api_summary(s: &Value) {
    let svids = s["x509_svids"].as_array().unwrap();
    assert_eq!(svids.len(), 1, "{s}");
    assert_eq!(svids[0]["id"], ID, "{s}");
    assert_eq!(svids[0]["trust_domain"], "example.org", "{s}");
    assert!(svids[0]["chain_len"].as_u64().unwrap() >= 1, "{s}");
    for field in ["x509_bundles", "fetched_x509_bundles", "jwt_bundles"] {
        assert_eq!(
            trust_domains(&s[field]),
            ["example.org", "partner.org"],
            "{field}: {s}"
        );
    }
    let jwt = &s["jwt_svid"];
    assert_eq!(jwt["id"], ID, "{s}");
    assert_eq!(jwt["audience"], json!([AUDIENCE]), "{s}");
    assert_eq!(jwt["verified_id"], ID, "{s}");
    assert_eq!(jwt["agent_validated_id"], ID, "{s}");
    assert_ne!(jwt["wrong_audience_error"], "accepted", "{s}");
}

/// The one JSON summary a Workload API client prints (its error, when it failed).
fn summary(lines: &[Value], log: &str) -> Value {
    match lines {
        [one] => one.clone(),
        _ => panic!("expected one JSON line:\n{log}"),
    }
}

fn go_spiffe(agent: &DevAgent, dir: &Path) -> (bool, Vec<Value>, String) {
    let mut cmd = Command::new(go_program("go-spiffe"));
    cmd.args([agent.endpoint.as_str(), AUDIENCE]);
    run_client("go-spiffe", cmd, dir, RUN)
}

fn java_spiffe(agent: &DevAgent, dir: &Path) -> (bool, Vec<Value>, String) {
    let mut cmd = java_spiffe_client();
    cmd.args([agent.endpoint.as_str(), AUDIENCE]);
    run_client("java-spiffe", cmd, dir, RUN)
}

/// Workload API calls the agent accepted, all methods.
fn rpcs(agent: &DevAgent) -> u64 {
    [
        "FetchX509SVID",
        "FetchX509Bundles",
        "FetchJWTSVID",
        "FetchJWTBundles",
        "ValidateJWTSVID",
    ]
    .iter()
    .map(|m| agent.metric(&format!("dev_agent_rpc_total{{method=\"{m}\"}}")))
    .sum()
}

#[test]
fn go_spiffe_fetches_and_verifies_svids_and_federated_bundles_with_default_options() {
    let dir = tempfile::tempdir().unwrap();
    let agent = agent(dir.path(), "on");
    let (ok, lines, log) = go_spiffe(&agent, dir.path());
    assert!(ok, "go-spiffe failed:\n{log}");
    let s = &summary(&lines, &log);
    assert_eq!(
        s["versions"]["github.com/spiffe/go-spiffe/v2"], "v2.9.0",
        "{s}"
    );
    assert_eq!(s["versions"]["google.golang.org/grpc"], "v1.85.0", "{s}");
    assert_workload_api_summary(s);
    // go-spiffe verified the chain itself; the error for the other audience is the agent's.
    assert_eq!(s["x509_svids"][0]["verified_id"], ID, "{s}");
    let wrong = s["jwt_svid"]["wrong_audience_error"].as_str().unwrap();
    assert!(wrong.contains("code = InvalidArgument"), "{wrong}");
    // grpc-go sends `localhost` on `unix:` targets: nothing for the adapter to do.
    assert_eq!(rpcs(&agent), 6);
    assert_eq!(
        agent.metric("dev_agent_grpc_unix_authority_rewrites_total"),
        0
    );
    assert_eq!(
        agent.metric("dev_agent_grpc_unix_passthrough_connections_total"),
        0
    );
}

#[test]
fn java_spiffe_fetches_and_verifies_svids_and_its_socket_path_authority_is_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    let agent = agent(dir.path(), "on");
    let (ok, lines, log) = java_spiffe(&agent, dir.path());
    assert!(ok, "java-spiffe failed:\n{log}");
    let s = &summary(&lines, &log);
    assert_eq!(s["versions"]["java-spiffe"], "0.8.17", "{s}");
    assert_eq!(s["versions"]["grpc-java"], "1.80.0", "{s}");
    assert_workload_api_summary(s);
    assert_eq!(s["x509_svids"][0]["chain_verified"], true, "{s}");
    // grpc-java sent the socket path as :authority on every call (see
    // what_each_client_sends_as_authority for the bytes), and the adapter replaced each one.
    let calls = rpcs(&agent);
    assert_eq!(calls, 6);
    assert_eq!(
        agent.metric("dev_agent_grpc_unix_authority_rewrites_total"),
        calls
    );
    assert_eq!(
        agent.metric("dev_agent_grpc_unix_passthrough_connections_total"),
        0
    );
}

#[test]
fn without_the_adapter_go_spiffe_works_and_java_spiffe_is_refused_by_h2() {
    let dir = tempfile::tempdir().unwrap();
    let agent = agent(dir.path(), "off");

    let (ok, lines, log) = go_spiffe(&agent, dir.path());
    assert!(ok, "go-spiffe failed without the adapter:\n{log}");
    assert_workload_api_summary(&summary(&lines, &log));

    // h2 as upstream ships it resets the stream over grpc-java's :authority.
    let (ok, lines, log) = java_spiffe(&agent, dir.path());
    assert!(!ok, "java-spiffe worked without the adapter:\n{log}");
    let error = summary(&lines, &log)["error"].as_str().unwrap().to_owned();
    assert!(
        error.contains("INTERNAL") && error.contains("PROTOCOL_ERROR"),
        "{error}"
    );
    assert_eq!(
        agent.metric("dev_agent_grpc_unix_authority_rewrites_total"),
        0
    );
}

/// The grpc-go SDS client's events so far (it prints one JSON line per event).
fn events(client: &Proc) -> Vec<Value> {
    json_lines(&client.log())
}

/// sds-bridge fed by a dev agent federated with partner.org, adapter `on` or `off`; a grpc-go
/// client subscribes to `default`, `ROOTCA` and `ALL` on one stream, ACKs, and gets the
/// certificate of a forced rotation pushed on the same stream.
fn grpc_go_sds_stream(adapter: &str) {
    let dir = tempfile::tempdir().unwrap();
    let agent = DevAgent::start(
        dir.path(),
        &[
            "--trust-domain",
            "example.org",
            "--spiffe-id",
            "spiffe://example.org/client",
            "--federate-with",
            "partner.org",
        ],
    );
    let mut bridge = SdsBridge::start_with_env(
        "sds-bridge",
        dir.path(),
        &agent.endpoint,
        &[],
        &[("SIDECAR_UNIX_AUTHORITY_ADAPTER", adapter)],
    );
    bridge.wait_ready(Duration::from_secs(10));

    let mut cmd = Command::new(go_program("sds-client"));
    cmd.arg(format!("unix://{}", bridge.socket.display()))
        .args(["default,ROOTCA,ALL", "60s"]);
    let mut client = Proc::spawn("grpc-go-sds-client", cmd, dir.path());
    wait_until("the initial secrets", RUN, || {
        client.assert_running();
        !events(&client).is_empty()
    });
    let initial = events(&client).remove(0);
    assert_eq!(initial["event"], "initial", "{initial}");
    let default = &initial["secrets"]["default"];
    assert_eq!(default["kind"], "tls_certificate", "{initial}");
    assert_eq!(default["spiffe_id"], "spiffe://example.org/client");
    assert_eq!(default["key_matches"], true, "{initial}");
    // The chain verifies (crypto/x509) with the example.org bundle from ROOTCA/ALL.
    assert_eq!(default["verified_by"], "example.org", "{initial}");
    for (name, domains) in [
        ("ROOTCA", json!(["example.org"])),
        ("ALL", json!(["example.org", "partner.org"])),
    ] {
        let vc = &initial["secrets"][name];
        assert_eq!(vc["kind"], "validation_context", "{initial}");
        assert_eq!(
            vc["validator"], "envoy.tls.cert_validator.spiffe",
            "{initial}"
        );
        let names: Vec<&Value> = vc["trust_domains"]
            .as_array()
            .unwrap()
            .iter()
            .map(|td| {
                assert!(td["authorities"].as_u64().unwrap() >= 1, "{initial}");
                &td["name"]
            })
            .collect();
        assert_eq!(json!(names), domains, "{name}: {initial}");
    }

    // The client has sent its ACK when it prints; wait until the bridge has it, or a rotation
    // pushed first would make it a reply to a superseded response (ignored, not counted).
    wait_until("the bridge to count the first ACK", RUN, || {
        bridge.metric("sds_bridge_push_ack_seconds_count") >= 1.0
    });
    // A rotation reaches the still-open stream: a new certificate under `default` only.
    agent.post("/rotate/x509");
    wait_until("the rotation's push", RUN, || events(&client).len() >= 3);
    let status = client
        .wait_exit(RUN)
        .expect("the client ends after the push");
    let events = events(&client);
    assert!(status.success(), "{}", client.log());
    let push = &events[1];
    assert_eq!(push["event"], "push", "{push}");
    assert_eq!(push["names"], json!(["default"]), "{push}");
    let rotated = &push["secrets"]["default"];
    assert_eq!(rotated["spiffe_id"], "spiffe://example.org/client");
    assert_eq!(rotated["key_matches"], true, "{push}");
    assert_eq!(rotated["verified_by"], "example.org", "{push}");
    assert_ne!(
        rotated["serial"], default["serial"],
        "same certificate pushed"
    );
    assert!(
        push["version"].as_str().unwrap().parse::<u64>().unwrap()
            > initial["version"].as_str().unwrap().parse::<u64>().unwrap()
    );
    // Half-closed by the client after its ACK; the bridge ended the stream with OK.
    assert_eq!(events[2], json!({"event": "closed", "status": "OK"}));

    // Both responses ACKed, nothing NACKed, and grpc-go's `localhost` left as it was.
    assert_eq!(bridge.metric("sds_bridge_push_ack_seconds_count"), 2.0);
    assert_eq!(bridge.metric("sds_bridge_nacks_total"), 0.0);
    assert_eq!(
        bridge.metric("sds_bridge_grpc_unix_authority_rewrites_total"),
        0.0
    );
}

#[test]
fn grpc_go_sds_client_gets_default_rootca_all_and_a_rotation_on_the_open_stream() {
    grpc_go_sds_stream("on");
}

#[test]
fn grpc_go_sds_client_works_without_the_adapter() {
    grpc_go_sds_stream("off");
}

/// A bare HTTP/2 server on `socket` that reads the first request's header block of the client
/// `spawn` starts and returns its `:authority`: what the client sends, before any server (ours
/// or h2) has a say. The socket is bound first: a client that finds none fails its call.
fn capture_authority(socket: &Path, spawn: impl FnOnce() -> Proc) -> String {
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket).unwrap();
    listener.set_nonblocking(true).unwrap();
    let mut client = spawn();
    let mut conn: Option<UnixStream> = None;
    wait_until("the client to connect", RUN, || {
        client.assert_running();
        conn = listener.accept().ok().map(|(c, _)| c);
        conn.is_some()
    });
    let mut conn = conn.unwrap();
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(RUN)).unwrap();
    let mut preface = [0; 24];
    conn.read_exact(&mut preface).unwrap();
    assert_eq!(&preface, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    // Our (empty) SETTINGS: some clients send no request before they have the server's.
    conn.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).unwrap();
    let mut block = Vec::new();
    loop {
        let mut head = [0; 9];
        conn.read_exact(&mut head).unwrap();
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let (kind, flags) = (head[3], head[4]);
        let mut payload = vec![0; len];
        conn.read_exact(&mut payload).unwrap();
        match kind {
            // SETTINGS without ACK: acknowledge it, as a server must.
            4 if flags & 1 == 0 => conn.write_all(&[0, 0, 0, 4, 1, 0, 0, 0, 0]).unwrap(),
            // HEADERS (padding and priority stripped), then any CONTINUATION.
            1 | 9 => {
                let mut fragment = &payload[..];
                if kind == 1 {
                    if flags & 0x8 != 0 {
                        let pad = usize::from(fragment[0]);
                        fragment = &fragment[1..fragment.len() - pad];
                    }
                    if flags & 0x20 != 0 {
                        fragment = &fragment[5..];
                    }
                }
                block.extend_from_slice(fragment);
                if flags & 0x4 != 0 {
                    break;
                }
            }
            _ => {}
        }
    }
    let mut headers = Vec::new();
    httlib_hpack::Decoder::default()
        .decode(&mut block, &mut headers)
        .unwrap();
    let authority = headers
        .iter()
        .find(|(name, _, _)| name == b":authority")
        .map(|(_, value, _)| String::from_utf8(value.clone()).unwrap());
    authority.unwrap_or_else(|| panic!("no :authority in {headers:?}"))
}

#[test]
fn what_each_client_sends_as_authority_on_a_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("capture.sock");
    let path = socket.display().to_string();
    let target = format!("unix://{path}");
    let python = python_with(&["grpc"]);
    let grpcio = r#"
import sys, grpc
with grpc.insecure_channel(sys.argv[1]) as channel:
    channel.unary_unary("/SpiffeWorkloadAPI/FetchJWTBundles")(b"", timeout=60)
"#;
    let command = |program: &Path, args: &[&str]| {
        let mut c = Command::new(program);
        c.args(args);
        c
    };
    let go_spiffe = go_program("go-spiffe");
    let sds_client = go_program("sds-client");
    let mut java = java_spiffe_client();
    java.args([target.as_str(), AUDIENCE]);
    // gRPC C-core percent-encodes the path without its leading `/`, whichever way the target
    // is spelled (`unix:/…` is what py-spiffe dials, `unix:///…` the SPIFFE endpoint form).
    let encoded = path.trim_start_matches('/').replace('/', "%2F");
    let cases = [
        (
            "go-spiffe",
            command(&go_spiffe, &[&target, AUDIENCE]),
            "localhost",
        ),
        (
            "grpc-go-sds-client",
            command(&sds_client, &[&target, "default", "60s"]),
            "localhost",
        ),
        ("java-spiffe", java, path.as_str()),
        (
            "grpcio-unix-path",
            command(&python, &["-c", grpcio, &format!("unix:{path}")]),
            &encoded,
        ),
        (
            "grpcio-unix-uri",
            command(&python, &["-c", grpcio, &target]),
            &encoded,
        ),
    ];
    let mut seen = Vec::new();
    for (name, cmd, expected) in cases {
        let authority = capture_authority(&socket, || Proc::spawn(name, cmd, dir.path()));
        seen.push((name, authority, expected));
    }
    for (name, authority, expected) in &seen {
        assert_eq!(authority, expected, "{name}; all clients: {seen:#?}");
    }
}

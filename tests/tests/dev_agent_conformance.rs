//! The dev agent speaks the real Workload API: checked by py-spiffe, PyJWT, `cryptography` and
//! raw grpcio (tests/py/conformance.py), none of which share code with us, all with their
//! default options: grpc-core's socket-path `:authority` is accepted.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers outside #[test] fns

use std::process::Command;

use suite_tests::{DevAgent, output, python_with, root};

fn run_conformance(agent: &DevAgent, id: &str, federated: &[&str]) -> serde_json::Value {
    let python = python_with(&["spiffe", "jwt", "cryptography", "grpc"]);
    let mut cmd = Command::new(python);
    cmd.arg(root().join("tests/py/conformance.py"))
        .args([agent.endpoint.as_str(), id])
        .args(federated);
    let out = output(cmd);
    assert!(
        out.status.success(),
        "py-spiffe conformance failed:\n{}\n{}\n--- agent log ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        agent.proc.log()
    );
    serde_json::from_slice(&out.stdout).expect("conformance prints a JSON summary")
}

#[test]
fn py_spiffe_fetches_and_verifies_everything_es256() {
    let dir = tempfile::tempdir().unwrap();
    let id = "spiffe://example.org/ns/default/sa/web";
    let agent = DevAgent::start(
        dir.path(),
        &[
            "--trust-domain",
            "example.org",
            "--spiffe-id",
            id,
            "--federate-with",
            "partner.org",
        ],
    );
    let summary = run_conformance(&agent, id, &["partner.org"]);
    assert_eq!(summary["jwt_alg"], "ES256");
    assert!(summary["checks"].as_u64().unwrap() >= 25, "{summary}");
    assert_eq!(summary["raw_calls"], 6, "{summary}");
    // Every grpcio call sent the socket path as :authority and the adapter replaced it.
    let rewrites = agent.metric("dev_agent_grpc_unix_authority_rewrites_total");
    assert!(rewrites >= 6, "authority rewrites counted: {rewrites}");
    assert_eq!(
        agent.metric("dev_agent_grpc_unix_passthrough_connections_total"),
        0
    );
}

#[test]
fn py_spiffe_verifies_rs256_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let id = "spiffe://example.org/rsa-workload";
    let agent = DevAgent::start(
        dir.path(),
        &[
            "--trust-domain",
            "example.org",
            "--spiffe-id",
            id,
            "--jwt-alg",
            "RS256",
        ],
    );
    let summary = run_conformance(&agent, id, &[]);
    assert_eq!(summary["jwt_alg"], "RS256");
}

/// One FetchJWTSVID with grpcio's defaults; prints `OK` or the status code name.
fn grpcio_fetch(target: &str) -> String {
    let python = python_with(&["spiffe", "grpc"]);
    let script = r#"
import sys, grpc
from spiffe._proto import workload_pb2, workload_pb2_grpc
with grpc.insecure_channel(sys.argv[1]) as channel:
    stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)
    try:
        stub.FetchJWTSVID(workload_pb2.JWTSVIDRequest(audience=["a"]),
                          metadata=(("workload.spiffe.io", "true"),), timeout=10)
        print("OK")
    except grpc.RpcError as e:
        print(e.code().name)
"#;
    let mut cmd = Command::new(python);
    cmd.args(["-c", script, target]);
    let out = output(cmd);
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn grpc_core_is_refused_without_the_authority_adapter_and_served_with_it() {
    // The same agent binary with the adapter switched off is h2 as upstream ships it: grpc-core
    // sends the socket path as :authority and h2 resets the stream (hyperium/h2#487).
    for (adapter, expected) in [("off", "INTERNAL"), ("on", "OK")] {
        let dir = tempfile::tempdir().unwrap();
        let agent = DevAgent::start(dir.path(), &["--unix-authority-adapter", adapter]);
        let target = format!("unix:{}", agent.socket.display());
        assert_eq!(grpcio_fetch(&target), expected, "adapter {adapter}");
    }
}

/// The documented way to get a partner's JWT-SVID on the command line: `spiffe-dev-agent
/// mint-jwt` on the running agent's state directory prints a whole token that py-spiffe,
/// asking the agent over the Workload API, validates as the partner's workload.
#[test]
fn mint_jwt_prints_a_federated_token_py_spiffe_validates() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let agent = DevAgent::start(
        dir.path(),
        &[
            "--trust-domain",
            "example.org",
            "--spiffe-id",
            "spiffe://example.org/ns/default/sa/backend",
            "--federate-with",
            "partner.org",
            "--state-dir",
            state.to_str().unwrap(),
        ],
    );
    let mut mint = Command::new(suite_tests::bin("spiffe-dev-agent"));
    mint.args(["mint-jwt", "--state-dir", state.to_str().unwrap()])
        .args(["--spiffe-id", "spiffe://partner.org/web"])
        .args(["--audience", "spiffe://example.org/backend"])
        .env_remove("SPIFFE_ENDPOINT_SOCKET");
    let out = output(mint);
    assert!(out.status.success(), "{out:?}");
    let token = String::from_utf8(out.stdout).unwrap();
    let token = token.trim();
    assert_eq!(token.split('.').count(), 3, "one whole JWT on stdout");

    let python = python_with(&["spiffe"]);
    let mut validate = Command::new(python);
    validate
        .args([
            "-c",
            "import sys\nfrom spiffe import WorkloadApiClient\n\
             with WorkloadApiClient(socket_path=sys.argv[1]) as c:\n\
             \x20   print(c.validate_jwt_svid(token=sys.argv[2], audience=sys.argv[3]).spiffe_id)",
        ])
        .args([
            agent.endpoint.as_str(),
            token,
            "spiffe://example.org/backend",
        ]);
    let out = output(validate);
    assert!(out.status.success(), "{out:?}\n{}", agent.proc.log());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "spiffe://partner.org/web"
    );
}

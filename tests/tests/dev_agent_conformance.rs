//! The dev agent speaks the real Workload API: checked by py-spiffe, PyJWT, `cryptography` and
//! raw grpcio (tests/py/conformance.py), none of which share code with us, all with their
//! default options: grpc-core's socket-path `:authority` is accepted (REFERENCE §11).

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

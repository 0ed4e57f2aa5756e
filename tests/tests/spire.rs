#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The sidecars against real SPIRE (server, join-token agent, OIDC discovery provider; see
//! `suite_tests::spire` for how each sidecar gets its own SPIFFE ID) and real Envoy.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use suite_tests::envoy::{EchoServer, Envoy, request};
use suite_tests::sds::{
    SdsBridge, Shape, bootstrap, common_tls_context, http_listener, mtls_listener, sds_cluster,
    tls_cluster, xfcc_uri_and_serial,
};
use suite_tests::spire::{ServerOptions, Spire};
use suite_tests::{free_port, wait_until};

fn get(port: u16, path: &str) -> Option<suite_tests::envoy::Response> {
    request(
        format!("127.0.0.1:{port}").parse().unwrap(),
        "GET",
        path,
        &[],
    )
}

/// A bridge running as its own workload (`spiffe://<td>/<name>`), ready.
fn bridge(spire: &Spire, dir: &Path, name: &str) -> SdsBridge {
    let program = spire.workload_binary(dir, "sds-bridge", &format!("sds-bridge-{name}"), &spire.id(name));
    let mut bridge =
        SdsBridge::start_program(&program, &format!("bridge-{name}"), dir, &spire.agent.endpoint, &[], &[]);
    bridge.wait_ready(Duration::from_secs(30));
    bridge
}

#[test]
fn spire_smoke() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let spire = Spire::start(dir, &ServerOptions::new("example.org"));
    let b = bridge(&spire, dir, "server");
    eprintln!("ready: {}", b.readyz());
    eprintln!("{}", spire.server.cli(&["localauthority", "x509", "show", "-output", "json"]));
    std::fs::copy(dir.join("example.org-server/spire-server.log"), "/tmp/sp/server.log").ok();
}

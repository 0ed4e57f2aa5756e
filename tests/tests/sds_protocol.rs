#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! sds-bridge at the wire, driven by a raw SDS client: the Istio stream shape, unknown names,
//! NACKs, pushes only of what changed, Delta and Fetch, garbage on the socket, and a graceful
//! shutdown that ends streams cleanly.

use std::io::Write as _;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use prost::Message as _;
use suite_tests::DevAgent;
use suite_tests::sds::SdsBridge;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::Channel;
use workload_client::{Endpoint, lazy_channel};

const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

fn request(names: &[&str], version: &str, nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        version_info: version.to_owned(),
        resource_names: names.iter().map(|n| (*n).to_owned()).collect(),
        type_url: SECRET.to_owned(),
        response_nonce: nonce.to_owned(),
        ..Default::default()
    }
}

fn names(r: &DiscoveryResponse) -> Vec<String> {
    r.resources
        .iter()
        .map(|a| Secret::decode(a.value.as_slice()).unwrap().name)
        .collect()
}

async fn next(responses: &mut Streaming<DiscoveryResponse>) -> DiscoveryResponse {
    tokio::time::timeout(Duration::from_secs(10), responses.message())
        .await
        .expect("a response within 10 s")
        .expect("stream healthy")
        .expect("stream open")
}

fn client(bridge: &SdsBridge) -> SecretDiscoveryServiceClient<Channel> {
    SecretDiscoveryServiceClient::new(lazy_channel(&Endpoint::Unix(bridge.socket.clone())))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_shaped_stream_survives_unknown_names_and_nacks_and_pushes_only_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let agent = DevAgent::start(
        tmp.path(),
        &[
            "--trust-domain",
            "example.org",
            "--spiffe-id",
            "spiffe://example.org/web",
        ],
    );
    let mut bridge = SdsBridge::start("sds-bridge", tmp.path(), &agent.endpoint, &[]);
    bridge.wait_ready(Duration::from_secs(10));
    let mut sds = client(&bridge);

    let (tx, rx) = mpsc::channel(8);
    let mut responses = sds
        .stream_secrets(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    // Istio: the node on the first request only; names `default` and `ROOTCA`. Plus a name
    // that can never exist and one this workload does not have.
    let subscribed = ["default", "ROOTCA", "bogus", "spiffe://example.org/other"];
    let mut first = request(&subscribed, "", "");
    first.node = Some(Node {
        id: "sidecar~10.1.2.3~web-1.default~default.svc.cluster.local".to_owned(),
        ..Default::default()
    });
    tx.send(first).await.unwrap();
    let r1 = next(&mut responses).await;
    assert_eq!(names(&r1), ["ROOTCA", "default"]);
    assert_eq!(r1.version_info, "1");
    assert!(!r1.nonce.is_empty());

    // NACK it, then add `ALL`: the answer carries only `ALL` (no re-push of the rejected secrets).
    let mut nack = request(&subscribed, "", &r1.nonce);
    nack.error_detail = Some(RpcStatus {
        code: 13,
        message: "simulated: failed to apply".to_owned(),
        details: Vec::new(),
    });
    tx.send(nack).await.unwrap();
    let with_all = [
        "default",
        "ROOTCA",
        "bogus",
        "spiffe://example.org/other",
        "ALL",
    ];
    tx.send(request(&with_all, "", &r1.nonce)).await.unwrap();
    let r2 = next(&mut responses).await;
    assert_eq!(names(&r2), ["ALL"]);
    assert_eq!(r2.version_info, "2");
    assert_ne!(r2.nonce, r1.nonce);
    tx.send(request(&with_all, "2", &r2.nonce)).await.unwrap();

    // A rotation pushes `default` only: the bundles did not change.
    agent.post("/rotate/x509");
    let r3 = next(&mut responses).await;
    assert_eq!(names(&r3), ["default"]);
    assert_eq!(r3.version_info, "3");
    tx.send(request(&with_all, "3", &r3.nonce)).await.unwrap();

    assert_eq!(bridge.metric("sds_bridge_nacks_total"), 1.0);
    let expiry = bridge.metric("sds_bridge_x509_svid_expiry_seconds");
    assert!(expiry > 60.0, "SVID expiry exported: {expiry}");
    let age = bridge.metric("sds_bridge_workload_api_x509_last_update_age_seconds");
    assert!(age > 0.0 && age < 60.0, "last update age exported: {age}");
    assert!(bridge.metric("sds_bridge_push_ack_seconds_count") >= 2.0);
    assert_eq!(bridge.metric("sds_bridge_streams"), 1.0);
    assert!(
        bridge.proc.log().contains("simulated: failed to apply"),
        "the NACK is logged with Envoy's error detail"
    );

    // Garbage on the socket does not disturb the bridge or this stream.
    let mut raw = std::os::unix::net::UnixStream::connect(&bridge.socket).unwrap();
    let _ = raw.write_all(&[
        0x16, 0x03, 0x01, 0xff, 0xff, b'G', b'E', b'T', b' ', b'/', 0, 0, 0,
    ]);
    let _ = raw.write_all(&vec![0xa5; 64 * 1024]);
    drop(raw);
    let fetched = client(&bridge)
        .fetch_secrets(request(&["default"], "", ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(names(&fetched), ["default"]);
    bridge.proc.assert_running();

    // Graceful shutdown: the stream ends with OK, the process exits 0, the socket is removed.
    let socket = bridge.socket.clone();
    let clean = tokio::task::spawn_blocking(move || {
        let ok = bridge.proc.terminate(Duration::from_secs(10));
        (ok, bridge)
    })
    .await
    .unwrap();
    assert!(clean.0, "exit 0 on SIGTERM:\n{}", clean.1.proc.log());
    let end = tokio::time::timeout(Duration::from_secs(5), responses.message())
        .await
        .unwrap();
    assert!(matches!(end, Ok(None)), "stream ended cleanly: {end:?}");
    assert!(!socket.exists(), "socket file removed at shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_and_delta_and_waiting_for_the_first_svid() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, endpoint) = DevAgent::planned(tmp.path());
    // No agent yet: the socket is up, and a stream waits for the first SVID.
    let bridge = SdsBridge::start("sds-bridge", tmp.path(), &endpoint, &[]);
    assert_eq!(bridge.readyz(), 503);
    let mut sds = client(&bridge);
    let (tx, rx) = mpsc::channel(8);
    let mut responses = sds
        .stream_secrets(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tx.send(request(
        &["spiffe://example.org/api", "spiffe://example.org"],
        "",
        "",
    ))
    .await
    .unwrap();

    let _agent = DevAgent::start(
        tmp.path(),
        &[
            "--trust-domain",
            "example.org",
            "--spiffe-id",
            "spiffe://example.org/api",
        ],
    );
    let r = next(&mut responses).await;
    assert_eq!(
        names(&r),
        ["spiffe://example.org", "spiffe://example.org/api"]
    );
    assert_eq!(bridge.readyz(), 200);

    let delta = sds
        .delta_secrets(tokio_stream::iter(Vec::new()))
        .await
        .unwrap_err();
    assert_eq!(delta.code(), tonic::Code::Unimplemented);
    let missing = sds
        .fetch_secrets(request(&["default", "nope"], "", ""))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    assert!(missing.message().contains("nope"), "{}", missing.message());
    // A unary fetch may be the first to ask for a token: it waits for the first fetch.
    let cold = sds
        .fetch_secrets(request(&["jwt-svid:cold-audience"], "", ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(names(&cold), ["jwt-svid:cold-audience"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_disallowed_jwt_svid_names_leave_the_others_working() {
    let tmp = tempfile::tempdir().unwrap();
    let agent = DevAgent::start(
        tmp.path(),
        &[
            "--trust-domain",
            "example.org",
            "--spiffe-id",
            "spiffe://example.org/web",
        ],
    );
    let mut bridge = SdsBridge::start(
        "sds-bridge",
        tmp.path(),
        &agent.endpoint,
        &["--allow-jwt-audience", "backend"],
    );
    bridge.wait_ready(Duration::from_secs(10));
    let (tx, rx) = mpsc::channel(8);
    let mut responses = client(&bridge)
        .stream_secrets(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let subscribed = [
        "jwt-svid:a,,b",
        "jwt-svid:payroll",
        "jwt-svid:backend",
        "default",
    ];
    tx.send(request(&subscribed, "", "")).await.unwrap();
    // The X.509 secret is there at once; the token follows its first fetch.
    let mut got = Vec::new();
    while !got.contains(&"jwt-svid:backend".to_owned()) {
        let r = next(&mut responses).await;
        got.extend(names(&r));
        tx.send(request(&subscribed, &r.version_info, &r.nonce))
            .await
            .unwrap();
    }
    got.sort();
    assert_eq!(got, ["default", "jwt-svid:backend"]);
    let log = bridge.proc.log();
    assert!(log.contains("malformed JWT-SVID name"), "{log}");
    assert!(log.contains("refusing a JWT-SVID"), "{log}");
    // The refused audience was never even fetched.
    assert_eq!(agent.jwt_fetches(), 1);
    bridge.proc.assert_running();
}

#[test]
fn bad_configuration_exits_2_naming_the_setting() {
    // Serving keys and tokens beyond loopback needs --allow-non-loopback-listen.
    let anywhere = format!("tcp://0.0.0.0:{}", suite_tests::free_port());
    for (args, setting) in [
        (
            vec![
                "--socket",
                "unix:///tmp/a.sock",
                "--listen",
                anywhere.as_str(),
            ],
            "--listen",
        ),
        // Istio's defaults make the Workload API socket the SDS socket: refused.
        (vec![], "default endpoint"),
        (
            vec!["--socket", "unix:///tmp/a.sock", "--socket-mode", "0400"],
            "--socket-mode",
        ),
        (
            vec!["--socket", "unix:///tmp/a.sock", "--listen", "http://x"],
            "--listen",
        ),
    ] {
        let out = std::process::Command::new(suite_tests::bin("sds-bridge"))
            .args(&args)
            .env_remove("SPIFFE_ENDPOINT_SOCKET")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(
            stderr.starts_with(&format!("sds-bridge: {setting}: ")),
            "{stderr}"
        );
    }
}

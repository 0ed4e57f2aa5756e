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

/// A raw stream subscribed to `names`: the request sender (kept open) and the responses.
async fn subscribe(
    sds: &mut SecretDiscoveryServiceClient<Channel>,
    names: &[&str],
) -> (mpsc::Sender<DiscoveryRequest>, Streaming<DiscoveryResponse>) {
    let (tx, rx) = mpsc::channel(8);
    tx.send(request(names, "", "")).await.unwrap();
    let responses = sds
        .stream_secrets(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    (tx, responses)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_jwt_audiences_are_capped_and_other_clients_still_served() {
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
    // A small bridge-wide cap keeps the test quick; the default is 256.
    const CAP: u64 = 64;
    let mut bridge = SdsBridge::start(
        "sds-bridge",
        tmp.path(),
        &agent.endpoint,
        &["--max-jwt-keys", &CAP.to_string()],
    );
    bridge.wait_ready(Duration::from_secs(10));
    let mut sds = client(&bridge);

    // A well-behaved client first: its certificate and token.
    let legit = ["default", "jwt-svid:backend"];
    let (tx, mut responses) = subscribe(&mut sds, &legit).await;
    let mut got = Vec::new();
    while got.len() < 2 {
        let r = next(&mut responses).await;
        got.extend(names(&r));
        tx.send(request(&legit, &r.version_info, &r.nonce))
            .await
            .unwrap();
    }
    assert_eq!(agent.jwt_fetches(), 1);

    // One FetchSecrets naming 5,000 audiences made 5,000 cache keys and FetchJWTSVID calls;
    // now it is refused whole before any fetch.
    let flood: Vec<String> = (0..5000).map(|i| format!("jwt-svid:aud-{i}")).collect();
    let flood_refs: Vec<&str> = flood.iter().map(String::as_str).collect();
    let refused = sds
        .fetch_secrets(request(&flood_refs, "", ""))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert_eq!(agent.jwt_fetches(), 1);

    // Four streams of 5,000 audiences each: 256 names and 32 tokens per stream at most, and
    // no more than the cap for the whole bridge.
    let mut floods = Vec::new();
    for s in 0..4 {
        let names: Vec<String> = (0..5000).map(|i| format!("jwt-svid:s{s}-{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        floods.push(subscribe(&mut sds, &refs).await);
    }
    let metric = |reason: &str| {
        bridge.metric(&format!("sds_bridge_refusals_total{{reason=\"{reason}\"}}")) as u64
    };
    // Every stream's subscription handled: 4 x 32 keys asked for, CAP - 1 admitted.
    suite_tests::wait_until("the flood handled", Duration::from_secs(30), || {
        metric("jwt_keys_total") >= 4 * 32 - (CAP - 1)
    });
    suite_tests::wait_until("the admitted keys fetched", Duration::from_secs(30), || {
        agent.jwt_fetches() >= CAP
    });
    assert_eq!(metric("jwt_keys_total"), 4 * 32 - (CAP - 1));
    assert_eq!(metric("names_per_request"), 5 * (5000 - 256));
    assert_eq!(metric("jwt_keys_per_request"), 4 * (256 - 32));

    // Other clients are still served: X.509, the token already held, and a new stream.
    let fetched = sds
        .fetch_secrets(request(&legit, "", ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(names(&fetched), legit);
    let (_tx2, mut fresh) = subscribe(&mut sds, &["default", "ROOTCA"]).await;
    assert_eq!(names(&next(&mut fresh).await), ["ROOTCA", "default"]);
    // A new audience waits for a free slot.
    let full = sds
        .fetch_secrets(request(&["jwt-svid:newcomer"], "", ""))
        .await
        .unwrap_err();
    assert_eq!(full.code(), tonic::Code::ResourceExhausted, "{full:?}");
    // The agent signed the cap's worth of tokens and no more.
    assert_eq!(agent.jwt_fetches(), CAP);
    assert_eq!(metric("jwt_keys_total"), 4 * 32 - (CAP - 1) + 1);

    // One log line per reason, not one per request or name.
    let log = bridge.proc.log();
    assert_eq!(
        log.matches("further refusals are only counted").count(),
        3,
        "{log}"
    );
    assert!(!log.contains("ignoring unknown SDS resource name"), "{log}");
    bridge.proc.assert_running();
    drop(floods);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_carries_at_most_128_streams() {
    let tmp = tempfile::tempdir().unwrap();
    let agent = DevAgent::start(tmp.path(), &[]);
    let mut bridge = SdsBridge::start("sds-bridge", tmp.path(), &agent.endpoint, &[]);
    bridge.wait_ready(Duration::from_secs(10));
    // 200 streams asked for on one connection: the client queues what the server's
    // SETTINGS_MAX_CONCURRENT_STREAMS does not admit (3,000 were accepted before).
    let sds = client(&bridge);
    let mut pending = Vec::new();
    for _ in 0..200 {
        let mut sds = sds.clone();
        pending.push(tokio::spawn(async move {
            let streams = subscribe(&mut sds, &["default"]).await;
            std::future::pending::<()>().await;
            drop(streams);
        }));
    }
    suite_tests::wait_until("128 streams open", Duration::from_secs(30), || {
        bridge.metric("sds_bridge_streams_opened_total") >= 128.0
    });
    // Another connection is served at once, and the first one still holds exactly 128.
    let mut other = client(&bridge);
    let (_tx, mut responses) = subscribe(&mut other, &["default"]).await;
    assert_eq!(names(&next(&mut responses).await), ["default"]);
    assert_eq!(bridge.metric("sds_bridge_streams"), 129.0);
    assert_eq!(bridge.metric("sds_bridge_streams_opened_total"), 129.0);
    for task in pending {
        task.abort();
    }
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
        (
            vec!["--socket", "unix:///tmp/a.sock", "--max-jwt-keys", "0"],
            "--max-jwt-keys",
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

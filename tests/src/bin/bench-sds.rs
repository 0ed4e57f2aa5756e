//! `cargo xtask bench` (sds-bridge part):
//!
//! 1. Push-to-ACK with a real Envoy subscribed to `default` and `ROOTCA`: forced rotations at
//!    the dev agent; for each, the time from the bridge receiving the new SVID to Envoy's ACK
//!    (measured by the bridge, read from its debug log), and the time from asking the agent to
//!    rotate to the ACK showing in the bridge's metrics (end to end, including the agent
//!    issuing the certificate). Three stacks in turn: Envoy's own client with the Unix-socket
//!    `:authority` adapter off (the baseline) and on, and `google_grpc` (which needs it).
//! 2. 1,000 concurrent SDS streams (one connection each, as 1,000 Istio proxies would open),
//!    subscribed to `default` and `ROOTCA`: the bridge's RSS against its idle RSS, then one
//!    rotation pushed to all of them: fan-out time and the bridge's CPU time for it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use suite_tests::envoy::{EchoServer, Envoy};
use suite_tests::procfs::{cpu_ticks, rss_kib};
use suite_tests::sds::{
    SdsBridge, Shape, bootstrap, common_tls_context, mtls_listener, sds_cluster,
};
use suite_tests::stats::{ms, quantile};
use suite_tests::{DevAgent, free_port, wait_until};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const ROTATIONS: usize = 40;
const STREAMS: usize = 1000;
const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

fn request(version: &str, nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        version_info: version.to_owned(),
        resource_names: vec!["default".to_owned(), "ROOTCA".to_owned()],
        type_url: SECRET.to_owned(),
        response_nonce: nonce.to_owned(),
        ..Default::default()
    }
}

/// Polls without sleeping (each poll is one loopback HTTP request, ~0.2 ms): `wait_until`'s
/// 10 ms naps would quantise the figures.
fn spin_until(mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready() {
        assert!(Instant::now() < deadline, "timed out");
    }
}

/// Microsecond fields named `field` in JSON log lines with message `message`.
fn log_values(log: &str, message: &str, field: &str) -> Vec<Duration> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == message)
        .filter_map(|v| v[field].as_u64())
        .map(Duration::from_micros)
        .collect()
}

/// One stack for push-to-ACK: a dev agent, a bridge and an Envoy subscribed to `default` and
/// `ROOTCA` over `client` (`envoy_grpc` through a pipe cluster, or `google_grpc`).
struct Stack {
    label: &'static str,
    agent: DevAgent,
    bridge: SdsBridge,
    _envoy: Envoy,
    _echo: EchoServer,
    to_bridge: Vec<Duration>,
    end_to_end: Vec<Duration>,
}

fn stack(dir: &std::path::Path, label: &'static str, adapter: &str, google: bool) -> Stack {
    let dir = dir.join(label.replace(|c: char| !c.is_ascii_alphanumeric(), "-"));
    std::fs::create_dir_all(&dir).unwrap();
    let agent = DevAgent::start(
        &dir,
        &[
            "--trust-domain",
            "example.org",
            "--spiffe-id",
            "spiffe://example.org/bench",
        ],
    );
    let mut bridge = SdsBridge::start_with_env(
        "sds-bridge",
        &dir,
        &agent.endpoint,
        &["--log-format", "json"],
        &[("SIDECAR_UNIX_AUTHORITY_ADAPTER", adapter)],
    );
    bridge.wait_ready(Duration::from_secs(10));
    let echo = EchoServer::start();
    let target = format!("unix://{}", bridge.socket.display());
    let sds = if google { target.as_str() } else { "sds" };
    let envoy = Envoy::start(
        "envoy",
        &dir,
        &bootstrap(
            free_port(),
            "bench",
            &[mtls_listener(
                "mtls",
                free_port(),
                &common_tls_context(Shape::Istio, sds, "", ""),
            )],
            &[
                sds_cluster("sds", &bridge.socket),
                suite_tests::envoy::static_cluster("upstream", echo.addr, false),
            ],
        ),
    );
    wait_until("Envoy's first ACK", Duration::from_secs(10), || {
        bridge.metric("sds_bridge_push_ack_seconds_count") >= 1.0
    });
    Stack {
        label,
        agent,
        bridge,
        _envoy: envoy,
        _echo: echo,
        to_bridge: Vec::new(),
        end_to_end: Vec::new(),
    }
}

/// One forced rotation on `s`, timed to the SVID at the bridge and to Envoy's ACK.
fn rotate(s: &mut Stack) {
    let acks = || s.bridge.metric("sds_bridge_push_ack_seconds_count");
    let updates = || {
        s.bridge
            .metric("sds_bridge_workload_api_x509_updates_total")
    };
    let (acked, updated) = (acks(), updates());
    let start = Instant::now();
    s.agent.post("/rotate/x509");
    spin_until(|| updates() > updated);
    let to_bridge = start.elapsed();
    spin_until(|| acks() > acked);
    let end_to_end = start.elapsed();
    s.to_bridge.push(to_bridge);
    s.end_to_end.push(end_to_end);
}

/// Push-to-ACK through the `:authority` adapter and without it, in one run: three stacks,
/// rotations taken in turn so drift on the machine hits all alike. Baseline: Envoy's own
/// client (a valid `:authority`) with the adapter off.
fn push_to_ack(dir: &std::path::Path) {
    let mut stacks = [
        stack(dir, "envoy_grpc, adapter off (baseline)", "off", false),
        stack(dir, "envoy_grpc, adapter on", "on", false),
        stack(dir, "google_grpc, adapter on (rewrites)", "on", true),
    ];
    for _ in 0..ROTATIONS {
        for s in &mut stacks {
            rotate(s);
        }
    }
    println!("push-to-ACK, real Envoy 1.40, {ROTATIONS} rotations per stack, taken in turn:");
    let mut base_ack = None;
    for s in &mut stacks {
        // Skip the initial subscription's ACK: it measures from the request, not a snapshot.
        let mut bridge_to_ack: Vec<Duration> =
            log_values(&s.bridge.proc.log(), "secrets acknowledged", "latency_us")
                .into_iter()
                .skip(1)
                .collect();
        assert!(
            bridge_to_ack.len() >= ROTATIONS,
            "one ACK per rotation in the log"
        );
        let p50 = quantile(&mut bridge_to_ack, 0.5);
        let base = *base_ack.get_or_insert(p50);
        println!("  {}:", s.label);
        println!(
            "    new SVID at the bridge -> Envoy ACK:  p50 {}  p99 {}  max {}  (x{:.2} of the baseline's p50)",
            ms(p50),
            ms(quantile(&mut bridge_to_ack, 0.99)),
            ms(quantile(&mut bridge_to_ack, 1.0)),
            p50.as_secs_f64() / base.as_secs_f64(),
        );
        println!(
            "    rotate request -> SVID at the bridge:  p50 {}   rotate request -> Envoy ACK:  p50 {}  p99 {}  (x{:.2})",
            ms(quantile(&mut s.to_bridge, 0.5)),
            ms(quantile(&mut s.end_to_end, 0.5)),
            ms(quantile(&mut s.end_to_end, 0.99)),
            quantile(&mut s.end_to_end, 0.5).as_secs_f64()
                / quantile(&mut s.to_bridge, 0.5).as_secs_f64(),
        );
    }
}

/// `STREAMS` streams over `connections` connections (1,000 proxies with one stream each, or
/// Envoy-style multiplexing of many subscriptions over a few connections).
async fn fan_out(dir: &std::path::Path, connections: usize, adapter: &str) {
    let agent = tokio::task::block_in_place(|| {
        DevAgent::start(
            dir,
            &[
                "--trust-domain",
                "example.org",
                "--spiffe-id",
                "spiffe://example.org/bench",
            ],
        )
    });
    let mut bridge = SdsBridge::start_with_env(
        "sds-bridge-fanout",
        dir,
        &agent.endpoint,
        &[],
        &[("SIDECAR_UNIX_AUTHORITY_ADAPTER", adapter)],
    );
    tokio::task::block_in_place(|| bridge.wait_ready(Duration::from_secs(10)));
    let pid = bridge.proc.pid();
    let idle = rss_kib(pid);

    // Each client: its own connection and stream; reports each response's arrival time.
    let (arrivals_tx, mut arrivals) = mpsc::unbounded_channel::<(usize, Instant)>();
    let endpoint = workload_client::Endpoint::Unix(bridge.socket.clone());
    let channels: Vec<_> = (0..connections)
        .map(|_| workload_client::lazy_channel(&endpoint))
        .collect();
    for i in 0..STREAMS {
        let channel = channels[i % connections].clone();
        let arrivals_tx = arrivals_tx.clone();
        tokio::spawn(async move {
            let mut client = SecretDiscoveryServiceClient::new(channel);
            let (tx, rx) = mpsc::channel(4);
            tx.send(request("", "")).await.unwrap();
            let mut responses = client
                .stream_secrets(ReceiverStream::new(rx))
                .await
                .unwrap()
                .into_inner();
            while let Ok(Some(r)) = responses.message().await {
                let r: DiscoveryResponse = r;
                let _ = arrivals_tx.send((i, Instant::now()));
                if tx.send(request(&r.version_info, &r.nonce)).await.is_err() {
                    break;
                }
            }
        });
    }
    for _ in 0..STREAMS {
        arrivals.recv().await.unwrap();
    }
    let acks = |n: usize| {
        tokio::task::block_in_place(|| {
            wait_until("all ACKs", Duration::from_secs(30), || {
                bridge.metric("sds_bridge_push_ack_seconds_count") >= n as f64
            });
        });
    };
    acks(STREAMS);
    let loaded = rss_kib(pid);

    let ticks = cpu_ticks(pid);
    let start = Instant::now();
    agent.post("/rotate/x509");
    let mut times = Vec::with_capacity(STREAMS);
    for _ in 0..STREAMS {
        let (_, at) = arrivals.recv().await.unwrap();
        times.push(at - start);
    }
    acks(2 * STREAMS);
    let cpu_ms = (cpu_ticks(pid) - ticks) * 10;
    println!(
        "{STREAMS} SDS streams over {connections} connection(s), subscribed to default + ROOTCA, :authority adapter {adapter}:"
    );
    println!(
        "  bridge RSS: idle {idle} KiB, with streams {loaded} KiB -> {:.1} KiB per stream",
        (loaded.saturating_sub(idle)) as f64 / STREAMS as f64
    );
    println!(
        "  one rotation pushed to all: first {} p50 {} p99 {} last {}; bridge CPU {cpu_ms} ms (10 ms resolution)",
        ms(quantile(&mut times, 0.0)),
        ms(quantile(&mut times, 0.5)),
        ms(quantile(&mut times, 0.99)),
        ms(quantile(&mut times, 1.0)),
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("push-to-ack");
    std::fs::create_dir_all(&a).unwrap();
    tokio::task::spawn_blocking(move || push_to_ack(&a))
        .await
        .unwrap();
    // Memory and fan-out with the Unix-socket :authority adapter on (as shipped) and off.
    for connections in [STREAMS, 10] {
        for adapter in ["on", "off"] {
            let b = tmp.path().join(format!("fan-out-{connections}-{adapter}"));
            std::fs::create_dir_all(&b).unwrap();
            fan_out(&b, connections, adapter).await;
        }
    }
}

//! `cargo xtask bench`: jwt-auth-helper against baselines measured in the same run.
//!
//! 1. gRPC Check latency and throughput: the helper (injection, token cached) against
//!    `noop-authz`, a server on the same stack that allows everything. Rounds alternate between
//!    the two so drift on a shared machine hits both alike; figures are reported as ratios.
//! 2. End to end with wrk: Envoy → echo upstream alone, with the helper as ext_authz over TCP
//!    and over a Unix socket, each with Envoy's two gRPC clients (`envoy_grpc`, `google_grpc`),
//!    and with credential_injector fed a JWT-SVID by sds-bridge (no per-request call at all).
//! 3. Idle RSS of the helper.
//!
//! Absolute times on a shared 2-core machine drift; the ratios are the result.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use suite_tests::envoy::{
    AuthzVia, EchoServer, Envoy, ext_authz_proxy, ext_authz_proxy_via, plain_proxy, static_cluster,
};
use suite_tests::procfs::rss_kib;
use suite_tests::sds::{self, SdsBridge, credential_injector_listener, sds_cluster};
use suite_tests::sidecars::{JwtHelper, check_request};
use suite_tests::stats::us;
use suite_tests::wrk::{self, Wrk};
use suite_tests::{DevAgent, Proc, bin, free_port, wait_until};

const ROUNDS: usize = 3;
const ROUND: Duration = Duration::from_secs(4);
const CONNECTIONS: usize = 4;
const STREAMS_PER_CONNECTION: usize = 8;

#[derive(Default)]
struct Sample {
    latencies: Vec<Duration>,
    elapsed: Duration,
}

impl Sample {
    fn merge(&mut self, other: Self) {
        self.latencies.extend(other.latencies);
        self.elapsed += other.elapsed;
    }
    fn quantile(&mut self, q: f64) -> Duration {
        self.latencies.sort_unstable();
        let i = ((self.latencies.len() as f64 - 1.0) * q).round() as usize;
        self.latencies[i]
    }
    fn throughput(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }
}

async fn grpc_round(addr: SocketAddr) -> Sample {
    let request = Arc::new(check_request(
        "backend.default.svc:8080",
        &[("user-agent", "bench")],
    ));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONNECTIONS {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        for _ in 0..STREAMS_PER_CONNECTION {
            let mut client =
                envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient::new(
                    channel.clone(),
                );
            let request = request.clone();
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::with_capacity(50_000);
                while start.elapsed() < ROUND {
                    let t = Instant::now();
                    let r = client.check((*request).clone()).await.unwrap().into_inner();
                    lat.push(t.elapsed());
                    assert_eq!(
                        r.status.map(|s| s.code),
                        Some(0),
                        "check denied during bench"
                    );
                }
                lat
            }));
        }
    }
    let mut sample = Sample::default();
    for t in tasks {
        sample.latencies.extend(t.await.unwrap());
    }
    sample.elapsed = start.elapsed();
    sample
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let agent = DevAgent::start(dir.path(), &[]);
    let mut helper = JwtHelper::start(
        dir.path(),
        &agent.endpoint,
        &["--audience", "bench", "--log-format", "json"],
    );
    helper.wait_ready(Duration::from_secs(10));
    let noop_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut noop_cmd = Command::new(bin("noop-authz"));
    noop_cmd.args(["--listen", &noop_addr.to_string()]);
    let _noop = Proc::spawn("noop-authz", noop_cmd, dir.path());
    wait_until("noop-authz", Duration::from_secs(10), || {
        std::net::TcpStream::connect(noop_addr).is_ok()
    });

    let idle_rss = rss_kib(helper.proc.pid());

    println!(
        "== gRPC Check: {CONNECTIONS} connections x {STREAMS_PER_CONNECTION} streams, {ROUNDS} alternating rounds of {ROUND:?}"
    );
    let (mut base, mut help) = (Sample::default(), Sample::default());
    grpc_round(helper.listen).await; // warm-up: connections, allocator, caches
    for _ in 0..ROUNDS {
        base.merge(grpc_round(noop_addr).await);
        help.merge(grpc_round(helper.listen).await);
    }
    let (b50, b99, h50, h99) = (
        base.quantile(0.5),
        base.quantile(0.99),
        help.quantile(0.5),
        help.quantile(0.99),
    );
    println!(
        "   noop-authz        p50 {:>8}  p99 {:>8}  {:>8.0} checks/s",
        us(b50),
        us(b99),
        base.throughput()
    );
    println!(
        "   jwt-auth-helper   p50 {:>8}  p99 {:>8}  {:>8.0} checks/s",
        us(h50),
        us(h99),
        help.throughput()
    );
    println!(
        "   ratio helper/noop p50 {:.2}x  p99 {:.2}x  throughput {:.2}x",
        h50.as_secs_f64() / b50.as_secs_f64(),
        h99.as_secs_f64() / b99.as_secs_f64(),
        help.throughput() / base.throughput()
    );
    let loaded_rss = rss_kib(helper.proc.pid());

    if Command::new("wrk").arg("--version").output().is_err() {
        println!("== Envoy end to end: skipped, wrk is not installed (apt-get install wrk)");
    } else {
        let upstream = EchoServer::start();
        let addr = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        // The no-round-trip alternative: Envoy's credential_injector reading the JWT-SVID as
        // an SDS generic secret from sds-bridge.
        let mut bridge = SdsBridge::start("sds-bridge", dir.path(), &agent.endpoint, &[]);
        // The same helper on a Unix socket, as Envoy reaches it in a pod.
        let uds_dir = dir.path().join("uds");
        std::fs::create_dir_all(&uds_dir).unwrap();
        let (mut uds_helper, uds_socket) = JwtHelper::start_unix(
            &uds_dir,
            &agent.endpoint,
            &["--audience", "bench", "--log-format", "json"],
        );
        uds_helper.wait_ready(Duration::from_secs(10));
        bridge.wait_ready(Duration::from_secs(10));
        let injector = |admin: u16, port: u16| {
            sds::bootstrap(
                admin,
                "bench",
                &[credential_injector_listener(
                    "ingress",
                    port,
                    "sds",
                    "jwt-svid:bench",
                )],
                &[
                    sds_cluster("sds", &bridge.socket),
                    static_cluster("upstream", upstream.addr, false),
                ],
            )
        };
        let mut setups: Vec<(&str, String, u16)> = Vec::new();
        for name in [
            "Envoy alone",
            "Envoy + credential_injector (SDS)",
            "Envoy + noop-authz (google_grpc)",
            "Envoy + helper TCP (google_grpc)",
            "Envoy + helper TCP (envoy_grpc)",
            "Envoy + helper UDS (google_grpc)",
            "Envoy + helper UDS (envoy_grpc)",
        ] {
            let (admin, port) = (free_port(), free_port());
            let via = |v| ext_authz_proxy_via(admin, port, upstream.addr, v);
            let yaml = match name {
                "Envoy alone" => plain_proxy(admin, port, upstream.addr),
                "Envoy + credential_injector (SDS)" => injector(admin, port),
                "Envoy + noop-authz (google_grpc)" => {
                    ext_authz_proxy(admin, port, upstream.addr, noop_addr)
                }
                "Envoy + helper TCP (google_grpc)" => via(AuthzVia::GoogleTcp(helper.listen)),
                "Envoy + helper TCP (envoy_grpc)" => via(AuthzVia::EnvoyTcp(helper.listen)),
                "Envoy + helper UDS (google_grpc)" => via(AuthzVia::GoogleUnix(&uds_socket)),
                _ => via(AuthzVia::EnvoyUnix(&uds_socket)),
            };
            setups.push((name, yaml, port));
        }
        let mut envoys = Vec::new();
        for (i, (_, yaml, port)) in setups.iter().enumerate() {
            envoys.push((Envoy::start(&format!("envoy-{i}"), dir.path(), yaml), *port));
        }
        // The injector stamps a token (checked once, so the figures are for working setups).
        let stamped = suite_tests::envoy::request(addr(setups[1].2), "GET", "/", &[]).unwrap();
        assert!(
            stamped.body.contains("\"authorization\":\"Bearer ey"),
            "credential_injector did not stamp a JWT-SVID: {}",
            stamped.body
        );
        // 1 connection: latency without queueing; 16: saturation of this 2-core machine.
        for connections in [1u32, 16] {
            println!(
                "== Envoy end to end (wrk -t1 -c{connections}, {ROUNDS} alternating rounds of 4s; medians of rounds)"
            );
            let mut runs: Vec<Vec<Wrk>> = setups.iter().map(|_| Vec::new()).collect();
            for _ in 0..ROUNDS {
                for (i, (_, port)) in envoys.iter().enumerate() {
                    runs[i].push(wrk::run(addr(*port), "/bench", connections, 4));
                }
            }
            let med = |v: &[Wrk], f: fn(&Wrk) -> f64| {
                let mut xs: Vec<f64> = v.iter().map(f).collect();
                xs.sort_by(f64::total_cmp);
                xs[xs.len() / 2]
            };
            let stats: Vec<(f64, f64, f64)> = runs
                .iter()
                .map(|r| {
                    (
                        med(r, |w| w.p50.as_secs_f64()),
                        med(r, |w| w.p99.as_secs_f64()),
                        med(r, |w| w.rps),
                    )
                })
                .collect();
            let (base50, _, base_rps) = stats[0];
            for ((name, _, _), (p50, p99, rps)) in setups.iter().zip(&stats) {
                println!(
                    "   {name:<34} p50 {:>8}  p99 {:>8}  {rps:>7.0} req/s  added p50 {:>7}  throughput {:.2}x",
                    us(Duration::from_secs_f64(*p50)),
                    us(Duration::from_secs_f64(*p99)),
                    us(Duration::from_secs_f64((p50 - base50).max(0.0))),
                    rps / base_rps
                );
            }
        }
    }
    println!(
        "== jwt-auth-helper RSS: idle {:.1} MiB, after load {:.1} MiB",
        idle_rss as f64 / 1024.0,
        loaded_rss as f64 / 1024.0
    );
    drop(agent);
}

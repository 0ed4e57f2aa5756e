//! `cargo xtask bench`: iam-broker's cached `GET /v1/creds` against a trivial axum handler
//! returning a fixed body of the same size, measured with wrk in the same run, rounds
//! alternating so drift on a shared machine hits both alike. Figures are ratios.
//!
//! Goal (issue 5): within 1.2× of the trivial handler, p99 under 1 ms on loopback.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use suite_tests::DevAgent;
use suite_tests::aws::{Broker, Moto};
use suite_tests::wrk::{self, Wrk};

const ROUNDS: usize = 3;
const SECONDS: u32 = 4;

fn us(secs: f64) -> String {
    format!("{:.0} µs", secs * 1e6)
}

/// The trivial baseline: axum, one route, a fixed body of `len` bytes, same content type.
fn baseline(body: String) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let body = axum::body::Bytes::from(body);
            let app = axum::Router::new().route(
                "/v1/creds",
                axum::routing::get(move || {
                    let body = body.clone();
                    async move {
                        (
                            [(axum::http::header::CONTENT_TYPE, "application/json")],
                            body,
                        )
                    }
                }),
            );
            axum::serve(listener, app).await.unwrap();
        });
    });
    addr
}

fn main() {
    if Command::new("wrk").arg("--version").output().is_err() {
        panic!("wrk is not installed (apt-get install wrk)");
    }
    let dir = tempfile::tempdir().unwrap();
    let agent = DevAgent::start(dir.path(), &[]);
    let moto = Moto::start(dir.path());
    let mut broker = Broker::start(
        dir.path(),
        &agent.endpoint,
        &moto.url(),
        &["--log-format", "json"],
        &[],
    );
    broker.wait_ready(Duration::from_secs(30));
    let sample = broker.creds();
    assert_eq!(sample.status, 200);
    let base = baseline(sample.body.clone());
    println!(
        "== iam-broker GET /v1/creds (cached, {} B body) vs a trivial axum handler with the same body",
        sample.body.len()
    );

    for connections in [1u32, 16] {
        println!(
            "== wrk -t1 -c{connections}, {ROUNDS} alternating rounds of {SECONDS}s; medians of rounds"
        );
        let mut runs: [Vec<Wrk>; 2] = [Vec::new(), Vec::new()];
        wrk::run(broker.listen, "/v1/creds", connections, SECONDS); // warm-up
        for _ in 0..ROUNDS {
            runs[0].push(wrk::run(base, "/v1/creds", connections, SECONDS));
            runs[1].push(wrk::run(broker.listen, "/v1/creds", connections, SECONDS));
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
        for (name, (p50, p99, rps)) in ["trivial axum", "iam-broker"].iter().zip(&stats) {
            println!(
                "   {name:<14} p50 {:>8}  p99 {:>8}  {rps:>8.0} req/s",
                us(*p50),
                us(*p99)
            );
        }
        let ((b50, b99, brps), (h50, h99, hrps)) = (stats[0], stats[1]);
        println!(
            "   ratio broker/trivial  p50 {:.2}x  p99 {:.2}x  throughput {:.2}x",
            h50 / b50,
            h99 / b99,
            hrps / brps
        );
    }
    println!(
        "== STS calls during the bench: {}",
        broker.metric("iam_broker_sts_calls_total{outcome=\"success\"}")
    );
    drop(agent);
}

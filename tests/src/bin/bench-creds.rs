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

const ROUNDS: usize = 3;
const SECONDS: u32 = 4;

struct Wrk {
    p50: Duration,
    p99: Duration,
    rps: f64,
}

fn wrk(addr: SocketAddr, connections: u32) -> Wrk {
    let out = Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{connections}"),
            &format!("-d{SECONDS}s"),
            "--latency",
            &format!("http://{addr}/v1/creds"),
        ])
        .output()
        .expect("wrk missing: apt-get install wrk");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("Non-2xx"), "errors during wrk run: {text}");
    let find = |label: &str| -> Duration {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(label))
            .unwrap_or_else(|| panic!("{label} in {text}"));
        parse_duration(line.split_whitespace().nth(1).unwrap())
    };
    let rps = text
        .lines()
        .find(|l| l.starts_with("Requests/sec:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("Requests/sec in {text}"));
    Wrk {
        p50: find("50%"),
        p99: find("99%"),
        rps,
    }
}

fn parse_duration(s: &str) -> Duration {
    let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic()).unwrap());
    let v: f64 = num.parse().unwrap();
    Duration::from_secs_f64(match unit {
        "us" => v / 1e6,
        "ms" => v / 1e3,
        "s" => v,
        _ => panic!("unit {unit}"),
    })
}

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
        wrk(broker.listen, connections); // warm-up
        for _ in 0..ROUNDS {
            runs[0].push(wrk(base, connections));
            runs[1].push(wrk(broker.listen, connections));
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

//! `cargo xtask bench`: iam-broker's cached answers — AWS `GET /v1/creds`, Azure `GET
//! /msi/token`, GCP `GET …/default/token` — each against a trivial axum handler returning a
//! fixed body of the same size, measured with wrk in the same run, rounds alternating so drift
//! on a shared machine hits both alike. Figures are ratios.
//!
//! Goals: AWS within 1.2× of the trivial handler with p99 under 1 ms on loopback; Azure and
//! GCP's cached-token endpoints with p99 < 1 ms, throughput ≥ 0.9× the baseline, and exchanges
//! staying at one per resource. AWS through IAM Roles Anywhere (the X.509-SVID signing
//! `CreateSession`, against the suite's stand-in) serves from the same cache and is measured
//! the same way.
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
use suite_tests::stats::secs_as_us;
use suite_tests::wrk::{self, Wrk};

const ROUNDS: usize = 3;
const SECONDS: u32 = 4;

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
            // Any path: the same handler stands in for each protocol's route.
            let app = axum::Router::new().fallback(move || {
                let body = body.clone();
                async move {
                    (
                        [(axum::http::header::CONTENT_TYPE, "application/json")],
                        body,
                    )
                }
            });
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
    cached_creds("iam-broker", "iam-broker GET /v1/creds", &mut broker);
    println!(
        "== STS calls during the bench: {}",
        broker.metric("iam_broker_sts_calls_total{outcome=\"success\"}")
    );
    drop(broker);
    roles_anywhere(dir.path());
    clouds(dir.path());
    drop(agent);
}

/// `GET /v1/creds` of `iam-broker aws` in the Roles Anywhere mode, against the trivial handler.
fn roles_anywhere(dir: &std::path::Path) {
    use dev_agent::{Agent, Config as AgentConfig};
    use suite_tests::roles_anywhere::RolesAnywhere;
    // The in-process agent, for its CA (the trust anchor); it runs on this runtime's thread.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let agent = rt
        .block_on(Agent::start(AgentConfig::new(
            workload_client::Endpoint::Unix(dir.join("roles-anywhere-agent.sock")),
            workload_client::spiffe::TrustDomain::new("example.org").unwrap(),
        )))
        .unwrap();
    let ra = RolesAnywhere::start(&agent.authority().ca_der());
    let mut broker = ra.broker(
        dir,
        &agent.endpoint().to_string(),
        &["--log-format", "json"],
        &[],
    );
    cached_creds(
        "roles anywhere",
        "iam-broker aws, Roles Anywhere: GET /v1/creds",
        &mut broker,
    );
    println!("== CreateSession calls during the bench: {}", ra.issued());
    drop(broker);
    rt.block_on(agent.shutdown());
}

/// The cached `GET /v1/creds` of `broker` (once ready) against a trivial handler returning the
/// same body.
fn cached_creds(name: &str, title: &str, broker: &mut Broker) {
    broker.wait_ready(Duration::from_secs(30));
    let sample = broker.creds();
    assert_eq!(sample.status, 200);
    let base = baseline(sample.body.clone());
    println!(
        "== {title} (cached, {} B body) vs a trivial axum handler with the same body",
        sample.body.len()
    );
    compare(name, broker.listen, "/v1/creds", &[], base);
}

/// wrk against `target` and `base` for 1 and 16 connections, alternating rounds; prints medians
/// and ratios.
fn compare(name: &str, target: SocketAddr, path: &str, headers: &[(&str, &str)], base: SocketAddr) {
    for connections in [1u32, 16] {
        println!(
            "== wrk -t1 -c{connections}, {ROUNDS} alternating rounds of {SECONDS}s; medians of rounds"
        );
        let mut runs: [Vec<Wrk>; 2] = [Vec::new(), Vec::new()];
        wrk::run_with(target, path, headers, connections, SECONDS); // warm-up
        for _ in 0..ROUNDS {
            runs[0].push(wrk::run_with(base, path, headers, connections, SECONDS));
            runs[1].push(wrk::run_with(target, path, headers, connections, SECONDS));
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
        for (name, (p50, p99, rps)) in ["trivial axum", name].iter().zip(&stats) {
            println!(
                "   {name:<14} p50 {:>8}  p99 {:>8}  {rps:>8.0} req/s",
                secs_as_us(*p50),
                secs_as_us(*p99)
            );
        }
        let ((b50, b99, brps), (h50, h99, hrps)) = (stats[0], stats[1]);
        println!(
            "   ratio {name}/trivial  p50 {:.2}x  p99 {:.2}x  throughput {:.2}x",
            h50 / b50,
            h99 / b99,
            hrps / brps
        );
    }
}

/// The Azure and GCP cached-token endpoints, against the suite's Entra / STS stand-ins.
fn clouds(dir: &std::path::Path) {
    use suite_tests::{azure, gcp};
    let sub = "spiffe://example.org/ns/bench/sa/app";
    let agent_dir = dir.join("clouds");
    std::fs::create_dir_all(&agent_dir).unwrap();
    let (agent, issuer) = suite_tests::agent_with_oidc(&agent_dir, sub);
    // Only warnings: request logging is not what is measured.
    let quiet = [("RUST_LOG", "warn")];

    let secret = "bench-identity-header";
    let (entra, broker) = azure::start_with_entra(
        dir,
        &agent.endpoint,
        &azure::FederatedCredential {
            issuer: issuer.clone(),
            subject: sub.to_owned(),
            audience: azure::AUDIENCE.to_owned(),
        },
        secret,
        &["--log-format", "json"],
        &quiet,
    );
    let path = "/msi/token?api-version=2019-08-01&resource=https%3A%2F%2Fstorage.azure.com";
    let headers = [("X-IDENTITY-HEADER", secret), ("Metadata", "true")];
    let sample = broker.get(path, &headers);
    assert_eq!(sample.status, 200, "{}", sample.body);
    let base = baseline(sample.body.clone());
    println!(
        "== iam-broker azure GET /msi/token (cached, {} B body) vs a trivial axum handler with the same body",
        sample.body.len()
    );
    compare("iam-broker azure", broker.listen, path, &headers, base);
    println!(
        "== Entra token requests during the bench: {:?}",
        entra.calls_by_scope()
    );
    drop(broker);

    let (google, broker) = gcp::start_with_google(
        dir,
        &agent.endpoint,
        &issuer,
        &["--log-format", "json"],
        &quiet,
        |_| {},
    );
    let path = "/computeMetadata/v1/instance/service-accounts/default/token";
    let headers = [("Metadata-Flavor", "Google")];
    let sample = broker.get(path, &headers);
    assert_eq!(sample.status, 200, "{}", sample.body);
    let base = baseline(sample.body.clone());
    println!(
        "== iam-broker gcp GET …/default/token (cached, {} B body) vs a trivial axum handler with the same body",
        sample.body.len()
    );
    compare("iam-broker gcp", broker.listen, path, &headers, base);
    println!(
        "== Google STS calls during the bench: {:?}",
        google.calls_by()
    );
}

//! `cargo xtask bench uds`: the cost of the Unix-socket `:authority` adapter
//! (sidecar_runtime::uds) on the dev agent's FetchJWTSVID, with a tonic client (which sends a
//! valid authority, so the adapter re-encodes and rewrites nothing): two agents, one with the
//! adapter on and one with it off, called in alternating rounds so drift on the machine hits
//! both alike. Figures are the ratio on/off. Goal: p50 within noise (≤ 1.05×).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

use std::time::{Duration, Instant};

use suite_tests::DevAgent;
use suite_tests::stats::{quantile, us};
use workload_client::{Endpoint, WorkloadApiClient};

const ROUNDS: usize = 10;
const CALLS: usize = 300;

async fn calls(client: &WorkloadApiClient, n: usize, out: &mut Vec<Duration>) {
    let audience = vec!["bench".to_owned()];
    for _ in 0..n {
        let start = Instant::now();
        client.fetch_jwt_svid(&audience, None).await.unwrap();
        out.push(start.elapsed());
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let tmp = tempfile::tempdir().unwrap();
    let mut agents = Vec::new();
    for adapter in ["on", "off"] {
        let dir = tmp.path().join(adapter);
        std::fs::create_dir_all(&dir).unwrap();
        let agent = DevAgent::start(&dir, &["--unix-authority-adapter", adapter]);
        let client = WorkloadApiClient::new(Endpoint::parse(&agent.endpoint).unwrap());
        agents.push((adapter, agent, client));
    }
    // Warm up both (connection, first signature).
    for (_, _, client) in &agents {
        calls(client, 50, &mut Vec::new()).await;
    }
    let mut on = Vec::new();
    let mut off = Vec::new();
    for _ in 0..ROUNDS {
        calls(&agents[0].2, CALLS, &mut on).await;
        calls(&agents[1].2, CALLS, &mut off).await;
    }
    println!(
        "dev agent FetchJWTSVID over a Unix socket, tonic client, {} calls each, {ROUNDS} alternating rounds:",
        ROUNDS * CALLS
    );
    let (on50, off50) = (quantile(&mut on, 0.5), quantile(&mut off, 0.5));
    let (on99, off99) = (quantile(&mut on, 0.99), quantile(&mut off, 0.99));
    println!(
        "  adapter off (baseline): p50 {}  p99 {}",
        us(off50),
        us(off99)
    );
    println!(
        "  adapter on:             p50 {}  p99 {}  (p50 x{:.3}, p99 x{:.3})",
        us(on50),
        us(on99),
        on50.as_secs_f64() / off50.as_secs_f64(),
        on99.as_secs_f64() / off99.as_secs_f64(),
    );
    drop(agents);
}

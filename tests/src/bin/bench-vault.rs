//! `cargo xtask bench vault`: a KV v2 read through `iam-broker vault`'s API proxy against the
//! same read sent straight to the same fake Vault (HTTPS, the broker's own token), with wrk in
//! the same run, rounds alternating so drift on a shared machine hits both alike.
//!
//! Both paths end in one TLS request to the fake; the proxy adds a plain-HTTP loopback hop, the
//! guards, the token lookup and the streaming copy. Goal: added p50 < 100 µs.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

use std::process::Command;
use std::time::Duration;

use suite_tests::azure::start_broker;
use suite_tests::stats::us;
use suite_tests::vault::{FakeVault, ROLE};
use suite_tests::wrk::{self, Target};
use suite_tests::{agent_with_oidc, wait_until};

const ROUNDS: usize = 3;
const SECONDS: u32 = 4;
const SPIFFE_ID: &str = "spiffe://example.org/ns/bench/sa/app";
const PATH: &str = "/v1/secret/data/app/config";

fn main() {
    assert!(
        wrk::available(),
        "wrk is not installed (apt-get install wrk)"
    );
    let uptime = Command::new("uptime").output().unwrap();
    println!(
        "== load: {}",
        String::from_utf8_lossy(&uptime.stdout).trim()
    );
    let dir = tempfile::tempdir().unwrap();
    let (agent, issuer) = agent_with_oidc(dir.path(), SPIFFE_ID);
    let vault = FakeVault::start(&issuer, SPIFFE_ID, None);
    vault.put_secret("app/config", serde_json::json!({"password": "s3cr3t"}));
    let ca = vault.write_ca(dir.path());
    let sink = dir.path().join("vault-token");
    let url = vault.url();
    let mut broker = start_broker(
        dir.path(),
        &agent.endpoint,
        &[
            "vault",
            "--vault-addr",
            &url,
            "--role",
            ROLE,
            "--ca-file",
            ca.to_str().unwrap(),
            "--token-sink",
            sink.to_str().unwrap(),
            "--log-format",
            "json",
        ],
        &[("RUST_LOG", "warn")],
    );
    broker.wait_ready(Duration::from_secs(30));
    wait_until("the token sink", Duration::from_secs(10), || sink.exists());
    let token = std::fs::read_to_string(&sink).unwrap();

    let proxied = format!("http://{}{PATH}", broker.listen);
    let direct = format!("{url}{PATH}");
    let through = [("X-Vault-Request", "true")];
    let straight = [
        ("X-Vault-Request", "true"),
        ("X-Vault-Token", token.as_str()),
    ];
    println!(
        "== KV v2 read {PATH}: straight to the fake Vault (https, token) vs through iam-broker vault (http, no token)"
    );
    for connections in [1u32, 16] {
        println!(
            "== wrk -t1 -c{connections}, {ROUNDS} alternating rounds of {SECONDS}s; medians of rounds"
        );
        let (base, proxy) = wrk::alternate(
            Target {
                url: &direct,
                headers: &straight,
            },
            Target {
                url: &proxied,
                headers: &through,
            },
            connections,
            ROUNDS,
            SECONDS,
        );
        for (name, m) in [("straight to Vault", base), ("through the proxy", proxy)] {
            println!(
                "   {name:<18} p50 {:>8}  p99 {:>8}  {:>8.0} req/s",
                us(m.p50),
                us(m.p99),
                m.rps
            );
        }
        println!(
            "   added p50 {}  (goal < 100 µs)  p99 {:.2}x  throughput {:.2}x",
            us(proxy.p50.saturating_sub(base.p50)),
            proxy.p99.as_secs_f64() / base.p99.as_secs_f64(),
            proxy.rps / base.rps
        );
    }
    println!(
        "== Vault logins during the bench: {} (KV reads answered: {})",
        vault.count(|c| &c.logins),
        vault.count(|c| &c.kv_reads)
    );
    let uptime = Command::new("uptime").output().unwrap();
    println!(
        "== load: {}",
        String::from_utf8_lossy(&uptime.stdout).trim()
    );
    drop(broker);
    drop(agent);
}

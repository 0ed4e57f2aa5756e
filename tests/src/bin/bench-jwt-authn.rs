//! `cargo xtask bench jwt-authn`: the cost of checking a JWT-SVID and authorizing its SPIFFE ID
//! inside Envoy, against Envoy alone and against the ext_authz validator, in the same
//! wrk run with the same bearer token. Every Envoy row has the same listener shape and adds one
//! piece of what `sds-bridge jwt-authn-config` prints, so the differences between rows are each
//! piece's cost:
//!
//! - Envoy alone → echo upstream (the baseline);
//! - with the `header_mutation` scrub of `x-spiffe-id`;
//! - with `jwt_authn`, one provider per trust domain (two, `requires_any`) over the bridge's JWKS,
//!   nothing copied out of the token;
//! - with `claim_to_headers` and `payload_in_metadata` (the generated `jwt_authn`);
//! - the same with one provider only (what `requires_any` over two costs);
//! - with RBAC on the `sub` and the `local_reply_config`: the shipped configuration;
//! - the shipped one + `jwt_cache_config` (skips the signature check for a repeated token; not
//!   safe with the JWKS, as a JWKS refresh keeps the cache and so revoked keys' tokens);
//! - the ECDS mode (`jwt-authn-config --ecds`): the same filters, the jwt_authn config pushed by
//!   the bridge with the keys inline and `jwt_cache_config` on, which is safe there (every push
//!   builds a new cache);
//! - Envoy + jwt-auth-helper in `jwt_svid_validator` mode as ext_authz (`envoy_grpc`, TCP).
//!
//! Rounds alternate between setups so drift on a shared machine hits all alike; medians of
//! rounds, and the CPU time per request of the serving processes (Envoy, plus the validator in
//! its row; other load on the machine moves it much less than latency). 1 connection (latency
//! without queueing; every row) and 16 (saturation of 2 cores; baseline, shipped, validator).
//! The JWT signing algorithm is the first argument (`es256`, the default, or `rs256`): Envoy
//! verifies the signature on every request.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

use std::net::SocketAddr;
use std::time::Duration;

use dev_agent::{Agent, Config as AgentConfig, JwtAlg};
use suite_tests::envoy::{
    AuthzVia, EchoServer, Envoy, ext_authz_proxy_via, request, static_cluster,
};
use suite_tests::procfs::cpu_ticks;
use suite_tests::sds::{self, SdsBridge, filtered_listener, jwt_authn_config};
use suite_tests::sidecars::{JwtHelper, claims};
use suite_tests::stats::secs_as_us;
use suite_tests::wrk::{self, Wrk};
use suite_tests::{free_port, wait_until};
use workload_client::Endpoint;
use workload_client::spiffe::TrustDomain;

/// What a setup's upstream request shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// No token check (the request gets through without one).
    Nothing,
    /// The token is checked, nothing from it reaches the app.
    Checked,
    /// The token is checked and the app gets `x-spiffe-id`.
    Id,
}

const ROUNDS: usize = 5;
const SECONDS: u32 = 4;
const AUD: &str = "spiffe://example.org/ns/default/sa/backend";
const CLIENT: &str = "spiffe://example.org/ns/default/sa/client";
const ECDS_ROW: &str = "ECDS: shipped filters, keys inline + cache";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    assert!(wrk::available(), "wrk missing: apt-get install wrk");
    let dir = tempfile::tempdir().unwrap();
    let mut config = AgentConfig::new(
        Endpoint::Unix(dir.path().join("agent.sock")),
        TrustDomain::new("example.org").unwrap(),
    );
    config.jwt_alg = match std::env::args().nth(1).as_deref() {
        None | Some("es256") => JwtAlg::Es256,
        Some("rs256") => JwtAlg::Rs256,
        Some(other) => panic!("unknown algorithm {other}: es256 or rs256"),
    };
    println!("== JWT-SVIDs signed with {:?}", config.jwt_alg);
    // Two trust domains, as in a federated mesh: two providers, requires_any.
    config.federate_with = vec![TrustDomain::new("partner.org").unwrap()];
    let agent = Agent::start(config).await.unwrap();
    // One token for the whole run (an hour): every setup checks the same bytes.
    let token = agent
        .authority()
        .sign_claims(&claims(CLIENT, AUD, 3600))
        .unwrap();
    let endpoint = agent.endpoint().to_string();
    let dir_path = dir.path().to_path_buf();
    // Processes and wrk block: off the runtime that serves the in-process agent.
    tokio::task::spawn_blocking(move || {
        let dir = dir_path.as_path();
        let jwks = SocketAddr::from(([127, 0, 0, 1], free_port()));
        // One bridge serves the JWKS and ECDS alike (the same bundle stream feeds both).
        let mut bridge = SdsBridge::start(
            "sds-bridge",
            dir,
            &endpoint,
            &[
                "--jwks-listen",
                &jwks.to_string(),
                "--ecds-audience",
                AUD,
                "--ecds-trust-domain",
                "example.org",
                "--ecds-trust-domain",
                "partner.org",
                "--log-format",
                "json",
            ],
        );
        // Not /readyz: with ECDS that waits for an Envoy's ACK, and the Envoys start below.
        bridge.wait_probe("/startupz", Duration::from_secs(10));
        let mut helper = JwtHelper::start(
            dir,
            &endpoint,
            &[
                "--mode",
                "jwt_svid_validator",
                "--audience",
                AUD,
                "--allow-spiffe-id",
                CLIENT,
                "--log-format",
                "json",
            ],
        );
        helper.wait_ready(Duration::from_secs(10));
        wait_until("JWKS served", Duration::from_secs(10), || {
            request(jwks, "GET", "/jwks/example.org", &[]).is_some_and(|r| r.status == 200)
        });
        let generated = |trust_domains: &[&str], part: &str| {
            let mut args = vec!["--audience", AUD, "--allow-spiffe-id", CLIENT, "--part", part];
            for td in trust_domains {
                args.extend(["--trust-domain", td]);
            }
            let jwks = jwks.to_string();
            args.extend(["--jwks-address", &jwks]);
            jwt_authn_config(&args)
        };
        let both = ["example.org", "partner.org"];
        let shipped = generated(&both, "filters");
        // The decomposition: each row adds one piece of what the generator prints, on the same
        // listener shape, so differences between rows are that piece's cost.
        let scrub_only = shipped
            .split("\n- name: envoy.filters.http.jwt_authn")
            .next()
            .unwrap()
            .to_owned();
        let without_rbac = shipped
            .split("\n- name: envoy.filters.http.rbac")
            .next()
            .unwrap()
            .to_owned();
        // Nothing copied out of the token: no claim_to_headers, no payload_in_metadata.
        let bare = without_rbac
            .lines()
            .filter(|l| {
                let l = l.trim_start();
                !(l.starts_with("claim_to_headers:")
                    || l.starts_with("- header_name:")
                    || l.starts_with("claim_name:")
                    || l.starts_with("payload_in_metadata:"))
            })
            .collect::<Vec<_>>()
            .join("\n");
        // Envoy's verified-token cache: skips the signature check for a repeated token, but is
        // never flushed when the JWKS changes (jwks_cache.cc keeps the per-thread JwtCache
        // across setJwksToAllThreads; a hit checks only time and audience), so it keeps
        // revoked keys' tokens accepted until they expire. Measured, not shipped.
        let cached = shipped.replace(
            "        require_expiration: true\n",
            "        require_expiration: true\n        jwt_cache_config: { jwt_cache_size: 100 }\n",
        );
        let local_reply = generated(&both, "local-reply");
        let bridge_address = format!("unix://{}", bridge.socket.display());
        let ecds = |part: &str| {
            jwt_authn_config(&[
                "--ecds",
                "--bridge-address",
                &bridge_address,
                "--allow-spiffe-id",
                CLIENT,
                "--part",
                part,
            ])
        };
        // (name, HCM fields, HTTP filters, what the app sees: x-spiffe-id / token checked,
        //  also at 16 connections)
        let setups: Vec<(&str, String, String, Expect, bool)> = vec![
            ("Envoy alone", String::new(), String::new(), Expect::Nothing, true),
            ("+ header_mutation (x-spiffe-id scrub)", String::new(), scrub_only, Expect::Nothing, false),
            ("+ jwt_authn, 2 providers, bare", String::new(), bare, Expect::Checked, false),
            ("+ claim_to_headers, payload_in_metadata", String::new(), without_rbac, Expect::Id, false),
            (
                "+ jwt_authn, 1 provider (no requires_any)",
                String::new(),
                generated(&["example.org"], "filters")
                    .split("\n- name: envoy.filters.http.rbac")
                    .next()
                    .unwrap()
                    .to_owned(),
                Expect::Id,
                false,
            ),
            ("+ RBAC + local_reply = shipped config", local_reply.clone(), shipped, Expect::Id, true),
            ("shipped + jwt_cache_config (JWKS: unsafe)", local_reply.clone(), cached, Expect::Id, false),
            (ECDS_ROW, local_reply, ecds("filters"), Expect::Id, true),
        ];
        let upstream = EchoServer::start();
        let validator = "Envoy + validator ext_authz (envoy_grpc)";
        let mut names: Vec<&str> = setups.iter().map(|s| s.0).collect();
        names.push(validator);
        let mut at16: Vec<bool> = setups.iter().map(|s| s.4).collect();
        at16.push(true);
        let mut envoys = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let (admin, port) = (free_port(), free_port());
            let (yaml, expect) = match setups.get(i) {
                Some((_, hcm, filters, expect, _)) => (
                    sds::bootstrap(
                        admin,
                        "bench",
                        &[filtered_listener("ingress", port, hcm, filters)],
                        &[
                            static_cluster("upstream", upstream.addr, false),
                            generated(&both, "cluster"),
                            ecds("cluster"),
                        ],
                    ),
                    *expect,
                ),
                None => (
                    ext_authz_proxy_via(admin, port, upstream.addr, AuthzVia::EnvoyTcp(helper.listen)),
                    Expect::Id,
                ),
            };
            let envoy = Envoy::start(&format!("envoy-{i}"), dir, &yaml);
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let auth = format!("Bearer {token}");
            if *name == ECDS_ROW {
                // Refused by the deny-all default until the bridge's first push.
                wait_until("the ECDS config in Envoy", Duration::from_secs(10), || {
                    request(addr, "GET", "/", &[("authorization", &auth)])
                        .is_some_and(|r| r.status == 200)
                });
            }
            let r = request(addr, "GET", "/", &[("authorization", &auth)]).unwrap();
            assert_eq!(r.status, 200, "{name}: {r:?}");
            if expect != Expect::Nothing {
                assert_eq!(
                    r.body.contains(CLIENT),
                    expect == Expect::Id,
                    "{name}: x-spiffe-id: {}",
                    r.body
                );
                let denied = request(addr, "GET", "/", &[]).unwrap();
                assert_eq!(denied.status, 401, "{name} without a token");
            }
            envoys.push((envoy, addr));
        }
        let bearer = format!("Bearer {token}");
        let headers = [("Authorization", bearer.as_str())];
        let validator_row = names.len() - 1;
        let serving_pids = |i: usize| -> Vec<u32> {
            let mut pids = vec![envoys[i].0.proc.pid()];
            if i == validator_row {
                pids.push(helper.proc.pid());
            }
            pids
        };
        for connections in [1u32, 16] {
            let rows: Vec<usize> = (0..names.len())
                .filter(|&i| connections == 1 || at16[i])
                .collect();
            println!(
                "== wrk -t1 -c{connections}, {ROUNDS} alternating rounds of {SECONDS}s, same token; medians of rounds"
            );
            let mut runs: Vec<Vec<Wrk>> = rows.iter().map(|_| Vec::new()).collect();
            // CPU time per request of the processes serving a row (Envoy, plus the validator
            // for its row): unlike latency, barely moved by other load on the machine.
            let mut ticks = vec![0u64; rows.len()];
            for _ in 0..ROUNDS {
                for ((run, cpu), &i) in runs.iter_mut().zip(&mut ticks).zip(&rows) {
                    let pids = serving_pids(i);
                    let before: u64 = pids.iter().map(|&p| cpu_ticks(p)).sum();
                    run.push(wrk::run_with(envoys[i].1, "/bench", &headers, connections, SECONDS));
                    *cpu += pids.iter().map(|&p| cpu_ticks(p)).sum::<u64>() - before;
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
            // Ticks are 10 ms; requests from wrk's rate over the run.
            let cpu_per_request: Vec<f64> = runs
                .iter()
                .zip(&ticks)
                .map(|(r, &t)| {
                    let requests: f64 = r.iter().map(|w| w.rps * f64::from(SECONDS)).sum();
                    t as f64 * 0.01 / requests
                })
                .collect();
            let (base50, _, base_rps) = stats[0];
            let base_cpu = cpu_per_request[0];
            for ((&i, (p50, p99, rps)), cpu) in rows.iter().zip(&stats).zip(&cpu_per_request) {
                println!(
                    "   {:<44} p50 {:>7}  p99 {:>8}  {rps:>7.0} req/s  added p50 {:>7}  throughput {:.2}x  CPU/req {:>6} (+{:>6})",
                    names[i],
                    secs_as_us(*p50),
                    secs_as_us(*p99),
                    secs_as_us(p50 - base50),
                    rps / base_rps,
                    secs_as_us(*cpu),
                    secs_as_us(cpu - base_cpu),
                );
            }
        }
        let shipped_row = names.iter().position(|n| n.ends_with("shipped config")).unwrap();
        let allowed = envoys[shipped_row]
            .0
            .stat("http.ingress.jwt_authn.allowed")
            .unwrap_or(0);
        let fetches = envoys[shipped_row]
            .0
            .stat("http.ingress.jwt_authn.jwks_fetch_success")
            .unwrap_or(0);
        println!("== jwt_authn: {allowed} tokens allowed, {fetches} JWKS fetches from the bridge");
        let ecds_row = names.iter().position(|n| *n == ECDS_ROW).unwrap();
        let prefix = "http.ingress.jwt_authn";
        let ecds_envoy = &envoys[ecds_row].0;
        println!(
            "== ECDS: {} tokens allowed, {} verified-token cache hits; {} config pushes applied, {} rejected",
            ecds_envoy.stat(&format!("{prefix}.allowed")).unwrap_or(0),
            ecds_envoy.stat(&format!("{prefix}.jwt_cache_hit")).unwrap_or(0),
            ecds_envoy
                .stat("extension_config_discovery.http_filter.spiffe-jwt-authn.config_reload")
                .unwrap_or(0),
            ecds_envoy
                .stat("extension_config_discovery.http_filter.spiffe-jwt-authn.update_rejected")
                .unwrap_or(0),
        );
    })
    .await
    .unwrap();
    agent.shutdown().await;
}

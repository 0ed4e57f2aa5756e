//! `cargo xtask bench jwt-authn`: the cost of checking a JWT-SVID and authorizing its SPIFFE ID
//! inside Envoy (issue 17), against Envoy alone and against the ext_authz validator, in the same
//! wrk run with the same bearer token:
//!
//! - Envoy alone → echo upstream (the baseline);
//! - Envoy + what `sds-bridge jwt-authn-config` prints: header scrub, `jwt_authn` with one
//!   provider per trust domain over the bridge's JWKS, RBAC on the `sub`;
//! - Envoy + jwt-auth-helper in `jwt_svid_validator` mode as ext_authz (`envoy_grpc`, TCP).
//!
//! Rounds alternate between setups so drift on a shared machine hits all alike; medians of
//! rounds, 1 connection (latency without queueing) and 16 (saturation of 2 cores). The JWT
//! signing algorithm is the first argument (`es256`, the default, or `rs256`): Envoy verifies
//! the signature on every request, and ECDSA verification costs several times RSA's.
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
    AuthzVia, EchoServer, Envoy, ext_authz_proxy_via, plain_proxy, request, static_cluster,
};
use suite_tests::sds::{self, SdsBridge, filtered_listener, jwt_authn_config};
use suite_tests::sidecars::{JwtHelper, claims};
use suite_tests::stats::secs_as_us;
use suite_tests::wrk::{self, Wrk};
use suite_tests::{free_port, wait_until};
use workload_client::Endpoint;
use workload_client::spiffe::TrustDomain;

const ROUNDS: usize = 3;
const SECONDS: u32 = 4;
const AUD: &str = "spiffe://example.org/ns/default/sa/backend";
const CLIENT: &str = "spiffe://example.org/ns/default/sa/client";

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
        let mut bridge = SdsBridge::start(
            "sds-bridge",
            dir,
            &endpoint,
            &["--jwks-listen", &jwks.to_string(), "--log-format", "json"],
        );
        bridge.wait_ready(Duration::from_secs(10));
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
        let generated = |part: &str| {
            jwt_authn_config(&[
                "--trust-domain",
                "example.org",
                "--trust-domain",
                "partner.org",
                "--audience",
                AUD,
                "--jwks-address",
                &jwks.to_string(),
                "--allow-spiffe-id",
                CLIENT,
                "--part",
                part,
            ])
        };
        let upstream = EchoServer::start();
        let names = [
            "Envoy alone",
            "Envoy + jwt_authn + RBAC (bridge JWKS)",
            "Envoy + validator ext_authz (envoy_grpc)",
        ];
        let mut envoys = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let (admin, port) = (free_port(), free_port());
            let yaml = match i {
                0 => plain_proxy(admin, port, upstream.addr),
                1 => sds::bootstrap(
                    admin,
                    "bench",
                    &[filtered_listener("ingress", port, &generated("filters"))],
                    &[
                        static_cluster("upstream", upstream.addr, false),
                        generated("cluster"),
                    ],
                ),
                _ => ext_authz_proxy_via(admin, port, upstream.addr, AuthzVia::EnvoyTcp(helper.listen)),
            };
            let envoy = Envoy::start(&format!("envoy-{i}"), dir, &yaml);
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let auth = format!("Bearer {token}");
            let r = request(addr, "GET", "/", &[("authorization", &auth)]).unwrap();
            assert_eq!(r.status, 200, "{name}: {r:?}");
            if i > 0 {
                assert!(r.body.contains(CLIENT), "{name}: no x-spiffe-id: {}", r.body);
                let denied = request(addr, "GET", "/", &[]).unwrap();
                assert_eq!(denied.status, 401, "{name} without a token");
            }
            envoys.push((envoy, addr));
        }
        let bearer = format!("Bearer {token}");
        let headers = [("Authorization", bearer.as_str())];
        for connections in [1u32, 16] {
            println!(
                "== wrk -t1 -c{connections}, {ROUNDS} alternating rounds of {SECONDS}s, same token; medians of rounds"
            );
            let mut runs: Vec<Vec<Wrk>> = names.iter().map(|_| Vec::new()).collect();
            for _ in 0..ROUNDS {
                for (i, (_, addr)) in envoys.iter().enumerate() {
                    runs[i].push(wrk::run_with(*addr, "/bench", &headers, connections, SECONDS));
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
            for (name, (p50, p99, rps)) in names.iter().zip(&stats) {
                println!(
                    "   {name:<42} p50 {:>7}  p99 {:>8}  {rps:>7.0} req/s  added p50 {:>7}  throughput {:.2}x",
                    secs_as_us(*p50),
                    secs_as_us(*p99),
                    secs_as_us(p50 - base50),
                    rps / base_rps
                );
            }
        }
        let allowed = envoys[1]
            .0
            .stat("http.ingress.jwt_authn.allowed")
            .unwrap_or(0);
        let fetches = envoys[1]
            .0
            .stat("http.ingress.jwt_authn.jwks_fetch_success")
            .unwrap_or(0);
        println!("== jwt_authn: {allowed} tokens allowed, {fetches} JWKS fetches from the bridge");
    })
    .await
    .unwrap();
    agent.shutdown().await;
}

//! `jwt_authn` configured over ECDS by sds-bridge (`--ecds-audience`, `--ecds-trust-domain`),
//! with real Envoy 1.40 running exactly what `sds-bridge jwt-authn-config --ecds --part
//! bootstrap` prints: keys inline, the verified-token cache on, and every key change pushed.
//!
//! What is checked: the deny-all default until the first push; cross-trust-domain forgery and
//! the usual bad tokens refused; revocation (a retired JWT key, a dropped federation) of tokens
//! Envoy has already cached, measured over many runs; and a rotation under load refusing
//! nothing.
//!
//! The agent runs in-process so tests can sign tokens with its keys and revoke them; the bridge
//! and Envoy are real processes. Test bodies run on blocking threads (processes, blocking HTTP)
//! and drive the agent through the runtime's handle.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers outside #[test] fns

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use dev_agent::{Agent, Config as AgentConfig, RunningAgent};
use suite_tests::envoy::{EchoServer, Envoy, Response, request};
use suite_tests::sds::{SdsBridge, jwt_authn_config};
use suite_tests::sidecars::{RotationLoad, claims, get_with_token, refused_tokens};
use suite_tests::{free_port, wait_until};
use workload_client::Endpoint;
use workload_client::spiffe::TrustDomain;

const AUD: &str = "spiffe://example.org/ns/default/sa/backend";
const CLIENT: &str = "spiffe://example.org/ns/default/sa/client";
const PARTNER: &str = "spiffe://partner.org/ns/default/sa/client";
/// Revocation runs per kind: each one a retired key or a dropped federation.
const RUNS: usize = 20;
/// The bound every revocation must meet: the push itself takes milliseconds; this leaves room
/// for a loaded 2-core machine without ever depending on a poll interval.
const REVOCATION_BOUND: Duration = Duration::from_secs(2);

fn td(name: &str) -> TrustDomain {
    TrustDomain::new(name).unwrap()
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// `partner<i>.org`, the extra federated trust domains the federation-drop runs remove one by
/// one (the dev agent can drop a federation but not add one back).
fn partner_td(i: usize) -> String {
    format!("partner{i}.org")
}

/// An in-process agent for example.org federated with partner.org and `extra` more partners.
async fn agent(dir: &Path, extra: usize) -> Arc<RunningAgent> {
    let mut config = AgentConfig::new(Endpoint::Unix(dir.join("agent.sock")), td("example.org"));
    config.federate_with = std::iter::once("partner.org".to_owned())
        .chain((0..extra).map(partner_td))
        .map(|t| td(&t))
        .collect();
    Arc::new(Agent::start(config).await.unwrap())
}

/// The bridge serving SDS and the ECDS config for every trust domain the agent knows, and an
/// Envoy running the printed ECDS bootstrap in front of an echo app; the bridge is ready
/// (Envoy ACKed the config).
struct EcdsPath {
    bridge: SdsBridge,
    upstream: EchoServer,
    envoy: Envoy,
    port: u16,
    /// Envoy's bootstrap, to start it again.
    yaml: String,
}

/// The printed bootstrap for a bridge at `socket`: Envoy listens on the returned port.
fn printed_bootstrap(socket: &Path, upstream: SocketAddr) -> (String, u16) {
    printed_bootstrap_with(socket, upstream, &[])
}

fn printed_bootstrap_with(socket: &Path, upstream: SocketAddr, extra: &[&str]) -> (String, u16) {
    let port = free_port();
    let mut args = vec![
        "--ecds".to_owned(),
        "--bridge-address".to_owned(),
        format!("unix://{}", socket.display()),
        "--part".to_owned(),
        "bootstrap".to_owned(),
        "--listen".to_owned(),
        addr(port).to_string(),
        "--upstream".to_owned(),
        upstream.to_string(),
        "--envoy-admin".to_owned(),
        addr(free_port()).to_string(),
    ];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    (jwt_authn_config(&args), port)
}

fn start_bridge(dir: &Path, agent: &str, tds: &[String]) -> SdsBridge {
    SdsBridge::start_with_env(
        "sds-bridge",
        dir,
        agent,
        &["--ecds-audience", AUD],
        &[("SDS_BRIDGE_ECDS_TRUST_DOMAINS", &tds.join(","))],
    )
}

fn ecds_path(dir: &Path, agent: &str, tds: &[String]) -> EcdsPath {
    let mut bridge = start_bridge(dir, agent, tds);
    // Kubernetes' order for native sidecars: the bridge's startup probe passes before the
    // proxy starts, so it must not wait for the proxy's ACK; readiness does.
    bridge.wait_probe("/startupz", Duration::from_secs(10));
    assert_ne!(
        bridge.readyz(),
        200,
        "ready before any Envoy applied the config"
    );
    let upstream = EchoServer::start();
    let (yaml, port) = printed_bootstrap(&bridge.socket, upstream.addr);
    let envoy = Envoy::start("inbound", dir, &yaml);
    // Ready means an Envoy applied the config.
    bridge.wait_ready(Duration::from_secs(10));
    EcdsPath {
        bridge,
        upstream,
        envoy,
        port,
        yaml,
    }
}

/// Runs `body` on a blocking thread with a temp dir, the agent (with `extra` more partners)
/// and its endpoint, then shuts the agent down.
async fn with_agent(
    extra: usize,
    body: impl FnOnce(&Path, &str, &Arc<RunningAgent>) + Send + 'static,
) {
    let dir = tempfile::tempdir().unwrap();
    let agent = agent(dir.path(), extra).await;
    let (path, endpoint, shared) = (
        dir.path().to_path_buf(),
        agent.endpoint().to_string(),
        agent.clone(),
    );
    tokio::task::spawn_blocking(move || body(&path, &endpoint, &shared))
        .await
        .unwrap();
    Arc::into_inner(agent).unwrap().shutdown().await;
}

/// Every trust domain the agent trusts, own first.
fn all_tds(extra: usize) -> Vec<String> {
    ["example.org".to_owned(), "partner.org".to_owned()]
        .into_iter()
        .chain((0..extra).map(partner_td))
        .collect()
}

fn assert_invalid_token(r: &Response, what: &str) {
    assert_eq!(r.status, 401, "{what}: {r:?}");
    assert!(
        r.header("www-authenticate")
            .is_some_and(|h| h.ends_with("error=\"invalid_token\"")),
        "{what}: {r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ecds_jwt_authn_refuses_until_configured_then_accepts_good_svids_and_rejects_bad_ones() {
    with_agent(0, |dir, agent_endpoint, agent| {
        let own = agent.authority().clone();
        let partner = agent.federated_authority(&td("partner.org")).unwrap();
        let fresh = own.sign_claims(&claims(CLIENT, AUD, 300)).unwrap();
        let partner_fresh = partner.sign_claims(&claims(PARTNER, AUD, 300)).unwrap();

        // Envoy first, with no bridge yet: its listener waits for the first config, so Envoy
        // is not live and takes no request.
        let socket = dir.join("sds-bridge.sock");
        let upstream = EchoServer::start();
        let (yaml, port) = printed_bootstrap(&socket, upstream.addr);
        let mut envoy = Envoy::spawn("inbound", dir, &yaml);
        let live = |envoy: &Envoy| {
            request(envoy.admin, "GET", "/ready", &[]).is_some_and(|r| r.status == 200)
        };
        assert!(!live(&envoy), "live before its jwt_authn config");
        assert!(
            request(addr(port), "GET", "/", &[]).is_none(),
            "the listener takes requests before its jwt_authn config"
        );

        // If the bridge stays away past the config source's initial_fetch_timeout, Envoy goes
        // on with the printed deny-all default (1 s here instead of Envoy's 15 s).
        let (impatient, impatient_port) = printed_bootstrap(&socket, upstream.addr);
        let line = impatient
            .lines()
            .find(|l| l.trim() == "resource_api_version: V3")
            .unwrap();
        let indent = &line[..line.len() - line.trim_start().len()];
        let impatient = impatient.replace(
            &format!("{line}\n"),
            &format!("{line}\n{indent}initial_fetch_timeout: 1s\n"),
        );
        assert!(impatient.contains("initial_fetch_timeout"));
        let impatient_envoy = Envoy::start("impatient", dir, &impatient);
        assert_invalid_token(
            &get_with_token(impatient_port, &fresh),
            "the default config after the initial fetch timed out",
        );

        let mut bridge = start_bridge(dir, agent_endpoint, &all_tds(0));
        bridge.wait_probe("/startupz", Duration::from_secs(10));
        envoy.wait_live(Duration::from_secs(10));
        bridge.wait_ready(Duration::from_secs(10));
        // The late Envoy gets the pushed config too.
        wait_until(
            "the first ECDS config in the impatient Envoy",
            Duration::from_secs(10),
            || get_with_token(impatient_port, &fresh).status == 200,
        );
        drop(impatient_envoy);
        wait_until(
            "the first ECDS config in Envoy",
            Duration::from_secs(5),
            || get_with_token(port, &fresh).status == 200,
        );

        let bad = refused_tokens(&own, &partner, CLIENT, AUD, &fresh);
        let before = upstream.requests();
        for (what, token, sub) in [
            ("own", &fresh, CLIENT),
            ("partner", &partner_fresh, PARTNER),
        ] {
            let r = get_with_token(port, token);
            assert_eq!(r.status, 200, "{what}: {r:?}");
            let seen = r.json();
            assert_eq!(
                seen["headers"]["x-spiffe-id"], sub,
                "{what}: the real ID only"
            );
            assert!(seen["headers"].get("authorization").is_none(), "{what}");
        }
        for (what, token) in &bad {
            let r = get_with_token(port, token);
            assert_invalid_token(&r, what);
            assert!(
                !r.body.contains(token.as_str()),
                "{what}: body echoes the token"
            );
        }
        assert_eq!(
            request(addr(port), "GET", "/", &[]).unwrap().status,
            401,
            "no token"
        );
        assert_eq!(
            upstream.requests(),
            before + 2,
            "only the good tokens got through"
        );

        let reloads = envoy
            .stat("extension_config_discovery.http_filter.spiffe-jwt-authn.config_reload")
            .unwrap_or(0);
        assert!(reloads >= 1, "{}", envoy.stats_matching("spiffe-jwt-authn"));
        assert_eq!(
            envoy.stat("extension_config_discovery.http_filter.spiffe-jwt-authn.update_rejected"),
            Some(0)
        );
        assert!(bridge.metric("sds_bridge_ecds_acks_total") >= 1.0);
        assert_eq!(bridge.metric("sds_bridge_ecds_nacks_total"), 0.0);
        // Nothing about the filter or its config (the stream to the bridge, down at first,
        // and the bootstrap's missing connection limit are warned about too).
        let filter_warnings: Vec<String> = envoy
            .warnings()
            .into_iter()
            .filter(|w| w.contains("jwt") || w.contains("rejected"))
            .collect();
        assert!(filter_warnings.is_empty(), "{filter_warnings:?}");
    })
    .await;
}

/// min / median / p90 / max of `samples`, for the log.
fn distribution(samples: &mut [Duration]) -> String {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    format!(
        "n={} min={:?} median={:?} p90={:?} max={:?}",
        samples.len(),
        samples[0],
        at(0.5),
        at(0.9),
        samples[samples.len() - 1]
    )
}

/// Polls `revoked` through Envoy until it gets 401, checking each time that `good` still gets
/// 200; the time from `start` to that 401.
fn time_until_refused(port: u16, start: Instant, revoked: &str, good: &[&str]) -> Duration {
    loop {
        let r = get_with_token(port, revoked);
        if r.status == 401 {
            return start.elapsed();
        }
        assert_eq!(r.status, 200, "{r:?}");
        for token in good {
            assert_eq!(
                get_with_token(port, token).status,
                200,
                "a good token meanwhile"
            );
        }
        assert!(
            start.elapsed() < REVOCATION_BOUND * 5,
            "still accepted after {:?}",
            start.elapsed()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_keys_and_dropped_federations_refuse_cached_tokens_within_the_push() {
    with_agent(RUNS, |dir, endpoint, agent| {
        let rt = tokio::runtime::Handle::current();
        let path = ecds_path(dir, endpoint, &all_tds(RUNS));
        let port = path.port;
        let partner = agent.federated_authority(&td("partner.org")).unwrap();
        let partner_token = partner.sign_claims(&claims(PARTNER, AUD, 600)).unwrap();

        let mut retired = Vec::new();
        for run in 0..RUNS {
            let own = agent.authority();
            let old = own.sign_claims(&claims(CLIENT, AUD, 600)).unwrap();
            // Accepted once, so Envoy's token cache holds it.
            assert_eq!(get_with_token(port, &old).status, 200, "run {run}: before");
            assert_eq!(get_with_token(port, &old).status, 200, "run {run}: cached");
            let start = Instant::now();
            rt.block_on(agent.retire_jwt_key_now()).unwrap();
            let current = own.sign_claims(&claims(CLIENT, AUD, 600)).unwrap();
            retired.push(time_until_refused(
                port,
                start,
                &old,
                &[&partner_token, &current],
            ));
        }

        let mut dropped = Vec::new();
        let own_token = agent
            .authority()
            .sign_claims(&claims(CLIENT, AUD, 600))
            .unwrap();
        for run in 0..RUNS {
            let partner_td = partner_td(run);
            let authority = agent.federated_authority(&td(&partner_td)).unwrap();
            let token = authority
                .sign_claims(&claims(&format!("spiffe://{partner_td}/client"), AUD, 600))
                .unwrap();
            assert_eq!(
                get_with_token(port, &token).status,
                200,
                "run {run}: before"
            );
            assert_eq!(
                get_with_token(port, &token).status,
                200,
                "run {run}: cached"
            );
            let start = Instant::now();
            assert!(
                rt.block_on(agent.drop_federation(&td(&partner_td)))
                    .unwrap()
            );
            dropped.push(time_until_refused(
                port,
                start,
                &token,
                &[&own_token, &partner_token],
            ));
        }

        eprintln!("JWT key retired → 401: {}", distribution(&mut retired));
        eprintln!("federation dropped → 401: {}", distribution(&mut dropped));
        for (what, samples) in [("key retired", &retired), ("federation dropped", &dropped)] {
            let max = samples.iter().max().unwrap();
            assert!(*max <= REVOCATION_BOUND, "{what}: {max:?}");
        }
        // The tokens were refused although Envoy's verified-token cache held them.
        let hits = path.envoy.stat("http.ingress.jwt_authn.jwt_cache_hit");
        assert!(
            hits.is_some_and(|h| h >= 2 * RUNS as u64),
            "{}",
            path.envoy.stats_matching("jwt_authn")
        );
        let nacks = path.bridge.metric("sds_bridge_ecds_nacks_total");
        assert_eq!(nacks, 0.0, "every update applied");
        assert_eq!(
            path.envoy
                .stat("extension_config_discovery.http_filter.spiffe-jwt-authn.update_rejected"),
            Some(0)
        );
        assert!(path.upstream.requests() > 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_key_rotation_under_load_refuses_no_request() {
    with_agent(0, |dir, endpoint, agent| {
        let rt = tokio::runtime::Handle::current();
        let path = ecds_path(dir, endpoint, &all_tds(0));
        let port = path.port;
        let load = RotationLoad::default();
        let _stop_on_panic = load.stop_on_drop();
        let clients = load.clients(agent, port, CLIENT, AUD, 3);
        let acks = || path.bridge.metric("sds_bridge_ecds_acks_total");
        for _ in 0..5 {
            let (seen, before) = (acks(), load.ok());
            rt.block_on(agent.rotate_jwt_key()).unwrap();
            // The new config applied, and traffic ran on it.
            wait_until(
                "the rotated config ACKed and traffic",
                Duration::from_secs(10),
                || acks() > seen && load.ok() > before + 50,
            );
        }
        load.stop.store(true, Ordering::Relaxed);
        for c in clients {
            c.join().unwrap();
        }
        let (ok, failed) = (load.ok(), load.failed());
        eprintln!("rotation under load: {ok} requests accepted, {failed} refused, 5 rotations");
        assert_eq!(agent.jwt_key_rotations(), 5);
        assert_eq!(failed, 0, "no request refused");
        assert!(ok > 250, "load ran: {ok}");
        assert_eq!(path.bridge.metric("sds_bridge_ecds_nacks_total"), 0.0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_bridge_or_envoy_refuses_no_request_once_envoy_is_live() {
    with_agent(0, |dir, endpoint, agent| {
        let rt = tokio::runtime::Handle::current();
        let mut path = ecds_path(dir, endpoint, &all_tds(0));
        let load = RotationLoad::default();
        let _stop_on_panic = load.stop_on_drop();
        let clients = load.clients(agent, path.port, CLIENT, AUD, 2);
        let more_ok = |n: u64, what: &str| {
            let before = load.ok();
            wait_until(what, Duration::from_secs(10), || load.ok() > before + n);
        };
        more_ok(50, "load on the first config");

        // The bridge stops: Envoy keeps checking tokens with the config it holds.
        assert!(
            path.bridge.proc.terminate(Duration::from_secs(10)),
            "the bridge exits cleanly on SIGTERM"
        );
        more_ok(200, "requests with the bridge gone");
        // A new bridge on the same socket: Envoy reconnects (its retry backoff), subscribes
        // again, and applies what the new bridge pushes next.
        path.bridge = start_bridge(dir, endpoint, &all_tds(0));
        path.bridge.wait_ready(Duration::from_secs(30));
        let acks = path.bridge.metric("sds_bridge_ecds_acks_total");
        rt.block_on(agent.rotate_jwt_key()).unwrap();
        wait_until(
            "the rotation pushed by the new bridge",
            Duration::from_secs(10),
            || path.bridge.metric("sds_bridge_ecds_acks_total") > acks,
        );
        more_ok(50, "load on the new bridge's config");
        load.stop.store(true, Ordering::Relaxed);
        for c in clients {
            c.join().unwrap();
        }
        let (ok, failed) = (load.ok(), load.failed());
        eprintln!("bridge restart under load: {ok} requests accepted, {failed} refused");
        assert_eq!(failed, 0, "no request refused across the bridge's restart");

        // Envoy restarts: from the moment it is live, every token is checked with the pushed
        // keys (none meets the deny-all default), and the bridge's stream serves it.
        let token = agent
            .authority()
            .sign_claims(&claims(CLIENT, AUD, 300))
            .unwrap();
        path.envoy.proc.terminate(Duration::from_secs(10));
        let pushes = path.bridge.metric("sds_bridge_ecds_pushes_total");
        let envoy = Envoy::start("inbound-again", dir, &path.yaml);
        let refused = (0..200)
            .filter(|_| get_with_token(path.port, &token).status != 200)
            .count();
        assert_eq!(refused, 0, "requests refused by a live, restarted Envoy");
        assert!(path.bridge.metric("sds_bridge_ecds_pushes_total") > pushes);
        assert_eq!(
            envoy.stat("extension_config_discovery.http_filter.spiffe-jwt-authn.update_rejected"),
            Some(0)
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_envoy_rejects_is_counted_once_not_resent_and_keeps_the_bridge_unready() {
    with_agent(0, |dir, endpoint, agent| {
        let rt = tokio::runtime::Handle::current();
        let mut bridge = start_bridge(dir, endpoint, &all_tds(0));
        let upstream = EchoServer::start();
        let (printed, _port) = printed_bootstrap(&bridge.socket, upstream.addr);
        // The same filter, but accepting only RBAC configs and with no default: Envoy must
        // reject (NACK) every jwt_authn config the bridge sends.
        let start = printed.find("              default_config:").unwrap();
        let end = printed.find("              type_urls:").unwrap();
        let rejecting = format!("{}{}", &printed[..start], &printed[end..]).replace(
            "type_urls: [type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication]",
            "type_urls: [type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC]",
        );
        // Its listener waits for a config it will never accept: do not wait for LIVE.
        let envoy = Envoy::spawn("rejecting", dir, &rejecting);
        let rejected = || {
            envoy
                .stat("extension_config_discovery.http_filter.spiffe-jwt-authn.update_rejected")
                .unwrap_or(0)
        };
        wait_until("Envoy rejects the config", Duration::from_secs(10), || {
            rejected() >= 1
        });
        wait_until("the bridge counts the NACK", Duration::from_secs(5), || {
            bridge.metric("sds_bridge_ecds_nacks_total") >= 1.0
        });
        assert_eq!(bridge.metric("sds_bridge_ecds_pushes_total"), 1.0, "no push loop");
        assert_eq!(bridge.metric("sds_bridge_ecds_acks_total"), 0.0);
        assert_ne!(bridge.readyz(), 200, "no Envoy applied the config");
        assert!(
            bridge.proc.log().contains("Envoy rejected the jwt_authn config (NACK)"),
            "the NACK is logged"
        );

        // The next change is sent (and rejected) once more.
        rt.block_on(agent.rotate_jwt_key()).unwrap();
        wait_until("the next version rejected", Duration::from_secs(10), || {
            bridge.metric("sds_bridge_ecds_nacks_total") >= 2.0
        });
        assert_eq!(bridge.metric("sds_bridge_ecds_pushes_total"), 2.0);
        assert_eq!(rejected(), 2);
        bridge.proc.assert_running();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_on_the_jwt_sub_works_behind_the_ecds_filter() {
    with_agent(0, |dir, endpoint, agent| {
        let own = agent.authority().clone();
        let mut bridge = start_bridge(dir, endpoint, &all_tds(0));
        let upstream = EchoServer::start();
        // RBAC reads jwt_authn's payload metadata, whatever the ECDS filter is named.
        let (yaml, port) = printed_bootstrap_with(
            &bridge.socket,
            upstream.addr,
            &["--allow-spiffe-id", CLIENT],
        );
        let envoy = Envoy::start("rbac", dir, &yaml);
        bridge.wait_ready(Duration::from_secs(10));
        let allowed = own.sign_claims(&claims(CLIENT, AUD, 300)).unwrap();
        let other = own
            .sign_claims(&claims(
                "spiffe://example.org/ns/default/sa/other",
                AUD,
                300,
            ))
            .unwrap();
        assert_eq!(get_with_token(port, &allowed).status, 200);
        let r = get_with_token(port, &other);
        assert_eq!(
            (r.status, r.body.as_str()),
            (403, "RBAC: access denied"),
            "{r:?}"
        );
        assert_eq!(envoy.stat("http.ingress.rbac.denied"), Some(1));
    })
    .await;
}

/// The `jwt_authn` configs an Envoy holds, from its config dump: the static listeners' and the
/// ECDS filters', each as Envoy itself renders it.
fn jwt_authn_configs(envoy: &Envoy) -> Vec<serde_json::Value> {
    let dump = request(envoy.admin, "GET", "/config_dump", &[]).unwrap();
    let dump: serde_json::Value = serde_json::from_str(&dump.body).unwrap();
    let mut out = Vec::new();
    for config in dump["configs"].as_array().unwrap() {
        for listener in config["static_listeners"].as_array().into_iter().flatten() {
            let hcm = &listener["listener"]["filter_chains"][0]["filters"][0]["typed_config"];
            for filter in hcm["http_filters"].as_array().into_iter().flatten() {
                if filter["typed_config"]["@type"]
                    .as_str()
                    .is_some_and(|t| t.ends_with("JwtAuthentication"))
                {
                    out.push(filter["typed_config"].clone());
                }
            }
        }
        for ecds in config["ecds_filters"].as_array().into_iter().flatten() {
            out.push(ecds["ecds_filter"]["typed_config"].clone());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pushed_config_carries_the_jwks_modes_rules_with_only_the_key_source_and_cache_changed()
{
    with_agent(0, |dir, endpoint, _agent| {
        let tds = all_tds(0);
        let ecds = ecds_path(dir, endpoint, &tds);
        // The JWKS mode's printed bootstrap for the same trust domains and audience (its JWKS
        // address need not answer: only the configuration is compared).
        let mut args = vec![
            "--part".to_owned(),
            "bootstrap".to_owned(),
            "--audience".to_owned(),
            AUD.to_owned(),
            "--listen".to_owned(),
            addr(free_port()).to_string(),
            "--envoy-admin".to_owned(),
            addr(free_port()).to_string(),
        ];
        for td in &tds {
            args.extend(["--trust-domain".to_owned(), td.clone()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let jwks = Envoy::start("jwks-mode", dir, &jwt_authn_config(&args));

        let pushed = jwt_authn_configs(&ecds.envoy);
        let printed = jwt_authn_configs(&jwks);
        assert_eq!(
            (pushed.len(), printed.len()),
            (1, 1),
            "{pushed:?} {printed:?}"
        );
        let (mut pushed, mut printed) = (pushed[0].clone(), printed[0].clone());
        for (what, config, source) in [
            ("pushed", &mut pushed, "local_jwks"),
            ("printed", &mut printed, "remote_jwks"),
        ] {
            let providers = config["providers"].as_object_mut().unwrap();
            assert_eq!(providers.len(), tds.len(), "{what}");
            for (name, provider) in providers.iter_mut() {
                let provider = provider.as_object_mut().unwrap();
                assert!(provider.remove(source).is_some(), "{what} {name}: {source}");
                // The cache is on only where a key change brings a new config.
                assert_eq!(
                    provider.remove("jwt_cache_config").is_some(),
                    source == "local_jwks",
                    "{what} {name}"
                );
            }
        }
        assert_eq!(pushed, printed, "the same rules in both modes");
    })
    .await;
}

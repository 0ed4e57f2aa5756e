//! Authorization by SPIFFE ID inside Envoy 1.40, with no RPC per request:
//! `jwt_authn` checks JWT-SVIDs against sds-bridge's per-trust-domain JWKS endpoint, configured
//! by `sds-bridge jwt-authn-config`; RBAC allows SPIFFE IDs from the JWT `sub` and from the mTLS
//! peer's URI SAN (certificates from sds-bridge); and revocation at the agent (a federated trust
//! domain dropped) reaches Envoy within a bounded, measured time.
//!
//! The agent runs in-process so the tests can sign tokens and issue certificates with its keys
//! (and with keys it never published); the sidecars and Envoy are real processes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers outside #[test] fns

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use dev_agent::{Agent, Authority, Config as AgentConfig, JwtAlg, RunningAgent};
use suite_tests::envoy::{EchoServer, Envoy, Response, request, static_cluster};
use suite_tests::sds::{
    SdsBridge, Shape, bootstrap, common_tls_context, filtered_listener, http_listener,
    inline_tls_context, jwt_authn_config, mtls_listener_with_filters, sds_cluster, tls_cluster,
};
use suite_tests::sidecars::{RotationLoad, claims, get_with_token, refused_tokens};
use suite_tests::{free_port, wait_until};
use workload_client::Endpoint;
use workload_client::spiffe::{SpiffeId, TrustDomain};

const AUD: &str = "spiffe://example.org/ns/default/sa/backend";
const CLIENT: &str = "spiffe://example.org/ns/default/sa/client";
const OTHER: &str = "spiffe://example.org/ns/default/sa/other";
const PARTNER: &str = "spiffe://partner.org/ns/default/sa/client";

fn td(name: &str) -> TrustDomain {
    TrustDomain::new(name).unwrap()
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// jwt_authn's refusal of a bad token as Envoy sends it: 401, `www-authenticate: Bearer
/// realm="<url>", error="invalid_token"`, and the reason as the body.
fn assert_invalid_token(r: &Response, what: &str) {
    assert_eq!(r.status, 401, "{what}: {r:?}");
    assert!(
        r.header("www-authenticate")
            .is_some_and(|h| h.starts_with("Bearer realm=\"http://")
                && h.ends_with(", error=\"invalid_token\"")),
        "{what}: {r:?}"
    );
    assert!(!r.body.is_empty(), "{what}: the reason: {r:?}");
}

/// RBAC's refusal of an authenticated SPIFFE ID as Envoy sends it: 403, `RBAC: access denied`,
/// no challenge (the credential was fine).
fn assert_rbac_denied(r: &Response, what: &str) {
    assert_eq!(
        (r.status, r.body.as_str()),
        (403, "RBAC: access denied"),
        "{what}: {r:?}"
    );
    assert_eq!(r.header("www-authenticate"), None, "{what}: {r:?}");
}

/// An in-process agent for example.org federated with partner.org (ES256).
async fn agent(dir: &Path) -> RunningAgent {
    let mut config = AgentConfig::new(Endpoint::Unix(dir.join("agent.sock")), td("example.org"));
    config.federate_with = vec![td("partner.org")];
    Agent::start(config).await.unwrap()
}

/// A bridge serving SDS and the JWKS endpoint, ready (it holds an SVID and JWT bundles).
fn bridge(dir: &Path, agent: &str) -> (SdsBridge, SocketAddr) {
    let jwks = addr(free_port());
    let mut bridge = SdsBridge::start(
        "sds-bridge",
        dir,
        agent,
        &["--jwks-listen", &jwks.to_string()],
    );
    bridge.wait_ready(Duration::from_secs(10));
    // With --jwks-listen, /readyz waits for the first JWT bundle set: ready means served.
    let r = request(jwks, "GET", "/jwks/example.org", &[]).unwrap();
    assert_eq!(r.status, 200, "JWKS served once ready: {r:?}");
    (bridge, jwks)
}

/// What `sds-bridge jwt-authn-config` prints for `tds` against `jwks` (plus `extra` flags), or
/// a hand-written stand-in.
struct Generated {
    /// Connection manager fields (`--part local-reply`).
    hcm: String,
    /// HTTP filters (`--part filters`).
    filters: String,
    /// Clusters they need (`--part cluster`).
    clusters: Vec<String>,
}

fn generated(tds: &[&str], jwks: SocketAddr, extra: &[&str]) -> Generated {
    let mut args: Vec<String> = vec!["--audience".into(), AUD.into()];
    for t in tds {
        args.extend(["--trust-domain".into(), (*t).into()]);
    }
    args.extend(["--jwks-address".into(), jwks.to_string()]);
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let with = |part: &str| {
        let mut a = args.clone();
        a.extend(["--part", part]);
        jwt_authn_config(&a)
    };
    Generated {
        hcm: with("local-reply"),
        filters: with("filters"),
        clusters: vec![with("cluster")],
    }
}

/// An Envoy whose one listener runs `config` in front of `upstream`.
fn jwt_envoy(name: &str, dir: &Path, config: &Generated, upstream: SocketAddr) -> (Envoy, u16) {
    let port = free_port();
    let mut all = vec![static_cluster("upstream", upstream, false)];
    all.extend(config.clusters.iter().cloned());
    let envoy = Envoy::start(
        name,
        dir,
        &bootstrap(
            free_port(),
            name,
            &[filtered_listener(
                "ingress",
                port,
                &config.hcm,
                &config.filters,
            )],
            &all,
        ),
    );
    (envoy, port)
}

/// The JWT path end to end: sds-bridge (SDS and JWKS) on the agent at `agent`, an echo
/// upstream, and Envoy (listener `ingress`) running what the generator prints for `tds`.
struct JwtPath {
    _bridge: SdsBridge,
    upstream: EchoServer,
    envoy: Envoy,
    port: u16,
}

fn jwt_path(dir: &Path, agent: &str, tds: &[&str], extra: &[&str]) -> JwtPath {
    let (bridge, jwks) = bridge(dir, agent);
    let upstream = EchoServer::start();
    let (envoy, port) = jwt_envoy("inbound", dir, &generated(tds, jwks, extra), upstream.addr);
    JwtPath {
        _bridge: bridge,
        upstream,
        envoy,
        port,
    }
}

/// Runs `body(dir, agent endpoint)` on a blocking thread: Envoy, the sidecars and blocking
/// requests must not stall the runtime that serves the in-process agent.
fn off_runtime<T: Send + 'static>(
    dir: &Path,
    agent: &RunningAgent,
    body: impl FnOnce(&Path, &str) -> T + Send + 'static,
) -> tokio::task::JoinHandle<T> {
    let (dir, endpoint) = (dir.to_path_buf(), agent.endpoint().to_string());
    tokio::task::spawn_blocking(move || body(&dir, &endpoint))
}

/// Starts the agent in a temp dir, takes what the test needs from it with `prepare` (its
/// authorities, to sign tokens and issue certificates with), runs `body` off the runtime with
/// the dir and the agent's endpoint, then shuts the agent down.
async fn with_agent<P: Send + 'static>(
    prepare: impl FnOnce(&RunningAgent) -> P,
    body: impl FnOnce(&Path, &str, P) + Send + 'static,
) {
    let dir = tempfile::tempdir().unwrap();
    let agent = agent(dir.path()).await;
    let prepared = prepare(&agent);
    off_runtime(dir.path(), &agent, move |dir, endpoint| {
        body(dir, endpoint, prepared);
    })
    .await
    .unwrap();
    agent.shutdown().await;
}

/// The own and partner.org authorities.
fn own_and_partner(agent: &RunningAgent) -> (Arc<Authority>, Arc<Authority>) {
    (
        agent.authority().clone(),
        agent.federated_authority(&td("partner.org")).unwrap(),
    )
}

/// The JWKS of `authorities` merged into one document, as SPIRE's OIDC discovery provider or a
/// hand-written `local_jwks` would serve them.
fn merged_jwks(authorities: &[&Authority]) -> String {
    let keys: Vec<serde_json::Value> = authorities
        .iter()
        .flat_map(|a| a.jwks()["keys"].as_array().unwrap().clone())
        .map(|mut k| {
            k["use"] = "sig".into();
            k
        })
        .collect();
    serde_json::json!({ "keys": keys }).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_authn_with_bridge_jwks_accepts_fresh_svids_and_rejects_bad_ones() {
    with_agent(own_and_partner, move |dir, agent, (own, partner)| {
        let fresh = own.sign_claims(&claims(CLIENT, AUD, 300)).unwrap();
        let partner_fresh = partner.sign_claims(&claims(PARTNER, AUD, 300)).unwrap();
        let bad = refused_tokens(&own, &partner, CLIENT, AUD, &fresh);
        // Key confusion: a SPIFFE ID of example.org vouched for by partner.org's key.
        let confused = partner.sign_claims(&claims(CLIENT, AUD, 300)).unwrap();
        let merged = merged_jwks(&[&own, &partner]);
        let path = jwt_path(dir, agent, &["example.org", "partner.org"], &[]);
        let (upstream, envoy, port) = (&path.upstream, &path.envoy, path.port);

        for (what, token, sub) in [
            ("own", &fresh, CLIENT),
            ("partner", &partner_fresh, PARTNER),
        ] {
            let r = get_with_token(port, token);
            assert_eq!(r.status, 200, "{what}: {r:?}");
            let seen = r.json();
            assert_eq!(
                seen["headers"]["x-spiffe-id"], sub,
                "{what}: the authenticated ID only, never the client's copy"
            );
            assert!(
                seen["headers"].get("authorization").is_none(),
                "{what}: the bearer token is not forwarded"
            );
        }
        for (what, token) in &bad {
            // Wrong audience included: jwt_authn says 403, the generated local_reply_config
            // makes it 401 and keeps jwt_authn's body and header.
            let r = get_with_token(port, token);
            assert_invalid_token(&r, what);
            if *what == "wrong audience" {
                assert_eq!(r.body, "Audiences in Jwt are not allowed");
            }
        }
        let none = request(addr(port), "GET", "/", &[("x-spiffe-id", CLIENT)]).unwrap();
        assert_eq!(none.status, 401, "no token: {none:?}");
        assert_eq!(
            upstream.requests(),
            2,
            "only the two good tokens got through"
        );
        assert_eq!(envoy.stat("http.ingress.jwt_authn.allowed"), Some(2));

        // The contrast: one provider over one merged JWKS (no per-trust-domain keys, no
        // subject prefix) lets partner.org's key vouch for an example.org ID.
        let merged_filter = format!(
            r#"- name: envoy.filters.http.jwt_authn
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
    providers:
      merged:
        audiences: ["{AUD}"]
        local_jwks: {{ inline_string: {merged} }}
        claim_to_headers: [{{ header_name: x-spiffe-id, claim_name: sub }}]
    rules:
    - match: {{ prefix: "/" }}
      requires: {{ provider_name: merged }}"#,
            merged = serde_json::to_string(&merged).unwrap()
        );
        let merged = Generated {
            hcm: String::new(),
            filters: merged_filter,
            clusters: Vec::new(),
        };
        let (_merged_envoy, merged_port) = jwt_envoy("merged", dir, &merged, upstream.addr);
        let r = get_with_token(merged_port, &confused);
        assert_eq!(
            r.status, 200,
            "merged JWKS accepts the confused token: {r:?}"
        );
        assert!(
            r.json()["headers"]["x-spiffe-id"]
                .as_str()
                .unwrap()
                .contains(CLIENT),
            "and the app would believe it is {CLIENT}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_endpoint_revalidates_and_answers_unknown_trust_domains_with_a_tombstone() {
    with_agent(
        |agent| agent.authority().current_kid(),
        move |dir, agent, own_kid| {
            let (bridge, jwks) = bridge(dir, agent);
            let r = request(jwks, "GET", "/jwks/example.org", &[]).unwrap();
            assert_eq!(r.header("cache-control"), Some("no-cache"));
            let etag = r.header("etag").unwrap().to_owned();
            assert!(r.body.contains(&own_kid), "{}", r.body);
            let again = request(
                jwks,
                "GET",
                "/jwks/example.org",
                &[("if-none-match", &etag)],
            )
            .unwrap();
            assert_eq!((again.status, again.body.as_str()), (304, ""));
            let partner = request(jwks, "GET", "/jwks/partner.org", &[]).unwrap();
            assert_eq!(partner.status, 200);
            assert_ne!(
                partner.header("etag"),
                Some(etag.as_str()),
                "one JWKS per trust domain"
            );
            let unknown = request(jwks, "GET", "/jwks/elsewhere.org", &[]).unwrap();
            assert_eq!(unknown.status, 200);
            assert!(
                unknown.body.contains("sds-bridge-no-bundle"),
                "{}",
                unknown.body
            );
            let rebinding = request(
                jwks,
                "GET",
                "/jwks/example.org",
                &[("host", "evil.example")],
            );
            assert_eq!(rebinding.unwrap().status, 403);
            let count = |result: &str| {
                bridge.metric(&format!(
                    "sds_bridge_jwks_requests_total{{result=\"{result}\"}}"
                ))
            };
            assert_eq!(count("not_modified"), 1.0);
            assert_eq!(count("no_bundle"), 1.0);
            assert!(count("ok") >= 3.0, "{}", count("ok"));
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_key_rotation_under_load_fails_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Arc::new(agent(dir.path()).await);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<(u16, SocketAddr)>();
    let load = RotationLoad::default();
    // A failed assertion below must stop the clients too, or the runtime waits for them forever.
    let _stop_on_panic = load.stop_on_drop();
    // Processes and load run off the runtime serving the agent; rotations happen on it.
    let clients_done = {
        let (shared, load) = (agent.clone(), load.clone());
        off_runtime(dir.path(), &agent, move |dir, endpoint| {
            // cache_duration 6s: Envoy refetches every second.
            let path = jwt_path(
                dir,
                endpoint,
                &["example.org", "partner.org"],
                &["--cache-duration", "6s"],
            );
            let port = path.port;
            ready_tx.send((port, path.envoy.admin)).unwrap();
            // A client always holds a token from the current key, as the JWT cache refetches
            // after a rotation.
            let clients = load.clients(&shared, port, CLIENT, AUD, 3);
            for c in clients {
                c.join().unwrap();
            }
            drop(path);
        })
    };
    let (_port, envoy_admin) = tokio::task::spawn_blocking(move || ready_rx.recv().unwrap())
        .await
        .unwrap();
    let fetches = move || {
        suite_tests::envoy::stat(envoy_admin, "http.ingress.jwt_authn.jwks_fetch_success")
            .unwrap_or(0)
    };
    for _ in 0..4 {
        // Envoy must have fetched the JWKS that pre-publishes the next key twice (a fetch
        // could have been in flight during the last rotation) before the next rotation.
        let seen = tokio::task::spawn_blocking(fetches).await.unwrap();
        let before = load.ok();
        agent.rotate_jwt_key().await.unwrap();
        tokio::task::spawn_blocking({
            let load = load.clone();
            move || {
                wait_until(
                    "two JWKS refetches and traffic",
                    Duration::from_secs(10),
                    || fetches() >= seen + 2 && load.ok() > before + 50,
                );
            }
        })
        .await
        .unwrap();
    }
    load.stop.store(true, Ordering::Relaxed);
    clients_done.await.unwrap();
    assert_eq!(agent.jwt_key_rotations(), 4);
    assert_eq!(load.failed(), 0, "no request failed");
    assert!(load.ok() > 200, "load ran");
    Arc::into_inner(agent).unwrap().shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_on_the_jwt_sub_allows_one_id_forbids_others_and_refuses_foreign_domains() {
    with_agent(own_and_partner, move |dir, agent, (own, partner)| {
        let allowed = own.sign_claims(&claims(CLIENT, AUD, 300)).unwrap();
        let other = own.sign_claims(&claims(OTHER, AUD, 300)).unwrap();
        let foreign = partner.sign_claims(&claims(PARTNER, AUD, 300)).unwrap();
        let elsewhere = own
            .sign_claims(&claims(
                CLIENT,
                "spiffe://example.org/ns/default/sa/elsewhere",
                300,
            ))
            .unwrap();
        // Only example.org is trusted here; partner.org has a bundle but no provider.
        let path = jwt_path(dir, agent, &["example.org"], &["--allow-spiffe-id", CLIENT]);
        let (upstream, envoy, port) = (&path.upstream, &path.envoy, path.port);
        assert_eq!(get_with_token(port, &allowed).status, 200);
        assert_rbac_denied(
            &get_with_token(port, &other),
            "same trust domain, not allowed",
        );
        assert_invalid_token(&get_with_token(port, &foreign), "foreign trust domain");
        // The local reply mapper turns jwt_authn's wrong-audience 403 into 401 and leaves
        // RBAC's 403 (above) alone, on the same listener.
        assert_invalid_token(
            &get_with_token(port, &elsewhere),
            "the allowed ID, another audience",
        );
        assert_eq!(upstream.requests(), 1);
        assert_eq!(envoy.stat("http.ingress.rbac.denied"), Some(1));
        assert_eq!(envoy.stat("http.ingress.jwt_authn.denied"), Some(2));
    })
    .await;
}

/// The server Envoy: an mTLS listener on a free port (returned) whose certificate and client
/// validation (own and federated bundles, `ALL`) come from `bridge`, running `filters` in front
/// of `upstream`; plus `listeners` and `clusters`.
fn mtls_server(
    dir: &Path,
    bridge: &SdsBridge,
    upstream: SocketAddr,
    filters: &str,
    listeners: &[String],
    clusters: &[String],
) -> (Envoy, u16) {
    let port = free_port();
    let tls = common_tls_context(Shape::All, "sds", "", "example.org");
    let mut all_listeners = vec![mtls_listener_with_filters("mtls", port, &tls, filters)];
    all_listeners.extend(listeners.iter().cloned());
    let mut all_clusters = vec![
        static_cluster("upstream", upstream, false),
        sds_cluster("sds", &bridge.socket),
    ];
    all_clusters.extend(clusters.iter().cloned());
    let envoy = Envoy::start(
        "server",
        dir,
        &bootstrap(free_port(), "server", &all_listeners, &all_clusters),
    );
    (envoy, port)
}

/// An Envoy with one HTTP listener and one TLS cluster per `(path prefix, cert PEM, key PEM)`,
/// each presenting that certificate to `server` on a fresh connection per request.
fn mtls_clients(
    dir: &Path,
    server: SocketAddr,
    clients: &[(&str, String, String)],
) -> (Envoy, u16) {
    let port = free_port();
    let routes: Vec<(String, String)> = clients
        .iter()
        .map(|(name, _, _)| (format!("/{name}"), (*name).to_owned()))
        .collect();
    let routes: Vec<(&str, &str)> = routes
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_str()))
        .collect();
    let clusters: Vec<String> = clients
        .iter()
        .map(|(name, cert, key)| tls_cluster(name, server, &inline_tls_context(cert, key), 1))
        .collect();
    let envoy = Envoy::start(
        "clients",
        dir,
        &bootstrap(
            free_port(),
            "clients",
            &[http_listener("out", port, &routes)],
            &clusters,
        ),
    );
    (envoy, port)
}

fn svid_pems(authority: &Authority, id: &str) -> (String, String) {
    let svid = authority
        .issue_x509(&SpiffeId::new(id).unwrap(), Duration::from_secs(3600))
        .unwrap();
    (
        svid.cert_pem(),
        String::from_utf8(svid.key_pem().expose().to_vec()).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_on_the_mtls_peer_allows_one_id_forbids_others_and_refuses_foreign_domains() {
    with_agent(
        |agent| agent.authority().clone(),
        move |dir, agent, own| {
            let evil = Authority::new(td("evil.org"), JwtAlg::Es256).unwrap();
            let clients = vec![
                ("allowed", svid_pems(&own, CLIENT)),
                ("other", svid_pems(&own, OTHER)),
                (
                    "foreign",
                    svid_pems(&evil, "spiffe://evil.org/ns/default/sa/client"),
                ),
            ];
            let (bridge, jwks) = bridge(dir, agent);
            let upstream = EchoServer::start();
            let rbac = jwt_authn_config(&[
                "--trust-domain",
                "example.org",
                "--audience",
                AUD,
                "--jwks-address",
                &jwks.to_string(),
                "--allow-spiffe-id",
                CLIENT,
                "--principal",
                "x509",
                "--part",
                "rbac",
            ]);
            let (server, server_port) = mtls_server(dir, &bridge, upstream.addr, &rbac, &[], &[]);
            let clients: Vec<(&str, String, String)> =
                clients.into_iter().map(|(n, (c, k))| (n, c, k)).collect();
            let (_clients, port) = mtls_clients(dir, addr(server_port), &clients);
            let get = |path: &str| request(addr(port), "GET", path, &[]).unwrap();
            let r = get("/allowed");
            assert_eq!(r.status, 200, "{r:?}");
            assert!(
                r.json()["headers"]["x-forwarded-client-cert"]
                    .as_str()
                    .unwrap()
                    .contains(&format!("URI={CLIENT}"))
            );
            let r = get("/other");
            assert_eq!(r.status, 403, "same trust domain, not allowed: {r:?}");
            let r = get("/foreign");
            assert_eq!(r.status, 503, "foreign trust domain: {r:?}");
            assert_eq!(
                server.stat(&format!(
                    "listener.127.0.0.1_{server_port}.ssl.fail_verify_error"
                )),
                Some(1),
                "refused in the handshake: {}",
                server.stats_matching("ssl.fail")
            );
            assert_eq!(server.stat("http.mtls.rbac.denied"), Some(1));
            assert_eq!(upstream.requests(), 1);
        },
    )
    .await;
}

/// How long after `start` `refused` first held, polling as fast as requests go.
fn time_until_refused(
    start: Instant,
    limit: Duration,
    mut refused: impl FnMut() -> bool,
) -> Duration {
    loop {
        if refused() {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "still accepted after {limit:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_federated_trust_domain_refuses_its_mtls_and_jwt_requests_within_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Arc::new(agent(dir.path()).await);
    let own = agent.authority().clone();
    let partner = agent.federated_authority(&td("partner.org")).unwrap();
    let own_token = own.sign_claims(&claims(CLIENT, AUD, 300)).unwrap();
    let partner_token = partner.sign_claims(&claims(PARTNER, AUD, 300)).unwrap();
    let clients = [
        ("own".to_owned(), svid_pems(&own, CLIENT)),
        ("partner".to_owned(), svid_pems(&partner, PARTNER)),
    ];
    let (go_tx, go_rx) = std::sync::mpsc::channel::<Instant>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let measured = off_runtime(dir.path(), &agent, move |dir, agent| {
        let (bridge, jwks) = bridge(dir, agent);
        let upstream = EchoServer::start();
        let jwt = generated(
            &["example.org", "partner.org"],
            jwks,
            &["--cache-duration", "6s"],
        );
        let jwt_port = free_port();
        let (_server, mtls_port) = mtls_server(
            dir,
            &bridge,
            upstream.addr,
            "",
            &[filtered_listener("jwt", jwt_port, &jwt.hcm, &jwt.filters)],
            &jwt.clusters,
        );
        let clients: Vec<(&str, String, String)> = clients
            .iter()
            .map(|(n, (c, k))| (n.as_str(), c.clone(), k.clone()))
            .collect();
        let (_clients, client_port) = mtls_clients(dir, addr(mtls_port), &clients);
        let mtls = |path: &str| request(addr(client_port), "GET", path, &[]).unwrap().status;
        for path in ["/own", "/partner"] {
            assert_eq!(mtls(path), 200, "{path} before the drop");
        }
        for token in [&own_token, &partner_token] {
            assert_eq!(
                get_with_token(jwt_port, token).status,
                200,
                "JWT before the drop"
            );
        }
        ready_tx.send(()).unwrap();
        let start = go_rx.recv().unwrap();
        let limit = Duration::from_secs(15);
        let x509 = time_until_refused(start, limit, || mtls("/partner") != 200);
        let jwt = time_until_refused(start, limit, || {
            get_with_token(jwt_port, &partner_token).status == 401
        });
        // The own trust domain keeps working on both paths.
        for _ in 0..20 {
            assert_eq!(mtls("/own"), 200);
            assert_eq!(get_with_token(jwt_port, &own_token).status, 200);
        }
        (x509, jwt)
    });
    tokio::task::spawn_blocking(move || ready_rx.recv().unwrap())
        .await
        .unwrap();
    let start = Instant::now();
    assert!(agent.drop_federation(&td("partner.org")).await.unwrap());
    go_tx.send(start).unwrap();
    let (x509, jwt) = measured.await.unwrap();
    eprintln!("revocation: mTLS refused after {x509:?}, JWT refused after {jwt:?}");
    assert!(x509 < Duration::from_secs(2), "mTLS: {x509:?}");
    // cache_duration 6s: Envoy refetches every 1 s (6 s − 5 s), plus the fetch itself.
    assert!(jwt < Duration::from_secs(3), "JWT: {jwt:?}");
    Arc::into_inner(agent).unwrap().shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retiring_the_ca_refuses_certificates_it_issued_while_reissued_svids_keep_working() {
    let dir = tempfile::tempdir().unwrap();
    let agent = agent(dir.path()).await;
    // A client certificate of the CA about to be retired, as an attacker would hold it.
    let (stolen_cert, stolen_key) = svid_pems(agent.authority(), CLIENT);
    let (go_tx, go_rx) = std::sync::mpsc::channel::<Instant>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let measured = off_runtime(dir.path(), &agent, move |dir, agent| {
        let (bridge, _jwks) = bridge(dir, agent);
        let upstream = EchoServer::start();
        let (_server, server_port) = mtls_server(dir, &bridge, upstream.addr, "", &[], &[]);
        // "fresh" presents the bridge's current SVID (re-issued by the agent after the
        // retirement and pushed over SDS); "stolen" the certificate minted before it.
        let port = free_port();
        let _clients = Envoy::start(
            "clients",
            dir,
            &bootstrap(
                free_port(),
                "clients",
                &[http_listener(
                    "out",
                    port,
                    &[("/fresh", "fresh"), ("/stolen", "stolen")],
                )],
                &[
                    tls_cluster(
                        "fresh",
                        addr(server_port),
                        &common_tls_context(Shape::NoValidation, "sds", "", "example.org"),
                        1,
                    ),
                    tls_cluster(
                        "stolen",
                        addr(server_port),
                        &inline_tls_context(&stolen_cert, &stolen_key),
                        1,
                    ),
                    sds_cluster("sds", &bridge.socket),
                ],
            ),
        );
        let get = |path: &str| request(addr(port), "GET", path, &[]).unwrap().status;
        assert_eq!(get("/fresh"), 200);
        assert_eq!(get("/stolen"), 200, "trusted before the retirement");
        ready_tx.send(()).unwrap();
        let start = go_rx.recv().unwrap();
        let refused = time_until_refused(start, Duration::from_secs(10), || get("/stolen") != 200);
        wait_until("the re-issued SVID", Duration::from_secs(5), || {
            get("/fresh") == 200
        });
        for _ in 0..20 {
            assert_eq!(get("/fresh"), 200, "re-issued SVIDs keep working");
        }
        refused
    });
    tokio::task::spawn_blocking(move || ready_rx.recv().unwrap())
        .await
        .unwrap();
    let start = Instant::now();
    agent.retire_x509_ca_now().await.unwrap();
    go_tx.send(start).unwrap();
    let refused = measured.await.unwrap();
    eprintln!("CA retirement: old-CA certificate refused after {refused:?}");
    assert!(refused < Duration::from_secs(2), "{refused:?}");
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_printed_bootstrap_runs_as_is_and_checks_jwt_svids() {
    with_agent(own_and_partner, move |dir, agent, (own, _)| {
        let (bridge, jwks) = bridge(dir, agent);
        let upstream = EchoServer::start();
        let port = free_port();
        // Exactly what a user would run: the command's output as Envoy's only configuration.
        let yaml = jwt_authn_config(&[
            "--trust-domain",
            "example.org",
            "--audience",
            AUD,
            "--jwks-address",
            &jwks.to_string(),
            "--part",
            "bootstrap",
            "--listen",
            &addr(port).to_string(),
            "--upstream",
            &upstream.addr.to_string(),
            "--envoy-admin",
            &addr(free_port()).to_string(),
        ]);
        let _envoy = Envoy::start("printed-bootstrap", dir, &yaml);
        let token = own.sign_claims(&claims(CLIENT, AUD, 300)).unwrap();
        let r = get_with_token(port, &token);
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.json()["headers"]["x-spiffe-id"], CLIENT);
        let wrong = own
            .sign_claims(&claims(CLIENT, "someone-else", 300))
            .unwrap();
        assert_invalid_token(&get_with_token(port, &wrong), "wrong audience");
        assert_eq!(request(addr(port), "GET", "/", &[]).unwrap().status, 401);
        assert_eq!(upstream.requests(), 1);
        drop(bridge);
    })
    .await;
}

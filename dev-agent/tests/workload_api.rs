//! The agent in-process, driven over its real socket by a tonic client.

// Helpers outside `#[test]` fns are test code too: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{path::Path, time::Duration};

use dev_agent::{Agent, Config, Endpoint, Error, JwtAlg, Method, RunningAgent};
use futures_util::StreamExt as _;
use hyper_util::rt::TokioIo;
use sidecar_runtime::uds::ListenError;
use spiffe::{JwtBundle, JwtBundleSet, JwtSvid, SpiffeId, TrustDomain, X509Svid};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tonic::{Code, Request, transport::Channel};
use workload_proto::{
    JwtBundlesRequest, JwtsvidRequest, SECURITY_HEADER, ValidateJwtsvidRequest, X509BundlesRequest,
    X509svidRequest, spiffe_workload_api_client::SpiffeWorkloadApiClient,
};

type Client = SpiffeWorkloadApiClient<Channel>;

fn td(name: &str) -> TrustDomain {
    TrustDomain::new(name).unwrap()
}

fn config(dir: &Path) -> Config {
    Config::new(Endpoint::Unix(dir.join("agent.sock")), td("example.org"))
}

async fn connect(agent: &RunningAgent) -> Client {
    let channel = match agent.endpoint().clone() {
        Endpoint::Unix(path) => tonic::transport::Endpoint::from_static("http://localhost")
            .connect_with_connector(tower::service_fn(move |_| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }))
            .await
            .unwrap(),
        Endpoint::Tcp(addr) => tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    };
    SpiffeWorkloadApiClient::new(channel)
}

fn req<T>(msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert(SECURITY_HEADER, "true".parse().unwrap());
    r
}

fn jwt_req(aud: &str) -> Request<JwtsvidRequest> {
    req(JwtsvidRequest {
        audience: vec![aud.into()],
        spiffe_id: String::new(),
    })
}

const STEP: Duration = Duration::from_secs(10);

#[tokio::test]
async fn missing_security_header_is_invalid_argument() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(config(dir.path())).await.unwrap();
    let mut client = connect(&agent).await;

    let status = client
        .fetch_jwtsvid(JwtsvidRequest {
            audience: vec!["a".into()],
            spiffe_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(status.message(), "security header missing from request");
    let status = client.fetch_x509svid(X509svidRequest {}).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = client
        .fetch_jwt_bundles(JwtBundlesRequest {})
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = client
        .fetch_x509_bundles(X509BundlesRequest {})
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = client
        .validate_jwtsvid(ValidateJwtsvidRequest {
            audience: "a".into(),
            svid: "x.y.z".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    for method in Method::ALL {
        assert_eq!(
            agent.rpc_count(method),
            0,
            "{method:?} counted without header"
        );
    }
    agent.shutdown().await;
}

#[tokio::test]
async fn x509_svids_are_pushed_before_half_life() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.x509_ttl = Duration::from_secs(4);
    cfg.spiffe_ids = vec![
        SpiffeId::new("spiffe://example.org/a").unwrap(),
        SpiffeId::new("spiffe://example.org/b").unwrap(),
    ];
    cfg.federate_with = vec![td("other.org")];
    let agent = Agent::start(cfg).await.unwrap();
    let mut client = connect(&agent).await;
    let mut stream = client
        .fetch_x509svid(req(X509svidRequest {}))
        .await
        .unwrap()
        .into_inner();

    let first = tokio::time::timeout(Duration::from_secs(1), stream.next())
        .await
        .expect("first snapshot is immediate")
        .unwrap()
        .unwrap();
    assert_eq!(first.svids.len(), 2);
    assert_eq!(first.svids[0].spiffe_id, "spiffe://example.org/a");
    assert_eq!(first.svids[0].bundle, agent.authority().ca_der());
    assert_eq!(
        first.federated_bundles["spiffe://other.org"],
        agent
            .federated_authority(&td("other.org"))
            .unwrap()
            .ca_der()
    );
    let svid =
        X509Svid::parse_from_der(&first.svids[1].x509_svid, &first.svids[1].x509_svid_key).unwrap();
    assert_eq!(svid.spiffe_id().to_string(), "spiffe://example.org/b");

    let started = tokio::time::Instant::now();
    let second = tokio::time::timeout(Duration::from_secs(3), stream.next())
        .await
        .expect("rotated before half of the 4s lifetime")
        .unwrap()
        .unwrap();
    assert!(started.elapsed() < Duration::from_millis(2100));
    assert_ne!(first.svids[0].x509_svid, second.svids[0].x509_svid);
    assert_eq!(agent.x509_rotations(), 1);

    // A forced rotation is pushed too.
    agent.rotate_x509().await.unwrap();
    let third = tokio::time::timeout(STEP, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_ne!(second.svids[0].x509_svid, third.svids[0].x509_svid);
    assert_eq!(agent.rpc_count(Method::FetchX509Svid), 1);
    agent.shutdown().await;
}

#[tokio::test]
async fn jwt_svid_fetch_and_validate() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.spiffe_ids = vec![
        SpiffeId::new("spiffe://example.org/a").unwrap(),
        SpiffeId::new("spiffe://example.org/b").unwrap(),
    ];
    cfg.jwt_issuer = Some("https://oidc.example.org".into());
    let agent = Agent::start(cfg).await.unwrap();
    let mut client = connect(&agent).await;

    let all = client
        .fetch_jwtsvid(jwt_req("aud"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.svids.len(), 2);
    assert_eq!(all.svids[0].spiffe_id, "spiffe://example.org/a");

    let only_b = client
        .fetch_jwtsvid(req(JwtsvidRequest {
            audience: vec!["aud".into()],
            spiffe_id: "spiffe://example.org/b".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(only_b.svids.len(), 1);
    let token = only_b.svids[0].svid.clone();

    // Independently verifiable against the JWKS the agent publishes.
    let bundle = JwtBundle::from_jwt_authorities(
        td("example.org"),
        agent.authority().jwks_json().as_bytes(),
    )
    .unwrap();
    let set: JwtBundleSet = [bundle].into_iter().collect();
    let parsed = JwtSvid::parse_and_validate(&token, &set, &["aud"]).unwrap();
    assert_eq!(parsed.spiffe_id().to_string(), "spiffe://example.org/b");

    let ok = client
        .validate_jwtsvid(req(ValidateJwtsvidRequest {
            audience: "aud".into(),
            svid: token.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.spiffe_id, "spiffe://example.org/b");
    let claims = ok.claims.unwrap();
    assert!(claims.fields.contains_key("exp"));
    assert_eq!(
        claims.fields["iss"].kind,
        Some(prost_types::value::Kind::StringValue(
            "https://oidc.example.org".into()
        ))
    );

    let wrong_aud = client
        .validate_jwtsvid(req(ValidateJwtsvidRequest {
            audience: "other".into(),
            svid: token.clone(),
        }))
        .await
        .unwrap_err();
    assert_eq!(wrong_aud.code(), Code::InvalidArgument);
    assert!(!wrong_aud.message().contains(&token));

    let no_aud = client
        .fetch_jwtsvid(req(JwtsvidRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(no_aud.code(), Code::InvalidArgument);
    let not_ours = client
        .fetch_jwtsvid(req(JwtsvidRequest {
            audience: vec!["aud".into()],
            spiffe_id: "spiffe://example.org/c".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(not_ours.code(), Code::PermissionDenied);

    assert_eq!(agent.rpc_count(Method::FetchJwtSvid), 4);
    assert_eq!(agent.rpc_count(Method::ValidateJwtSvid), 2);
    agent.shutdown().await;
}

/// `spiffe-dev-agent mint-jwt` signs, from the running agent's state directory, tokens the
/// agent validates: for a workload of its own trust domain and for one of a federated trust
/// domain; a trust domain it holds no keys for is an error naming the fix.
#[tokio::test]
async fn minted_jwt_svids_of_own_and_federated_domains_validate_at_the_agent() {
    use clap::Parser as _;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut cfg = config(dir.path());
    cfg.federate_with = vec![td("partner.org")];
    cfg.state_dir = Some(state.clone());
    let agent = Agent::start(cfg).await.unwrap();
    let mut client = connect(&agent).await;

    let mint = |id: &str| {
        let cli = dev_agent::Cli::try_parse_from([
            "spiffe-dev-agent",
            "mint-jwt",
            "--state-dir",
            state.to_str().unwrap(),
            "--spiffe-id",
            id,
            "--audience",
            "aud",
            "--ttl",
            "1m",
        ])
        .unwrap();
        assert!(cli.socket.is_none(), "no --socket needed to mint");
        let Some(dev_agent::Command::MintJwt(args)) = cli.command else {
            panic!("mint-jwt parsed as {:?}", cli.command);
        };
        dev_agent::mint_jwt(&args)
    };
    let files = |td: &str| {
        ["ca-key.pem", "ca-cert.pem", "jwt-keys.json"]
            .map(|f| std::fs::read(state.join(td).join(f)).unwrap())
    };
    let before = (files("example.org"), files("partner.org"));
    for id in ["spiffe://example.org/minted", "spiffe://partner.org/web"] {
        let token = mint(id).unwrap();
        let ok = client
            .validate_jwtsvid(req(ValidateJwtsvidRequest {
                audience: "aud".into(),
                svid: token.clone(),
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(ok.spiffe_id, id);
        let wrong_audience = client
            .validate_jwtsvid(req(ValidateJwtsvidRequest {
                audience: "other".into(),
                svid: token,
            }))
            .await
            .unwrap_err();
        assert_eq!(wrong_audience.code(), Code::InvalidArgument);
    }
    assert!(
        before == (files("example.org"), files("partner.org")),
        "minting reads the agent's files and writes nothing"
    );
    let err = mint("spiffe://stranger.org/x").unwrap_err().to_string();
    assert!(err.contains("--federate-with stranger.org"), "{err}");
    assert!(
        !state.join("stranger.org").exists(),
        "minting creates nothing"
    );
    let err = mint("spiffe://partner.org").unwrap_err().to_string();
    assert!(err.contains("subject has a path"), "{err}");
    // A federation an operator dropped is not trusted by the command either.
    agent.drop_federation(&td("partner.org")).await.unwrap();
    let err = mint("spiffe://partner.org/web").unwrap_err().to_string();
    assert!(err.contains("was dropped"), "{err}");
    agent.shutdown().await;
}

#[tokio::test]
async fn federated_tokens_validate_and_bundles_list_every_domain() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.federate_with = vec![td("other.org")];
    let agent = Agent::start(cfg).await.unwrap();
    let mut client = connect(&agent).await;

    let foreign = agent.federated_authority(&td("other.org")).unwrap();
    let token = foreign
        .sign_jwt(
            &SpiffeId::new("spiffe://other.org/peer").unwrap(),
            &["aud"],
            Duration::from_secs(60),
        )
        .unwrap();
    let ok = client
        .validate_jwtsvid(req(ValidateJwtsvidRequest {
            audience: "aud".into(),
            svid: token,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.spiffe_id, "spiffe://other.org/peer");

    // A token of a trust domain the agent does not know is rejected.
    let stranger = dev_agent::Authority::new(td("stranger.org"), JwtAlg::Es256).unwrap();
    let token = stranger
        .sign_jwt(
            &SpiffeId::new("spiffe://stranger.org/x").unwrap(),
            &["aud"],
            Duration::from_secs(60),
        )
        .unwrap();
    let err = client
        .validate_jwtsvid(req(ValidateJwtsvidRequest {
            audience: "aud".into(),
            svid: token,
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    let mut x509 = client
        .fetch_x509_bundles(req(X509BundlesRequest {}))
        .await
        .unwrap()
        .into_inner();
    let bundles = x509.next().await.unwrap().unwrap().bundles;
    assert_eq!(bundles.len(), 2);
    assert_eq!(bundles["spiffe://example.org"], agent.authority().ca_der());

    let mut jwt = client
        .fetch_jwt_bundles(req(JwtBundlesRequest {}))
        .await
        .unwrap()
        .into_inner();
    let bundles = jwt.next().await.unwrap().unwrap().bundles;
    let other: serde_json::Value = serde_json::from_slice(&bundles["spiffe://other.org"]).unwrap();
    assert_eq!(other["keys"][0]["kid"], foreign.current_kid());
    assert_eq!(other["keys"][0]["use"], "jwt-svid");
    agent.shutdown().await;
}

#[tokio::test]
async fn jwt_key_rotation_is_streamed_and_old_tokens_keep_validating() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(config(dir.path())).await.unwrap();
    let mut client = connect(&agent).await;
    let mut stream = client
        .fetch_jwt_bundles(req(JwtBundlesRequest {}))
        .await
        .unwrap()
        .into_inner();
    let first = stream.next().await.unwrap().unwrap();
    let old_kid = agent.authority().current_kid();
    let old_token = client
        .fetch_jwtsvid(jwt_req("aud"))
        .await
        .unwrap()
        .into_inner()
        .svids[0]
        .svid
        .clone();

    agent.rotate_jwt_key().await.unwrap();
    let second = tokio::time::timeout(STEP, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_ne!(first.bundles, second.bundles);
    let jwks: serde_json::Value =
        serde_json::from_slice(&second.bundles["spiffe://example.org"]).unwrap();
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert!(kids.contains(&old_kid.as_str()));
    assert!(kids.contains(&agent.authority().current_kid().as_str()));

    client
        .validate_jwtsvid(req(ValidateJwtsvidRequest {
            audience: "aud".into(),
            svid: old_token,
        }))
        .await
        .unwrap();
    assert_eq!(agent.jwt_key_rotations(), 1);
    agent.shutdown().await;
}

#[tokio::test]
async fn jwt_keys_rotate_on_schedule() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.jwt_key_rotation = Duration::from_secs(1);
    let agent = Agent::start(cfg).await.unwrap();
    let mut client = connect(&agent).await;
    let mut stream = client
        .fetch_jwt_bundles(req(JwtBundlesRequest {}))
        .await
        .unwrap()
        .into_inner();
    let first_kid = agent.authority().current_kid();
    stream.next().await.unwrap().unwrap();
    tokio::time::timeout(Duration::from_secs(3), stream.next())
        .await
        .expect("scheduled rotation pushed")
        .unwrap()
        .unwrap();
    assert!(agent.jwt_key_rotations() >= 1);
    assert_ne!(agent.authority().current_kid(), first_kid);
    agent.shutdown().await;
}

#[tokio::test]
async fn retired_jwt_key_leaves_the_bundle_after_jwt_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.jwt_ttl = Duration::from_secs(1);
    let agent = Agent::start(cfg).await.unwrap();
    let mut client = connect(&agent).await;
    let mut stream = client
        .fetch_jwt_bundles(req(JwtBundlesRequest {}))
        .await
        .unwrap()
        .into_inner();
    stream.next().await.unwrap().unwrap();
    agent.rotate_jwt_key().await.unwrap();
    let with_both = stream.next().await.unwrap().unwrap();
    let count = |b: &workload_proto::JwtBundlesResponse| {
        let v: serde_json::Value =
            serde_json::from_slice(&b.bundles["spiffe://example.org"]).unwrap();
        v["keys"].as_array().unwrap().len()
    };
    // current + pre-published next + retired.
    assert_eq!(count(&with_both), 3);
    let pruned = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("retired key pruned after jwt_ttl")
        .unwrap()
        .unwrap();
    assert_eq!(count(&pruned), 2);
    agent.shutdown().await;
}

#[tokio::test]
async fn shutdown_ends_streams_and_removes_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(config(dir.path())).await.unwrap();
    let socket = dir.path().join("agent.sock");
    assert!(socket.exists());
    let mut client = connect(&agent).await;
    let mut stream = client
        .fetch_x509svid(req(X509svidRequest {}))
        .await
        .unwrap()
        .into_inner();
    stream.next().await.unwrap().unwrap();

    let started = std::time::Instant::now();
    agent.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "streams did not hold up shutdown"
    );
    assert!(!socket.exists());
    let end = tokio::time::timeout(STEP, stream.next()).await.unwrap();
    assert!(!matches!(end, Some(Ok(_))), "stream ended");
}

#[tokio::test]
async fn stale_socket_is_replaced_but_a_live_one_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.sock");
    // A stale socket file: bound, then the listener is gone.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let agent = Agent::start(config(dir.path())).await.unwrap();
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o660);

    let second = Agent::start(config(dir.path())).await;
    assert!(
        matches!(second, Err(Error::Listen(ListenError::InUse { .. }))),
        "{second:?}"
    );
    agent.shutdown().await;

    std::fs::write(&path, b"not a socket").unwrap();
    let third = Agent::start(config(dir.path())).await;
    assert!(
        matches!(third, Err(Error::Listen(ListenError::NotASocket { .. }))),
        "{third:?}"
    );
}

#[tokio::test]
async fn tcp_endpoint_reports_the_bound_port() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.socket = Endpoint::Tcp("127.0.0.1:0".parse().unwrap());
    let agent = Agent::start(cfg).await.unwrap();
    let Endpoint::Tcp(addr) = agent.endpoint() else {
        panic!("tcp endpoint expected");
    };
    assert_ne!(addr.port(), 0);
    let mut client = connect(&agent).await;
    client.fetch_jwtsvid(jwt_req("aud")).await.unwrap();
    agent.shutdown().await;
}

#[tokio::test]
async fn restart_with_state_dir_keeps_the_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.state_dir = Some(dir.path().join("state"));
    cfg.jwt_alg = JwtAlg::Rs256;
    let agent = Agent::start(cfg.clone()).await.unwrap();
    let (ca, kid) = (
        agent.authority().ca_der().to_vec(),
        agent.authority().current_kid(),
    );
    agent.shutdown().await;
    let agent = Agent::start(cfg).await.unwrap();
    assert_eq!(agent.authority().ca_der(), ca);
    assert_eq!(agent.authority().current_kid(), kid);
    agent.shutdown().await;
}

async fn http(addr: std::net::SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn oidc_discovery_and_admin_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.jwt_issuer = Some("http://127.0.0.1:1".into());
    cfg.oidc_listen = Some("127.0.0.1:0".parse().unwrap());
    cfg.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    let agent = Agent::start(cfg).await.unwrap();
    let oidc = agent.oidc_addr().unwrap();
    let admin = agent.admin_addr().unwrap();

    let (status, body) = http(oidc, "GET", "/.well-known/openid-configuration").await;
    assert_eq!(status, 200);
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["issuer"], "http://127.0.0.1:1");
    assert_eq!(doc["jwks_uri"], "http://127.0.0.1:1/keys");

    let (status, body) = http(oidc, "GET", "/keys").await;
    assert_eq!(status, 200);
    let jwks: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(jwks["keys"][0]["kid"], agent.authority().current_kid());
    assert_eq!(jwks["keys"][0]["use"], "sig");

    let mut client = connect(&agent).await;
    client.fetch_jwtsvid(jwt_req("aud")).await.unwrap();
    let (status, body) = http(admin, "GET", "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        body.contains("dev_agent_rpc_total{method=\"FetchJWTSVID\"} 1"),
        "{body}"
    );
    assert!(body.contains("dev_agent_x509_rotations_total 0"), "{body}");

    let old_kid = agent.authority().current_kid();
    assert_eq!(http(admin, "POST", "/rotate/jwt").await.0, 200);
    assert_ne!(agent.authority().current_kid(), old_kid);
    let (_, body) = http(oidc, "GET", "/keys").await;
    assert!(body.contains(&old_kid) && body.contains(&agent.authority().current_kid()));

    assert_eq!(http(admin, "POST", "/rotate/x509").await.0, 200);
    assert_eq!(agent.x509_rotations(), 1);
    assert_eq!(http(admin, "GET", "/healthz").await.0, 200);
    agent.shutdown().await;
}

#[tokio::test]
async fn dropping_a_federation_and_retiring_the_ca_reach_every_stream_in_one_push() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.federate_with = vec![td("other.org")];
    let agent = Agent::start(cfg).await.unwrap();
    let mut client = connect(&agent).await;
    let mut svids = client
        .fetch_x509svid(req(X509svidRequest {}))
        .await
        .unwrap()
        .into_inner();
    let mut x509_bundles = client
        .fetch_x509_bundles(req(X509BundlesRequest {}))
        .await
        .unwrap()
        .into_inner();
    let mut jwt_bundles = client
        .fetch_jwt_bundles(req(JwtBundlesRequest {}))
        .await
        .unwrap()
        .into_inner();
    let first = svids.next().await.unwrap().unwrap();
    assert!(first.federated_bundles.contains_key("spiffe://other.org"));
    assert_eq!(x509_bundles.next().await.unwrap().unwrap().bundles.len(), 2);
    assert_eq!(jwt_bundles.next().await.unwrap().unwrap().bundles.len(), 2);

    assert!(agent.drop_federation(&td("other.org")).await.unwrap());
    assert!(
        !agent.drop_federation(&td("other.org")).await.unwrap(),
        "gone"
    );
    let next = svids.next().await.unwrap().unwrap();
    assert!(next.federated_bundles.is_empty());
    assert_eq!(
        next.svids[0].x509_svid, first.svids[0].x509_svid,
        "same SVID"
    );
    let x509 = x509_bundles.next().await.unwrap().unwrap().bundles;
    assert_eq!(x509.keys().collect::<Vec<_>>(), ["spiffe://example.org"]);
    let jwt = jwt_bundles.next().await.unwrap().unwrap().bundles;
    assert_eq!(jwt.keys().collect::<Vec<_>>(), ["spiffe://example.org"]);
    assert!(agent.federated_authority(&td("other.org")).is_none());

    let old_ca = agent.authority().ca_der();
    agent.retire_x509_ca_now().await.unwrap();
    let new_ca = agent.authority().ca_der();
    assert_ne!(old_ca, new_ca);
    let reissued = svids.next().await.unwrap().unwrap();
    assert_eq!(
        reissued.svids[0].bundle, new_ca,
        "the old CA left the bundle"
    );
    assert_ne!(reissued.svids[0].x509_svid, first.svids[0].x509_svid);
    let x509 = x509_bundles.next().await.unwrap().unwrap().bundles;
    assert_eq!(x509["spiffe://example.org"], new_ca);
    agent.shutdown().await;
}

/// The first message of a stream the agent answered.
async fn first<T>(response: Result<tonic::Response<tonic::Streaming<T>>, tonic::Status>) -> T {
    response
        .unwrap()
        .into_inner()
        .next()
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn revocations_survive_a_restart_on_the_same_state_dir() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.state_dir = Some(dir.path().join("state"));
    cfg.federate_with = vec![td("other.org")];
    let agent = Agent::start(cfg.clone()).await.unwrap();
    let old_ca = agent.authority().ca_der();
    assert!(agent.drop_federation(&td("other.org")).await.unwrap());
    agent.retire_x509_ca_now().await.unwrap();
    let retired_kid = agent.retire_jwt_key_now().await.unwrap();
    let (new_ca, kid) = (agent.authority().ca_der(), agent.authority().current_kid());
    agent.shutdown().await;

    // The same flags: --federate-with still names the dropped trust domain.
    let agent = Agent::start(cfg).await.unwrap();
    assert!(
        agent.federated_authority(&td("other.org")).is_none(),
        "the drop outlives the restart"
    );
    assert_eq!(agent.authority().ca_der(), new_ca, "the replacement CA");
    assert_ne!(agent.authority().ca_der(), old_ca);
    assert_eq!(agent.authority().current_kid(), kid);
    let mut client = connect(&agent).await;
    let svids = first(client.fetch_x509svid(req(X509svidRequest {})).await).await;
    assert!(svids.federated_bundles.is_empty());
    assert_eq!(svids.svids[0].bundle, new_ca, "the retired CA stays out");
    let jwt = first(client.fetch_jwt_bundles(req(JwtBundlesRequest {})).await)
        .await
        .bundles;
    assert_eq!(jwt.keys().collect::<Vec<_>>(), ["spiffe://example.org"]);
    let own = String::from_utf8(jwt["spiffe://example.org"].clone()).unwrap();
    assert!(
        own.contains(&kid) && !own.contains(&retired_kid),
        "the retired JWT key stays out: {own}"
    );
    assert!(
        dir.path()
            .join("state/other.org/federation-dropped")
            .is_file(),
        "deleting this marker is how an operator federates again"
    );
    agent.shutdown().await;
}

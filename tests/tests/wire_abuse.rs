#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers outside #[test] fns
//! Bad input on the wire, per listener: random bytes, the wrong HTTP version, oversized
//! headers and frames, a slow client, 10,000 streams on one connection, malformed protobuf and
//! invalid UTF-8, huge audience lists and SDS requests for 10,000 names. For each: the process
//! keeps running, its RSS stays bounded (see [`Rss`]), and a
//! well-behaved client is served while the abuse is in flight. docs/testing.md, "Bad input on
//! the wire", records what each sidecar answered; cases covered elsewhere are referenced there.
//!
//! The abusive clients (`suite_tests::wire`) write raw bytes (frames, header blocks, gRPC
//! length prefixes) or use the `h2` crate when the point is the body, so nothing in between
//! can tidy the input up.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dev_agent::{Agent, Config as AgentConfig};
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use prost::Message as _;
use suite_tests::procfs::rss_kib;
use suite_tests::sds::SdsBridge;
use suite_tests::sidecars::{JwtHelper, Verdict, check, check_request, claims};
use suite_tests::wire::*;
use suite_tests::{DevAgent, Proc};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use workload_client::spiffe::TrustDomain;
use workload_client::{Endpoint, WorkloadApiClient, lazy_channel};

/// How much a process's resident set may grow across two rounds of abuse. 4,096 parked
/// streams on one connection (jwt-auth-helper's cap) peak at ~40 MiB, and glibc keeps freed
/// memory in per-thread arenas, so a round's figure is not the floor: measured with
/// `MALLOC_ARENA_MAX=1`, sixteen rounds of 10,000 streams plateau at +57 MiB (+38, +51, +56,
/// then +0.1 MiB in the last ten rounds together); unbounded growth would cross this in a
/// round or two.
const RSS_BOUND_KIB: u64 = 96 * 1024;
const AUD: &str = "spiffe://example.org/backend";
const CHECK: &str = "/envoy.service.auth.v3.Authorization/Check";
const STREAM_SECRETS: &str = "/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets";
const FETCH_SECRETS: &str = "/envoy.service.secret.v3.SecretDiscoveryService/FetchSecrets";
const FETCH_JWT: &str = "/SpiffeWorkloadAPI/FetchJWTSVID";
const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

// === The battery for gRPC listeners ===

/// What a gRPC listener did with each abusive input.
#[derive(Debug)]
struct GrpcOutcome {
    random_closed: bool,
    http1_answer: String,
    oversized_headers: Seen,
    oversized_frame: Seen,
    streams: Seen,
    malformed: u32,
    compressed_without_encoding: u32,
    four_gib_prefix: u32,
    invalid_utf8: u32,
}

/// Runs the wire battery against a gRPC `port` whose streams are capped at `max_streams`:
/// `request_path` names a method and `valid`/`utf8` are well-formed and invalid-UTF-8
/// messages for it; `probe` is a well-behaved client, run while each abuse is in flight.
async fn grpc_battery<F, Fut>(
    port: &Port,
    request_path: &str,
    max_streams: usize,
    invalid_utf8: Vec<u8>,
    probe: F,
) -> GrpcOutcome
where
    F: Fn() -> Fut,
    Fut: Future<Output = ()>,
{
    // Random bytes: the connection is closed (h2 sees no preface).
    let random_closed = send_and_read_to_close(port, &random_bytes(256 * 1024))
        .await
        .is_some();
    // HTTP/1 on a gRPC port.
    let http1 = send_and_read_to_close(
        port,
        b"GET / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await
    .expect("HTTP/1 request closed");
    let http1_answer = String::from_utf8_lossy(&http1[..http1.len().min(40)]).into_owned();

    // A 1 MiB header block: HEADERS and 63 CONTINUATION frames of 16 KiB (the frame size
    // every peer must accept), one literal header far over the 16 KiB header list limit.
    let huge = vec![b'a'; 1024 * 1024];
    let block = grpc_head(request_path, &[("x-huge", &huge)]);
    let mut bytes = h2_start();
    let chunks: Vec<&[u8]> = block.chunks(16 * 1024).collect();
    for (i, c) in chunks.iter().enumerate() {
        let kind = if i == 0 { HEADERS } else { CONTINUATION };
        let flags = if i + 1 == chunks.len() {
            END_HEADERS
        } else {
            0
        };
        bytes.extend(frame(kind, flags, 1, c));
    }
    let (oversized_headers, _conn) = h2_exchange(port, bytes, |s| {
        s.goaway.is_some() || !s.resets.is_empty() || s.headers > 0
    })
    .await;
    probe().await;

    // A DATA frame claiming 16 MiB - 1, past SETTINGS_MAX_FRAME_SIZE (16 KiB).
    let mut bytes = h2_start();
    bytes.extend(frame(
        HEADERS,
        END_HEADERS,
        1,
        &grpc_head(request_path, &[]),
    ));
    let mut huge = frame(DATA, 0, 1, &[]);
    huge[..3].copy_from_slice(&[0xff, 0xff, 0xff]);
    bytes.extend(huge);
    bytes.extend(vec![0u8; 64 * 1024]);
    let (oversized_frame, _conn) = h2_exchange(port, bytes, |s| s.goaway.is_some()).await;
    probe().await;

    // 10,000 streams on one connection, each a request head whose body never comes.
    let mut bytes = h2_start();
    let head = grpc_head(request_path, &[]);
    for i in 0..10_000u32 {
        bytes.extend(frame(HEADERS, END_HEADERS, 2 * i + 1, &head));
    }
    bytes.extend(frame(PING, 0, 0, b"abusive!"));
    let refused_wanted = 10_000 - max_streams;
    let (streams, conn) = h2_exchange(port, bytes, |s| {
        s.goaway.is_some()
            || (s.ping_acks > 0
                && s.resets.get(&REFUSED_STREAM).copied().unwrap_or(0) >= refused_wanted)
    })
    .await;
    // The parked streams are held open while a well-behaved client is served.
    probe().await;
    drop(conn);

    // Bodies that are not what they say.
    let malformed = grpc_raw(port, request_path, grpc_frame(&random_bytes(512))).await;
    let mut compressed = grpc_frame(b"\x0a\x03abc");
    compressed[0] = 1;
    let compressed_without_encoding = grpc_raw(port, request_path, compressed).await;
    let mut prefix = vec![0, 0xff, 0xff, 0xff, 0xff];
    prefix.extend(random_bytes(1024));
    let four_gib_prefix = grpc_raw(port, request_path, prefix).await;
    let invalid_utf8 = grpc_raw(port, request_path, grpc_frame(&invalid_utf8)).await;
    probe().await;

    GrpcOutcome {
        random_closed,
        http1_answer,
        oversized_headers,
        oversized_frame,
        streams,
        malformed,
        compressed_without_encoding,
        four_gib_prefix,
        invalid_utf8,
    }
}

impl GrpcOutcome {
    /// What hyper/h2/tonic answer on every gRPC port of ours.
    fn assert_expected(&self, port: &Port, max_streams: usize) {
        assert!(
            self.random_closed,
            "{port:?}: random bytes close the connection"
        );
        // HTTP/1 is answered with the server's HTTP/2 SETTINGS, then the connection closes.
        assert!(
            self.http1_answer.as_bytes().get(3) == Some(&SETTINGS),
            "{port:?}: HTTP/1 is not served: {:?}",
            self.http1_answer
        );
        // A megabyte of CONTINUATION frames: h2 stops reading at the header list limit.
        assert_eq!(self.oversized_headers.ok_headers, 0, "{port:?}");
        assert_eq!(
            self.oversized_headers.goaway,
            Some(ENHANCE_YOUR_CALM),
            "{port:?}: {:?}",
            self.oversized_headers
        );
        assert_eq!(
            self.oversized_frame.goaway,
            Some(FRAME_SIZE_ERROR),
            "{port:?}"
        );
        assert_eq!(
            self.streams
                .resets
                .get(&REFUSED_STREAM)
                .copied()
                .unwrap_or(0),
            10_000 - max_streams,
            "{port:?}: exactly the streams past the cap refused: {:?}",
            self.streams
        );
        assert_eq!(self.streams.goaway, None, "{port:?}");
        assert_eq!(self.malformed, INTERNAL, "{port:?}: malformed protobuf");
        assert_eq!(self.compressed_without_encoding, INTERNAL, "{port:?}");
        assert_eq!(
            self.four_gib_prefix, OUT_OF_RANGE,
            "{port:?}: 4 GiB length prefix"
        );
        assert_eq!(
            self.invalid_utf8, INTERNAL,
            "{port:?}: invalid UTF-8 in a string field"
        );
    }
}

/// A client sending `bytes` one at a time, `every` apart; `sent` counts them. Returns how
/// long after connecting the server closed the connection, if it did before the last byte.
async fn slowloris(
    port: Port,
    bytes: Vec<u8>,
    every: Duration,
    sent: Arc<AtomicUsize>,
) -> Option<Duration> {
    let mut io = port.connect().await;
    let connected = Instant::now();
    for b in bytes {
        if io.write_all(&[b]).await.is_err() {
            return Some(connected.elapsed());
        }
        sent.fetch_add(1, Ordering::SeqCst);
        // Pacing the abuse, not waiting for a condition; whatever the server says meanwhile
        // is read and dropped, a close ends it.
        let next = tokio::time::Instant::now() + every;
        let mut buf = [0u8; 1024];
        while let Ok(r) = tokio::time::timeout_at(next, io.read(&mut buf)).await {
            if matches!(r, Ok(0) | Err(_)) {
                return Some(connected.elapsed());
            }
        }
    }
    None
}

/// Runs a slow client against `port` and `probe` while it is mid-way; returns whether the
/// server closed the slow connection early.
async fn slow_client_while_served<Fut: Future<Output = ()>>(
    port: &Port,
    bytes: &[u8],
    probe: impl FnOnce() -> Fut,
) -> bool {
    let sent = Arc::new(AtomicUsize::new(0));
    let slow = tokio::spawn(slowloris(
        port.clone(),
        bytes.to_vec(),
        Duration::from_millis(250),
        sent.clone(),
    ));
    while sent.load(Ordering::SeqCst) < 3 {
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    probe().await;
    assert!(
        !slow.is_finished() && sent.load(Ordering::SeqCst) < bytes.len(),
        "the probe ran while the slow client was still sending"
    );
    slow.await.unwrap().is_some()
}

/// A slow head on an HTTP/1 `port` (a byte every 250 ms, 15 s of it), started now and
/// checked by [`SlowHead::assert_cut`] at the end of a test, while everything else runs.
struct SlowHead {
    what: &'static str,
    sent: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<Option<Duration>>,
}

impl SlowHead {
    fn start(what: &'static str, addr: SocketAddr, path: &str) -> Self {
        let head = format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: {}",
            "a".repeat(40)
        );
        assert!(head.len() * 250 > 15_000);
        let sent = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(slowloris(
            Port::Tcp(addr),
            head.into_bytes(),
            Duration::from_millis(250),
            sent.clone(),
        ));
        Self { what, sent, task }
    }

    /// The server cut it off at its 10 s header read timeout, not before.
    async fn assert_cut(self) {
        let what = self.what;
        let cut = self.task.await.unwrap();
        let bytes = self.sent.load(Ordering::SeqCst);
        eprintln!("{what}: slow head cut after {cut:?}, {bytes} bytes");
        let cut = cut.unwrap_or_else(|| panic!("{what}: the slow head was not cut off"));
        // The client's clock starts after its connect returns, the server's at accept, so the
        // client can see the cut a few ms before 10 s (seen in CI: 9.999 s).
        assert!(
            cut >= Duration::from_millis(9_500) && cut < Duration::from_secs(15),
            "{what}: cut at the 10 s head deadline: {cut:?}"
        );
    }
}

/// RSS of one process before the abuse, checked against [`RSS_BOUND_KIB`] after it.
#[derive(Debug)]
struct Rss {
    what: &'static str,
    before: u64,
}

impl Rss {
    fn before(what: &'static str, proc: &Proc) -> Self {
        Self {
            what,
            before: rss_kib(proc.pid()),
        }
    }

    /// Checks that the process still runs and its RSS is within the bound.
    fn check(&self, proc: &mut Proc) -> u64 {
        proc.assert_running();
        let now = rss_kib(proc.pid());
        let (what, before) = (self.what, self.before);
        eprintln!("{what}: RSS {before} KiB before, {now} KiB now");
        assert!(
            now <= before + RSS_BOUND_KIB,
            "{what}: RSS grew from {before} KiB to {now} KiB (bound +{RSS_BOUND_KIB} KiB)"
        );
        now
    }
}

// === jwt-auth-helper ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_auth_helper_ext_authz_tcp_and_unix_and_admin_survive_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(AgentConfig::new(
        Endpoint::Unix(dir.path().join("agent.sock")),
        TrustDomain::new("example.org").unwrap(),
    ))
    .await
    .unwrap();
    let endpoint = agent.endpoint().to_string();
    let args = ["--mode", "jwt_svid_validator", "--audience", AUD];
    let mut tcp = JwtHelper::start(dir.path(), &endpoint, &args);
    let unix_dir = dir.path().join("unix");
    std::fs::create_dir(&unix_dir).unwrap();
    let (mut unix, socket) = JwtHelper::start_unix(&unix_dir, &endpoint, &args);
    tcp.wait_ready(Duration::from_secs(10));
    unix.wait_ready(Duration::from_secs(10));

    let client_id = "spiffe://example.org/ns/default/sa/client";
    let token = agent
        .authority()
        .sign_claims(&claims(client_id, AUD, 300))
        .unwrap();
    let bearer = format!("Bearer {token}");
    let tcp_client = tcp.client().await;
    let unix_client =
        envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient::new(
            lazy_channel(&Endpoint::Unix(socket.clone())),
        );
    let probe = |client: &envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient<tonic::transport::Channel>| {
        let mut client = client.clone();
        let bearer = bearer.clone();
        async move {
            let v = check(&mut client, "svc", &[("authorization", &bearer)]).await;
            assert!(matches!(v, Verdict::Allowed(_)), "served meanwhile: {v:?}");
        }
    };
    probe(&tcp_client).await;
    probe(&unix_client).await;
    let slow_admin = SlowHead::start("jwt-auth-helper admin", tcp.admin, "/healthz");
    let rss_tcp = Rss::before("jwt-auth-helper (TCP)", &tcp.proc);
    let rss_unix = Rss::before("jwt-auth-helper (Unix)", &unix.proc);

    // A CheckRequest whose header value is not UTF-8.
    let mut utf8 = check_request("svc", &[("x-bad", "¤¤")]).encode_to_vec();
    utf8 = with_invalid_utf8(utf8);
    for (port, client, max) in [
        (Port::Tcp(tcp.listen), &tcp_client, 4096),
        (Port::Unix(socket.clone()), &unix_client, 4096),
        (Port::Tcp(tcp.listen), &tcp_client, 4096),
        (Port::Unix(socket.clone()), &unix_client, 4096),
    ] {
        let o = grpc_battery(&port, CHECK, max, utf8.clone(), || probe(client)).await;
        eprintln!("jwt-auth-helper {port:?}: {o:#?}");
        assert!(
            o.random_closed,
            "{port:?}: random bytes close the connection"
        );
        o.assert_expected(&port, max);
        let _ = match port {
            Port::Tcp(_) => rss_tcp.check(&mut tcp.proc),
            Port::Unix(_) => rss_unix.check(&mut unix.proc),
        };
    }

    // Huge audience lists: a signed token naming 10,000 audiences is refused by its size
    // before any parsing (ours among them or not); the spiffe crate refuses more than 32
    // (as malformed JSON, before the signature is looked at), and accepts 32, ours last.
    let signed = |n: usize, ours: bool| {
        let mut c = claims(client_id, AUD, 300);
        c.aud = (0..n)
            .map(|i| format!("spiffe://example.org/aud-{i}"))
            .collect();
        if ours {
            c.aud.push(AUD.to_owned());
        }
        format!("Bearer {}", agent.authority().sign_claims(&c).unwrap())
    };
    let mut c = tcp_client.clone();
    let started = Instant::now();
    for ours in [true, false] {
        let huge = check(&mut c, "svc", &[("authorization", &signed(10_000, ours))]).await;
        assert_eq!(huge.status(), 401, "{huge:?}");
        let Verdict::Denied { body, .. } = huge else {
            unreachable!()
        };
        assert!(body.contains("longer than 16384 bytes"), "{body}");
    }
    let most = check(&mut c, "svc", &[("authorization", &signed(31, true))]).await;
    assert!(matches!(most, Verdict::Allowed(_)), "{most:?}");
    let others = check(&mut c, "svc", &[("authorization", &signed(32, false))]).await;
    assert_eq!(others.status(), 401, "{others:?}");
    let over = check(&mut c, "svc", &[("authorization", &signed(32, true))]).await;
    assert_eq!(over.status(), 401, "{over:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // A slow client on ext_authz (a byte every 250 ms): others are served meanwhile; the
    // server keeps the slow connection (no deadline on an HTTP/2 preface).
    let cut = slow_client_while_served(&Port::Tcp(tcp.listen), &PREFACE[..12], || {
        probe(&tcp_client)
    })
    .await;
    assert!(!cut, "ext_authz keeps a slow client's connection");

    // The admin port: random bytes, an oversized head, invalid UTF-8, slow clients.
    let admin = Port::Tcp(tcp.admin);
    let outcome = http1_battery(&admin, "/healthz", || async {
        assert_eq!(tcp.readyz(), 200);
    })
    .await;
    eprintln!("jwt-auth-helper admin: {outcome:#?}");
    outcome.assert_expected("jwt-auth-helper admin");
    slow_admin.assert_cut().await;

    rss_tcp.check(&mut tcp.proc);
    rss_unix.check(&mut unix.proc);
}

// === HTTP/1 listeners ===

#[derive(Debug)]
struct Http1Outcome {
    random_closed: bool,
    random_status: String,
    oversized_status: String,
    invalid_utf8_status: String,
    slow_cut: bool,
}

/// The status code of an HTTP/1 answer (`"none"` if there was none).
fn status_of(answer: &[u8]) -> String {
    let text = String::from_utf8_lossy(answer);
    text.strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3))
        .unwrap_or("none")
        .to_owned()
}

/// The wire battery for an HTTP/1 `port` serving `path`; `probe` runs while a slow client is
/// mid-way.
async fn http1_battery<Fut: Future<Output = ()>>(
    port: &Port,
    path: &str,
    probe: impl FnOnce() -> Fut,
) -> Http1Outcome {
    let random = send_and_read_to_close(port, &random_bytes(256 * 1024)).await;
    let random_closed = random.is_some();
    let random_status = status_of(&random.unwrap_or_default());
    let big = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: {}\r\n\r\n",
        "a".repeat(1024 * 1024)
    );
    let oversized = send_and_read_to_close(port, big.as_bytes())
        .await
        .unwrap_or_default();
    let mut bad = format!(
        "GET {path}?q=¤¤ HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Bad: ¤¤\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    bad = with_invalid_utf8(bad);
    let invalid = send_and_read_to_close(port, &bad).await.unwrap_or_default();
    let slow_cut = slow_client_while_served(
        port,
        &format!("GET {path} HTTP/1.1\r\n").as_bytes()[..12],
        probe,
    )
    .await;
    Http1Outcome {
        random_closed,
        random_status,
        oversized_status: status_of(&oversized),
        invalid_utf8_status: status_of(&invalid),
        slow_cut,
    }
}

// === sds-bridge ===

fn sds_request(names: &[String]) -> DiscoveryRequest {
    DiscoveryRequest {
        resource_names: names.to_vec(),
        type_url: SECRET.to_owned(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sds_bridge_sds_socket_jwks_and_admin_survive_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let agent = DevAgent::start(
        dir.path(),
        &[
            "--trust-domain",
            "example.org",
            "--spiffe-id",
            "spiffe://example.org/web",
        ],
    );
    let jwks: SocketAddr = format!("127.0.0.1:{}", suite_tests::free_port())
        .parse()
        .unwrap();
    let mut bridge = SdsBridge::start(
        "sds-bridge",
        dir.path(),
        &agent.endpoint,
        &["--jwks-listen", &jwks.to_string()],
    );
    bridge.wait_ready(Duration::from_secs(10));
    let sds =
        SecretDiscoveryServiceClient::new(lazy_channel(&Endpoint::Unix(bridge.socket.clone())));
    let probe = || {
        let mut sds = sds.clone();
        async move {
            let r = sds
                .fetch_secrets(sds_request(&["default".to_owned()]))
                .await
                .expect("served meanwhile")
                .into_inner();
            assert_eq!(r.resources.len(), 1);
        }
    };
    probe().await;
    let rss = Rss::before("sds-bridge", &bridge.proc);
    let slow = [
        SlowHead::start("JWKS", jwks, "/jwks/example.org"),
        SlowHead::start("sds-bridge admin", bridge.admin, "/healthz"),
    ];

    // A DiscoveryRequest whose resource name is not UTF-8.
    let utf8 = with_invalid_utf8(sds_request(&["¤¤".to_owned()]).encode_to_vec());
    let port = Port::Unix(bridge.socket.clone());
    for _round in 0..2 {
        // FetchSecrets: a unary call, so the 10,000 parked streams each wait for a body.
        let o = grpc_battery(&port, FETCH_SECRETS, 128, utf8.clone(), probe).await;
        eprintln!("sds-bridge SDS socket: {o:#?}");
        o.assert_expected(&port, 128);
        rss.check(&mut bridge.proc);
    }
    // StreamSecrets with a first request that is not protobuf: the stream ends INTERNAL.
    let code = grpc_raw(&port, STREAM_SECRETS, grpc_frame(&random_bytes(512))).await;
    assert_eq!(code, INTERNAL);

    // 10,000 names in one request: unary is refused whole, a stream keeps the first 256.
    let names: Vec<String> = (0..10_000)
        .map(|i| format!("spiffe://example.org/name-{i}"))
        .collect();
    let mut with_default = names.clone();
    with_default.insert(0, "default".to_owned());
    let refused = sds
        .clone()
        .fetch_secrets(sds_request(&with_default))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(sds_request(&with_default)).await.unwrap();
    let mut stream = sds
        .clone()
        .stream_secrets(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(READ_LIMIT, stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.resources.len(), 1, "only `default` exists");
    let over = bridge.metric("sds_bridge_refusals_total{reason=\"names_per_request\"}");
    assert!(over >= (10_001 - 256) as f64, "{over}");
    probe().await;
    drop((tx, stream));

    // The JWKS endpoint and the admin port: HTTP/1 listeners.
    for (what, addr, path) in [
        ("JWKS", jwks, "/jwks/example.org"),
        ("admin", bridge.admin, "/healthz"),
    ] {
        let outcome = http1_battery(&Port::Tcp(addr), path, probe).await;
        eprintln!("sds-bridge {what}: {outcome:#?}");
        outcome.assert_expected(what);
    }
    for head in slow {
        head.assert_cut().await;
    }
    let served = suite_tests::envoy::request(jwks, "GET", "/jwks/example.org", &[]).unwrap();
    assert_eq!(served.status, 200);
    rss.check(&mut bridge.proc);
}

impl Http1Outcome {
    /// What hyper answers on every HTTP/1 listener of ours.
    fn assert_expected(&self, what: &str) {
        assert!(
            self.random_closed,
            "{what}: random bytes close the connection"
        );
        assert_eq!(self.random_status, "400", "{what}");
        assert_eq!(self.oversized_status, "431", "{what}");
        assert_eq!(self.invalid_utf8_status, "400", "{what}");
        // Others were served while it trickled; the head deadline is 10 s ([`SlowHead`]).
        assert!(!self.slow_cut, "{what}: slow client cut within 3 s");
    }
}

// === The dev agent's Workload API ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_agent_workload_api_survives_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let mut agent = DevAgent::start(dir.path(), &["--spiffe-id", "spiffe://example.org/web"]);
    let client = WorkloadApiClient::new(Endpoint::parse(&agent.endpoint).unwrap());
    let probe = || {
        let client = client.clone();
        async move {
            let svid = client.fetch_jwt_svid(&["backend".to_owned()], None).await;
            assert!(svid.is_ok(), "served meanwhile: {svid:?}");
        }
    };
    probe().await;
    let rss = Rss::before("spiffe-dev-agent", &agent.proc);
    // A JWTSVIDRequest whose audience is not UTF-8.
    let mut utf8 = vec![0x0a, 4];
    utf8.extend("¤¤".as_bytes());
    let utf8 = with_invalid_utf8(utf8);
    let port = Port::Unix(agent.socket.clone());
    for _round in 0..2 {
        let o = grpc_battery(&port, FETCH_JWT, 1024, utf8.clone(), probe).await;
        eprintln!("dev agent: {o:#?}");
        o.assert_expected(&port, 1024);
        rss.check(&mut agent.proc);
    }
}

// === iam-broker ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iam_broker_credentials_and_admin_ports_survive_bad_input() {
    use suite_tests::aws::{Broker, Moto, StsProxy};
    let dir = tempfile::tempdir().unwrap();
    let agent = DevAgent::start(
        dir.path(),
        &[
            "--spiffe-id",
            "spiffe://example.org/ns/default/sa/web",
            "--jwt-ttl",
            "5m",
        ],
    );
    let moto = Moto::start(dir.path());
    let proxy = StsProxy::start(moto.addr);
    let mut broker = Broker::start(dir.path(), &agent.endpoint, &proxy.url(), &[], &[]);
    broker.wait_ready(Duration::from_secs(30));
    let creds = broker.creds();
    assert_eq!(creds.status, 200, "{}", creds.body);
    let listen = broker.listen;
    let probe = || async move {
        let r = suite_tests::envoy::request(listen, "GET", "/v1/creds", &[]).unwrap();
        assert_eq!(r.status, 200, "served meanwhile: {}", r.body);
    };
    let rss = Rss::before("iam-broker", &broker.proc);

    // Slow heads are cut at the 10 s header read timeout.
    let slow = [
        SlowHead::start("credentials", listen, "/v1/creds"),
        SlowHead::start("admin", broker.admin, "/healthz"),
    ];

    for (what, addr, path) in [
        ("credentials", listen, "/v1/creds"),
        ("admin", broker.admin, "/healthz"),
    ] {
        let outcome = http1_battery(&Port::Tcp(addr), path, probe).await;
        eprintln!("iam-broker {what}: {outcome:#?}");
        outcome.assert_expected(what);
        rss.check(&mut broker.proc);
    }
    // HTTP/2 with prior knowledge on the HTTP/1-only credentials port: closed unanswered.
    let h2 = send_and_read_to_close(&Port::Tcp(listen), &h2_start())
        .await
        .expect("closed");
    assert!(h2.is_empty(), "{:?}", String::from_utf8_lossy(&h2));

    for head in slow {
        head.assert_cut().await;
    }
    probe().await;
    // Nothing disturbed: one STS call for all of it.
    assert_eq!(proxy.assume_calls(), 1);
    rss.check(&mut broker.proc);
}

#[test]
fn iam_broker_gcp_refuses_huge_and_invalid_scope_lists_and_keeps_serving() {
    use suite_tests::gcp::{PROJECT_ID, PROVIDER};
    const TOKEN: &str = "/computeMetadata/v1/instance/service-accounts/default/token";
    let dir = tempfile::tempdir().unwrap();
    let agent = DevAgent::start(dir.path(), &["--spiffe-id", "spiffe://example.org/web"]);
    // Scope lists are judged before any exchange: no Google is needed (nothing listens here).
    let google = format!("https://127.0.0.1:{}", suite_tests::free_port());
    let mut broker = suite_tests::azure::start_broker(
        dir.path(),
        &agent.endpoint,
        &[
            "gcp",
            "--audience",
            PROVIDER,
            "--project-id",
            PROJECT_ID,
            "--sts-endpoint",
            &google,
            "--iam-credentials-endpoint",
            &google,
        ],
        &[],
    );
    let flavor = [("Metadata-Flavor", "Google")];
    let get =
        |path: &str| suite_tests::envoy::request(broker.listen, "GET", path, &flavor).unwrap();
    let rss = Rss::before("iam-broker gcp", &broker.proc);
    let scopes = |n: usize| {
        (0..n)
            .map(|i| format!("https://www.googleapis.com/auth/s{i}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    // 10,000 scopes do not fit a 16 KiB head; 17 fit and are refused by the parser.
    assert_eq!(
        get(&format!("{TOKEN}?scopes={}", scopes(10_000))).status,
        431
    );
    let r = get(&format!("{TOKEN}?scopes={}", scopes(17)));
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("at most 16 scopes"), "{}", r.body);
    // Percent-encoded bytes that are not UTF-8.
    let r = get(&format!(
        "{TOKEN}?scopes=https://www.googleapis.com/auth/%C0%FF%FE%80"
    ));
    assert_eq!(r.status, 400, "{}", r.body);
    // Served meanwhile: what needs no exchange.
    let r = get("/computeMetadata/v1/project/project-id");
    assert_eq!((r.status, r.body.as_str()), (200, PROJECT_ID));
    rss.check(&mut broker.proc);
}

#[test]
fn iam_broker_azure_refuses_huge_and_invalid_resources_and_keeps_serving() {
    use suite_tests::azure::{CLIENT_ID, TENANT};
    const SECRET_HEADER: &str = "wire-abuse-identity-header";
    let dir = tempfile::tempdir().unwrap();
    let agent = DevAgent::start(dir.path(), &["--spiffe-id", "spiffe://example.org/web"]);
    // Resources are judged before any exchange: no Entra ID is needed (nothing listens here).
    let entra = format!("https://127.0.0.1:{}", suite_tests::free_port());
    let mut broker = suite_tests::azure::start_broker(
        dir.path(),
        &agent.endpoint,
        &[
            "azure",
            "--tenant-id",
            TENANT,
            "--client-id",
            CLIENT_ID,
            "--authority-host",
            &entra,
        ],
        &[("IDENTITY_HEADER", SECRET_HEADER)],
    );
    let rss = Rss::before("iam-broker azure", &broker.proc);
    let msi = |query: &str| {
        let path = format!("/msi/token?api-version=2019-08-01&{query}");
        let headers = [("X-IDENTITY-HEADER", SECRET_HEADER)];
        let r = suite_tests::envoy::request(broker.listen, "GET", &path, &headers).unwrap();
        (r.status, r.body)
    };
    let long = format!("resource=https://{}", "a".repeat(10_000));
    let many = (0..300)
        .map(|i| format!("resource=https://r{i}.example"))
        .collect::<Vec<_>>()
        .join("&");
    let huge = (0..10_000)
        .map(|i| format!("resource=https://r{i}.example"))
        .collect::<Vec<_>>()
        .join("&");
    for (query, status, says) in [
        (long.as_str(), 400, "a resource must be 1 to"),
        (many.as_str(), 400, "more than one resource"),
        (huge.as_str(), 431, ""),
        ("resource=https://%C0%FF%FE%80", 400, "printable ASCII"),
    ] {
        let (got, body) = msi(query);
        assert_eq!(got, status, "{body}");
        assert!(body.contains(says), "{body}");
    }
    // Served meanwhile: probes and metrics.
    let (status, _) = suite_tests::http(broker.admin, "GET", "/healthz").unwrap();
    assert_eq!(status, 200);
    rss.check(&mut broker.proc);
}

const STREAM_EXTENSION_CONFIGS: &str =
    "/envoy.service.extension.v3.ExtensionConfigDiscoveryService/StreamExtensionConfigs";
const TYPED_EXTENSION_CONFIG: &str =
    "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sds_bridge_ecds_survives_bad_input_and_keeps_serving_its_one_resource() {
    use envoy_types::pb::envoy::service::extension::v3::extension_config_discovery_service_client::ExtensionConfigDiscoveryServiceClient;
    use tokio_stream::StreamExt as _;

    let dir = tempfile::tempdir().unwrap();
    let agent = DevAgent::start(
        dir.path(),
        &[
            "--trust-domain",
            "example.org",
            "--spiffe-id",
            "spiffe://example.org/web",
        ],
    );
    let mut bridge = SdsBridge::start(
        "sds-bridge",
        dir.path(),
        &agent.endpoint,
        &[
            "--ecds-audience",
            "spiffe://example.org/backend",
            "--ecds-trust-domain",
            "example.org",
        ],
    );
    let port = Port::Unix(bridge.socket.clone());
    // Not protobuf; a name that is not UTF-8: the stream ends INTERNAL, the bridge carries on.
    let code = grpc_raw(
        &port,
        STREAM_EXTENSION_CONFIGS,
        grpc_frame(&random_bytes(512)),
    )
    .await;
    assert_eq!(code, INTERNAL);
    let request = |names: Vec<String>, type_url: &str| DiscoveryRequest {
        type_url: type_url.to_owned(),
        resource_names: names,
        ..Default::default()
    };
    let utf8 =
        with_invalid_utf8(request(vec!["¤¤".to_owned()], TYPED_EXTENSION_CONFIG).encode_to_vec());
    assert_eq!(
        grpc_raw(&port, STREAM_EXTENSION_CONFIGS, grpc_frame(&utf8)).await,
        INTERNAL
    );
    bridge.proc.assert_running();

    // Another type, then 10,000 names (long ones among them) with ours last: the wrong type is
    // ignored, and the one resource arrives.
    let client = ExtensionConfigDiscoveryServiceClient::new(lazy_channel(&Endpoint::Unix(
        bridge.socket.clone(),
    )));
    let mut names: Vec<String> = (0..10_000)
        .map(|i| format!("{i}-{}", "x".repeat(i % 300)))
        .collect();
    names.push("spiffe-jwt-authn".to_owned());
    let requests = tokio_stream::iter([
        request(
            vec!["spiffe-jwt-authn".to_owned()],
            "type.googleapis.com/envoy.config.cluster.v3.Cluster",
        ),
        request(names, TYPED_EXTENSION_CONFIG),
    ])
    .chain(tokio_stream::pending());
    let mut responses = client
        .clone()
        .stream_extension_configs(requests)
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), responses.message())
        .await
        .expect("the config within 10 s")
        .unwrap()
        .unwrap();
    assert_eq!(first.type_url, TYPED_EXTENSION_CONFIG);
    assert_eq!(first.resources.len(), 1);
    // Unary fetch and delta are refused, not served.
    let fetch = client
        .clone()
        .fetch_extension_configs(request(vec![], TYPED_EXTENSION_CONFIG))
        .await
        .unwrap_err();
    assert_eq!(fetch.code(), tonic::Code::Unimplemented);
    bridge.proc.assert_running();
    assert_eq!(bridge.metric("sds_bridge_ecds_pushes_total"), 1.0);
    assert_eq!(bridge.metric("sds_bridge_ecds_streams"), 1.0);
}

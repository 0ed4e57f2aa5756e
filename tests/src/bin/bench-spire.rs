//! `cargo xtask bench spire`: sds-bridge, fed by a SPIRE agent, side by side with the SDS server
//! that SPIRE agent runs itself on its Workload API socket, in one run on one agent.
//!
//! One SPIRE server and agent; one registration entry selecting every process of this user
//! (`unix:uid`), so the bridge, both Envoys, the stream clients below and a probe all hold the
//! same SPIFFE ID and see the same SVID rotation at the same moment. The entry's X.509-SVIDs
//! live 14 s: SPIRE backdates `notBefore` by 10 s and renews at half of notBefore→notAfter
//! (± 10 %), checked at each 1 s cache sync, so a rotation every 1–4 s. Its JWT-SVIDs live
//! 10 s.
//!
//! 1. Push-to-ACK with real Envoys subscribed to `default` and `ROOTCA` (Istio's shape), one
//!    through the bridge, one straight at SPIRE's SDS, from the agent's cache taking the new
//!    SVID (its DEBUG log's `SVID updated`, which it writes just before telling every
//!    subscriber) to the ACK as each server logged it (the bridge's `secrets acknowledged`,
//!    SPIRE's `Received StreamSecrets request` carrying the pushed nonce): one wall clock, to
//!    the nanosecond. Also each server's own push→ACK, and what Envoy counted of each secret.
//! 2. Then both at INFO (at DEBUG each logs per stream and push) and SVIDs of 22 s (a rotation
//!    every 4–8 s, so one push to 1,000 streams is done before the next): 1,000 SDS streams
//!    (one connection each, as 1,000 proxies), `default` + `ROOTCA`. RSS (the bridge's process,
//!    the agent's growth); over the same number of rotations, the CPU time of the bridge and of
//!    the agent, above a window with no streams at all; and per rotation the time from the
//!    first to the last stream receiving it (each push is matched by its certificate's serial).
//! 3. FetchJWTSVID at the agent (SPIRE's own Prometheus counter) with 1,000 requests/s through
//!    Envoy for 60 s: jwt-auth-helper (ext_authz), then credential_injector with a `jwt-svid:`
//!    secret from the bridge; against one call per audience per half-life, what the refresh
//!    schedule with SPIRE's token reuse predicts (`rates`), and one call per request.
//!
//! Absolute times drift on a shared VM; the ratios are within one run.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use suite_tests::envoy::{EchoServer, Envoy, ext_authz_proxy};
use suite_tests::procfs::{cpu_ticks, rss_kib};
use suite_tests::rates;
use suite_tests::sds::{
    SdsBridge, Shape, bootstrap, common_tls_context, credential_injector_listener, mtls_listener,
    sds_cluster,
};
use suite_tests::sidecars::JwtHelper;
use suite_tests::spire::{ServerOptions, Spire};
use suite_tests::stats::{ms, quantile};
use suite_tests::{free_port, wait_until};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use workload_client::{Endpoint, WorkloadApiClient, lazy_channel};

const TD: &str = "example.org";
const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
/// The entry's X.509-SVID lifetime: a rotation every 1–4 s (see above).
const X509_TTL: &str = "14";
/// From the fan-out on (lifetime 32 s, renewed with 14–18 s left): a rotation every 4–8 s.
const FAN_OUT_X509_TTL: &str = "22";
/// The entry's JWT-SVID lifetime (s).
const JWT_TTL: u64 = 10;
const ROTATIONS: usize = 40;
const STREAMS: usize = 1000;
/// Rotations per CPU window.
const WINDOW: usize = 6;
const RATE: f64 = 1000.0;
const LOAD_SECONDS: f64 = 60.0;

fn wall() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn request(version: &str, nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        version_info: version.to_owned(),
        resource_names: vec!["default".to_owned(), "ROOTCA".to_owned()],
        type_url: SECRET.to_owned(),
        response_nonce: nonce.to_owned(),
        ..Default::default()
    }
}

// === the probe: when the agent hands out a rotated SVID ===

/// Wall-clock times at which a FetchX509SVID stream in this process received a new SVID.
fn probe(endpoint: &str) -> mpsc::UnboundedReceiver<f64> {
    probe_serials(endpoint, |_| ())
}

/// [`probe`], also telling `seen` each new SVID's serial number.
fn probe_serials(
    endpoint: &str,
    seen: impl Fn(String) + Send + 'static,
) -> mpsc::UnboundedReceiver<f64> {
    let (tx, rx) = mpsc::unbounded_channel();
    let client = WorkloadApiClient::new(Endpoint::parse(endpoint).unwrap());
    tokio::spawn(async move {
        let mut stream = client.stream_x509_svids().await.unwrap();
        let mut last = Vec::new();
        while let Ok(Some(update)) = stream.message().await {
            let at = wall();
            let cert = update
                .svids
                .first()
                .map(|s| s.x509_svid.clone())
                .unwrap_or_default();
            if cert != last {
                seen(serial(&cert).unwrap_or_default());
                last = cert;
                if tx.send(at).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

/// The next rotation the probe saw after those already taken from `rx`.
async fn next_rotation(rx: &mut mpsc::UnboundedReceiver<f64>) -> f64 {
    tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("an SVID rotation within 30 s")
        .unwrap()
}

/// Drops the rotations seen so far and returns the next one.
async fn fresh_rotation(rx: &mut mpsc::UnboundedReceiver<f64>) -> f64 {
    while rx.try_recv().is_ok() {}
    next_rotation(rx).await
}

/// The serial number (hex) of the first certificate in `der` (one or more DER certificates).
fn serial(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(cert.raw_serial_as_string())
}

/// The serial of the certificate a `default` push carries (PEM), if it carries one.
fn pushed_serial(r: &DiscoveryResponse) -> Option<String> {
    use base64::Engine as _;
    use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{Secret, secret};
    use prost::Message as _;
    r.resources.iter().find_map(|any| {
        let s = Secret::decode(any.value.as_slice()).ok()?;
        let Some(secret::Type::TlsCertificate(tls)) = s.r#type else {
            return None;
        };
        let Some(Specifier::InlineBytes(pem)) = tls.certificate_chain?.specifier else {
            return None;
        };
        let pem = String::from_utf8(pem).ok()?;
        let body: String = pem
            .split("-----END CERTIFICATE-----")
            .next()?
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        serial(
            &base64::engine::general_purpose::STANDARD
                .decode(body)
                .ok()?,
        )
    })
}

// === logs ===

/// RFC 3339 UTC (`2026-01-02T03:04:05.123456789Z`) as Unix seconds.
fn parse_time(t: &str) -> Option<f64> {
    let t = t.strip_suffix('Z')?;
    let (date, time) = t.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut h = time.split(':');
    let (hh, mm) = (
        h.next()?.parse::<i64>().ok()?,
        h.next()?.parse::<i64>().ok()?,
    );
    let ss: f64 = h.next()?.parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + hh * 3_600 + mm * 60) as f64 + ss)
}

/// The `key=value` / `key="quoted value"` fields of a logrus text line.
fn logfmt(line: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = line.trim();
    while let Some((key, after)) = rest.split_once('=') {
        let key = key.trim().to_owned();
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, e)) = chars.next() {
                            value.push(e);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            (value, &quoted[end.min(quoted.len())..])
        } else {
            let end = after.find(' ').unwrap_or(after.len());
            (after[..end].to_owned(), &after[end..])
        };
        out.insert(key, value);
        rest = next.trim_start();
    }
    out
}

/// When the agent's cache took each new SVID of `entry` (its debug log's `SVID updated`): the
/// moment both the bridge's FetchX509SVID stream and SPIRE's SDS streams are told.
fn svid_updates(log: &str, entry: &str) -> Vec<f64> {
    log.lines()
        .filter(|l| l.contains("SVID updated"))
        .map(logfmt)
        .filter(|f| f.get("msg").is_some_and(|m| m == "SVID updated"))
        .filter(|f| f.get("entry").is_some_and(|e| e == entry))
        .filter_map(|f| parse_time(f.get("time")?))
        .collect()
}

/// The SPIRE agent's SDS pushes and ACKs on `default` streams: (sent at, ACKed at).
fn spire_acks(log: &str) -> Vec<(f64, f64)> {
    let mut sent: BTreeMap<String, f64> = BTreeMap::new();
    let mut acks = Vec::new();
    for line in log.lines() {
        if !line.contains("StreamSecrets") {
            continue;
        }
        let f = logfmt(line);
        let Some(at) = f.get("time").and_then(|t| parse_time(t)) else {
            continue;
        };
        let nonce = f.get("nonce").cloned().unwrap_or_default();
        match f.get("msg").map(String::as_str) {
            Some("Sending StreamSecrets response") => {
                sent.insert(nonce, at);
            }
            Some("Received StreamSecrets request")
                if f.get("resource_names").is_some_and(|n| n == "[default]") =>
            {
                if let Some(pushed) = sent.get(&nonce) {
                    acks.push((*pushed, at));
                }
            }
            _ => {}
        }
    }
    acks
}

/// The bridge's ACKs: (ACKed at, its own push→ACK latency).
fn bridge_acks(log: &str) -> Vec<(f64, Duration)> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == "secrets acknowledged")
        .filter_map(|v| {
            Some((
                parse_time(v["timestamp"].as_str()?)?,
                Duration::from_micros(v["latency_us"].as_u64()?),
            ))
        })
        .collect()
}

/// For each rotation, the first ACK time after it (before the next rotation): the latency.
fn after_each(rotations: &[f64], acks: &[f64]) -> Vec<Duration> {
    rotations
        .iter()
        .enumerate()
        .filter_map(|(i, &at)| {
            let until = rotations.get(i + 1).copied().unwrap_or(f64::INFINITY);
            acks.iter()
                .copied()
                .filter(|&a| a > at && a < until)
                .fold(None, |first: Option<f64>, a| {
                    Some(first.map_or(a, |f| f.min(a)))
                })
                .map(|a| Duration::from_secs_f64(a - at))
        })
        .collect()
}

fn summary(label: &str, mut v: Vec<Duration>, base: Option<Duration>) -> Duration {
    let p50 = quantile(&mut v, 0.5);
    let ratio = base.map_or(String::new(), |b| {
        format!(
            "  (x{:.2} of the bridge)",
            p50.as_secs_f64() / b.as_secs_f64()
        )
    });
    println!(
        "    {label:<44} n={:<3} p50 {}  p99 {}  max {}{ratio}",
        v.len(),
        ms(p50),
        ms(quantile(&mut v, 0.99)),
        ms(quantile(&mut v, 1.0)),
    );
    p50
}

// === 1. push-to-ACK ===

async fn push_to_ack(dir: &Path, spire: &Spire, bridge: &SdsBridge, entry: &str) {
    let echo = EchoServer::start();
    let start_envoy = |name: &str, socket: &Path| {
        Envoy::start(
            name,
            dir,
            &bootstrap(
                free_port(),
                name,
                &[mtls_listener(
                    "mtls",
                    free_port(),
                    &common_tls_context(Shape::Istio, "sds", "", ""),
                )],
                &[
                    sds_cluster("sds", socket),
                    suite_tests::envoy::static_cluster("upstream", echo.addr, false),
                ],
            ),
        )
    };
    let (via_bridge, via_spire) = tokio::task::block_in_place(|| {
        (
            start_envoy("envoy-bridge", &bridge.socket),
            start_envoy("envoy-spire", &spire.agent.socket),
        )
    });
    // Paced by a Workload API client of our own; timed by the agent's log.
    let mut rx = probe(&spire.agent.endpoint);
    let first = fresh_rotation(&mut rx).await;
    for _ in 0..ROTATIONS {
        next_rotation(&mut rx).await;
    }
    // The last rotation's ACKs: give them the time every other one took.
    let settle = fresh_rotation(&mut rx).await;
    let agent_log = spire.agent.proc.log();
    let updates = svid_updates(&agent_log, entry);
    // From just before the probe's first rotation (the agent's update precedes it).
    let rotations: Vec<f64> = updates
        .iter()
        .copied()
        .filter(|&at| at > first - 1.0 && at < settle - 0.001)
        .collect();
    let rotations = &rotations[..rotations.len().min(ROTATIONS)];
    let (b_acks, s_acks) = (bridge_acks(&bridge.proc.log()), spire_acks(&agent_log));
    let b_times: Vec<f64> = b_acks.iter().map(|(at, _)| *at).collect();
    let s_times: Vec<f64> = s_acks.iter().map(|(_, at)| *at).collect();
    let in_run = |at: f64| at > rotations[0] && at < settle;
    assert!(
        rotations.len() >= ROTATIONS / 2,
        "the agent logged {} SVID updates",
        rotations.len()
    );
    let b_own: Vec<Duration> = b_acks
        .iter()
        .filter(|(at, _)| in_run(*at))
        .map(|(_, l)| *l)
        .collect();
    let s_own: Vec<Duration> = s_acks
        .iter()
        .filter(|(_, at)| in_run(*at))
        .map(|(sent, at)| Duration::from_secs_f64(at - sent))
        .collect();
    println!(
        "1. push-to-ACK, real Envoy (Istio shape: default + ROOTCA), {} rotations of one SVID seen by both:",
        rotations.len()
    );
    let base = summary(
        "new SVID in the agent's cache -> ACK, bridge",
        after_each(rotations, &b_times),
        None,
    );
    summary(
        "new SVID in the agent's cache -> ACK, SPIRE",
        after_each(rotations, &s_times),
        Some(base),
    );
    let own = summary("bridge's own: new SVID -> ACK", b_own, None);
    summary("SPIRE's own: response sent -> ACK", s_own, Some(own));
    // What each pushed: SPIRE sends every subscribed name on each update, the bridge only what
    // changed (Envoy counts each secret update it applied or found unchanged).
    for (label, envoy) in [("bridge", &via_bridge), ("SPIRE", &via_spire)] {
        let stat = |name: &str| {
            envoy
                .stats_matching(&format!("sds.{name}.update_"))
                .lines()
                .filter_map(|l| l.split_once(": "))
                .filter(|(n, _)| n.ends_with(".update_success") || n.ends_with(".update_rejected"))
                .map(|(n, v)| format!("{}={}", n.rsplit('.').next().unwrap_or(n), v.trim()))
                .collect::<Vec<_>>()
                .join(" ")
        };
        println!(
            "    Envoy via {label}: default {}; ROOTCA {}",
            stat("default"),
            stat("ROOTCA")
        );
    }
}

// === 2. 1,000 streams ===

/// `STREAMS` SDS streams to `socket`, one connection each, subscribed to `default` + `ROOTCA`,
/// ACKing every response; each response's arrival is reported with the serial of the
/// certificate it carries. Aborted on drop.
struct Streams {
    arrivals: mpsc::UnboundedReceiver<(f64, Option<String>)>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Streams {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn open_streams(socket: &Path) -> Streams {
    let (tx, mut arrivals) = mpsc::unbounded_channel::<(f64, Option<String>)>();
    let endpoint = Endpoint::Unix(socket.to_path_buf());
    let tasks = (0..STREAMS)
        .map(|_| {
            let channel = lazy_channel(&endpoint);
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut client = SecretDiscoveryServiceClient::new(channel);
                let (req_tx, req_rx) = mpsc::channel(4);
                req_tx.send(request("", "")).await.unwrap();
                let mut responses = client
                    .stream_secrets(ReceiverStream::new(req_rx))
                    .await
                    .unwrap()
                    .into_inner();
                while let Ok(Some(r)) = responses.message().await {
                    let r: DiscoveryResponse = r;
                    let _ = tx.send((wall(), pushed_serial(&r)));
                    if req_tx
                        .send(request(&r.version_info, &r.nonce))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            })
        })
        .collect();
    for _ in 0..STREAMS {
        tokio::time::timeout(Duration::from_secs(60), arrivals.recv())
            .await
            .expect("every stream answered within 60 s")
            .unwrap();
    }
    Streams { arrivals, tasks }
}

/// CPU ticks of each of `pids` over `WINDOW` rotations, and for each rotation the time from
/// the first to the last of `streams` receiving it (the pushes carry the certificate's serial).
struct Window {
    ticks: Vec<u64>,
    spread: Vec<Duration>,
    /// Rotations some stream never received (a later one superseded it).
    missed: usize,
}

/// The serials of the SVIDs the probe saw, in order.
type Serials = Arc<std::sync::Mutex<Vec<String>>>;

async fn window(
    rx: &mut mpsc::UnboundedReceiver<f64>,
    serials: &Serials,
    pids: &[u32],
    mut streams: Option<&mut Streams>,
) -> Window {
    fresh_rotation(rx).await;
    let from = serials.lock().unwrap().len();
    let before: Vec<u64> = pids.iter().map(|p| cpu_ticks(*p)).collect();
    for _ in 0..WINDOW {
        next_rotation(rx).await;
    }
    // The window's rotations: those after the one it started at.
    let ours: Vec<String> = serials.lock().unwrap()[from..].to_vec();
    let ticks = pids
        .iter()
        .zip(before)
        .map(|(p, b)| cpu_ticks(*p) - b)
        .collect();
    // Arrivals of the window's rotations by serial: (first, last, count).
    let mut by_serial: BTreeMap<String, (f64, f64, usize)> = ours
        .iter()
        .map(|s| (s.clone(), (f64::INFINITY, 0.0, 0)))
        .collect();
    if let Some(s) = streams.as_deref_mut() {
        // Until every stream had the last one too, or 10 s passed.
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Ok(Some((at, serial))) =
            tokio::time::timeout_at(deadline.into(), s.arrivals.recv()).await
        {
            if let Some(e) = serial.and_then(|s| by_serial.get_mut(&s)) {
                e.0 = e.0.min(at);
                e.1 = e.1.max(at);
                e.2 += 1;
            }
            if by_serial.values().all(|v| v.2 == STREAMS) {
                break;
            }
        }
    }
    let spread = by_serial
        .values()
        .filter(|v| v.2 == STREAMS)
        .map(|v| Duration::from_secs_f64(v.1 - v.0))
        .collect::<Vec<_>>();
    let missed = if streams.is_some() {
        by_serial.values().filter(|v| v.2 < STREAMS).count()
    } else {
        0
    };
    Window {
        ticks,
        spread,
        missed,
    }
}

async fn fan_out(spire: &Spire, bridge: &SdsBridge) {
    let (agent, bridge_pid) = (spire.agent.proc.pid(), bridge.proc.pid());
    let pids = [agent, bridge_pid];
    let serials: Serials = Arc::default();
    let seen = serials.clone();
    let mut rx = probe_serials(&spire.agent.endpoint, move |s| seen.lock().unwrap().push(s));
    let per_rotation = |ticks: u64| ticks as f64 * 10.0 / WINDOW as f64;

    // No SDS stream anywhere: what rotations cost the agent and the bridge by themselves.
    let idle = window(&mut rx, &serials, &pids, None).await;

    let bridge_idle = rss_kib(bridge_pid);
    let mut streams = open_streams(&bridge.socket).await;
    let bridge_loaded = rss_kib(bridge_pid);
    let via_bridge = window(&mut rx, &serials, &pids, Some(&mut streams)).await;
    drop(streams);
    tokio::task::block_in_place(|| {
        wait_until(
            "the bridge's streams closed",
            Duration::from_secs(30),
            || bridge.metric("sds_bridge_streams") == 0.0,
        );
    });

    let agent_before = rss_kib(agent);
    let mut streams = open_streams(&spire.agent.socket).await;
    let agent_loaded = rss_kib(agent);
    let via_spire = window(&mut rx, &serials, &pids, Some(&mut streams)).await;
    drop(streams);

    println!(
        "2. {STREAMS} SDS streams (one connection each, default + ROOTCA), {WINDOW} rotations per window:"
    );
    println!(
        "    memory: bridge {bridge_idle} -> {bridge_loaded} KiB ({:.1} KiB per stream); SPIRE agent {agent_before} -> {agent_loaded} KiB ({:.1} KiB per stream, x{:.2} of the bridge)",
        (bridge_loaded as f64 - bridge_idle as f64) / STREAMS as f64,
        (agent_loaded as f64 - agent_before as f64) / STREAMS as f64,
        (agent_loaded as f64 - agent_before as f64) / (bridge_loaded as f64 - bridge_idle as f64),
    );
    let (agent_idle, bridge_idle_cpu) = (per_rotation(idle.ticks[0]), per_rotation(idle.ticks[1]));
    let bridge_cost = per_rotation(via_bridge.ticks[1]) - bridge_idle_cpu;
    let agent_cost_bridge = per_rotation(via_bridge.ticks[0]) - agent_idle;
    let agent_cost_spire = per_rotation(via_spire.ticks[0]) - agent_idle;
    println!(
        "    CPU per rotation (10 ms ticks, over the idle window's agent {agent_idle:.0} ms and bridge {bridge_idle_cpu:.0} ms): bridge's streams: bridge +{bridge_cost:.0} ms, agent +{agent_cost_bridge:.0} ms; SPIRE's streams: agent +{agent_cost_spire:.0} ms (x{:.2} of bridge + agent)",
        agent_cost_spire / (bridge_cost + agent_cost_bridge).max(1.0)
    );
    let (missed_b, missed_s) = (via_bridge.missed, via_spire.missed);
    let mut b = via_bridge.spread;
    let mut s = via_spire.spread;
    let (b50, s50) = (quantile(&mut b, 0.5), quantile(&mut s, 0.5));
    println!(
        "    one rotation, first -> last of {STREAMS} streams pushed: bridge p50 {} max {} (n={}, {missed_b} partial); SPIRE p50 {} max {} (n={}, {missed_s} partial) (x{:.2})",
        ms(b50),
        ms(quantile(&mut b, 1.0)),
        b.len(),
        ms(s50),
        ms(quantile(&mut s, 1.0)),
        s.len(),
        s50.as_secs_f64() / b50.as_secs_f64(),
    );
}

// === 3. FetchJWTSVID load ===

/// `RATE` requests/s for `LOAD_SECONDS` to `port` over 4 keep-alive connections: (answered 200,
/// other answers or failures, seconds taken).
fn paced_load(port: u16) -> (u64, u64, f64) {
    let ok = Arc::new(AtomicU64::new(0));
    let bad = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let workers = 4;
    let start = Instant::now();
    let threads: Vec<_> = (0..workers)
        .map(|w| {
            let (ok, bad, stop) = (ok.clone(), bad.clone(), stop.clone());
            std::thread::spawn(move || {
                let interval = Duration::from_secs_f64(workers as f64 / RATE);
                let mut due = start + interval.mul_f64(w as f64 / workers as f64);
                let mut conn: Option<(TcpStream, BufReader<TcpStream>)> = None;
                while !stop.load(Ordering::Relaxed) && start.elapsed().as_secs_f64() < LOAD_SECONDS
                {
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                    due += interval;
                    if conn.is_none() {
                        conn = TcpStream::connect(addr(port)).ok().map(|s| {
                            s.set_nodelay(true).unwrap();
                            let r = BufReader::new(s.try_clone().unwrap());
                            (s, r)
                        });
                    }
                    let status = conn.as_mut().and_then(|(w, r)| get(w, r));
                    match status {
                        Some(200) => ok.fetch_add(1, Ordering::Relaxed),
                        Some(_) => bad.fetch_add(1, Ordering::Relaxed),
                        None => {
                            conn = None;
                            bad.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    (
        ok.load(Ordering::Relaxed),
        bad.load(Ordering::Relaxed),
        start.elapsed().as_secs_f64(),
    )
}

/// One keep-alive `GET /`: the status, after reading the whole response.
fn get(w: &mut TcpStream, r: &mut BufReader<TcpStream>) -> Option<u16> {
    w.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n").ok()?;
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let status = line.split_whitespace().nth(1)?.parse().ok()?;
    let mut length = 0usize;
    loop {
        line.clear();
        r.read_line(&mut line).ok()?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((name, value)) = l.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().ok()?;
        }
    }
    let mut body = vec![0; length];
    r.read_exact(&mut body).ok()?;
    Some(status)
}

fn jwt_load(dir: &Path, spire: &Spire, bridge: &SdsBridge) {
    let echo = EchoServer::start();
    let ideal = LOAD_SECONDS / (JWT_TTL as f64 / 2.0);
    let model = rates::JwtFetches {
        agent: rates::JwtAgent::Spire,
        ttl: JWT_TTL as f64,
        keys: vec![1],
        duration: LOAD_SECONDS,
        down: 0.0,
        interruptions: 0,
    };
    let expected = rates::simulate_jwt_fetches(&model, 200);
    println!(
        "3. FetchJWTSVID at the agent (spire_agent_rpc_workload_api_fetch_jwtsvid) during {LOAD_SECONDS:.0} s of {RATE:.0} requests/s through Envoy, {JWT_TTL} s JWT-SVIDs:"
    );
    println!(
        "    ideal one per audience per half-life: {ideal:.0}; the refresh schedule with SPIRE's reuse: {expected:.1}; one per request: {:.0}",
        RATE * LOAD_SECONDS
    );

    // jwt-auth-helper via ext_authz.
    let mut helper = JwtHelper::start(dir, &spire.agent.endpoint, &["--audience", "bench-helper"]);
    helper.wait_ready(Duration::from_secs(60));
    let port = free_port();
    let envoy = Envoy::start(
        "envoy-ext-authz",
        dir,
        &ext_authz_proxy(free_port(), port, echo.addr, helper.listen),
    );
    let before = spire.agent.jwt_fetches();
    let (ok, bad, took) = paced_load(port);
    let calls = spire.agent.jwt_fetches() - before;
    println!(
        "    jwt-auth-helper (ext_authz): {:.0} requests/s ({ok} 200, {bad} other), {calls} FetchJWTSVID = {:.3}/s, x{:.2} of the ideal, x{:.2} of the schedule",
        (ok + bad) as f64 / took,
        calls as f64 / took,
        calls as f64 / ideal,
        calls as f64 / expected,
    );
    drop(envoy);
    drop(helper);

    // credential_injector with the bridge's `jwt-svid:` secret.
    let port = free_port();
    let envoy = Envoy::start(
        "envoy-injector",
        dir,
        &bootstrap(
            free_port(),
            "injector",
            &[credential_injector_listener(
                "injector",
                port,
                "sds",
                "jwt-svid:bench-injector",
            )],
            &[
                sds_cluster("sds", &bridge.socket),
                suite_tests::envoy::static_cluster("upstream", echo.addr, false),
            ],
        ),
    );
    let before = spire.agent.jwt_fetches();
    let (ok, bad, took) = paced_load(port);
    let calls = spire.agent.jwt_fetches() - before;
    println!(
        "    credential_injector + sds-bridge: {:.0} requests/s ({ok} 200, {bad} other), {calls} FetchJWTSVID = {:.3}/s, x{:.2} of the ideal, x{:.2} of the schedule",
        (ok + bad) as f64 / took,
        calls as f64 / took,
        calls as f64 / ideal,
        calls as f64 / expected,
    );
    drop(envoy);
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let options = ServerOptions {
        oidc: false,
        ..ServerOptions::new(TD)
    };
    let spire = tokio::task::block_in_place(|| Spire::start(dir, &options));
    // One entry for every process of this user: the bridge, the Envoys, the stream clients
    // and the probe hold one identity and see each rotation together.
    let uid = std::fs::metadata("/proc/self").map_or(0, |m| {
        use std::os::unix::fs::MetadataExt as _;
        m.uid()
    });
    let selector = format!("unix:uid:{uid}");
    let jwt_ttl = JWT_TTL.to_string();
    let entry = spire.server.entry(
        &spire.agent.id,
        &spire.id("bench"),
        &[&selector],
        &["-x509SVIDTTL", X509_TTL, "-jwtSVIDTTL", &jwt_ttl],
    );
    // Push-to-ACK is read from both servers' debug logs.
    let bridge = start_bridge(dir, &spire, "sds-bridge-debug", "info,sds_bridge=debug");
    push_to_ack(dir, &spire, &bridge, &entry).await;
    drop(bridge);
    // The rest at INFO: at DEBUG both log a line or two per stream and push, which would be
    // most of their CPU time with 1,000 streams.
    let mut spire = spire;
    tokio::task::block_in_place(|| spire.agent.restart_logging_at("INFO"));
    // Rotations 4–8 s apart from here: one push to 1,000 streams is done before the next.
    spire.server.cli(&[
        "entry",
        "update",
        "-entryID",
        &entry,
        "-parentID",
        &spire.agent.id,
        "-spiffeID",
        &spire.id("bench"),
        "-selector",
        &selector,
        "-x509SVIDTTL",
        FAN_OUT_X509_TTL,
        "-jwtSVIDTTL",
        &jwt_ttl,
    ]);
    let bridge = start_bridge(dir, &spire, "sds-bridge", "info");
    fan_out(&spire, &bridge).await;
    tokio::task::block_in_place(|| jwt_load(dir, &spire, &bridge));
}

fn start_bridge(dir: &Path, spire: &Spire, name: &str, log: &str) -> SdsBridge {
    tokio::task::block_in_place(|| {
        let mut b = SdsBridge::start_with_env(
            name,
            dir,
            &spire.agent.endpoint,
            &["--log-format", "json"],
            &[("RUST_LOG", log)],
        );
        b.wait_ready(Duration::from_secs(60));
        b
    })
}

//! AWS peers for the `iam-broker` tests: `moto_server` (from the venv) as STS, a counting and
//! faultable proxy in front of it, the real AWS CLI (v1, from the venv), and the broker process.
//!
//! The proxy is how tests see and steer STS: it counts `AssumeRoleWithWebIdentity` calls,
//! records their parameters (and whether they were signed), and can answer 503, an STS error
//! (`AccessDenied`, `InvalidIdentityToken`, …), delay, or shorten the lifetime of the
//! credentials moto issues, so that refresh windows are reached in seconds. It also speaks
//! HTTPS with a certificate from a local [`TestCa`] ([`StsProxy::start_tls`]), as real STS
//! does: what needs TLS in production is tested over TLS.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

use crate::envoy::{self, request};
use crate::{Proc, bin, free_port, http, venv, wait_until};

/// The role every test assumes (moto does not check that it exists).
pub const ROLE_ARN: &str = "arn:aws:iam::123456789012:role/demo";
/// The audience the broker requests.
pub const AUDIENCE: &str = "sts.amazonaws.com";

fn venv_bin(name: &str, package: &str) -> PathBuf {
    let path = venv().join("bin").join(name);
    assert!(
        path.is_file(),
        "test peer {name} missing at {}: run `cargo xtask venv` (or `cargo xtask test`), which \
         installs {package} from tests/requirements.txt",
        path.display()
    );
    path
}

/// `curl`, which the `credential_process` line runs; fails with an install hint if missing.
pub fn require_curl() {
    let ok = Command::new("curl")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "curl is missing: the credential_process line runs it (Debian: apt-get install curl)"
    );
}

// === moto ===

/// A running `moto_server` on loopback.
#[derive(Debug)]
pub struct Moto {
    /// The process.
    pub proc: Proc,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Moto {
    /// Starts moto on a free port and waits until it answers HTTP.
    pub fn start(dir: &Path) -> Self {
        let bin = venv_bin("moto_server", "moto[server]");
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut cmd = Command::new(bin);
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
        let mut proc = Proc::spawn("moto_server", cmd, dir);
        wait_until("moto_server to answer", Duration::from_secs(60), || {
            proc.assert_running();
            http(addr, "GET", "/moto-api/").is_some()
        });
        Self { proc, addr }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

// === STS proxy ===

/// What the proxy does with an `AssumeRoleWithWebIdentity` call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Forward to moto.
    Forward,
    /// Answer this status with a plain-text body (a load balancer in trouble).
    Status(u16),
    /// Answer an STS XML error with this status and code.
    StsError(u16, &'static str),
}

/// One `AssumeRoleWithWebIdentity` call as the proxy saw it.
#[derive(Clone, Debug)]
pub struct StsCall {
    /// `RoleArn`.
    pub role_arn: String,
    /// `RoleSessionName`.
    pub session_name: String,
    /// `DurationSeconds`.
    pub duration: String,
    /// `WebIdentityToken` (the JWT-SVID).
    pub token: String,
    /// Whether the request carried an `Authorization` header (it must not: unsigned).
    pub signed: bool,
    /// When it arrived (Unix seconds).
    pub at: f64,
    /// When the proxy answered it (Unix seconds; 0 while in flight).
    pub answered: f64,
    /// The status the proxy answered (0 while in flight): moto's, or the injected fault's.
    pub status: u16,
}

// === a local CA for HTTPS stand-ins ===

/// A throw-away CA and a server certificate it signed for `127.0.0.1` and `localhost`.
#[derive(Debug)]
pub struct TestCa {
    /// The CA certificate, PEM: what an operator adds to the trust store.
    pub ca_pem: String,
    cert_der: Vec<u8>,
    key_der: Vec<u8>,
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

impl TestCa {
    /// A fresh CA and server certificate.
    pub fn new() -> Self {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
            SanType,
        };
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca.distinguished_name
            .push(DnType::CommonName, "suite-tests local STS CA");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut leaf = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        leaf.subject_alt_names
            .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
        leaf.distinguished_name
            .push(DnType::CommonName, "sts.127.0.0.1");
        let cert = leaf.signed_by(&key, &Issuer::new(ca, &ca_key)).unwrap();
        Self {
            ca_pem: ca_cert.pem(),
            cert_der: cert.der().to_vec(),
            key_der: key.serialize_der(),
        }
    }

    /// A TLS acceptor presenting the server certificate (for the suite's HTTPS stand-ins).
    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        use tokio_rustls::rustls::{self, pki_types};
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![pki_types::CertificateDer::from(self.cert_der.clone())],
                pki_types::PrivateKeyDer::Pkcs8(self.key_der.clone().into()),
            )
            .unwrap();
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }
}

/// A stand-in server (Entra ID, Google STS, the STS proxy in front of moto): its own thread and
/// runtime, HTTPS with a [`TestCa`] certificate or plain HTTP; stopped and joined when dropped.
#[derive(Debug)]
pub(crate) struct FakeHttps {
    /// Where it listens.
    pub(crate) addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeHttps {
    /// A strict fake over HTTPS: every request to `handle` on a blocking thread (handlers verify
    /// signatures and take locks freely).
    pub(crate) fn start<H>(name: &str, port: u16, ca: &TestCa, handle: H) -> Self
    where
        H: Fn(&Method, &Uri, &HeaderMap, &Bytes) -> axum::response::Response
            + Send
            + Sync
            + 'static,
    {
        let handle = Arc::new(handle);
        let app = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let handle = handle.clone();
                async move {
                    tokio::task::spawn_blocking(move || handle(&method, &uri, &headers, &body))
                        .await
                        .unwrap()
                }
            },
        );
        let tls = Some((ca.acceptor(), Arc::new(AtomicU64::new(0))));
        Self::serve(name, port, tls, app)
    }

    /// Serves `app` on `127.0.0.1:port`: over TLS with `tls`'s acceptor (failed handshakes
    /// counted in its counter), else plain HTTP.
    pub(crate) fn serve(
        name: &str,
        port: u16,
        tls: Option<(tokio_rustls::TlsAcceptor, Arc<AtomicU64>)>,
        app: axum::Router,
    ) -> Self {
        let listener = std::net::TcpListener::bind(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("{name} cannot bind 127.0.0.1:{port}: {e}"));
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("{name}-{addr}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let tcp = tokio::net::TcpListener::from_std(listener).unwrap();
                    match tls {
                        None => tokio::select! {
                            r = axum::serve(tcp, app) => r.unwrap(),
                            _ = stopped => {}
                        },
                        Some((acceptor, failed)) => {
                            let listener = TlsListener {
                                tcp,
                                acceptor,
                                failed,
                            };
                            tokio::select! {
                                r = axum::serve(listener, app) => r.unwrap(),
                                _ = stopped => {}
                            }
                        }
                    }
                });
            })
            .unwrap();
        Self {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for FakeHttps {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// TLS on accept, for `axum::serve`. A failed handshake (a client that does not trust the
/// CA) is counted and the next connection accepted.
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    failed: Arc<AtomicU64>,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, SocketAddr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            let handshake = self.acceptor.accept(tcp);
            match tokio::time::timeout(Duration::from_secs(5), handshake).await {
                Ok(Ok(tls)) => return (tls, addr),
                _ => {
                    self.failed.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

#[derive(Debug)]
struct ProxyState {
    upstream: SocketAddr,
    fault: Mutex<Fault>,
    /// Calls the current fault still applies to before reverting to `Forward` (`u64::MAX`: all).
    fault_budget: AtomicU64,
    delay: Mutex<Duration>,
    /// Rewrite the issued credentials' expiration to now + this (seconds; 0: keep moto's).
    lifetime_secs: AtomicU64,
    assume_calls: AtomicU64,
    calls: Mutex<Vec<StsCall>>,
    tls_failures: Arc<AtomicU64>,
}

/// A counting, faultable HTTP proxy in front of moto, on its own thread and runtime. Stops
/// (closing its port: connection refused from then on) on drop.
#[derive(Debug)]
pub struct StsProxy {
    /// Where it listens.
    pub addr: SocketAddr,
    scheme: &'static str,
    state: Arc<ProxyState>,
    _server: FakeHttps,
}

impl StsProxy {
    /// A proxy to `upstream` on a free port.
    pub fn start(upstream: SocketAddr) -> Self {
        Self::start_on(free_port(), upstream)
    }

    /// A proxy to `upstream` on `port` (e.g. one a broker already points at).
    pub fn start_on(port: u16, upstream: SocketAddr) -> Self {
        Self::start_inner(port, upstream, None)
    }

    /// A proxy to `upstream` on a free port speaking HTTPS with `ca`'s server certificate.
    pub fn start_tls(upstream: SocketAddr, ca: &TestCa) -> Self {
        Self::start_inner(free_port(), upstream, Some(ca.acceptor()))
    }

    fn start_inner(
        port: u16,
        upstream: SocketAddr,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Self {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let state = Arc::new(ProxyState {
            upstream,
            fault: Mutex::new(Fault::Forward),
            fault_budget: AtomicU64::new(u64::MAX),
            delay: Mutex::new(Duration::ZERO),
            lifetime_secs: AtomicU64::new(0),
            assume_calls: AtomicU64::new(0),
            calls: Mutex::new(Vec::new()),
            tls_failures: Arc::new(AtomicU64::new(0)),
        });
        let s = state.clone();
        let app = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let s = s.clone();
                async move { handle(&s, &method, &uri, &headers, body).await }
            },
        );
        let tls = tls.map(|acceptor| (acceptor, state.tls_failures.clone()));
        let server = FakeHttps::serve("sts-proxy", port, tls, app);
        Self {
            addr: server.addr,
            scheme,
            state,
            _server: server,
        }
    }

    /// `http://127.0.0.1:PORT`, or `https://` from [`StsProxy::start_tls`].
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// TLS handshakes that failed (the client did not trust the certificate).
    pub fn tls_failures(&self) -> u64 {
        self.state.tls_failures.load(Ordering::SeqCst)
    }

    /// Applies `fault` to every call from now on.
    pub fn set_fault(&self, fault: Fault) {
        *self.state.fault.lock().unwrap() = fault;
        self.state.fault_budget.store(u64::MAX, Ordering::SeqCst);
    }

    /// Applies `fault` to the next `n` calls, then forwards again.
    pub fn fault_next(&self, n: u64, fault: Fault) {
        *self.state.fault.lock().unwrap() = fault;
        self.state.fault_budget.store(n, Ordering::SeqCst);
    }

    /// Delays every call by `d` before answering.
    pub fn set_delay(&self, d: Duration) {
        *self.state.delay.lock().unwrap() = d;
    }

    /// Makes issued credentials expire `secs` after they are issued (0: moto's own).
    pub fn set_lifetime(&self, secs: u64) {
        self.state.lifetime_secs.store(secs, Ordering::SeqCst);
    }

    /// `AssumeRoleWithWebIdentity` calls received (faulted ones included).
    pub fn assume_calls(&self) -> u64 {
        self.state.assume_calls.load(Ordering::SeqCst)
    }

    /// Every `AssumeRoleWithWebIdentity` call received, oldest first.
    pub fn calls(&self) -> Vec<StsCall> {
        self.state.calls.lock().unwrap().clone()
    }
}

async fn handle(
    s: &ProxyState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    let params = form(&body);
    let param = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let is_assume = param("Action").as_deref() == Some("AssumeRoleWithWebIdentity");
    // Recorded on arrival (tests read calls while one is held up), its answer filled in after.
    let index = is_assume.then(|| {
        s.assume_calls.fetch_add(1, Ordering::SeqCst);
        let mut calls = s.calls.lock().unwrap();
        calls.push(StsCall {
            role_arn: param("RoleArn").unwrap_or_default(),
            session_name: param("RoleSessionName").unwrap_or_default(),
            duration: param("DurationSeconds").unwrap_or_default(),
            token: param("WebIdentityToken").unwrap_or_default(),
            signed: headers.contains_key(header::AUTHORIZATION),
            at: unix_time(),
            answered: 0.0,
            status: 0,
        });
        calls.len() - 1
    });
    let response = answer(s, method, uri, headers, body, is_assume).await;
    if let Some(i) = index
        && let Some(call) = s.calls.lock().unwrap().get_mut(i)
    {
        call.answered = unix_time();
        call.status = response.status().as_u16();
    }
    response
}

/// The proxy's answer: the fault or delay set for `AssumeRoleWithWebIdentity`, else moto's
/// (with the expiration rewritten if a lifetime is set).
async fn answer(
    s: &ProxyState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
    is_assume: bool,
) -> Response {
    if is_assume {
        let delay = *s.delay.lock().unwrap();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let fault = {
            let mut fault = s.fault.lock().unwrap();
            let budget = s.fault_budget.load(Ordering::SeqCst);
            let current = *fault;
            if budget != u64::MAX && current != Fault::Forward {
                if budget <= 1 {
                    *fault = Fault::Forward;
                }
                s.fault_budget
                    .store(budget.saturating_sub(1), Ordering::SeqCst);
            }
            current
        };
        match fault {
            Fault::Forward => {}
            Fault::Status(code) => {
                return (
                    StatusCode::from_u16(code).unwrap(),
                    "upstream trouble (injected by the test proxy)",
                )
                    .into_response();
            }
            Fault::StsError(code, aws_code) => {
                let xml = format!(
                    "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error>\
                     <Type>Sender</Type><Code>{aws_code}</Code><Message>injected {aws_code}</Message>\
                     </Error><RequestId>00000000-0000-0000-0000-000000000000</RequestId></ErrorResponse>"
                );
                return (
                    StatusCode::from_u16(code).unwrap(),
                    [(header::CONTENT_TYPE, "text/xml")],
                    xml,
                )
                    .into_response();
            }
        }
    }
    let (status, content_type, mut body) = forward(s.upstream, method, uri, headers, &body).await;
    let lifetime = s.lifetime_secs.load(Ordering::SeqCst);
    if is_assume && lifetime > 0 {
        body = rewrite_expiration(&body, unix_now() + lifetime);
    }
    let mut response = (StatusCode::from_u16(status).unwrap(), body).into_response();
    if let Some(ct) = content_type {
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, ct.parse().unwrap());
    }
    response
}

/// One HTTP/1.0 exchange with moto (no chunking, read to close).
async fn forward(
    upstream: SocketAddr,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> (u16, Option<String>, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut head = format!(
        "{method} {} HTTP/1.0\r\nHost: {upstream}\r\n",
        uri.path_and_query().map_or("/", |p| p.as_str())
    );
    for (name, value) in headers {
        let skip = [
            header::HOST,
            header::CONNECTION,
            header::CONTENT_LENGTH,
            header::TRANSFER_ENCODING,
        ];
        if !skip.contains(name) {
            head.push_str(&format!("{name}: {}\r\n", value.to_str().unwrap_or("")));
        }
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut s = tokio::net::TcpStream::connect(upstream).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("moto answered without a header terminator");
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("moto status line");
    let content_type = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| n.trim().eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| v.trim().to_owned());
    (
        status,
        content_type,
        String::from_utf8_lossy(&raw[end + 4..]).into_owned(),
    )
}

/// `application/x-www-form-urlencoded` pairs, decoded.
pub(crate) fn form(body: &[u8]) -> Vec<(String, String)> {
    String::from_utf8_lossy(body)
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (percent_decode(k), percent_decode(v)))
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Seconds since the Unix epoch, with the fraction (for call logs compared across processes).
pub fn unix_time() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Replaces the `<Expiration>` of an STS response with `unix` (RFC 3339 UTC).
fn rewrite_expiration(xml: &str, unix: u64) -> String {
    let (Some(start), Some(end)) = (xml.find("<Expiration>"), xml.find("</Expiration>")) else {
        return xml.to_owned();
    };
    format!(
        "{}<Expiration>{}</Expiration>{}",
        &xml[..start],
        rfc3339(unix),
        &xml[end + "</Expiration>".len()..]
    )
}

/// `YYYY-MM-DDTHH:MM:SSZ` for a Unix time (civil-from-days, H. Hinnant).
pub fn rfc3339(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

// === the broker ===

/// A running `iam-broker aws` with its credentials and admin addresses.
#[derive(Debug)]
pub struct Broker {
    /// The process.
    pub proc: Proc,
    /// Credentials address.
    pub listen: SocketAddr,
    /// Admin address.
    pub admin: SocketAddr,
}

impl Broker {
    /// Starts `iam-broker aws` against the agent at `socket` and STS at `sts` (none if empty), with `args`
    /// added (after `--audience`, `--role-arn`, listeners on free ports), in a clean
    /// environment plus `env`. Waits until both listeners accept connections, not for
    /// credentials.
    pub fn start(dir: &Path, socket: &str, sts: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_with(Command::new(bin("iam-broker")), dir, socket, sts, args, env)
    }

    /// [`Broker::start`] with `program` as the broker (e.g. `chroot ROOTFS /usr/local/bin/
    /// iam-broker` to run it from an exported image).
    pub fn start_with(
        program: Command,
        dir: &Path,
        socket: &str,
        sts: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        Self::start_at(program, listen, dir, socket, sts, args, env)
    }

    /// [`Broker::start_with`] serving credentials on `listen` (e.g. the address a client
    /// keeps using across a restart).
    pub fn start_at(
        program: Command,
        listen: SocketAddr,
        dir: &Path,
        socket: &str,
        sts: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut cmd = program;
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .arg("aws")
            .args(["--socket", socket]);
        // Empty: no STS endpoint (the Roles Anywhere mode refuses one).
        if !sts.is_empty() {
            cmd.args(["--sts-endpoint", sts]);
        }
        cmd.args(["--audience", AUDIENCE, "--role-arn", ROLE_ARN])
            .args(["--listen", &listen.to_string()])
            .args(["--admin-listen", &admin.to_string()])
            .args(args);
        let mut proc = Proc::spawn("iam-broker", cmd, dir);
        wait_until("iam-broker listeners", Duration::from_secs(20), || {
            proc.assert_running();
            http(admin, "GET", "/healthz").is_some_and(|(s, _)| s == 200)
                && std::net::TcpStream::connect(listen).is_ok()
        });
        Self {
            proc,
            listen,
            admin,
        }
    }

    /// `GET path` on the credentials port with extra `headers`.
    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> envoy::Response {
        request(self.listen, "GET", path, headers).expect("broker answered")
    }

    /// `GET /v1/creds`.
    pub fn creds(&self) -> envoy::Response {
        self.get("/v1/creds", &[])
    }

    /// `/readyz` status.
    pub fn readyz(&self) -> u16 {
        http(self.admin, "GET", "/readyz").map_or(0, |(s, _)| s)
    }

    /// Waits until `/readyz` answers 200.
    pub fn wait_ready(&mut self, timeout: Duration) {
        let admin = self.admin;
        let proc = &mut self.proc;
        wait_until("iam-broker /readyz", timeout, || {
            proc.assert_running();
            http(admin, "GET", "/readyz").is_some_and(|(s, _)| s == 200)
        });
    }

    /// A sample from `/metrics`, e.g. `iam_broker_sts_calls_total{outcome="success"}`.
    pub fn metric(&self, series: &str) -> u64 {
        crate::scrape(self.admin, series) as u64
    }
}

// === AWS CLI ===

/// Writes an AWS config file whose default profile runs `credential_process`.
pub fn credential_process_profile(dir: &Path, command: &str) -> PathBuf {
    let path = dir.join(format!("aws-config-{}", free_port()));
    let mut f = std::fs::File::create(&path).unwrap();
    writeln!(
        f,
        "[default]\ncredential_process = {command}\nregion = us-east-1"
    )
    .unwrap();
    path
}

/// Runs the real AWS CLI with `args` in a clean environment (no credentials, no instance
/// metadata lookups) plus `env`; at most 60 s.
pub fn aws_cli(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    let aws = venv_bin("aws", "awscli");
    let mut cmd = Command::new("timeout");
    cmd.arg("60")
        .arg(aws)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", dir)
        .env("AWS_CONFIG_FILE", dir.join("no-aws-config"))
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            dir.join("no-aws-credentials"),
        )
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .envs(env.iter().copied());
    cmd.output().unwrap()
}

/// `aws sts get-caller-identity` against moto: the `Arn` on success, stderr on failure.
pub fn caller_identity(dir: &Path, moto: &Moto, env: &[(&str, &str)]) -> Result<String, String> {
    let out = aws_cli(
        dir,
        env,
        &[
            "sts",
            "get-caller-identity",
            "--endpoint-url",
            &moto.url(),
            "--output",
            "json",
        ],
    );
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "aws printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    Ok(v["Arn"].as_str().unwrap().to_owned())
}

/// `n` concurrent `GET path` requests (one connection each) on a runtime of their own:
/// `(status, body)` for each.
pub fn concurrent_gets(addr: SocketAddr, path: &str, n: usize) -> Vec<(u16, String)> {
    concurrent_gets_with(addr, path, &[], n)
}

/// [`concurrent_gets`] with extra request `headers`.
pub fn concurrent_gets_with(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    n: usize,
) -> Vec<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let path = path.to_owned();
    rt.block_on(async move {
        let barrier = Arc::new(tokio::sync::Barrier::new(n));
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let (barrier, path, extra) = (barrier.clone(), path.clone(), extra.clone());
                tokio::spawn(async move {
                    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
                    barrier.wait().await;
                    let req = format!(
                        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}Connection: close\r\n\r\n"
                    );
                    s.write_all(req.as_bytes()).await.unwrap();
                    let mut raw = Vec::new();
                    s.read_to_end(&mut raw).await.unwrap();
                    let text = String::from_utf8_lossy(&raw).into_owned();
                    let status = text
                        .split_whitespace()
                        .nth(1)
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0);
                    let body = text
                        .split_once("\r\n\r\n")
                        .map(|(_, b)| b.to_owned())
                        .unwrap_or_default();
                    (status, body)
                })
            })
            .collect();
        let mut out = Vec::with_capacity(n);
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_900_000_000), "2030-03-17T17:46:40Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn decodes_forms() {
        let f = form(b"Action=AssumeRoleWithWebIdentity&RoleSessionName=a%40b&X=1+2");
        assert_eq!(f[1], ("RoleSessionName".into(), "a@b".into()));
        assert_eq!(f[2].1, "1 2");
    }
}

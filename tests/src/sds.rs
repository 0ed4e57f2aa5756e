//! sds-bridge harness: the bridge process, and Envoy bootstraps whose certificates and
//! validation contexts come from it over SDS.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::envoy::indent;
use crate::{DevAgent, Proc, bin, free_port, http, wait_until};

/// A running `sds-bridge` serving SDS on `<dir>/<name>.sock`.
#[derive(Debug)]
pub struct SdsBridge {
    /// The process.
    pub proc: Proc,
    /// The SDS socket.
    pub socket: PathBuf,
    /// Admin address.
    pub admin: SocketAddr,
}

impl SdsBridge {
    /// Starts a bridge fed by the Workload API at `workload_api` and waits until its socket
    /// accepts connections and its admin answers (not until it has an SVID: see
    /// [`SdsBridge::wait_ready`]).
    pub fn start(name: &str, dir: &Path, workload_api: &str, args: &[&str]) -> Self {
        Self::start_with_env(name, dir, workload_api, args, &[])
    }

    /// [`SdsBridge::start`] with extra environment variables.
    pub fn start_with_env(
        name: &str,
        dir: &Path,
        workload_api: &str,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> Self {
        Self::start_program(&bin("sds-bridge"), name, dir, workload_api, args, envs)
    }

    /// [`SdsBridge::start_with_env`] running `program` (a link to the binary elsewhere: real
    /// SPIRE tells workloads apart by their executable's path).
    pub fn start_program(
        program: &Path,
        name: &str,
        dir: &Path,
        workload_api: &str,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> Self {
        let socket = dir.join(format!("{name}.sock"));
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut cmd = Command::new(program);
        cmd.arg("--listen")
            .arg(format!("unix://{}", socket.display()))
            .args(["--socket", workload_api])
            .args(["--admin-listen", &admin.to_string()])
            .args(args)
            .env("RUST_LOG", "info,sds_bridge=debug")
            .envs(envs.iter().copied());
        let mut proc = Proc::spawn(name, cmd, dir);
        wait_until(
            &format!("{name} to listen"),
            Duration::from_secs(10),
            || {
                proc.assert_running();
                std::os::unix::net::UnixStream::connect(&socket).is_ok()
                    && http(admin, "GET", "/healthz").is_some_and(|(s, _)| s == 200)
            },
        );
        Self {
            proc,
            socket,
            admin,
        }
    }

    /// `/readyz` status code.
    pub fn readyz(&self) -> u16 {
        self.probe("/readyz")
    }

    /// An admin probe's status code (`/readyz`, `/startupz`, `/healthz`); 0 if unreachable.
    pub fn probe(&self, path: &str) -> u16 {
        http(self.admin, "GET", path).map_or(0, |(s, _)| s)
    }

    /// Waits until `/readyz` is 200 (it holds an SVID).
    pub fn wait_ready(&mut self, timeout: Duration) {
        self.wait_probe("/readyz", timeout);
    }

    /// Waits until the admin probe `path` is 200, as a kubelet would.
    pub fn wait_probe(&mut self, path: &str, timeout: Duration) {
        let admin = self.admin;
        let proc = &mut self.proc;
        wait_until(&format!("sds-bridge {path}"), timeout, || {
            proc.assert_running();
            http(admin, "GET", path).is_some_and(|(s, _)| s == 200)
        });
    }

    /// A sample from `/metrics` by its series name (e.g. `sds_bridge_nacks_total`); 0 if absent.
    pub fn metric(&self, series: &str) -> f64 {
        crate::scrape(self.admin, series)
    }
}

/// One identity: its dev agent and the bridge it feeds.
#[derive(Debug)]
pub struct Workload {
    /// The dev agent.
    pub agent: DevAgent,
    /// The bridge, ready (it holds an SVID).
    pub bridge: SdsBridge,
}

impl Workload {
    /// `spiffe://<td>/<name>` from an agent in `root/name` keeping its CA in `state` (shared by
    /// the agents of one trust domain), with `agent_args` and `bridge_args` added.
    pub fn start(
        root: &Path,
        name: &str,
        td: &str,
        state: &Path,
        agent_args: &[&str],
        bridge_args: &[&str],
    ) -> Self {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let id = format!("spiffe://{td}/{name}");
        let mut args = vec![
            "--trust-domain",
            td,
            "--spiffe-id",
            &id,
            "--state-dir",
            state.to_str().unwrap(),
        ];
        args.extend_from_slice(agent_args);
        let agent = DevAgent::start(&dir, &args);
        let mut bridge = SdsBridge::start("sds-bridge", &dir, &agent.endpoint, bridge_args);
        bridge.wait_ready(Duration::from_secs(10));
        Self { agent, bridge }
    }
}

/// The SDS cluster for a bridge socket (column-0 YAML list item).
pub fn sds_cluster(name: &str, socket: &Path) -> String {
    crate::envoy::pipe_cluster(name, socket)
}

/// How an Envoy asks for its secrets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// Istio's proxy: `default` + `ROOTCA` in a combined validation context, the node only on
    /// the first request of a stream.
    Istio,
    /// A VM's Envoy (docs/protocols.md#vm-envoy): the SPIFFE ID and `spiffe://<td>`.
    Vm,
    /// `default` + `ALL` (federation).
    All,
    /// `default` and no validation of the peer at all (to prove the *other* side refuses).
    NoValidation,
}

/// An `sds_config:` block (column 0) reaching the bridge through cluster `cluster` with
/// Envoy's own gRPC client, or, when `cluster` is a `unix:` target, with `google_grpc`
/// (gRPC C-core, which sends the socket path as `:authority`).
fn sds_config(cluster: &str, node_on_first_message_only: bool) -> String {
    let service = if cluster.starts_with("unix:") {
        format!("google_grpc: {{ target_uri: \"{cluster}\", stat_prefix: sds }}")
    } else {
        format!("envoy_grpc: {{ cluster_name: {cluster} }}")
    };
    format!(
        "sds_config:
  resource_api_version: V3
  api_config_source:
    api_type: GRPC
    transport_api_version: V3
    set_node_on_first_message_only: {node_on_first_message_only}
    grpc_services:
    - {service}"
    )
}

/// The `common_tls_context` of a side using SDS cluster `sds` for `shape` (column 0, for
/// placement under `common_tls_context:`).
pub fn common_tls_context(shape: Shape, sds: &str, spiffe_id: &str, td: &str) -> String {
    let cert = |name: &str, first_only: bool| {
        format!(
            "tls_certificate_sds_secret_configs:\n- name: \"{name}\"\n{}",
            indent(&sds_config(sds, first_only), 2)
        )
    };
    let validation = |name: &str, first_only: bool| {
        format!(
            "validation_context_sds_secret_config:\n  name: \"{name}\"\n{}",
            indent(&sds_config(sds, first_only), 2)
        )
    };
    match shape {
        Shape::Istio => format!(
            "{}\ncombined_validation_context:\n  default_validation_context: {{}}\n{}",
            cert("default", true),
            indent(&validation("ROOTCA", true), 2)
        ),
        Shape::Vm => format!(
            "{}\n{}",
            cert(spiffe_id, false),
            validation(&format!("spiffe://{td}"), false)
        ),
        Shape::All => format!("{}\n{}", cert("default", false), validation("ALL", false)),
        Shape::NoValidation => cert("default", false),
    }
}

/// An upstream cluster to `addr` over TLS with `tls` (a [`common_tls_context`]) and at most
/// `requests_per_connection` requests per connection (so rotations reach new connections).
pub fn tls_cluster(
    name: &str,
    addr: SocketAddr,
    tls: &str,
    requests_per_connection: u32,
) -> String {
    let tls = indent(tls, 8);
    format!(
        r#"- name: {name}
  type: STATIC
  connect_timeout: 1s
  typed_extension_protocol_options:
    envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
      "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
      common_http_protocol_options:
        max_requests_per_connection: {requests_per_connection}
      explicit_http_config:
        http_protocol_options: {{}}
  transport_socket:
    name: envoy.transport_sockets.tls
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
      common_tls_context:
{tls}
  load_assignment:
    cluster_name: {name}
    endpoints:
    - lb_endpoints:
      - endpoint:
          address:
            socket_address: {{ address: {ip}, port_value: {port} }}"#,
        ip = addr.ip(),
        port = addr.port()
    )
}

/// A loopback listener on `port`: one filter chain with an HTTP connection manager carrying
/// `options` (HCM fields), `routes` (route list items) and `filters` (HTTP filter list items,
/// the router is appended), and `transport_socket` if given; all arguments at column 0.
/// Returns a column-0 list item.
fn hcm_listener(
    name: &str,
    port: u16,
    options: &str,
    routes: &str,
    filters: &str,
    transport_socket: Option<&str>,
) -> String {
    let mut out = format!(
        r#"- name: {name}
  address:
    socket_address: {{ address: 127.0.0.1, port_value: {port} }}
  filter_chains:
  - filters:
    - name: envoy.filters.network.http_connection_manager
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
        stat_prefix: {name}
"#
    );
    if !options.is_empty() {
        out.push_str(&indent(options, 8));
        out.push('\n');
    }
    out.push_str(
        "        route_config:\n          virtual_hosts:\n          - name: all\n            domains: [\"*\"]\n            routes:\n",
    );
    out.push_str(&indent(routes, 12));
    out.push_str("\n        http_filters:\n");
    if !filters.is_empty() {
        out.push_str(&indent(filters, 8));
        out.push('\n');
    }
    out.push_str(
        "        - name: envoy.filters.http.router\n          typed_config:\n            \"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
    );
    if let Some(socket) = transport_socket {
        out.push_str("\n    transport_socket:\n");
        out.push_str(&indent(socket, 6));
    }
    out
}

/// A plain HTTP listener on `port` routing path prefixes to clusters (column-0 list item).
pub fn http_listener(name: &str, port: u16, routes: &[(&str, &str)]) -> String {
    let routes: Vec<String> = routes
        .iter()
        .map(|(prefix, cluster)| {
            format!(
                "- match: {{ prefix: \"{prefix}\" }}\n  route: {{ cluster: {cluster}, prefix_rewrite: \"/\" }}"
            )
        })
        .collect();
    hcm_listener(name, port, "", &routes.join("\n"), "", None)
}

/// Every route to cluster `upstream` (a route list item at column 0).
const TO_UPSTREAM: &str = "- match: { prefix: \"/\" }\n  route: { cluster: upstream }";

/// An mTLS listener on `port` (client certificate required, validated per `tls`) forwarding
/// to cluster `upstream` with the client's URI SAN and certificate in
/// `x-forwarded-client-cert` (column-0 list item).
pub fn mtls_listener(name: &str, port: u16, tls: &str) -> String {
    mtls_listener_with_filters(name, port, tls, "")
}

/// [`mtls_listener`] running `filters` (column-0 HTTP filter list items, e.g. RBAC on the
/// peer's URI SAN) before the router.
pub fn mtls_listener_with_filters(name: &str, port: u16, tls: &str, filters: &str) -> String {
    let transport = format!(
        "name: envoy.transport_sockets.tls
typed_config:
  \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
  require_client_certificate: true
  common_tls_context:
{}",
        indent(tls, 4)
    );
    hcm_listener(
        name,
        port,
        "forward_client_cert_details: SANITIZE_SET\nset_current_client_cert_details: { uri: true, cert: true }",
        TO_UPSTREAM,
        filters,
        Some(&transport),
    )
}

/// A plain HTTP listener on `port` whose connection manager has the fields `hcm` (column 0,
/// e.g. what `sds-bridge jwt-authn-config --part local-reply` prints; may be empty) and runs
/// `filters` (column-0 HTTP filter list items, e.g. `--part filters`), routing everything to
/// cluster `upstream` (column-0 list item).
pub fn filtered_listener(name: &str, port: u16, hcm: &str, filters: &str) -> String {
    hcm_listener(name, port, hcm, TO_UPSTREAM, filters, None)
}

/// A client-side `common_tls_context` (column 0) presenting an inline certificate and key
/// (e.g. an SVID minted by a test's own authority) and validating nothing: for peers whose
/// identity is the thing under test.
pub fn inline_tls_context(cert_pem: &str, key_pem: &str) -> String {
    format!(
        "tls_certificates:\n- certificate_chain: {{ inline_string: {} }}\n  private_key: {{ inline_string: {} }}",
        serde_json::to_string(cert_pem).unwrap(),
        serde_json::to_string(key_pem).unwrap()
    )
}

/// What `sds-bridge jwt-authn-config ARGS` prints (exits 0 or panics with its stderr).
pub fn jwt_authn_config(args: &[&str]) -> String {
    let mut cmd = Command::new(bin("sds-bridge"));
    cmd.arg("jwt-authn-config").args(args);
    let out = crate::output(cmd);
    assert!(
        out.status.success(),
        "sds-bridge jwt-authn-config {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A bootstrap with admin on `admin`, `node_id`, and the given listeners and clusters
/// (column-0 list items).
pub fn bootstrap(admin: u16, node_id: &str, listeners: &[String], clusters: &[String]) -> String {
    let list = |items: &[String]| -> String {
        items
            .iter()
            .map(|i| i.lines().map(|l| format!("  {l}\n")).collect::<String>())
            .collect()
    };
    format!(
        r#"node:
  id: {node_id}
  cluster: sds-tests
admin:
  address:
    socket_address: {{ address: 127.0.0.1, port_value: {admin} }}
static_resources:
  listeners:
{listeners}  clusters:
{clusters}overload_manager:
  resource_monitors:
  - name: envoy.resource_monitors.global_downstream_max_connections
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig
      max_active_downstream_connections: 50000
"#,
        listeners = list(listeners),
        clusters = list(clusters),
    )
}

/// The client certificate's URI SAN and serial number from an `x-forwarded-client-cert` value
/// (`By=…;Hash=…;Cert="<url-encoded PEM>";URI=spiffe://…`).
pub fn xfcc_uri_and_serial(xfcc: &str) -> (String, String) {
    let uri = xfcc
        .split(';')
        .find_map(|p| p.strip_prefix("URI="))
        .unwrap_or_default()
        .to_owned();
    let der = xfcc_cert_der(xfcc).expect("XFCC carries Cert=");
    let (_, parsed) = x509_parser::parse_x509_certificate(&der).expect("XFCC Cert is X.509");
    (uri, parsed.raw_serial_as_string())
}

/// The DER of the client certificate in an `x-forwarded-client-cert` value's `Cert=` field.
pub fn xfcc_cert_der(xfcc: &str) -> Option<Vec<u8>> {
    let cert = xfcc.split(';').find_map(|p| p.strip_prefix("Cert="))?;
    Some(pem_to_der(&percent_decode(cert.trim_matches('"'))))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
            out.push(u8::from_str_radix(hex, 16).unwrap());
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

fn pem_to_der(pem: &str) -> Vec<u8> {
    use base64::Engine as _;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .expect("PEM body")
}

/// A plain HTTP listener on `port` whose `envoy.filters.http.credential_injector` stamps
/// `Authorization: Bearer <generic secret>` from SDS resource `secret` (via cluster `sds`) on
/// every request, then routes to cluster `upstream` (column-0 list item).
pub fn credential_injector_listener(name: &str, port: u16, sds: &str, secret: &str) -> String {
    let filter = format!(
        r#"- name: envoy.filters.http.credential_injector
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.credential_injector.v3.CredentialInjector
    overwrite: true
    allow_request_without_credential: false
    credential:
      name: envoy.http.injected_credentials.generic
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.http.injected_credentials.generic.v3.Generic
        credential:
          name: "{secret}"
{}
        header: Authorization
        header_value_prefix: "Bearer ""#,
        indent(&sds_config(sds, false), 10)
    );
    hcm_listener(name, port, "", TO_UPSTREAM, &filter, None)
}

/// Two Envoys doing mTLS with certificates from two bridges: the server's listener `mtls`
/// (`server_tls`, SDS cluster `sds` on `server_sds`) in front of `upstream`, and the client's
/// plain HTTP listener on [`MtlsPair::port`] routing to it (`client_tls`, SDS on `client_sds`),
/// recycling upstream connections after `requests_per_connection` so that new certificates
/// are used while old ones are still valid.
#[derive(Debug)]
pub struct MtlsPair {
    /// The server side.
    pub server: crate::envoy::Envoy,
    /// The client side.
    pub client: crate::envoy::Envoy,
    /// The client's HTTP listener.
    pub port: u16,
    /// The server's mTLS listener.
    pub mtls_port: u16,
}

impl MtlsPair {
    /// Starts both Envoys in `dir`.
    pub fn start(
        dir: &Path,
        (server_sds, server_tls): (&Path, &str),
        (client_sds, client_tls): (&Path, &str),
        upstream: SocketAddr,
        requests_per_connection: u32,
    ) -> Self {
        let mtls_port = free_port();
        let server = crate::envoy::Envoy::start(
            "envoy-server",
            dir,
            &bootstrap(
                free_port(),
                "server",
                &[mtls_listener("mtls", mtls_port, server_tls)],
                &[
                    sds_cluster("sds", server_sds),
                    crate::envoy::static_cluster("upstream", upstream, false),
                ],
            ),
        );
        let port = free_port();
        let mtls = SocketAddr::from(([127, 0, 0, 1], mtls_port));
        let client = crate::envoy::Envoy::start(
            "envoy-client",
            dir,
            &bootstrap(
                free_port(),
                "client",
                &[http_listener("out", port, &[("/", "mtls")])],
                &[
                    sds_cluster("sds", client_sds),
                    tls_cluster("mtls", mtls, client_tls, requests_per_connection),
                ],
            ),
        );
        Self {
            server,
            client,
            port,
            mtls_port,
        }
    }
}

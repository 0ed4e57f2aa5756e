//! Real SPIRE for the end-to-end tests: a server (SQLite in a temp dir, keys on disk so a
//! restart keeps its CA), a join-token agent with the `unix` workload attestor, SPIRE's own OIDC
//! discovery provider, and registration entries made with `spire-server entry create`, all on
//! loopback with free ports and sockets in the test's temp dir.
//!
//! **How sidecars get their own identities.** Every process here runs as the same user, so
//! `unix:uid` cannot tell them apart. The agent's `unix` attestor is configured with
//! `discover_workload_path = true`, and each entry selects one binary with
//! `unix:path:<absolute path of the executable>` (what `/proc/<pid>/exe` resolves to): the
//! sds-bridge binary gets `spiffe://<td>/sds-bridge`, jwt-auth-helper its own ID, and so on. In a
//! pod the same role is played by `k8s:sa` / `k8s:container-name` selectors.
//!
//! The binaries come from `cargo xtask spire` (`SUITE_SPIRE_BIN`, else
//! `<root>/.tools/spire-<version>/bin`); without them a test fails saying how to build them.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::{Proc, free_port, http, output, root, wait_until};

/// The SPIRE release `cargo xtask spire` builds.
pub const VERSION: &str = "1.13.3";

/// Where the SPIRE binaries are; panics with the command that builds them if one is missing.
pub fn spire_bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("SUITE_SPIRE_BIN").map_or_else(
        || root().join(format!(".tools/spire-{VERSION}/bin")),
        PathBuf::from,
    );
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build SPIRE {VERSION} with `cargo xtask spire` (Go and gcc needed; \
         `cargo xtask test` does it)",
        path.display()
    );
    path
}

/// Settings of a SPIRE server.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Trust domain.
    pub trust_domain: String,
    /// `ca_ttl`: SPIRE prepares the next CA at half of it and activates it at five sixths.
    pub ca_ttl: Duration,
    /// `default_x509_svid_ttl`: the agent rotates a workload's SVID at half of it.
    pub x509_ttl: Duration,
    /// `default_jwt_svid_ttl`.
    pub jwt_ttl: Duration,
    /// Serve SPIRE's OIDC discovery provider and put its URL in JWT-SVIDs as `iss`.
    pub oidc: bool,
    /// Serve a SPIFFE bundle endpoint (`https_spiffe`) for federation.
    pub bundle_endpoint: bool,
}

impl ServerOptions {
    /// `example.org`, SPIRE's defaults for TTLs (1 h X.509, 5 min JWT, 24 h CA), with OIDC.
    pub fn new(trust_domain: &str) -> Self {
        Self {
            trust_domain: trust_domain.to_owned(),
            ca_ttl: Duration::from_secs(24 * 3600),
            x509_ttl: Duration::from_secs(3600),
            jwt_ttl: Duration::from_secs(300),
            oidc: true,
            bundle_endpoint: false,
        }
    }
}

fn secs(d: Duration) -> String {
    format!("{}s", d.as_secs().max(1))
}

// === SpireServer ===

/// A running `spire-server`.
#[derive(Debug)]
pub struct SpireServer {
    /// The process.
    pub proc: Proc,
    /// Its trust domain.
    pub trust_domain: String,
    /// The server API socket (what `spire-server` subcommands talk to).
    pub socket: PathBuf,
    /// Where agents connect.
    pub addr: SocketAddr,
    /// The issuer in JWT-SVIDs (`http://127.0.0.1:<port>`), when OIDC discovery is on.
    pub issuer: Option<String>,
    /// The SPIFFE bundle endpoint, when on.
    pub bundle_endpoint: Option<SocketAddr>,
    health: SocketAddr,
    config: PathBuf,
    dir: PathBuf,
}

impl SpireServer {
    /// Starts a server in `dir/<trust domain>-server` and waits until it is ready.
    pub fn start(dir: &Path, options: &ServerOptions) -> Self {
        let home = dir.join(format!("{}-server", options.trust_domain));
        std::fs::create_dir_all(&home).unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let health: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let socket = home.join("api.sock");
        let issuer = options
            .oidc
            .then(|| format!("http://127.0.0.1:{}", free_port()));
        let mut server = format!(
            "  bind_address = \"127.0.0.1\"\n  bind_port = \"{}\"\n  socket_path = \"{}\"\n  trust_domain = \"{}\"\n  data_dir = \"{}\"\n  log_level = \"DEBUG\"\n  ca_ttl = \"{}\"\n  default_x509_svid_ttl = \"{}\"\n  default_jwt_svid_ttl = \"{}\"\n  ca_key_type = \"ec-p256\"\n  jwt_key_type = \"ec-p256\"\n",
            addr.port(),
            socket.display(),
            options.trust_domain,
            home.join("data").display(),
            secs(options.ca_ttl),
            secs(options.x509_ttl),
            secs(options.jwt_ttl),
        );
        if let Some(issuer) = &issuer {
            writeln!(server, "  jwt_issuer = \"{issuer}\"").unwrap();
        }
        let bundle_endpoint: Option<SocketAddr> = options
            .bundle_endpoint
            .then(|| format!("127.0.0.1:{}", free_port()).parse().unwrap());
        if let Some(be) = bundle_endpoint {
            writeln!(
                server,
                "  federation {{\n    bundle_endpoint {{\n      address = \"127.0.0.1\"\n      port = {}\n    }}\n  }}",
                be.port()
            )
            .unwrap();
        }
        let config = format!(
            "server {{\n{server}}}\n\
             plugins {{\n\
               DataStore \"sql\" {{ plugin_data {{ database_type = \"sqlite3\" connection_string = \"{db}\" }} }}\n\
               KeyManager \"disk\" {{ plugin_data {{ keys_path = \"{keys}\" }} }}\n\
               NodeAttestor \"join_token\" {{ plugin_data {{}} }}\n\
             }}\n\
             health_checks {{\n  listener_enabled = true\n  bind_address = \"127.0.0.1\"\n  bind_port = \"{hp}\"\n  live_path = \"/live\"\n  ready_path = \"/ready\"\n}}\n",
            db = home.join("datastore.sqlite3").display(),
            keys = home.join("keys.json").display(),
            hp = health.port(),
        );
        let config_path = home.join("server.conf");
        std::fs::write(&config_path, config).unwrap();
        let mut s = Self {
            proc: Self::spawn(&config_path, &home),
            trust_domain: options.trust_domain.clone(),
            socket,
            addr,
            issuer,
            bundle_endpoint,
            health,
            config: config_path,
            dir: home,
        };
        s.wait_ready();
        s
    }

    fn spawn(config: &Path, dir: &Path) -> Proc {
        let mut cmd = Command::new(spire_bin("spire-server"));
        cmd.args(["run", "-config"]).arg(config);
        Proc::spawn("spire-server", cmd, dir)
    }

    /// Waits for the health endpoint's `/ready`.
    pub fn wait_ready(&mut self) {
        let health = self.health;
        let proc = &mut self.proc;
        wait_until("spire-server ready", Duration::from_secs(60), || {
            proc.assert_running();
            http(health, "GET", "/ready").is_some_and(|(s, _)| s == 200)
        });
    }

    /// Stops the server (SIGKILL).
    pub fn stop(&mut self) {
        self.proc.kill();
    }

    /// Starts it again with the same configuration and data.
    pub fn restart(&mut self) {
        self.proc.kill();
        self.proc = Self::spawn(&self.config, &self.dir);
        self.wait_ready();
    }

    /// Runs `spire-server <args> -socketPath <socket>`; panics with its output on failure.
    pub fn cli(&self, args: &[&str]) -> String {
        self.try_cli(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`SpireServer::cli`], returning a failure (with the command's output) instead.
    pub fn try_cli(&self, args: &[&str]) -> Result<String, String> {
        let mut cmd = Command::new(spire_bin("spire-server"));
        cmd.args(args).arg("-socketPath").arg(&self.socket);
        let out = output(cmd);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            Ok(text)
        } else {
            Err(format!(
                "spire-server {args:?}: {}\n{text}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// A one-time join token for an agent; returns it and the agent's SPIFFE ID.
    pub fn join_token(&self) -> (String, String) {
        let text = self.cli(&["token", "generate", "-ttl", "600"]);
        let token = text
            .lines()
            .find_map(|l| l.strip_prefix("Token:"))
            .map(|t| t.trim().to_owned())
            .unwrap_or_else(|| panic!("no token in {text:?}"));
        let id = format!(
            "spiffe://{}/spire/agent/join_token/{token}",
            self.trust_domain
        );
        (token, id)
    }

    /// Creates a registration entry; returns its ID. `extra` is passed as is
    /// (`-federatesWith`, `-x509SVIDTTL`, …).
    pub fn entry(
        &self,
        parent: &str,
        spiffe_id: &str,
        selectors: &[&str],
        extra: &[&str],
    ) -> String {
        let mut args = vec![
            "entry",
            "create",
            "-parentID",
            parent,
            "-spiffeID",
            spiffe_id,
        ];
        for s in selectors {
            args.extend(["-selector", s]);
        }
        args.extend(extra);
        let text = self.cli(&args);
        text.lines()
            .find_map(|l| l.strip_prefix("Entry ID"))
            .and_then(|l| l.split(':').nth(1))
            .map(|id| id.trim().to_owned())
            .unwrap_or_else(|| panic!("no entry ID in {text:?}"))
    }

    /// Deletes a registration entry.
    pub fn delete_entry(&self, id: &str) {
        self.cli(&["entry", "delete", "-entryID", id]);
    }

    /// The trust bundle, PEM.
    pub fn bundle_pem(&self) -> String {
        self.cli(&["bundle", "show"])
    }

    /// The trust bundle as a SPIFFE bundle (JWKS with `x509-svid` and `jwt-svid` keys).
    pub fn bundle_spiffe(&self) -> serde_json::Value {
        serde_json::from_str(&self.cli(&["bundle", "show", "-format", "spiffe"])).unwrap()
    }

    /// The `kid`s of the JWT signing keys in this server's bundle.
    pub fn jwt_kids(&self) -> Vec<String> {
        self.bundle_spiffe()["keys"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|k| k["use"] == "jwt-svid")
            .map(|k| k["kid"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Federates with `other` through its bundle endpoint (`https_spiffe`, authenticated as
    /// `spiffe://<td>/spire/server`), bootstrapped with its current bundle, as an operator
    /// does with `spire-server federation create`.
    pub fn federate_with(&self, other: &Self) {
        let endpoint = other
            .bundle_endpoint
            .expect("the other server has no bundle endpoint (ServerOptions::bundle_endpoint)");
        let path = self.dir.join(format!("{}.bundle.json", other.trust_domain));
        std::fs::write(&path, other.cli(&["bundle", "show", "-format", "spiffe"])).unwrap();
        self.cli(&[
            "federation",
            "create",
            "-trustDomain",
            &other.trust_domain,
            "-bundleEndpointURL",
            &format!("https://{endpoint}"),
            "-bundleEndpointProfile",
            "https_spiffe",
            "-endpointSpiffeID",
            &format!("spiffe://{}/spire/server", other.trust_domain),
            "-trustDomainBundlePath",
            path.to_str().unwrap(),
            "-trustDomainBundleFormat",
            "spiffe",
        ]);
    }

    /// The ID of the `kind` (`x509` or `jwt`) local authority in slot `which` (`active`,
    /// `prepared` or `old`), from `spire-server localauthority <kind> show`: the subject key ID
    /// of an X.509 CA (what its SVIDs carry as authority key ID), the `kid` of a JWT key.
    pub fn authority(&self, kind: &str, which: &str) -> Option<String> {
        let out = self.cli(&["localauthority", kind, "show", "-output", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v[which]["authority_id"]
            .as_str()
            .filter(|id| !id.is_empty())
            .map(str::to_owned)
    }

    /// `spire-server localauthority <kind> <step> [-authorityID <id>]`, one step of a forced
    /// rotation (`prepare`, `activate`, `taint`, `revoke`); returns the CLI's output or its
    /// failure.
    pub fn localauthority(
        &self,
        kind: &str,
        step: &str,
        id: Option<&str>,
    ) -> Result<String, String> {
        let mut args = vec!["localauthority", kind, step];
        if let Some(id) = id {
            args.extend(["-authorityID", id]);
        }
        self.try_cli(&args)
    }

    /// Ends the federation with `trust_domain`: the relationship, and its bundle (entries that
    /// federated with it are kept, without it).
    pub fn drop_federation(&self, trust_domain: &str) {
        self.cli(&["federation", "delete", "-id", trust_domain]);
        self.cli(&[
            "bundle",
            "delete",
            "-id",
            &format!("spiffe://{trust_domain}"),
            "-mode",
            "dissociate",
        ]);
    }
}

// === SpireAgent ===

/// A running `spire-agent`, attested with a join token.
#[derive(Debug)]
pub struct SpireAgent {
    /// The process.
    pub proc: Proc,
    /// Its SPIFFE ID (the parent of the entries it serves).
    pub id: String,
    /// The Workload API socket.
    pub socket: PathBuf,
    /// `unix://<socket>`.
    pub endpoint: String,
    /// The health checks listener (`/live`, `/ready`).
    pub health: SocketAddr,
    /// SPIRE's Prometheus telemetry (`/metrics`): the agent's own count of Workload API calls.
    pub metrics: SocketAddr,
    config: PathBuf,
    dir: PathBuf,
}

impl SpireAgent {
    /// The Workload API address the agent of `trust_domain` started by [`SpireAgent::start`] in
    /// `dir` will serve, for sidecars started before it.
    pub fn planned_endpoint(dir: &Path, trust_domain: &str) -> String {
        format!(
            "unix://{}",
            dir.join(format!("{trust_domain}-agent/workload.sock"))
                .display()
        )
    }

    /// Starts an agent of `server` in `dir/<td>-agent` and waits until it is attested.
    pub fn start(dir: &Path, server: &SpireServer) -> Self {
        let home = dir.join(format!("{}-agent", server.trust_domain));
        std::fs::create_dir_all(&home).unwrap();
        let bundle = home.join("bootstrap.pem");
        std::fs::write(&bundle, server.bundle_pem()).unwrap();
        let (token, id) = server.join_token();
        let socket = home.join("workload.sock");
        let health: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        // `log_format = "text"` spelled out: logrus's default format stamps whole seconds, the
        // explicit one nanoseconds (the bench times pushes and ACKs by the agent's log).
        // Keys on disk: a restarted agent keeps its SVID instead of re-attesting with a join
        // token that was used up. `sync_interval`: entries and rotations reach the cache within
        // a second instead of SPIRE's default five. Prometheus telemetry: the agent counts
        // every Workload API call by method and status, which is how the soak and the bench
        // measure the load the sidecars put on it.
        let config = format!(
            "agent {{\n  data_dir = \"{data}\"\n  log_level = \"DEBUG\"\n  log_format = \"text\"\n  server_address = \"127.0.0.1\"\n  server_port = \"{port}\"\n  socket_path = \"{socket}\"\n  trust_domain = \"{td}\"\n  trust_bundle_path = \"{bundle}\"\n  join_token = \"{token}\"\n  experimental {{ sync_interval = \"1s\" }}\n}}\n\
             plugins {{\n\
               KeyManager \"disk\" {{ plugin_data {{ directory = \"{data}\" }} }}\n\
               NodeAttestor \"join_token\" {{ plugin_data {{}} }}\n\
               WorkloadAttestor \"unix\" {{ plugin_data {{ discover_workload_path = true }} }}\n\
             }}\n\
             health_checks {{\n  listener_enabled = true\n  bind_address = \"127.0.0.1\"\n  bind_port = \"{hp}\"\n  live_path = \"/live\"\n  ready_path = \"/ready\"\n}}\n\
             telemetry {{ Prometheus {{ host = \"127.0.0.1\" port = {mp} }} }}\n",
            mp = metrics.port(),
            data = home.join("data").display(),
            port = server.addr.port(),
            socket = socket.display(),
            td = server.trust_domain,
            bundle = bundle.display(),
            hp = health.port(),
        );
        let config_path = home.join("agent.conf");
        std::fs::write(&config_path, config).unwrap();
        let mut agent = Self {
            proc: Self::spawn(&config_path, &home),
            id,
            endpoint: format!("unix://{}", socket.display()),
            socket,
            health,
            metrics,
            config: config_path,
            dir: home,
        };
        agent.wait_ready();
        agent
    }

    fn spawn(config: &Path, dir: &Path) -> Proc {
        let mut cmd = Command::new(spire_bin("spire-agent"));
        cmd.args(["run", "-config"]).arg(config);
        Proc::spawn("spire-agent", cmd, dir)
    }

    /// Waits for `/ready` (attested, Workload API up).
    pub fn wait_ready(&mut self) {
        let health = self.health;
        let socket = self.socket.clone();
        let proc = &mut self.proc;
        wait_until("spire-agent ready", Duration::from_secs(60), || {
            proc.assert_running();
            http(health, "GET", "/ready").is_some_and(|(s, _)| s == 200)
                && std::os::unix::net::UnixStream::connect(&socket).is_ok()
        });
    }

    /// Kills the agent (SIGKILL, a crash).
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// Starts it again on the same socket and data (it keeps its SVID), and waits until ready.
    pub fn start_again(&mut self) {
        self.proc.kill();
        self.proc = Self::spawn(&self.config, &self.dir);
        self.wait_ready();
    }

    /// Starts it again (as [`SpireAgent::start_again`]) logging at `level` (`DEBUG`, `INFO`…):
    /// the agent logs every SDS request and response at DEBUG, which costs CPU under load.
    pub fn restart_logging_at(&mut self, level: &str) {
        let config = std::fs::read_to_string(&self.config).unwrap();
        let config: String = config
            .lines()
            .map(|l| {
                if l.trim_start().starts_with("log_level") {
                    format!("  log_level = \"{level}\"\n")
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        std::fs::write(&self.config, config).unwrap();
        self.start_again();
    }

    /// The sum of every series of the Prometheus metric `name` (all label sets, e.g. every
    /// `status` of `spire_agent_rpc_workload_api_fetch_jwtsvid`); 0 if the agent does not answer
    /// or has not counted any yet. Counters start at zero with each agent process.
    pub fn metric_sum(&self, name: &str) -> f64 {
        let Some((200, body)) = http(self.metrics, "GET", "/metrics") else {
            return 0.0;
        };
        body.lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
            })
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    }

    /// FetchJWTSVID calls this agent process answered, whatever their status (SPIRE's own
    /// telemetry: `spire_agent_rpc_workload_api_fetch_jwtsvid`).
    pub fn jwt_fetches(&self) -> u64 {
        self.metric_sum("spire_agent_rpc_workload_api_fetch_jwtsvid") as u64
    }
}

// === OIDC discovery ===

/// SPIRE's `oidc-discovery-provider`, reading the JWT bundle from the server API, serving plain
/// HTTP on loopback at the server's issuer URL.
#[derive(Debug)]
pub struct OidcProvider {
    /// The process.
    pub proc: Proc,
    /// `http://127.0.0.1:<port>`, the JWT-SVIDs' `iss`.
    pub issuer: String,
    /// The address it serves on.
    pub addr: SocketAddr,
}

impl OidcProvider {
    /// Serves `server`'s keys at its issuer; waits until the discovery document answers.
    pub fn start(dir: &Path, server: &SpireServer) -> Self {
        let issuer = server
            .issuer
            .clone()
            .expect("the server was started without OIDC (ServerOptions::oidc)");
        let addr = issuer.trim_start_matches("http://");
        let home = dir.join(format!("{}-oidc", server.trust_domain));
        std::fs::create_dir_all(&home).unwrap();
        // `domains`: the Host header must name one of them; `allow_insecure_scheme`: plain
        // HTTP on loopback (a real deployment serves HTTPS at a public name).
        let config = format!(
            "log_level = \"DEBUG\"\ndomains = [\"127.0.0.1\"]\nallow_insecure_scheme = true\ninsecure_addr = \"{addr}\"\nserver_api {{\n  address = \"unix://{socket}\"\n  poll_interval = \"1s\"\n}}\n",
            socket = server.socket.display(),
        );
        let config_path = home.join("oidc.conf");
        std::fs::write(&config_path, config).unwrap();
        let mut cmd = Command::new(spire_bin("oidc-discovery-provider"));
        cmd.arg("-config").arg(&config_path);
        let mut proc = Proc::spawn("oidc-discovery-provider", cmd, &home);
        let socket: SocketAddr = addr.parse().unwrap();
        wait_until(
            "oidc-discovery-provider keys",
            Duration::from_secs(30),
            || {
                proc.assert_running();
                http(socket, "GET", "/keys")
                    .is_some_and(|(s, body)| s == 200 && body.contains("\"kid\""))
            },
        );
        Self {
            proc,
            issuer,
            addr: socket,
        }
    }
}

// === One trust domain ===

/// A server, one agent, and (with [`ServerOptions::oidc`]) the OIDC discovery provider.
#[derive(Debug)]
pub struct Spire {
    /// The server.
    pub server: SpireServer,
    /// The agent the sidecars talk to.
    pub agent: SpireAgent,
    /// OIDC discovery, if on.
    pub oidc: Option<OidcProvider>,
}

impl Spire {
    /// Starts server, agent and OIDC provider in `dir`.
    pub fn start(dir: &Path, options: &ServerOptions) -> Self {
        let server = SpireServer::start(dir, options);
        Self::with_server(dir, server, options)
    }

    /// Starts the agent (and OIDC provider) of a running `server`.
    pub fn with_server(dir: &Path, server: SpireServer, options: &ServerOptions) -> Self {
        let agent = SpireAgent::start(dir, &server);
        let oidc = options.oidc.then(|| OidcProvider::start(dir, &server));
        Self {
            server,
            agent,
            oidc,
        }
    }

    /// `spiffe://<td>/<path>`.
    pub fn id(&self, path: &str) -> String {
        format!("spiffe://{}/{path}", self.server.trust_domain)
    }

    /// Registers the executable `binary` (resolved as the attestor sees it) as `spiffe_id`
    /// under this agent; returns the entry ID. `extra` as for [`SpireServer::entry`].
    pub fn register(&self, binary: &Path, spiffe_id: &str, extra: &[&str]) -> String {
        let path = binary
            .canonicalize()
            .unwrap_or_else(|e| panic!("{}: {e}", binary.display()));
        let selector = format!("unix:path:{}", path.display());
        self.server
            .entry(&self.agent.id, spiffe_id, &[&selector], extra)
    }

    /// A link to the workspace binary `name` at `dir/<as_name>`, registered as `spiffe_id`:
    /// the way to run one program as several workloads (a hard link; a copy across file
    /// systems). Returns the program's path.
    pub fn workload_binary(
        &self,
        dir: &Path,
        name: &str,
        as_name: &str,
        spiffe_id: &str,
        extra: &[&str],
    ) -> PathBuf {
        let program = dir.join(as_name);
        let source = crate::bin(name);
        if std::fs::hard_link(&source, &program).is_err() {
            std::fs::copy(&source, &program).unwrap();
        }
        self.register(&program, spiffe_id, extra);
        program
    }

    /// The issuer of JWT-SVIDs (SPIRE's OIDC discovery provider).
    pub fn issuer(&self) -> &str {
        &self.oidc.as_ref().expect("OIDC is off").issuer
    }
}

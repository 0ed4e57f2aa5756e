//! The system under test: the agent (dev agent or SPIRE), the sidecars, the Envoys and the stand-ins, started and restarted.

use super::*;

/// What the sidecars get their identities from.
pub(crate) enum Agent {
    /// The development agent, serving OIDC discovery itself.
    Dev(Box<DevAgent>),
    /// SPIRE's server, agent and OIDC discovery provider.
    Spire(Box<Spire>),
}

impl Agent {
    pub(crate) fn endpoint(&self) -> &str {
        match self {
            Self::Dev(a) => &a.endpoint,
            Self::Spire(s) => &s.agent.endpoint,
        }
    }

    pub(crate) fn socket(&self) -> &Path {
        match self {
            Self::Dev(a) => &a.socket,
            Self::Spire(s) => &s.agent.socket,
        }
    }

    /// Its TCP ports, for the garbage.
    pub(crate) fn ports(&self) -> Vec<SocketAddr> {
        match self {
            Self::Dev(a) => vec![a.admin],
            Self::Spire(s) => vec![s.agent.health, s.agent.metrics],
        }
    }

    /// FetchJWTSVID calls this agent process has counted.
    pub(crate) fn jwt_fetches(&self) -> u64 {
        match self {
            Self::Dev(a) => a.jwt_fetches(),
            Self::Spire(s) => s.agent.jwt_fetches(),
        }
    }

    pub(crate) fn kill(&mut self) {
        match self {
            Self::Dev(a) => a.proc.kill(),
            Self::Spire(s) => s.agent.kill(),
        }
    }

    /// Starts it again on the same socket and state, and waits until it serves.
    pub(crate) fn start_again(&mut self) {
        match self {
            Self::Dev(a) => a.restart(),
            Self::Spire(s) => s.agent.start_again(),
        }
    }

    pub(crate) fn assert_running(&mut self) {
        match self {
            Self::Dev(a) => a.proc.assert_running(),
            Self::Spire(s) => {
                s.agent.proc.assert_running();
                s.server.proc.assert_running();
                if let Some(oidc) = s.oidc.as_mut() {
                    oidc.proc.assert_running();
                }
            }
        }
    }

    pub(crate) fn spire(&self) -> Option<&Spire> {
        match self {
            Self::Dev(_) => None,
            Self::Spire(s) => Some(s),
        }
    }

    /// The X.509-SVID lifetime the agent issues and the time before its `notBefore` that
    /// lifetime is counted from (`notAfter - notBefore` is their sum).
    pub(crate) fn x509_ttl(&self) -> (f64, f64) {
        match self {
            Self::Dev(_) => (X509_TTL as f64, 0.0),
            Self::Spire(_) => (SPIRE_X509_TTL as f64, SPIRE_BACKDATE),
        }
    }

    /// The least validity a credential has left once the sidecars hold a fresh one after an
    /// outage, `(JWT-SVID, X.509-SVID)`: on the dev agent half its life (the agent rotates
    /// at half-life); on SPIRE 45 % of its life, the earliest the agent renews an SVID or
    /// stops handing out the JWT-SVID it cached.
    pub(crate) fn fresh(&self) -> (f64, f64) {
        let (x509, backdate) = self.x509_ttl();
        match self {
            Self::Dev(_) => (JWT_TTL as f64 / 2.0 - 1.0, x509 / 2.0 - 1.0),
            Self::Spire(_) => (
                rates::SPIRE_REUSE.0 * JWT_TTL as f64 - 1.0,
                rates::SPIRE_REUSE.0 * (x509 + backdate) - 1.0,
            ),
        }
    }
}

/// The program a sidecar runs: the workspace binary on the dev agent; on SPIRE a link to it
/// in `<dir>/programs`, registered as that sidecar's own workload (`unix:path`).
pub(crate) fn program(agent: &Agent, dir: &Path, which: Sidecar) -> PathBuf {
    match agent {
        Agent::Dev(_) => suite_tests::bin(which.binary()),
        Agent::Spire(_) => dir.join("programs").join(which.program()),
    }
}

pub(crate) struct System {
    pub(crate) dir: PathBuf,
    pub(crate) agent: Agent,
    pub(crate) client_bridge: SdsBridge,
    pub(crate) server_bridge: SdsBridge,
    pub(crate) helper: JwtHelper,
    pub(crate) helper_port: u16,
    pub(crate) broker: Broker,
    pub(crate) broker_listen: SocketAddr,
    pub(crate) vault: FakeVault,
    pub(crate) vault_broker: Broker,
    pub(crate) entra: FakeEntra,
    pub(crate) azure_broker: Broker,
    pub(crate) google: FakeGoogle,
    pub(crate) gcp_broker: Broker,
    pub(crate) proxy: StsProxy,
    pub(crate) moto: Moto,
    pub(crate) client_envoy: Envoy,
    pub(crate) server_envoy: Envoy,
    pub(crate) jwks: SocketAddr,
    pub(crate) jwt_port: u16,
    pub(crate) injector_port: u16,
    pub(crate) mtls_port: u16,
}

pub(crate) fn start_helper(dir: &Path, agent: &Agent, port: u16) -> JwtHelper {
    // A fixed port across restarts: Envoy's ext_authz cluster points at it.
    let mut helper = JwtHelper::start_program_at(
        &program(agent, dir, Sidecar::Helper),
        dir,
        agent.endpoint(),
        addr(port),
        &["--audience", AUDIENCE],
    );
    helper.wait_ready(Duration::from_secs(30));
    helper
}

pub(crate) fn start_bridge(
    which: Sidecar,
    root: &Path,
    agent: &Agent,
    jwks: Option<SocketAddr>,
) -> SdsBridge {
    let jwks_arg = jwks.map(|a| a.to_string());
    let mut args = vec!["--log-format", "json"];
    if let Some(a) = &jwks_arg {
        args.extend(["--jwks-listen", a.as_str()]);
    }
    let (name, dir) = match which {
        Sidecar::ServerBridge => ("sds-bridge-server", root.join("server")),
        _ => ("sds-bridge-client", root.join("client")),
    };
    let mut bridge = SdsBridge::start_program(
        &program(agent, root, which),
        name,
        &dir,
        agent.endpoint(),
        &args,
        &[("RUST_LOG", "warn")],
    );
    bridge.wait_ready(Duration::from_secs(30));
    bridge
}

pub(crate) fn start_broker(dir: &Path, agent: &Agent, sts: &str, listen: SocketAddr) -> Broker {
    // A fixed address across restarts: the clients keep using it.
    let mut broker = Broker::start_at(
        Command::new(program(agent, dir, Sidecar::Broker(Provider::Aws))),
        listen,
        dir,
        agent.endpoint(),
        sts,
        &[],
        &[("AWS_CONTAINER_AUTHORIZATION_TOKEN", CONTAINER_TOKEN)],
    );
    broker.wait_ready(Duration::from_secs(30));
    broker
}

pub(crate) fn start_vault_broker(
    dir: &Path,
    agent: &Agent,
    vault: &FakeVault,
    listen: SocketAddr,
) -> Broker {
    let vault_dir = dir.join("vault");
    let ca = vault.write_ca(&vault_dir);
    let mut broker = azure::start_broker_at(
        &program(agent, dir, Sidecar::Broker(Provider::Vault)),
        listen,
        &vault_dir,
        agent.endpoint(),
        &[
            "vault",
            "--vault-addr",
            &vault.url(),
            "--role",
            vault::ROLE,
            "--ca-file",
            ca.to_str().unwrap(),
        ],
        &[],
    );
    broker.wait_ready(Duration::from_secs(30));
    broker
}

pub(crate) fn start_azure_broker(
    dir: &Path,
    agent: &Agent,
    entra: &FakeEntra,
    listen: SocketAddr,
) -> Broker {
    let mut broker = azure::start_entra_broker_at(
        &program(agent, dir, Sidecar::Broker(Provider::Azure)),
        listen,
        &dir.join("azure"),
        agent.endpoint(),
        entra,
        IDENTITY_HEADER,
        &[],
        &[],
    );
    broker.wait_ready(Duration::from_secs(30));
    broker
}

pub(crate) fn start_gcp_broker(
    dir: &Path,
    agent: &Agent,
    google: &FakeGoogle,
    listen: SocketAddr,
) -> Broker {
    let mut broker = gcp::start_google_broker_at(
        &program(agent, dir, Sidecar::Broker(Provider::Gcp)),
        listen,
        &dir.join("gcp"),
        agent.endpoint(),
        google,
        &[],
        &[],
    );
    broker.wait_ready(Duration::from_secs(30));
    broker
}

/// What [`System::start`] starts, in its order; the load and the boto3 loop follow.
pub(crate) const STARTS: &str = "2 sds-bridges, jwt-auth-helper, \
    moto behind the STS proxy + iam-broker aws, fake Vault + iam-broker vault, \
    fake Entra ID + iam-broker azure, fake Google STS + iam-broker gcp, echo upstream, 2 Envoys";

/// The dev agent for both identities, serving OIDC discovery at the JWT-SVIDs' issuer.
pub(crate) fn dev_agent(dir: &Path) -> (Agent, String) {
    let state = dir.join("state");
    let ids = format!("{CLIENT},{SERVER}");
    let oidc = addr(free_port());
    let issuer = format!("http://{oidc}");
    let agent = DevAgent::start(
        dir,
        &[
            "--trust-domain",
            TD,
            "--spiffe-id",
            &ids,
            "--state-dir",
            state.to_str().unwrap(),
            "--x509-ttl",
            &format!("{X509_TTL}s"),
            "--jwt-ttl",
            &format!("{JWT_TTL}s"),
            "--jwt-key-rotation",
            &format!("{JWT_KEY_ROTATION}s"),
            "--oidc-listen",
            &oidc.to_string(),
            "--jwt-issuer",
            &issuer,
        ],
    );
    (Agent::Dev(Box::new(agent)), issuer)
}

/// SPIRE's server (SVID lifetimes as above), agent and OIDC discovery provider, and every
/// sidecar's program linked into `<dir>/programs` and registered as its own workload: the
/// server bridge as the server, the other six as the client.
pub(crate) fn spire(dir: &Path) -> (Agent, String) {
    let options = ServerOptions {
        x509_ttl: Duration::from_secs(SPIRE_X509_TTL),
        jwt_ttl: Duration::from_secs(JWT_TTL),
        ..ServerOptions::new(TD)
    };
    let spire = Spire::start(dir, &options);
    let programs = dir.join("programs");
    std::fs::create_dir_all(&programs).unwrap();
    for which in ROTATION {
        let id = if which == Sidecar::ServerBridge {
            SERVER
        } else {
            CLIENT
        };
        spire.workload_binary(&programs, which.binary(), which.program(), id, &[]);
    }
    let issuer = spire.issuer().to_owned();
    (Agent::Spire(Box::new(spire)), issuer)
}

impl System {
    pub(crate) fn start(dir: &Path, on_spire: bool) -> Self {
        let (agent, issuer) = if on_spire { spire(dir) } else { dev_agent(dir) };
        let jwks = addr(free_port());
        std::fs::create_dir_all(dir.join("client")).unwrap();
        std::fs::create_dir_all(dir.join("server")).unwrap();
        let client_bridge = start_bridge(Sidecar::ClientBridge, dir, &agent, None);
        let server_bridge = start_bridge(Sidecar::ServerBridge, dir, &agent, Some(jwks));
        let helper_port = free_port();
        let helper = start_helper(dir, &agent, helper_port);

        let moto = Moto::start(dir);
        let proxy = StsProxy::start(moto.addr);
        proxy.set_lifetime(STS_LIFETIME);
        let broker_listen = addr(free_port());
        let broker = start_broker(dir, &agent, &proxy.url(), broker_listen);

        let vault = FakeVault::start(&issuer, CLIENT, None);
        vault.set_ttls(VAULT_TTL, VAULT_MAX_TTL);
        vault.put_secret(
            "soak/config",
            serde_json::json!({ "password": VAULT_VALUE }),
        );
        std::fs::create_dir_all(dir.join("vault")).unwrap();
        let vault_broker = start_vault_broker(dir, &agent, &vault, addr(free_port()));

        let azure_dir = dir.join("azure");
        std::fs::create_dir_all(&azure_dir).unwrap();
        let federated = FederatedCredential {
            issuer: issuer.clone(),
            subject: CLIENT.to_owned(),
            audience: azure::AUDIENCE.to_owned(),
        };
        let entra = azure::start_entra(&azure_dir, &federated);
        entra.set_lifetime(CLOUD_TOKEN_LIFETIME);
        let azure_broker = start_azure_broker(dir, &agent, &entra, addr(free_port()));
        let gcp_dir = dir.join("gcp");
        std::fs::create_dir_all(&gcp_dir).unwrap();
        let google = gcp::start_google(&gcp_dir, &issuer);
        google.set_lifetime(CLOUD_TOKEN_LIFETIME);
        let gcp_broker = start_gcp_broker(dir, &agent, &google, addr(free_port()));

        // The server: mTLS (SDS names as a VM's Envoy asks: the SPIFFE ID and `spiffe://<td>`)
        // + jwt_authn as the generator prints it.
        let echo = echo::start();
        let gen_args = |part: &str| {
            jwt_authn_config(&[
                "--trust-domain",
                TD,
                "--audience",
                AUDIENCE,
                "--jwks-address",
                &jwks.to_string(),
                // Envoy refetches the JWKS 5 s before this ends: every 5 s, well inside the
                // 15 s for which the dev agent publishes a key before signing with it (on
                // SPIRE, a prepared key is activated once Envoy fetched it).
                "--cache-duration",
                "10s",
                "--part",
                part,
            ])
        };
        let mtls_port = free_port();
        let server_envoy = Envoy::start(
            "envoy-server",
            dir,
            &bootstrap(
                free_port(),
                "server",
                &[mtls_listener_with_filters(
                    "mtls",
                    mtls_port,
                    &common_tls_context(Shape::Vm, "sds", SERVER, TD),
                    &gen_args("filters"),
                )],
                &[
                    sds_cluster("sds", &server_bridge.socket),
                    gen_args("cluster"),
                    static_cluster("upstream", echo, false),
                ],
            ),
        );
        // The client: two listeners to the server over mTLS, a new connection every 20
        // requests so rotated certificates keep being used.
        let (jwt_port, injector_port) = (free_port(), free_port());
        let ext_authz = ext_authz_filter("envoy_grpc:\n  cluster_name: ext_authz");
        let client_envoy = Envoy::start(
            "envoy-client",
            dir,
            &bootstrap(
                free_port(),
                "client",
                &[
                    filtered_listener("jwt", jwt_port, "", &ext_authz),
                    credential_injector_listener(
                        "injector",
                        injector_port,
                        "sds",
                        &format!("jwt-svid:{AUDIENCE}"),
                    ),
                ],
                &[
                    sds_cluster("sds", &client_bridge.socket),
                    static_cluster("ext_authz", addr(helper_port), true),
                    tls_cluster(
                        "upstream",
                        addr(mtls_port),
                        &common_tls_context(Shape::Istio, "sds", "", ""),
                        20,
                    ),
                ],
            ),
        );
        Self {
            dir: dir.to_path_buf(),
            agent,
            client_bridge,
            server_bridge,
            helper,
            helper_port,
            broker,
            broker_listen,
            vault,
            vault_broker,
            entra,
            azure_broker,
            google,
            gcp_broker,
            proxy,
            moto,
            client_envoy,
            server_envoy,
            jwks,
            jwt_port,
            injector_port,
            mtls_port,
        }
    }

    /// `(name, pid, admin)` of every sidecar, for the resource samples.
    pub(crate) fn sidecars(&self) -> Vec<(&'static str, u32, SocketAddr)> {
        vec![
            ("jwt-auth-helper", self.helper.proc.pid(), self.helper.admin),
            (
                "sds-bridge (client)",
                self.client_bridge.proc.pid(),
                self.client_bridge.admin,
            ),
            (
                "sds-bridge (server)",
                self.server_bridge.proc.pid(),
                self.server_bridge.admin,
            ),
            ("iam-broker aws", self.broker.proc.pid(), self.broker.admin),
            (
                "iam-broker vault",
                self.vault_broker.proc.pid(),
                self.vault_broker.admin,
            ),
            (
                "iam-broker azure",
                self.azure_broker.proc.pid(),
                self.azure_broker.admin,
            ),
            (
                "iam-broker gcp",
                self.gcp_broker.proc.pid(),
                self.gcp_broker.admin,
            ),
        ]
    }

    /// Seconds of validity left, now, on the credentials the sidecars hold from the agent:
    /// `(JWT-SVID, X.509-SVID)`, the least over the sidecars.
    pub(crate) fn held(&self) -> (f64, f64) {
        let jwt = [
            metric_min(self.helper.admin, "jwt_svid_expiry_seconds"),
            metric_min(self.client_bridge.admin, "jwt_svid_expiry_seconds"),
        ];
        let x509 = [
            metric_min(self.client_bridge.admin, "x509_svid_expiry_seconds"),
            metric_min(self.server_bridge.admin, "x509_svid_expiry_seconds"),
        ];
        (
            jwt.into_iter().fold(f64::INFINITY, f64::min),
            x509.into_iter().fold(f64::INFINITY, f64::min),
        )
    }
}

impl System {
    pub(crate) fn broker(&self, provider: Provider) -> &Broker {
        match provider {
            Provider::Aws => &self.broker,
            Provider::Vault => &self.vault_broker,
            Provider::Azure => &self.azure_broker,
            Provider::Gcp => &self.gcp_broker,
        }
    }

    pub(crate) fn broker_mut(&mut self, provider: Provider) -> &mut Broker {
        match provider {
            Provider::Aws => &mut self.broker,
            Provider::Vault => &mut self.vault_broker,
            Provider::Azure => &mut self.azure_broker,
            Provider::Gcp => &mut self.gcp_broker,
        }
    }

    /// Starts `provider`'s broker as [`System::start`] did, serving on `listen`.
    pub(crate) fn start_broker(&self, provider: Provider, listen: SocketAddr) -> Broker {
        let (dir, agent) = (&self.dir, &self.agent);
        match provider {
            Provider::Aws => start_broker(dir, agent, &self.proxy.url(), listen),
            Provider::Vault => start_vault_broker(dir, agent, &self.vault, listen),
            Provider::Azure => start_azure_broker(dir, agent, &self.entra, listen),
            Provider::Gcp => start_gcp_broker(dir, agent, &self.google, listen),
        }
    }

    /// Seconds of validity left, now, on the JWT-SVIDs the brokers present: the least.
    pub(crate) fn brokers_jwt(&self) -> f64 {
        Provider::ALL
            .into_iter()
            .map(|p| metric_min(self.broker(p).admin, "jwt_svid_expiry_seconds"))
            .fold(f64::INFINITY, f64::min)
    }
}

/// The least value of every series of `name` at `admin` (infinity if none or unreachable).
pub(crate) fn metric_min(admin: SocketAddr, name: &str) -> f64 {
    let Some((200, body)) = suite_tests::http(admin, "GET", "/metrics") else {
        return f64::INFINITY;
    };
    // Each sidecar prefixes its metrics (`sds_bridge_x509_svid_expiry_seconds`).
    body.lines()
        .filter(|l| {
            let series = l.split(['{', ' ']).next().unwrap_or_default();
            !l.starts_with('#') && series.ends_with(name)
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .fold(f64::INFINITY, f64::min)
}

//! The chaos schedule: agent outages, STS faults, sidecar restarts, garbage on every socket.

use super::*;

/// Kills the agent, keeps it down `down`, restarts it, and records the window in which the
/// sidecars held nothing valid (if any), ending when every sidecar holds fresh credentials.
pub(crate) fn agent_outage(system: &mut System, record: &Shared, down: f64, chaos: &mut Chaos) {
    // What the sidecars hold, as of `held_at` (read just before the kill).
    let held_at = now();
    let (jwt_left, x509_left) = system.held();
    // The brokers' own credentials from the agent's issuer: Vault's token is the one short
    // enough to run out during an outage (the clouds' 40 s tokens outlive it).
    let vault_left = metric_min(system.vault_broker.admin, "credentials_expiry_seconds");
    // And the JWT-SVIDs the brokers present: without one no exchange can even be tried.
    let brokers_jwt_left = system.brokers_jwt();
    chaos.agent_fetches += system.agent.jwt_fetches();
    let killed = now();
    system.agent.kill();
    event(
        record,
        format!(
            "agent SIGKILL, down {down:.1} s (held: JWT-SVID {jwt_left:.1} s, X.509-SVID {x509_left:.1} s left)"
        ),
    );
    std::thread::sleep(Duration::from_secs_f64(down));
    system.agent.start_again();
    let up = now();
    chaos.outages.push((killed, up));
    // Fresh again: every sidecar holds a credential with more life left than when the agent
    // would renew it.
    let (jwt_fresh, x509_fresh) = system.agent.fresh();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (jwt, x509) = system.held();
        if (jwt > jwt_fresh && x509 > x509_fresh) || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let fresh = now();
    // The Vault token is fresh again once the broker logged in anew (on the dev agent Vault
    // can verify the JWT-SVID only while the issuer's discovery document answers, i.e. the
    // agent; on SPIRE only once the broker holds a JWT-SVID again).
    let vault_deadline = Instant::now() + Duration::from_secs(30);
    while metric_min(system.vault_broker.admin, "credentials_expiry_seconds") < 2.0
        && Instant::now() < vault_deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let vault_fresh = now();
    // Every broker holds a JWT-SVID again (its cache refuses one in its last second).
    let jwt_deadline = Instant::now() + Duration::from_secs(30);
    while system.brokers_jwt() <= 1.0 && Instant::now() < jwt_deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let brokers_fresh = now();
    let no_jwt_from = held_at + brokers_jwt_left - 1.0;
    if no_jwt_from < brokers_fresh {
        // A broker that found none tries again within its identity retry's longest delay.
        chaos
            .no_jwt
            .push((no_jwt_from, brokers_fresh + IDENTITY_RETRY_MAX));
    }
    // Below a tenth of its life (0.8 s of 8 s) the broker no longer hands a token out.
    let vault_none_from = held_at + vault_left - VAULT_TTL.as_secs_f64() / 10.0;
    if system.agent.spire().is_some() {
        // SPIRE's discovery provider answers throughout and renewals need no JWT-SVID: the
        // Vault token can run out only if a login fell due while the broker held none.
        if no_jwt_from < brokers_fresh {
            record.lock().unwrap().windows.push(Window {
                from: no_jwt_from,
                to: vault_fresh.max(brokers_fresh) + 0.5,
                paths: &[VAULT_PATH],
                why: "the vault broker's JWT-SVID ran out in the outage; no Vault login possible \
                      until the agent was back"
                    .to_owned(),
            });
        }
    } else if vault_none_from < vault_fresh {
        record.lock().unwrap().windows.push(Window {
            from: vault_none_from,
            to: vault_fresh + 0.5,
            paths: &[VAULT_PATH],
            why: format!(
                "Vault token ran out {:.1} s into the outage; no login possible until the issuer was back",
                vault_none_from - killed
            ),
        });
    }
    event(
        record,
        format!(
            "agent back after {:.1} s; sidecars fresh {:.2} s later",
            up - killed,
            fresh - up
        ),
    );
    // Nothing valid existed from the first expiry (a token is refused 1 s before its `exp`
    // by the cache's margin, a certificate at its notAfter) until the sidecars were fresh.
    let none_valid_from = held_at + (jwt_left - 1.0).min(x509_left);
    if none_valid_from < fresh {
        record.lock().unwrap().windows.push(Window {
            from: none_valid_from,
            to: fresh + 0.5,
            paths: &PATHS,
            why: format!(
                "agent down {:.1} s, longer than the credentials held ({:.1} s)",
                up - killed,
                (jwt_left - 1.0).min(x509_left)
            ),
        });
    }
}

/// What the chaos did, for the call-rate checks: the fault windows, and per broker its restarts
/// and the counters of its earlier incarnations (a process's counters start at zero, so each is
/// read just before the SIGTERM and added up).
#[derive(Debug, Default)]
pub(crate) struct Chaos {
    /// FetchJWTSVID calls of the agent's earlier incarnations.
    pub(crate) agent_fetches: u64,
    /// Agent outages: from the kill until it served again.
    pub(crate) outages: Vec<(f64, f64)>,
    /// Spans in which a broker may have held no JWT-SVID (one ran out during an outage), so no
    /// exchange could even be tried.
    pub(crate) no_jwt: Vec<(f64, f64)>,
    /// STS fault stretches: from, to, and whether calls fail in them (else they are slow).
    pub(crate) sts_faults: Vec<(f64, f64, bool)>,
    /// Per broker: its restarts, from the SIGTERM until it was ready again.
    pub(crate) restarts: BTreeMap<Provider, Vec<(f64, f64)>>,
    /// Per counter series: the sum over the broker's earlier incarnations.
    pub(crate) banked: BTreeMap<&'static str, u64>,
    /// Per broker: spans from a read of its counters to the end of that process, in which a
    /// stand-in may answer a call the broker never counts.
    pub(crate) blind: BTreeMap<Provider, Vec<(f64, f64)>>,
}

impl Chaos {
    /// The series' total over every incarnation of `broker`, the running one included.
    pub(crate) fn total(&self, broker: &Broker, series: &'static str) -> u64 {
        self.banked.get(series).copied().unwrap_or(0) + broker.metric(series)
    }
}

/// The sidecars stopped with SIGTERM and started again, in this turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sidecar {
    Helper,
    ClientBridge,
    ServerBridge,
    Broker(Provider),
}

impl Sidecar {
    /// The workspace binary it runs.
    pub(crate) fn binary(self) -> &'static str {
        match self {
            Self::Helper => "jwt-auth-helper",
            Self::ClientBridge | Self::ServerBridge => "sds-bridge",
            Self::Broker(_) => "iam-broker",
        }
    }

    /// The name of its program on SPIRE: one executable path per workload.
    pub(crate) fn program(self) -> &'static str {
        match self {
            Self::Helper => "jwt-auth-helper",
            Self::ClientBridge => "sds-bridge-client",
            Self::ServerBridge => "sds-bridge-server",
            Self::Broker(Provider::Aws) => "iam-broker-aws",
            Self::Broker(Provider::Vault) => "iam-broker-vault",
            Self::Broker(Provider::Azure) => "iam-broker-azure",
            Self::Broker(Provider::Gcp) => "iam-broker-gcp",
        }
    }
}

pub(crate) const ROTATION: [Sidecar; 7] = [
    Sidecar::Helper,
    Sidecar::ClientBridge,
    Sidecar::ServerBridge,
    Sidecar::Broker(Provider::Aws),
    Sidecar::Broker(Provider::Vault),
    Sidecar::Broker(Provider::Azure),
    Sidecar::Broker(Provider::Gcp),
];

/// The four brokers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Provider {
    Aws,
    Vault,
    Azure,
    Gcp,
}

/// The brokers' counters of successful exchanges.
pub(crate) const STS_OK: &str = "iam_broker_sts_calls_total{outcome=\"success\"}";
pub(crate) const VAULT_LOGINS: &str =
    "iam_broker_token_exchanges_total{provider=\"vault\",outcome=\"success\"}";
pub(crate) const VAULT_RENEWALS: &str =
    "iam_broker_token_exchanges_total{provider=\"vault\",outcome=\"renewed\"}";
pub(crate) const AZURE_OK: &str =
    "iam_broker_token_exchanges_total{provider=\"azure\",outcome=\"success\"}";
pub(crate) const GCP_OK: &str =
    "iam_broker_token_exchanges_total{provider=\"gcp\",outcome=\"success\"}";

impl Provider {
    pub(crate) const ALL: [Self; 4] = [Self::Aws, Self::Vault, Self::Azure, Self::Gcp];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Aws => "iam-broker aws",
            Self::Vault => "iam-broker vault",
            Self::Azure => "iam-broker azure",
            Self::Gcp => "iam-broker gcp",
        }
    }

    /// The paths that cannot work while it restarts.
    pub(crate) fn paths(self) -> &'static [&'static str] {
        match self {
            Self::Aws => &[CREDS_PATH, SDK_PATH],
            Self::Vault => &[VAULT_PATH],
            Self::Azure => &[AZURE_PATH],
            Self::Gcp => &[GCP_PATH],
        }
    }

    pub(crate) fn series(self) -> &'static [&'static str] {
        match self {
            Self::Aws => &[STS_OK],
            Self::Vault => &[VAULT_LOGINS, VAULT_RENEWALS],
            Self::Azure => &[AZURE_OK],
            Self::Gcp => &[GCP_OK],
        }
    }
}

/// Stops a sidecar with SIGTERM, checks it exited 0, starts it again; records a window for
/// the paths that cannot work while it is gone. A broker's counters are banked first.
pub(crate) fn restart_sidecar(
    system: &mut System,
    record: &Shared,
    which: Sidecar,
    started: &mut BTreeMap<u32, f64>,
    chaos: &mut Chaos,
) {
    let from = now();
    let (name, paths): (&str, &'static [&'static str]) = match which {
        Sidecar::Helper => {
            let clean = system.helper.proc.terminate(Duration::from_secs(10));
            assert!(clean, "jwt-auth-helper did not exit 0 on SIGTERM");
            system.helper = start_helper(&system.dir, &system.agent, system.helper_port);
            started.insert(system.helper.proc.pid(), now());
            ("jwt-auth-helper", &[JWT_PATH])
        }
        Sidecar::ClientBridge => {
            let clean = system.client_bridge.proc.terminate(Duration::from_secs(10));
            assert!(clean, "sds-bridge did not exit 0 on SIGTERM");
            system.client_bridge =
                start_bridge(Sidecar::ClientBridge, &system.dir, &system.agent, None);
            started.insert(system.client_bridge.proc.pid(), now());
            // Envoy keeps the secrets it has while the SDS stream is gone: nothing may fail.
            ("sds-bridge (client; Envoy's SDS stream cut)", &[])
        }
        Sidecar::ServerBridge => {
            let clean = system.server_bridge.proc.terminate(Duration::from_secs(10));
            assert!(clean, "sds-bridge did not exit 0 on SIGTERM");
            system.server_bridge = start_bridge(
                Sidecar::ServerBridge,
                &system.dir,
                &system.agent,
                Some(system.jwks),
            );
            started.insert(system.server_bridge.proc.pid(), now());
            // Envoy keeps its secrets and its JWKS (async_fetch) while the bridge is gone.
            ("sds-bridge (server; SDS stream and JWKS cut)", &[])
        }
        Sidecar::Broker(provider) => {
            let read = now();
            let broker = system.broker(provider);
            for &series in provider.series() {
                *chaos.banked.entry(series).or_default() += broker.metric(series);
            }
            let listen = broker.listen;
            let clean = system
                .broker_mut(provider)
                .proc
                .terminate(Duration::from_secs(10));
            assert!(clean, "{} did not exit 0 on SIGTERM", provider.name());
            chaos.blind.entry(provider).or_default().push((read, now()));
            let broker = system.start_broker(provider, listen);
            started.insert(broker.proc.pid(), now());
            *system.broker_mut(provider) = broker;
            chaos
                .restarts
                .entry(provider)
                .or_default()
                .push((from, now()));
            (provider.name(), provider.paths())
        }
    };
    let to = now();
    event(
        record,
        format!(
            "{name}: SIGTERM (exit 0), restarted, ready in {:.2} s",
            to - from
        ),
    );
    if !paths.is_empty() {
        record.lock().unwrap().windows.push(Window {
            from,
            to: to + 0.5,
            paths,
            why: format!("{name} restarting"),
        });
    }
}

/// How long each call waits in the slow STS fault.
pub(crate) const STS_DELAY: Duration = Duration::from_secs(8);

/// STS failing for `secs` in one of three ways, then healthy again.
pub(crate) fn sts_fault(
    system: &System,
    record: &Shared,
    kind: usize,
    secs: f64,
    chaos: &mut Chaos,
) {
    let from = now();
    let (what, fails) = match kind % 3 {
        0 => {
            system.proxy.set_fault(Fault::Status(503));
            ("503", true)
        }
        1 => {
            system.proxy.set_fault(Fault::StsError(400, "Throttling"));
            ("Throttling", true)
        }
        _ => {
            system.proxy.set_delay(STS_DELAY);
            ("8 s delays", false)
        }
    };
    event(record, format!("STS fault for {secs:.0} s: {what}"));
    std::thread::sleep(Duration::from_secs_f64(secs));
    system.proxy.set_fault(Fault::Forward);
    system.proxy.set_delay(Duration::ZERO);
    chaos.sts_faults.push((from, now(), fails));
    event(record, "STS healthy".into());
}

/// Connects to every socket and port and writes junk: random bytes, an HTTP/1 request to the
/// gRPC ports, a truncated HTTP/2 preface; then closes.
pub(crate) fn garbage(system: &System, round: u64) {
    use std::os::unix::net::UnixStream;
    let junk: Vec<u8> = (0..2048u64)
        .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(round * 97) >> 7) as u8)
        .collect();
    let payloads: [&[u8]; 3] = [
        &junk,
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x40\x01\x04\x00\x00\x00\x01",
    ];
    let payload = payloads[(round % 3) as usize];
    for socket in [
        system.agent.socket(),
        &system.client_bridge.socket,
        &system.server_bridge.socket,
    ] {
        if let Ok(mut s) = UnixStream::connect(socket) {
            let _ = s.write_all(payload);
        }
    }
    for target in [
        addr(system.helper_port),
        system.helper.admin,
        system.client_bridge.admin,
        system.server_bridge.admin,
        system.jwks,
        system.broker_listen,
        system.broker.admin,
        system.vault_broker.listen,
        system.vault_broker.admin,
        system.azure_broker.listen,
        system.azure_broker.admin,
        system.gcp_broker.listen,
        system.gcp_broker.admin,
        addr(system.jwt_port),
        addr(system.injector_port),
        addr(system.mtls_port),
    ]
    .into_iter()
    .chain(system.agent.ports())
    {
        if let Ok(mut s) = std::net::TcpStream::connect(target) {
            let _ = s.write_all(payload);
        }
    }
}

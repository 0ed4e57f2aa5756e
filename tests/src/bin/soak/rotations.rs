//! SPIRE's forced authority rotations (`localauthority x509|jwt prepare/activate/taint/revoke`), each step gated on what Envoy and the bridges hold.

use super::*;

/// One of SPIRE's local authorities.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Authority {
    X509,
    Jwt,
}

impl Authority {
    /// The `spire-server localauthority` subcommand.
    pub(crate) fn kind(self) -> &'static str {
        match self {
            Self::X509 => "x509",
            Self::Jwt => "jwt",
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::X509 => "X.509 CA",
            Self::Jwt => "JWT key",
        }
    }
}

/// Where a rotation stands: each step is taken once what the previous one changed reached
/// everything that must see it.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Step {
    /// Prepared: the new authority is in the bundle; waiting until the Envoys (X.509), or the
    /// bridge's JWKS and the discovery document (JWT), have it.
    Published,
    /// JWT: the key is at the bridge and the discovery provider; waiting until Envoy fetched
    /// the JWKS twice more (`fetches` as of then: a fetch in flight may predate the key).
    Fetching { fetches: u64 },
    /// The new authority activated and the old one tainted at `at`; waiting until nothing
    /// signed by the old one is in use: every certificate the Envoys present comes from the
    /// new CA and the agent renewed its own SVID since (`agent`: its pid and renewals then), or
    /// every JWT-SVID signed by the old key has expired.
    Tainted { at: f64, agent: (u32, f64) },
    /// The old authority revoked: waiting until it left the Envoys' validation contexts, or
    /// the bridge's JWKS and the discovery document.
    Revoked,
}

#[derive(Debug)]
pub(crate) struct Rotation {
    pub(crate) authority: Authority,
    pub(crate) old: String,
    pub(crate) new: String,
    pub(crate) step: Step,
    pub(crate) started: f64,
    pub(crate) step_since: f64,
}

/// The rotations of a run, for the table.
#[derive(Debug, Default)]
pub(crate) struct Rotations {
    pub(crate) running: Vec<Rotation>,
    /// Completed: which, and how long from `prepare` to the old authority gone.
    pub(crate) done: Vec<(Authority, f64)>,
    /// A step not reached in time, or a command refused; that authority is not rotated again.
    pub(crate) failed: Vec<(Authority, String)>,
}

impl Rotations {
    pub(crate) fn running(&self, authority: Authority) -> bool {
        self.running.iter().any(|r| r.authority == authority)
    }

    pub(crate) fn given_up(&self, authority: Authority) -> bool {
        self.failed.iter().any(|(a, _)| *a == authority)
    }

    /// Prepares a new `authority` (SPIRE only).
    pub(crate) fn begin(&mut self, system: &System, authority: Authority, record: &Shared) {
        let Some(spire) = system.agent.spire() else {
            return;
        };
        let kind = authority.kind();
        let begun = (|| {
            let old = spire
                .server
                .authority(kind, "active")
                .ok_or("no active authority")?;
            spire.server.localauthority(kind, "prepare", None)?;
            let new = spire
                .server
                .authority(kind, "prepared")
                .ok_or("nothing prepared")?;
            Ok::<_, String>((old, new))
        })();
        match begun {
            Ok((old, new)) => {
                event(
                    record,
                    format!(
                        "SPIRE {}: prepare {} (active {})",
                        authority.name(),
                        short(&new),
                        short(&old)
                    ),
                );
                self.running.push(Rotation {
                    authority,
                    old,
                    new,
                    step: Step::Published,
                    started: now(),
                    step_since: now(),
                });
            }
            Err(e) => self.failed.push((authority, format!("prepare: {e}"))),
        }
    }

    /// Takes every running rotation's next step that is due.
    pub(crate) fn advance(&mut self, system: &System, record: &Shared) {
        let running = std::mem::take(&mut self.running);
        for mut r in running {
            match advance(system, &mut r, record) {
                Ok(false) if now() - r.step_since > ROTATION_STEP_TIMEOUT => self.failed.push((
                    r.authority,
                    format!(
                        "{:?} not done {ROTATION_STEP_TIMEOUT:.0} s after the step began",
                        r.step
                    ),
                )),
                Ok(false) => self.running.push(r),
                Ok(true) => {
                    let took = now() - r.started;
                    event(
                        record,
                        format!(
                            "SPIRE {}: {} revoked and gone everywhere, {took:.1} s after prepare",
                            r.authority.name(),
                            short(&r.old)
                        ),
                    );
                    self.done.push((r.authority, took));
                }
                Err(e) => self.failed.push((r.authority, e)),
            }
        }
    }
}

/// The first characters of an authority ID, for the log.
pub(crate) fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// Checks `r`'s current step and takes the next one if it is due; `Ok(true)` once the old
/// authority is gone everywhere.
pub(crate) fn advance(system: &System, r: &mut Rotation, record: &Shared) -> Result<bool, String> {
    let spire = system.agent.spire().ok_or("not on SPIRE")?;
    let kind = r.authority.kind();
    let envoys = [&system.client_envoy, &system.server_envoy];
    let next = match (r.authority, r.step) {
        (Authority::X509, Step::Published) => {
            let everywhere = envoys
                .iter()
                .all(|e| sds_secrets(e).is_some_and(|s| s.cas.contains(&r.new)));
            everywhere
                .then(|| activate_and_taint(spire, r, record))
                .transpose()?
        }
        (Authority::Jwt, Step::Published) => {
            let published = jwks_has(system.jwks, &r.new)
                && spire
                    .oidc
                    .as_ref()
                    .is_some_and(|o| jwks_at(o.addr, "/keys", &r.new));
            published.then(|| Step::Fetching {
                fetches: envoy_counter(&system.server_envoy, "jwks_fetch_success"),
            })
        }
        (Authority::Jwt, Step::Fetching { fetches }) => {
            let fetched = envoy_counter(&system.server_envoy, "jwks_fetch_success") >= fetches + 2;
            fetched
                .then(|| activate_and_taint(spire, r, record))
                .transpose()?
        }
        (Authority::X509, Step::Tainted { agent, .. }) => {
            let renewed = agent_svid_renewals(spire);
            let agent_renewed = renewed.0 != agent.0 || renewed.1 > agent.1;
            let all_new = envoys.iter().all(|e| {
                sds_secrets(e)
                    .is_some_and(|s| !s.leaves.is_empty() && s.leaves.iter().all(|a| *a == r.new))
            });
            (agent_renewed && all_new)
                .then(|| revoke(spire, r, record))
                .transpose()?
        }
        (Authority::Jwt, Step::Tainted { at, .. }) => {
            // Every token signed by the old key was issued before `at`, for `JWT_TTL` at most.
            (now() > at + JWT_TTL as f64 + 1.0)
                .then(|| revoke(spire, r, record))
                .transpose()?
        }
        (Authority::X509, Step::Revoked) => {
            let gone = envoys
                .iter()
                .all(|e| sds_secrets(e).is_some_and(|s| !s.cas.contains(&r.old)));
            return Ok(gone);
        }
        (Authority::Jwt, Step::Revoked) => {
            let gone = !jwks_has(system.jwks, &r.old)
                && spire
                    .oidc
                    .as_ref()
                    .is_some_and(|o| !jwks_at(o.addr, "/keys", &r.old));
            return Ok(gone);
        }
        (Authority::X509, Step::Fetching { .. }) => {
            return Err(format!("{kind}: no JWKS step for a CA"));
        }
    };
    if let Some(step) = next {
        r.step = step;
        r.step_since = now();
    }
    Ok(false)
}

pub(crate) fn activate_and_taint(
    spire: &Spire,
    r: &Rotation,
    record: &Shared,
) -> Result<Step, String> {
    let kind = r.authority.kind();
    spire
        .server
        .localauthority(kind, "activate", Some(&r.new))?;
    spire.server.localauthority(kind, "taint", Some(&r.old))?;
    event(
        record,
        format!(
            "SPIRE {}: activate {}, taint {} ({:.1} s after prepare)",
            r.authority.name(),
            short(&r.new),
            short(&r.old),
            now() - r.started
        ),
    );
    Ok(Step::Tainted {
        at: now(),
        agent: agent_svid_renewals(spire),
    })
}

pub(crate) fn revoke(spire: &Spire, r: &Rotation, record: &Shared) -> Result<Step, String> {
    spire
        .server
        .localauthority(r.authority.kind(), "revoke", Some(&r.old))?;
    event(
        record,
        format!(
            "SPIRE {}: revoke {} ({:.1} s after prepare)",
            r.authority.name(),
            short(&r.old),
            now() - r.started
        ),
    );
    Ok(Step::Revoked)
}

/// The agent's pid and how many times it renewed its own SVID (SPIRE's telemetry).
pub(crate) fn agent_svid_renewals(spire: &Spire) -> (u32, f64) {
    (
        spire.agent.proc.pid(),
        spire.agent.metric_sum("spire_agent_agent_svid_rotate"),
    )
}

/// Whether the JWKS the bridge serves for the trust domain has key `kid`.
pub(crate) fn jwks_has(jwks: SocketAddr, kid: &str) -> bool {
    jwks_at(jwks, &format!("/jwks/{TD}"), kid)
}

pub(crate) fn jwks_at(addr: SocketAddr, path: &str, kid: &str) -> bool {
    suite_tests::http(addr, "GET", path).is_some_and(|(status, body)| {
        status == 200
            && serde_json::from_str::<serde_json::Value>(&body).is_ok_and(|v| {
                v["keys"]
                    .as_array()
                    .is_some_and(|keys| keys.iter().any(|k| k["kid"] == kid))
            })
    })
}

/// The sum of every Envoy counter whose name ends with `.<suffix>`.
pub(crate) fn envoy_counter(envoy: &Envoy, suffix: &str) -> u64 {
    envoy
        .stats_matching(suffix)
        .lines()
        .filter_map(|l| l.split_once(": "))
        .filter(|(name, _)| name.ends_with(&format!(".{suffix}")))
        .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
        .sum()
}

//! Each broker's credential exchanges counted at its stand-in and bounded both ways (`suite_tests::rates`).

use super::*;

/// One kind of exchange a broker makes: as its stand-in logged it, as the broker counted it,
/// and what the run allows.
#[derive(Debug)]
pub(crate) struct Exchange {
    pub(crate) what: &'static str,
    /// Successful and failed calls during the run, at the stand-in.
    pub(crate) ok: u64,
    pub(crate) failed: u64,
    /// What the run allows of `ok`.
    pub(crate) bounds: Bounds,
    /// The most failed calls the retry schedule fits into the run's fault windows.
    pub(crate) failed_most: u64,
    /// Seconds the broker spent retrying (the stand-in's view), and the most the fault windows
    /// can hold its refreshes up.
    pub(crate) retrying: f64,
    pub(crate) retrying_most: f64,
    /// Successful calls over the stand-in's whole life, and the broker's count summed over its
    /// incarnations (both from before the run: the first exchanges come at start-up).
    pub(crate) standin_ok: u64,
    pub(crate) broker_ok: u64,
    pub(crate) incarnations: u64,
    /// How far the two counts may differ: successful calls answered while the broker's
    /// counters were already read (just before a SIGTERM, or at the end), or so close to its
    /// deadline that the stand-in's clock cannot tell whether the broker still took them.
    pub(crate) undecided: u64,
}

/// A fault window as one broker sees it: the most failed calls it can make in it, and the
/// longest it can hold a refresh up.
pub(crate) type FaultWindow = (u64, f64);

/// Calls answered later than this margin after a fault window's end still met the fault.
pub(crate) const WINDOW_MARGIN: f64 = 0.5;

/// The figures of every kind of exchange, at `end` (the run from `start`).
pub(crate) fn exchanges(system: &System, chaos: &Chaos, start: f64, end: f64) -> Vec<Exchange> {
    // The brokers' counts first: a call answered between the two reads is in the stand-in's
    // count only, which the cross-check allows for.
    let brokers_read = now();
    let broker_ok = |p: Provider, series| chaos.total(system.broker(p), series);
    let (sts_ok, logins_ok, renewals_ok, azure_ok, gcp_ok) = (
        broker_ok(Provider::Aws, STS_OK),
        broker_ok(Provider::Vault, VAULT_LOGINS),
        broker_ok(Provider::Vault, VAULT_RENEWALS),
        broker_ok(Provider::Azure, AZURE_OK),
        broker_ok(Provider::Gcp, GCP_OK),
    );
    // A call the proxy answered after the broker's deadline is one the broker gave up on; one
    // answered within a second of it, either side, the broker may or may not have taken.
    let sts_calls = system.proxy.calls();
    let sts: Vec<Call> = sts_calls
        .iter()
        .filter(|c| c.answered > 0.0)
        .map(|c| Call {
            at: c.at,
            answered: c.answered,
            ok: c.status == 200 && c.answered - c.at < BROKER_ATTEMPT_TIMEOUT,
        })
        .collect();
    let sts_undecided = sts_calls
        .iter()
        .filter(|c| c.status == 200 && (c.answered - c.at - BROKER_ATTEMPT_TIMEOUT).abs() < 1.0)
        .count() as u64;
    let answered = |at: f64, status: u16| Call {
        at,
        answered: at,
        ok: status == 200,
    };
    let vault = system.vault.auth_calls();
    let vault_calls = |login: bool| -> Vec<Call> {
        vault
            .iter()
            .filter(|c| c.login == login)
            .map(|c| answered(c.at, c.status))
            .collect()
    };
    let entra: Vec<Call> = system
        .entra
        .calls()
        .iter()
        .map(|c| answered(c.at, c.status))
        .collect();
    let google: Vec<Call> = system
        .google
        .calls()
        .iter()
        .filter(|c| c.api == "sts")
        .map(|c| answered(c.at, c.status))
        .collect();
    let standins_read = now();

    // Fault windows. STS failing: each call in it fails. STS slow: the one call in it waits
    // 8 s, or past the broker's deadline, then is retried after the window. Agent down: the
    // stand-ins verifying JWT-SVIDs cannot fetch the issuer's keys and refuse every one (the
    // AWS stand-in, moto, does not verify them), until the agent serves again.
    let within = |w: f64| (rates::failures_in(w), rates::hold_up(w));
    let sts_windows: Vec<FaultWindow> = chaos
        .sts_faults
        .iter()
        .map(|&(from, to, fails)| {
            if fails {
                within(to - from + WINDOW_MARGIN)
            } else {
                (1, BROKER_ATTEMPT_TIMEOUT + rates::RETRY_FIRST)
            }
        })
        .collect();
    // On SPIRE the discovery provider reads keys from the server and answers throughout an
    // agent outage: no refusal is excused.
    let outage_windows: Vec<FaultWindow> = if system.agent.spire().is_some() {
        Vec::new()
    } else {
        chaos
            .outages
            .iter()
            .map(|&(killed, up)| within(up - killed + WINDOW_MARGIN))
            .collect()
    };

    // Intervals: the lifetimes the stand-ins issue. STS's expiration is in whole seconds (the
    // broker may measure up to 1 s less); the others count `expires_in` from their answer.
    let sts_interval = Interval::half_life(STS_LIFETIME as f64, 1.0);
    let cloud_interval = Interval::half_life(CLOUD_TOKEN_LIFETIME as f64, 0.1);
    let renew_interval = Interval::half_life(VAULT_TTL.as_secs_f64(), 0.1);
    let login_interval = Interval::relogin(
        VAULT_TTL.as_secs_f64(),
        VAULT_MAX_TTL.as_secs_f64(),
        renew_interval,
    );
    let vault_logins = vault_calls(true);
    // Renewals stop while a login fails (the capped token is served until it ends): the
    // logins' retrying excuses the renewals too.
    let in_run = |calls: &[Call]| -> Vec<Call> {
        calls
            .iter()
            .filter(|c| c.at >= start && c.at <= end)
            .copied()
            .collect()
    };
    let logins_retrying = rates::retrying(&in_run(&vault_logins), end);
    let figures = |what,
                   provider: Provider,
                   calls: Vec<Call>,
                   broker_ok,
                   interval,
                   windows: &[FaultWindow],
                   waiting_on_logins: f64,
                   undecided: u64| {
        let standin_ok = calls.iter().filter(|c| c.ok).count() as u64;
        let blind = chaos.blind.get(&provider).into_iter().flatten();
        let blind: Vec<(f64, f64)> = blind
            .copied()
            .chain([(brokers_read, standins_read)])
            .collect();
        let undecided = undecided
            + calls
                .iter()
                .filter(|c| {
                    c.ok && blind
                        .iter()
                        .any(|&(read, stopped)| c.at <= stopped && c.answered >= read)
                })
                .count() as u64;
        let calls = in_run(&calls);
        let ok = calls.iter().filter(|c| c.ok).count() as u64;
        let retrying = rates::retrying(&calls, end);
        let restarts = chaos.restarts.get(&provider).map_or(&[][..], Vec::as_slice);
        let restart_time: f64 = restarts.iter().map(|(from, to)| to - from).sum();
        let no_jwt: f64 = chaos.no_jwt.iter().map(|(from, to)| to - from).sum();
        let run = Run {
            duration: end - start,
            restarts: restarts.len() as u64,
            retrying,
            excused: waiting_on_logins + no_jwt + restart_time,
        };
        Exchange {
            what,
            ok,
            failed: calls.len() as u64 - ok,
            bounds: rates::successes(interval, run),
            failed_most: windows.iter().map(|w| w.0).sum(),
            retrying,
            retrying_most: windows.iter().map(|w| w.1).sum::<f64>() + no_jwt,
            standin_ok,
            broker_ok,
            incarnations: restarts.len() as u64 + 1,
            undecided,
        }
    };
    vec![
        figures(
            "aws: STS AssumeRoleWithWebIdentity",
            Provider::Aws,
            sts,
            sts_ok,
            sts_interval,
            &sts_windows,
            0.0,
            sts_undecided,
        ),
        figures(
            "vault: logins",
            Provider::Vault,
            vault_logins,
            logins_ok,
            login_interval,
            &outage_windows,
            0.0,
            0,
        ),
        figures(
            "vault: renewals",
            Provider::Vault,
            vault_calls(false),
            renewals_ok,
            renew_interval,
            &[],
            logins_retrying,
            0,
        ),
        figures(
            "azure: Entra ID token requests",
            Provider::Azure,
            entra,
            azure_ok,
            cloud_interval,
            &outage_windows,
            0.0,
            0,
        ),
        figures(
            "gcp: Google STS token exchanges",
            Provider::Gcp,
            google,
            gcp_ok,
            cloud_interval,
            &outage_windows,
            0.0,
            0,
        ),
    ]
}

pub(crate) struct Figures {
    pub(crate) duration: f64,
    pub(crate) fetches: u64,
    /// Seconds the agent was down.
    pub(crate) down: f64,
    pub(crate) exchanges: Vec<Exchange>,
    pub(crate) outages: usize,
    pub(crate) restarts: usize,
    pub(crate) sts_faults: usize,
    pub(crate) garbage_rounds: u64,
    /// SPIRE's forced authority rotations (on SPIRE only).
    pub(crate) rotations: Option<Rotations>,
}

pub(crate) fn report(record: &Record, samples: &Samples, f: Figures) -> bool {
    let mut v = Verdict { lines: Vec::new() };
    println!("\n=== chaos events");
    let start = START.get().copied().unwrap_or(0.0);
    for w in &record.windows {
        println!(
            "  window {:>6.1}–{:>6.1} s: {} (paths: {})",
            w.from - start,
            w.to - start,
            w.why,
            w.paths.join(", ")
        );
    }

    // Requests.
    let mut unexpected: BTreeMap<&str, Vec<&Failure>> = BTreeMap::new();
    let mut expected: BTreeMap<&str, u64> = BTreeMap::new();
    for failure in &record.failures {
        if in_window(&record.windows, failure).is_some() {
            *expected.entry(failure.path).or_default() += 1;
        } else {
            unexpected.entry(failure.path).or_default().push(failure);
        }
    }
    println!("\n=== requests");
    println!(
        "  {:<28} {:>9} {:>16} {:>11}",
        "path", "ok", "failed, expected", "unexpected"
    );
    for path in PATHS {
        let ok = record.ok.get(path).copied().unwrap_or(0);
        let exp = expected.get(path).copied().unwrap_or(0);
        let bad = unexpected.get(path).map_or(0, Vec::len);
        println!("  {path:<28} {ok:>9} {exp:>16} {bad:>11}");
        v.check(format!("{path}: requests served"), ok.to_string(), ok > 0);
        v.check(
            format!("{path}: failures while a valid credential existed"),
            bad.to_string(),
            bad == 0,
        );
        for failure in unexpected.get(path).into_iter().flatten().take(5) {
            println!("      at {:>6.1} s: {}", failure.at - start, failure.what);
        }
    }
    // jwt-auth-helper never stamps a token in its last second. credential_injector stamps the
    // last secret the bridge pushed, and SDS cannot take a secret back: once a token ran out
    // while nothing valid existed (an outage longer than its life), Envoy sends it until the
    // bridge pushes a fresh one, and the receiver refuses it ("Jwt is expired"). Only there is
    // an expired token allowed, and only on that path.
    let (in_window, outside): (Vec<&(f64, &str)>, Vec<_>) =
        record.expired_tokens.iter().partition(|(at, path)| {
            *path == INJECTOR_PATH
                && record
                    .windows
                    .iter()
                    .any(|w| w.paths.contains(path) && *at >= w.from && *at <= w.to)
        });
    v.check(
        "requests carrying an expired JWT-SVID while a valid one existed",
        format!(
            "{} ({} by credential_injector while none did)",
            outside.len(),
            in_window.len()
        ),
        outside.is_empty(),
    );
    v.check(
        "requests carrying an expired client certificate",
        record.expired_certs.to_string(),
        record.expired_certs == 0,
    );

    // Resources, per incarnation that ran at least 20 s past its warm-up.
    println!("\n=== resources after warm-up (first → last sample)");
    println!(
        "  {:<22} {:>7} {:>17} {:>9} {:>11}",
        "sidecar (pid)", "span s", "RSS KiB", "FDs", "tokio tasks"
    );
    let mut measured = 0;
    for ((name, pid), (started, list)) in samples {
        let steady: Vec<&Sample> = list.iter().filter(|s| s.at >= started + WARM_UP).collect();
        let (Some(first), Some(last)) = (steady.first(), steady.last()) else {
            continue;
        };
        let span = last.at - first.at;
        if span < 20.0 {
            continue;
        }
        measured += 1;
        // Medians of the first and last three samples, so one allocation spike does not decide.
        let med = |xs: &[&Sample], f: fn(&Sample) -> f64| {
            let mut v: Vec<f64> = xs.iter().map(|s| f(s)).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let head = &steady[..steady.len().min(3)];
        let tail = &steady[steady.len().saturating_sub(3)..];
        let rss = (
            med(head, |s| s.rss_kib as f64),
            med(tail, |s| s.rss_kib as f64),
        );
        let fds = (med(head, |s| s.fds as f64), med(tail, |s| s.fds as f64));
        let tasks = (med(head, |s| s.tasks), med(tail, |s| s.tasks));
        println!(
            "  {:<22} {span:>7.0} {:>8.0}→{:<8.0} {:>4.0}→{:<4.0} {:>5.0}→{:<5.0}",
            format!("{name} ({pid})"),
            rss.0,
            rss.1,
            fds.0,
            fds.1,
            tasks.0,
            tasks.1
        );
        let growth = rss.1 / rss.0 - 1.0;
        v.check(
            format!("{name}: RSS growth after warm-up"),
            format!("{:+.1} %", growth * 100.0),
            growth < 0.10,
        );
        // Flat: connections come and go with the load, so allow a few either way.
        v.check(
            format!("{name}: open FDs"),
            format!("{:.0} → {:.0}", fds.0, fds.1),
            fds.1 <= fds.0 + 4.0,
        );
        v.check(
            format!("{name}: tokio tasks"),
            format!("{:.0} → {:.0}", tasks.0, tasks.1),
            tasks.1 <= tasks.0 + 6.0,
        );
    }
    v.check(
        "sidecar incarnations measured",
        measured.to_string(),
        measured >= 1,
    );

    // Calls upstream: FetchJWTSVID as the agent counted them, against the JWT caches' refresh
    // schedule with this agent (`rates::jwt_fetch_bounds`). Each outage may cost one call per
    // cache on reconnecting, each restart a cold one, each key change one.
    let key_changes = match &f.rotations {
        Some(r) => r.done.iter().filter(|(a, _)| *a == Authority::Jwt).count() as u64 + 1,
        None => (f.duration / JWT_KEY_ROTATION as f64) as u64,
    };
    let run = rates::JwtFetches {
        agent: if f.rotations.is_some() {
            rates::JwtAgent::Spire
        } else {
            rates::JwtAgent::Mints
        },
        ttl: JWT_TTL as f64,
        keys: JWT_KEYS.to_vec(),
        duration: f.duration,
        down: f.down,
        interruptions: (f.outages + f.restarts) as u64 + key_changes,
    };
    let fetch_bounds = rates::jwt_fetch_bounds(&run, rates::simulate_jwt_fetches(&run, 20));
    let one_per_half_life =
        JWT_KEYS.iter().sum::<u64>() as f64 * f.duration / (JWT_TTL as f64 / 2.0);
    v.check(
        "FetchJWTSVID calls vs the caches' refresh schedule",
        format!(
            "{} in [{:.0}, {:.0}] ({:.0} expected; {:.2}x one per cache per half-life)",
            f.fetches,
            fetch_bounds.low,
            fetch_bounds.high,
            fetch_bounds.expected,
            f.fetches as f64 / one_per_half_life
        ),
        fetch_bounds.hold(f.fetches),
    );
    if let Some(r) = &f.rotations {
        for authority in [Authority::X509, Authority::Jwt] {
            let took: Vec<f64> = r
                .done
                .iter()
                .filter(|(a, _)| *a == authority)
                .map(|(_, t)| *t)
                .collect();
            let failed: Vec<&String> = r
                .failed
                .iter()
                .filter(|(a, _)| *a == authority)
                .map(|(_, e)| e)
                .collect();
            let unfinished = r
                .running
                .iter()
                .filter(|x| x.authority == authority)
                .count();
            let span = took.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), t| {
                (lo.min(*t), hi.max(*t))
            });
            v.check(
                format!(
                    "SPIRE {} rotations (prepare, activate + taint, revoke), each step within {ROTATION_STEP_TIMEOUT:.0} s",
                    authority.name()
                ),
                format!(
                    "{} done ({:.1}–{:.1} s each), {} unfinished at the end{}",
                    took.len(),
                    span.0.min(span.1),
                    span.1,
                    unfinished,
                    if failed.is_empty() {
                        String::new()
                    } else {
                        format!(", failed: {failed:?}")
                    }
                ),
                // One may still run when a short run ends (its steps wait on the Envoys).
                failed.is_empty() && took.len() + unfinished > 0,
            );
        }
    }

    // Credential exchanges, each kind bounded both ways (`suite_tests::rates`): successful ones
    // at one per refresh, counted where they are answered (the stand-ins log every call with
    // its time and status), since the brokers' own counters restart with each process; their
    // sum over the incarnations, read before each restart, must agree with the stand-in.
    //
    // Why counting every call against one per half-life overshot (a 50-minute run: 201 Entra ID
    // and 210 Google calls against 151 "expected"): the broker refreshes up to 10 % before
    // half-life (19 s on average for 40 s tokens, so 159 refreshes, not 151, in 3,000 s); and
    // while the agent was down (100 outages, a third of them 7.5 s) the stand-ins could not
    // fetch the issuer's keys and refused each JWT-SVID (AADSTS700210, `invalid_grant`),
    // which the broker retried after 0.5–1 s, 1–2 s, 2–4 s…: up to 3 calls in a 1.5 s outage,
    // 5 in a 7.5 s one. Those refusals are the rest, and are bounded on their own below.
    // Neither refusal makes a provider fetch a fresh JWT-SVID and try twice (Entra does that
    // only for AADSTS700024/700027, Google STS never), so an attempt is one call.
    println!(
        "\n=== credential exchanges, at the stand-ins ({} STS fault stretches, {} agent outages)",
        f.sts_faults, f.outages
    );
    println!(
        "  {:<36} {:>5} {:>16} {:>9} {:>6} {:>7} {:>13} {:>12}",
        "exchange", "ok", "bounds", "expected", "failed", "at most", "retrying s", "broker (runs)"
    );
    for x in &f.exchanges {
        println!(
            "  {:<36} {:>5} {:>16} {:>9.1} {:>6} {:>7} {:>6.1} ≤ {:<4.0} {:>6} ({})",
            x.what,
            x.ok,
            format!("[{:.1}, {:.1}]", x.bounds.low, x.bounds.high),
            x.bounds.expected,
            x.failed,
            x.failed_most,
            x.retrying,
            x.retrying_most,
            x.broker_ok,
            x.incarnations
        );
        v.check(
            format!("{}: successful vs one per refresh", x.what),
            format!(
                "{} in [{:.1}, {:.1}] ({:.1} expected)",
                x.ok, x.bounds.low, x.bounds.high, x.bounds.expected
            ),
            x.bounds.hold(x.ok),
        );
        v.check(
            format!(
                "{}: failed vs the retry schedule in the fault windows",
                x.what
            ),
            format!(
                "{} ≤ {}; retrying {:.1} s ≤ {:.1} s",
                x.failed, x.failed_most, x.retrying, x.retrying_most
            ),
            x.failed <= x.failed_most && x.retrying <= x.retrying_most,
        );
        v.check(
            format!(
                "{}: the broker's count over its {} incarnations vs the stand-in's",
                x.what, x.incarnations
            ),
            format!(
                "{} vs {} ({} undecided)",
                x.broker_ok, x.standin_ok, x.undecided
            ),
            x.broker_ok.abs_diff(x.standin_ok) <= x.undecided,
        );
    }

    println!(
        "\n=== verdict ({:.0} s, {} agent outages, {} sidecar restarts, {} garbage rounds)",
        f.duration, f.outages, f.restarts, f.garbage_rounds
    );
    let mut all = true;
    for (what, figure, ok) in &v.lines {
        all &= *ok;
        println!("  {} {what}: {figure}", if *ok { "ok  " } else { "FAIL" });
    }
    all
}

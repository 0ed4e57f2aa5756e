//! The run: start, load and chaos for the duration, then the verdict table.

use super::*;

pub(crate) struct Verdict {
    pub(crate) lines: Vec<(String, String, bool)>,
}

impl Verdict {
    pub(crate) fn check(&mut self, what: impl Into<String>, figure: impl Into<String>, ok: bool) {
        self.lines.push((what.into(), figure.into(), ok));
    }
}

pub(crate) fn in_window(windows: &[Window], f: &Failure) -> Option<usize> {
    windows
        .iter()
        .position(|w| w.paths.contains(&f.path) && f.at >= w.from && f.at <= w.to)
}

/// Sidecar restarts after the first round: one every this many seconds, in turn.
pub(crate) const RESTART_EVERY: f64 = 100.0;

pub(crate) fn run(dir: &Path, seconds: f64, on_spire: bool) -> bool {
    let record: Shared = Arc::default();
    let agent = if on_spire {
        "SPIRE server, agent and OIDC discovery provider (an entry per sidecar)"
    } else {
        "dev agent (with OIDC discovery)"
    };
    println!("starting: {agent}, {STARTS}; then the load and the boto3 loop");
    let mut system = System::start(dir, on_spire);
    let _ = START.set(now());
    let mut started: BTreeMap<u32, f64> = BTreeMap::new();
    let stop = Arc::new(AtomicBool::new(false));
    let threads = load(&record, &stop, &system);
    let (mut sdk, sdk_out) = sdk_loop(dir, seconds, system.broker_listen, &system.moto.url());
    let mut chaos = Chaos::default();
    let fetches_before = system.agent.jwt_fetches();
    let mut samples = Samples::new();
    event(&record, format!("load running for {seconds:.0} s"));

    // The schedule, in seconds from the start (repeating for long runs):
    // - every sidecar restarted once, in turn, at 5, 7, … 17 s (inside the warm-up), then one
    //   every 100 s in the same turn (each again after 700 s);
    // - an agent outage every 30 s from 20 s, every third one longer than a JWT half-life;
    // - an STS fault stretch of 6 s every 20 s from 26 s;
    // - garbage on every socket every 3 s; samples every 2 s.
    // One thing at a time: a restart, outage or fault due while another runs waits for it.
    // On SPIRE, forced rotations of the X.509 CA and the JWT key, each every 120 s: their
    // steps are taken between the other events, as what they wait for arrives.
    let mut next_restart = 5.0;
    let mut restarts = 0usize;
    let mut next_outage = 20.0;
    let mut outages = 0usize;
    let mut next_fault = 26.0;
    let mut faults = 0usize;
    let mut next_garbage = 3.0;
    let mut garbage_rounds = 0u64;
    let mut next_sample = 0.0;
    let mut rotations = Rotations::default();
    let mut next_rotation = [
        (Authority::X509, FIRST_X509_ROTATION),
        (Authority::Jwt, FIRST_JWT_ROTATION),
    ];
    while elapsed() < seconds - 2.0 {
        let t = elapsed();
        if on_spire {
            rotations.advance(&system, &record);
            for (authority, next) in &mut next_rotation {
                if t >= *next
                    && t + ROTATION_LEAD < seconds
                    && !rotations.running(*authority)
                    && !rotations.given_up(*authority)
                {
                    rotations.begin(&system, *authority, &record);
                    *next = t + AUTHORITY_ROTATION_EVERY;
                }
            }
        }
        if t >= next_sample {
            sample(&system, &mut samples, &started);
            next_sample = t + 2.0;
        }
        if t >= next_garbage {
            garbage(&system, garbage_rounds);
            garbage_rounds += 1;
            next_garbage = t + 3.0;
        }
        if t >= next_restart && t + 8.0 < seconds {
            let which = ROTATION[restarts % ROTATION.len()];
            restart_sidecar(&mut system, &record, which, &mut started, &mut chaos);
            restarts += 1;
            next_restart = if restarts < ROTATION.len() {
                t + 2.0
            } else {
                t + RESTART_EVERY
            };
        } else if t >= next_outage && t + (JWT_TTL as f64) < seconds {
            let long = outages.is_multiple_of(3);
            let down = if long {
                JWT_TTL as f64 / 2.0 + 1.5
            } else {
                1.5
            };
            agent_outage(&mut system, &record, down, &mut chaos);
            outages += 1;
            next_outage += 30.0;
        } else if t >= next_fault && t + 8.0 < seconds {
            sts_fault(&system, &record, faults, 6.0, &mut chaos);
            faults += 1;
            next_fault += 20.0;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    sample(&system, &mut samples, &started);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    wait_until("the boto3 loop to finish", Duration::from_secs(30), || {
        !Path::new(&format!("/proc/{}", sdk.pid())).exists()
            || std::fs::read_to_string(format!("/proc/{}/stat", sdk.pid()))
                .is_ok_and(|s| s.contains(") Z "))
    });
    sdk.kill();
    read_sdk_loop(&record, &sdk_out);
    let fetches = chaos.agent_fetches + system.agent.jwt_fetches() - fetches_before;
    let exchanges = exchanges(&system, &chaos, START.get().copied().unwrap_or(0.0), now());
    let duration = elapsed();

    // Every process must still be up.
    system.agent.assert_running();
    system.helper.proc.assert_running();
    system.client_bridge.proc.assert_running();
    system.server_bridge.proc.assert_running();
    system.broker.proc.assert_running();
    system.vault_broker.proc.assert_running();
    system.azure_broker.proc.assert_running();
    system.gcp_broker.proc.assert_running();
    system.client_envoy.wait_live(Duration::from_secs(5));
    system.server_envoy.wait_live(Duration::from_secs(5));

    report(
        &record.lock().unwrap(),
        &samples,
        Figures {
            duration,
            fetches,
            down: chaos.outages.iter().map(|(killed, up)| up - killed).sum(),
            exchanges,
            outages,
            restarts,
            sts_faults: faults,
            garbage_rounds,
            rotations: on_spire.then_some(rotations),
        },
    )
}

//! The call-rate bounds of the soak run (`src/bin/soak.rs`): how many successful credential
//! exchanges a broker makes in a run, at least and at most, and how many failed ones the retry
//! schedule fits into the run's fault windows. Pure functions, tested here both ways: a bound
//! that no count can break checks nothing.
//!
//! The model is iam-broker's credential cache (`iam-broker/src/cache.rs`): one task makes every
//! exchange. After a success it sleeps until half the lifetime it measured is left, drawn up to
//! 10 % earlier at random. After a failure it tries again after 1 s, doubling up to 20 s, each
//! delay drawn between half and all of it. A restarted broker exchanges at once. Nothing else
//! makes it call: requests only wait for the task.

/// The refresh comes up to this fraction of the time to half-life earlier, at random.
pub const REFRESH_JITTER: f64 = 0.1;
/// The first retry delay after a failed exchange (s); each next one doubles.
pub const RETRY_FIRST: f64 = 1.0;
/// The longest retry delay (s).
pub const RETRY_MAX: f64 = 20.0;
/// Added to the longest interval: the round trip, and the broker's timer firing late on a busy
/// machine (s).
pub const SLACK: f64 = 0.5;

/// The time between one successful exchange and the next while nothing fails (s).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Interval {
    /// Shortest.
    pub min: f64,
    /// Longest.
    pub max: f64,
    /// On average.
    pub mean: f64,
}

impl Interval {
    /// Credentials issued for `lifetime` s, refreshed at half-life minus the jitter. The broker
    /// measures the lifetime when they arrive, up to `short_by` s less than issued (an
    /// expiration in whole seconds, the round trip).
    pub fn half_life(lifetime: f64, short_by: f64) -> Self {
        let half = lifetime / 2.0;
        Self {
            min: (1.0 - REFRESH_JITTER) * (lifetime - short_by) / 2.0,
            max: half + SLACK,
            mean: (1.0 - REFRESH_JITTER / 2.0) * half,
        }
    }

    /// Vault logins, for tokens of `ttl` renewable up to `max_ttl` after login, renewed every
    /// `renew`: the first renewal more than `max_ttl - ttl` after the login comes back capped
    /// (Vault grants whole seconds, so less than `ttl`), and the broker logs in again in the
    /// same attempt.
    pub fn relogin(ttl: f64, max_ttl: f64, renew: Self) -> Self {
        let capped_after = max_ttl - ttl;
        let renewals = (capped_after / renew.mean).floor() + 1.0;
        Self {
            min: capped_after,
            max: capped_after + renew.max,
            mean: renewals * renew.mean,
        }
    }
}

/// What a run did to one broker.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Run {
    /// Seconds counted.
    pub duration: f64,
    /// Restarts in them: each adds a cold exchange at once.
    pub restarts: u64,
    /// Seconds these exchanges spent retrying after failed calls or waiting on slow answers,
    /// as the stand-in saw them ([`retrying`]): time in which the timer did not run.
    pub retrying: f64,
    /// Further seconds in which the broker may not have refreshed on its timer, for reasons
    /// the run caused: holding no JWT-SVID while the agent was down, restarting, another
    /// exchange retrying (a Vault login, which renewals wait for).
    pub excused: f64,
}

/// The successful exchanges a run allows.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bounds {
    /// With the mean interval and nothing excused.
    pub expected: f64,
    /// At least.
    pub low: f64,
    /// At most.
    pub high: f64,
}

impl Bounds {
    /// Whether `n` lies within the bounds.
    pub fn hold(&self, n: u64) -> bool {
        let n = n as f64;
        self.low <= n && n <= self.high
    }
}

/// Successful exchanges in `run`, one per `interval` while nothing fails.
///
/// The timer starts at each success and the next attempt comes when it ends, so two successes
/// of one broker process lie at least the shortest interval apart, plus the time retrying
/// between them; and at most the longest interval apart, plus the time retrying or excused.
///
/// - At most: one per shortest interval over the time not spent retrying, one cold exchange
///   per restart, and one for the run's edges.
/// - At least: one per longest interval over the time neither retrying nor excused, less one
///   for the edges (the first success after the start comes within the longest interval too:
///   the credentials held then are at most that old).
pub fn successes(interval: Interval, run: Run) -> Bounds {
    let restarts = run.restarts as f64;
    Bounds {
        expected: run.duration / interval.mean + restarts,
        low: (run.duration - run.retrying - run.excused) / interval.max - 1.0,
        high: (run.duration - run.retrying) / interval.min + restarts + 1.0,
    }
}

/// The most failed calls the retry schedule fits into a fault window of `window` s: one at
/// its start, then one after each shortest delay (half the nominal one) while still inside.
pub fn failures_in(window: f64) -> u64 {
    let (mut at, mut delay, mut calls) = (0.0, RETRY_FIRST, 1);
    loop {
        at += delay / 2.0;
        if at > window {
            return calls;
        }
        calls += 1;
        delay = (delay * 2.0).min(RETRY_MAX);
    }
}

/// The longest a fault window of `window` s can hold a refresh up: due at its start, failing
/// until its end, the next attempt comes at most the time already spent plus the first delay
/// later (delays at most double).
pub fn hold_up(window: f64) -> f64 {
    2.0 * window + RETRY_FIRST
}

/// One exchange as the stand-in saw it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Call {
    /// When it arrived (s).
    pub at: f64,
    /// When it was answered (s).
    pub answered: f64,
    /// Whether it gave the broker credentials.
    pub ok: bool,
}

/// Seconds the broker spent other than on its refresh timer, as the stand-in saw it: from each
/// failed call to the answer of the next successful one, and the time each other successful
/// call took to answer; a failure with no success after it counts until `end`. `calls` in
/// order of arrival.
pub fn retrying(calls: &[Call], end: f64) -> f64 {
    let mut total = 0.0;
    let mut failing_since: Option<f64> = None;
    for call in calls {
        match (call.ok, failing_since) {
            (false, None) => failing_since = Some(call.at),
            (false, Some(_)) => {}
            (true, Some(since)) => {
                total += call.answered - since;
                failing_since = None;
            }
            (true, None) => total += call.answered - call.at,
        }
    }
    total + failing_since.map_or(0.0, |since| end - since)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The soak's cloud tokens and STS credentials: 40 s, measured up to 1 s short.
    fn forty() -> Interval {
        Interval::half_life(40.0, 1.0)
    }

    #[test]
    fn half_life_intervals() {
        let i = forty();
        assert!((i.min - 17.55).abs() < 1e-9, "{i:?}");
        assert!((i.max - 20.5).abs() < 1e-9, "{i:?}");
        assert!((i.mean - 19.0).abs() < 1e-9, "{i:?}");
    }

    #[test]
    fn vault_logs_in_again_every_five_renewals() {
        let renew = Interval::half_life(8.0, 0.1);
        let login = Interval::relogin(8.0, 24.0, renew);
        assert!((login.min - 16.0).abs() < 1e-9, "{login:?}");
        assert!((login.max - 20.5).abs() < 1e-9, "{login:?}");
        assert!((login.mean - 19.0).abs() < 1e-9, "{login:?}");
    }

    #[test]
    fn fifty_minutes_without_faults() {
        let b = successes(
            forty(),
            Run {
                duration: 3000.0,
                ..Run::default()
            },
        );
        assert!((b.expected - 3000.0 / 19.0).abs() < 1e-9);
        assert!(b.hold(158), "{b:?}");
        assert!(b.hold(146) && b.hold(171), "{b:?}");
        // Too few: the last broker incarnation's count of a run that restarted it.
        assert!(!b.hold(6), "{b:?}");
        assert!(!b.hold(145), "{b:?}");
        // Too many: the check the soak had, ≤ 1.5 × 151 + restarts + 1, let 227 pass.
        assert!(!b.hold(172), "{b:?}");
        assert!(!b.hold(227), "{b:?}");
    }

    #[test]
    fn restarts_add_a_cold_exchange_each_and_lost_time_lowers_the_bounds() {
        let quiet = Run {
            duration: 600.0,
            ..Run::default()
        };
        let (q, r) = (
            successes(forty(), quiet),
            successes(
                forty(),
                Run {
                    restarts: 3,
                    ..quiet
                },
            ),
        );
        assert!((r.high - q.high - 3.0).abs() < 1e-9);
        assert!((r.expected - q.expected - 3.0).abs() < 1e-9);
        assert!((r.low - q.low).abs() < 1e-9);
        // Time retrying lowers both bounds; time merely excused only the floor.
        let retrying = successes(
            forty(),
            Run {
                retrying: 100.0,
                ..quiet
            },
        );
        assert!((q.low - retrying.low - 100.0 / 20.5).abs() < 1e-9);
        assert!((q.high - retrying.high - 100.0 / 17.55).abs() < 1e-9);
        let excused = successes(
            forty(),
            Run {
                excused: 100.0,
                ..quiet
            },
        );
        assert!((q.low - excused.low - 100.0 / 20.5).abs() < 1e-9);
        assert!((q.high - excused.high).abs() < 1e-9);
    }

    #[test]
    fn failures_fit_the_retry_schedule() {
        // Attempts at 0, ≥ 0.5, ≥ 1.5, ≥ 3.5, ≥ 7.5, ≥ 15.5 s.
        assert_eq!(failures_in(0.0), 1);
        assert_eq!(failures_in(0.4), 1);
        assert_eq!(failures_in(1.5), 3);
        assert_eq!(failures_in(6.0), 4);
        assert_eq!(failures_in(8.0), 5);
        assert_eq!(failures_in(16.0), 6);
        // Past the 20 s cap, one more per 10 s.
        assert_eq!(failures_in(25.5 + 10.0 * 3.0), 10);
        assert!((hold_up(6.0) - 13.0).abs() < 1e-9);
    }

    #[test]
    fn retrying_spans_failures_to_the_next_success() {
        let call = |at: f64, took: f64, ok| Call {
            at,
            answered: at + took,
            ok,
        };
        let calls = [
            call(0.0, 0.0, true),
            call(19.0, 0.0, false),
            call(20.0, 0.0, false),
            call(22.0, 0.1, true),
            call(41.0, 8.0, true),
            call(60.0, 0.0, false),
        ];
        let r = retrying(&calls, 65.0);
        assert!((r - (3.1 + 8.0 + 5.0)).abs() < 1e-9, "{r}");
        assert!(retrying(&[], 10.0).abs() < 1e-9);
    }

    /// A deterministic generator for the simulation (no dependency for one test).
    struct Lcg(u64);

    impl Lcg {
        fn unit(&mut self) -> f64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 11) as f64 / (1u64 << 53) as f64
        }

        fn between(&mut self, low: f64, high: f64) -> f64 {
            low + (high - low) * self.unit()
        }
    }

    /// The cache's schedule against fault windows and restarts: every call of one run.
    fn simulate(
        rng: &mut Lcg,
        duration: f64,
        lifetime: f64,
        windows: &[(f64, f64)],
        restarts: &[(f64, f64)],
    ) -> Vec<Call> {
        let half = lifetime / 2.0;
        let failing = |t: f64| windows.iter().any(|&(from, to)| t >= from && t <= to);
        let mut calls = Vec::new();
        // The credentials held at the start are up to a refresh interval old.
        let mut next = rng.between(0.0, half);
        let mut delay = RETRY_FIRST;
        let mut restarts = restarts.iter().peekable();
        while next <= duration {
            if let Some(&&(stop, ready)) = restarts.peek()
                && stop < next
            {
                restarts.next();
                calls.push(Call {
                    at: ready,
                    answered: ready,
                    ok: true,
                });
                next = ready + rng.between((1.0 - REFRESH_JITTER) * half, half);
                delay = RETRY_FIRST;
                continue;
            }
            let ok = !failing(next);
            calls.push(Call {
                at: next,
                answered: next,
                ok,
            });
            if ok {
                delay = RETRY_FIRST;
                next += rng.between((1.0 - REFRESH_JITTER) * half, half);
            } else {
                next += rng.between(delay / 2.0, delay);
                delay = (delay * 2.0).min(RETRY_MAX);
            }
        }
        calls
    }

    #[test]
    fn simulated_runs_stay_inside_and_wrong_counts_fall_outside() {
        let mut rng = Lcg(0x5eed_cafe);
        for _ in 0..500 {
            let duration = rng.between(60.0, 3000.0);
            // Fault windows of 1.5–8 s every 20–30 s; restarts taking up to 1 s.
            let mut windows = Vec::new();
            let mut t = rng.between(5.0, 30.0);
            while t < duration {
                let w = rng.between(1.5, 8.0);
                windows.push((t, t + w));
                t += w + rng.between(14.0, 25.0);
            }
            let mut restarts = Vec::new();
            let mut t = rng.between(5.0, 400.0);
            while t < duration {
                let took = rng.between(0.1, 1.0);
                restarts.push((t, t + took));
                t += rng.between(100.0, 700.0);
            }
            let calls = simulate(&mut rng, duration, 40.0, &windows, &restarts);
            let ok = calls.iter().filter(|c| c.ok).count() as u64;
            let failed = calls.len() as u64 - ok;
            let restart_time: f64 = restarts.iter().map(|(s, r)| r - s).sum();
            let run = Run {
                duration,
                restarts: restarts.len() as u64,
                retrying: retrying(&calls, duration),
                excused: restart_time,
            };
            let b = successes(forty(), run);
            assert!(b.hold(ok), "{ok} outside {b:?} for {run:?}");
            let most: u64 = windows.iter().map(|(f, t)| failures_in(t - f)).sum();
            assert!(failed <= most, "{failed} > {most}");
            let budget: f64 = windows.iter().map(|(f, t)| hold_up(t - f)).sum();
            assert!(retrying(&calls, duration) <= budget + 1e-9);
            // Refreshes off by a quarter either way fall outside once the run has ten minutes
            // of refreshing (the cold exchanges at restarts stay as they are).
            if duration - run.retrying > 600.0 {
                let refreshes = ok - run.restarts;
                let too_many = run.restarts + refreshes * 5 / 4 + 1;
                let too_few = run.restarts + refreshes * 3 / 4;
                assert!(!b.hold(too_many), "{too_many} inside {b:?}");
                assert!(!b.hold(too_few), "{too_few} inside {b:?}");
            }
        }
    }
}

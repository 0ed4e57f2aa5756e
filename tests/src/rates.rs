//! The call-rate bounds of the soak run (`src/bin/soak/`): how many successful credential
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

// === FetchJWTSVID ===

/// SPIRE's agent hands back the JWT-SVID it cached for a (SPIFFE ID, audiences) pair while
/// more of its life is left than a fraction drawn per call from this range (half-life ± 10 %:
/// `JWTSVIDExpiresSoon` in `pkg/common/rotationutil`), and signs a new one otherwise.
pub const SPIRE_REUSE: (f64, f64) = (0.45, 0.55);

/// Which agent answers FetchJWTSVID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JwtAgent {
    /// A new token on every call (the development agent).
    Mints,
    /// SPIRE's agent: its cached token while more than [`SPIRE_REUSE`] of its life is left.
    Spire,
}

/// The sidecars' JWT-SVID caches in one run, as the agent sees them.
#[derive(Clone, Debug, PartialEq)]
pub struct JwtFetches {
    /// Which agent.
    pub agent: JwtAgent,
    /// JWT-SVID lifetime the agent issues (s).
    pub ttl: f64,
    /// For each (SPIFFE ID, audiences) pair: how many sidecar caches ask for it. SPIRE shares
    /// one cached token between them; the development agent keeps nothing, so there a pair
    /// asked by two caches is simply two keys.
    pub keys: Vec<u64>,
    /// Seconds counted.
    pub duration: f64,
    /// Seconds the agent was down (no call reaches it).
    pub down: f64,
    /// Events after which each cache may fetch once more than its timer says: agent restarts
    /// (a cache whose fetch failed retries on reconnecting), sidecar restarts (a cold fetch),
    /// signing key changes.
    pub interruptions: u64,
}

/// The FetchJWTSVID calls a run allows (`expected` from [`simulate_jwt_fetches`]).
///
/// The model is workload-client's JWT cache (`workload-client/src/jwt/cache.rs`): one task per
/// key fetches, then sleeps half the remaining life it measured, up to 10 % earlier
/// ([`REFRESH_JITTER`]). A minted token has the full `ttl` less at most a second (`exp` is in
/// whole seconds).
///
/// - At least: one call per key per longest sleep, half a fresh token's life (+ [`SLACK`]),
///   over the time the agent was up, less one for the edges.
/// - At most, development agent: one per shortest sleep, 45 % of a fresh token's life.
/// - At most, SPIRE, a pair asked by one cache: a reused token has more than 45 % and at most
///   55 % of its life left, so the sleep after it is at least 0.45 × 0.45 of a life, and the
///   call after that always gets a new token (≤ 0.55 × 0.55 of its life is left then): two
///   calls per 0.45 + 0.2025 of a life at most.
/// - At most, SPIRE, a pair asked by several caches: any call may get a token another cache
///   had signed, with just over 45 % left: one call per 0.2025 of a life per cache.
///
/// Each bound adds one call per cache per interruption and one for the edges.
pub fn jwt_fetch_bounds(run: &JwtFetches, expected: f64) -> Bounds {
    let life = run.ttl - 1.0;
    let longest = run.ttl / 2.0 + SLACK;
    let caches: u64 = run.keys.iter().sum();
    let low = caches as f64 * ((run.duration - run.down) / longest - 1.0);
    let shortest_fresh = (1.0 - REFRESH_JITTER) * life / 2.0;
    let reused_floor = SPIRE_REUSE.0 * life * (1.0 - REFRESH_JITTER) / 2.0;
    let high: f64 = run
        .keys
        .iter()
        .map(|&n| {
            let n = n as f64;
            let per_second = match (run.agent, n > 1.0) {
                (JwtAgent::Mints, _) => n / shortest_fresh,
                (JwtAgent::Spire, false) => 2.0 / (shortest_fresh + reused_floor),
                (JwtAgent::Spire, true) => n / reused_floor,
            };
            per_second * run.duration + n * (run.interruptions as f64 + 1.0)
        })
        .sum();
    Bounds {
        expected,
        low,
        high,
    }
}

/// The mean number of FetchJWTSVID calls of `run` without interruptions, by simulating the
/// caches and the agent (`rounds` runs from one fixed generator state: the same figure every
/// time).
pub fn simulate_jwt_fetches(run: &JwtFetches, rounds: u32) -> f64 {
    let mut rng = Lcg(0x6a77_7473_7669_6473);
    let mut total = 0u64;
    for _ in 0..rounds {
        for &caches in &run.keys {
            total += one_key_fetches(&mut rng, run.agent, run.ttl, caches, run.duration);
        }
    }
    total as f64 / f64::from(rounds)
}

/// Calls of `caches` caches asking for one (SPIFFE ID, audiences) pair over `duration` s,
/// starting at random phases.
fn one_key_fetches(rng: &mut Lcg, agent: JwtAgent, ttl: f64, caches: u64, duration: f64) -> u64 {
    // The agent's cached token: (issued at, expires at).
    let mut cached: Option<(f64, f64)> = None;
    let mut next: Vec<f64> = (0..caches).map(|_| rng.between(0.0, ttl / 2.0)).collect();
    let mut calls = 0;
    loop {
        let (i, at) = next
            .iter()
            .copied()
            .enumerate()
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap_or((0, f64::INFINITY));
        if at > duration {
            return calls;
        }
        calls += 1;
        let reuse = match (agent, cached) {
            (JwtAgent::Spire, Some((issued, expires))) => {
                expires - at > rng.between(SPIRE_REUSE.0, SPIRE_REUSE.1) * (expires - issued)
            }
            _ => false,
        };
        if !reuse {
            cached = Some((at, at + ttl));
        }
        let (_, expires) = cached.unwrap_or((at, at + ttl));
        // The cache measures against whole-second `exp`: up to a second less.
        let life = expires - at - rng.between(0.0, 1.0);
        next[i] = at + life / 2.0 * (1.0 - REFRESH_JITTER * rng.unit());
    }
}

/// A deterministic generator for the simulations (no dependency for a few lines).
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

    /// The soak's keys: the helper and the client bridge ask SPIRE for the same (SPIFFE ID,
    /// audience) pair; the four brokers one each.
    fn soak(agent: JwtAgent) -> JwtFetches {
        JwtFetches {
            agent,
            ttl: 12.0,
            keys: vec![2, 1, 1, 1, 1],
            duration: 600.0,
            down: 0.0,
            interruptions: 0,
        }
    }

    #[test]
    fn a_minting_agent_is_called_once_per_key_per_half_life() {
        let run = soak(JwtAgent::Mints);
        let expected = simulate_jwt_fetches(&run, 20);
        // Six caches, a refresh every 0.475 × (12 s less up to 1 s).
        let ideal = 6.0 * 600.0 / (0.475 * 11.5);
        assert!(
            (expected / ideal - 1.0).abs() < 0.02,
            "{expected} vs {ideal}"
        );
        let b = jwt_fetch_bounds(&run, expected);
        assert!(b.hold(expected as u64), "{b:?}");
        // A cache fetching twice per refresh falls outside.
        assert!(!b.hold((2.0 * expected) as u64), "{b:?}");
        assert!(!b.hold((0.7 * expected) as u64), "{b:?}");
    }

    #[test]
    fn spires_reuse_costs_a_third_more_calls_than_one_per_half_life() {
        let one = JwtFetches {
            keys: vec![1],
            ..soak(JwtAgent::Spire)
        };
        let per_key = simulate_jwt_fetches(&one, 50);
        let half_lives = 600.0 / 6.0;
        // Worked out by hand for one cache: 1.75 calls per 0.663 of a life, 1.32 × one per
        // half-life (a little more here: the cache measures up to a second short).
        let ratio = per_key / half_lives;
        assert!((1.28..1.45).contains(&ratio), "{ratio}");
        let b = jwt_fetch_bounds(&one, per_key);
        assert!(b.hold(per_key as u64), "{b:?}");
        assert!(!b.hold((2.0 * per_key) as u64), "{b:?}");
        // Two caches on one pair: more calls than two single ones, fewer than twice as many.
        let shared = simulate_jwt_fetches(
            &JwtFetches {
                keys: vec![2],
                ..soak(JwtAgent::Spire)
            },
            50,
        );
        assert!(
            shared > 1.0 * per_key && shared < 2.5 * per_key,
            "{shared} vs {per_key}"
        );
        let run = soak(JwtAgent::Spire);
        let all = simulate_jwt_fetches(&run, 20);
        let b = jwt_fetch_bounds(&run, all);
        assert!(b.hold(all as u64) && b.low < all && all < b.high, "{b:?}");
        assert!(!b.hold((3.0 * all) as u64), "{b:?}");
        assert!(!b.hold((0.6 * all) as u64), "{b:?}");
    }
}

//! Jittered exponential backoff: the one retry policy every reconnect and refresh loop uses.
//!
//! Jitter matters because every sidecar in a node reconnects to the same agent when it restarts;
//! without it they would retry in lock-step (a thundering herd on the agent).

use std::time::Duration;

/// The shape of a retry schedule.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BackoffPolicy {
    /// Delay before the first retry.
    pub initial: Duration,
    /// Cap on any single delay.
    pub max: Duration,
    /// Growth factor per attempt (≥ 1).
    pub multiplier: f64,
}

impl BackoffPolicy {
    /// For a local socket that is absent or refusing connections (agent not up yet or
    /// restarting). Retrying a local connect is cheap, and the cap keeps the delay between the
    /// agent appearing and the first SVID under a second.
    pub const RECONNECT: Self = Self {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(500),
        multiplier: 2.0,
    };

    /// For errors the agent answered with (e.g. `PermissionDenied` "no identity issued" for a
    /// workload not yet registered): each call costs the agent an attestation, so back off
    /// further.
    pub const AGENT_ERROR: Self = Self {
        initial: Duration::from_millis(500),
        max: Duration::from_secs(10),
        multiplier: 2.0,
    };

    /// Starts a schedule with this policy.
    pub fn start(self) -> Backoff {
        Backoff {
            policy: self,
            current: self.initial,
        }
    }
}

/// A running schedule: call [`Backoff::next_delay`] after each failure, [`Backoff::reset`]
/// after a success.
#[derive(Clone, Debug)]
pub struct Backoff {
    policy: BackoffPolicy,
    current: Duration,
}

impl Backoff {
    /// The delay to wait before the next attempt: uniformly in `[d/2, d]` where `d` grows
    /// geometrically up to the cap ("equal jitter": never zero, never above the cap).
    pub fn next_delay(&mut self) -> Duration {
        let d = self.current.min(self.policy.max);
        let grown = d.mul_f64(self.policy.multiplier.max(1.0));
        self.current = grown.min(self.policy.max);
        jitter(d, 0.5)
    }

    /// Back to the initial delay.
    pub fn reset(&mut self) {
        self.current = self.policy.initial;
    }
}

/// A duration drawn uniformly from `[d * (1 - spread), d]`, `spread` clamped to `[0, 1]`.
pub fn jitter(d: Duration, spread: f64) -> Duration {
    let spread = spread.clamp(0.0, 1.0);
    d.mul_f64(1.0 - spread * fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_cap_with_jitter_in_bounds() {
        let policy = BackoffPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(800),
            multiplier: 2.0,
        };
        let mut b = policy.start();
        let nominal = [100, 200, 400, 800, 800, 800];
        for n in nominal {
            let d = b.next_delay();
            let n = Duration::from_millis(n);
            assert!(d <= n && d >= n / 2, "{d:?} not in [{:?}, {n:?}]", n / 2);
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn reconnect_policy_never_waits_past_half_a_second() {
        let mut b = BackoffPolicy::RECONNECT.start();
        for _ in 0..50 {
            assert!(b.next_delay() <= Duration::from_millis(500));
        }
    }

    #[test]
    fn jitter_spreads_values() {
        let d = Duration::from_secs(10);
        let samples: Vec<_> = (0..64).map(|_| jitter(d, 0.1)).collect();
        assert!(samples.iter().all(|s| *s <= d && *s >= d.mul_f64(0.9)));
        assert!(samples.iter().any(|s| *s != samples[0]), "no spread at all");
    }
}

//! When the agent acts: the X.509-SVID refresh point, and deadlines as tokio instants that never
//! overflow. Pure functions, shared by the state (which stamps each snapshot with its rotation
//! time) and the rotation loops (which sleep until it).

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

/// When to re-issue an X.509-SVID of lifetime `ttl`: a little before half of it, like
/// SPIRE's agent, so consumers that refresh at half-life always find a fresh one.
/// 4 s → 1.8 s; 1 h → 29.5 min.
pub(crate) fn x509_refresh_after(ttl: Duration) -> Duration {
    let half = ttl / 2;
    half.saturating_sub((ttl / 20).min(Duration::from_secs(30)))
}

/// `now + d`, saturating instead of panicking on absurd durations.
pub(crate) fn instant_after(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(365 * 86400)))
        .unwrap_or(now)
}

pub(crate) fn instant_at(t: SystemTime) -> Instant {
    instant_after(t.duration_since(SystemTime::now()).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn x509_refresh_is_just_before_half_life() {
        assert_eq!(
            x509_refresh_after(Duration::from_secs(4)),
            Duration::from_millis(1800)
        );
        assert_eq!(
            x509_refresh_after(Duration::from_secs(3600)),
            Duration::from_secs(1770)
        );
    }
}

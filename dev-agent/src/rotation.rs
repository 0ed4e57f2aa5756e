//! Background rotation: X.509-SVIDs before half-life, JWT signing keys on their interval,
//! retired JWT keys dropped once their tokens expired.
//!
//! Both loops re-read their deadline whenever the snapshot changes, so a forced rotation
//! (admin endpoint or [`RunningAgent`](crate::RunningAgent)) restarts the schedule.

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tokio::time::{Instant, sleep_until};

use crate::agent::{Shared, stopping};

/// Back-off after a failed rotation, so a persistent failure does not spin.
const RETRY_AFTER: Duration = Duration::from_secs(1);

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

fn instant_at(t: SystemTime) -> Instant {
    instant_after(t.duration_since(SystemTime::now()).unwrap_or_default())
}

pub(crate) async fn x509_loop(shared: Arc<Shared>) {
    let mut snapshots = shared.x509.subscribe();
    let stop = stopping(shared.shutdown.subscribe());
    tokio::pin!(stop);
    loop {
        let deadline = snapshots.borrow_and_update().rotate_at;
        tokio::select! {
            () = &mut stop => return,
            changed = snapshots.changed() => if changed.is_err() { return },
            () = sleep_until(deadline) => {
                if let Err(error) = shared.rotate_x509().await {
                    tracing::warn!(%error, "X.509-SVID rotation failed, retrying");
                    tokio::select! {
                        () = &mut stop => return,
                        () = tokio::time::sleep(RETRY_AFTER) => {}
                    }
                }
            }
        }
    }
}

pub(crate) async fn jwt_loop(shared: Arc<Shared>) {
    let mut bundles = shared.jwt_bundles.subscribe();
    let stop = stopping(shared.shutdown.subscribe());
    tokio::pin!(stop);
    loop {
        bundles.borrow_and_update();
        let (created_at, next_prune) = shared.own.jwt_schedule();
        let rotate_at = instant_at(created_at + shared.jwt_key_rotation);
        // One second late: `exp` has second resolution, so at `until + 1` every token the
        // retired key signed has certainly expired.
        let prune_at = next_prune.map(|until| {
            let secs = u64::try_from(until.saturating_add(1)).unwrap_or(0);
            instant_at(UNIX_EPOCH + Duration::from_secs(secs))
        });
        let deadline = prune_at.map_or(rotate_at, |p| p.min(rotate_at));
        tokio::select! {
            () = &mut stop => return,
            changed = bundles.changed() => if changed.is_err() { return },
            () = sleep_until(deadline) => {
                let result = if Instant::now() >= rotate_at {
                    shared.rotate_jwt_key().await
                } else {
                    shared.prune_jwt_keys().await
                };
                if let Err(error) = result {
                    tracing::warn!(%error, "JWT key rotation failed, retrying");
                    tokio::select! {
                        () = &mut stop => return,
                        () = tokio::time::sleep(RETRY_AFTER) => {}
                    }
                }
            }
        }
    }
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

//! Background rotation: X.509-SVIDs before half-life, JWT signing keys on their interval,
//! retired JWT keys dropped once their tokens expired.
//!
//! Both loops re-read their deadline whenever the snapshot changes, so a forced rotation
//! (admin endpoint or [`RunningAgent`](crate::RunningAgent)) restarts the schedule.

use std::{
    sync::Arc,
    time::{Duration, UNIX_EPOCH},
};

use tokio::time::{Instant, sleep_until};

use crate::schedule::instant_at;
use crate::shared::{Shared, stopping};

/// Back-off after a failed rotation, so a persistent failure does not spin.
const RETRY_AFTER: Duration = Duration::from_secs(1);

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

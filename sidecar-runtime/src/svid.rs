//! The X.509-SVID a sidecar may use right now, or why there is none, worded once for every
//! sidecar that reads the Workload API's X.509 stream (sds-bridge's readiness, iam-broker's
//! Roles Anywhere signer and its readiness).

use std::sync::Arc;
use std::time::SystemTime;

use workload_client::{X509Context, X509Watcher};

use crate::Readiness;

/// The current X.509 context if the stream is healthy and its SVID unexpired at `now`;
/// otherwise why not: the agent refused the stream, withdrew the identity, has sent nothing
/// yet, or let the SVID expire.
pub fn current_x509(watcher: &X509Watcher, now: SystemTime) -> Result<Arc<X509Context>, String> {
    let status = watcher.status();
    match watcher.current() {
        _ if status.gave_up => Err(format!(
            "the Workload API refused the X.509 stream: {}",
            status.last_error.unwrap_or_default()
        )),
        None if status.withdrawn => Err(format!(
            "the Workload API says this workload has no identity (registration entry deleted?): {}",
            status.last_error.unwrap_or_default()
        )),
        None => Err("no X.509-SVID from the Workload API yet".into()),
        Some(ctx) if ctx.remaining(now).is_zero() => {
            Err("the X.509-SVID has expired and the Workload API has not renewed it".into())
        }
        Some(ctx) => Ok(ctx),
    }
}

/// [`current_x509`] as a readiness answer.
pub fn x509_readiness(watcher: &X509Watcher) -> Readiness {
    match current_x509(watcher, SystemTime::now()) {
        Ok(_) => Readiness::Ready,
        Err(why) => Readiness::NotReady(why),
    }
}

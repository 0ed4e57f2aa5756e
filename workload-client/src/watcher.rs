//! The supervisor behind every long-lived Workload API stream (X.509 SVIDs, JWT bundles).
//!
//! One loop for all streams: connect, publish each parsed snapshot that differs from the last,
//! and on any failure keep the last good snapshot, wait a jittered backoff and reconnect; the
//! one exception is the SVID stream refused with `PermissionDenied` (the workload's identity
//! was withdrawn), which drops it ([`StreamStatus::withdrawn`]). A
//! [`Watcher`] tells "never had a snapshot" (`current()` is `None`) from "had one and the agent
//! is gone" (`current()` is `Some`, `status().connected` is false).

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::backoff::BackoffPolicy;
use crate::client::{ClientError, WorkloadApiClient};
use crate::snapshot_error::SnapshotError;

/// One kind of Workload API stream and how to turn its messages into snapshots.
pub(crate) trait StreamKind: Send + Sync + 'static {
    type Message: Send + 'static;
    type Snapshot: PartialEq + Send + Sync + 'static;
    /// The RPC name, for logs.
    const METHOD: &'static str;

    fn open(
        client: &WorkloadApiClient,
    ) -> impl Future<Output = Result<tonic::Streaming<Self::Message>, ClientError>> + Send;

    /// Whether `PermissionDenied` takes the last snapshot away. SPIRE ends a stream with
    /// `PermissionDenied` ("no identity issued") when the caller has no registration entry:
    /// for the SVID stream that means the identity was withdrawn (the entry deleted), and
    /// serving the last SVID until it expires would keep a revoked workload in the mesh.
    const WITHDRAWN_ON_PERMISSION_DENIED: bool = false;

    /// Parses one full-snapshot message (each message is a full snapshot).
    fn parse(message: Self::Message) -> Result<Self::Snapshot, SnapshotError>;

    /// A one-line summary of a snapshot for the info log (never secrets).
    fn describe(snapshot: &Self::Snapshot) -> String;
}

/// Health of a watched stream, for readiness probes and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamStatus {
    /// The stream is currently open.
    pub connected: bool,
    /// Snapshots published so far.
    pub updates: u64,
    /// Failed connects and broken streams so far.
    pub failures: u64,
    /// When the last snapshot was published.
    pub last_update: Option<Instant>,
    /// The most recent failure, if the stream is not healthy.
    pub last_error: Option<String>,
    /// The agent says this workload has no identity (`PermissionDenied`); for the SVID stream
    /// the last snapshot was dropped. Cleared by the next snapshot.
    pub withdrawn: bool,
    /// The agent rejected the request itself (e.g. missing security header); the watcher gave
    /// up, because retrying cannot succeed.
    pub gave_up: bool,
}

/// A handle on a supervised stream. Clones share the stream; the background task stops when
/// the last clone is dropped.
#[derive(Debug)]
pub struct Watcher<T> {
    snapshot: watch::Receiver<Option<Arc<T>>>,
    status: watch::Receiver<StreamStatus>,
    _task: Arc<AbortOnDrop>,
}

impl<T> Clone for Watcher<T> {
    fn clone(&self) -> Self {
        Self {
            snapshot: self.snapshot.clone(),
            status: self.status.clone(),
            _task: self._task.clone(),
        }
    }
}

#[derive(Debug)]
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

// === impl Watcher ===

impl<T: Send + Sync + 'static> Watcher<T> {
    pub(crate) fn spawn<K: StreamKind<Snapshot = T>>(client: WorkloadApiClient) -> Self {
        let (snap_tx, snapshot) = watch::channel(None);
        let (status_tx, status) = watch::channel(StreamStatus::default());
        let span = tracing::info_span!("watch", method = K::METHOD, endpoint = %client.endpoint());
        let task = tokio::spawn(supervise::<K>(client, snap_tx, status_tx).instrument(span));
        Self {
            snapshot,
            status,
            _task: Arc::new(AbortOnDrop(task)),
        }
    }

    /// The last good snapshot, or `None` if none was ever received.
    pub fn current(&self) -> Option<Arc<T>> {
        self.snapshot.borrow().clone()
    }

    /// A receiver that wakes on every new snapshot (e.g. to push rotations to Envoy).
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<T>>> {
        self.snapshot.clone()
    }

    /// Current stream health.
    pub fn status(&self) -> StreamStatus {
        self.status.borrow().clone()
    }

    /// A receiver that wakes on every status change.
    pub fn subscribe_status(&self) -> watch::Receiver<StreamStatus> {
        self.status.clone()
    }

    /// Waits for the first snapshot (returns at once if there is one). Callers bound the wait
    /// with `tokio::time::timeout`; it never returns `None` unless the watcher gave up.
    pub async fn first(&self) -> Option<Arc<T>> {
        let mut rx = self.snapshot.clone();
        let mut status = self.status.clone();
        loop {
            if let Some(s) = rx.borrow_and_update().clone() {
                return Some(s);
            }
            if status.borrow_and_update().gave_up {
                return None;
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { return None },
                r = status.changed() => if r.is_err() { return None },
            }
        }
    }
}

async fn supervise<K: StreamKind>(
    client: WorkloadApiClient,
    snapshots: watch::Sender<Option<Arc<K::Snapshot>>>,
    status: watch::Sender<StreamStatus>,
) {
    let mut reconnect = BackoffPolicy::RECONNECT.start();
    let mut agent_error = BackoffPolicy::AGENT_ERROR.start();
    loop {
        let failure = match K::open(&client).await {
            Ok(mut stream) => {
                status.send_modify(|s| s.connected = true);
                loop {
                    match stream.message().await {
                        Ok(Some(message)) => {
                            reconnect.reset();
                            agent_error.reset();
                            publish::<K>(message, &snapshots, &status);
                        }
                        Ok(None) => {
                            break ClientError::Status {
                                method: K::METHOD,
                                code: tonic::Code::Unavailable,
                                message: "stream closed by the agent".to_owned(),
                            };
                        }
                        Err(s) => break ClientError::status(K::METHOD, &s),
                    }
                }
            }
            Err(e) => e,
        };

        let fatal = failure.is_fatal();
        let delay = if failure.is_unreachable() {
            reconnect.next_delay()
        } else {
            agent_error.next_delay()
        };
        let withdrawn = failure.is_no_identity();
        if withdrawn && K::WITHDRAWN_ON_PERMISSION_DENIED {
            let dropped = snapshots.send_if_modified(|current| current.take().is_some());
            if dropped {
                tracing::warn!(
                    error = %failure,
                    "the agent says this workload has no identity (its registration entry was deleted?): no longer serving the last one"
                );
            }
        }
        let had_snapshot = snapshots.borrow().is_some();
        status.send_modify(|s| {
            // Log each distinct failure once at warn; repeats go to debug so a long agent outage
            // does not flood the logs.
            let message = failure.to_string();
            if s.last_error.as_deref() == Some(message.as_str()) {
                tracing::debug!(error = %message, ?delay, "still failing");
            } else if fatal {
                tracing::error!(error = %message, "agent rejected the request; not retrying");
            } else {
                tracing::warn!(error = %message, ?delay, had_snapshot, "stream failed; keeping last snapshot and reconnecting");
            }
            s.connected = false;
            s.failures += 1;
            s.last_error = Some(message);
            s.withdrawn = withdrawn;
            s.gave_up = fatal;
        });
        if fatal {
            return;
        }
        tokio::time::sleep(delay).await;
    }
}

fn publish<K: StreamKind>(
    message: K::Message,
    snapshots: &watch::Sender<Option<Arc<K::Snapshot>>>,
    status: &watch::Sender<StreamStatus>,
) {
    match K::parse(message) {
        Ok(snapshot) => {
            let changed = snapshots.send_if_modified(|current| {
                if current.as_deref() == Some(&snapshot) {
                    return false;
                }
                tracing::info!(snapshot = %K::describe(&snapshot), "update received");
                *current = Some(Arc::new(snapshot));
                true
            });
            status.send_modify(|s| {
                s.last_error = None;
                s.withdrawn = false;
                if changed {
                    s.updates += 1;
                    s.last_update = Some(Instant::now());
                }
            });
        }
        Err(reason) => {
            // Keep the last good snapshot: a malformed update must not take identities away.
            tracing::warn!(%reason, "ignoring invalid update from the agent");
            status.send_modify(|s| s.last_error = Some(format!("invalid update: {reason}")));
        }
    }
}

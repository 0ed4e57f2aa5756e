//! What the load and the chaos write down: failures, expected-failure windows, events.

use super::*;

/// One failed request.
#[derive(Clone, Debug)]
pub(crate) struct Failure {
    pub(crate) at: f64,
    pub(crate) path: &'static str,
    pub(crate) what: String,
}

/// A span of time in which failures on `paths` are expected, and why.
#[derive(Clone, Debug)]
pub(crate) struct Window {
    pub(crate) from: f64,
    pub(crate) to: f64,
    pub(crate) paths: &'static [&'static str],
    pub(crate) why: String,
}

/// Everything the load and the chaos write down, for the table.
#[derive(Debug, Default)]
pub(crate) struct Record {
    pub(crate) ok: BTreeMap<&'static str, u64>,
    pub(crate) failures: Vec<Failure>,
    /// Requests Envoy refused for carrying an expired JWT-SVID: when, and on which path.
    pub(crate) expired_tokens: Vec<(f64, &'static str)>,
    pub(crate) expired_certs: u64,
    pub(crate) windows: Vec<Window>,
    pub(crate) events: Vec<(f64, String)>,
}

pub(crate) type Shared = Arc<Mutex<Record>>;

pub(crate) fn event(record: &Shared, what: String) {
    println!(
        "  [{:>7.1}] {what}",
        now() - START.get().copied().unwrap_or(0.0)
    );
    record.lock().unwrap().events.push((now(), what));
}

pub(crate) static START: std::sync::OnceLock<f64> = std::sync::OnceLock::new();

pub(crate) fn elapsed() -> f64 {
    now() - START.get().copied().unwrap_or(0.0)
}

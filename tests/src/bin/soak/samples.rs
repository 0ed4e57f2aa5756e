//! Per-process samples (RSS, open FDs, tokio tasks) for the leak checks.

use super::*;

#[derive(Clone, Debug)]
pub(crate) struct Sample {
    pub(crate) at: f64,
    pub(crate) rss_kib: u64,
    pub(crate) fds: u64,
    pub(crate) tasks: f64,
}

/// Per sidecar incarnation (name, pid): its start and its samples.
pub(crate) type Samples = BTreeMap<(&'static str, u32), (f64, Vec<Sample>)>;

pub(crate) fn fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64)
}

pub(crate) fn sample(system: &System, samples: &mut Samples, started: &BTreeMap<u32, f64>) {
    for (name, pid, admin) in system.sidecars() {
        if pid == 0 || !Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let tasks = metric_min(admin, "tokio_alive_tasks");
        if !tasks.is_finite() {
            continue; // restarting: not answering yet
        }
        let s = Sample {
            at: now(),
            rss_kib: suite_tests::procfs::rss_kib(pid),
            fds: fds(pid),
            tasks,
        };
        let start = started
            .get(&pid)
            .copied()
            .unwrap_or_else(|| START.get().copied().unwrap_or(0.0));
        samples
            .entry((name, pid))
            .or_insert((start, Vec::new()))
            .1
            .push(s);
    }
}

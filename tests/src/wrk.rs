//! The load tool of the benchmarks: `wrk` (Debian package), one thread, latency percentiles.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

/// One wrk run's figures.
#[derive(Clone, Copy, Debug)]
pub struct Wrk {
    /// Median latency.
    pub p50: Duration,
    /// 99th percentile latency.
    pub p99: Duration,
    /// Requests per second.
    pub rps: f64,
}

/// Whether wrk is installed.
pub fn available() -> bool {
    Command::new("wrk").arg("--version").output().is_ok()
}

/// `wrk -t1 -c<connections> -d<seconds>s --latency http://<addr><path>`; panics if wrk is
/// missing (with the install command) or if any response was not 2xx.
pub fn run(addr: SocketAddr, path: &str, connections: u32, seconds: u32) -> Wrk {
    run_with(addr, path, &[], connections, seconds)
}

/// [`run`] sending `headers` (`-H "Name: value"`) with every request.
pub fn run_with(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    connections: u32,
    seconds: u32,
) -> Wrk {
    run_url(
        &format!("http://{addr}{path}"),
        headers,
        connections,
        seconds,
    )
}

/// [`run_with`] against a full URL (`https://…`: wrk speaks TLS and does not verify the
/// certificate, so a test CA's server is fine).
pub fn run_url(url: &str, headers: &[(&str, &str)], connections: u32, seconds: u32) -> Wrk {
    let mut cmd = Command::new("wrk");
    for (name, value) in headers {
        cmd.arg("-H").arg(format!("{name}: {value}"));
    }
    let out = cmd
        .args([
            "-t1",
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            "--latency",
        ])
        .arg(url)
        .output()
        .expect("wrk missing: apt-get install wrk");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("Non-2xx"), "errors during wrk run: {text}");
    let find = |label: &str| -> Duration {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(label))
            .unwrap_or_else(|| panic!("{label} in {text}"));
        parse_duration(line.split_whitespace().nth(1).unwrap())
    };
    let rps = text
        .lines()
        .find(|l| l.starts_with("Requests/sec:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("Requests/sec in {text}"));
    Wrk {
        p50: find("50%"),
        p99: find("99%"),
        rps,
    }
}

/// wrk's `12.34us` / `1.20ms` / `2.00s`.
fn parse_duration(s: &str) -> Duration {
    let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic()).unwrap());
    let v: f64 = num.parse().unwrap();
    Duration::from_secs_f64(match unit {
        "us" => v / 1e6,
        "ms" => v / 1e3,
        "s" => v,
        _ => panic!("unit {unit}"),
    })
}

/// Medians over rounds of one side of an [`alternate`] comparison.
#[derive(Clone, Copy, Debug)]
pub struct Medians {
    /// Median of the rounds' p50.
    pub p50: Duration,
    /// Median of the rounds' p99.
    pub p99: Duration,
    /// Median of the rounds' requests per second.
    pub rps: f64,
}

/// One side of a comparison: a URL and the headers it needs.
#[derive(Clone, Copy, Debug)]
pub struct Target<'a> {
    /// `http://…` or `https://…`.
    pub url: &'a str,
    /// Sent with every request.
    pub headers: &'a [(&'a str, &'a str)],
}

/// A warm-up of each, then `rounds` alternating wrk runs of `seconds` (baseline first), so drift
/// on a shared machine hits both alike: the medians of `(baseline, target)`.
pub fn alternate(
    baseline: Target<'_>,
    target: Target<'_>,
    connections: u32,
    rounds: usize,
    seconds: u32,
) -> (Medians, Medians) {
    let mut runs: [Vec<Wrk>; 2] = [Vec::new(), Vec::new()];
    for t in [baseline, target] {
        run_url(t.url, t.headers, connections, seconds.min(2));
    }
    for _ in 0..rounds {
        for (i, t) in [baseline, target].iter().enumerate() {
            runs[i].push(run_url(t.url, t.headers, connections, seconds));
        }
    }
    let medians = |v: &[Wrk]| {
        let median = |f: fn(&Wrk) -> f64| {
            let mut xs: Vec<f64> = v.iter().map(f).collect();
            xs.sort_by(f64::total_cmp);
            xs[xs.len() / 2]
        };
        Medians {
            p50: Duration::from_secs_f64(median(|w| w.p50.as_secs_f64())),
            p99: Duration::from_secs_f64(median(|w| w.p99.as_secs_f64())),
            rps: median(|w| w.rps),
        }
    };
    (medians(&runs[0]), medians(&runs[1]))
}

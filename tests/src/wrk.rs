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
        .arg(format!("http://{addr}{path}"))
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

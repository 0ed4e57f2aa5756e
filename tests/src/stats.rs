//! The few statistics the benches print: quantiles of latency samples and their formatting.

use std::time::Duration;

/// The `q` quantile (0.0–1.0, nearest rank) of `samples`, which it sorts. Panics on none.
pub fn quantile(samples: &mut [Duration], q: f64) -> Duration {
    samples.sort_unstable();
    let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
    samples[i]
}

/// `123 µs`.
pub fn us(d: Duration) -> String {
    secs_as_us(d.as_secs_f64())
}

/// `123 µs` from seconds as `f64` (medians of wrk's figures, differences that may be negative).
pub fn secs_as_us(secs: f64) -> String {
    format!("{:.0} µs", secs * 1e6)
}

/// `1.23 ms`.
pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

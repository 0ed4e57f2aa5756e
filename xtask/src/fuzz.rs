//! `cargo xtask fuzz [--minutes N] [--cases N]`: the property tests of every parser that takes
//! outside input, run again and again with many cases and fresh random inputs each round
//! until the time is up.
//!
//! Stable Rust has no cargo-fuzz (it needs nightly), so the fuzzing is proptest's: each round runs
//! the `props` test modules (and the uds adapter's h2 round trip) with `PROPTEST_CASES=<cases>`;
//! proptest draws every run's randomness from the OS, so no two rounds try the same inputs. A round
//! that fails prints the failing test's report (proptest shrinks the input and saves it under the
//! crate's `proptest-regressions/`, where the next `cargo test` replays it first). The normal test
//! command runs the same tests with 256 cases each.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::{Result, cargo};

/// The crates with property tests.
const CRATES: &[&str] = &[
    "workload-client",
    "sidecar-runtime",
    "jwt-auth-helper",
    "sds-bridge",
    "iam-broker",
];

/// Test-name filters: the `props` modules, and the adapter's h2 round trip in `uds/tests.rs`.
const FILTERS: &[&str] = &["props::", "uds::tests::h2_decodes"];

const DEFAULT_MINUTES: u64 = 10;
const DEFAULT_CASES: u64 = 2048;

#[derive(Default)]
struct Tally {
    rounds: u64,
    cases: u64,
    failures: u64,
}

pub(crate) fn fuzz(args: &[String]) -> Result {
    let minutes = flag(args, "--minutes")?.unwrap_or(DEFAULT_MINUTES);
    let cases = flag(args, "--cases")?.unwrap_or(DEFAULT_CASES).max(1);
    let budget = Duration::from_secs(minutes * 60);
    println!(
        "==> fuzz: property tests of {}, {cases} cases per test per round, for {minutes} min",
        CRATES.join(", ")
    );
    // Build once, outside the time budget.
    let mut build = cargo();
    build.args(["test", "--locked", "--lib", "--no-run"]);
    for c in CRATES {
        build.args(["-p", c]);
    }
    crate::run("build the test binaries", &mut build)?;

    let started = Instant::now();
    let mut tally: BTreeMap<String, Tally> = BTreeMap::new();
    let mut round = 0u64;
    // At least one round, then as many as fit.
    while round == 0 || started.elapsed() < budget {
        round += 1;
        let mut failed = 0;
        let mut tests = 0;
        for krate in CRATES {
            let output = cargo()
                .args(["test", "--locked", "--lib", "-p", krate, "--"])
                .args(FILTERS)
                .env("PROPTEST_CASES", cases.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .output()
                .map_err(|e| format!("cargo test: cannot start: {e}"))?;
            let stdout = String::from_utf8_lossy(&output.stdout);
            let results = parse(&stdout);
            if results.is_empty() || (!output.status.success() && results.iter().all(|r| r.1)) {
                return Err(format!(
                    "round {round}: {krate}: no property test ran or cargo failed ({}):\n{stdout}\n{}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr)
                ));
            }
            for (name, ok) in results {
                tests += 1;
                let t = tally.entry(format!("{krate}: {name}")).or_default();
                t.rounds += 1;
                if ok {
                    t.cases += cases;
                } else {
                    t.failures += 1;
                    failed += 1;
                }
            }
            if !output.status.success() {
                println!("{stdout}");
            }
        }
        println!(
            "    round {round}: {tests} tests, {failed} failed, {:.1} min elapsed",
            started.elapsed().as_secs_f64() / 60.0
        );
    }

    let elapsed = started.elapsed().as_secs_f64() / 60.0;
    let width = tally.keys().map(String::len).max().unwrap_or(6);
    println!(
        "\n{:<width$} {:>7} {:>10} {:>8}",
        "target", "rounds", "cases", "failed"
    );
    let (mut cases_total, mut failures_total) = (0, 0);
    for (name, t) in &tally {
        println!(
            "{name:<width$} {:>7} {:>10} {:>8}",
            t.rounds, t.cases, t.failures
        );
        cases_total += t.cases;
        failures_total += t.failures;
    }
    println!(
        "\nfuzz: {} targets, {cases_total} cases run, {failures_total} failed, {round} rounds in {elapsed:.1} min",
        tally.len()
    );
    if failures_total > 0 {
        return Err(format!(
            "{failures_total} property test run(s) failed; the shrunk inputs are above and in \
             <crate>/proptest-regressions/"
        ));
    }
    Ok(())
}

/// `--name N`.
fn flag(args: &[String], name: &str) -> Result<Option<u64>> {
    let Some(i) = args.iter().position(|a| a == name) else {
        return Ok(None);
    };
    args.get(i + 1)
        .and_then(|v| v.parse().ok())
        .map(Some)
        .ok_or_else(|| format!("{name} takes a whole number"))
}

/// `test <name> ... ok|FAILED` lines of one test binary.
fn parse(stdout: &str) -> Vec<(String, bool)> {
    stdout
        .lines()
        .filter_map(|line| line.strip_prefix("test ")?.rsplit_once(" ... "))
        .filter_map(|(name, result)| match result {
            "ok" => Some((name.to_owned(), true)),
            "FAILED" => Some((name.to_owned(), false)),
            _ => None,
        })
        .collect()
}

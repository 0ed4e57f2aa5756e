//! `cargo xtask <command>`: the project's commands, in Rust so they run wherever cargo does.
//!
//! - `test`: create the project venv with the real peers (tests/requirements.txt) and build
//!   the Go tools of the Istio injection test into `.tools` when missing, then
//!   `cargo fmt --check`, `cargo clippy -D warnings`, `cargo deny` (licenses, bans, sources;
//!   offline), and every test. What CI runs.
//! - `deny [--advisories]`: only the supply-chain check; `--advisories` also checks the
//!   RustSec database (fetched from GitHub: not reachable from CI).
//! - `fuzz [--minutes N] [--cases N]`: the parsers' property tests, round after round with
//!   fresh seeds, for N minutes (default 10).
//! - `demo`: the three sidecars with real Envoy, moto and the AWS CLI, step by step.
//! - `regen`: regenerate the committed Workload API code (needs nothing installed: the
//!   regen test uses a vendored protoc).
//! - `venv`: only create/refresh the venv.
//! - `spire`: only build SPIRE into `.tools` (the tests against real SPIRE need it).
//! - `signing-helper`: only build AWS's `aws_signing_helper` into `.tools` (the Roles Anywhere
//!   stand-in is proven against it).
//! - `istio-tools`: only build the pinned istioctl and podcheck into `.tools/bin` (Go).
//! - `clients`: only build the Go and Java gRPC clients of the suite (tests/go, tests/java).
#![allow(clippy::print_stdout)] // A command-line tool talks on stdout.

mod deny;
mod fuzz;
mod go_install;
mod image;
mod istio_tools;
mod platform;
mod signing_helper;
mod spire;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

type Result<T = ()> = std::result::Result<T, String>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(&args[1..]),
        Some("demo") => demo(&args[1..]),
        Some("regen") => regen(),
        Some("bench") => bench(&args[1..]),
        Some("soak") => soak(&args[1..]),
        Some("venv") => venv().map(|_| ()),
        Some("istio-tools") => istio_tools::install(),
        Some("image") => image::image(&args[1..]),
        Some("spire") => spire::install().map(|_| ()),
        Some("signing-helper") => signing_helper::install().map(|_| ()),
        Some("clients") => clients(),
        Some("deny") => deny::deny(&args[1..]),
        Some("fuzz") => fuzz::fuzz(&args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask <test|demo|bench|soak|image|spire|signing-helper|istio-tools|clients|regen|venv|deny|fuzz>\n\n  test   venv + fmt + clippy + cargo deny + all tests + 60 s soaks on the dev agent and on SPIRE (what CI runs)\n  demo   [--spire]: the three sidecars with real Envoy, moto and the AWS CLI, step by step (--spire: on real SPIRE)\n  bench  [authz|jwt-authn|sds|creds|uds|vault|spire]: each sidecar against a same-run baseline (release build)\n  soak   [--spire] [--minutes N]: every sidecar under load and chaos for N minutes (default 10; --spire: on real SPIRE), then a table\n  image  [--platforms all|amd64,arm64,ppc64le,s390x]: static binaries + one podman image per sidecar and platform, a manifest list per sidecar (Containerfile)\n  spire  build SPIRE's server, agent and OIDC discovery provider into .tools (Go module proxy)\n  signing-helper  build AWS's aws_signing_helper (IAM Roles Anywhere) into .tools (Go module proxy)\n  clients  build the suite's Go and Java gRPC clients (tests/go, tests/java)\n  istio-tools  build the pinned istioctl and podcheck into .tools (Go; the Istio injection test runs them)\n  regen  regenerate proto/src/generated from proto/workload.proto\n  venv   create/refresh the project venv with the test peers\n  deny   [--advisories]: licenses, bans, sources (offline; cargo-deny installed into .tools if missing)\n  fuzz   [--minutes N] [--cases N]: the parsers' property tests with fresh seeds for N minutes (default 10)"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn root() -> PathBuf {
    // xtask/ is one level below the workspace root.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Cargo's target directory: `CARGO_TARGET_DIR`, else `<root>/target`.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from)
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

fn run(what: &str, cmd: &mut Command) -> Result {
    println!("==> {what}");
    let started = std::time::Instant::now();
    let status = cmd
        .status()
        .map_err(|e| format!("{what}: cannot start: {e}"))?;
    // Each step's time, so a CI log says what each part of the test command costs.
    println!("<== {what}: {:.1} s", started.elapsed().as_secs_f64());
    if status.success() {
        Ok(())
    } else {
        Err(format!("{what} failed ({status})"))
    }
}

/// The project-local venv: `SUITE_VENV` if set, else `<root>/.venv`.
fn venv_dir() -> PathBuf {
    std::env::var_os("SUITE_VENV").map_or_else(|| root().join(".venv"), PathBuf::from)
}

/// Creates the venv and installs tests/requirements.txt into it, unless the installed set
/// already matches (a stamp file holds the requirements it was built from).
fn venv() -> Result<PathBuf> {
    let dir = venv_dir();
    let requirements = root().join("tests/requirements.txt");
    let wanted = std::fs::read_to_string(&requirements)
        .map_err(|e| format!("{}: {e}", requirements.display()))?;
    let stamp = dir.join(".suite-requirements");
    let python = dir.join("bin/python");
    if python.exists() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) {
        println!("==> venv {} is up to date", dir.display());
        return Ok(dir);
    }
    if !python.exists() {
        let py = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
        run(
            &format!("create venv {}", dir.display()),
            Command::new(&py).args(["-m", "venv"]).arg(&dir),
        )
        .map_err(|e| {
            format!("{e}; install Python 3 with the venv module (Debian: python3-venv)")
        })?;
    }
    run(
        "install test peers (tests/requirements.txt)",
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "-r",
            ])
            .arg(&requirements),
    )?;
    std::fs::write(&stamp, wanted).map_err(|e| format!("{}: {e}", stamp.display()))?;
    Ok(dir)
}

fn test(extra: &[String]) -> Result {
    let venv = venv()?;
    let spire = spire::install()?;
    // tests/tests/roles_anywhere.rs proves its stand-in against AWS's own client.
    let signing_helper = signing_helper::install()?;
    // tests/tests/istio_inject.rs renders our injection templates with them.
    istio_tools::install()?;
    run(
        "cargo fmt --check",
        cargo().args(["fmt", "--all", "--", "--check"]),
    )?;
    run(
        "cargo clippy -D warnings",
        cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--locked",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    // Supply chain: licenses, one version per crate family, crates.io only (deny.toml).
    deny::check(false)?;
    // The end-to-end tests start the sidecar and agent binaries: build them first.
    run(
        "cargo build --bins",
        cargo().args(["build", "--workspace", "--bins", "--locked"]),
    )?;
    // tests/image_platforms.rs runs every platform's binaries copied out of the images
    // (natively or under qemu-user); container_image.rs runs the broker from the host's image.
    let platforms = platform::every_run()?;
    image::build_images(&platforms)?;
    platform::ensure_runners(&platforms)?;
    let platforms = platforms
        .iter()
        .map(|p| p.arch)
        .collect::<Vec<_>>()
        .join(",");
    clients()?;
    let nextest = cargo()
        .args(["nextest", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if nextest {
        // nextest does not run doctests; run them first so the run ends on nextest's summary.
        run(
            "doc tests",
            cargo().args(["test", "--workspace", "--locked", "--doc"]),
        )?;
        run(
            "tests (nextest)",
            cargo()
                .args([
                    "nextest",
                    "run",
                    "--workspace",
                    "--locked",
                    "--no-fail-fast",
                ])
                .args(extra)
                .env("SUITE_VENV", &venv)
                .env("SUITE_SPIRE_BIN", &spire)
                .env("SUITE_SIGNING_HELPER", &signing_helper)
                .env("SUITE_IMAGE_PLATFORMS", &platforms),
        )?;
    } else {
        run(
            "tests (cargo test; install cargo-nextest for parallel runs)",
            cargo()
                .args(["test", "--workspace", "--locked", "--no-fail-fast"])
                .args(extra)
                .env("SUITE_VENV", &venv)
                .env("SUITE_SPIRE_BIN", &spire)
                .env("SUITE_SIGNING_HELPER", &signing_helper)
                .env("SUITE_IMAGE_PLATFORMS", &platforms),
        )?;
    }
    // Both paths end on the soaks: CI (no nextest) runs what the usage text promises.
    soak_short(&venv, &spire)
}

/// The Go and Java gRPC clients that tests/go_java_clients.rs runs against our sockets, built
/// here once so the parallel tests find them up to date (they would build them on first use,
/// one test at a time). The suite's own `build-clients` does it: one build recipe, in
/// `suite_tests::clients`, which fails with the command to run when Go, Maven or a module is
/// missing.
fn clients() -> Result {
    run(
        "build the Go and Java test clients (tests/go, tests/java)",
        cargo().args([
            "run",
            "--quiet",
            "--locked",
            "--package",
            "suite-tests",
            "--bin",
            "build-clients",
        ]),
    )
}

/// The test command's soaks: 60 s of load and chaos on the dev agent, then 60 s on SPIRE
/// (about 80 s each), on the host's binaries staged for the image (so they need no second
/// release build), after the other tests, alone on the machine.
fn soak_short(venv: &Path, spire: &Path) -> Result {
    let debug = target_dir().join("debug");
    let bin_dir = image::bin_dir(platform::host()?);
    let soak = || {
        let mut c = Command::new(debug.join("soak"));
        c.args(["--seconds", "60"])
            .env("SUITE_VENV", venv)
            .env("SUITE_BIN_DIR", &bin_dir);
        c
    };
    run(
        "soak (60 s; `cargo xtask soak --minutes N` for long runs)",
        &mut soak(),
    )?;
    run(
        "soak on SPIRE (60 s; `cargo xtask soak --spire --minutes N` for long runs)",
        soak().arg("--spire").env("SUITE_SPIRE_BIN", spire),
    )
}

/// `cargo xtask soak [--spire] [--minutes N]` (default 10): release builds of everything,
/// then the soak driver (tests/src/bin/soak/main.rs), which prints its table and fails on any
/// broken check. `--spire` runs it on SPIRE (built first, as for the tests).
fn soak(args: &[String]) -> Result {
    let usage = || "usage: cargo xtask soak [--spire] [--minutes N]".to_owned();
    let on_spire = args.first().is_some_and(|a| a == "--spire");
    let rest = if on_spire { &args[1..] } else { args };
    let minutes = match rest {
        [] => "10".to_owned(),
        [flag, n] if flag == "--minutes" && n.parse::<f64>().is_ok_and(|m| m > 0.0) => n.clone(),
        _ => return Err(usage()),
    };
    let spire = if on_spire {
        Some(spire::install()?)
    } else {
        None
    };
    let venv = venv()?;
    run(
        "cargo build --release (sidecars, agent, soak driver)",
        cargo().args(["build", "--release", "--locked", "--workspace", "--bins"]),
    )?;
    let release = target_dir().join("release");
    let mut soak = Command::new(release.join("soak"));
    soak.args(["--minutes", &minutes]).env("SUITE_VENV", &venv);
    if let Some(bin) = spire {
        soak.arg("--spire").env("SUITE_SPIRE_BIN", bin);
    }
    let on = if on_spire { ", on SPIRE" } else { "" };
    run(&format!("soak ({minutes} min{on})"), &mut soak)
}

/// Benchmarks run on release builds; figures are ratios against baselines in the same run.
fn bench(only: &[String]) -> Result {
    let venv = venv()?;
    run(
        "cargo build --release (sidecars, agent, no-op baseline, bench driver)",
        cargo().args([
            "build",
            "--release",
            "--locked",
            "--workspace",
            "--bins",
            "--example",
            "noop-authz",
        ]),
    )?;
    let target = target_dir().join("release");
    // `cargo xtask bench [authz|jwt-authn|sds|creds|uds|vault|spire]…`: all of them by default.
    let all = [
        "bench-authz",
        "bench-jwt-authn",
        "bench-sds",
        "bench-creds",
        "bench-uds",
        "bench-vault",
        "bench-spire",
    ];
    for name in all {
        let short = name.trim_start_matches("bench-");
        if only.is_empty() || only.iter().any(|o| o == short || o == name) {
            let mut cmd = Command::new(target.join(name));
            cmd.env("SUITE_VENV", &venv);
            // sds-bridge against the SDS server SPIRE's agent runs itself: SPIRE built first.
            if short == "spire" {
                cmd.env("SUITE_SPIRE_BIN", spire::install()?);
            }
            run(name, &mut cmd)?;
        }
    }
    Ok(())
}

fn regen() -> Result {
    run(
        "regenerate proto/src/generated/workload.rs",
        cargo()
            .args(["test", "-p", "workload-proto", "--test", "regen"])
            .env("REGEN_PROTO", "1"),
    )
}

/// The README's first command: peers into the venv, the binaries, then the `demo` binary
/// (tests/src/bin/demo.rs), which runs every step against real Envoy, moto and the AWS CLI.
fn demo(args: &[String]) -> Result {
    let spire = match args {
        [] => None,
        [flag] if flag == "--spire" => Some(spire::install()?),
        _ => return Err("usage: cargo xtask demo [--spire]".into()),
    };
    let venv = venv()?;
    run(
        "cargo build --bins",
        cargo().args(["build", "--workspace", "--bins", "--locked"]),
    )?;
    let target = target_dir().join("debug");
    let mut demo = Command::new(target.join("demo"));
    demo.env("SUITE_VENV", &venv).env("RUST_LOG", "warn");
    if let Some(bin) = spire {
        demo.arg("--spire").env("SUITE_SPIRE_BIN", bin);
    }
    run("demo", &mut demo)
}

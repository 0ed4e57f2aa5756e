#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The README's first command: `cargo xtask demo` runs the `demo` binary. It must pass from a
//! clean machine (the test command installs its peers), and clean up after itself, also when
//! interrupted.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use suite_tests::{bin, venv};

fn demo() -> Command {
    let mut cmd = Command::new(bin("demo"));
    cmd.env("SUITE_VENV", venv()).env("RUST_LOG", "warn");
    cmd
}

#[test]
fn demo_runs_every_step_and_exits_zero() {
    assert_every_step(&mut demo());
}

#[test]
fn demo_on_spire_runs_the_same_steps() {
    // Fails with the build command if SPIRE is missing.
    suite_tests::spire::spire_bin("spire-server");
    let stdout = assert_every_step(demo().arg("--spire"));
    assert!(
        stdout.contains("SPIRE's OIDC discovery provider at http://"),
        "{stdout}"
    );
}

/// Runs the demo and checks every step's line; returns its output.
fn assert_every_step(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "backend saw authorization: Bearer ey",
        "no token -> 401",
        "(mTLS) -> backend: 200",
        "rotated without a restart",
        "assumed-role/demo/demo.example@ns@demo@sa@client",
        "azure-identity DefaultAzureCredential().get_token(",
        "google-auth google.auth.default() -> ya29.fake-sa",
        "every process stopped, temporary files removed",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
    stdout
}

#[test]
fn interrupted_demo_stops_every_process_and_removes_its_files() {
    let mut child = demo().stdout(Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // The work directory is in the agents' socket paths: "ok  client agent unix:///tmp/…".
    let mut workdir = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(rest) = line.split("unix://").nth(1) {
            let path = rest.split_whitespace().next().unwrap();
            workdir = Some(
                std::path::PathBuf::from(path)
                    .parent()
                    .unwrap()
                    .parent()
                    .unwrap()
                    .to_path_buf(),
            );
        }
        if line.starts_with("=== 1.") {
            break;
        }
    }
    let workdir = workdir.expect("the demo printed its agent socket");
    assert!(workdir.exists());
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "exit status after SIGTERM");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = Command::new("pgrep")
            .args(["-f", workdir.to_str().unwrap()])
            .output()
            .unwrap();
        if left.stdout.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "processes left behind: {}",
            String::from_utf8_lossy(&left.stdout)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!workdir.exists(), "{} left behind", workdir.display());
}

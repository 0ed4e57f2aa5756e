//! gRPC clients in other languages, with their default options, built from this repository:
//!
//! - `tests/go` (one Go module, its `go.sum` committed): `go-spiffe` (go-spiffe's Workload API
//!   client) and `sds-client` (grpc-go with Envoy's go-control-plane protos), built into
//!   `target/go-clients/`;
//! - `tests/java` (Maven): `java-spiffe-client` (java-spiffe's Workload API client), built into
//!   `tests/java/target/`.
//!
//! Each is built on first use and rebuilt when its sources change; `cargo xtask test` builds
//! them before the tests (`build-clients`), so the tests only check. The Go module and build
//! caches and Maven's local repository stay where Go and Maven put them (machine-wide), so a
//! second checkout builds in seconds. A missing toolchain or module fails with the command to
//! run, never a skip.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use crate::{Proc, root};

/// The Go programs under `tests/go`, by directory.
pub const GO_PROGRAMS: [&str; 2] = ["go-spiffe", "sds-client"];

/// Where the Go programs are built: inside the workspace's git-ignored `target/`.
pub fn go_bin_dir() -> PathBuf {
    root().join("target/go-clients")
}

/// The Maven project.
pub fn java_dir() -> PathBuf {
    root().join("tests/java")
}

/// The runnable jar (its dependencies in `lib/` beside it, named by its manifest).
pub fn java_jar() -> PathBuf {
    java_dir().join("target/java-spiffe-client.jar")
}

/// Tests run in parallel threads (cargo test) or processes (nextest): one build at a time,
/// with a lock the kernel drops when its holder exits, however it exits.
fn build_lock(dir: &Path) -> File {
    std::fs::create_dir_all(dir).unwrap();
    let file = File::create(dir.join(".build-lock")).unwrap();
    rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive).unwrap();
    file
}

fn go_build_command(name: &str) -> (Command, String) {
    let out = go_bin_dir().join(name);
    let mut cmd = Command::new("go");
    cmd.current_dir(root().join("tests/go"))
        .args(["build", "-buildvcs=false", "-o"])
        .arg(&out)
        .arg(format!("./{name}"))
        // The installed Go builds go.mod's `go` line or fails; it never downloads another.
        .env("GOTOOLCHAIN", "local");
    let shown = format!(
        "cd tests/go && GOTOOLCHAIN=local go build -buildvcs=false -o {} ./{name}",
        out.display()
    );
    (cmd, shown)
}

/// The Go program `name` (one of [`GO_PROGRAMS`]), built or brought up to date. `go build`
/// decides: with nothing changed it only compares build IDs (a fraction of a second).
pub fn go_program(name: &str) -> PathBuf {
    let _lock = build_lock(&go_bin_dir());
    let (mut cmd, shown) = go_build_command(name);
    let out = match cmd.stdin(std::process::Stdio::null()).output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "Go is not installed (no `go` on PATH): install Go 1.26 or newer (tests/go/go.mod's \
             `go` line), then build with: {shown}"
        ),
        Err(e) => panic!("{shown}: cannot start: {e}"),
    };
    assert!(
        out.status.success(),
        "{shown} failed ({}):\n{}\nOn first use it downloads tests/go/go.sum's modules from \
         the Go module proxy into Go's module cache; a module that cannot be had shows above.",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    go_bin_dir().join(name)
}

fn newest_mtime(path: &Path) -> SystemTime {
    let meta = std::fs::metadata(path).unwrap();
    let own = meta.modified().unwrap();
    if !meta.is_dir() {
        return own;
    }
    std::fs::read_dir(path)
        .unwrap()
        .map(|e| newest_mtime(&e.unwrap().path()))
        .fold(own, SystemTime::max)
}

const MAVEN_HOW: &str = "install Maven and a JDK (Debian: `apt-get install maven \
                         openjdk-17-jdk-headless`)";

/// `java -jar tests/java/target/java-spiffe-client.jar`, the jar built first unless it is
/// newer than `pom.xml` and everything under `src/` (Maven takes seconds even with nothing to
/// do, so the tests decide).
pub fn java_spiffe_client() -> Command {
    let dir = java_dir();
    let jar = java_jar();
    let _lock = build_lock(&dir.join("target"));
    let sources = newest_mtime(&dir.join("pom.xml")).max(newest_mtime(&dir.join("src")));
    let fresh = std::fs::metadata(&jar)
        .and_then(|m| m.modified())
        .is_ok_and(|built| built >= sources)
        && dir.join("target/lib").is_dir();
    if !fresh {
        let shown = "cd tests/java && mvn -q -B package";
        let mut cmd = Command::new("mvn");
        cmd.current_dir(&dir).args(["-q", "-B", "package"]);
        let out = match cmd.stdin(std::process::Stdio::null()).output() {
            Ok(out) => out,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                panic!("Maven is not installed (no `mvn` on PATH): {MAVEN_HOW}, then: {shown}")
            }
            Err(e) => panic!("{shown}: cannot start: {e}"),
        };
        assert!(
            out.status.success(),
            "{shown} failed ({}):\n{}{}\nOn first use it downloads java-spiffe and its \
             dependencies from Maven Central into ~/.m2; an artifact that cannot be had shows \
             above.",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(jar.is_file(), "{shown} did not produce {}", jar.display());
    }
    let java = Command::new("java").arg("-version").output();
    assert!(
        java.is_ok_and(|o| o.status.success()),
        "no Java runtime (`java` on PATH): {MAVEN_HOW}"
    );
    let mut cmd = Command::new("java");
    cmd.arg("-jar").arg(jar);
    cmd
}

/// The JSON objects a client printed, one per line, in order (its log also holds whatever
/// else it wrote, e.g. Java's logging on stderr: only lines that start with `{` count).
pub fn json_lines(log: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("client printed bad JSON ({e}): {l}"))
        })
        .collect()
}

/// Runs a client to its end (killed, and the test failed, after `timeout`); returns whether it
/// exited 0, its JSON lines and its whole log.
pub fn run_client(
    name: &str,
    cmd: Command,
    dir: &Path,
    timeout: Duration,
) -> (bool, Vec<serde_json::Value>, String) {
    let mut proc = Proc::spawn(name, cmd, dir);
    let status = proc
        .wait_exit(timeout)
        .unwrap_or_else(|| panic!("{name} still running after {timeout:?}:\n{}", proc.log()));
    let log = proc.log();
    (status.success(), json_lines(&log), log)
}

//! Programs of other Go modules, built from the Go module proxy into `<root>/.tools` (git
//! ignored): SPIRE for the tests against real SPIRE, AWS's `aws_signing_helper` for the Roles
//! Anywhere stand-in.
//!
//! The go command installs a program of another module from a throwaway module of our own
//! (`go get -tool`, then `go install`), so the version is pinned in one place (the caller) and
//! the module graph is the program's own `go.sum`-checked one. The go module and build caches
//! stay where `go env` puts them (machine-wide): a second checkout on the same machine relinks
//! in seconds. cgo stays on: SPIRE's SQLite datastore and the signing helper's PKCS#11 support
//! need it (gcc must be installed).

use std::path::Path;
use std::process::Command;

use crate::{Result, run};

/// Fetches `packages` (Go package paths, all of one module at `version`) into a throwaway
/// module in `module_dir` and installs them into `bin` with `ldflags`. `what` names the step
/// in the log; `how` is appended to a failure (the command to run by hand).
pub(crate) fn install(
    what: &str,
    module_dir: &Path,
    bin: &Path,
    packages: &[&str],
    version: &str,
    ldflags: &str,
    how: &str,
) -> Result {
    std::fs::create_dir_all(module_dir).map_err(|e| format!("{}: {e}", module_dir.display()))?;
    std::fs::write(module_dir.join("go.mod"), "module tools\n\ngo 1.24\n")
        .map_err(|e| format!("{}: {e}", module_dir.display()))?;
    let go = |args: &[&str]| {
        let mut c = Command::new("go");
        c.current_dir(module_dir)
            .args(args)
            .env("GOBIN", bin)
            .env("CGO_ENABLED", "1")
            .env("GOFLAGS", "-buildvcs=false")
            // No toolchain download: the installed Go builds the module's go directive or fails.
            .env("GOTOOLCHAIN", "local");
        c
    };
    let mut get = vec!["get".to_owned(), "-tool".to_owned()];
    get.extend(packages.iter().map(|p| format!("{p}@v{version}")));
    let get: Vec<&str> = get.iter().map(String::as_str).collect();
    run(
        &format!("{what}: fetch the modules (Go module proxy)"),
        &mut go(&get),
    )
    .map_err(|e| format!("{e}; {how}"))?;
    let ldflags = format!("-ldflags={ldflags}");
    let mut install = vec!["install", ldflags.as_str()];
    install.extend(packages);
    run(
        &format!("{what}: build into {} (once per machine)", bin.display()),
        &mut go(&install),
    )
    .map_err(|e| format!("{e}; {how}"))
}

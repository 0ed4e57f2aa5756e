//! The Go programs `tests/tests/istio_inject.rs` runs, pinned by their modules under
//! `tests/istio/` and built into `<root>/.tools/bin` (git-ignored) when missing or stale:
//!
//! - `istioctl`, from `tests/istio/istioctl`: a tools module that requires one `istio.io/istio`
//!   commit (the release-1.31 branch; Istio's `1.31.x` tags are not Go module versions, so
//!   the module proxy serves only commits), with `go.sum` holding every dependency's hash;
//! - `podcheck`, from `tests/istio/podcheck`: the Kubernetes API server's own pod validation.
//!
//! Each binary gets a stamp beside it holding the module files it was built from (as the venv
//! keeps its requirements); the test compares the same files and fails with
//! `cargo xtask istio-tools` when they differ. Building needs Go and the Go module proxy: on
//! the 2-core machine, with empty Go caches, istioctl took 9.8 CPU-minutes (12.5 minutes while
//! other builds shared the machine) and podcheck under one more; with warm caches, 40 s to
//! relink both (docs/istio.md).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Result, root, run};

/// (binary, module directory, package to install from that module).
const TOOLS: [(&str, &str, &str); 2] = [
    (
        "istioctl",
        "tests/istio/istioctl",
        "istio.io/istio/istioctl/cmd/istioctl",
    ),
    ("podcheck", "tests/istio/podcheck", "."),
];

/// `cargo xtask istio-tools`, and the first step of `cargo xtask test`.
pub(crate) fn install() -> Result {
    let bin = root().join(".tools/bin");
    for (name, dir, package) in TOOLS {
        let module = root().join(dir);
        let wanted = module_files(&module)?;
        let stamp = bin.join(format!("{name}.stamp"));
        if bin.join(name).is_file() && std::fs::read(&stamp).ok().as_deref() == Some(&wanted[..]) {
            println!("==> {name} in .tools/bin is up to date");
            continue;
        }
        run(
            &format!("build {name} from {dir} into .tools/bin (Go)"),
            Command::new(go())
                .current_dir(&module)
                .args(["install", "-buildvcs=false", package])
                .env("GOBIN", &bin)
                // The go.mod's Go version is what this machine has; never fetch a toolchain.
                .env("GOTOOLCHAIN", "local"),
        )
        .map_err(|e| {
            format!(
                "{e}; building {name} needs Go 1.26 or later (`go` on PATH) and the Go module proxy"
            )
        })?;
        std::fs::write(&stamp, wanted).map_err(|e| format!("{}: {e}", stamp.display()))?;
    }
    Ok(())
}

/// `go` from `PATH`, else the official tarball's place, where a non-login shell may not have
/// `PATH` pointing.
fn go() -> PathBuf {
    let on_path = Command::new("go")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    let tarball = PathBuf::from("/usr/local/go/bin/go");
    if on_path || !tarball.is_file() {
        PathBuf::from("go")
    } else {
        tarball
    }
}

/// `go.mod`, `go.sum` and every `.go` file of a module directory, in name order: what its
/// build depends on besides the Go toolchain. `tests/src/istio.rs` reads the same files.
fn module_files(dir: &Path) -> Result<Vec<u8>> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|x| x == "go")
                || p.file_name()
                    .is_some_and(|n| n == "go.mod" || n == "go.sum")
        })
        .collect();
    names.sort();
    let mut all = Vec::new();
    for name in names {
        all.extend(std::fs::read(&name).map_err(|e| format!("{}: {e}", name.display()))?);
    }
    Ok(all)
}

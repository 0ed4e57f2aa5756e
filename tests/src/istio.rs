//! The pinned Go programs of the Istio injection test, built into `<root>/.tools/bin` by
//! `cargo xtask istio-tools` (and by `cargo xtask test` before the tests).

use std::path::{Path, PathBuf};

use crate::root;

/// `.tools/bin/<name>`, built from `tests/istio/<name>`; fails with the command that builds it
/// when it is missing or was built from other module files than the committed ones.
pub fn tool(name: &str) -> PathBuf {
    let bin = root().join(".tools/bin").join(name);
    let stamp = std::fs::read(root().join(format!(".tools/bin/{name}.stamp"))).ok();
    let current =
        stamp.as_deref() == Some(&module_files(&root().join("tests/istio").join(name))[..]);
    assert!(
        bin.is_file() && current,
        "{} is {}: build it with `cargo xtask istio-tools` (`cargo xtask test` does it first; it \
         runs `go install` in tests/istio/{name} with GOBIN=.tools/bin and needs Go and the Go \
         module proxy)",
        bin.display(),
        if bin.is_file() {
            "stale (tests/istio changed since it was built)"
        } else {
            "missing"
        }
    );
    bin
}

/// `go.mod`, `go.sum` and every `.go` file of the module, in name order: what xtask's stamp
/// holds (xtask/src/istio_tools.rs).
fn module_files(dir: &Path) -> Vec<u8> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "go")
                || p.file_name()
                    .is_some_and(|n| n == "go.mod" || n == "go.sum")
        })
        .collect();
    names.sort();
    names
        .iter()
        .flat_map(|n| std::fs::read(n).unwrap())
        .collect()
}

//! Supply chain: `cargo deny` for licenses, bans and sources, offline, in every
//! `cargo xtask test`; `cargo xtask deny [--advisories]` alone. The rules are `deny.toml`.
//!
//! cargo-deny is pinned and installed project-locally (`<root>/.tools`, git-ignored) when
//! missing, the way the venv step installs the Python peers; a `cargo-deny` of the same version
//! on `PATH` is used as is. If it can be neither found nor installed the command fails and says
//! how to install it: the check is never skipped.
//!
//! The crate graph handed to cargo-deny is `cargo metadata --filter-platform <triple>` for each
//! image platform (linux amd64, arm64, ppc64le, s390x): the graph the sidecars ship (Windows-
//! and macOS-only crates never link), read from the local cache, so the check needs no
//! network. Advisories need the RustSec database, which is fetched from GitHub:
//! `--advisories` does that where the network allows (CI cannot reach it).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Result, cargo, platform, root, run, target_dir};

/// The cargo-deny release the rules in deny.toml are written for.
pub(crate) const VERSION: &str = "0.20.2";

/// `cargo xtask deny [--advisories]`.
pub(crate) fn deny(args: &[String]) -> Result {
    let advisories = match args {
        [] => false,
        [flag] if flag == "--advisories" => true,
        _ => return Err("usage: cargo xtask deny [--advisories]".to_owned()),
    };
    check(advisories)
}

/// Licenses, bans and sources, offline; then advisories if asked.
pub(crate) fn check(advisories: bool) -> Result {
    let deny = tool()?;
    let metadata = metadata()?;
    run(
        "cargo deny check licenses bans sources (offline)",
        Command::new(&deny)
            .current_dir(root())
            .arg("--frozen")
            .arg("--metadata-path")
            .arg(&metadata)
            .args(["--workspace", "check", "licenses", "bans", "sources"]),
    )?;
    if advisories {
        run(
            "cargo deny check advisories (fetches the RustSec advisory database)",
            Command::new(&deny)
                .current_dir(root())
                .arg("--locked")
                .arg("--metadata-path")
                .arg(&metadata)
                .args(["--workspace", "check", "advisories"]),
        )
        .map_err(|e| {
            format!(
                "{e}; the advisory database is cloned from https://github.com/rustsec/advisory-db, \
                 which needs network access beyond crates.io"
            )
        })?;
    }
    Ok(())
}

/// The pinned cargo-deny: `.tools/bin/cargo-deny`, else one on `PATH`, else installed into
/// `.tools` now (compiled once per checkout).
fn tool() -> Result<PathBuf> {
    let local = root().join(".tools/bin/cargo-deny");
    if version_of(&local).as_deref() == Some(VERSION) {
        return Ok(local);
    }
    let on_path = PathBuf::from("cargo-deny");
    if version_of(&on_path).as_deref() == Some(VERSION) {
        return Ok(on_path);
    }
    let how = format!(
        "cargo-deny {VERSION} is required for the supply-chain check; install it with \
         `cargo install cargo-deny --locked --version {VERSION} --root .tools` (from crates.io)"
    );
    run(
        &format!("install cargo-deny {VERSION} into .tools (once)"),
        cargo()
            .args([
                "install",
                "cargo-deny",
                "--locked",
                "--version",
                VERSION,
                "--root",
            ])
            .arg(root().join(".tools"))
            // cargo-deny's own release profile is fat LTO in one codegen unit: the slowest
            // build there is, for a tool that checks our graph in about a second.
            .env("CARGO_PROFILE_RELEASE_LTO", "false")
            .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "16"),
    )
    .map_err(|e| format!("{e}: {how}"))?;
    match version_of(&local) {
        Some(v) if v == VERSION => Ok(local),
        found => Err(format!(
            "{} is {found:?} after installing: {how}",
            local.display()
        )),
    }
}

/// `cargo-deny --version` is `cargo-deny 0.20.2`.
fn version_of(bin: &Path) -> Option<String> {
    let out = Command::new(bin).arg("--version").output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    text.trim()
        .strip_prefix("cargo-deny ")
        .map(str::to_owned)
        .filter(|_| out.status.success())
}

/// Writes the crate graph of the image platforms to `target/deny-metadata.json`.
fn metadata() -> Result<PathBuf> {
    let mut args = vec!["metadata", "--locked", "--format-version", "1"];
    for p in &platform::PLATFORMS {
        args.extend(["--filter-platform", p.triple]);
    }
    // From the local cache if the build already fetched everything (it has, in the test
    // command); otherwise cargo downloads the missing crates from crates.io.
    let mut out = cargo().args(&args).arg("--offline").output();
    if !out.as_ref().is_ok_and(|o| o.status.success()) {
        out = cargo().args(&args).output();
    }
    let out = out.map_err(|e| format!("cargo metadata: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let target = target_dir();
    std::fs::create_dir_all(&target).map_err(|e| format!("{}: {e}", target.display()))?;
    let path = target.join("deny-metadata.json");
    std::fs::write(&path, out.stdout).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

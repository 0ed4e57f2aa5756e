//! A standard library built from source for a platform Debian ships no matching one for
//! (s390x), kept as a sysroot of its own.
//!
//! Only an empty crate is built with cargo's unstable `-Zbuild-std` (and so with
//! `RUSTC_BOOTSTRAP=1`); its standard library crates are then copied into a sysroot that the
//! workspace build names with the stable `--sysroot` flag. Our crates and their dependencies
//! are therefore compiled with exactly the flags of the other platforms: a `RUSTC_BOOTSTRAP=1`
//! seen by the workspace build would let build scripts that probe for nightly features (anyhow,
//! proc-macro2, thiserror do) switch them on for this platform alone.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::write;
use crate::platform::{self, Platform};
use crate::{Result, run};

/// Builds (once per compiler version) and returns the sysroot holding `p`'s standard library,
/// with the host's libraries linked in (rustc looks for the proc-macro crates it loads in the
/// same sysroot).
pub(super) fn build(p: &Platform, out: &Path) -> Result<PathBuf> {
    let sysroot = out.join("sysroot").join(p.triple);
    let rustlib = sysroot.join("lib/rustlib");
    let lib = rustlib.join(p.triple).join("lib");
    let stamp = sysroot.join("built-by");
    let compiler = compiler_version()?;
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(compiler.as_str()) {
        println!("==> standard library for {} is up to date", p.os_arch());
        return Ok(sysroot);
    }
    // A new compiler starts from nothing: the old one's crates must not reach the new sysroot.
    let krate = out.join("std-build");
    for dir in [&sysroot, &krate] {
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
    }

    let src = krate.join("src");
    std::fs::create_dir_all(&src).map_err(|e| format!("{}: {e}", src.display()))?;
    // Its own `[workspace]`: the folder is inside ours, which must not claim it.
    write(
        &krate.join("Cargo.toml"),
        "[package]\nname = \"std-build\"\nversion = \"0.0.0\"\nedition = \"2024\"\n\
         publish = false\n\n[workspace]\n",
    )?;
    write(&src.join("main.rs"), "fn main() {}\n")?;
    let upper = p.env_key().to_uppercase();
    run(
        &format!(
            "build the standard library for {} from Debian's rust-web-src",
            p.os_arch()
        ),
        Command::new(platform::CARGO)
            .current_dir(&krate)
            .args([
                "build",
                "--release",
                "-Zbuild-std=std,panic_abort",
                "--target",
                p.triple,
            ])
            .env("RUSTC_BOOTSTRAP", "1")
            .env("RUSTC", platform::RUSTC)
            .env("CARGO_TARGET_DIR", krate.join("target"))
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env(
                format!("CARGO_TARGET_{upper}_RUSTFLAGS"),
                "-C target-feature=+crt-static",
            )
            .env(format!("CARGO_TARGET_{upper}_LINKER"), p.gcc()),
    )?;

    std::fs::create_dir_all(&lib).map_err(|e| format!("{}: {e}", lib.display()))?;
    let deps = krate.join("target").join(p.triple).join("release/deps");
    let entries = std::fs::read_dir(&deps).map_err(|e| format!("{}: {e}", deps.display()))?;
    let mut copied = 0;
    for entry in entries {
        let path = entry
            .map_err(|e| format!("{}: {e}", deps.display()))?
            .path();
        if path.extension().is_some_and(|e| e == "rlib") {
            let name = path.file_name().unwrap_or_default();
            std::fs::copy(&path, lib.join(name))
                .map_err(|e| format!("copy {}: {e}", path.display()))?;
            copied += 1;
        }
    }
    if copied == 0 {
        return Err(format!("no standard library crates in {}", deps.display()));
    }
    let host = host_triple()?;
    if host != p.triple {
        let host_lib = Path::new("/usr/lib/rustlib").join(&host);
        std::os::unix::fs::symlink(&host_lib, rustlib.join(&host))
            .map_err(|e| format!("link {}: {e}", host_lib.display()))?;
    }
    write(&stamp, &compiler)?;
    Ok(sysroot)
}

/// `rustc -vV` of Debian's compiler: a new compiler means a new standard library.
fn compiler_version() -> Result<String> {
    let out = Command::new(platform::RUSTC)
        .arg("-vV")
        .output()
        .map_err(|e| format!("{}: {e}", platform::RUSTC))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn host_triple() -> Result<String> {
    compiler_version()?
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(str::to_owned)
        .ok_or_else(|| format!("{} -vV printed no host triple", platform::RUSTC))
}

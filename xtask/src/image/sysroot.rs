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

use super::{copy, create_dir, debian_cargo, remove_dir, write};
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
    // `rustc -vV`: a new compiler means a new standard library.
    let compiler = Command::new(platform::RUSTC)
        .arg("-vV")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .map_err(|e| format!("{}: {e}", platform::RUSTC))?;
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(compiler.as_str()) {
        println!("==> standard library for {} is up to date", p.os_arch());
        return Ok(sysroot);
    }
    // A new compiler starts from nothing: the old one's crates must not reach the new sysroot.
    let krate = out.join("std-build");
    remove_dir(&sysroot)?;
    remove_dir(&krate)?;

    let src = krate.join("src");
    create_dir(&src)?;
    // Its own `[workspace]`: the folder is inside ours, which must not claim it.
    write(
        &krate.join("Cargo.toml"),
        "[package]\nname = \"std-build\"\nversion = \"0.0.0\"\nedition = \"2024\"\n\
         publish = false\n\n[workspace]\n",
    )?;
    write(&src.join("main.rs"), "fn main() {}\n")?;
    run(
        &format!(
            "build the standard library for {} from Debian's rust-web-src",
            p.os_arch()
        ),
        debian_cargo(p, &krate.join("target"), "")
            .current_dir(&krate)
            .args([
                "build",
                "--release",
                "-Zbuild-std=std,panic_abort",
                "--target",
                p.triple,
            ])
            .env("RUSTC_BOOTSTRAP", "1"),
    )?;

    create_dir(&lib)?;
    let deps = krate.join("target").join(p.triple).join("release/deps");
    let entries = std::fs::read_dir(&deps).map_err(|e| format!("{}: {e}", deps.display()))?;
    let mut copied = 0;
    for entry in entries {
        let path = entry
            .map_err(|e| format!("{}: {e}", deps.display()))?
            .path();
        if path.extension().is_some_and(|e| e == "rlib") {
            copy(&path, &lib.join(path.file_name().unwrap_or_default()))?;
            copied += 1;
        }
    }
    if copied == 0 {
        return Err(format!("no standard library crates in {}", deps.display()));
    }
    let host = compiler
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .ok_or_else(|| format!("{} -vV printed no host triple", platform::RUSTC))?;
    if host != p.triple {
        let host_lib = Path::new("/usr/lib/rustlib").join(host);
        std::os::unix::fs::symlink(&host_lib, rustlib.join(host))
            .map_err(|e| format!("link {}: {e}", host_lib.display()))?;
    }
    write(&stamp, &compiler)?;
    Ok(sysroot)
}

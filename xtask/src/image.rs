//! `cargo xtask image`: static release binaries staged into `target/image/`, then one podman
//! image per Containerfile target.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Result, cargo, root, run};

/// The binaries the images carry, and the packages that build them.
pub(crate) const BINARIES: [(&str, &str); 4] = [
    ("jwt-auth-helper", "jwt-auth-helper"),
    ("iam-broker", "iam-broker"),
    ("sds-bridge", "sds-bridge"),
    ("spiffe-dev-agent", "dev-agent"),
];

/// Containerfile targets built by default, and the local tag each gets.
pub(crate) const TARGETS: [&str; 5] = [
    "jwt-auth-helper",
    "iam-broker",
    "sds-bridge",
    "dev-agent",
    "all",
];

/// `localhost/spiffe-sidecars/<target>:dev`.
pub(crate) fn tag(target: &str) -> String {
    format!("localhost/spiffe-sidecars/{target}:dev")
}

fn host_triple() -> Result<String> {
    let out = Command::new("rustc")
        .arg("-vV")
        .output()
        .map_err(|e| format!("rustc -vV: {e}"))?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(str::to_owned)
        .ok_or_else(|| "rustc -vV printed no host triple".to_owned())
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from)
}

/// Debian's CA bundle (package `ca-certificates`: Mozilla's roots) on the build machine.
const HOST_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Where the images carry it: the path OpenShift mounts its injected trusted CA bundle over
/// (as on UBI images), so a mounted cluster bundle *replaces* the default instead of being
/// shadowed by it (sidecar-runtime/src/tls_roots.rs explains the order).
const IMAGE_CA_BUNDLE: &str = "etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem";

/// Builds the static binaries and stages `target/image/{usr/local/bin,etc}`.
pub(crate) fn stage() -> Result<PathBuf> {
    let triple = host_triple()?;
    let mut build = cargo();
    build
        .args([
            "build",
            "--release",
            "--locked",
            "--bins",
            "--target",
            &triple,
        ])
        // crt-static on the gnu target: no libc in a `scratch` image. An explicit --target
        // keeps the flag off build scripts and proc macros.
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        // Symbols off: the images carry the binaries only (host builds keep theirs).
        .env("CARGO_PROFILE_RELEASE_STRIP", "symbols");
    for (_, package) in BINARIES {
        build.args(["-p", package]);
    }
    run(
        "cargo build --release (static binaries for the images)",
        &mut build,
    )?;

    // Checked before staging anything: an image without CA certificates cannot reach any cloud
    // over TLS, so it is not built at all.
    let host_bundle = Path::new(HOST_CA_BUNDLE);
    if !host_bundle.is_file() {
        return Err(format!(
            "{HOST_CA_BUNDLE} is missing: the images carry the build machine's CA bundle \
             (iam-broker cannot reach STS over TLS without it); install it with \
             `apt-get install ca-certificates`"
        ));
    }
    let stage = root().join("target/image");
    let bin_dir = stage.join("usr/local/bin");
    let etc = stage.join("etc");
    let ca_bundle = stage.join(IMAGE_CA_BUNDLE);
    let ca_dir = ca_bundle.parent().unwrap_or(&etc).to_path_buf();
    for dir in [&bin_dir, &etc, &ca_dir] {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let built = target_dir().join(&triple).join("release");
    for (binary, _) in BINARIES {
        copy(&built.join(binary), &bin_dir.join(binary))?;
    }
    write(
        &etc.join("passwd"),
        "nonroot:x:65532:65532:nonroot:/:/sbin/nologin\n",
    )?;
    write(&etc.join("group"), "nonroot:x:65532:\n")?;
    copy(host_bundle, &ca_bundle)?;
    Ok(stage)
}

fn copy(from: &Path, to: &Path) -> Result {
    std::fs::copy(from, to)
        .map(|_| ())
        .map_err(|e| format!("copy {} -> {}: {e}", from.display(), to.display()))
}

fn write(path: &Path, text: &str) -> Result {
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

fn podman_works() -> bool {
    Command::new("podman")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Installs podman from Debian's packages if it is missing (as root, where apt-get exists):
/// the test command sets up what it needs on a fresh machine.
fn ensure_podman() -> Result {
    if podman_works() {
        return Ok(());
    }
    let apt = Path::new("/usr/bin/apt-get").exists();
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !(apt && root) {
        return Err("podman is not installed: apt-get install podman".into());
    }
    let install = || {
        run(
            "apt-get install podman",
            Command::new("apt-get")
                .args(["install", "-y", "--no-install-recommends", "podman"])
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    };
    if install().is_err() {
        run("apt-get update", Command::new("apt-get").arg("update"))?;
        install()?;
    }
    if podman_works() {
        Ok(())
    } else {
        Err("podman still not runnable after apt-get install podman".into())
    }
}

/// `cargo xtask image`: stage, then `podman build` every target.
pub(crate) fn image() -> Result {
    ensure_podman()?;
    stage()?;
    for target in TARGETS {
        run(
            &format!("podman build --target {target}"),
            Command::new("podman")
                .current_dir(root())
                .args([
                    "build",
                    "--quiet",
                    "-f",
                    "Containerfile",
                    "--target",
                    target,
                    "-t",
                ])
                .arg(tag(target))
                .arg("."),
        )?;
    }
    Ok(())
}

//! `cargo xtask image [--platforms …]`: static release binaries of every platform staged into
//! `target/image/`, then one podman image per Containerfile target and platform, gathered per
//! target into a manifest list.

mod sysroot;

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::platform::{self, Platform, Std};
use crate::{Result, root, run, target_dir};

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

/// `localhost/spiffe-sidecars/<target>:dev`: the manifest list of every platform built.
pub(crate) fn tag(target: &str) -> String {
    format!("localhost/spiffe-sidecars/{target}:dev")
}

/// `localhost/spiffe-sidecars/<target>:dev-<arch>`: one platform's image in that list.
pub(crate) fn platform_tag(target: &str, arch: &str) -> String {
    format!("{}-{arch}", tag(target))
}

/// Debian's CA bundle (package `ca-certificates`: Mozilla's roots) on the build machine.
const HOST_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Where the images carry it: the path OpenShift mounts its injected trusted CA bundle over
/// (as on UBI images), so a mounted cluster bundle *replaces* the default instead of being
/// shadowed by it (sidecar-runtime/src/tls_roots.rs explains the order).
const IMAGE_CA_BUNDLE: &str = "etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem";

/// Where the staged files are: `etc/` (every platform's), `<arch>/usr/local/bin/`.
pub(crate) fn staging() -> PathBuf {
    root().join("target/image")
}

/// One platform's staged binaries.
pub(crate) fn bin_dir(platform: &Platform) -> PathBuf {
    staging().join(platform.arch).join("usr/local/bin")
}

/// Builds the static binaries of `platforms` and stages `target/image/`.
pub(crate) fn stage(platforms: &[&'static Platform]) -> Result {
    // Checked before building anything: an image without CA certificates cannot reach any
    // cloud over TLS, so it is not built at all.
    let host_bundle = Path::new(HOST_CA_BUNDLE);
    if !host_bundle.is_file() {
        return Err(format!(
            "{HOST_CA_BUNDLE} is missing: the images carry the build machine's CA bundle \
             (iam-broker cannot reach STS over TLS without it); install it with \
             `apt-get install ca-certificates`"
        ));
    }
    platform::ensure_toolchain(platforms)?;
    // Debian's compiler keeps its own target directory: its artifacts never mix with rustup's.
    let out = target_dir().join("images");
    for p in platforms {
        let sysroot = match p.std {
            Std::Debian => None,
            Std::FromSource => Some(sysroot::build(p, &out)?),
        };
        build(p, &out, sysroot.as_deref())?;
    }

    let stage = staging();
    remove_dir(&stage)?;
    let etc = stage.join("etc");
    let ca_bundle = stage.join(IMAGE_CA_BUNDLE);
    create_dir(ca_bundle.parent().unwrap_or(&etc))?;
    write(
        &etc.join("passwd"),
        "nonroot:x:65532:65532:nonroot:/:/sbin/nologin\n",
    )?;
    write(&etc.join("group"), "nonroot:x:65532:\n")?;
    copy(host_bundle, &ca_bundle)?;
    for p in platforms {
        let bin_dir = bin_dir(p);
        create_dir(&bin_dir)?;
        let built = out.join(p.triple).join("image");
        for (binary, _) in BINARIES {
            copy(&built.join(binary), &bin_dir.join(binary))?;
        }
    }
    Ok(())
}

/// Debian's cargo and compiler building for `p` into `target_dir`: `+crt-static` (no libc in a
/// `scratch` image) and `extra` as the target's only rustflags, whatever the caller's
/// environment says, and the platform's GCC as linker and C compiler. Both the images' build
/// and the s390x standard library's start here, so they cannot drift apart.
fn debian_cargo(p: &Platform, target_dir: &Path, extra: &str) -> Command {
    let key = p.env_key();
    let upper = key.to_uppercase();
    let mut cargo = Command::new(platform::CARGO);
    // With `--target`, cargo keeps target rustflags off build scripts and proc macros, which
    // run here.
    cargo
        .env("RUSTC", platform::RUSTC)
        .env("CARGO_TARGET_DIR", target_dir)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env(
            format!("CARGO_TARGET_{upper}_RUSTFLAGS"),
            format!("-C target-feature=+crt-static {extra}").trim_end(),
        );
    // A foreign platform links and compiles its C with its cross GCC. Not the host's: cargo
    // applies `[target.<host>].linker` to build scripts and proc macros too, so naming it here
    // would rebuild every host artifact each time the build alternates between platforms.
    if !p.is_host() {
        cargo
            .env(format!("CARGO_TARGET_{upper}_LINKER"), p.gcc())
            .env(format!("CC_{key}"), p.gcc())
            .env(format!("AR_{key}"), p.ar());
    }
    cargo
}

/// `cargo build --profile image` of the images' binaries for one platform.
fn build(p: &Platform, out: &Path, sysroot: Option<&Path>) -> Result {
    let sysroot = sysroot.map_or_else(String::new, |s| format!("--sysroot {}", s.display()));
    let mut build = debian_cargo(p, out, &sysroot);
    build.current_dir(root()).args([
        "build",
        "--profile",
        "image",
        "--locked",
        "--bins",
        "--target",
        p.triple,
    ]);
    for (_, package) in BINARIES {
        build.args(["-p", package]);
    }
    run(
        &format!(
            "cargo build --profile image for {} (static binaries)",
            p.os_arch()
        ),
        &mut build,
    )
}

fn copy(from: &Path, to: &Path) -> Result {
    std::fs::copy(from, to)
        .map(|_| ())
        .map_err(|e| format!("copy {} -> {}: {e}", from.display(), to.display()))
}

fn create_dir(dir: &Path) -> Result {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))
}

/// Removes `dir` and everything in it, if it exists.
fn remove_dir(dir: &Path) -> Result {
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    Ok(())
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
    platform::apt_install("the images are built with podman", &[], || {
        if podman_works() {
            Vec::new()
        } else {
            vec![("podman".to_owned(), "podman".to_owned())]
        }
    })
}

/// `cargo xtask image [--platforms all|<arch>,…]` (default all).
pub(crate) fn image(args: &[String]) -> Result {
    let platforms = match args {
        [] => platform::parse("all")?,
        [flag, list] if flag == "--platforms" => platform::parse(list)?,
        _ => {
            return Err(format!(
                "usage: cargo xtask image [--platforms all|<arch>,...] (got {args:?})"
            ));
        }
    };
    build_images(&platforms)
}

/// Stages `platforms`, builds every Containerfile target for each, and gathers each target's
/// images into one manifest list.
pub(crate) fn build_images(platforms: &[&'static Platform]) -> Result {
    ensure_podman()?;
    stage(platforms)?;
    let mut sizes = Vec::new();
    for target in TARGETS {
        let list = tag(target);
        // The previous build's list and images go first: a list is not rebuilt in place, and
        // images left untagged would pile up with every build.
        if podman_ok(&["manifest", "exists", &list]) {
            podman(
                &format!("remove the old list {list}"),
                &["manifest", "rm", &list],
            )?;
        } else if podman_ok(&["image", "exists", &list]) {
            podman(&format!("remove the old image {list}"), &["rmi", &list])?;
        }
        podman(
            &format!("create the list {list}"),
            &["manifest", "create", &list],
        )?;
        for p in platforms {
            let image = platform_tag(target, p.arch);
            if podman_ok(&["image", "exists", &image]) {
                podman(&format!("remove the old image {image}"), &["rmi", &image])?;
            }
            // `FROM scratch` + COPY: nothing runs in the build, so no emulation is needed. The
            // Containerfile picks the platform's binaries with TARGETARCH.
            podman(
                &format!("podman build --target {target} --platform {}", p.os_arch()),
                &[
                    "build",
                    "--quiet",
                    "--platform",
                    &p.os_arch(),
                    "-f",
                    "Containerfile",
                    "--target",
                    target,
                    "-t",
                    &image,
                    ".",
                ],
            )?;
            podman(
                &format!("add {image} to {list}"),
                &[
                    "manifest",
                    "add",
                    &list,
                    &format!("containers-storage:{image}"),
                ],
            )?;
            let size = podman_output(&["image", "inspect", "--format", "{{.Size}}", &image])?;
            sizes.push(format!("{image}: {size} bytes"));
        }
    }
    println!("==> images\n{}", sizes.join("\n"));
    Ok(())
}

fn podman_ok(args: &[&str]) -> bool {
    Command::new("podman")
        .args(args)
        .current_dir(root())
        .output()
        .is_ok_and(|o| o.status.success())
}

fn podman(what: &str, args: &[&str]) -> Result {
    podman_output(args)
        .map(|_| ())
        .map_err(|e| format!("{what}: {e}"))
}

/// Runs podman quietly (20 calls per platform would drown the log); its stderr on failure.
fn podman_output(args: &[&str]) -> Result<String> {
    let out = Command::new("podman")
        .args(args)
        .current_dir(root())
        .output()
        .map_err(|e| format!("podman: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(format!(
            "podman {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

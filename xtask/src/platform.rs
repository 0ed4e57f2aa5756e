//! The platforms the images are built for, and the one compiler that builds all of them.
//!
//! rustup's distribution server is not reachable from every build machine, so neither are the
//! standard libraries of other targets; Debian's archive is. The images are therefore built by
//! Debian 12's `rustc-web` (the compiler Debian keeps current for its browsers) for every
//! platform, the host's included, so that the four images of one manifest list come from one
//! compiler and one standard library source:
//!
//! - amd64, arm64, ppc64le: the standard library Debian built for that architecture
//!   (`libstd-rust-web-dev:<arch>`, the same version as the compiler);
//! - s390x: Debian offers no `libstd-rust-web-dev:s390x` of the compiler's version (only an
//!   older one the compiler cannot link against), so the standard library is built from the
//!   compiler's own source (`rust-web-src`, same version) into a sysroot of its own
//!   (`image/sysroot.rs` says how, and why the workspace build never sees the unstable flags
//!   that takes).
//!
//! The C parts (aws-lc in rustls's crypto provider) are compiled by Debian's cross GCC of each
//! architecture and linked statically against its glibc (`+crt-static`): the images are
//! `scratch` and carry no libc. `docs/architecture.md` has the measured times and sizes.

use std::path::Path;
use std::process::Command;

use crate::{Result, run};

/// Where a platform's standard library comes from.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Std {
    /// Debian's prebuilt `libstd-rust-web-dev:<deb>`.
    Debian,
    /// Built by cargo from `rust-web-src` (`-Zbuild-std`).
    FromSource,
}

/// One image platform.
#[derive(Debug)]
pub(crate) struct Platform {
    /// The OCI architecture (`linux/<arch>`), also the staging folder and the image tag suffix.
    pub(crate) arch: &'static str,
    /// The Rust target.
    pub(crate) triple: &'static str,
    /// The Debian architecture (`dpkg --add-architecture`).
    deb: &'static str,
    /// The GNU triple of its cross GCC (`<gnu>-gcc`) and C library (`/usr/<gnu>/lib`).
    gnu: &'static str,
    /// qemu-user's name for it: the image tests run a foreign platform's binaries with
    /// `qemu-<qemu>-static`.
    qemu: &'static str,
    pub(crate) std: Std,
}

/// Every platform the images are built for, in manifest order.
pub(crate) const PLATFORMS: [Platform; 4] = [
    Platform {
        arch: "amd64",
        triple: "x86_64-unknown-linux-gnu",
        deb: "amd64",
        gnu: "x86_64-linux-gnu",
        qemu: "x86_64",
        std: Std::Debian,
    },
    Platform {
        arch: "arm64",
        triple: "aarch64-unknown-linux-gnu",
        deb: "arm64",
        gnu: "aarch64-linux-gnu",
        qemu: "aarch64",
        std: Std::Debian,
    },
    Platform {
        arch: "ppc64le",
        triple: "powerpc64le-unknown-linux-gnu",
        deb: "ppc64el",
        gnu: "powerpc64le-linux-gnu",
        qemu: "ppc64le",
        std: Std::Debian,
    },
    Platform {
        arch: "s390x",
        triple: "s390x-unknown-linux-gnu",
        deb: "s390x",
        gnu: "s390x-linux-gnu",
        qemu: "s390x",
        std: Std::FromSource,
    },
];

/// Debian's compiler, its cargo and its sources (not rustup's, which come first on `PATH`).
pub(crate) const RUSTC: &str = "/usr/bin/rustc";
pub(crate) const CARGO: &str = "/usr/bin/cargo";
const STD_SOURCE: &str = "/usr/lib/rustlib/src/rust/library/Cargo.lock";

impl Platform {
    /// `linux/<arch>`.
    pub(crate) fn os_arch(&self) -> String {
        format!("linux/{}", self.arch)
    }

    /// `<gnu>-gcc`: the linker and C compiler for this platform.
    pub(crate) fn gcc(&self) -> String {
        format!("{}-gcc", self.gnu)
    }

    /// `<gnu>-ar`: the archiver the `cc` crate uses for this platform.
    pub(crate) fn ar(&self) -> String {
        format!("{}-ar", self.gnu)
    }

    /// The variable suffix cargo and the `cc` crate use for this target.
    pub(crate) fn env_key(&self) -> String {
        self.triple.replace('-', "_")
    }

    /// Whether this is the build machine's own platform.
    pub(crate) fn is_host(&self) -> bool {
        // `consts::ARCH` says `powerpc64` for both byte orders; only little-endian is ours.
        let arch = match std::env::consts::ARCH {
            "powerpc64" if cfg!(target_endian = "little") => "powerpc64le",
            other => other,
        };
        arch == self.triple.split('-').next().unwrap_or_default()
    }

    /// What must be on the machine to build this platform, as (path, Debian package).
    fn needs(&self) -> Vec<(String, String)> {
        let mut needs = Vec::new();
        let (gcc_pkg, libc) = if self.is_host() {
            ("gcc".to_owned(), format!("/usr/lib/{}/libc.a", self.gnu))
        } else {
            (
                format!("gcc-{}", self.gnu.replace('_', "-")),
                format!("/usr/{}/lib/libc.a", self.gnu),
            )
        };
        needs.push((format!("/usr/bin/{}", self.gcc()), gcc_pkg));
        let libc_pkg = if self.is_host() {
            "libc6-dev".to_owned()
        } else {
            format!("libc6-dev-{}-cross", self.deb)
        };
        needs.push((libc, libc_pkg));
        match self.std {
            Std::Debian => needs.push((
                format!("/usr/lib/rustlib/{}/lib", self.triple),
                format!("libstd-rust-web-dev:{}", self.deb),
            )),
            Std::FromSource => needs.push((STD_SOURCE.to_owned(), "rust-web-src".to_owned())),
        }
        needs
    }

    /// What running this platform's binaries here needs: nothing on the host's platform,
    /// qemu-user otherwise.
    fn runner(&self) -> Option<(String, String)> {
        (!self.is_host()).then(|| {
            (
                format!("/usr/bin/qemu-{}-static", self.qemu),
                "qemu-user-static".to_owned(),
            )
        })
    }
}

/// The platforms named in `list` (`all`, or comma-separated `linux/<arch>` or `<arch>`).
pub(crate) fn parse(list: &str) -> Result<Vec<&'static Platform>> {
    if list == "all" {
        return Ok(PLATFORMS.iter().collect());
    }
    let mut chosen: Vec<&'static Platform> = Vec::new();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let arch = name.strip_prefix("linux/").unwrap_or(name);
        let platform = PLATFORMS.iter().find(|p| p.arch == arch).ok_or_else(|| {
            let known: Vec<&str> = PLATFORMS.iter().map(|p| p.arch).collect();
            format!(
                "--platforms: unknown platform {name:?} (known: all, {})",
                known.join(", ")
            )
        })?;
        if !chosen.iter().any(|p| p.arch == platform.arch) {
            chosen.push(platform);
        }
    }
    if chosen.is_empty() {
        return Err("--platforms: no platform named".into());
    }
    // Manifest order, whatever the order asked.
    chosen.sort_by_key(|p| PLATFORMS.iter().position(|q| q.arch == p.arch));
    Ok(chosen)
}

/// The platform the build machine runs natively, if it is one of ours.
pub(crate) fn host() -> Result<&'static Platform> {
    PLATFORMS.iter().find(|p| p.is_host()).ok_or_else(|| {
        format!(
            "this machine ({}) is none of the image platforms: the image tests run the host's \
             binaries natively",
            std::env::consts::ARCH
        )
    })
}

/// What `cargo xtask test` builds and tests on every run: the host's platform (the other image
/// tests and the soak run it natively), s390x (big-endian: where a byte-order bug in our code or
/// a dependency would show) and arm64 (the most deployed of the others). `cargo xtask image`
/// builds all four.
pub(crate) fn every_run() -> Result<Vec<&'static Platform>> {
    let host = host()?;
    Ok(PLATFORMS
        .iter()
        .filter(|p| p.arch == host.arch || p.arch == "s390x" || p.arch == "arm64")
        .collect())
}

/// Whether Debian's package `pkg` is installed.
fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f", "${Status}", pkg])
        .output()
        .is_ok_and(|o| o.status.success() && o.stdout.ends_with(b"install ok installed"))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// What building `platforms` needs and is not installed, as (what, Debian package).
fn missing(platforms: &[&Platform]) -> Vec<(String, String)> {
    let mut missing: Vec<(String, String)> = Vec::new();
    // By package, not by path: Debian's older `rustc` (1.63) installs /usr/bin/rustc too.
    for pkg in ["rustc-web", "cargo-web"] {
        if !installed(pkg) {
            missing.push((format!("package {pkg}"), pkg.to_owned()));
        }
    }
    for p in platforms {
        missing.extend(
            p.needs()
                .into_iter()
                .filter(|(path, _)| !Path::new(path).exists()),
        );
    }
    missing
}

/// Installs what building `platforms` needs and is missing (as root, from Debian's archive:
/// the test command sets up what it needs on a fresh machine), else says what to install.
pub(crate) fn ensure_toolchain(platforms: &[&Platform]) -> Result {
    let debian_std: Vec<&str> = platforms
        .iter()
        .filter(|p| p.std == Std::Debian && !p.is_host())
        .map(|p| p.deb)
        .collect();
    apt_install(
        "the images need Debian's Rust compiler and cross toolchains",
        &debian_std,
        || missing(platforms),
    )?;
    check_compiler()
}

/// Installs qemu-user when a platform of `platforms` is not the host's: the image tests run
/// those binaries with it.
pub(crate) fn ensure_runners(platforms: &[&Platform]) -> Result {
    apt_install(
        "the image tests run other platforms' binaries under qemu-user",
        &[],
        || {
            platforms
                .iter()
                .filter_map(|p| p.runner())
                .filter(|(path, _)| !Path::new(path).exists())
                .collect()
        },
    )
}

/// Installs the Debian packages `missing` names (adding the foreign architectures `archs`
/// first), when there are any, as root where `apt-get` exists; otherwise fails saying why
/// (`what`) and the commands that would. `missing` is asked again afterwards.
pub(crate) fn apt_install(
    what: &str,
    archs: &[&str],
    missing: impl Fn() -> Vec<(String, String)>,
) -> Result {
    let needed = missing();
    let Some((first, _)) = needed.first() else {
        return Ok(());
    };
    let mut packages: Vec<&str> = needed.iter().map(|(_, pkg)| pkg.as_str()).collect();
    packages.sort_unstable();
    packages.dedup();
    let add_archs = if archs.is_empty() {
        String::new()
    } else {
        format!(
            "{}; apt-get update; ",
            archs
                .iter()
                .map(|a| format!("dpkg --add-architecture {a}"))
                .collect::<Vec<_>>()
                .join("; ")
        )
    };
    let how = format!("{what}: {add_archs}apt-get install {}", packages.join(" "));
    if !(Path::new("/usr/bin/apt-get").exists() && is_root()) {
        return Err(format!("{first} is missing; {how}"));
    }
    for arch in archs {
        run(
            &format!("dpkg --add-architecture {arch}"),
            Command::new("dpkg").args(["--add-architecture", arch]),
        )?;
    }
    run(
        "apt-get update",
        Command::new("apt-get").args(["update", "-q"]),
    )?;
    run(
        &format!("apt-get install {}", packages.join(" ")),
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&packages)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .map_err(|e| format!("{e}; {how}"))?;
    match missing().first() {
        Some((first, pkg)) => Err(format!(
            "{first} still missing after installing {pkg}; {how}"
        )),
        None => Ok(()),
    }
}

/// Prints which compiler builds the images, so a build log says what made them (cargo refuses
/// a compiler older than the workspace's `rust-version` itself).
fn check_compiler() -> Result {
    let out = Command::new(RUSTC)
        .arg("-V")
        .output()
        .map_err(|e| format!("{RUSTC}: {e}"))?;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    println!("==> image compiler: {version} ({RUSTC}, Debian's rustc-web)");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arches(list: &str) -> Result<Vec<&'static str>> {
        parse(list).map(|ps| ps.iter().map(|p| p.arch).collect())
    }

    #[test]
    fn platforms_are_parsed_in_manifest_order_once_each() {
        assert_eq!(
            arches("all"),
            Ok(vec!["amd64", "arm64", "ppc64le", "s390x"])
        );
        assert_eq!(
            arches("s390x, linux/arm64,amd64,arm64"),
            Ok(vec!["amd64", "arm64", "s390x"])
        );
        let unknown = arches("amd64,riscv64").unwrap_err();
        assert!(
            unknown.contains("--platforms") && unknown.contains("riscv64"),
            "{unknown}"
        );
        assert!(arches(" , ").unwrap_err().contains("no platform"));
    }

    #[test]
    fn the_host_is_one_platform_and_every_run_builds_it_with_arm64_and_s390x() {
        let host = host().unwrap();
        assert_eq!(PLATFORMS.iter().filter(|p| p.is_host()).count(), 1);
        let every: Vec<&str> = every_run().unwrap().iter().map(|p| p.arch).collect();
        assert!(every.contains(&host.arch) && every.contains(&"arm64") && every.contains(&"s390x"));
        // Only the host's platform runs without qemu; only s390x builds its own std.
        assert!(host.runner().is_none());
        assert!(
            PLATFORMS
                .iter()
                .filter(|p| !p.is_host())
                .all(|p| p.runner().is_some())
        );
        let from_source: Vec<&str> = PLATFORMS
            .iter()
            .filter(|p| p.std == Std::FromSource)
            .map(|p| p.arch)
            .collect();
        assert_eq!(from_source, ["s390x"]);
    }
}

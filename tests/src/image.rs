//! The images `cargo xtask image` builds with podman: their names, the platforms expected, the
//! binaries copied out of them, and how to run a binary of another platform (qemu-user).

use std::path::{Path, PathBuf};
use std::process::Command;

/// What to do when an image is missing.
pub const HOW: &str = "install podman (apt-get install podman) and build the images with \
                       `cargo xtask image` (`cargo xtask test` does both)";

/// The per-sidecar Containerfile targets and the binary each carries.
pub const SIDECARS: [(&str, &str); 4] = [
    ("jwt-auth-helper", "jwt-auth-helper"),
    ("iam-broker", "iam-broker"),
    ("sds-bridge", "sds-bridge"),
    ("dev-agent", "spiffe-dev-agent"),
];

/// Every Containerfile target: the sidecars and `all`.
pub const TARGETS: [&str; 5] = [
    "jwt-auth-helper",
    "iam-broker",
    "sds-bridge",
    "dev-agent",
    "all",
];

/// `podman args…`: its stdout; panics with stderr and [`HOW`] on failure.
pub fn podman(args: &[&str]) -> String {
    let out = Command::new("podman")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("podman not runnable ({e}): {HOW}"));
    assert!(
        out.status.success(),
        "podman {args:?} failed: {}\n{HOW}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The manifest list of a target: `localhost/spiffe-sidecars/<target>:dev`.
pub fn tag(target: &str) -> String {
    format!("localhost/spiffe-sidecars/{target}:dev")
}

/// One platform's image of a target: `localhost/spiffe-sidecars/<target>:dev-<arch>`.
pub fn platform_tag(target: &str, arch: &str) -> String {
    format!("{}-{arch}", tag(target))
}

/// Copies `path` out of `image` into `dir`.
pub fn extract(image: &str, path: &str, dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let id = podman(&["create", image]);
    let out = dir.join(Path::new(path).file_name().unwrap());
    podman(&["cp", &format!("{id}:{path}"), out.to_str().unwrap()]);
    podman(&["rm", &id]);
    out
}

// === Platforms ===

/// An image platform as the tests see it.
#[derive(Debug)]
pub struct Platform {
    /// OCI architecture.
    pub arch: &'static str,
    /// ELF `e_machine`.
    pub machine: u16,
    /// ELF data encoding is MSB first.
    pub big_endian: bool,
    /// qemu-user's name for it (`qemu-<name>-static`).
    qemu: &'static str,
}

/// Every platform the images are built for.
pub const PLATFORMS: [Platform; 4] = [
    Platform {
        arch: "amd64",
        machine: 62, // EM_X86_64
        big_endian: false,
        qemu: "x86_64",
    },
    Platform {
        arch: "arm64",
        machine: 183, // EM_AARCH64
        big_endian: false,
        qemu: "aarch64",
    },
    Platform {
        arch: "ppc64le",
        machine: 21, // EM_PPC64
        big_endian: false,
        qemu: "ppc64le",
    },
    Platform {
        arch: "s390x",
        machine: 22, // EM_S390
        big_endian: true,
        qemu: "s390x",
    },
];

/// The platforms the images were built for: `SUITE_IMAGE_PLATFORMS` (comma-separated, set by
/// `cargo xtask test`, which builds a subset), else all of them (`cargo xtask image`).
pub fn expected() -> Vec<&'static Platform> {
    match std::env::var("SUITE_IMAGE_PLATFORMS") {
        Ok(list) => list
            .split(',')
            .map(|a| {
                PLATFORMS
                    .iter()
                    .find(|p| p.arch == a.trim())
                    .unwrap_or_else(|| panic!("SUITE_IMAGE_PLATFORMS: unknown platform {a:?}"))
            })
            .collect(),
        Err(_) => PLATFORMS.iter().collect(),
    }
}

/// The platform this machine runs natively.
pub fn host() -> &'static Platform {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        // `powerpc64` is either byte order; only little-endian is one of ours.
        "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
        other => other,
    };
    PLATFORMS
        .iter()
        .find(|p| p.arch == arch)
        .unwrap_or_else(|| panic!("no image platform for this machine ({arch})"))
}

impl Platform {
    /// Whether this machine runs it natively.
    pub fn is_host(&self) -> bool {
        self.arch == host().arch
    }

    /// A command running `exe` of this platform: directly on the host's own platform, through
    /// qemu-user otherwise (the machine need not register binfmt handlers).
    pub fn command(&self, exe: &Path) -> Command {
        if self.is_host() {
            return Command::new(exe);
        }
        let mut c = Command::new(self.qemu());
        c.arg(exe);
        c
    }

    /// A program path that runs `exe` as [`Platform::command`] does, for helpers that take a
    /// path: `exe` itself, or a script in `dir` that execs qemu-user on it (signals reach qemu,
    /// which passes them to the emulated process).
    pub fn launcher(&self, exe: &Path, dir: &Path) -> PathBuf {
        if self.is_host() {
            return exe.to_path_buf();
        }
        use std::os::unix::fs::PermissionsExt as _;
        let name = exe.file_name().unwrap().to_string_lossy();
        let script = dir.join(format!("{name}-{}", self.arch));
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nexec '{}' '{}' \"$@\"\n",
                self.qemu().display(),
                exe.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        script
    }

    fn qemu(&self) -> PathBuf {
        let qemu = PathBuf::from(format!("/usr/bin/qemu-{}-static", self.qemu));
        assert!(
            qemu.exists(),
            "{} is missing: the {} binaries run under qemu-user here \
             (apt-get install qemu-user-static; `cargo xtask test` installs it)",
            qemu.display(),
            self.arch
        );
        qemu
    }
}

// === ELF ===

/// What the tests check in an executable's ELF header.
#[derive(Debug, PartialEq, Eq)]
pub struct Elf {
    /// `e_machine`.
    pub machine: u16,
    /// MSB-first data encoding.
    pub big_endian: bool,
    /// A `PT_INTERP` program header: dynamically linked, cannot run on `scratch`.
    pub interpreter: bool,
}

/// Reads the header of a 64-bit ELF file, in its own byte order.
pub fn elf(bytes: &[u8]) -> Elf {
    assert_eq!(&bytes[..4], b"\x7fELF", "not an ELF file");
    assert_eq!(bytes[4], 2, "not a 64-bit ELF file");
    let big_endian = match bytes[5] {
        1 => false,
        2 => true,
        other => panic!("unknown ELF data encoding {other}"),
    };
    let u16_at = |o: usize| {
        let b = [bytes[o], bytes[o + 1]];
        usize::from(if big_endian {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        })
    };
    let u32_at = |o: usize| {
        let b: [u8; 4] = bytes[o..o + 4].try_into().unwrap();
        if big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        }
    };
    let phoff = {
        let b: [u8; 8] = bytes[0x20..0x28].try_into().unwrap();
        usize::try_from(if big_endian {
            u64::from_be_bytes(b)
        } else {
            u64::from_le_bytes(b)
        })
        .unwrap()
    };
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    Elf {
        machine: u16::try_from(u16_at(0x12)).unwrap(),
        big_endian,
        interpreter: (0..phnum).any(|i| u32_at(phoff + i * phentsize) == 3), // PT_INTERP
    }
}

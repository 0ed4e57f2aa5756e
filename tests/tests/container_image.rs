#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The images `cargo xtask image` builds with podman (run by `cargo xtask test`): one per
//! sidecar, `scratch` + a static binary, non-root. Containers cannot run in this sandbox, so
//! the binaries are copied out (`podman create` + `podman cp`) and run here: `--help`, then a
//! short real run of the dev agent, sds-bridge and jwt-auth-helper together.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use suite_tests::{Proc, free_port, http, wait_until};

const HOW: &str = "install podman (apt-get install podman) and build the images with \
                   `cargo xtask image` (`cargo xtask test` does both)";

fn podman(args: &[&str]) -> String {
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

fn tag(target: &str) -> String {
    format!("localhost/spiffe-sidecars/{target}:dev")
}

/// Copies `path` out of `image` into `dir`.
fn extract(image: &str, path: &str, dir: &Path) -> PathBuf {
    let id = podman(&["create", image]);
    let out = dir.join(Path::new(path).file_name().unwrap());
    podman(&["cp", &format!("{id}:{path}"), out.to_str().unwrap()]);
    podman(&["rm", &id]);
    out
}

/// Whether an ELF64 little-endian file asks for a program interpreter (dynamic linking).
fn has_interpreter(elf: &[u8]) -> bool {
    assert_eq!(&elf[..4], b"\x7fELF", "not an ELF file");
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    (0..phnum).any(|i| {
        let at = phoff + i * phentsize;
        u32::from_le_bytes(elf[at..at + 4].try_into().unwrap()) == 3 // PT_INTERP
    })
}

#[test]
fn each_image_is_a_static_non_root_binary_on_scratch_that_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let images = [
        ("jwt-auth-helper", "jwt-auth-helper"),
        ("iam-broker", "iam-broker"),
        ("sds-bridge", "sds-bridge"),
        ("dev-agent", "spiffe-dev-agent"),
    ];
    for (target, binary) in images {
        let image = tag(target);
        let config = podman(&[
            "image",
            "inspect",
            "--format",
            "{{.Config.User}}|{{json .Config.Entrypoint}}|{{.Size}}|{{len .RootFS.Layers}}",
            &image,
        ]);
        let parts: Vec<&str> = config.split('|').collect();
        assert_eq!(parts[0], "65532:65532", "{image} runs as non-root");
        assert_eq!(
            parts[1],
            format!("[\"/usr/local/bin/{binary}\"]"),
            "{image}'s entrypoint is the sidecar, so the template needs no command"
        );
        let size: u64 = parts[2].parse().unwrap();
        eprintln!("{image}: {:.1} MiB", size as f64 / 1048576.0);
        assert!(size < 30 * 1024 * 1024, "{image} is {size} bytes");

        let dir = tmp.path().join(target);
        std::fs::create_dir_all(&dir).unwrap();
        let exe = extract(&image, &format!("/usr/local/bin/{binary}"), &dir);
        assert!(
            !has_interpreter(&std::fs::read(&exe).unwrap()),
            "{binary} is dynamically linked (PT_INTERP): it cannot run on scratch"
        );
        let help = Command::new(&exe).arg("--help").output().unwrap();
        assert!(help.status.success(), "{binary} --help failed");
        let text = String::from_utf8_lossy(&help.stdout);
        assert!(text.contains("Usage"), "{binary} --help: {text}");
    }

    // A short real run of the extracted binaries: agent -> sds-bridge and jwt-auth-helper.
    let dir = tmp.path();
    let agent_socket = dir.join("agent.sock");
    let agent_api = format!("unix://{}", agent_socket.display());
    let mut agent = Command::new(dir.join("dev-agent/spiffe-dev-agent"));
    agent.args(["--socket", &agent_api, "--trust-domain", "example.org"]);
    let mut agent = Proc::spawn("agent", agent, dir);
    wait_until("agent socket", Duration::from_secs(10), || {
        agent.assert_running();
        agent_socket.exists()
    });
    let bridge_admin = format!("127.0.0.1:{}", free_port());
    let mut bridge = Command::new(dir.join("sds-bridge/sds-bridge"));
    bridge
        .args(["--socket", &agent_api, "--admin-listen", &bridge_admin])
        .arg("--listen")
        .arg(format!("unix://{}", dir.join("sds.sock").display()));
    let mut bridge = Proc::spawn("sds-bridge", bridge, dir);
    let helper_admin = format!("127.0.0.1:{}", free_port());
    let mut helper = Command::new(dir.join("jwt-auth-helper/jwt-auth-helper"));
    helper.args([
        "--socket",
        &agent_api,
        "--audience",
        "backend",
        "--listen",
        &format!("127.0.0.1:{}", free_port()),
        "--admin-listen",
        &helper_admin,
    ]);
    let mut helper = Proc::spawn("jwt-auth-helper", helper, dir);
    for (name, admin, proc) in [
        ("sds-bridge", &bridge_admin, &mut bridge),
        ("jwt-auth-helper", &helper_admin, &mut helper),
    ] {
        let admin = admin.parse().unwrap();
        wait_until(&format!("{name} ready"), Duration::from_secs(10), || {
            proc.assert_running();
            http(admin, "GET", "/readyz").is_some_and(|(s, _)| s == 200)
        });
    }
}

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The images `cargo xtask image` builds with podman (run by `cargo xtask test`): one per
//! sidecar, `scratch` + a static binary, non-root. Containers cannot run in this sandbox, so
//! the binaries are copied out (`podman create` + `podman cp`) and run here: `--help`, then a
//! short real run of the dev agent, sds-bridge and jwt-auth-helper together; and the
//! iam-broker image's whole filesystem (`podman export`) run with `chroot` against an HTTPS
//! STS stand-in, trusting its CA the ways an operator adds one.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use suite_tests::aws::{Broker, Moto, StsProxy, TestCa};
use suite_tests::{Proc, bin, free_port, http, wait_until};

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

// === TLS from the image ===

/// The image's filesystem, exported (`podman create` + `podman export`) and unpacked.
fn export_rootfs(image: &str, into: &Path) {
    let id = podman(&["create", image]);
    let tar = into.with_extension("tar");
    podman(&["export", "-o", tar.to_str().unwrap(), &id]);
    podman(&["rm", &id]);
    std::fs::create_dir_all(into).unwrap();
    let out = Command::new("tar")
        .arg("-xf")
        .arg(&tar)
        .arg("-C")
        .arg(into)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tar: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The image's broker run from the exported filesystem, as the image's user (`chroot`
/// needs root: the image tests run as root, like podman).
fn broker_in(
    rootfs: &Path,
    log_dir: &Path,
    agent: &str,
    sts: &str,
    env: &[(&str, &str)],
) -> Broker {
    let mut chroot = Command::new("chroot");
    chroot
        .arg("--userspec=65532:65532")
        .arg(rootfs)
        .arg("/usr/local/bin/iam-broker");
    Broker::start_with(chroot, log_dir, agent, sts, &[], env)
}

/// Credentials served (200 with an AccessKeyId) within `timeout`, or the last error body.
fn creds_within(broker: &mut Broker, timeout: Duration) -> Result<(), String> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        broker.proc.assert_running();
        let r = broker.creds();
        if r.status == 200 {
            assert!(r.json()["AccessKeyId"].is_string(), "{}", r.body);
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(r.body);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

const OPENSHIFT_BUNDLE: &str = "etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem";

#[test]
fn iam_broker_image_gets_credentials_from_https_sts_with_the_ca_an_operator_adds() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let rootfs = dir.join("rootfs");
    export_rootfs(&tag("iam-broker"), &rootfs);

    // The image carries Debian's Mozilla roots where OpenShift mounts its injected bundle.
    let bundle_path = rootfs.join(OPENSHIFT_BUNDLE);
    let image_bundle = std::fs::read_to_string(&bundle_path)
        .unwrap_or_else(|e| panic!("{OPENSHIFT_BUNDLE} missing from the image ({e})"));
    let roots = image_bundle.matches("BEGIN CERTIFICATE").count();
    eprintln!("image CA bundle: {roots} certificates");
    assert!(roots > 100, "{roots} certificates in the image's CA bundle");

    let agent_port = free_port();
    let agent_api = format!("tcp://127.0.0.1:{agent_port}");
    let mut agent = Command::new(bin("spiffe-dev-agent"));
    agent.args(["--socket", &agent_api, "--trust-domain", "example.org"]);
    let mut agent = Proc::spawn("agent", agent, dir);
    wait_until("agent listening", Duration::from_secs(10), || {
        agent.assert_running();
        std::net::TcpStream::connect(("127.0.0.1", agent_port)).is_ok()
    });
    let moto = Moto::start(dir);
    let ca = TestCa::new();
    let sts = StsProxy::start_tls(moto.addr, &ca);
    assert!(sts.url().starts_with("https://127.0.0.1:"));
    let warning = "no native root CA certificates found";

    // Nothing added: the image trusts public roots only, and the STS stand-in's local CA is
    // not one of them. The handshake fails and the error says why.
    {
        let mut broker = broker_in(&rootfs, dir, &agent_api, &sts.url(), &[]);
        let body = creds_within(&mut broker, Duration::from_secs(5))
            .expect_err("credentials without trusting the STS CA");
        eprintln!("no CA added: {body}");
        assert!(body.contains("certificate"), "unclear TLS error: {body}");
        // The server counts the client's alert a moment after the client gave up.
        wait_until(
            "the STS stand-in to see the refused handshake",
            Duration::from_secs(10),
            || sts.tls_failures() > 0,
        );
        assert_eq!(sts.assume_calls(), 0);
        let log = broker.proc.log();
        assert!(log.contains(OPENSHIFT_BUNDLE), "{log}");
        assert!(!log.contains(warning), "{log}");
    }

    // (i) OpenShift: the injected bundle (system roots + the proxy's CA) is mounted over the
    // image's bundle; it replaces it.
    std::fs::write(&bundle_path, format!("{image_bundle}{}", ca.ca_pem)).unwrap();
    {
        let mut broker = broker_in(&rootfs, dir, &agent_api, &sts.url(), &[]);
        creds_within(&mut broker, Duration::from_secs(20))
            .expect("credentials via OpenShift's bundle");
        let log = broker.proc.log();
        assert!(
            log.contains(OPENSHIFT_BUNDLE) && log.contains(&format!("certificates={}", roots + 1)),
            "{log}"
        );
        assert!(!log.contains(warning), "{log}");
    }
    std::fs::write(&bundle_path, &image_bundle).unwrap();

    // (ii) SSL_CERT_FILE: an operator-provided file, the image's bundle untouched.
    let corp = rootfs.join("etc/corp-ca.pem");
    std::fs::write(&corp, &ca.ca_pem).unwrap();
    {
        let calls = sts.assume_calls();
        let mut broker = broker_in(
            &rootfs,
            dir,
            &agent_api,
            &sts.url(),
            &[("SSL_CERT_FILE", "/etc/corp-ca.pem")],
        );
        creds_within(&mut broker, Duration::from_secs(20)).expect("credentials via SSL_CERT_FILE");
        assert!(sts.assume_calls() > calls);
        let log = broker.proc.log();
        assert!(
            log.contains("/etc/corp-ca.pem") && log.contains("certificates=1"),
            "{log}"
        );
        assert!(!log.contains(warning), "{log}");
    }
    drop(agent);
}

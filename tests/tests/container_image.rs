#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The iam-broker image's whole filesystem (`podman export` of the host platform's image) run
//! with `chroot` against an HTTPS STS stand-in: the CA bundle the image carries, and trusting
//! a local CA the ways an operator adds one. Containers cannot run in this sandbox; the
//! images' binaries of every platform are run in `image_platforms.rs`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use suite_tests::aws::{Broker, Moto, StsProxy, TestCa};
use suite_tests::image::{host, platform_tag, podman};
use suite_tests::{Proc, bin, free_port, wait_until};

/// The host platform's image of `target` (the tests here run its binaries natively).
fn tag(target: &str) -> String {
    platform_tag(target, host().arch)
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

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers outside #[test] fns
//! `iam-broker vault` against real peers: the dev agent for JWT-SVIDs and OIDC discovery, a
//! strict fake of Vault's JWT auth, token and KV v2 APIs over HTTPS (there is no Vault server to
//! install here), and the real `hvac` client from PyPI as the consumer, with only `VAULT_ADDR`
//! pointing at the broker's proxy and no token of its own.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::Duration;

use suite_tests::aws::{Broker, concurrent_gets_with};
use suite_tests::azure::start_broker;
use suite_tests::envoy::request;
use suite_tests::vault::{FakeVault, ROLE, hvac, hvac_loop};
use suite_tests::{BadSettings, DevAgent, agent_with_oidc, assert_exit_2, wait_until};

const SPIFFE_ID: &str = "spiffe://example.org/ns/default/sa/web";
const SECRET: &str = "/v1/secret/data/app/config";

struct Setup {
    _agent: DevAgent,
    vault: FakeVault,
    broker: Broker,
}

impl Setup {
    fn addr(&self) -> String {
        format!("http://{}", self.broker.listen)
    }
}

/// Held from picking ports until the processes have bound them (tests run in parallel).
static PORTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The agent (with OIDC discovery), the fake Vault trusting it for [`SPIFFE_ID`] (in
/// `namespace`), the broker in front, trusting Vault's CA through `--ca-file`; `before` runs on
/// the fake before the broker starts (its first login begins at once).
fn setup(
    dir: &Path,
    namespace: Option<&str>,
    broker_args: &[&str],
    before: impl FnOnce(&FakeVault),
) -> Setup {
    let _ports = PORTS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let (agent, issuer) = agent_with_oidc(dir, SPIFFE_ID);
    let vault = FakeVault::start(&issuer, SPIFFE_ID, namespace);
    vault.put_secret("app/config", serde_json::json!({"password": "s3cr3t"}));
    before(&vault);
    let ca = vault.write_ca(dir);
    let url = vault.url();
    let mut args = vec![
        "vault",
        "--vault-addr",
        &url,
        "--role",
        ROLE,
        "--ca-file",
        ca.to_str().unwrap(),
    ];
    if let Some(ns) = namespace {
        args.extend(["--namespace", ns]);
    }
    args.extend(broker_args);
    let broker = start_broker(dir, &agent.endpoint, &args, &[]);
    Setup {
        _agent: agent,
        vault,
        broker,
    }
}

fn broker_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("iam-broker.log")).unwrap()
}

fn read(dir: &Path, s: &Setup, env: &[(&str, &str)]) -> Result<serde_json::Value, String> {
    hvac(dir, &s.addr(), env, &["read", "app/config"])
}

fn assert_no_token_logged(dir: &Path, vault: &FakeVault) {
    let log = broker_log(dir);
    assert!(!vault.issued().is_empty());
    for token in vault.issued() {
        assert!(!log.contains(&token), "a Vault token in the log:\n{log}");
    }
    assert!(!log.contains("eyJ"), "a JWT in the log:\n{log}");
}

#[test]
fn hvac_reads_and_writes_kv_through_the_proxy_with_no_token_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("vault-token");
    let mut s = setup(
        dir.path(),
        None,
        &["--token-sink", sink.to_str().unwrap()],
        |_| {},
    );
    s.broker.wait_ready(Duration::from_secs(30));

    let got = read(dir.path(), &s, &[])
        .unwrap_or_else(|e| panic!("hvac failed: {e}\n{}", broker_log(dir.path())));
    assert_eq!(got, serde_json::json!({"password": "s3cr3t"}));
    // Writes (POST with a body) go through too, and are read back.
    let wrote = hvac(
        dir.path(),
        &s.addr(),
        &[],
        &["write", "app/config", "password=n3w"],
    )
    .unwrap_or_else(|e| panic!("hvac write failed: {e}"));
    assert_eq!(wrote["version"], 2);
    assert_eq!(
        read(dir.path(), &s, &[]).unwrap(),
        serde_json::json!({"password": "n3w"})
    );
    // Every KV request carried the broker's one token.
    let issued = s.vault.issued();
    assert_eq!(issued.len(), 1, "one login");
    assert!(
        s.vault
            .kv_tokens()
            .iter()
            .all(|t| t.as_deref() == Some(issued[0].as_str())),
        "{:?}",
        s.vault.kv_tokens()
    );

    // The sink holds the same token, for tools that read ~/.vault-token; only its owner reads it.
    assert_eq!(std::fs::read_to_string(&sink).unwrap(), issued[0]);
    let mode = std::fs::metadata(&sink).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // `true`: a client's own token is forwarded untouched, and Vault refuses a wrong one.
    let err = read(dir.path(), &s, &[("VAULT_TOKEN", "hvs.wrong-client-token")]).unwrap_err();
    assert!(
        err.contains("Forbidden") && err.contains("permission denied"),
        "{err}"
    );
    assert_eq!(
        s.vault.kv_tokens().last().unwrap().as_deref(),
        Some("hvs.wrong-client-token")
    );

    // The guards: X-Vault-Request is required (412), the Host must be loopback (403), whatever
    // the method.
    let r = request(s.broker.listen, "GET", SECRET, &[]).unwrap();
    assert_eq!(r.status, 412, "{}", r.body);
    assert!(r.body.contains("X-Vault-Request"), "{}", r.body);
    for method in ["GET", "POST", "DELETE"] {
        let r = request(
            s.broker.listen,
            method,
            SECRET,
            &[("Host", "vault.evil.example"), ("X-Vault-Request", "true")],
        )
        .unwrap();
        assert_eq!(r.status, 403, "{method}: {}", r.body);
    }
    assert_eq!(
        s.vault.kv_tokens().len(),
        4,
        "no refused request reached Vault"
    );
    assert!(
        s.broker
            .metric("iam_broker_token_exchanges_total{provider=\"vault\",outcome=\"success\"}")
            == 1
    );

    // Shutdown revokes the token, best effort.
    assert!(
        s.broker.proc.terminate(Duration::from_secs(10)),
        "clean exit"
    );
    assert_eq!(s.vault.count(|c| &c.revocations), 1);
    assert_eq!(s.vault.live_tokens(), 0);
    assert!(!sink.exists(), "the revoked token's sink is removed");
    assert_no_token_logged(dir.path(), &s.vault);
}

#[test]
fn force_replaces_a_wrong_client_token_and_the_namespace_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = setup(
        dir.path(),
        Some("team-a"),
        &["--use-auto-auth-token", "force"],
        |_| {},
    );
    s.broker.wait_ready(Duration::from_secs(30));
    let got = read(dir.path(), &s, &[("VAULT_TOKEN", "hvs.wrong-client-token")])
        .unwrap_or_else(|e| panic!("hvac failed: {e}\n{}", broker_log(dir.path())));
    assert_eq!(got["password"], "s3cr3t");
    let issued = s.vault.issued();
    assert_eq!(
        s.vault.kv_tokens(),
        vec![Some(issued[0].clone())],
        "the client's token was replaced"
    );
    assert_eq!(s.vault.count(|c| &c.denied), 0);
}

#[test]
fn a_short_ttl_is_renewed_then_relogged_with_zero_failed_reads() {
    let dir = tempfile::tempdir().unwrap();
    // 4 s tokens, at most 10 s: renewed at about 2 s left, capped near 10 s, then a new login.
    let s = setup(dir.path(), None, &[], |v| {
        v.set_ttls(Duration::from_secs(4), Duration::from_secs(10));
    });
    let stop = dir.path().join("stop");
    let child = hvac_loop(dir.path(), &s.addr(), "app/config", &stop);
    wait_until(
        "two renewals, a capped one and a second login",
        Duration::from_secs(90),
        || {
            s.vault.count(|c| &c.renewals) >= 2
                && s.vault.count(|c| &c.capped_renewals) >= 1
                && s.vault.count(|c| &c.logins) >= 2
                && s.vault.count(|c| &c.kv_reads) >= 20
        },
    );
    std::fs::write(&stop, "").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        result["failures"],
        serde_json::json!([]),
        "{result}\n{}",
        broker_log(dir.path())
    );
    assert!(result["reads"].as_u64().unwrap() >= 20, "{result}");
    assert!(s.vault.issued().len() >= 2);
    assert_no_token_logged(dir.path(), &s.vault);
}

#[test]
fn a_token_revoked_in_vault_is_replaced_by_a_new_login_at_the_next_renewal() {
    let dir = tempfile::tempdir().unwrap();
    let s = setup(dir.path(), None, &[], |v| {
        v.set_ttls(Duration::from_secs(4), Duration::from_secs(3600));
    });
    wait_until("the first login", Duration::from_secs(30), || {
        s.vault.count(|c| &c.logins) == 1
    });
    s.vault.revoke_all();
    let renewals = s.vault.count(|c| &c.renewals);
    // At half-life the renewal is refused (403): the broker logs in again, no restart.
    wait_until("a second login", Duration::from_secs(30), || {
        s.vault.count(|c| &c.logins) >= 2
    });
    assert_eq!(
        s.vault.count(|c| &c.renewals),
        renewals,
        "the revoked token was not renewed"
    );
    assert_eq!(read(dir.path(), &s, &[]).unwrap()["password"], "s3cr3t");
    assert!(
        s.broker.metric(
            "iam_broker_token_exchanges_total{provider=\"vault\",outcome=\"renew_refused\"}"
        ) >= 1
    );
}

#[test]
fn only_origin_form_targets_under_the_proxied_paths_reach_vault_without_forwarding_headers() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = setup(
        dir.path(),
        None,
        &["--proxy-paths", "/v1/secret/data/app,/v1/sys/health"],
        |_| {},
    );
    s.broker.wait_ready(Duration::from_secs(30));
    let vr = ("X-Vault-Request", "true");
    let before = s.vault.count(|c| &c.requests);

    // Asterisk-form and absolute-form targets: appended to Vault's address they named another
    // port (the scheme's default), and the broker's token went there.
    let absolute = format!("http://127.0.0.1:{}{SECRET}", s.vault.addr.port());
    for target in ["*", absolute.as_str()] {
        for method in ["OPTIONS", "GET"] {
            let r = request(s.broker.listen, method, target, &[vr]).unwrap();
            assert_eq!(r.status, 400, "{method} {target}: {}", r.body);
        }
    }
    // Outside the proxied paths (whole segments), or paths Vault would only redirect.
    for (path, status) in [
        ("/v1/secret/data/apps", 403),
        ("/v1/auth/token/lookup-self", 403),
        ("/v1/secret/data/app/../../../sys/seal", 400),
        ("/v1/secret/data/app/%2e%2e/x", 400),
        ("/v1/secret/data/app//config", 400),
    ] {
        let r = request(s.broker.listen, "GET", path, &[vr]).unwrap();
        assert_eq!(r.status, status, "{path}: {}", r.body);
    }
    assert_eq!(
        s.vault.count(|c| &c.requests),
        before,
        "a refused request reached Vault"
    );

    // A client cannot choose what Vault believes about its address.
    let r = request(
        s.broker.listen,
        "GET",
        SECRET,
        &[
            vr,
            ("X-Forwarded-For", "10.1.2.3"),
            ("X-Forwarded-Host", "vault.example.com"),
            ("X-Forwarded-Proto", "https"),
            ("Forwarded", "for=10.1.2.3"),
            ("X-Real-IP", "10.1.2.3"),
        ],
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(s.vault.count(|c| &c.requests), before + 1);
    assert_eq!(s.vault.forwarding_headers_seen(), Vec::<String>::new());
}

#[test]
fn revoke_self_through_the_proxy_is_refused_and_a_token_revoked_in_vault_is_replaced_at_once() {
    let dir = tempfile::tempdir().unwrap();
    // Hour-long tokens: no renewal comes to the rescue during the test.
    let mut s = setup(dir.path(), None, &[], |_| {});
    s.broker.wait_ready(Duration::from_secs(30));
    let vr = ("X-Vault-Request", "true");
    let token = s.vault.issued()[0].clone();

    // The broker's token is every client's: no client revokes it, whether the broker adds it
    // or the client sends it itself (read from the token sink), however the path is spelled.
    for (path, own) in [
        ("/v1/auth/token/revoke-self", None),
        ("/v1/auth/token/revoke%2Dself", None),
        ("/v1/auth/token/revoke-self", Some(token.as_str())),
    ] {
        let mut headers = vec![vr];
        if let Some(t) = own {
            headers.push(("X-Vault-Token", t));
        }
        let r = request(s.broker.listen, "POST", path, &headers).unwrap();
        assert_eq!(r.status, 403, "{path}: {}", r.body);
        assert!(r.body.contains("revoke_refused"), "{}", r.body);
    }
    assert_eq!(s.vault.count(|c| &c.revocations), 0);
    assert_eq!(read(dir.path(), &s, &[]).unwrap()["password"], "s3cr3t");

    // A policy's refusal is the client's answer, not a reason to log in again.
    let r = request(s.broker.listen, "GET", "/v1/sys/mounts", &[vr]).unwrap();
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(!r.body.contains("invalid token"), "{}", r.body);
    assert_eq!(s.vault.count(|c| &c.logins), 1);
    assert_eq!(s.broker.readyz(), 200);

    // Revoked behind the broker's back (an operator's `vault token revoke`): the request that
    // meets it gets Vault's answer, the broker drops the token and logs in again at once.
    s.vault.revoke_all();
    let refused = std::time::Instant::now();
    let r = request(s.broker.listen, "GET", SECRET, &[vr]).unwrap();
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("invalid token"), "{}", r.body);
    wait_until("a new login", Duration::from_secs(10), || {
        s.vault.count(|c| &c.logins) == 2
    });
    eprintln!(
        "new login {:?} after the refused request",
        refused.elapsed()
    );
    assert_eq!(read(dir.path(), &s, &[]).unwrap()["password"], "s3cr3t");
    assert_eq!(s.broker.metric("iam_broker_cache_invalidations_total"), 1);
    assert_eq!(s.vault.count(|c| &c.logins), 2, "one new login");
    assert_no_token_logged(dir.path(), &s.vault);
}

#[test]
fn vault_down_or_sealed_after_login_fails_clearly_and_recovers_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = setup(dir.path(), None, &[], |_| {});
    s.broker.wait_ready(Duration::from_secs(30));
    read(dir.path(), &s, &[]).unwrap();

    s.vault.down();
    let err = read(dir.path(), &s, &[]).unwrap_err();
    assert!(
        err.contains("BadGateway") && err.contains("iam-broker") && err.contains("did not answer"),
        "{err}"
    );
    s.vault.up();
    assert_eq!(read(dir.path(), &s, &[]).unwrap()["password"], "s3cr3t");

    s.vault.set_sealed(true);
    let err = read(dir.path(), &s, &[]).unwrap_err();
    assert!(err.contains("VaultDown") && err.contains("sealed"), "{err}");
    s.vault.set_sealed(false);
    assert_eq!(read(dir.path(), &s, &[]).unwrap()["password"], "s3cr3t");
    assert_eq!(s.vault.count(|c| &c.logins), 1, "the token outlived both");
    s.broker.proc.assert_running();
}

#[test]
fn a_login_refused_by_vault_is_reported_with_vaults_reason() {
    let dir = tempfile::tempdir().unwrap();
    // The broker's SVID is for .../sa/web; this Vault binds the role to another subject.
    let s = {
        let _ports = PORTS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (agent, issuer) = agent_with_oidc(dir.path(), SPIFFE_ID);
        let vault = FakeVault::start(&issuer, "spiffe://example.org/ns/default/sa/other", None);
        let ca = vault.write_ca(dir.path());
        let url = vault.url();
        let broker = start_broker(
            dir.path(),
            &agent.endpoint,
            &["vault", "--role", ROLE, "--ca-file", ca.to_str().unwrap()],
            &[("VAULT_ADDR", &url)],
        );
        Setup {
            _agent: agent,
            vault,
            broker,
        }
    };
    wait_until("a refused login", Duration::from_secs(30), || {
        s.vault.count(|c| &c.refused_logins) >= 1
    });
    let err = read(dir.path(), &s, &[]).unwrap_err();
    assert!(
        err.contains("BadGateway") && err.contains("sub claim does not match bound subject"),
        "{err}"
    );
    assert_eq!(s.vault.count(|c| &c.kv_reads), 0);
}

#[test]
fn five_hundred_concurrent_cold_requests_make_one_login() {
    let dir = tempfile::tempdir().unwrap();
    let s = setup(dir.path(), None, &[], |v| {
        v.set_login_delay(Duration::from_millis(1500));
    });
    let answers =
        concurrent_gets_with(s.broker.listen, SECRET, &[("X-Vault-Request", "true")], 500);
    let failed: Vec<_> = answers
        .iter()
        .filter(|(status, _)| *status != 200)
        .collect();
    assert!(
        failed.is_empty(),
        "{} failed, e.g. {:?}",
        failed.len(),
        failed.first()
    );
    assert_eq!(s.vault.count(|c| &c.logins), 1);
    assert_eq!(s.vault.count(|c| &c.kv_reads), 500);
}

#[test]
fn bad_vault_settings_exit_2_naming_the_setting() {
    let cases: &[BadSettings<'_>] = &[
        (
            &["vault", "--role", ROLE],
            &[],
            "VAULT_ADDR: Vault's address is required",
        ),
        (
            &["vault"],
            &[("VAULT_ADDR", "https://vault.example.com")],
            "SPIFFE_IAM_BROKER_ROLE: a JWT auth role is required",
        ),
        (
            &[
                "vault",
                "--role",
                ROLE,
                "--vault-addr",
                "http://vault.example.com:8200",
            ],
            &[],
            "--vault-addr: plain http is allowed only to a loopback address",
        ),
        (
            &["vault", "--role", ROLE],
            &[("VAULT_ADDR", "http://127.0.0.1:8200")],
            "VAULT_ADDR: this is the broker's own listen address",
        ),
        (
            &["vault", "--role", ROLE, "--use-auto-auth-token", "false"],
            &[("VAULT_ADDR", "https://vault.example.com")],
            "--use-auto-auth-token: expected true",
        ),
        (
            &["vault", "--role", ROLE],
            &[
                ("VAULT_ADDR", "https://vault.example.com"),
                ("VAULT_CACERT", "/nonexistent/ca.pem"),
            ],
            "VAULT_CACERT: cannot read",
        ),
    ];
    assert_exit_2("iam-broker", cases);
}

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers outside #[test] fns
//! iam-broker against real peers: the dev agent for JWT-SVIDs, moto as STS (behind a counting,
//! faultable proxy), and the real AWS CLI as the consumer, through `credential_process = curl
//! -sf …` and through `AWS_CONTAINER_CREDENTIALS_FULL_URI`.

use std::process::Command;
use std::time::Duration;

use suite_tests::aws::{
    AUDIENCE, Broker, Fault, Moto, ROLE_ARN, StsProxy, caller_identity, concurrent_gets,
    credential_process_profile, require_curl,
};
use suite_tests::sidecars::jwt_claims;
use suite_tests::{BadSettings, DevAgent, assert_exit_2, bin, free_port, output, wait_until};

const SPIFFE_ID: &str = "spiffe://example.org/ns/default/sa/web";
/// `RoleSessionName` derived from [`SPIFFE_ID`].
const SESSION_NAME: &str = "example.org@ns@default@sa@web";
const ASSUMED_ROLE_ARN: &str =
    "arn:aws:sts::123456789012:assumed-role/demo/example.org@ns@default@sa@web";

fn agent(dir: &std::path::Path) -> DevAgent {
    DevAgent::start(dir, &["--spiffe-id", SPIFFE_ID, "--jwt-ttl", "5m"])
}

fn access_key(r: &suite_tests::envoy::Response) -> String {
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["AccessKeyId"].as_str().unwrap().to_owned()
}

/// The error document: status, `error` code and message.
fn error_of(r: &suite_tests::envoy::Response) -> (u16, String, String) {
    assert_eq!(
        r.header("content-type"),
        Some("application/json"),
        "{}",
        r.body
    );
    assert!(!r.body.trim().contains('\n'), "one line: {}", r.body);
    let v = r.json();
    (
        r.status,
        v["error"].as_str().unwrap().to_owned(),
        v["message"].as_str().unwrap().to_owned(),
    )
}

#[test]
fn aws_cli_credential_process_gets_the_assumed_role_named_after_the_spiffe_id() {
    require_curl();
    let dir = tempfile::tempdir().unwrap();
    let agent = agent(dir.path());
    let moto = Moto::start(dir.path());
    let proxy = StsProxy::start(moto.addr);
    let mut broker = Broker::start(dir.path(), &agent.endpoint, &proxy.url(), &[], &[]);
    broker.wait_ready(Duration::from_secs(30));

    // The document itself.
    let r = broker.creds();
    assert_eq!(r.status, 200, "{}", r.body);
    let doc = r.json();
    assert_eq!(doc["Version"], 1);
    for field in [
        "AccessKeyId",
        "SecretAccessKey",
        "SessionToken",
        "Expiration",
    ] {
        assert!(
            doc[field].as_str().is_some_and(|v| !v.is_empty()),
            "{field}: {doc}"
        );
    }
    let exp = doc["Expiration"].as_str().unwrap();
    assert!(
        exp.ends_with('Z') && exp.len() == 20,
        "RFC 3339 UTC, whole seconds: {exp}"
    );
    assert_eq!(r.header("cache-control"), Some("no-store"));

    // The real CLI through credential_process.
    let profile = credential_process_profile(
        dir.path(),
        &format!(
            "curl -sf http://127.0.0.1:{}/v1/creds",
            broker.listen.port()
        ),
    );
    let arn = caller_identity(
        dir.path(),
        &moto,
        &[("AWS_CONFIG_FILE", profile.to_str().unwrap())],
    )
    .unwrap();
    assert_eq!(arn, ASSUMED_ROLE_ARN);

    // What reached STS: one unsigned call with the JWT-SVID for our audience.
    let calls = proxy.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    let call = &calls[0];
    assert!(!call.signed, "AssumeRoleWithWebIdentity must be unsigned");
    assert_eq!(call.role_arn, ROLE_ARN);
    assert_eq!(call.session_name, SESSION_NAME);
    assert_eq!(call.duration, "3600");
    let claims = jwt_claims(&call.token);
    assert_eq!(claims["sub"], SPIFFE_ID);
    assert_eq!(claims["aud"], serde_json::json!([AUDIENCE]));
    assert_eq!(
        broker.metric("iam_broker_sts_calls_total{outcome=\"success\"}"),
        1
    );

    // Secrets never reach the log.
    let log = broker.proc.log();
    assert!(log.contains("assumed role with web identity"), "{log}");
    for secret in [
        doc["SecretAccessKey"].as_str().unwrap(),
        doc["SessionToken"].as_str().unwrap(),
        call.token.as_str(),
    ] {
        assert!(!log.contains(secret), "a secret is in the broker log");
    }
}

#[test]
fn aws_cli_container_credentials_with_token_and_token_file() {
    let dir = tempfile::tempdir().unwrap();
    let agent = agent(dir.path());
    let moto = Moto::start(dir.path());
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "file-token-1\n").unwrap();
    let mut with_value = Broker::start(
        dir.path(),
        &agent.endpoint,
        &moto.url(),
        &[],
        &[("AWS_CONTAINER_AUTHORIZATION_TOKEN", "s3cret-token")],
    );
    let mut with_file = Broker::start(
        dir.path(),
        &agent.endpoint,
        &moto.url(),
        &[],
        &[(
            "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
            token_file.to_str().unwrap(),
        )],
    );
    with_value.wait_ready(Duration::from_secs(30));
    with_file.wait_ready(Duration::from_secs(30));

    let uri = |b: &Broker| format!("http://127.0.0.1:{}/v1/container-creds", b.listen.port());
    let arn = caller_identity(
        dir.path(),
        &moto,
        &[
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", &uri(&with_value)),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN", "s3cret-token"),
        ],
    )
    .unwrap();
    assert_eq!(arn, ASSUMED_ROLE_ARN);

    // The SDK's own _FILE variable, and a rotated file picked up without a restart.
    let client_file = dir.path().join("client-token");
    std::fs::write(&client_file, "file-token-1").unwrap();
    let file_env = [
        ("AWS_CONTAINER_CREDENTIALS_FULL_URI", uri(&with_file)),
        (
            "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
            client_file.to_str().unwrap().to_owned(),
        ),
    ];
    let env: Vec<(&str, &str)> = file_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(
        caller_identity(dir.path(), &moto, &env).unwrap(),
        ASSUMED_ROLE_ARN
    );
    std::fs::write(&token_file, "file-token-2").unwrap();
    std::fs::write(&client_file, "file-token-2").unwrap();
    std::thread::sleep(Duration::from_millis(1100)); // the broker re-reads at most once a second
    assert_eq!(
        caller_identity(dir.path(), &moto, &env).unwrap(),
        ASSUMED_ROLE_ARN
    );

    // A deleted token file revokes the token (it used to stay valid): 503 with a JSON
    // reason until the file holds a token again.
    std::fs::remove_file(&token_file).unwrap();
    let with_token = |t: &str| with_file.get("/v1/container-creds", &[("Authorization", t)]);
    wait_until("the deleted token refused", Duration::from_secs(5), || {
        with_token("file-token-2").status == 503
    });
    let refused = with_token("file-token-2");
    assert!(
        refused.body.contains("\"token_unavailable\""),
        "{}",
        refused.body
    );
    std::fs::write(&token_file, "file-token-3").unwrap();
    wait_until("the new token accepted", Duration::from_secs(5), || {
        with_token("file-token-3").status == 200
    });
    assert_eq!(with_token("file-token-2").status, 403);

    // The document, and a wrong token.
    let r = with_value.get("/v1/container-creds", &[("Authorization", "s3cret-token")]);
    let doc = r.json();
    for field in ["AccessKeyId", "SecretAccessKey", "Token", "Expiration"] {
        assert!(doc[field].as_str().is_some(), "{field}: {doc}");
    }
    let wrong = caller_identity(
        dir.path(),
        &moto,
        &[
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", &uri(&with_value)),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN", "guess"),
        ],
    )
    .unwrap_err();
    assert!(wrong.to_lowercase().contains("credential"), "{wrong}");
}

#[test]
fn a_thousand_concurrent_cold_requests_share_one_sts_call() {
    let dir = tempfile::tempdir().unwrap();
    let agent = agent(dir.path());
    let moto = Moto::start(dir.path());
    let proxy = StsProxy::start(moto.addr);
    // STS answers after 3 s, so every request below arrives while the broker is cold.
    proxy.set_delay(Duration::from_secs(3));
    let broker = Broker::start(dir.path(), &agent.endpoint, &proxy.url(), &[], &[]);
    assert_eq!(broker.readyz(), 503, "cold");

    let answers = concurrent_gets(broker.listen, "/v1/creds", 1000);
    let keys: std::collections::BTreeSet<String> = answers
        .iter()
        .map(|(status, body)| {
            assert_eq!(*status, 200, "{body}");
            let v: serde_json::Value = serde_json::from_str(body).unwrap();
            v["AccessKeyId"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(keys.len(), 1, "every caller got the same credentials");
    assert_eq!(
        proxy.assume_calls(),
        1,
        "one AssumeRoleWithWebIdentity for 1,000 callers"
    );
    assert!(
        broker.metric("iam_broker_cache_waits_total") > 0,
        "some requests waited for the call in flight"
    );
    assert_eq!(broker.readyz(), 200);
}

#[test]
fn sts_outage_after_the_first_fetch_serves_cached_credentials_then_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let agent = agent(dir.path());
    let moto = Moto::start(dir.path());
    let proxy = StsProxy::start(moto.addr);
    // 40-second credentials: refresh from ~18 s left… 20 s in, hand out freely down to 16 s
    // left, then only while refreshing fails (down to 4 s left).
    proxy.set_lifetime(40);
    let mut broker = Broker::start(dir.path(), &agent.endpoint, &proxy.url(), &[], &[]);
    broker.wait_ready(Duration::from_secs(30));
    let first = access_key(&broker.creds());
    proxy.set_fault(Fault::Status(503));

    // The background refresh fails…
    wait_until("a failed refresh", Duration::from_secs(40), || {
        proxy.assume_calls() >= 2
    });
    // …and past the serve margin the cached credentials are still handed out.
    wait_until("stale serving", Duration::from_secs(30), || {
        assert_eq!(access_key(&broker.creds()), first);
        broker.metric("iam_broker_cache_stale_served_total") > 0
    });
    assert!(broker.metric("iam_broker_sts_calls_total{outcome=\"retryable_error\"}") >= 1);
    assert_eq!(broker.readyz(), 200, "still holding valid credentials");

    // STS back: new credentials without a restart.
    proxy.set_fault(Fault::Forward);
    wait_until("recovery", Duration::from_secs(30), || {
        access_key(&broker.creds()) != first
    });
}

#[test]
fn sts_down_from_start_answers_503_json_the_cli_fails_readably_then_recovers() {
    require_curl();
    let dir = tempfile::tempdir().unwrap();
    let agent = agent(dir.path());
    let moto = Moto::start(dir.path());
    // Nothing listens on the STS port yet: connection refused.
    let sts_port = free_port();
    let broker = Broker::start(
        dir.path(),
        &agent.endpoint,
        &format!("http://127.0.0.1:{sts_port}"),
        &[],
        &[],
    );
    wait_until("a failed STS attempt", Duration::from_secs(20), || {
        broker.metric("iam_broker_refresh_errors_total") > 0
    });
    let (status, code, message) = error_of(&broker.creds());
    assert_eq!(
        (status, code.as_str()),
        (503, "provider_unavailable"),
        "{message}"
    );
    assert!(
        message.contains("STS AssumeRoleWithWebIdentity"),
        "{message}"
    );
    assert_eq!(broker.readyz(), 503);

    // The CLI fails, saying where credentials came from (and, with -S, why).
    for (flags, expect) in [("-sf", "custom-process"), ("-sSf", "503")] {
        let profile = credential_process_profile(
            dir.path(),
            &format!(
                "curl {flags} http://127.0.0.1:{}/v1/creds",
                broker.listen.port()
            ),
        );
        let err = caller_identity(
            dir.path(),
            &moto,
            &[("AWS_CONFIG_FILE", profile.to_str().unwrap())],
        )
        .unwrap_err();
        assert!(err.contains(expect), "curl {flags}: {err}");
    }

    // STS comes up answering 503: still a clean 503 naming the HTTP status.
    let proxy = StsProxy::start_on(sts_port, moto.addr);
    proxy.set_fault(Fault::Status(503));
    wait_until(
        "an attempt against the 503ing STS",
        Duration::from_secs(30),
        || proxy.assume_calls() > 0,
    );
    let (status, _, message) = error_of(&broker.creds());
    assert_eq!(status, 503);
    assert!(message.contains("HTTP 503"), "{message}");

    // STS healthy: recovered on the retry schedule, without a restart.
    proxy.set_fault(Fault::Forward);
    wait_until("recovery", Duration::from_secs(30), || {
        broker.creds().status == 200
    });
    assert_eq!(broker.readyz(), 200);
}

#[test]
fn agent_down_at_start_answers_503_until_it_comes_up() {
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start(dir.path());
    let (_, endpoint) = DevAgent::planned(dir.path());
    let broker = Broker::start(dir.path(), &endpoint, &moto.url(), &[], &[]);
    let (status, code, message) = error_of(&broker.creds());
    assert_eq!(
        (status, code.as_str()),
        (503, "identity_unavailable"),
        "{message}"
    );
    assert!(message.contains("JWT-SVID"), "{message}");
    assert_eq!(broker.readyz(), 503);

    let _agent = agent(dir.path());
    wait_until(
        "credentials after the agent started",
        Duration::from_secs(30),
        || broker.creds().status == 200,
    );
    assert_eq!(broker.readyz(), 200);
}

#[test]
fn bad_requests_get_4xx_and_leave_the_cache_alone() {
    let dir = tempfile::tempdir().unwrap();
    let agent = agent(dir.path());
    let moto = Moto::start(dir.path());
    let proxy = StsProxy::start(moto.addr);
    let mut broker = Broker::start(
        dir.path(),
        &agent.endpoint,
        &proxy.url(),
        &[],
        &[("AWS_CONTAINER_AUTHORIZATION_TOKEN", "right")],
    );
    broker.wait_ready(Duration::from_secs(30));
    let before = access_key(&broker.creds());

    let big = "x".repeat(20 * 1024);
    let port = broker.listen.port();
    let evil = format!("evil.example:{port}");
    let rebound = format!("127.0.0.1.nip.io:{port}");
    type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, u16, &'a str);
    let cases: Vec<Case<'_>> = vec![
        ("POST", "/v1/creds", vec![], 405, "method_not_allowed"),
        (
            "PUT",
            "/v1/container-creds",
            vec![("Authorization", "right")],
            405,
            "method_not_allowed",
        ),
        ("DELETE", "/v1/creds", vec![], 405, "method_not_allowed"),
        (
            "GET",
            "/v1/creds",
            vec![("Host", &evil)],
            403,
            "forbidden_host",
        ),
        (
            "GET",
            "/v1/creds",
            vec![("Host", &rebound)],
            403,
            "forbidden_host",
        ),
        (
            "GET",
            "/v1/container-creds",
            vec![("Host", "attacker.test"), ("Authorization", "right")],
            403,
            "forbidden_host",
        ),
        // Only the first Host used to be read, so a loopback one vouched for a foreign one.
        (
            "GET",
            "/v1/creds",
            vec![("Host", "localhost"), ("Host", "evil.example")],
            400,
            "bad_request",
        ),
        ("GET", "/v1/container-creds", vec![], 401, "unauthorized"),
        (
            "GET",
            "/v1/container-creds",
            vec![("Authorization", "wrong")],
            403,
            "forbidden",
        ),
        (
            "GET",
            "/v1/container-creds",
            vec![("Authorization", "righ")],
            403,
            "forbidden",
        ),
        ("GET", "/v2/creds", vec![], 404, "not_found"),
    ];
    for (method, path, headers, want, code) in &cases {
        let r = suite_tests::envoy::request(broker.listen, method, path, headers).unwrap();
        let (status, got, _) = error_of(&r);
        assert_eq!(
            (status, got.as_str()),
            (*want, *code),
            "{method} {path} {headers:?}"
        );
    }
    // The admin listener refuses DNS names other than localhost (a rebinding page must not
    // read /readyz or /metrics) and keeps serving probes and scrapes by IP.
    let admin = |headers: &[(&str, &str)]| {
        suite_tests::envoy::request(broker.admin, "GET", "/metrics", headers)
            .unwrap()
            .status
    };
    let admin_port = broker.admin.port();
    assert_eq!(
        admin(&[("Host", &format!("evil.example:{admin_port}"))]),
        403
    );
    assert_eq!(admin(&[("Host", &format!("10.244.0.9:{admin_port}"))]), 200);
    assert_eq!(admin(&[("Host", &format!("localhost:{admin_port}"))]), 200);

    // Heads over 16 KiB are refused by the HTTP layer itself.
    let r = suite_tests::envoy::request(broker.listen, "GET", "/v1/creds", &[("X-Big", &big)]);
    assert_eq!(r.map(|r| r.status), Some(431));
    let many: Vec<(String, String)> = (0..100).map(|i| (format!("X-H{i}"), "v".into())).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let r = suite_tests::envoy::request(broker.listen, "GET", "/v1/creds", &many);
    assert_eq!(r.map(|r| r.status), Some(431));

    // Nothing disturbed: same credentials, no extra STS call, and the right token still works.
    assert_eq!(access_key(&broker.creds()), before);
    assert_eq!(
        access_key(&broker.get("/v1/container-creds", &[("Authorization", "right")])),
        before
    );
    assert_eq!(proxy.assume_calls(), 1);
    broker.proc.assert_running();
    assert!(
        broker.metric("iam_broker_requests_total{route=\"creds\",result=\"foreign_host\"}") >= 2
    );
}

#[test]
fn access_denied_is_not_retried_and_answers_502() {
    let dir = tempfile::tempdir().unwrap();
    let agent = agent(dir.path());
    let moto = Moto::start(dir.path());
    let proxy = StsProxy::start(moto.addr);
    proxy.set_fault(Fault::StsError(403, "AccessDenied"));
    let broker = Broker::start(dir.path(), &agent.endpoint, &proxy.url(), &[], &[]);
    wait_until("the first attempt", Duration::from_secs(20), || {
        proxy.assume_calls() == 1
    });
    for _ in 0..20 {
        let (status, code, message) = error_of(&broker.creds());
        assert_eq!((status, code.as_str()), (502, "provider_rejected"));
        assert!(message.contains("AccessDenied"), "{message}");
    }
    // Requests within the cool-down (30 s) cause no new call.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(proxy.assume_calls(), 1, "AccessDenied is not retried");
    assert_eq!(
        broker.metric("iam_broker_sts_calls_total{outcome=\"rejected\"}"),
        1
    );
}

#[test]
fn invalid_identity_token_is_retried_once_with_a_fresh_token() {
    let dir = tempfile::tempdir().unwrap();
    let agent = agent(dir.path());
    let moto = Moto::start(dir.path());
    let proxy = StsProxy::start(moto.addr);
    proxy.fault_next(1, Fault::StsError(400, "InvalidIdentityToken"));
    let mut broker = Broker::start(dir.path(), &agent.endpoint, &proxy.url(), &[], &[]);
    broker.wait_ready(Duration::from_secs(30));
    assert_eq!(broker.creds().status, 200);
    let calls = proxy.calls();
    assert_eq!(calls.len(), 2, "refused once, retried once");
    assert_ne!(
        calls[0].token, calls[1].token,
        "the retry used a freshly fetched JWT-SVID"
    );
    assert_eq!(jwt_claims(&calls[1].token)["sub"], SPIFFE_ID);
    assert!(
        agent.jwt_fetches() >= 2,
        "the fresh token came from the agent"
    );
    assert_eq!(
        broker.metric("iam_broker_sts_calls_total{outcome=\"invalid_token\"}"),
        1
    );
}

#[test]
fn readyz_flips_once_credentials_are_held_and_sigterm_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let agent = agent(dir.path());
    let moto = Moto::start(dir.path());
    let proxy = StsProxy::start(moto.addr);
    proxy.set_delay(Duration::from_secs(3));
    let mut broker = Broker::start(dir.path(), &agent.endpoint, &proxy.url(), &[], &[]);
    assert_eq!(broker.readyz(), 503);
    broker.wait_ready(Duration::from_secs(30));
    let expiry = broker.metric("iam_broker_credentials_expiry_seconds");
    assert!((3500..=3600).contains(&expiry), "{expiry}");

    let listen = broker.listen;
    assert!(
        broker.proc.terminate(Duration::from_secs(10)),
        "exit 0 on SIGTERM"
    );
    assert!(std::net::TcpStream::connect(listen).is_err(), "port closed");
    let log = std::fs::read_to_string(dir.path().join("iam-broker.log")).unwrap();
    assert!(log.contains("stopped; in-flight requests drained"), "{log}");
}

#[test]
fn bad_configuration_exits_2_naming_the_setting() {
    // Before, a non-loopback --listen only logged a warning and served credentials.
    let anywhere = format!("0.0.0.0:{}", free_port());
    let cases: &[BadSettings<'_>] = &[
        (
            &["aws", "--audience", "a", "--role-arn", ROLE_ARN],
            &[("SPIFFE_IAM_BROKER_LISTEN", &anywhere)],
            "SPIFFE_IAM_BROKER_LISTEN: not a loopback address",
        ),
        (
            &["aws"],
            &[("SPIFFE_IAM_BROKER_ROLE_ARN", ROLE_ARN)],
            "SPIFFE_IAM_BROKER_AUDIENCE: an audience is required",
        ),
        (
            &["aws", "--audience", "a"],
            &[("SPIFFE_IAM_BROKER_ROLE_ARN", "arn:aws:iam::1:role/x")],
            "SPIFFE_IAM_BROKER_ROLE_ARN: the account must be 12 digits",
        ),
        (
            &[
                "aws",
                "--audience",
                "a",
                "--role-arn",
                ROLE_ARN,
                "--duration",
                "60",
            ],
            &[],
            "--duration: must be whole seconds from 900",
        ),
    ];
    assert_exit_2("iam-broker", cases);
}

// === STS over TLS (the image's own files: container_image.rs) ===

#[test]
fn sts_over_https_trusts_the_operators_ca_and_fails_clearly_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let agent = agent(dir.path());
    let moto = Moto::start(dir.path());
    let ca = suite_tests::aws::TestCa::new();
    let sts = StsProxy::start_tls(moto.addr, &ca);
    let ca_file = dir.path().join("corp-ca.pem");
    std::fs::write(&ca_file, &ca.ca_pem).unwrap();

    let ssl_cert_file = ca_file.to_str().unwrap();
    let mut broker = Broker::start(
        dir.path(),
        &agent.endpoint,
        &sts.url(),
        &[],
        &[("SSL_CERT_FILE", ssl_cert_file)],
    );
    broker.wait_ready(Duration::from_secs(30));
    access_key(&broker.creds());
    assert_eq!(sts.tls_failures(), 0);
    let log = broker.proc.log();
    assert!(
        log.contains("loaded CA certificates") && log.contains("certificates=1"),
        "{log}"
    );

    // Without the CA (the host's public roots only): the handshake fails, the error says so.
    let other = Broker::start(dir.path(), &agent.endpoint, &sts.url(), &[], &[]);
    let r = other.creds();
    let (status, _, message) = error_of(&r);
    assert_eq!(status, 503, "{}", r.body);
    assert!(message.contains("certificate"), "{message}");
    // The server sees the client's alert a moment after the client gave up: wait for it.
    wait_until(
        "the STS stand-in to see the refused handshake",
        Duration::from_secs(10),
        || sts.tls_failures() > 0,
    );

    // A configured but unreadable SSL_CERT_FILE stops the broker, naming the variable.
    let mut bad = Command::new(bin("iam-broker"));
    bad.env_clear()
        .env("SSL_CERT_FILE", dir.path().join("missing.pem"))
        .args([
            "aws",
            "--socket",
            &agent.endpoint,
            "--sts-endpoint",
            &sts.url(),
        ])
        .args(["--audience", AUDIENCE, "--role-arn", ROLE_ARN])
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--admin-listen", "off"]);
    let out = output(bad);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr) + String::from_utf8_lossy(&out.stdout);
    assert!(stderr.contains("SSL_CERT_FILE="), "{stderr}");
}

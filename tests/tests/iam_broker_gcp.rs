#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers outside #[test] fns
//! `iam-broker gcp` against real peers: the dev agent for JWT-SVIDs and OIDC discovery, a
//! strict fake of Google STS and IAM Credentials over HTTPS (there is no local Google STS), and
//! the real `google-auth` client from PyPI as the consumer, with only `GCE_METADATA_HOST` and
//! `GCE_METADATA_IP` pointing at the broker.

use std::path::Path;
use std::time::Duration;

use suite_tests::aws::{Broker, concurrent_gets_with};
use suite_tests::gcp::{
    FakeGoogle, GoogleFault, PROJECT_ID, PROVIDER, SERVICE_ACCOUNT, google_auth, start_with_google,
};
use suite_tests::{
    AgentStart, BadSettings, DevAgent, agent_with_oidc, assert_exit_2, lock_ports, wait_until,
};

const SPIFFE_ID: &str = "spiffe://example.org/ns/default/sa/web";
const CLOUD_PLATFORM: &str = "https://www.googleapis.com/auth/cloud-platform";
const STORAGE_RO: &str = "https://www.googleapis.com/auth/devstorage.read_only";
const BIGQUERY: &str = "https://www.googleapis.com/auth/bigquery";
const TOKEN: &str = "/computeMetadata/v1/instance/service-accounts/default/token";

struct Setup {
    agent: DevAgent,
    google: FakeGoogle,
    broker: Broker,
}

/// The agent (with OIDC discovery), the fake Google trusting it, the broker in front; `before`
/// runs on the fake before the broker starts (its first exchange begins at once).
fn setup(dir: &Path, broker_args: &[&str], before: impl FnOnce(&FakeGoogle)) -> Setup {
    setup_with(dir, broker_args, before, AgentStart::First)
}

/// [`setup`], with the agent down when the broker starts if `agent` says so.
fn setup_with(
    dir: &Path,
    broker_args: &[&str],
    before: impl FnOnce(&FakeGoogle),
    agent: AgentStart,
) -> Setup {
    let _ports = lock_ports();
    let (mut agent_proc, issuer) = agent_with_oidc(dir, SPIFFE_ID);
    if agent == AgentStart::Late {
        agent_proc.proc.kill();
    }
    let (google, broker) =
        start_with_google(dir, &agent_proc.endpoint, &issuer, broker_args, &[], before);
    Setup {
        agent: agent_proc,
        google,
        broker,
    }
}

fn mds(broker: &Broker, path: &str) -> suite_tests::envoy::Response {
    broker.get(path, &[("Metadata-Flavor", "Google")])
}

fn access_token(r: &suite_tests::envoy::Response) -> String {
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("metadata-flavor"), Some("Google"));
    r.json()["access_token"].as_str().unwrap().to_owned()
}

fn broker_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("iam-broker.log")).unwrap()
}

fn sts_calls(google: &FakeGoogle, scope: &str) -> usize {
    google
        .calls_by()
        .get(&("sts".to_owned(), scope.to_owned()))
        .copied()
        .unwrap_or(0)
}

#[test]
fn google_auth_default_gets_a_federated_token_from_the_metadata_server() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = setup(dir.path(), &[], |_| {});
    s.broker.wait_ready(Duration::from_secs(30));
    let got = google_auth(dir.path(), &s.broker, &[])
        .unwrap_or_else(|e| panic!("google-auth failed: {e}\n{}", broker_log(dir.path())));
    assert_eq!(
        got["type"],
        "google.auth.compute_engine.credentials.Credentials"
    );
    assert_eq!(got["project"], PROJECT_ID);
    assert_eq!(got["email"], "default");
    let token = got["token"].as_str().unwrap();
    assert!(
        token.starts_with("ya29.fake-sts-"),
        "the federated token: {token}"
    );
    assert!(s.google.issued().iter().any(|t| t == token));
    assert_eq!(
        sts_calls(&s.google, CLOUD_PLATFORM),
        1,
        "served from the cache"
    );

    // The SSRF guard: no Metadata-Flavor, or a proxied request: 403, flavoured.
    let r = s.broker.get(TOKEN, &[]);
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.header("metadata-flavor"), Some("Google"));
    assert!(r.body.contains("Metadata-Flavor"), "{}", r.body);
    let r = s.broker.get(
        TOKEN,
        &[
            ("Metadata-Flavor", "Google"),
            ("X-Forwarded-For", "1.2.3.4"),
        ],
    );
    assert_eq!(r.status, 403, "{}", r.body);
    // The ping, and what is not emulated: 404, never 5xx.
    let r = mds(&s.broker, "/");
    assert_eq!(
        (r.status, r.header("metadata-flavor")),
        (200, Some("Google"))
    );
    for path in [
        "/computeMetadata/v1/universe/universe-domain",
        "/computeMetadata/v1/instance/zone",
        "/computeMetadata/v1/instance/service-accounts/default/identity?audience=x",
        "/computeMetadata/v1/instance/service-accounts/other@x.iam.gserviceaccount.com/token",
    ] {
        let r = mds(&s.broker, path);
        assert_eq!(r.status, 404, "{path}: {}", r.body);
        assert_eq!(r.header("metadata-flavor"), Some("Google"));
    }
    let r = mds(&s.broker, "/computeMetadata/v1/project/numeric-project-id");
    assert_eq!(r.body, "123456789012");
    let v = mds(
        &s.broker,
        "/computeMetadata/v1/instance/service-accounts/default/?recursive=true",
    )
    .json();
    assert_eq!(v["scopes"], serde_json::json!([CLOUD_PLATFORM]));

    let log = broker_log(dir.path());
    for token in s.google.issued() {
        assert!(!log.contains(&token), "access token in the log");
    }
    assert!(!log.contains("eyJ"), "a JWT in the log:\n{log}");
}

#[test]
fn google_auth_with_impersonation_gets_the_service_accounts_token() {
    let dir = tempfile::tempdir().unwrap();
    let scopes = format!("{CLOUD_PLATFORM},{STORAGE_RO}");
    let s = setup(
        dir.path(),
        &["--service-account", SERVICE_ACCOUNT, "--scopes", &scopes],
        |_| {},
    );
    let got = google_auth(dir.path(), &s.broker, &[STORAGE_RO])
        .unwrap_or_else(|e| panic!("google-auth failed: {e}\n{}", broker_log(dir.path())));
    assert_eq!(got["email"], SERVICE_ACCOUNT);
    let token = got["token"].as_str().unwrap();
    assert!(
        token.starts_with("ya29.fake-sa-"),
        "the account's token: {token}"
    );
    let by = s.google.calls_by();
    assert_eq!(
        by.get(&("iamcredentials".to_owned(), STORAGE_RO.to_owned())),
        Some(&1),
        "{by:?}"
    );
    // Every STS exchange asked for cloud-platform (needed to impersonate).
    assert!(
        s.google
            .calls()
            .iter()
            .filter(|c| c.api == "sts")
            .all(|c| c.scope == CLOUD_PLATFORM)
    );
    assert!(
        s.broker
            .metric("iam_broker_token_exchanges_total{provider=\"gcp\",outcome=\"success\"}")
            >= 2
    );
}

#[test]
fn a_thousand_concurrent_cold_requests_make_one_exchange_per_scope_set() {
    let dir = tempfile::tempdir().unwrap();
    let scopes = format!("{CLOUD_PLATFORM},{STORAGE_RO},{BIGQUERY}");
    let s = setup(dir.path(), &["--scopes", &scopes], |_| {});
    let headers = [("Metadata-Flavor", "Google")];
    let listen = s.broker.listen;
    let bq = format!("{TOKEN}?scopes={BIGQUERY}");
    let other = std::thread::spawn(move || concurrent_gets_with(listen, &bq, &headers, 500));
    let mut answers = concurrent_gets_with(
        listen,
        &format!("{TOKEN}?scopes={STORAGE_RO}"),
        &headers,
        500,
    );
    answers.extend(other.join().unwrap());
    let tokens: std::collections::BTreeSet<String> = answers
        .iter()
        .map(|(status, body)| {
            assert_eq!(*status, 200, "{body}");
            let v: serde_json::Value = serde_json::from_str(body).unwrap();
            assert!(v["expires_in"].as_u64().unwrap() > 3500);
            v["access_token"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(tokens.len(), 2, "one token per scope set for every caller");
    assert_eq!(sts_calls(&s.google, STORAGE_RO), 1);
    assert_eq!(sts_calls(&s.google, BIGQUERY), 1);
}

#[test]
fn the_configured_scopes_are_a_ceiling_not_only_a_default() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = setup(dir.path(), &["--scopes", STORAGE_RO], |_| {});
    s.broker.wait_ready(Duration::from_secs(30));
    // google-auth asks for the scopes the metadata server lists: served.
    let got = google_auth(dir.path(), &s.broker, &[])
        .unwrap_or_else(|e| panic!("google-auth failed: {e}\n{}", broker_log(dir.path())));
    assert!(
        s.google
            .issued()
            .iter()
            .any(|t| t == got["token"].as_str().unwrap())
    );
    // Anything broader, alone or beside the granted scope, is refused before Google is asked.
    let calls = s.google.calls().len();
    for asked in [
        CLOUD_PLATFORM.to_owned(),
        format!("{STORAGE_RO},{BIGQUERY}"),
    ] {
        let r = mds(&s.broker, &format!("{TOKEN}?scopes={asked}"));
        assert_eq!(r.status, 403, "{asked}: {}", r.body);
        assert_eq!(r.header("metadata-flavor"), Some("Google"));
        assert!(r.body.contains("scope_not_allowed"), "{}", r.body);
    }
    assert_eq!(s.google.calls().len(), calls, "Google was asked");
    access_token(&mds(&s.broker, &format!("{TOKEN}?scopes={STORAGE_RO}")));
}

#[test]
fn google_down_after_the_first_token_serves_it_while_valid_then_recovers() {
    let dir = tempfile::tempdir().unwrap();
    // 40-second tokens: refresh from ~18 s left, stale-only below 16 s, never below 4 s.
    let s = setup(dir.path(), &[], |g| g.set_lifetime(40));
    let first = access_token(&mds(&s.broker, TOKEN));
    s.google.set_fault(GoogleFault::Status(503));
    wait_until("a failed refresh", Duration::from_secs(40), || {
        s.google.calls().iter().any(|c| c.status == 503)
    });
    wait_until("stale serving", Duration::from_secs(30), || {
        assert_eq!(access_token(&mds(&s.broker, TOKEN)), first);
        s.broker.metric("iam_broker_cache_stale_served_total") > 0
    });
    s.google.set_fault(GoogleFault::None);
    wait_until("recovery", Duration::from_secs(30), || {
        access_token(&mds(&s.broker, TOKEN)) != first
    });
}

#[test]
fn invalid_grant_reaches_google_auth_and_sts_is_not_hammered() {
    let dir = tempfile::tempdir().unwrap();
    let s = setup(dir.path(), &[], |g| g.set_fault(GoogleFault::InvalidGrant));
    let err = google_auth(dir.path(), &s.broker, &[]).unwrap_err();
    assert!(
        err.contains("invalid_grant"),
        "google-auth shows STS's error: {err}"
    );
    for _ in 0..20 {
        let r = mds(&s.broker, TOKEN);
        assert_eq!(r.status, 502, "{}", r.body);
        assert!(r.body.contains("invalid_grant"), "{}", r.body);
    }
    assert_eq!(
        s.google.calls().len(),
        1,
        "a rejection is not retried before the cool-down"
    );
}

#[test]
fn readyz_waits_for_the_default_token_when_the_agent_starts_late() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = setup_with(dir.path(), &[], |_| {}, AgentStart::Late);
    assert_eq!(s.broker.readyz(), 503, "no agent, no JWT-SVID: not ready");
    assert!(s.google.calls().is_empty(), "nothing to exchange yet");
    s.agent.restart();
    s.broker.wait_ready(Duration::from_secs(30));
    assert_eq!(
        sts_calls(&s.google, CLOUD_PLATFORM),
        1,
        "the default scopes, fetched"
    );
    access_token(&mds(&s.broker, TOKEN));
}

#[test]
fn bad_gcp_settings_exit_2_naming_the_setting() {
    let cases: &[BadSettings<'_>] = &[
        (
            &["gcp", "--project-id", PROJECT_ID],
            &[],
            "SPIFFE_IAM_BROKER_AUDIENCE: an audience is required",
        ),
        (
            &[
                "gcp",
                "--project-id",
                PROJECT_ID,
                "--audience",
                "sts.googleapis.com",
            ],
            &[],
            "--audience: expected //iam.googleapis.com/projects/NUMBER",
        ),
        (
            &["gcp", "--audience", PROVIDER],
            &[],
            "SPIFFE_IAM_BROKER_PROJECT_ID: a project ID is required",
        ),
        (
            &[
                "gcp",
                "--audience",
                PROVIDER,
                "--project-id",
                PROJECT_ID,
                "--service-account",
                "app",
            ],
            &[],
            "--service-account: expected a service account email",
        ),
        (
            &["gcp", "--audience", PROVIDER, "--project-id", PROJECT_ID],
            &[("SPIFFE_IAM_BROKER_STS_ENDPOINT", "http://sts.example.com")],
            "SPIFFE_IAM_BROKER_STS_ENDPOINT: plain http is allowed only to a loopback address",
        ),
    ];
    assert_exit_2("iam-broker", cases);
}

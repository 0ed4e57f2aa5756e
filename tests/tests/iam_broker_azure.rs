#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers outside #[test] fns
//! `iam-broker azure` against real peers: the dev agent for JWT-SVIDs and OIDC discovery, a
//! strict fake of Entra ID's token endpoint over HTTPS (there is no local Entra ID), and the
//! real `azure-identity` client from PyPI as the consumer, with only `IDENTITY_ENDPOINT` and
//! `IDENTITY_HEADER` set.

use std::path::Path;
use std::time::Duration;

use suite_tests::aws::{Broker, concurrent_gets_with};
use suite_tests::azure::{
    AUDIENCE, CLIENT_ID, EntraFault, FakeEntra, FederatedCredential, TENANT, azure_identity,
    start_with_entra,
};
use suite_tests::{
    AgentStart, BadSettings, DevAgent, agent_with_oidc, assert_exit_2, lock_ports, wait_until,
};

const SPIFFE_ID: &str = "spiffe://example.org/ns/default/sa/web";
const IDENTITY_HEADER: &str = "b3f1c0de-identity-header-for-tests";
const STORAGE: &str = "https://storage.azure.com";
const VAULT: &str = "https://vault.azure.net";

/// The dev agent (with OIDC discovery), the fake Entra trusting it, the broker in front.
struct Setup {
    agent: DevAgent,
    entra: FakeEntra,
    broker: Broker,
}

fn setup(dir: &Path, subject: &str, broker_args: &[&str]) -> Setup {
    setup_with(dir, subject, broker_args, AgentStart::First)
}

/// [`setup`], with the agent down when the broker starts if `agent` says so (it is started
/// again, same socket and keys' issuer, with `s.agent.restart()`).
fn setup_with(dir: &Path, subject: &str, broker_args: &[&str], agent: AgentStart) -> Setup {
    let _ports = lock_ports();
    let (mut agent_proc, issuer) = agent_with_oidc(dir, SPIFFE_ID);
    if agent == AgentStart::Late {
        agent_proc.proc.kill();
    }
    let (entra, broker) = start_with_entra(
        dir,
        &agent_proc.endpoint,
        &FederatedCredential {
            issuer,
            subject: subject.to_owned(),
            audience: AUDIENCE.to_owned(),
        },
        IDENTITY_HEADER,
        broker_args,
        &[],
    );
    Setup {
        agent: agent_proc,
        entra,
        broker,
    }
}

fn token_path(resource: &str) -> String {
    format!(
        "/msi/token?api-version=2019-08-01&resource={}",
        resource.replace(':', "%3A").replace('/', "%2F")
    )
}

fn msi(broker: &Broker, resource: &str, header: Option<&str>) -> suite_tests::envoy::Response {
    let headers: Vec<(&str, &str)> = header
        .map(|h| vec![("X-IDENTITY-HEADER", h), ("Metadata", "true")])
        .unwrap_or_default();
    broker.get(&token_path(resource), &headers)
}

/// `{"statusCode", "message"}`, what MSAL reads from an error.
fn msal_error(r: &suite_tests::envoy::Response) -> (u64, String) {
    assert_eq!(
        r.header("content-type"),
        Some("application/json"),
        "{}",
        r.body
    );
    assert!(!r.body.trim().contains('\n'), "one line: {}", r.body);
    let v = r.json();
    assert_eq!(
        v["statusCode"].as_u64(),
        Some(u64::from(r.status)),
        "{}",
        r.body
    );
    (
        v["statusCode"].as_u64().unwrap(),
        v["message"].as_str().unwrap().to_owned(),
    )
}

fn access_token(r: &suite_tests::envoy::Response) -> String {
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["access_token"].as_str().unwrap().to_owned()
}

fn broker_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("iam-broker.log")).unwrap()
}

#[test]
fn managed_identity_and_default_credentials_get_tokens_for_two_resources() {
    let dir = tempfile::tempdir().unwrap();
    let s = setup(dir.path(), SPIFFE_ID, &[]);
    let scopes = [
        &format!("{STORAGE}/.default")[..],
        &format!("{VAULT}/.default")[..],
    ];

    let managed = azure_identity(dir.path(), &s.broker, IDENTITY_HEADER, "managed", &scopes)
        .unwrap_or_else(|e| {
            panic!(
                "ManagedIdentityCredential failed: {e}\n{}",
                broker_log(dir.path())
            )
        });
    let default = azure_identity(dir.path(), &s.broker, IDENTITY_HEADER, "default", &scopes)
        .unwrap_or_else(|e| panic!("DefaultAzureCredential failed: {e}"));
    let issued = s.entra.issued();
    for scope in scopes {
        let token = managed[scope]["token"].as_str().unwrap();
        assert!(
            issued.iter().any(|t| t == token),
            "{scope}: a token Entra issued"
        );
        assert_eq!(
            default[scope]["token"], managed[scope]["token"],
            "{scope}: cached"
        );
        let left = managed[scope]["expires_on"].as_i64().unwrap()
            - i64::try_from(suite_tests::aws::unix_now()).unwrap();
        assert!(
            (3500..=3600).contains(&left),
            "{scope}: expires_on {left} s ahead"
        );
    }
    assert_ne!(managed[scopes[0]]["token"], managed[scopes[1]]["token"]);
    // One exchange per resource, whatever the number of clients.
    let by_scope = s.entra.calls_by_scope();
    assert_eq!(by_scope.get(scopes[0]), Some(&1), "{by_scope:?}");
    assert_eq!(by_scope.get(scopes[1]), Some(&1), "{by_scope:?}");
    assert_eq!(
        s.broker
            .metric("iam_broker_token_exchanges_total{provider=\"azure\",outcome=\"success\"}"),
        2
    );
    assert_eq!(s.broker.metric("iam_broker_cached_tokens"), 2);

    // A wrong identity header: the SDK is refused with the broker's reason.
    let err = azure_identity(dir.path(), &s.broker, "wrong", "managed", &scopes[..1]).unwrap_err();
    assert!(err.contains("X-IDENTITY-HEADER does not match"), "{err}");
    let r = msi(&s.broker, STORAGE, Some("wrong"));
    assert_eq!(msal_error(&r).0, 403);
    let r = msi(&s.broker, STORAGE, None);
    assert_eq!(msal_error(&r).0, 401);
    assert_eq!(
        s.entra.calls().len(),
        2,
        "refused requests never reach Entra"
    );

    // No token in any log line.
    let log = broker_log(dir.path());
    for token in s.entra.issued() {
        assert!(!log.contains(&token), "access token in the log");
    }
    assert!(!log.contains("eyJ"), "a JWT in the log:\n{log}");
}

#[test]
fn a_thousand_concurrent_cold_requests_make_one_exchange_per_resource() {
    let dir = tempfile::tempdir().unwrap();
    let s = setup(dir.path(), SPIFFE_ID, &[]);
    let headers = [("X-IDENTITY-HEADER", IDENTITY_HEADER)];
    let (listen, storage, vault) = (s.broker.listen, token_path(STORAGE), token_path(VAULT));
    let other = std::thread::spawn(move || concurrent_gets_with(listen, &vault, &headers, 500));
    let mut answers = concurrent_gets_with(listen, &storage, &headers, 500);
    answers.extend(other.join().unwrap());
    let tokens: std::collections::BTreeSet<String> = answers
        .iter()
        .map(|(status, body)| {
            assert_eq!(*status, 200, "{body}");
            let v: serde_json::Value = serde_json::from_str(body).unwrap();
            v["access_token"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(tokens.len(), 2, "one token per resource for every caller");
    let by_scope = s.entra.calls_by_scope();
    assert_eq!(
        by_scope.values().copied().collect::<Vec<_>>(),
        [1, 1],
        "one exchange per resource for 1,000 callers: {by_scope:?}"
    );
}

#[test]
fn entra_down_after_the_first_token_serves_it_while_valid_then_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let s = setup(dir.path(), SPIFFE_ID, &[]);
    // 40-second tokens: refresh from ~18 s left, stale-only below 16 s, never below 4 s.
    s.entra.set_lifetime(40);
    let first = access_token(&msi(&s.broker, STORAGE, Some(IDENTITY_HEADER)));
    s.entra.set_fault(EntraFault::Status(503));
    wait_until("a failed refresh", Duration::from_secs(40), || {
        s.entra.calls().iter().any(|c| c.status == 503)
    });
    wait_until("stale serving", Duration::from_secs(30), || {
        assert_eq!(
            access_token(&msi(&s.broker, STORAGE, Some(IDENTITY_HEADER))),
            first
        );
        s.broker.metric("iam_broker_cache_stale_served_total") > 0
    });
    assert!(
        s.broker.metric(
            "iam_broker_token_exchanges_total{provider=\"azure\",outcome=\"retryable_error\"}"
        ) >= 1
    );
    // Entra back: a new token without a restart.
    s.entra.set_fault(EntraFault::None);
    wait_until("recovery", Duration::from_secs(30), || {
        access_token(&msi(&s.broker, STORAGE, Some(IDENTITY_HEADER))) != first
    });
}

#[test]
fn throttling_is_transient_and_answers_503_until_entra_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let s = setup(dir.path(), SPIFFE_ID, &["--fetch-wait", "2s"]);
    s.entra.set_fault(EntraFault::Throttle);
    let r = msi(&s.broker, STORAGE, Some(IDENTITY_HEADER));
    let (status, message) = msal_error(&r);
    assert_eq!(status, 503, "{message}");
    assert!(message.contains("AADSTS50196"), "{message}");
    s.entra.set_fault(EntraFault::None);
    wait_until("recovery after throttling", Duration::from_secs(30), || {
        msi(&s.broker, STORAGE, Some(IDENTITY_HEADER)).status == 200
    });
}

#[test]
fn invalid_assertion_gives_the_sdk_the_aadsts_code_and_does_not_hammer_entra() {
    let dir = tempfile::tempdir().unwrap();
    let s = setup(dir.path(), SPIFFE_ID, &[]);
    s.entra.set_fault(EntraFault::InvalidAssertion);
    let err = azure_identity(
        dir.path(),
        &s.broker,
        IDENTITY_HEADER,
        "managed",
        &[&format!("{STORAGE}/.default")],
    )
    .unwrap_err();
    assert!(
        err.contains("AADSTS70021"),
        "the SDK shows Entra's code: {err}"
    );
    for _ in 0..20 {
        let r = msi(&s.broker, STORAGE, Some(IDENTITY_HEADER));
        let (status, message) = msal_error(&r);
        assert_eq!(status, 502);
        assert!(message.contains("AADSTS70021"), "{message}");
    }
    assert_eq!(
        s.entra.calls().len(),
        1,
        "a rejection is not retried before the cool-down, whatever the number of requests"
    );
}

#[test]
fn an_assertion_out_of_its_time_range_is_retried_once_with_a_fresh_jwt_svid() {
    let dir = tempfile::tempdir().unwrap();
    let s = setup(dir.path(), SPIFFE_ID, &["--fetch-wait", "5s"]);
    // AADSTS700024 once: the broker presents a freshly fetched JWT-SVID at once.
    s.entra.fault_next(1, EntraFault::AssertionOutOfTime);
    access_token(&msi(&s.broker, STORAGE, Some(IDENTITY_HEADER)));
    let calls = s.entra.calls();
    assert_eq!(
        calls.iter().map(|c| c.code).collect::<Vec<_>>(),
        [700_024, 0],
        "refused once, retried once"
    );
    assert_ne!(
        calls[0].assertion, calls[1].assertion,
        "the retry used a freshly fetched JWT-SVID"
    );
    assert_eq!(
        s.broker.metric(
            "iam_broker_token_exchanges_total{provider=\"azure\",outcome=\"invalid_token\"}"
        ),
        1
    );
    // Refused twice: no third request at once; the SDK sees the code, then the retry schedule
    // (seconds) gets a token without a restart.
    s.entra.fault_next(2, EntraFault::AssertionOutOfTime);
    let r = msi(&s.broker, VAULT, Some(IDENTITY_HEADER));
    let (status, message) = msal_error(&r);
    assert_eq!(status, 503, "transient after the retry: {message}");
    assert!(message.contains("AADSTS700024"), "{message}");
    assert_eq!(s.entra.calls_by_scope()[&format!("{VAULT}/.default")], 2);
    wait_until("a token after the backoff", Duration::from_secs(30), || {
        msi(&s.broker, VAULT, Some(IDENTITY_HEADER)).status == 200
    });
    assert_eq!(s.entra.calls_by_scope()[&format!("{VAULT}/.default")], 3);
}

#[test]
fn a_subject_without_a_federated_credential_is_refused_by_the_strict_fake() {
    let dir = tempfile::tempdir().unwrap();
    // Entra trusts another workload: the assertion verifies but its `sub` matches no record.
    let s = setup(dir.path(), "spiffe://example.org/ns/default/sa/other", &[]);
    let r = msi(&s.broker, STORAGE, Some(IDENTITY_HEADER));
    let (status, message) = msal_error(&r);
    assert_eq!(status, 502, "{message}");
    assert!(message.contains("AADSTS700213"), "{message}");
    assert_eq!(s.entra.calls()[0].code, 700_213);
}

#[test]
fn allow_listed_resources_are_fetched_at_start_and_others_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = setup(dir.path(), SPIFFE_ID, &["--resources", STORAGE]);
    // Ready once the listed resource has a token, before any request.
    s.broker.wait_ready(Duration::from_secs(30));
    assert_eq!(s.entra.calls().len(), 1);
    access_token(&msi(&s.broker, STORAGE, Some(IDENTITY_HEADER)));
    let r = msi(&s.broker, VAULT, Some(IDENTITY_HEADER));
    let (status, message) = msal_error(&r);
    assert_eq!(status, 403);
    assert!(message.contains("allow-list"), "{message}");
    // Malformed requests: 400 in MSAL's shape, Entra untouched.
    let r = s.broker.get(
        "/msi/token?resource=https%3A%2F%2Fstorage.azure.com",
        &[("X-IDENTITY-HEADER", IDENTITY_HEADER)],
    );
    assert!(msal_error(&r).1.contains("api-version is required"));
    assert_eq!(s.entra.calls().len(), 1);
}

#[test]
fn readyz_waits_for_a_jwt_svid_when_the_agent_starts_late() {
    let dir = tempfile::tempdir().unwrap();
    // No allow-list: nothing to fetch at start, but without a JWT-SVID nothing can be exchanged.
    let mut s = setup_with(dir.path(), SPIFFE_ID, &[], AgentStart::Late);
    assert_eq!(s.broker.readyz(), 503, "no agent, no JWT-SVID: not ready");
    s.agent.restart();
    s.broker.wait_ready(Duration::from_secs(30));
    access_token(&msi(&s.broker, STORAGE, Some(IDENTITY_HEADER)));
}

#[test]
fn bad_azure_settings_exit_2_naming_the_setting() {
    let id = &[("IDENTITY_HEADER", "x")][..];
    let cases: &[BadSettings<'_>] = &[
        (
            &["azure", "--client-id", CLIENT_ID],
            id,
            "AZURE_TENANT_ID: a tenant ID is required",
        ),
        (
            &["azure", "--tenant-id", TENANT],
            &[("IDENTITY_HEADER", "x"), ("AZURE_CLIENT_ID", "app")],
            "AZURE_CLIENT_ID: expected a GUID",
        ),
        (
            &[
                "azure",
                "--tenant-id",
                "../common",
                "--client-id",
                CLIENT_ID,
            ],
            id,
            "--tenant-id: expected a tenant GUID",
        ),
        (
            &["azure", "--tenant-id", TENANT, "--client-id", CLIENT_ID],
            &[
                ("IDENTITY_HEADER", "x"),
                ("AZURE_AUTHORITY_HOST", "http://login.example.com"),
            ],
            "AZURE_AUTHORITY_HOST: plain http is allowed only to a loopback address",
        ),
        (
            &["azure", "--tenant-id", TENANT, "--client-id", CLIENT_ID],
            &[],
            "IDENTITY_HEADER: the identity header secret is required",
        ),
        (
            &[
                "azure",
                "--tenant-id",
                TENANT,
                "--client-id",
                CLIENT_ID,
                "--resources",
                "https://vault.azure.net/.default",
            ],
            id,
            "--resources: \"https://vault.azure.net/.default\": give the resource without /.default",
        ),
    ];
    assert_exit_2("iam-broker", cases);
}

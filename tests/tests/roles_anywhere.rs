//! The IAM Roles Anywhere stand-in (`suite_tests::roles_anywhere`), proven against AWS's own
//! client, `aws_signing_helper` 1.4.0, before it judges the broker: the helper, given an
//! X.509-SVID and its key from the dev agent's CA, gets credentials; the same request with one
//! byte of the signature, the body or a signed header changed is refused, while the unchanged
//! copy is accepted (so the refusals are the stand-in's checks, not the replay); a certificate
//! of another CA, an expired one, and a role outside the profile are refused with the
//! service's error codes, which the helper reports.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use dev_agent::CertificateAuthority;
use suite_tests::roles_anywhere::{
    PROFILE_ARN, REGION, ROLE_ARN, RolesAnywhere, Seen, TRUST_ANCHOR_ARN, signing_helper,
};
use workload_client::spiffe::{SpiffeId, TrustDomain};

const ID: &str = "spiffe://example.org/ns/default/sa/web";

/// One change to a recorded request.
type Change = Box<dyn Fn(&mut Seen)>;

/// An X.509-SVID of `ca` written as the helper reads it: certificate and PKCS#8 key PEM files.
fn svid_files(dir: &Path, ca: &CertificateAuthority, name: &str) -> (String, String) {
    let svid = ca
        .issue(&SpiffeId::new(ID).unwrap(), Duration::from_secs(3600))
        .unwrap();
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}-key.pem"));
    std::fs::write(&cert, svid.cert_pem()).unwrap();
    std::fs::write(&key, svid.key_pem().expose()).unwrap();
    (cert.display().to_string(), key.display().to_string())
}

/// `aws_signing_helper credential-process` against the stand-in, trusting its TLS CA the one
/// way the helper reads (SSL_CERT_FILE: it ignores AWS_CA_BUNDLE), with an empty AWS config.
fn helper(ra: &RolesAnywhere, dir: &Path, cert: &str, key: &str, role: &str) -> Output {
    let tls = dir.join("tls-ca.pem");
    std::fs::write(&tls, &ra.tls.ca_pem).unwrap();
    Command::new(signing_helper())
        .args([
            "credential-process",
            "--certificate",
            cert,
            "--private-key",
            key,
        ])
        .args([
            "--trust-anchor-arn",
            TRUST_ANCHOR_ARN,
            "--profile-arn",
            PROFILE_ARN,
        ])
        .args([
            "--role-arn",
            role,
            "--region",
            REGION,
            "--endpoint",
            &ra.endpoint(),
        ])
        .env_clear()
        .env("HOME", dir)
        .env("SSL_CERT_FILE", &tls)
        .output()
        .unwrap()
}

/// Sends `seen` again (its headers, target and body, with `change` applied) with curl; the
/// status the stand-in answered.
fn replay(ra: &RolesAnywhere, dir: &Path, seen: &Seen, change: impl Fn(&mut Seen)) -> u16 {
    let mut copy = seen.clone();
    change(&mut copy);
    let body = dir.join("replay-body");
    std::fs::write(&body, &copy.body).unwrap();
    let tls = dir.join("tls-ca.pem");
    let mut curl = Command::new("curl");
    curl.args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(&tls)
        .args(["-X", &copy.method])
        .arg(format!("{}{}", ra.endpoint(), copy.target))
        .arg("--data-binary")
        .arg(format!("@{}", body.display()));
    for (name, value) in &copy.headers {
        // curl writes these itself (Host from the URL, the same host:port the helper signed).
        if !matches!(
            name.as_str(),
            "host" | "content-length" | "transfer-encoding" | "user-agent" | "accept-encoding"
        ) {
            curl.arg("-H").arg(format!("{name}: {value}"));
        }
    }
    let out = curl.output().unwrap();
    assert!(out.status.success(), "curl: {out:?}");
    String::from_utf8_lossy(&out.stdout).parse().unwrap()
}

#[test]
fn aws_signing_helper_gets_credentials_and_every_changed_copy_of_its_request_is_refused() {
    suite_tests::aws::require_curl();
    let dir = tempfile::tempdir().unwrap();
    let td = TrustDomain::new("example.org").unwrap();
    let ca = CertificateAuthority::generate(&td, Duration::from_secs(86_400)).unwrap();
    let ra = RolesAnywhere::start(ca.cert_der());
    let (cert, key) = svid_files(dir.path(), &ca, "svid");

    let out = helper(&ra, dir.path(), &cert, &key, ROLE_ARN);
    assert!(out.status.success(), "aws_signing_helper: {out:?}");
    let creds: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let seen = ra.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let request = &seen[0];
    assert_eq!(request.status, 201, "{request:?}");
    assert_eq!(creds["Version"], 1);
    assert_eq!(
        creds["AccessKeyId"].as_str(),
        request.access_key_id.as_deref()
    );
    assert!(
        creds["SessionToken"]
            .as_str()
            .is_some_and(|t| !t.is_empty())
    );
    // What the helper signs: the stand-in checked it; the shape is the documented one.
    let auth = request.header("authorization").unwrap();
    assert!(
        auth.starts_with("AWS4-X509-ECDSA-SHA256 Credential=")
            && auth.contains("/us-east-1/rolesanywhere/aws4_request, SignedHeaders=content-type;host;x-amz-date;x-amz-x509, Signature="),
        "{auth}"
    );

    // The unchanged copy is accepted: the replay itself changes nothing the stand-in checks.
    assert_eq!(replay(&ra, dir.path(), request, |_| {}), 201);
    let set = |name: &'static str, f: fn(&str) -> String| {
        move |s: &mut Seen| {
            for (n, v) in &mut s.headers {
                if n == name {
                    *v = f(v);
                }
            }
        }
    };
    let changed: [(&str, Change); 5] = [
        (
            "one hex digit of the signature",
            Box::new(set("authorization", |v| {
                let last = if v.ends_with('0') { '1' } else { '0' };
                format!("{}{last}", &v[..v.len() - 1])
            })),
        ),
        (
            "one byte of the body",
            Box::new(|s: &mut Seen| {
                s.body = String::from_utf8(s.body.clone())
                    .unwrap()
                    .replace("3600", "3601")
                    .into_bytes();
            }),
        ),
        (
            "the signed Content-Type",
            Box::new(set("content-type", |_| {
                "application/json; charset=utf-8".into()
            })),
        ),
        (
            "the signed X-Amz-Date, one second later",
            Box::new(set("x-amz-date", |v| {
                let mut b = v.as_bytes().to_vec();
                // ...SSZ: bump the last seconds digit (9 wraps to 8, still one second apart).
                let i = b.len() - 2;
                b[i] = if b[i] == b'9' { b'8' } else { b[i] + 1 };
                String::from_utf8(b).unwrap()
            })),
        ),
        (
            "the query's role",
            Box::new(|s: &mut Seen| {
                s.target = s.target.replace("role%2Fdemo", "role%2Fdemo2");
            }),
        ),
    ];
    for (what, change) in &changed {
        let status = replay(&ra, dir.path(), request, change);
        assert_eq!(status, 403, "{what}: {:?}", ra.seen().last());
    }
    let refusals = ra.seen();
    assert!(
        refusals[2..]
            .iter()
            .all(|s| s.error.as_deref() == Some("AccessDeniedException")),
        "{refusals:#?}"
    );
    assert_eq!(
        ra.issued(),
        2,
        "the helper's request and its unchanged copy"
    );

    // Refusals the helper reports with the service's code: another CA, an expired certificate
    // (the anchor swapped for a CA whose leaf expired), a role outside the profile.
    let other = CertificateAuthority::generate(&td, Duration::from_secs(86_400)).unwrap();
    let (foreign_cert, foreign_key) = svid_files(dir.path(), &other, "foreign");
    for (what, cert, key, role) in [
        (
            "another CA's certificate",
            &foreign_cert,
            &foreign_key,
            ROLE_ARN,
        ),
        (
            "a role outside the profile",
            &cert,
            &key,
            "arn:aws:iam::123456789012:role/other",
        ),
    ] {
        let out = helper(&ra, dir.path(), cert, key, role);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: {out:?}");
        assert!(stderr.contains("AccessDeniedException"), "{what}: {stderr}");
        assert!(out.stdout.is_empty(), "{what}: no credentials on stdout");
    }
    let (expired_ca, expired_cert, expired_key) = expired_svid(dir.path());
    ra.set_anchor(&[expired_ca]);
    let out = helper(&ra, dir.path(), &expired_cert, &expired_key, ROLE_ARN);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "expired: {out:?}");
    assert!(
        stderr.contains("AccessDeniedException") && stderr.contains("Expired"),
        "expired: {stderr}"
    );
    assert_eq!(ra.issued(), 2, "no session for a refused request");
}

/// A CA (DER) and a leaf of it whose validity ended an hour ago (cert and key PEM paths).
fn expired_svid(dir: &Path) -> (Vec<u8>, String, String) {
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
        KeyUsagePurpose, SanType,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(Vec::<String>::new()).unwrap();
    leaf.subject_alt_names = vec![SanType::URI(ID.try_into().unwrap())];
    leaf.is_ca = IsCa::ExplicitNoCa;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let now = time::OffsetDateTime::now_utc();
    leaf.not_before = now - time::Duration::hours(2);
    leaf.not_after = now - time::Duration::hours(1);
    let cert = leaf.signed_by(&key, &Issuer::new(ca, &ca_key)).unwrap();
    let cert_path = dir.join("expired.pem");
    let key_path = dir.join("expired-key.pem");
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (
        ca_cert.der().to_vec(),
        cert_path.display().to_string(),
        key_path.display().to_string(),
    )
}

/// Sends a request the broker signed (`iam_broker`'s Roles Anywhere signer) with curl; the
/// stand-in's status.
fn send_signed(
    ra: &RolesAnywhere,
    dir: &Path,
    signed: &iam_broker::provider::aws::roles_anywhere::SignedRequest,
) -> u16 {
    let seen = Seen {
        method: "POST".into(),
        target: signed.target.clone(),
        headers: signed
            .headers
            .iter()
            .map(|(n, v)| ((*n).to_owned(), v.clone()))
            .collect(),
        body: signed.body.clone().into_bytes(),
        status: 0,
        error: None,
        message: None,
        access_key_id: None,
    };
    let tls = dir.join("tls-ca.pem");
    std::fs::write(&tls, &ra.tls.ca_pem).unwrap();
    replay(ra, dir, &seen, |_| {})
}

#[test]
fn the_brokers_roles_anywhere_signature_is_accepted_as_aws_signing_helpers_is() {
    use iam_broker::provider::aws::roles_anywhere::{SessionRequest, sign};
    suite_tests::aws::require_curl();
    let dir = tempfile::tempdir().unwrap();
    let td = TrustDomain::new("example.org").unwrap();
    let ca = CertificateAuthority::generate(&td, Duration::from_secs(86_400)).unwrap();
    let ra = RolesAnywhere::start(ca.cert_der());
    let issued = ca
        .issue(&SpiffeId::new(ID).unwrap(), Duration::from_secs(3600))
        .unwrap();
    let svid = workload_client::spiffe::X509Svid::parse_from_der(
        &issued.cert_der,
        issued.key_pkcs8.expose(),
    )
    .unwrap();
    let host = ra.endpoint().trim_start_matches("https://").to_owned();
    let request = SessionRequest {
        trust_anchor_arn: TRUST_ANCHOR_ARN.into(),
        profile_arn: PROFILE_ARN.into(),
        role_arn: ROLE_ARN.into(),
        region: REGION.into(),
        host,
        duration_seconds: 3600,
        role_session_name: None,
    };
    let signed = sign(&request, &svid, time::OffsetDateTime::now_utc()).unwrap();
    assert_eq!(
        send_signed(&ra, dir.path(), &signed),
        201,
        "{:?}",
        ra.seen()
    );
    // The same request aws_signing_helper sends, but for the signature: compare the shapes.
    let (cert, key) = svid_files(dir.path(), &ca, "svid");
    assert!(
        helper(&ra, dir.path(), &cert, &key, ROLE_ARN)
            .status
            .success()
    );
    let seen = ra.seen();
    let (ours, theirs) = (&seen[0], &seen[1]);
    assert_eq!(ours.target, theirs.target, "query");
    assert_eq!(ours.body, theirs.body, "body");
    let signed_headers = |s: &Seen| {
        let auth = s.header("authorization").unwrap().to_owned();
        auth.split(", ").nth(1).unwrap().to_owned()
    };
    assert_eq!(signed_headers(ours), signed_headers(theirs));

    // Signed for another region or at a stale time: refused.
    let elsewhere = SessionRequest {
        region: "eu-west-1".into(),
        ..request.clone()
    };
    let stale = time::OffsetDateTime::now_utc() - time::Duration::minutes(6);
    for (what, signed) in [
        (
            "another region",
            sign(&elsewhere, &svid, time::OffsetDateTime::now_utc()).unwrap(),
        ),
        ("six minutes ago", sign(&request, &svid, stale).unwrap()),
    ] {
        assert_eq!(send_signed(&ra, dir.path(), &signed), 403, "{what}");
    }
    assert_eq!(ra.issued(), 2);
}

/// botocore's credential chain (default options) with `env`: the access key it resolves.
fn botocore_access_key(dir: &Path, env: &[(&str, &str)]) -> Result<String, String> {
    let python = suite_tests::python_with(&["botocore"]);
    let out = Command::new(python)
        .args([
            "-c",
            "import botocore.session\nc = botocore.session.Session().get_credentials()\nprint(c.get_frozen_credentials().access_key if c else '')",
        ])
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", dir)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_SHARED_CREDENTIALS_FILE", dir.join("no-aws-credentials"))
        .envs(env.iter().copied())
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iam_broker_roles_anywhere_serves_one_session_to_300_cold_requests_and_the_aws_sdks() {
    use dev_agent::{Agent, Config as AgentConfig};
    use suite_tests::aws::{aws_cli, concurrent_gets, credential_process_profile};
    suite_tests::aws::require_curl();
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(AgentConfig::new(
        workload_client::Endpoint::Unix(dir.path().join("agent.sock")),
        TrustDomain::new("example.org").unwrap(),
    ))
    .await
    .unwrap();
    let anchor = agent.authority().ca_der();
    let endpoint = agent.endpoint().to_string();
    let path = dir.path().to_path_buf();
    tokio::task::spawn_blocking(move || {
        let dir = path.as_path();
        let ra = RolesAnywhere::start(&anchor);
        let token = "roles-anywhere-container-token";
        let mut broker = ra.broker(
            dir,
            &endpoint,
            &[],
            &[("AWS_CONTAINER_AUTHORIZATION_TOKEN", token)],
        );

        // Cold: 300 clients at once share one CreateSession.
        let answers = concurrent_gets(broker.listen, "/v1/creds", 300);
        let keys: std::collections::BTreeSet<String> = answers
            .iter()
            .map(|(status, body)| {
                assert_eq!(*status, 200, "{body}");
                let v: serde_json::Value = serde_json::from_str(body).unwrap();
                v["AccessKeyId"].as_str().unwrap().to_owned()
            })
            .collect();
        assert_eq!(keys.len(), 1, "{keys:?}");
        assert_eq!(ra.issued(), 1, "one CreateSession for 300 cold requests");
        broker.wait_ready(Duration::from_secs(10));
        let key = keys.into_iter().next().unwrap();
        let seen = &ra.seen()[0];
        assert_eq!(seen.access_key_id.as_deref(), Some(key.as_str()));
        assert!(
            seen.header("x-amz-x509-chain").is_none(),
            "the dev agent signs leaves directly"
        );

        // The SDKs, with their default options: botocore through credential_process and
        // through container credentials, and the AWS CLI's view of the same profile.
        let config = credential_process_profile(
            dir,
            &format!(
                "curl -sf http://127.0.0.1:{}/v1/creds",
                broker.listen.port()
            ),
        );
        let config = config.display().to_string();
        assert_eq!(
            botocore_access_key(dir, &[("AWS_CONFIG_FILE", config.as_str())]),
            Ok(key.clone()),
            "credential_process"
        );
        let uri = format!(
            "http://127.0.0.1:{}/v1/container-creds",
            broker.listen.port()
        );
        assert_eq!(
            botocore_access_key(
                dir,
                &[
                    ("AWS_CONFIG_FILE", "/dev/null"),
                    ("AWS_CONTAINER_CREDENTIALS_FULL_URI", uri.as_str()),
                    ("AWS_CONTAINER_AUTHORIZATION_TOKEN", token),
                ],
            ),
            Ok(key.clone()),
            "container credentials"
        );
        let out = aws_cli(
            dir,
            &[("AWS_CONFIG_FILE", config.as_str())],
            &["configure", "list"],
        );
        let listed = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success()
                && listed.contains(&key[key.len() - 4..])
                && listed.contains("custom-process"),
            "aws configure list: {listed}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = aws_cli(
            dir,
            &[
                ("AWS_CONTAINER_CREDENTIALS_FULL_URI", uri.as_str()),
                ("AWS_CONTAINER_AUTHORIZATION_TOKEN", token),
            ],
            &["configure", "list"],
        );
        let listed = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success()
                && listed.contains(&key[key.len() - 4..])
                && listed.contains("container-role"),
            "aws configure list (container credentials): {listed}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(ra.issued(), 1, "every client served from the one session");
        assert_eq!(
            broker.metric("iam_broker_sts_calls_total{outcome=\"success\"}"),
            1
        );
    })
    .await
    .unwrap();
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_anywhere_signs_with_every_rotated_svid_under_load_and_a_removed_ca_is_refused() {
    use std::collections::BTreeSet;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    use dev_agent::{Agent, Config as AgentConfig};
    use suite_tests::wait_until;
    let dir = tempfile::tempdir().unwrap();
    let td = TrustDomain::new("example.org").unwrap();
    let agent = Arc::new(
        Agent::start(AgentConfig::new(
            workload_client::Endpoint::Unix(dir.path().join("agent.sock")),
            td.clone(),
        ))
        .await
        .unwrap(),
    );
    let anchor = agent.authority().ca_der();
    let endpoint = agent.endpoint().to_string();
    let path = dir.path().to_path_buf();
    let shared = agent.clone();
    tokio::task::spawn_blocking(move || {
        let (dir, agent) = (path.as_path(), shared);
        let rt = tokio::runtime::Handle::current();
        let ra = RolesAnywhere::start(&anchor);
        // Short sessions, so the broker refreshes (and signs) every few seconds.
        ra.set_lifetime(Duration::from_secs(12));
        let mut broker = ra.broker(dir, &endpoint, &[], &[]);
        broker.wait_ready(Duration::from_secs(10));
        let certs = || -> BTreeSet<String> {
            ra.seen()
                .iter()
                .filter_map(|s| s.header("x-amz-x509").map(str::to_owned))
                .collect()
        };

        // Two clients asking all the time while the SVID rotates three times.
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let clients: Vec<_> = (0..2)
            .map(|_| {
                let (stop, ok, failed, listen) =
                    (stop.clone(), ok.clone(), failed.clone(), broker.listen);
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let r = suite_tests::envoy::request(listen, "GET", "/v1/creds", &[]);
                        if r.is_some_and(|r| r.status == 200) {
                            ok.fetch_add(1, Ordering::Relaxed);
                        } else {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for _ in 0..3 {
            let before = certs();
            rt.block_on(agent.rotate_x509()).unwrap();
            wait_until(
                "a CreateSession signed with the rotated X.509-SVID",
                Duration::from_secs(30),
                || certs().difference(&before).next().is_some(),
            );
        }
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            c.join().unwrap();
        }
        let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
        eprintln!(
            "3 SVID rotations under load: {ok} requests served, {failed} failed, {} sessions",
            ra.issued()
        );
        assert_eq!(failed, 0, "no request failed across the rotations");
        assert!(ok > 100, "load ran: {ok}");
        assert!(certs().len() >= 4, "each rotated SVID signed a session");
        assert!(
            ra.seen().iter().all(|s| s.status == 201),
            "{:#?}",
            ra.seen()
        );

        // The trust anchor no longer holds the agent's CA: the next session is refused, and
        // once the held credentials run out clients get the refusal, not stale credentials.
        let other = CertificateAuthority::generate(&td, Duration::from_secs(86_400)).unwrap();
        ra.set_anchor(&[other.cert_der().to_vec()]);
        wait_until("a refused CreateSession", Duration::from_secs(30), || {
            ra.seen().last().is_some_and(|s| s.status == 403)
        });
        let refused = ra.seen().last().cloned().unwrap();
        assert_eq!(refused.error.as_deref(), Some("AccessDeniedException"));
        assert!(
            refused
                .message
                .as_deref()
                .is_some_and(|m| m.contains("Untrusted")),
            "{refused:?}"
        );
        wait_until(
            "the refusal reaches the clients",
            Duration::from_secs(30),
            || broker.creds().status == 502,
        );
        let r = broker.creds();
        assert!(
            r.body.contains("provider_rejected") && r.body.contains("Untrusted"),
            "{r:?}"
        );
    })
    .await
    .unwrap();
    Arc::try_unwrap(agent).unwrap().shutdown().await;
}

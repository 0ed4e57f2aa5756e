#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Every platform of the images, run: `cargo xtask image` builds each sidecar for linux/amd64,
//! arm64, ppc64le and s390x and gathers them in one manifest list per image. For each platform
//! built (`SUITE_IMAGE_PLATFORMS`; `cargo xtask test` builds the host's, arm64 and s390x), the
//! binaries are copied out of that platform's images and run under qemu-user (natively on the
//! host's platform): `--help` of each, then the dev agent, sds-bridge, jwt-auth-helper and
//! iam-broker together until ready, and one of each exchange where a byte-order or crypto bug
//! would show: a JWT-SVID the agent signed, verified here against the agent's JWKS; a token
//! stamped by the helper; an SDS push whose certificate chains to the pushed bundle and matches
//! its key; an STS exchange over TLS to a local CA's stand-in.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    Secret, SpiffeCertValidatorConfig, secret,
};
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use prost::Message as _;
use suite_tests::aws::{Broker, Moto, StsProxy, TestCa};
use suite_tests::image::{
    Platform, SIDECARS, TARGETS, elf, expected, extract, platform_tag, podman, tag,
};
use suite_tests::sds::SdsBridge;
use suite_tests::sidecars::{JwtHelper, check};
use suite_tests::{DevAgent, free_port, scrape, wait_until};
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, UnixTime};
use workload_client::{
    Endpoint, TrustDomainPolicy, WorkloadApiClient, bundles_from_response, lazy_channel,
    validate_jwt_svid,
};

const TD: &str = "example.org";
/// What an emulated process gets to become ready: qemu-user runs s390x code several times
/// slower than the host, and the CI machine is a loaded 2-core one.
const READY: Duration = Duration::from_secs(90);

#[test]
fn each_image_is_a_manifest_list_of_exactly_the_platforms_built() {
    let want: BTreeSet<String> = expected()
        .iter()
        .map(|p| format!("linux/{}", p.arch))
        .collect();
    for target in TARGETS {
        let list = tag(target);
        let manifest: serde_json::Value =
            serde_json::from_str(&podman(&["manifest", "inspect", &list])).unwrap();
        let entries = manifest["manifests"].as_array().unwrap();
        let got: BTreeSet<String> = entries
            .iter()
            .map(|m| {
                format!(
                    "{}/{}",
                    m["platform"]["os"].as_str().unwrap(),
                    m["platform"]["architecture"].as_str().unwrap()
                )
            })
            .collect();
        assert_eq!(entries.len(), got.len(), "{list}: a platform twice");
        assert_eq!(got, want, "{list}'s platforms");
        // Each entry is that platform's image, built for that platform.
        for p in expected() {
            let image = platform_tag(target, p.arch);
            let inspect = podman(&[
                "image",
                "inspect",
                "--format",
                "{{.Digest}}|{{.Os}}/{{.Architecture}}",
                &image,
            ]);
            let (digest, platform) = inspect.split_once('|').unwrap();
            assert_eq!(platform, format!("linux/{}", p.arch), "{image}");
            assert!(
                entries
                    .iter()
                    .any(|m| m["digest"] == digest && m["platform"]["architecture"] == p.arch),
                "{list} does not point at {image} ({digest}) for linux/{}",
                p.arch
            );
        }
    }
}

#[test]
fn every_platforms_binaries_run_together_and_speak_each_protocol() {
    let tmp = tempfile::tempdir().unwrap();
    let moto = Moto::start(tmp.path());
    let ca = TestCa::new();
    let sts = StsProxy::start_tls(moto.addr, &ca);
    let ca_file = tmp.path().join("sts-ca.pem");
    std::fs::write(&ca_file, &ca.ca_pem).unwrap();
    for p in expected() {
        let started = std::time::Instant::now();
        let dir = tmp.path().join(p.arch);
        std::fs::create_dir_all(&dir).unwrap();
        let exes = binaries_of(p, &dir);
        run_together(p, &dir, &exes, &sts, &ca_file);
        eprintln!(
            "linux/{}: checked in {:.1} s",
            p.arch,
            started.elapsed().as_secs_f64()
        );
    }
}

/// The binaries of `p`'s per-sidecar images, checked to be static executables of that
/// platform that print their help, keyed by binary name.
fn binaries_of(p: &Platform, dir: &Path) -> Vec<(&'static str, PathBuf)> {
    SIDECARS
        .iter()
        .map(|(target, binary)| {
            let image = platform_tag(target, p.arch);
            let config = podman(&[
                "image",
                "inspect",
                "--format",
                "{{.Config.User}}|{{json .Config.Entrypoint}}|{{.Size}}",
                &image,
            ]);
            let parts: Vec<&str> = config.split('|').collect();
            assert_eq!(parts[0], "65532:65532", "{image} runs as non-root");
            assert_eq!(
                parts[1],
                format!("[\"/usr/local/bin/{binary}\"]"),
                "{image}"
            );
            let size: u64 = parts[2].parse().unwrap();
            eprintln!("{image}: {:.1} MiB", size as f64 / 1_048_576.0);
            assert!(size < 30 * 1024 * 1024, "{image} is {size} bytes");
            let exe = extract(
                &image,
                &format!("/usr/local/bin/{binary}"),
                &dir.join(target),
            );
            let header = elf(&std::fs::read(&exe).unwrap());
            assert_eq!(header.machine, p.machine, "{image}: ELF machine");
            assert_eq!(header.big_endian, p.big_endian, "{image}: byte order");
            assert!(!header.interpreter, "{image}: dynamically linked");
            let help = p.command(&exe).arg("--help").output().unwrap();
            let text = String::from_utf8_lossy(&help.stdout);
            assert!(
                help.status.success() && text.contains("Usage"),
                "{image}: {binary} --help: {}{text}",
                String::from_utf8_lossy(&help.stderr)
            );
            (*binary, exe)
        })
        .collect()
}

fn exe<'a>(exes: &'a [(&str, PathBuf)], name: &str) -> &'a Path {
    &exes.iter().find(|(n, _)| *n == name).unwrap().1
}

fn run_together(
    p: &Platform,
    dir: &Path,
    exes: &[(&str, PathBuf)],
    sts: &StsProxy,
    ca_file: &Path,
) {
    let agent = DevAgent::start_program(
        &p.launcher(exe(exes, "spiffe-dev-agent"), dir),
        dir,
        &["--trust-domain", TD],
    );
    let agent_api = agent.endpoint.clone();

    let mut bridge = SdsBridge::start_program(
        &p.launcher(exe(exes, "sds-bridge"), dir),
        &format!("sds-bridge-{}", p.arch),
        dir,
        &agent_api,
        &[],
        &[],
    );
    let mut helper = JwtHelper::start_program_at(
        &p.launcher(exe(exes, "jwt-auth-helper"), dir),
        dir,
        &agent_api,
        format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        &["--audience", "backend"],
    );
    let calls_before = sts.assume_calls();
    let mut broker = Broker::start_with(
        p.command(exe(exes, "iam-broker")),
        dir,
        &agent_api,
        &sts.url(),
        &[],
        &[("SSL_CERT_FILE", ca_file.to_str().unwrap())],
    );
    bridge.wait_ready(READY);
    helper.wait_ready(READY);
    broker.wait_ready(READY);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // A JWT-SVID signed by the emulated agent, verified here with its JWKS.
        let client = WorkloadApiClient::new(Endpoint::parse(&agent_api).unwrap());
        let token = client
            .fetch_jwt_svid(&["backend".to_owned()], None)
            .await
            .unwrap();
        let bundles = client
            .stream_jwt_bundles()
            .await
            .unwrap()
            .message()
            .await
            .unwrap()
            .expect("a JWT bundle");
        let bundles = bundles_from_response(bundles).unwrap();
        let svid = validate_jwt_svid(
            token.token(),
            "backend",
            &bundles,
            &TrustDomainPolicy::default(),
        )
        .unwrap_or_else(|e| panic!("linux/{}: the agent's JWT-SVID: {e}", p.arch));
        let id = svid.spiffe_id().to_string();
        assert!(id.starts_with("spiffe://example.org/"), "{id}");
        // One character in the middle of the signature changed: well-formed, and refused.
        let mut forged = token.token().to_owned();
        let signature = forged.rfind('.').unwrap() + 1;
        let at = signature + (forged.len() - signature) / 2;
        let flipped = if &forged[at..=at] == "A" { "B" } else { "A" };
        forged.replace_range(at..=at, flipped);
        assert!(
            validate_jwt_svid(&forged, "backend", &bundles, &TrustDomainPolicy::default()).is_err()
        );

        // The helper stamps a token of its own fetch; it verifies with the same keys.
        let mut authz = helper.client().await;
        let verdict = check(&mut authz, "backend.example", &[]).await;
        let stamped = verdict
            .header("authorization")
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_else(|| panic!("linux/{}: nothing stamped: {verdict:?}", p.arch));
        validate_jwt_svid(stamped, "backend", &bundles, &TrustDomainPolicy::default())
            .unwrap_or_else(|e| panic!("linux/{}: the helper's token: {e}", p.arch));

        // One SDS push, acknowledged: the certificate chains to the pushed bundle and is the
        // pushed key's.
        sds_push_verifies(p, &bridge).await;
    });

    // One STS exchange over TLS, trusting the stand-in's CA through SSL_CERT_FILE (the
    // stand-in serves every platform in turn: this one's exchange is the count's growth).
    assert!(
        sts.assume_calls() > calls_before,
        "linux/{}: no STS exchange",
        p.arch
    );
    let r = broker.creds();
    assert_eq!(r.status, 200, "linux/{}: {}", p.arch, r.body);
    assert!(r.json()["AccessKeyId"].is_string(), "{}", r.body);
    drop((broker, helper, bridge, agent));
}

/// The bytes of an inline data source.
fn inline(source: Option<DataSource>) -> Vec<u8> {
    match source.and_then(|d| d.specifier) {
        Some(data_source::Specifier::InlineBytes(b)) => b,
        other => panic!("inline bytes expected, got {other:?}"),
    }
}

async fn sds_push_verifies(p: &Platform, bridge: &SdsBridge) {
    const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
    let mut sds =
        SecretDiscoveryServiceClient::new(lazy_channel(&Endpoint::Unix(bridge.socket.clone())));
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let request = |version: &str, nonce: &str| DiscoveryRequest {
        version_info: version.to_owned(),
        resource_names: vec!["default".to_owned(), "ROOTCA".to_owned()],
        type_url: SECRET.to_owned(),
        response_nonce: nonce.to_owned(),
        ..Default::default()
    };
    tx.send(request("", "")).await.unwrap();
    let mut responses = sds
        .stream_secrets(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    // The two names may come in one push or two; acknowledge every push.
    let mut secrets: Vec<Secret> = Vec::new();
    while !["default", "ROOTCA"]
        .iter()
        .all(|name| secrets.iter().any(|s| s.name == *name))
    {
        let r: DiscoveryResponse = tokio::time::timeout(READY, responses.message())
            .await
            .expect("an SDS push")
            .unwrap()
            .expect("the stream stays open");
        for any in &r.resources {
            let secret = Secret::decode(any.value.as_slice()).unwrap();
            secrets.retain(|s| s.name != secret.name);
            secrets.push(secret);
        }
        tx.send(request(&r.version_info, &r.nonce)).await.unwrap();
    }
    let bridge_admin = bridge.admin;
    let acked = tokio::task::spawn_blocking(move || {
        wait_until("the bridge to see the ACK", READY, || {
            scrape(bridge_admin, "sds_bridge_push_ack_seconds_count") >= 1.0
        });
        scrape(bridge_admin, "sds_bridge_nacks_total")
    })
    .await
    .unwrap();
    assert_eq!(acked, 0.0, "linux/{}: the bridge counted a NACK", p.arch);
    let mut leaf = None;
    let mut bundle = None;
    for s in secrets {
        match (s.name.as_str(), s.r#type) {
            ("default", Some(secret::Type::TlsCertificate(t))) => {
                leaf = Some((inline(t.certificate_chain), inline(t.private_key)));
            }
            ("ROOTCA", Some(secret::Type::ValidationContext(v))) => {
                // The SPIFFE validator's per-trust-domain bundle (Envoy's view of it).
                let config = SpiffeCertValidatorConfig::decode(
                    v.custom_validator_config
                        .and_then(|c| c.typed_config)
                        .expect("ROOTCA: the SPIFFE validator")
                        .value
                        .as_slice(),
                )
                .unwrap();
                let own = config
                    .trust_domains
                    .into_iter()
                    .find(|t| t.name == TD)
                    .expect("ROOTCA: the own trust domain's bundle");
                bundle = Some(inline(own.trust_bundle));
            }
            (name, other) => panic!("unexpected secret {name}: {other:?}"),
        }
    }
    let (chain, key) = leaf.expect("default pushed");
    let bundle = bundle.expect("ROOTCA pushed");
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&chain)
        .collect::<Result<_, _>>()
        .unwrap();
    let roots: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bundle)
        .collect::<Result<_, _>>()
        .unwrap();
    let anchors: Vec<_> = roots
        .iter()
        .map(|r| webpki::anchor_from_trusted_cert(r).unwrap().to_owned())
        .collect();
    let end_entity = webpki::EndEntityCert::try_from(&chain[0]).unwrap();
    end_entity
        .verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &chain[1..],
            UnixTime::now(),
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .unwrap_or_else(|e| panic!("linux/{}: the pushed SVID: {e}", p.arch));
    // The pushed key is the certificate's.
    let key = rcgen::KeyPair::from_pem(std::str::from_utf8(&key).unwrap()).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&chain[0]).unwrap();
    assert_eq!(
        cert.public_key().subject_public_key.data.as_ref(),
        key.public_key_raw(),
        "linux/{}: the pushed key is not the certificate's",
        p.arch
    );
}

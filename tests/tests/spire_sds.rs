#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! sds-bridge next to the SDS server the SPIRE agent runs itself (on its Workload API socket),
//! both asked the same requests by a raw SDS client: the names each serves, federated bundles
//! in `ROOTCA` and `ALL`, several names in one request, unknown names, JWT-SVIDs as generic
//! secrets, Delta, NACKs and what a rotation pushes. Every difference asserted here is written
//! down in docs/spire.md, with the SPIRE source behind it.
//!
//! This test process asks SPIRE's SDS itself, so it is registered as a workload (its own
//! executable's path), with the same SPIFFE ID as the bridge: both serve the same identity.

use std::path::Path;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{Secret, secret};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use prost::Message as _;
use suite_tests::sds::SdsBridge;
use suite_tests::spire::{ServerOptions, Spire};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Streaming};
use workload_client::{Endpoint, lazy_channel};

const TD: &str = "example.org";
const PARTNER: &str = "spiffe://partner.org";
const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

fn request(names: &[&str], version: &str, nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        version_info: version.to_owned(),
        resource_names: names.iter().map(|n| (*n).to_owned()).collect(),
        type_url: SECRET.to_owned(),
        response_nonce: nonce.to_owned(),
        ..Default::default()
    }
}

/// A secret as `name kind`: `cert`, `generic`, `trusted_ca`, or `spiffe[<trust domains>]`.
fn describe(s: &Secret) -> String {
    let kind = match &s.r#type {
        Some(secret::Type::TlsCertificate(_)) => "cert".to_owned(),
        Some(secret::Type::GenericSecret(_)) => "generic".to_owned(),
        Some(secret::Type::ValidationContext(v)) => match &v.custom_validator_config {
            Some(c) => {
                use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::SpiffeCertValidatorConfig;
                let config = SpiffeCertValidatorConfig::decode(
                    c.typed_config.as_ref().unwrap().value.as_slice(),
                )
                .unwrap();
                let mut tds: Vec<String> =
                    config.trust_domains.into_iter().map(|t| t.name).collect();
                tds.sort();
                format!("spiffe[{}]", tds.join(","))
            }
            None => "trusted_ca".to_owned(),
        },
        _ => "other".to_owned(),
    };
    format!("{} {kind}", s.name)
}

/// The secrets of a response, described and sorted.
fn secrets(r: &DiscoveryResponse) -> Vec<String> {
    let mut v: Vec<String> = r
        .resources
        .iter()
        .map(|a| describe(&Secret::decode(a.value.as_slice()).unwrap()))
        .collect();
    v.sort();
    v
}

fn client(socket: &Path) -> SecretDiscoveryServiceClient<Channel> {
    SecretDiscoveryServiceClient::new(lazy_channel(&Endpoint::Unix(socket.to_path_buf())))
}

/// `FetchSecrets` for `names`: the secrets, or the status code.
async fn fetch(
    sds: &mut SecretDiscoveryServiceClient<Channel>,
    names: &[&str],
) -> Result<Vec<String>, Code> {
    fetch_as(sds, request(names, "", "")).await
}

async fn fetch_as(
    sds: &mut SecretDiscoveryServiceClient<Channel>,
    req: DiscoveryRequest,
) -> Result<Vec<String>, Code> {
    sds.fetch_secrets(req)
        .await
        .map(|r| secrets(&r.into_inner()))
        .map_err(|s| s.code())
}

/// The next message of a stream within 10 s: a response, or the status the stream ended with.
async fn next(responses: &mut Streaming<DiscoveryResponse>) -> Result<DiscoveryResponse, Code> {
    match tokio::time::timeout(Duration::from_secs(10), responses.message())
        .await
        .expect("a message within 10 s")
    {
        Ok(Some(r)) => Ok(r),
        Ok(None) => Err(Code::Ok),
        Err(status) => Err(status.code()),
    }
}

/// Opens a stream with `first`; a stream the server ends before its first response (with
/// the status in the response headers) is that status.
async fn stream(
    sds: &mut SecretDiscoveryServiceClient<Channel>,
    first: DiscoveryRequest,
) -> Result<(mpsc::Sender<DiscoveryRequest>, Streaming<DiscoveryResponse>), Code> {
    let (tx, rx) = mpsc::channel(8);
    tx.send(first).await.unwrap();
    let responses = sds
        .stream_secrets(ReceiverStream::new(rx))
        .await
        .map_err(|s| s.code())?
        .into_inner();
    Ok((tx, responses))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sds_bridge_and_spires_own_sds_serve_the_same_names_and_differ_where_documented() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let options = ServerOptions {
        oidc: false,
        ..ServerOptions::new(TD)
    };
    let spire = tokio::task::block_in_place(|| Spire::start(dir, &options));
    // partner.org's bundle, as a federation relationship would bring it, and both workloads
    // federated with it.
    let partner = suite_tests::aws::TestCa::new();
    let partner_pem = dir.join("partner.pem");
    std::fs::write(&partner_pem, &partner.ca_pem).unwrap();
    spire.server.cli(&[
        "bundle",
        "set",
        "-id",
        PARTNER,
        "-path",
        partner_pem.to_str().unwrap(),
        "-format",
        "pem",
    ]);
    let web = spire.id("web");
    // SVIDs of 12 s: renewed every second or two, so the rotation pushes below come quickly.
    let entry = ["-federatesWith", PARTNER, "-x509SVIDTTL", "12"];
    spire.register(&std::env::current_exe().unwrap(), &web, &entry);
    let program = spire.workload_binary(dir, "sds-bridge", "sds-bridge-web", &web, &entry);
    let mut bridge = tokio::task::block_in_place(|| {
        let mut b =
            SdsBridge::start_program(&program, "sds-bridge", dir, &spire.agent.endpoint, &[], &[]);
        b.wait_ready(Duration::from_secs(60));
        b
    });
    let mut on_spire = client(&spire.agent.socket);
    let mut on_bridge = client(&bridge.socket);
    // Both have the SVID and the federated bundle.
    for sds in [&mut on_spire, &mut on_bridge] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while fetch(sds, &["ALL"]).await
            != Ok(vec!["ALL spiffe[example.org,partner.org]".to_owned()])
        {
            assert!(tokio::time::Instant::now() < deadline, "federated bundle");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // The same answer from both.
    let cert = |name: &str| vec![format!("{name} cert")];
    let same: [(&[&str], Vec<String>); 6] = [
        (&["default"], cert("default")),
        (&[&web], cert(&web)),
        (&["ROOTCA"], vec!["ROOTCA spiffe[example.org]".to_owned()]),
        (
            &["ALL"],
            vec!["ALL spiffe[example.org,partner.org]".to_owned()],
        ),
        (
            &["spiffe://example.org"],
            vec!["spiffe://example.org spiffe[example.org]".to_owned()],
        ),
        (&[PARTNER], vec![format!("{PARTNER} spiffe[partner.org]")]),
    ];
    for (names, want) in same {
        assert_eq!(
            fetch(&mut on_spire, names).await,
            Ok(want.clone()),
            "SPIRE {names:?}"
        );
        assert_eq!(
            fetch(&mut on_bridge, names).await,
            Ok(want),
            "bridge {names:?}"
        );
    }
    // Envoy's `disable_spiffe_cert_validation` node metadata: plain `trusted_ca` from both.
    let mut node_off = request(&["ROOTCA"], "", "");
    node_off.node = Some(Node {
        metadata: Some(serde_json_struct(
            &serde_json::json!({"disable_spiffe_cert_validation": true}),
        )),
        ..Default::default()
    });
    for sds in [&mut on_spire, &mut on_bridge] {
        assert_eq!(
            fetch_as(sds, node_off.clone()).await,
            Ok(vec!["ROOTCA trusted_ca".to_owned()])
        );
    }

    // No names (an xDS wildcard): every bundle and SVID under its canonical name, from both.
    let mut everything = vec![
        "spiffe://example.org spiffe[example.org]".to_owned(),
        format!("{web} cert"),
        format!("{PARTNER} spiffe[partner.org]"),
    ];
    everything.sort();
    assert_eq!(fetch(&mut on_spire, &[]).await, Ok(everything.clone()));
    assert_eq!(fetch(&mut on_bridge, &[]).await, Ok(everything));

    // Where they differ.
    // Two bundle names in one request: SPIRE serves one of the own bundle's names per request.
    assert_eq!(
        fetch(&mut on_spire, &["ROOTCA", "ALL"]).await,
        Err(Code::InvalidArgument)
    );
    assert_eq!(
        fetch(&mut on_bridge, &["ROOTCA", "ALL"]).await,
        Ok(vec![
            "ALL spiffe[example.org,partner.org]".to_owned(),
            "ROOTCA spiffe[example.org]".to_owned()
        ])
    );
    // `default` and the SVID's own name together: SPIRE gives the first SVID one name only.
    assert_eq!(
        fetch(&mut on_spire, &["default", &web]).await,
        Err(Code::InvalidArgument)
    );
    let mut both = vec!["default cert".to_owned(), format!("{web} cert")];
    both.sort();
    assert_eq!(fetch(&mut on_bridge, &["default", &web]).await, Ok(both));
    // An unknown name: SPIRE refuses the whole request, the bridge answers NotFound naming it.
    assert_eq!(
        fetch(&mut on_spire, &["default", "nope"]).await,
        Err(Code::InvalidArgument)
    );
    assert_eq!(
        fetch(&mut on_bridge, &["default", "nope"]).await,
        Err(Code::NotFound)
    );
    // A JWT-SVID as a generic secret: the bridge only.
    assert_eq!(
        fetch(&mut on_spire, &["jwt-svid:backend"]).await,
        Err(Code::InvalidArgument)
    );
    assert_eq!(
        fetch(&mut on_bridge, &["jwt-svid:backend"]).await,
        Ok(vec!["jwt-svid:backend generic".to_owned()])
    );
    // `ALL` for an Envoy that turned the SPIFFE validator off: SPIRE fails the request.
    let mut all_off = node_off.clone();
    all_off.resource_names = vec!["ALL".to_owned()];
    // SPIRE fails the request; the bridge puts every bundle's CAs in one `trusted_ca` (which
    // trusts a federated CA for any SPIFFE ID: the reason the SPIFFE validator is the default).
    assert_eq!(
        fetch_as(&mut on_spire, all_off.clone()).await,
        Err(Code::Internal)
    );
    assert_eq!(
        fetch_as(&mut on_bridge, all_off).await,
        Ok(vec!["ALL trusted_ca".to_owned()])
    );
    // A reconnecting Envoy reports the version it holds: the bridge continues above it, SPIRE
    // counts each stream's versions from 1.
    let mut versions = Vec::new();
    for sds in [&mut on_spire, &mut on_bridge] {
        let (_tx, mut on) = stream(sds, request(&["default"], "7", "")).await.unwrap();
        versions.push(
            next(&mut on)
                .await
                .unwrap()
                .version_info
                .parse::<u64>()
                .unwrap(),
        );
    }
    assert!(versions[0] < 7, "SPIRE: {versions:?}");
    assert_eq!(versions[1], 8, "bridge: {versions:?}");
    // Delta: neither.
    for sds in [&mut on_spire, &mut on_bridge] {
        let (tx, rx) = mpsc::channel(1);
        tx.send(DeltaDiscoveryRequest {
            type_url: SECRET.to_owned(),
            ..Default::default()
        })
        .await
        .unwrap();
        let code = match sds.delta_secrets(ReceiverStream::new(rx)).await {
            Err(status) => status.code(),
            Ok(r) => r.into_inner().message().await.unwrap_err().code(),
        };
        assert_eq!(code, Code::Unimplemented);
    }

    // Streams. An unknown name among known ones: SPIRE ends the stream with InvalidArgument;
    // the bridge serves the others and keeps the stream.
    let unknown = request(&["default", "nope"], "", "");
    let spire_says = match stream(&mut on_spire, unknown.clone()).await {
        Ok((_tx, mut on)) => next(&mut on).await.map(|r| secrets(&r)),
        Err(code) => Err(code),
    };
    assert_eq!(spire_says, Err(Code::InvalidArgument));
    let (_tx, mut on) = stream(&mut on_bridge, unknown).await.unwrap();
    assert_eq!(
        next(&mut on).await.map(|r| secrets(&r)),
        Ok(cert("default"))
    );

    // The Istio shape: `default` and `ROOTCA`; ACK, then the next rotation's push (a NACK of
    // it), then partner.org's bundle added to the subscription.
    let istio = ["default", "ROOTCA"];
    let more = ["default", "ROOTCA", PARTNER];
    let mut seen = Vec::new();
    for sds in [&mut on_spire, &mut on_bridge] {
        let (tx, mut on) = stream(sds, request(&istio, "", "")).await.unwrap();
        let r1 = next(&mut on).await.unwrap();
        tx.send(request(&istio, &r1.version_info, &r1.nonce))
            .await
            .unwrap();
        let r2 = next(&mut on).await.unwrap();
        let mut nack = request(&istio, &r1.version_info, &r2.nonce);
        nack.error_detail = Some(RpcStatus {
            code: 13,
            message: "simulated: failed to apply".to_owned(),
            details: Vec::new(),
        });
        tx.send(nack).await.unwrap();
        tx.send(request(&more, &r1.version_info, &r2.nonce))
            .await
            .unwrap();
        // A rotation's push may cross the new subscription, which then replies to a superseded
        // response and is ignored (by both): send it again for the latest one.
        let after = loop {
            let r = next(&mut on).await.unwrap();
            let got = secrets(&r);
            if got.iter().any(|s| s.starts_with(PARTNER)) {
                break got;
            }
            tx.send(request(&more, &r.version_info, &r.nonce))
                .await
                .unwrap();
        };
        seen.push((
            secrets(&r1),
            (r1.version_info.clone(), r2.version_info.clone()),
            secrets(&r2),
            after,
        ));
    }
    eprintln!("streams (first answer, versions, rotation push, after the NACK): {seen:#?}");
    let rootca = "ROOTCA spiffe[example.org]".to_owned();
    let default = "default cert".to_owned();
    let partner = format!("{PARTNER} spiffe[partner.org]");
    let (on_spire, on_bridge) = (&seen[0], &seen[1]);
    // The first answer: both names from both.
    assert_eq!(on_spire.0, [rootca.clone(), default.clone()]);
    assert_eq!(on_bridge.0, [rootca.clone(), default.clone()]);
    // A rotation: SPIRE pushes every subscribed name, the bridge only the changed `default`.
    assert_eq!(on_spire.2, [rootca.clone(), default.clone()]);
    assert_eq!(on_bridge.2, std::slice::from_ref(&default));
    // After the NACK, the new subscription's answer: SPIRE sends every subscribed name again,
    // the rejected and unchanged `ROOTCA` included; the bridge sends the new name (and
    // `default` only if a rotation changed it meanwhile), never the unchanged `ROOTCA`.
    assert!(
        on_spire.3.contains(&rootca)
            && on_spire.3.contains(&default)
            && on_spire.3.contains(&partner),
        "{:?}",
        on_spire.3
    );
    assert!(
        on_bridge.3.contains(&partner) && !on_bridge.3.contains(&rootca),
        "{:?}",
        on_bridge.3
    );
    let log = spire.agent.proc.log();
    assert!(
        log.contains("Envoy reported errors applying secrets"),
        "SPIRE logs the NACK"
    );
    bridge.proc.assert_running();
}

/// A JSON object as a protobuf `Struct` (node metadata).
fn serde_json_struct(v: &serde_json::Value) -> envoy_types::pb::google::protobuf::Struct {
    use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
    fn value(v: &serde_json::Value) -> Value {
        let kind = match v {
            serde_json::Value::Bool(b) => Kind::BoolValue(*b),
            serde_json::Value::String(s) => Kind::StringValue(s.clone()),
            serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap()),
            _ => Kind::NullValue(0),
        };
        Value { kind: Some(kind) }
    }
    Struct {
        fields: v
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), value(v)))
            .collect(),
    }
}

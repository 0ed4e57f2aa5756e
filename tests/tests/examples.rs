#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Every file under `examples/` is checked: YAML parses (PyYAML), Envoy configurations pass
//! `envoy --mode validate` (EnvoyFilter patches inside an equivalent bootstrap), the injection
//! template only uses settings the sidecars read and probes their admin ports, the cloud and
//! Vault examples match the broker's contract, and every link and anchor of the documentation
//! (Markdown links, and `docs/<page>.md#anchor` cited anywhere in the sources) resolves.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};
use suite_tests::envoy::Envoy;
use suite_tests::{python_with, root};

fn files(dir: &str, ext: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(root().join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    out.sort();
    out
}

/// Every document of every YAML file, parsed by PyYAML.
fn yaml_docs(paths: &[PathBuf]) -> BTreeMap<String, Vec<Value>> {
    let python = python_with(&["yaml"]);
    let out = Command::new(python)
        .arg(root().join("tests/py/yaml_to_json.py"))
        .args(paths)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "YAML does not parse: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn yaml_str(text: &str, dir: &Path) -> Vec<Value> {
    let file = dir.join("embedded.yaml");
    std::fs::write(&file, text).unwrap();
    yaml_docs(&[file]).into_values().next().unwrap()
}

#[test]
fn every_example_envoy_bootstrap_validates() {
    let tmp = tempfile::tempdir().unwrap();
    let paths = files("examples/envoy", "yaml");
    let names: Vec<String> = paths
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.contains(&"credential-injector.yaml".to_owned())
            && names.contains(&"vm-mtls.yaml".to_owned()),
        "{names:?}"
    );
    yaml_docs(&paths);
    for path in paths {
        let yaml = std::fs::read_to_string(&path).unwrap();
        if let Err(out) = Envoy::validate(tmp.path(), &yaml) {
            panic!("{} does not validate:\n{out}", path.display());
        }
    }
}

/// A bootstrap (JSON is YAML) with one HTTP listener running `filters` then the router, its
/// connection manager merged with each of `hcm_merges` (the `typed_config` of an EnvoyFilter's
/// NETWORK_FILTER MERGE: top-level fields set), and `clusters`, for validating EnvoyFilter
/// patches.
fn bootstrap_with(filters: &[Value], hcm_merges: &[Value], clusters: &[Value]) -> String {
    let mut http_filters = filters.to_vec();
    http_filters.push(json!({
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
    }));
    let mut all_clusters = clusters.to_vec();
    // istio-proxy's bootstrap holds this static cluster for the SDS socket (sds-bridge's): the
    // ECDS filter asks it for its config.
    all_clusters.push(json!({
        "name": "sds-grpc", "type": "STATIC", "connect_timeout": "1s",
        "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}
        }},
        "load_assignment": {"cluster_name": "sds-grpc", "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"pipe": {"path": "./var/run/secrets/workload-spiffe-uds/socket"}}}}
        ]}]}
    }));
    all_clusters.push(json!({
        "name": "app", "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": {"cluster_name": "app", "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 8080}}}}
        ]}]}
    }));
    let mut hcm = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "sidecar",
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"],
            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "app"}}]}]},
        "http_filters": http_filters
    });
    for merge in hcm_merges {
        assert_eq!(
            merge["@type"], hcm["@type"],
            "a MERGE into the HCM: {merge}"
        );
        for (field, value) in merge.as_object().unwrap() {
            hcm[field] = value.clone();
        }
    }
    json!({
        // As istio-proxy's: an xDS subscription (the ECDS filter's) needs both.
        "node": {"id": "sidecar~10.0.0.1~backend.default~default.svc.cluster.local", "cluster": "backend.default"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [{
                "name": "sidecar",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": 15006}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": hcm
                }]}]
            }],
            "clusters": all_clusters
        }
    })
    .to_string()
}

#[test]
fn istio_examples_parse_and_envoy_filter_patches_validate() {
    let tmp = tempfile::tempdir().unwrap();
    let docs = yaml_docs(&files("examples/istio", "yaml"));
    let mut filters_checked = 0;
    for (path, docs) in &docs {
        for doc in docs {
            assert!(
                doc["apiVersion"].is_string() && doc["kind"].is_string(),
                "{path}: {doc}"
            );
            if doc["kind"] != "EnvoyFilter" {
                continue;
            }
            let patches = doc["spec"]["configPatches"].as_array().unwrap();
            let value = |kind: &str| -> Vec<Value> {
                patches
                    .iter()
                    .filter(|p| p["applyTo"] == kind)
                    .map(|p| p["patch"]["value"].clone())
                    .collect()
            };
            let filters = value("HTTP_FILTER");
            assert!(!filters.is_empty(), "{path}: no HTTP filter patch");
            let hcm_merges: Vec<Value> = patches
                .iter()
                .filter(|p| p["applyTo"] == "NETWORK_FILTER")
                .map(|p| {
                    assert_eq!(p["patch"]["operation"], "MERGE", "{path}: {p}");
                    assert_eq!(
                        p["match"]["listener"]["filterChain"]["filter"]["name"],
                        "envoy.filters.network.http_connection_manager",
                        "{path}: {p}"
                    );
                    p["patch"]["value"]["typed_config"].clone()
                })
                .collect();
            let yaml = bootstrap_with(&filters, &hcm_merges, &value("CLUSTER"));
            if let Err(out) = Envoy::validate(tmp.path(), &yaml) {
                panic!("{path}: the patch does not validate in Envoy:\n{out}");
            }
            filters_checked += 1;
        }
    }
    assert_eq!(
        filters_checked, 5,
        "outbound injection (google_grpc over TCP, envoy_grpc over a socket), inbound validation, \
         jwt_authn over sds-bridge's JWKS and over its ECDS"
    );
}

/// The `sds-bridge jwt-authn-config` invocation the authorization examples quote.
const AUTHZ_EXAMPLE_ARGS: [&str; 12] = [
    "--trust-domain",
    "example.org",
    "--trust-domain",
    "partner.org",
    "--audience",
    "spiffe://example.org/ns/default/sa/backend",
    "--allow-spiffe-id",
    "spiffe://example.org/ns/default/sa/client",
    "--allow-spiffe-id",
    "spiffe://partner.org/ns/default/sa/client",
    "--part",
    "filters",
];

#[test]
fn authorization_examples_hold_exactly_what_the_generator_prints() {
    let tmp = tempfile::tempdir().unwrap();
    let generated = yaml_str(
        &suite_tests::sds::jwt_authn_config(&AUTHZ_EXAMPLE_ARGS),
        tmp.path(),
    )
    .remove(0);
    let generated = generated.as_array().unwrap();
    assert_eq!(generated.len(), 3, "header_mutation, jwt_authn, rbac");
    let mut local_reply_args = AUTHZ_EXAMPLE_ARGS;
    local_reply_args[AUTHZ_EXAMPLE_ARGS.len() - 1] = "local-reply";
    let local_reply = yaml_str(
        &suite_tests::sds::jwt_authn_config(&local_reply_args),
        tmp.path(),
    )
    .remove(0)["local_reply_config"]
        .clone();
    assert!(local_reply["mappers"].is_array(), "{local_reply}");

    let envoy = yaml_docs(&[root().join("examples/envoy/authz-by-spiffe-id.yaml")]);
    let bootstrap = &envoy.values().next().unwrap()[0];
    let hcm = &bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
    let filters = hcm["http_filters"].as_array().unwrap();
    assert_eq!(
        &filters[..filters.len() - 1],
        generated.as_slice(),
        "Envoy example"
    );
    assert_eq!(hcm["local_reply_config"], local_reply, "Envoy example");

    let istio = yaml_docs(&[root().join("examples/istio/envoyfilter-jwt-authn-sds-bridge.yaml")]);
    let patches = istio.values().next().unwrap()[0]["spec"]["configPatches"]
        .as_array()
        .unwrap()
        .clone();
    let values = |kind: &str| -> Vec<Value> {
        patches
            .iter()
            .filter(|p| p["applyTo"] == kind)
            .map(|p| p["patch"]["value"].clone())
            .collect()
    };
    assert_eq!(
        values("HTTP_FILTER").as_slice(),
        generated.as_slice(),
        "Istio EnvoyFilter"
    );
    let merges = values("NETWORK_FILTER");
    assert_eq!(merges.len(), 1, "Istio EnvoyFilter: one HCM merge");
    assert_eq!(
        merges[0]["typed_config"]["local_reply_config"], local_reply,
        "Istio EnvoyFilter"
    );
}

/// An EnvoyFilter's patch values of one `applyTo` kind, in order.
fn patch_values(path: &str, kind: &str) -> Vec<Value> {
    let docs = yaml_docs(&[root().join(path)]);
    docs.values().next().unwrap()[0]["spec"]["configPatches"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["applyTo"] == kind)
        .map(|p| p["patch"]["value"].clone())
        .collect()
}

/// The ECDS filter's deny-all default key, generated anew on every run: any such key does.
fn without_deny_all_key(mut filters: Vec<Value>) -> Vec<Value> {
    for filter in &mut filters {
        if let Some(providers) = filter.pointer_mut("/config_discovery/default_config/providers") {
            for provider in providers.as_object_mut().unwrap().values_mut() {
                provider["local_jwks"]["inline_string"] = json!("<deny-all key>");
            }
        }
    }
    filters
}

#[test]
fn the_istio_ecds_example_holds_exactly_what_the_generator_prints() {
    let tmp = tempfile::tempdir().unwrap();
    let path = "examples/istio/envoyfilter-jwt-authn-ecds.yaml";
    let args = [
        "--ecds",
        "--bridge-cluster",
        "sds-grpc",
        "--allow-spiffe-id",
        "spiffe://example.org/ns/default/sa/client",
        "--allow-spiffe-id",
        "spiffe://partner.org/ns/default/sa/client",
        "--part",
        "filters",
    ];
    let generated = yaml_str(&suite_tests::sds::jwt_authn_config(&args), tmp.path()).remove(0);
    let generated = without_deny_all_key(generated.as_array().unwrap().clone());
    assert_eq!(generated.len(), 3, "header_mutation, ECDS jwt_authn, rbac");
    assert_eq!(
        without_deny_all_key(patch_values(path, "HTTP_FILTER")),
        generated,
        "{path}"
    );
    assert!(
        patch_values(path, "CLUSTER").is_empty(),
        "{path}: istio-proxy's own sds-grpc cluster is the bridge's socket"
    );
    let mut local_reply_args = args;
    local_reply_args[args.len() - 1] = "local-reply";
    let local_reply = yaml_str(
        &suite_tests::sds::jwt_authn_config(&local_reply_args),
        tmp.path(),
    )
    .remove(0)["local_reply_config"]
        .clone();
    let merges = patch_values(path, "NETWORK_FILTER");
    assert_eq!(merges.len(), 1, "{path}: one HCM merge");
    assert_eq!(
        merges[0]["typed_config"]["local_reply_config"], local_reply,
        "{path}"
    );
}

#[test]
fn the_envoy_ecds_example_is_what_the_generator_prints() {
    let tmp = tempfile::tempdir().unwrap();
    let path = "examples/envoy/jwt-authn-ecds.yaml";
    let generated = yaml_str(
        &suite_tests::sds::jwt_authn_config(&[
            "--ecds",
            "--bridge-address",
            "unix:///tmp/sds-bridge/socket",
            "--allow-spiffe-id",
            "spiffe://example.org/ns/default/sa/client",
            "--allow-spiffe-id",
            "spiffe://partner.org/ns/default/sa/client",
            "--part",
            "bootstrap",
        ]),
        tmp.path(),
    )
    .remove(0);
    let example = yaml_docs(&[root().join(path)])
        .into_values()
        .next()
        .unwrap()[0]
        .clone();
    let filters = |doc: &Value| {
        without_deny_all_key(
            doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
                ["typed_config"]["http_filters"]
                .as_array()
                .unwrap()
                .clone(),
        )
    };
    assert_eq!(
        filters(&example),
        filters(&generated),
        "{path}: the filters"
    );
    let masked = |mut doc: Value| {
        doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
            ["http_filters"] = json!([]);
        doc
    };
    assert_eq!(masked(example), masked(generated), "{path}: the rest");
}

/// The string literals of a sidecar's configuration source: every variable it reads.
fn source(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap()
}

#[test]
fn injection_template_uses_only_settings_the_sidecars_read_and_probes_their_admin_ports() {
    let tmp = tempfile::tempdir().unwrap();
    let docs = yaml_docs(&[root().join("examples/istio/istio-spire-template.yaml")]);
    let istio = &docs.values().next().unwrap()[0];
    assert_eq!(istio["kind"], "Istio");
    let templates = istio["spec"]["values"]["sidecarInjectorWebhook"]["templates"]
        .as_object()
        .unwrap();
    let configs = [
        ("sds-bridge", source("sds-bridge/src/config.rs")),
        // Shared settings in config.rs, each provider's in provider/<cloud>/config.rs.
        ("iam-broker", iam_broker_settings()),
        ("jwt-auth-helper", source("jwt-auth-helper/src/config.rs")),
    ];
    let mut sidecars = 0;
    for (name, template) in templates {
        // A template is a Go template; its action-only lines (the native-sidecar guard) are
        // not YAML. tests/tests/istio_inject.rs renders the templates with Istio's injector.
        let yaml: String = template
            .as_str()
            .unwrap()
            .lines()
            .filter(|l| !(l.trim_start().starts_with("{{") && l.trim_end().ends_with("}}")))
            .map(|l| format!("{l}\n"))
            .collect();
        let spec = &yaml_str(&yaml, tmp.path())[0]["spec"];
        for c in spec["initContainers"].as_array().unwrap() {
            let Some(image) = c["image"].as_str() else {
                // An overlay on a container another template defines (istio-proxy's volume
                // mount, or the helper's socket in `spire-uds`): what it sets must still be read.
                if c["name"] == "envoy-jwt-auth-helper" {
                    for env in c["env"].as_array().unwrap() {
                        let var = env["name"].as_str().unwrap();
                        assert!(
                            configs[2].1.contains(&format!("\"{var}\"")),
                            "{name}: {var}"
                        );
                    }
                }
                continue;
            };
            let (_, config) = configs
                .iter()
                .find(|(n, _)| image.contains(&format!("/{n}:")))
                .unwrap_or_else(|| panic!("{name}: unknown image {image}"));
            sidecars += 1;
            assert_eq!(c["restartPolicy"], "Always", "{image}: a native sidecar");
            let mut admin_port = None;
            for env in c["env"].as_array().unwrap() {
                let var = env["name"].as_str().unwrap();
                assert!(
                    config.contains(&format!("\"{var}\"")),
                    "{name}/{image}: the sidecar does not read {var}"
                );
                if var.ends_with("_ADMIN_LISTEN") {
                    let addr: std::net::SocketAddr =
                        env["value"].as_str().unwrap().parse().unwrap();
                    admin_port = Some(addr.port());
                }
            }
            let port = admin_port.unwrap_or_else(|| panic!("{image}: admin listen not set"));
            for probe in ["readinessProbe", "livenessProbe"] {
                assert_eq!(
                    c[probe]["httpGet"]["port"].as_u64(),
                    Some(u64::from(port)),
                    "{image}: {probe} on the admin port"
                );
            }
            assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
            assert!(
                c["resources"]["requests"]["memory"].is_string(),
                "{image}: requests"
            );
            assert_eq!(c["securityContext"]["runAsNonRoot"], true, "{image}");
        }
    }
    assert_eq!(
        sidecars, 7,
        "sds-bridge, iam-broker, jwt-auth-helper, the validator, and the broker's azure, gcp and vault variants"
    );
    assert!(
        templates["spire"].as_str().unwrap().contains("args: [aws]"),
        "the broker runs the aws provider, as in the Istio deployment it replaces"
    );
    for (variant, args) in [
        ("spire-azure", "args: [azure]"),
        ("spire-gcp", "args: [gcp]"),
        ("spire-vault", "args: [vault]"),
    ] {
        let t = templates[variant].as_str().unwrap();
        assert!(t.contains(args), "{variant}");
        // The same container name as in `spire`: Istio's merge replaces the aws broker.
        assert!(t.contains("- name: spiffe-iam-broker\n"), "{variant}");
    }
}

#[test]
fn aws_examples_match_the_broker_contract() {
    let docs = yaml_docs(&[root().join("examples/aws/aws-config.yaml")]);
    let config = docs.values().next().unwrap()[0]["data"]["config"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        config.contains("credential_process = curl -sf http://localhost:9876/v1/creds"),
        "{config}"
    );
    let policy: Value =
        serde_json::from_str(&source("examples/aws/iam-trust-policy.json")).unwrap();
    let statement = &policy["Statement"][0];
    assert_eq!(statement["Action"], "sts:AssumeRoleWithWebIdentity");
    let conditions = statement["Condition"]["StringEquals"].as_object().unwrap();
    assert!(conditions.keys().any(|k| k.ends_with(":aud")));
    assert!(
        conditions
            .iter()
            .any(|(k, v)| k.ends_with(":sub") && v.as_str().unwrap().starts_with("spiffe://"))
    );
}

#[test]
fn azure_and_gcp_examples_match_the_broker_contract() {
    // Entra's federated credential: what iam-broker azure's assertion carries.
    let fic: Value =
        serde_json::from_str(&source("examples/azure/federated-credential.json")).unwrap();
    assert!(fic["issuer"].as_str().unwrap().starts_with("https://"));
    assert!(fic["subject"].as_str().unwrap().starts_with("spiffe://"));
    assert_eq!(fic["audiences"], json!(["api://AzureADTokenExchange"]));
    assert!(
        source("iam-broker/src/provider/azure/config.rs")
            .contains("\"api://AzureADTokenExchange\"")
    );

    // The pool provider: its name is the broker's --audience, and it maps the subject.
    let docs = yaml_docs(&[root().join("examples/gcp/workload-identity-pool-provider.yaml")]);
    let provider = &docs.values().next().unwrap()[0];
    let name = provider["name"].as_str().unwrap();
    let audience = format!("//iam.googleapis.com/{name}");
    assert_eq!(provider["oidc"]["allowedAudiences"], json!([audience]));
    assert_eq!(
        provider["attributeMapping"]["google.subject"],
        "assertion.sub"
    );
    let template = source("examples/istio/istio-spire-template.yaml");
    assert!(template.contains(&format!("gcp.spiffe.io/pool-provider: {audience}")));
}

#[test]
fn vault_examples_match_the_broker_contract() {
    // The role: `sub` bound to a SPIFFE ID, `aud` the broker's default audience, renewable
    // (service) tokens.
    let role: Value = serde_json::from_str(&source("examples/vault/role-web.json")).unwrap();
    assert_eq!(role["role_type"], "jwt");
    assert_eq!(role["user_claim"], "sub");
    assert!(
        role["bound_subject"]
            .as_str()
            .unwrap()
            .starts_with("spiffe://")
    );
    assert_eq!(role["bound_audiences"], json!(["vault"]));
    assert!(
        source("iam-broker/src/provider/vault/config.rs")
            .contains("DEFAULT_AUDIENCE: &str = \"vault\"")
    );
    assert_eq!(role["token_type"], "service");
    // JWT auth trusts an https OIDC discovery issuer.
    let config: Value =
        serde_json::from_str(&source("examples/vault/jwt-auth-config.json")).unwrap();
    assert!(
        config["oidc_discovery_url"]
            .as_str()
            .unwrap()
            .starts_with("https://")
    );
    assert_eq!(config["bound_issuer"], config["oidc_discovery_url"]);
    // The setup script uses exactly these files, and the policy the role names.
    let setup = source("examples/vault/setup.sh");
    for needle in [
        "auth/jwt/config @jwt-auth-config.json",
        "auth/jwt/role/web @role-web.json",
        "policy write web-kv-read policy-web-kv-read.hcl",
    ] {
        assert!(setup.contains(needle), "setup.sh: {needle}");
    }
    assert_eq!(role["token_policies"], json!(["web-kv-read"]));
    // The template's proxy listens where VAULT_ADDR=http://127.0.0.1:8200 finds it.
    let template = source("examples/istio/istio-spire-template.yaml");
    assert!(template.contains("VAULT_ADDR=http://127.0.0.1:8200"));
    assert!(
        source("iam-broker/src/provider/vault/config.rs")
            .contains("SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8200)")
    );
}

/// GitHub's heading anchor: lower case, spaces to `-`, other punctuation dropped.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The iam-broker settings sources: `config.rs` and every `provider/<cloud>/config.rs`.
fn iam_broker_settings() -> String {
    let mut text = source("iam-broker/src/config.rs");
    for entry in std::fs::read_dir(root().join("iam-broker/src/provider")).unwrap() {
        let config = entry.unwrap().path().join("config.rs");
        if config.is_file() {
            text.push_str(&std::fs::read_to_string(config).unwrap());
        }
    }
    text
}

/// The Rust sources under `dir`, recursively.
fn rust_sources(dir: &Path, text: &mut String) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_sources(&path, text);
        } else if path.extension().is_some_and(|e| e == "rs") {
            text.push_str(&std::fs::read_to_string(path).unwrap());
        }
    }
}

/// All Rust sources of the sidecars, for checking that a metric name is really exported.
fn all_sources() -> String {
    let mut text = String::new();
    for dir in [
        "sidecar-runtime/src",
        "jwt-auth-helper/src",
        "sds-bridge/src",
        "iam-broker/src",
    ] {
        rust_sources(&root().join(dir), &mut text);
    }
    text
}

#[test]
fn alerts_use_exported_metrics_and_link_existing_runbooks() {
    let docs = yaml_docs(&[root().join("examples/operations/alerts.yaml")]);
    let rules = &docs.values().next().unwrap()[0]["groups"][0]["rules"];
    let runbooks = source("examples/operations/runbooks.md");
    let anchors: Vec<String> = runbooks
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(anchor)
        .collect();
    let sources = all_sources();
    let metric = |name: &str| -> bool {
        let base = ["jwt_auth_helper_", "sds_bridge_", "iam_broker_"]
            .iter()
            .find_map(|p| name.strip_prefix(p))
            .unwrap_or(name);
        let base = ["_total", "_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| base.strip_suffix(s))
            .unwrap_or(base);
        sources.contains(&format!("\"{base}\""))
    };
    let mut alerts = 0;
    for rule in rules.as_array().unwrap() {
        let name = rule["alert"].as_str().unwrap();
        alerts += 1;
        assert!(rule["labels"]["severity"].is_string(), "{name}: severity");
        let link = rule["annotations"]["runbook"].as_str().unwrap();
        let (_, fragment) = link.split_once('#').unwrap();
        assert!(
            anchors.iter().any(|a| a == fragment),
            "{name}: no runbook section #{fragment}"
        );
        let expr = rule["expr"].as_str().unwrap();
        let names: Vec<&str> = expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| {
                ["jwt_auth_helper_", "sds_bridge_", "iam_broker_"]
                    .iter()
                    .any(|p| w.starts_with(p))
            })
            .collect();
        assert!(!names.is_empty(), "{name}: no sidecar metric in {expr}");
        for m in names {
            assert!(metric(m), "{name}: {m} is not exported by any sidecar");
        }
    }
    assert!(alerts >= 8, "alerts: {alerts}");
    for section in [
        "agent-unreachable",
        "workload-not-registered",
        "sts-accessdenied-or-invalididentitytoken",
        "clock-skew",
        "envoy-nacking-a-secret",
        "vault-login-refused-or-vault-unreachable",
    ] {
        assert!(
            anchors.iter().any(|a| a == section),
            "runbook {section} missing"
        );
    }
}

/// Every file under `dir`, recursively, leaving out build output, tool caches and hidden
/// directories.
fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            if name != "target" && !name.starts_with('.') {
                walk(&path, out);
            }
        } else {
            out.push(path);
        }
    }
}

/// The anchors GitHub gives a Markdown file: one per heading (outside code blocks; a repeated
/// one gets `-1`, `-2`, …) and every `<a id="…">`.
fn markdown_anchors(text: &str) -> Vec<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = Vec::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let heading = line.trim_start_matches('#');
        if line.starts_with('#') && heading.starts_with(' ') {
            let base = anchor(heading);
            let n = seen.entry(base.clone()).or_insert(0);
            out.push(if *n == 0 {
                base.clone()
            } else {
                format!("{base}-{n}")
            });
            *n += 1;
        }
        let mut rest = line;
        while let Some(i) = rest.find("<a id=\"") {
            rest = &rest[i + 7..];
            let end = rest.find('"').unwrap();
            out.push(rest[..end].to_owned());
            rest = &rest[end..];
        }
    }
    out
}

/// The targets of the Markdown links in `text` (`[text](target)`), outside code blocks.
fn markdown_links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let mut rest = line;
        while let Some(i) = rest.find("](") {
            rest = &rest[i + 2..];
            let end = rest.find(')').unwrap_or(rest.len());
            out.push(rest[..end].to_owned());
            rest = &rest[end..];
        }
    }
    out
}

/// Mentions of `docs/<page>.md[#anchor]` in any text: paths from the repository root, as code
/// comments, configuration files and error messages cite the documentation.
fn docs_mentions(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = text[from..].find("docs/") {
        let start = from + i;
        from = start + 5;
        let before = text[..start].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || matches!(c, '/' | '.' | '-' | '_')) {
            continue;
        }
        let len = text[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || "_./#-".contains(c)))
            .unwrap_or(text.len() - start);
        let mention = text[start..start + len].trim_end_matches('.');
        let path = mention.split('#').next().unwrap();
        if path.ends_with(".md") {
            out.push(mention.to_owned());
        }
    }
    out
}

/// Checks one link target (`path#anchor`, either part optional) against the file system and
/// the target page's anchors; `None` when it resolves.
fn broken_link(from_dir: &Path, target: &str, this_file: &Path) -> Option<String> {
    let (path, fragment) = match target.split_once('#') {
        Some((p, f)) => (p, Some(f)),
        None => (target, None),
    };
    let file = if path.is_empty() {
        this_file.to_path_buf()
    } else {
        from_dir.join(path)
    };
    if !file.exists() {
        return Some(format!("{target}: no such file"));
    }
    let fragment = fragment.filter(|f| !f.is_empty())?;
    if file.extension().is_none_or(|e| e != "md") {
        return None;
    }
    let anchors = markdown_anchors(&std::fs::read_to_string(&file).unwrap());
    (!anchors.iter().any(|a| a == fragment)).then(|| format!("{target}: no anchor #{fragment}"))
}

#[test]
fn documentation_links_and_anchors_resolve() {
    let root = root();
    let mut files = Vec::new();
    walk(&root, &mut files);
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in &files {
        let name = file.file_name().unwrap().to_string_lossy();
        let text_file = file.extension().is_some_and(|e| {
            [
                "md", "rs", "toml", "yaml", "yml", "txt", "py", "go", "java", "sh", "json", "hcl",
            ]
            .iter()
            .any(|x| e == *x)
        }) || name == "Containerfile";
        if !text_file {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        let shown = file.strip_prefix(&root).unwrap().display().to_string();
        if file.extension().is_some_and(|e| e == "md") {
            for target in markdown_links(&text) {
                let target = target.split_whitespace().next().unwrap_or("");
                if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                checked += 1;
                if let Some(why) = broken_link(file.parent().unwrap(), target, file) {
                    broken.push(format!("{shown}: {why}"));
                }
            }
        }
        for mention in docs_mentions(&text) {
            checked += 1;
            if let Some(why) = broken_link(&root, &mention, file) {
                broken.push(format!("{shown}: {why}"));
            }
        }
    }
    assert!(checked > 200, "only {checked} links found");
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

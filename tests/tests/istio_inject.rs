#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Our injection templates (`examples/istio/istio-spire-template.yaml`) put through Istio's own
//! injector and the Kubernetes API server's own pod validation, offline:
//!
//! 1. `istioctl manifest generate` renders the istiod chart from the `Istio` resource's values,
//!    as an install does: the `istio-sidecar-injector` ConfigMap (Istio's stock `sidecar`
//!    template plus ours, and the injector's values) and the mesh config;
//! 2. `istioctl kube-inject` with those files injects a plain Pod for every
//!    `inject.istio.io/templates` set we document, in each native-sidecar mode;
//! 3. `podcheck` (the API server's `ValidatePodCreate`) must accept every rendered Pod, and the
//!    Pod must start in the order our sidecars need.
//!
//! What a pod needs to start (docs/istio.md): our
//! sidecars are native (init containers, `restartPolicy: Always`), started in order, the next
//! only once sds-bridge's startup probe passed, and pilot-agent looks for sds-bridge's SDS
//! socket once, when istio-proxy starts. So istio-proxy must be a regular container
//! (`sidecar.istio.io/nativeSidecar: "false"` unless istiod has native sidecars off), our probes
//! must not be rewritten to go through it (`sidecar.istio.io/rewriteAppHTTPProbers: "false"`),
//! and their admin ports must be excluded from inbound capture. Without one of these, `spire`
//! refuses the pod and names it.
//!
//! istioctl (a pinned istio.io/istio commit) and podcheck are built into `.tools/bin` by
//! `cargo xtask istio-tools`; missing, the test fails with that command.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Value, json};
use suite_tests::{python_with, root};

/// Every document of a YAML file, parsed by PyYAML.
fn yaml_docs(path: &Path) -> Vec<Value> {
    let out = Command::new(python_with(&["yaml"]))
        .arg(root().join("tests/py/yaml_to_json.py"))
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut all: BTreeMap<String, Vec<Value>> = serde_json::from_slice(&out.stdout).unwrap();
    all.pop_first().unwrap().1
}

/// A template set as docs/istio.md documents it, and what it must add to the pod.
struct Set {
    templates: &'static str,
    /// The pod's own annotations for that provider (the templates read them by fieldRef).
    annotations: &'static [(&'static str, &'static str)],
    broker_args: &'static str,
    validator: bool,
    uds: bool,
    /// sds-bridge serves the jwt_authn config over ECDS.
    ecds: bool,
}

impl Set {
    /// Our sidecars in this set, each with its admin port (probes, metrics).
    fn sidecars(&self) -> Vec<(&'static str, u16)> {
        let mut out = vec![
            ("sds-bridge", 9012),
            ("spiffe-iam-broker", 9877),
            ("envoy-jwt-auth-helper", 9011),
        ];
        if self.validator {
            out.push(("envoy-jwt-validator", 9021));
        }
        out
    }

    fn admin_ports(&self) -> Vec<u16> {
        self.sidecars().iter().map(|(_, port)| *port).collect()
    }
}

const AWS: &[(&str, &str)] = &[
    ("spiffe.io/audience", "sts.amazonaws.com"),
    ("spiffe.io/roleArn", "arn:aws:iam::123456789012:role/web"),
];

const ECDS: &[(&str, &str)] = &[
    ("spiffe.io/audience", "sts.amazonaws.com"),
    ("spiffe.io/roleArn", "arn:aws:iam::123456789012:role/web"),
    (
        "spiffe.io/inbound-audience",
        "spiffe://example.org/ns/default/sa/backend",
    ),
    ("spiffe.io/inbound-trust-domains", "example.org,partner.org"),
];

const SETS: [Set; 7] = [
    Set {
        templates: "sidecar,spire",
        annotations: AWS,
        broker_args: "aws",
        validator: false,
        uds: false,
        ecds: false,
    },
    Set {
        templates: "sidecar,spire,spire-uds",
        annotations: AWS,
        broker_args: "aws",
        validator: false,
        uds: true,
        ecds: false,
    },
    Set {
        templates: "sidecar,spire,spire-azure",
        annotations: &[
            ("spiffe.io/audience", "api://AzureADTokenExchange"),
            (
                "azure.spiffe.io/tenant-id",
                "72f988bf-86f1-41af-91ab-2d7cd011db47",
            ),
            (
                "azure.spiffe.io/client-id",
                "0a1b2c3d-4e5f-6789-abcd-ef0123456789",
            ),
        ],
        broker_args: "azure",
        validator: false,
        uds: false,
        ecds: false,
    },
    Set {
        templates: "sidecar,spire,spire-gcp",
        annotations: &[
            ("spiffe.io/audience", "sts.googleapis.com"),
            (
                "gcp.spiffe.io/pool-provider",
                "//iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/spiffe/providers/spire",
            ),
            ("gcp.spiffe.io/project-id", "my-project"),
        ],
        broker_args: "gcp",
        validator: false,
        uds: false,
        ecds: false,
    },
    Set {
        templates: "sidecar,spire,spire-vault",
        annotations: &[
            ("spiffe.io/audience", "vault"),
            ("vault.spiffe.io/addr", "https://vault.example.com:8200"),
            ("vault.spiffe.io/role", "web"),
        ],
        broker_args: "vault",
        validator: false,
        uds: false,
        ecds: false,
    },
    Set {
        templates: "sidecar,spire,spire-validator",
        annotations: AWS,
        broker_args: "aws",
        validator: true,
        uds: false,
        ecds: false,
    },
    Set {
        templates: "sidecar,spire,spire-ecds",
        annotations: ECDS,
        broker_args: "aws",
        validator: false,
        uds: false,
        ecds: true,
    },
];

/// The injector's native-sidecar setting and the pod's annotations. Istio decides where
/// istio-proxy goes from istiod's `ENABLE_NATIVE_SIDECARS` (`kube-inject` reads it from its own
/// environment) unless the pod's `sidecar.istio.io/nativeSidecar` says otherwise.
#[derive(Clone, Copy, Debug)]
enum Mode {
    /// Istio's default from 1.27, native sidecars on; the pod opts out and sets the rest.
    NativeOptedOut,
    /// istiod with native sidecars off (`ENABLE_NATIVE_SIDECARS=false`, the default before
    /// 1.27); the pod sets the rest.
    NativeOff,
    /// Native sidecars on, no opt-out: istio-proxy would start before sds-bridge.
    NoOptOut,
    /// Probes left to Istio's rewrite: they would go through istio-proxy, not yet started.
    ProbesRewritten,
    /// Admin ports left to inbound capture: plain-HTTP probes refused under STRICT mTLS.
    PortsCaptured,
}

impl Mode {
    fn injector_native(self) -> &'static str {
        match self {
            Mode::NativeOptedOut | Mode::NoOptOut => "true",
            Mode::NativeOff | Mode::ProbesRewritten | Mode::PortsCaptured => "false",
        }
    }

    fn annotations(self, set: &Set) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if let Mode::NativeOptedOut = self {
            out.push(("sidecar.istio.io/nativeSidecar", "false".to_owned()));
        }
        if !matches!(self, Mode::ProbesRewritten) {
            out.push(("sidecar.istio.io/rewriteAppHTTPProbers", "false".to_owned()));
        }
        if !matches!(self, Mode::PortsCaptured) {
            let ports: Vec<String> = set.admin_ports().iter().map(u16::to_string).collect();
            out.push((
                "traffic.sidecar.istio.io/excludeInboundPorts",
                ports.join(","),
            ));
        }
        out
    }

    /// For a mode the templates must refuse: what the refusal must tell the pod's owner.
    fn refusal(self) -> Option<&'static str> {
        match self {
            Mode::NativeOptedOut | Mode::NativeOff => None,
            Mode::NoOptOut => Some("sidecar.istio.io/nativeSidecar: \"false\""),
            Mode::ProbesRewritten => Some("sidecar.istio.io/rewriteAppHTTPProbers: \"false\""),
            Mode::PortsCaptured => Some("traffic.sidecar.istio.io/excludeInboundPorts"),
        }
    }
}

/// The injector's three inputs, as a cluster built from our `Istio` resource would hold them.
struct Injector {
    config: PathBuf,
    values: PathBuf,
    mesh: PathBuf,
}

fn istioctl(dir: &Path, native: &str) -> Command {
    let mut cmd = Command::new(suite_tests::istio::tool("istioctl"));
    // No cluster: no kubeconfig to find, nothing to read from a home directory.
    cmd.env("HOME", dir)
        .env("KUBECONFIG", dir.join("no-cluster"))
        .env("ENABLE_NATIVE_SIDECARS", native);
    cmd
}

fn injector_from_our_istio_resource(dir: &Path) -> Injector {
    let istio = yaml_docs(&root().join("examples/istio/istio-spire-template.yaml")).remove(0);
    assert_eq!(istio["kind"], "Istio");
    // The Sail operator renders the istiod chart from `spec.values`; istioctl renders the same
    // chart from an IstioOperator's `spec.values`.
    let operator = json!({
        "apiVersion": "install.istio.io/v1alpha1",
        "kind": "IstioOperator",
        "spec": {"values": istio["spec"]["values"]},
    });
    let file = dir.join("istio-operator.json");
    std::fs::write(&file, operator.to_string()).unwrap();
    let out = istioctl(dir, "true")
        .args(["manifest", "generate", "-f"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "manifest generate: {}", text(&out));
    let manifests = dir.join("manifests.yaml");
    std::fs::write(&manifests, &out.stdout).unwrap();
    let manifests = yaml_docs(&manifests);
    let config_map = |name: &str| -> Value {
        manifests
            .iter()
            .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no ConfigMap {name} in the rendered chart"))["data"]
            .clone()
    };
    let injector = config_map("istio-sidecar-injector");
    let write = |name: &str, data: &Value| -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, data.as_str().unwrap()).unwrap();
        path
    };
    let config = write("inject-config.yaml", &injector["config"]);
    let templates = yaml_docs(&config).remove(0)["templates"].clone();
    let ours = istio["spec"]["values"]["sidecarInjectorWebhook"]["templates"]
        .as_object()
        .unwrap();
    for (name, template) in ours {
        // The chart copies each template as it is (the last one loses its final newline).
        assert_eq!(
            templates[name].as_str().map(str::trim_end),
            template.as_str().map(str::trim_end),
            "{name}: verbatim in the injector"
        );
        assert!(
            SETS.iter()
                .any(|s| s.templates.split(',').any(|t| t == name)),
            "{name}: no set renders it"
        );
    }
    assert!(templates["sidecar"].is_string(), "Istio's stock template");
    Injector {
        config,
        values: write("inject-values.json", &injector["values"]),
        mesh: write("mesh.yaml", &config_map("istio")["mesh"]),
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// What became of a pod sent to the injector.
#[derive(Debug)]
enum Injected {
    Pod(Value),
    RefusedByInjector(String),
    RejectedByApiServer(String),
}

/// `istioctl kube-inject` of a plain Pod using `set`, then the API server's validation.
fn inject(dir: &Path, injector: &Injector, set: &Set, mode: Mode) -> Injected {
    let mut annotations = json!({"inject.istio.io/templates": set.templates});
    for (k, v) in set.annotations {
        annotations[k] = json!(v);
    }
    for (k, v) in mode.annotations(set) {
        annotations[k] = json!(v);
    }
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "web",
            "namespace": "default",
            "labels": {"app": "web", "sidecar.istio.io/inject": "true"},
            "annotations": annotations,
        },
        "spec": {
            "serviceAccountName": "web",
            "containers": [{
                "name": "web",
                "image": "registry.example/web:1",
                "ports": [{"containerPort": 8080}],
            }],
        },
    });
    let name = format!("{}-{mode:?}", set.templates.replace(',', "-"));
    let input = dir.join(format!("{name}.json"));
    std::fs::write(&input, pod.to_string()).unwrap();
    let output = dir.join(format!("{name}.injected.yaml"));
    let out = istioctl(dir, mode.injector_native())
        // Without a revision, kube-inject waits for a cluster to name the default one.
        .args(["kube-inject", "--revision", "default", "-f"])
        .arg(&input)
        .arg("--injectConfigFile")
        .arg(&injector.config)
        .arg("--valuesFile")
        .arg(&injector.values)
        .arg("--meshConfigFile")
        .arg(&injector.mesh)
        .arg("-o")
        .arg(&output)
        .output()
        .unwrap();
    if !out.status.success() {
        return Injected::RefusedByInjector(text(&out));
    }
    // The API server's verdict first: it is what rejects a broken pod in a cluster.
    let check = Command::new(suite_tests::istio::tool("podcheck"))
        .arg(&output)
        .output()
        .unwrap();
    if !check.status.success() {
        return Injected::RejectedByApiServer(text(&check));
    }
    Injected::Pod(yaml_docs(&output).remove(0))
}

fn container<'a>(list: &'a Value, name: &str) -> Option<&'a Value> {
    list.as_array()?.iter().find(|c| c["name"] == name)
}

fn mounts(c: &Value, volume: &str) -> Vec<String> {
    c["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["name"] == volume)
        .map(|m| m["mountPath"].as_str().unwrap().to_owned())
        .collect()
}

/// What a running pod needs beyond being accepted; each problem found, as a sentence.
fn start_order_and_wiring(set: &Set, pod: &Value) -> Vec<String> {
    let spec = &pod["spec"];
    let (init, main) = (&spec["initContainers"], &spec["containers"]);
    let mut problems = Vec::new();
    let mut expect = |ok: bool, what: String| {
        if !ok {
            problems.push(what);
        }
    };

    // istio-proxy: one regular container, Istio's (with its image), started after every init
    // container has started.
    let proxy = container(main, "istio-proxy");
    expect(
        proxy.is_some_and(|p| p["image"].is_string()) && container(init, "istio-proxy").is_none(),
        "istio-proxy is not exactly one regular container with an image".into(),
    );

    // Ours: native sidecars, started in order before istio-proxy and the app, probed on their
    // own admin ports (Istio's rewrite would send the kubelet to istio-proxy, not yet started),
    // which istio-init leaves out of inbound capture.
    let excluded: Vec<String> = container(init, "istio-init")
        .and_then(|c| {
            let args = c["args"].as_array()?;
            let i = args.iter().position(|a| a == "-d")?;
            Some(
                args[i + 1]
                    .as_str()?
                    .split(',')
                    .map(str::to_owned)
                    .collect(),
            )
        })
        .unwrap_or_default();
    for (name, port) in set.sidecars() {
        let c = container(init, name);
        expect(
            c.is_some_and(|c| c["restartPolicy"] == "Always"),
            format!("{name} is not an init container with restartPolicy: Always"),
        );
        expect(
            container(main, name).is_none(),
            format!("{name} is also a regular container"),
        );
        for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
            let target = &c.map_or(&Value::Null, |c| &c[probe])["httpGet"]["port"];
            expect(
                target.is_null() || *target == port,
                format!("{name}'s {probe} goes to port {target}, not its admin port {port}"),
            );
        }
        expect(
            excluded.contains(&port.to_string()),
            format!("istio-init captures {name}'s admin port {port} (excluded: {excluded:?})"),
        );
    }
    let bridge = container(init, "sds-bridge");
    // The kubelet starts what follows sds-bridge only once this passes (its /startupz: an SVID
    // held), so the SDS socket is served before pilot-agent looks for it. Not /readyz: in ECDS
    // mode that waits for istio-proxy's ACK, and istio-proxy would never start.
    expect(
        bridge.is_some_and(|b| {
            b["startupProbe"]["httpGet"]["path"] == "/startupz"
                && b["startupProbe"]["httpGet"]["port"] == 9012
        }),
        "sds-bridge has no startupProbe on its own /startupz".into(),
    );
    let sds = "/var/run/secrets/workload-spiffe-uds".to_owned();
    for (name, c) in [("sds-bridge", bridge), ("istio-proxy", proxy)] {
        expect(
            c.is_some_and(|c| mounts(c, "workload-socket").contains(&sds)),
            format!("{name} does not mount workload-socket at {sds}"),
        );
    }

    let broker = container(init, "spiffe-iam-broker");
    expect(
        broker.is_some_and(|b| b["args"] == json!([set.broker_args])),
        format!("the broker does not run `{}`", set.broker_args),
    );

    if set.uds {
        let helper = container(init, "envoy-jwt-auth-helper");
        let listen = helper.and_then(|h| {
            h["env"]
                .as_array()?
                .iter()
                .find(|e| e["name"] == "SPIRE_ENVOY_JWT_HELPER_LISTEN")
        });
        expect(
            listen.is_some_and(|l| l["value"] == "unix:///var/run/spiffe-jwt/authz.sock"),
            "the helper does not listen on its socket".into(),
        );
        let dir = "/var/run/spiffe-jwt".to_owned();
        for (name, c) in [("envoy-jwt-auth-helper", helper), ("istio-proxy", proxy)] {
            expect(
                c.is_some_and(|c| mounts(c, "spiffe-jwt-authz").contains(&dir)),
                format!("{name} does not mount spiffe-jwt-authz at {dir}"),
            );
        }
        expect(
            spec["securityContext"]["fsGroup"] == 1337,
            "no fsGroup 1337 for the helper's 0660 socket".into(),
        );
    }

    if set.ecds {
        // The bridge's ECDS policy from the pod's annotations; the rest of its settings kept.
        for (variable, annotation) in [
            ("SDS_BRIDGE_ECDS_AUDIENCES", "spiffe.io/inbound-audience"),
            (
                "SDS_BRIDGE_ECDS_TRUST_DOMAINS",
                "spiffe.io/inbound-trust-domains",
            ),
            ("SDS_BRIDGE_ALLOW_JWT_AUDIENCES", "spiffe.io/audience"),
        ] {
            let from =
                bridge.and_then(|b| b["env"].as_array()?.iter().find(|e| e["name"] == variable));
            let path = format!("metadata.annotations['{annotation}']");
            expect(
                from.is_some_and(|e| e["valueFrom"]["fieldRef"]["fieldPath"] == path.as_str()),
                format!("sds-bridge's {variable} is not read from {annotation}"),
            );
        }
    }
    problems
}

#[test]
fn every_template_set_injects_a_pod_the_api_server_accepts_and_that_starts_sds_bridge_before_istio_proxy()
 {
    let tmp = tempfile::tempdir().unwrap();
    let injector = injector_from_our_istio_resource(tmp.path());
    let mut failures = Vec::new();
    for set in &SETS {
        for mode in [
            Mode::NativeOptedOut,
            Mode::NativeOff,
            Mode::NoOptOut,
            Mode::ProbesRewritten,
            Mode::PortsCaptured,
        ] {
            let what = format!("{} ({mode:?})", set.templates);
            match (inject(tmp.path(), &injector, set, mode), mode.refusal()) {
                (Injected::Pod(pod), None) => {
                    for problem in start_order_and_wiring(set, &pod) {
                        failures.push(format!("{what}: {problem}"));
                    }
                }
                (Injected::RefusedByInjector(e), Some(named)) if e.contains(named) => {}
                (Injected::RefusedByInjector(e), _) => {
                    failures.push(format!("{what}: refused: {e}"));
                }
                (Injected::RejectedByApiServer(e), _) => {
                    failures.push(format!("{what}: the API server rejects the pod:\n{e}"));
                }
                (Injected::Pod(_), Some(named)) => failures.push(format!(
                    "{what}: injected, although the pod cannot start without {named}"
                )),
            }
        }
    }
    // spire-ecds without the policy the bridge would serve is refused, naming what is missing.
    let no_policy = Set {
        annotations: AWS,
        ..SETS[SETS.len() - 1]
    };
    match inject(tmp.path(), &injector, &no_policy, Mode::NativeOptedOut) {
        Injected::RefusedByInjector(e) if e.contains("spiffe.io/inbound-audience") => {}
        other => failures.push(format!(
            "spire-ecds without spiffe.io/inbound-*: not refused naming them: {other:?}"
        )),
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));
}

//! `cargo xtask soak [--spire] [--minutes N]`: every sidecar with real Envoy, moto and the AWS
//! SDK under steady load while a chaos schedule runs, then a table of what held and what did
//! not. The test command runs a 60-second variant of each (`soak [--spire] --seconds 60`).
//!
//! `--spire` runs the same on SPIRE instead of the dev agent (see "On SPIRE" below).
//!
//! What runs, on loopback:
//! - one dev agent for the node, serving the client and the server identity, with short
//!   X.509-SVIDs (a rotation every few seconds), short JWT-SVIDs and JWT key rotation;
//! - per side an sds-bridge; the server's also serves the JWKS for `jwt_authn`;
//! - a client Envoy with two listeners, both going to the server Envoy over mTLS (certificates
//!   through SDS): one stamps the JWT-SVID through jwt-auth-helper (ext_authz, `envoy_grpc`),
//!   the other through `credential_injector` (a `jwt-svid:` secret from sds-bridge);
//! - a server Envoy checking the client certificate and the JWT-SVID (`jwt_authn` as
//!   `sds-bridge jwt-authn-config` prints it), in front of an echo server;
//! - iam-broker aws against moto behind a faultable proxy, read by a `/v1/creds` loop and by
//!   boto3 (container credentials) calling `sts get-caller-identity` in a loop;
//! - iam-broker vault in front of the suite's strict fake Vault (JWT auth checked against the
//!   agent's OIDC discovery; 8 s tokens renewed at half-life, re-login at a 24 s max TTL), read
//!   by a KV loop through its API proxy with no token of its own;
//! - iam-broker azure and gcp in front of the suite's strict Entra ID and Google STS stand-ins
//!   (40 s tokens), read through the App Service managed identity and GCE metadata endpoints.
//!
//! The chaos: the agent SIGKILLed and restarted every 30 s, every third time for longer than a
//! JWT-SVID's half-life; STS failing (5xx, throttling, slow) for 6 s every 20 s; each of the
//! seven sidecars (the helper, both bridges, the four brokers) stopped with SIGTERM and
//! restarted in turn, once each during the warm-up and then one every 100 s (a bridge's restart
//! also cuts Envoy's SDS stream); garbage written to every socket and port every few seconds.
//!
//! What it checks (exit 1 if any fails):
//! - no failed request while a valid credential existed: a failure counts as expected only
//!   inside a window where none did (agent down past the held credential's expiry, until the
//!   sidecars hold a fresh one) or where the sidecar on the path was restarting, and the table
//!   lists those windows;
//! - no request carrying an expired JWT-SVID (Envoy's "Jwt is expired") or client certificate
//!   (the `notAfter` of the certificate the server saw), except a token credential_injector
//!   still stamps inside such a window (SDS cannot take back the secret it was given);
//! - after warm-up, each sidecar's RSS grows < 10 %, and its open FDs and live tokio tasks
//!   stay flat;
//! - FetchJWTSVID calls within the bounds of the JWT caches' refresh schedule with this agent
//!   (`rates::jwt_fetch_bounds`: about one per key per half-life);
//! - each broker's successful exchanges (STS, Vault logins and renewals, Entra ID, Google STS),
//!   counted at its stand-in, between bounds derived from the lifetime the stand-in issues, the
//!   run time, the restarts and the time spent retrying (`suite_tests::rates`); its failed ones
//!   no more than the retry schedule fits into the fault windows; and the broker's own count,
//!   summed over its incarnations (read before each restart), equal to the stand-in's.
//!
//! On SPIRE (`--spire`, `suite_tests::spire`): a SPIRE server, one agent and SPIRE's OIDC
//! discovery provider (the issuer Vault, Entra ID and Google verify JWT-SVIDs through). Each
//! sidecar runs as its own workload, a link to its binary registered with its own entry
//! (`unix:path`): the helper, the client bridge and the brokers as the client's SPIFFE ID, the
//! server bridge as the server's. What differs:
//! - X.509-SVIDs of 30 s: SPIRE backdates `notBefore` by 10 s and the agent renews at half of
//!   notBefore→notAfter (± 10 %), so every ~10 s as on the dev agent; JWT-SVIDs of 12 s (not
//!   backdated). The agent hands back a JWT-SVID it cached while more than 45–55 % of its
//!   life is left, so the FetchJWTSVID bounds are SPIRE's (`rates::jwt_fetch_bounds`), counted
//!   by the agent's own Prometheus telemetry.
//! - The agent outages are SIGKILLs of the SPIRE agent, started again on its data (it keeps its
//!   SVID). The OIDC discovery provider reads keys from the server, so it keeps answering while
//!   the agent is down: the stand-ins refuse nothing then, and every failed exchange counts.
//! - The dev agent's JWT key rotation every 15 s has no SPIRE equivalent short of a CA TTL in
//!   minutes; instead an operator's forced rotations run every 120 s each (from 3 s and 6 s,
//!   while the rest of the chaos goes on): the X.509 CA (`spire-server localauthority x509 prepare`; once both Envoys hold the new CA in
//!   their validation contexts, `activate` and `taint` the old; once both Envoys present
//!   certificates from the new CA and the agent renewed its own SVID, `revoke`) and the JWT
//!   key (`localauthority jwt prepare`; once the key is in the bridge's JWKS, in SPIRE's
//!   discovery document and Envoy fetched the JWKS twice since, `activate` and `taint`; once
//!   every token signed with the old key has expired, `revoke`). Each step must be reached
//!   within 60 s, with no failed request.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use suite_tests::aws::{Broker, Fault, Moto, StsProxy, rfc3339};
use suite_tests::azure::{self, FakeEntra, FederatedCredential};
use suite_tests::envoy::{Envoy, ext_authz_filter, request, sds_secrets, static_cluster};
use suite_tests::gcp::{self, FakeGoogle};
use suite_tests::rates::{self, Bounds, Call, Interval, Run};
use suite_tests::sds::{
    SdsBridge, Shape, bootstrap, common_tls_context, credential_injector_listener,
    filtered_listener, jwt_authn_config, mtls_listener_with_filters, sds_cluster, tls_cluster,
};
use suite_tests::sidecars::JwtHelper;
use suite_tests::spire::{ServerOptions, Spire};
use suite_tests::vault::{self, FakeVault};
use suite_tests::{DevAgent, Proc, free_port, on_signal_clean_up, python_with, wait_until};

const TD: &str = "soak.example";
const CLIENT: &str = "spiffe://soak.example/ns/soak/sa/client";
const SERVER: &str = "spiffe://soak.example/ns/soak/sa/server";
const AUDIENCE: &str = "soak-backend";
/// X.509-SVID lifetime: the agent rotates at half-life, so every 10 s; a long agent outage
/// (longer than a JWT-SVID's half-life) stays shorter than the certificate held.
const X509_TTL: u64 = 20;
/// On SPIRE: `notBefore` is backdated by this much and the agent renews at half of
/// notBefore→notAfter, ± 10 % (`pkg/server/credtemplate`, `pkg/common/rotationutil`)…
const SPIRE_BACKDATE: f64 = 10.0;
/// …so 30 s SVIDs are renewed with 18–22 s left: every ~10 s, as on the dev agent.
const SPIRE_X509_TTL: u64 = 30;
/// JWT-SVID lifetime: the sidecars refresh at half-life (6 s).
const JWT_TTL: u64 = 12;
/// JWT signing key rotation at the agent.
const JWT_KEY_ROTATION: u64 = 15;
/// STS credential lifetime (the proxy rewrites moto's): the broker refreshes at half-life.
const STS_LIFETIME: u64 = 40;
/// JWT-SVID cache keys, by (SPIFFE ID, audience) pair: the helper's audience and the
/// injector's `jwt-svid:` secret are the same pair for the client (SPIRE's agent caches one
/// token for both), then each broker's (aws, vault, azure, gcp).
const JWT_KEYS: [u64; 5] = [2, 1, 1, 1, 1];
/// The forced rotations of SPIRE's local authorities: each kind every this many seconds…
const AUTHORITY_ROTATION_EVERY: f64 = 120.0;
/// …the X.509 CA's first at 3 s, the JWT key's at 6 s (so a 60 s run has both, whatever the
/// agent outage at 20 s and the STS faults hold up)…
const FIRST_X509_ROTATION: f64 = 3.0;
const FIRST_JWT_ROTATION: f64 = 6.0;
/// …each step due within this long, and none begun with less than this much of the run left.
const ROTATION_STEP_TIMEOUT: f64 = 60.0;
const ROTATION_LEAD: f64 = 28.0;
/// Access token lifetime at the Entra ID and Google STS stand-ins: a refresh every 20 s.
const CLOUD_TOKEN_LIFETIME: u64 = 40;
/// The `X-IDENTITY-HEADER` secret azure clients present.
const IDENTITY_HEADER: &str = "soak-identity-header";
const AZURE_TOKEN: &str = "/msi/token?api-version=2019-08-01&resource=https://storage.azure.com";
const GCP_TOKEN: &str = "/computeMetadata/v1/instance/service-accounts/default/token";
/// Time after a (re)start before figures count as steady.
const WARM_UP: f64 = 15.0;
/// Vault token TTL and max TTL at the fake: a renewal every 4 s, a new login every 24 s.
const VAULT_TTL: Duration = Duration::from_secs(8);
const VAULT_MAX_TTL: Duration = Duration::from_secs(24);
/// The KV v2 secret the loop reads through the vault proxy, and what it must contain.
const VAULT_SECRET: &str = "/v1/secret/data/soak/config";
const VAULT_VALUE: &str = "soak-s3cr3t";
/// The container credentials token clients present to the broker.
const CONTAINER_TOKEN: &str = "soak-container-token";
/// iam-broker's longest retry delay while it has no JWT-SVID (s).
const IDENTITY_RETRY_MAX: f64 = 2.0;
/// iam-broker's deadline for one exchange (s): an answer later than that it never sees.
const BROKER_ATTEMPT_TIMEOUT: f64 = 10.0;

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

mod chaos;
mod echo;
mod exchanges;
mod load;
mod record;
mod rotations;
mod run;
mod samples;
mod system;

use chaos::*;
use exchanges::*;
use load::*;
use record::*;
use rotations::*;
use run::*;
use samples::*;
use system::*;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut seconds = 600.0;
    let mut on_spire = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--spire" {
            on_spire = true;
            continue;
        }
        let value = it.next().and_then(|v| v.parse::<f64>().ok());
        match (a.as_str(), value) {
            ("--minutes", Some(m)) if m > 0.0 => seconds = m * 60.0,
            ("--seconds", Some(s)) if s >= 45.0 => seconds = s,
            _ => {
                eprintln!("usage: soak [--spire] [--minutes N | --seconds N (>= 45)]");
                return ExitCode::from(2);
            }
        }
    }
    let tmp = tempfile::Builder::new()
        .prefix("spiffe-soak-")
        .tempdir()
        .unwrap();
    let dir = tmp.path().to_path_buf();
    on_signal_clean_up(
        dir.clone(),
        "interrupted: stopping everything the soak started",
    );
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run(&dir, seconds, on_spire)
    }));
    match result {
        Ok(true) => {
            println!("\nsoak passed");
            ExitCode::SUCCESS
        }
        Ok(false) => {
            println!("\nsoak FAILED (see the table); logs in {}", dir.display());
            let _ = tmp.keep();
            ExitCode::FAILURE
        }
        Err(_) => {
            println!(
                "\nsoak FAILED (see the message above); logs in {}",
                dir.display()
            );
            let _ = tmp.keep();
            ExitCode::FAILURE
        }
    }
}

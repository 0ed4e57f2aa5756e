//! The steady load on every path, each request recorded as an outcome.

use super::*;

/// The paths the load takes; a failure is attributed to one.
pub(crate) const JWT_PATH: &str = "helper→mTLS→jwt_authn";
pub(crate) const INJECTOR_PATH: &str = "injector→mTLS→jwt_authn";
pub(crate) const CREDS_PATH: &str = "broker /v1/creds";
pub(crate) const SDK_PATH: &str = "boto3 get-caller-identity";
pub(crate) const VAULT_PATH: &str = "vault proxy KV read";
pub(crate) const AZURE_PATH: &str = "azure /msi/token";
pub(crate) const GCP_PATH: &str = "gcp metadata token";
/// Every path, in table order.
pub(crate) const PATHS: [&str; 7] = [
    JWT_PATH,
    INJECTOR_PATH,
    CREDS_PATH,
    SDK_PATH,
    VAULT_PATH,
    AZURE_PATH,
    GCP_PATH,
];

/// Checks one answer of the server's echo: 200, the identity `jwt_authn` put in
/// `x-spiffe-id`, and a client certificate that had not expired.
pub(crate) fn check_echo(
    record: &Shared,
    path: &'static str,
    r: Option<suite_tests::envoy::Response>,
) {
    let at = now();
    let fail = |what: String| {
        record
            .lock()
            .unwrap()
            .failures
            .push(Failure { at, path, what });
    };
    let Some(r) = r else {
        return fail("no response".into());
    };
    if r.status != 200 {
        if r.body.contains("Jwt is expired") {
            record.lock().unwrap().expired_tokens.push((at, path));
        }
        let body: String = r.body.trim().chars().take(120).collect();
        return fail(format!("{} {body}", r.status));
    }
    let Ok(echo) = serde_json::from_str::<serde_json::Value>(&r.body) else {
        return fail(format!(
            "not the echo: {}",
            r.body.chars().take(120).collect::<String>()
        ));
    };
    if echo["spiffe_id"] != CLIENT {
        return fail(format!("x-spiffe-id {}", echo["spiffe_id"]));
    }
    if echo["cert_not_after"].as_f64().is_none_or(|t| t < at - 1.0) {
        record.lock().unwrap().expired_certs += 1;
        return fail(format!(
            "client certificate notAfter {}",
            echo["cert_not_after"]
        ));
    }
    *record.lock().unwrap().ok.entry(path).or_default() += 1;
}

/// Checks one `/v1/creds` answer: 200 and an `Expiration` in the future.
pub(crate) fn check_creds(record: &Shared, r: Option<suite_tests::envoy::Response>) {
    let at = now();
    let result = r.ok_or("no response".to_owned()).and_then(|r| {
        if r.status != 200 {
            return Err(format!("{} {}", r.status, r.body.trim()));
        }
        let v: serde_json::Value = serde_json::from_str(&r.body).map_err(|e| e.to_string())?;
        // `YYYY-MM-DDTHH:MM:SSZ` (what STS, and so the broker, sends): compares as text.
        let exp = v["Expiration"].as_str().unwrap_or_default();
        if exp.get(..19).is_none_or(|e| e <= &rfc3339(at as u64)[..19]) {
            return Err(format!(
                "expired credentials handed out (Expiration {exp:?})"
            ));
        }
        Ok(())
    });
    tally(record, CREDS_PATH, at, result);
}

/// Checks one KV read through the vault proxy: 200 and the secret's value.
pub(crate) fn check_vault(record: &Shared, r: Option<suite_tests::envoy::Response>) {
    let at = now();
    let result = match r {
        None => Err("no response".to_owned()),
        Some(r) if r.status == 200 && r.body.contains(VAULT_VALUE) => Ok(()),
        Some(r) => Err(format!("{} {}", r.status, r.body.trim())),
    };
    tally(record, VAULT_PATH, at, result);
}

/// Checks one access token answer (App Service MSI or GCE metadata JSON): 200 and a token.
pub(crate) fn check_token(
    record: &Shared,
    path: &'static str,
    r: Option<suite_tests::envoy::Response>,
) {
    let at = now();
    let result = match r {
        None => Err("no response".to_owned()),
        Some(r) if r.status == 200 && r.body.contains("\"access_token\"") => Ok(()),
        Some(r) => Err(format!("{} {}", r.status, r.body.trim())),
    };
    tally(record, path, at, result);
}

pub(crate) fn tally(record: &Shared, path: &'static str, at: f64, result: Result<(), String>) {
    let mut rec = record.lock().unwrap();
    match result {
        Ok(()) => *rec.ok.entry(path).or_default() += 1,
        Err(what) => rec.failures.push(Failure { at, path, what }),
    }
}

pub(crate) fn load(
    record: &Shared,
    stop: &Arc<AtomicBool>,
    system: &System,
) -> Vec<std::thread::JoinHandle<()>> {
    let (jwt, injector, broker) = (system.jwt_port, system.injector_port, system.broker_listen);
    let (vault_proxy, azure, gcp) = (
        system.vault_broker.listen,
        system.azure_broker.listen,
        system.gcp_broker.listen,
    );
    let mut threads = Vec::new();
    for (path, port, workers) in [(JWT_PATH, jwt, 2), (INJECTOR_PATH, injector, 1)] {
        for _ in 0..workers {
            let (record, stop) = (record.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    check_echo(&record, path, request(addr(port), "GET", "/soak", &[]));
                }
            }));
        }
    }
    let (r, st) = (record.clone(), stop.clone());
    threads.push(std::thread::spawn(move || {
        while !st.load(Ordering::Relaxed) {
            check_creds(&r, request(broker, "GET", "/v1/creds", &[]));
            std::thread::sleep(Duration::from_millis(20));
        }
    }));
    let (record, stop) = (record.clone(), stop.clone());
    threads.push(std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let headers = [("X-Vault-Request", "true")];
            check_vault(&record, request(vault_proxy, "GET", VAULT_SECRET, &headers));
            let headers = [("X-IDENTITY-HEADER", IDENTITY_HEADER)];
            check_token(
                &record,
                AZURE_PATH,
                request(azure, "GET", AZURE_TOKEN, &headers),
            );
            let headers = [("Metadata-Flavor", "Google")];
            check_token(&record, GCP_PATH, request(gcp, "GET", GCP_TOKEN, &headers));
            std::thread::sleep(Duration::from_millis(20));
        }
    }));
    threads
}

/// boto3 with the container credentials provider pointed at the broker, calling moto's
/// `GetCallerIdentity` every 100 ms for `seconds`; one JSON line per call.
pub(crate) const SDK_LOOP: &str = r#"
import json, sys, time, boto3
end = time.time() + float(sys.argv[1])
out = open(sys.argv[2], "w", buffering=1)
sts = boto3.client("sts", endpoint_url=sys.argv[3], region_name="us-east-1")
while time.time() < end:
    t = time.time()
    try:
        arn = sts.get_caller_identity()["Arn"]
        out.write(json.dumps({"t": t, "ok": ":assumed-role/" in arn, "err": arn}) + "\n")
    except Exception as e:
        out.write(json.dumps({"t": t, "ok": False, "err": repr(e)[:300]}) + "\n")
    time.sleep(0.1)
"#;

pub(crate) fn sdk_loop(
    dir: &Path,
    seconds: f64,
    broker: SocketAddr,
    moto: &str,
) -> (Proc, PathBuf) {
    let python = python_with(&["boto3"]);
    let out = dir.join("sdk-loop.jsonl");
    let mut cmd = Command::new(python);
    cmd.args(["-c", SDK_LOOP, &seconds.to_string()])
        .arg(&out)
        .arg(moto)
        .env_clear()
        .env(
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            format!("http://{broker}/v1/container-creds"),
        )
        .env("AWS_CONTAINER_AUTHORIZATION_TOKEN", CONTAINER_TOKEN)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("HOME", dir);
    (Proc::spawn("boto3-loop", cmd, dir), out)
}

pub(crate) fn read_sdk_loop(record: &Shared, out: &Path) {
    let text = std::fs::read_to_string(out).unwrap_or_default();
    let mut rec = record.lock().unwrap();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["ok"].as_bool() == Some(true) {
            *rec.ok.entry(SDK_PATH).or_default() += 1;
        } else {
            rec.failures.push(Failure {
                at: v["t"].as_f64().unwrap_or(0.0),
                path: SDK_PATH,
                what: v["err"].as_str().unwrap_or("?").to_owned(),
            });
        }
    }
}

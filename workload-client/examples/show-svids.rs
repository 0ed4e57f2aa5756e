//! Fetches this workload's identities through workload-client and prints what they hold
//! (never the private key, never the full token). Used by `cargo xtask demo`.
//!
//! usage: show-svids [--socket unix:///path] [--audience AUD]
#![allow(clippy::print_stdout)]

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use workload_client::ProcessEnv;
use workload_client::{
    CacheConfig, JwtBundleWatcher, JwtKey, JwtSvidCache, TrustDomainPolicy, WorkloadApiClient,
    X509Watcher, resolve_endpoint, validate_jwt_svid,
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut socket = None;
    let mut audience = "demo-backend".to_owned();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--socket" => socket = args.next(),
            "--audience" => audience = args.next().ok_or("--audience needs a value")?,
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    let resolved = resolve_endpoint(
        socket.as_deref().map(|s| ("--socket", s)),
        None,
        &ProcessEnv,
    )?;
    println!(
        "Workload API: {} (from {})",
        resolved.endpoint, resolved.source
    );
    let client = WorkloadApiClient::new(resolved.endpoint);

    let x509 = X509Watcher::x509(client.clone());
    let ctx = tokio::time::timeout(Duration::from_secs(10), x509.first())
        .await?
        .ok_or("the agent refused the X.509 stream")?;
    let svid = ctx.default_svid();
    let (_, leaf) = x509_parser::parse_x509_certificate(svid.svid.leaf().as_bytes())?;
    println!("\nX.509-SVID");
    println!("  SPIFFE ID   {}", svid.svid.spiffe_id());
    println!("  serial      {}", leaf.raw_serial_as_string());
    println!("  issuer      {}", leaf.issuer());
    println!("  expires in  {:?}", ctx.remaining(SystemTime::now()));
    println!(
        "  bundles     {}",
        ctx.bundles()
            .iter()
            .map(|(td, b)| format!("{td} ({} CA)", b.authorities().len()))
            .collect::<Vec<_>>()
            .join(", ")
    );

    let cache = JwtSvidCache::new(client.clone(), CacheConfig::default());
    let key = JwtKey::new([audience.as_str()])?;
    let token = cache.get(&key, Duration::from_secs(10)).await?;
    let again = cache.get(&key, Duration::from_secs(10)).await?;
    let stats = cache.stats();
    let mut parts = token.token().split('.');
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = String::from_utf8(b64.decode(parts.next().unwrap_or_default())?)?;
    let claims = String::from_utf8(b64.decode(parts.next().unwrap_or_default())?)?;
    println!("\nJWT-SVID for audience {audience:?} (signature not shown)");
    println!("  header      {header}");
    println!("  claims      {claims}");
    println!(
        "  cache       second get served from cache: {} (fetches {}, hits {})",
        std::sync::Arc::ptr_eq(&token, &again),
        stats.fetches,
        stats.hits
    );

    let bundles = JwtBundleWatcher::jwt_bundles(client);
    let set = tokio::time::timeout(Duration::from_secs(10), bundles.first())
        .await?
        .ok_or("the agent refused the JWT bundle stream")?;
    let verified = validate_jwt_svid(
        token.token(),
        &audience,
        &set,
        &TrustDomainPolicy::default(),
    )?;
    println!(
        "  validated   locally against the JWT bundle: sub = {}",
        verified.spiffe_id()
    );
    match validate_jwt_svid(
        token.token(),
        "someone-else",
        &set,
        &TrustDomainPolicy::default(),
    ) {
        Err(e) => println!("  wrong aud   refused as expected: {e}"),
        Ok(_) => return Err("a wrong audience was accepted".into()),
    }
    Ok(())
}

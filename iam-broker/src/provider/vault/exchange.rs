//! Vault's JWT auth (`docs/protocols.md#vault-jwt-login`): log in with the JWT-SVID, then keep the
//! one token alive the way Vault Agent's auto-auth does
//! (`docs/protocols.md#vault-token-lifecycle`): `renew-self` when the cache's refresh point comes
//! (half-life) while the token is renewable, a new login with the current JWT-SVID when renewal is
//! refused or the renewal came back capped (the token's max TTL is near), `revoke-self` on
//! shutdown.
//!
//! Errors: 429, 5xx (503: sealed or standby) and transport failures are transient; a 400 or 403
//! on login (the role, its bound claims or the JWT refused) is a rejection carrying Vault's
//! `errors` text. The JWT-SVID goes only to the configured Vault's login path.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::Deserialize;
use time::OffsetDateTime;

use super::config::VaultConfig;
use crate::metrics::ExchangeCalls;
use crate::provider::https::{HttpsClient, Reply};
use crate::provider::{CredentialProvider, ErrorKind, Expiring, JwtSource, ProviderError};
use crate::secret::Secret;

/// Longest error text kept from Vault's answers.
const MAX_MESSAGE: usize = 300;
/// A token without a TTL (only root-like tokens) is still logged in again this often.
const NO_TTL_RELOGIN: Duration = Duration::from_secs(3600);
/// How long shutdown waits for `revoke-self`.
const REVOKE_TIMEOUT: Duration = Duration::from_secs(3);

// === VaultToken ===

/// A Vault token and when its lease ends.
#[derive(Clone)]
pub struct VaultToken {
    token: Secret,
    expires_at: OffsetDateTime,
}

impl VaultToken {
    /// The token, for the one header that carries it.
    pub fn secret(&self) -> &Secret {
        &self.token
    }
}

impl Expiring for VaultToken {
    fn expiration(&self) -> OffsetDateTime {
        self.expires_at
    }
}

impl fmt::Debug for VaultToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultToken")
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// Vault's `auth` block (login and renew-self answer with it).
#[derive(Deserialize)]
struct Auth {
    client_token: String,
    #[serde(default)]
    lease_duration: u64,
    #[serde(default)]
    renewable: bool,
}

#[derive(Deserialize)]
struct AuthReply {
    auth: Option<Auth>,
}

#[derive(Deserialize)]
struct ErrorsReply {
    #[serde(default)]
    errors: Vec<String>,
}

/// The token held between attempts, to renew it.
#[derive(Clone)]
struct Current {
    token: Secret,
    renewable: bool,
    /// The lease the login granted: a renewal granting less was capped by the max TTL.
    login_lease: u64,
    /// Renewal was capped but the new login failed: log in next time.
    login_next: bool,
}

// === VaultProvider ===

/// Logs in and renews, one attempt per [`CredentialProvider::fetch`].
pub struct VaultProvider {
    http: HttpsClient,
    config: Arc<VaultConfig>,
    jwt: JwtSource,
    calls: ExchangeCalls,
    current: Mutex<Option<Current>>,
}

impl fmt::Debug for VaultProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultProvider")
            .field("addr", &self.config.addr)
            .field("role", &self.config.role)
            .finish_non_exhaustive()
    }
}

/// How a renewal failed.
enum RenewError {
    /// Vault refused it (revoked, not renewable, expired): log in.
    Refused(String),
    /// Try again later.
    Transient(ProviderError),
}

impl VaultProvider {
    /// A provider for `config`.
    pub fn new(
        http: HttpsClient,
        config: Arc<VaultConfig>,
        jwt: JwtSource,
        calls: ExchangeCalls,
    ) -> Self {
        Self {
            http,
            config,
            jwt,
            calls,
            current: Mutex::new(None),
        }
    }

    fn held(&self) -> Option<Current> {
        self.current.lock().map(|c| c.clone()).unwrap_or(None)
    }

    fn hold(&self, current: Option<Current>) {
        if let Ok(mut c) = self.current.lock() {
            *c = current;
        }
    }

    async fn attempt(&self) -> Result<VaultToken, ProviderError> {
        if let Some(current) = self.held().filter(|c| c.renewable && !c.login_next) {
            match self.renew(&current.token).await {
                Ok(auth) if auth.lease_duration >= current.login_lease => {
                    self.calls.record("vault", "renewed");
                    return Ok(self.token(current.token.clone(), &auth));
                }
                Ok(auth) => {
                    // Capped by the max TTL: the end is near, log in now while the renewed
                    // token still serves if that fails.
                    self.calls.record("vault", "renewed");
                    tracing::info!(
                        granted_secs = auth.lease_duration,
                        "the token reached its max TTL; logging in again"
                    );
                    let renewed = self.token(current.token.clone(), &auth);
                    return match self.login().await {
                        Ok(token) => Ok(token),
                        Err(e) if auth.lease_duration > 0 => {
                            tracing::warn!(error = %e, "login failed; serving the renewed token until it ends");
                            self.hold(Some(Current {
                                login_next: true,
                                ..current
                            }));
                            Ok(renewed)
                        }
                        Err(e) => Err(e),
                    };
                }
                Err(RenewError::Refused(message)) => {
                    // The token is dead to Vault: never renew or revoke it again.
                    self.hold(None);
                    self.calls.record("vault", "renew_refused");
                    tracing::info!(reason = %message, "renewal refused; logging in again");
                }
                Err(RenewError::Transient(e)) => {
                    self.calls.record("vault", "retryable_error");
                    return Err(e);
                }
            }
        }
        self.login().await
    }

    fn token(&self, token: Secret, auth: &Auth) -> VaultToken {
        let lease = if auth.lease_duration == 0 {
            NO_TTL_RELOGIN
        } else {
            Duration::from_secs(auth.lease_duration)
        };
        VaultToken {
            token,
            expires_at: OffsetDateTime::now_utc() + lease,
        }
    }

    async fn login(&self) -> Result<VaultToken, ProviderError> {
        let result = self.login_inner().await;
        self.calls.record(
            "vault",
            match &result {
                Ok(_) => "success",
                Err(e) if e.kind == ErrorKind::Rejected => "rejected",
                Err(e) if e.kind == ErrorKind::Identity => "identity_unavailable",
                Err(_) => "retryable_error",
            },
        );
        result
    }

    async fn login_inner(&self) -> Result<VaultToken, ProviderError> {
        let svid = self.jwt.cached().await?;
        let url = format!(
            "{}/v1/auth/{}/login",
            self.config.addr, self.config.auth_mount
        );
        let body = serde_json::json!({ "role": self.config.role, "jwt": svid.token() });
        let reply = self
            .http
            .post_json_with(&url, &self.headers(None), &body)
            .await
            .map_err(|e| transient(format!("Vault login at {url}: {e}")))?;
        let auth = match reply.status {
            200 => parse_auth(&reply).map_err(|m| transient(format!("Vault login: {m}")))?,
            400 | 403 => {
                return Err(ProviderError::new(
                    ErrorKind::Rejected,
                    format!(
                        "Vault refused the login to {} as role {:?} ({}): {}",
                        self.config.auth_mount,
                        self.config.role,
                        reply.status,
                        errors_text(&reply)
                    ),
                ));
            }
            status => return Err(vault_error("Vault login", status, &reply)),
        };
        let token = Secret::new(auth.client_token.clone());
        let changed = self
            .held()
            .is_none_or(|c| c.token.expose() != token.expose());
        self.hold(Some(Current {
            token: token.clone(),
            renewable: auth.renewable,
            login_lease: auth.lease_duration,
            login_next: false,
        }));
        tracing::info!(
            lease_secs = auth.lease_duration,
            renewable = auth.renewable,
            "logged in to Vault"
        );
        if changed && let Some(path) = &self.config.token_sink {
            write_sink(path.clone(), token.clone()).await;
        }
        Ok(self.token(token, &auth))
    }

    async fn renew(&self, token: &Secret) -> Result<Auth, RenewError> {
        let url = format!("{}/v1/auth/token/renew-self", self.config.addr);
        let reply = self
            .http
            .post_json_with(&url, &self.headers(Some(token)), &serde_json::json!({}))
            .await
            .map_err(|e| RenewError::Transient(transient(format!("Vault renew-self: {e}"))))?;
        match reply.status {
            200 => parse_auth(&reply)
                .map_err(|m| RenewError::Transient(transient(format!("Vault renew-self: {m}")))),
            400 | 403 => Err(RenewError::Refused(errors_text(&reply))),
            status => Err(RenewError::Transient(vault_error(
                "Vault renew-self",
                status,
                &reply,
            ))),
        }
    }

    /// `revoke-self` of the held token, best effort (shutdown).
    pub async fn revoke(&self) {
        let Some(current) = self.held() else { return };
        let url = format!("{}/v1/auth/token/revoke-self", self.config.addr);
        let headers = self.headers(Some(&current.token));
        let empty = serde_json::json!({});
        let call = self.http.post_json_with(&url, &headers, &empty);
        match tokio::time::timeout(REVOKE_TIMEOUT, call).await {
            Ok(Ok(reply)) if reply.status < 300 => {
                tracing::info!("revoked the Vault token");
                if let Some(path) = &self.config.token_sink {
                    let _ = tokio::fs::remove_file(path).await;
                }
            }
            Ok(Ok(reply)) => tracing::warn!(
                status = reply.status,
                error = %errors_text(&reply),
                "revoking the Vault token failed; it ends with its lease"
            ),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "revoking the Vault token failed; it ends with its lease")
            }
            Err(_) => tracing::warn!("revoking the Vault token timed out; it ends with its lease"),
        }
    }

    fn headers<'a>(&'a self, token: Option<&'a Secret>) -> Vec<(&'static str, &'a str)> {
        let mut headers = vec![("x-vault-request", "true")];
        if let Some(ns) = &self.config.namespace {
            headers.push(("x-vault-namespace", ns.as_str()));
        }
        if let Some(token) = token {
            headers.push(("x-vault-token", token.expose()));
        }
        headers
    }
}

impl CredentialProvider for VaultProvider {
    type Credentials = VaultToken;

    fn name(&self) -> &'static str {
        "vault"
    }

    fn fetch(&self) -> BoxFuture<'_, Result<VaultToken, ProviderError>> {
        Box::pin(self.attempt())
    }
}

/// A provider shared with the shutdown hook (which revokes its token).
#[derive(Clone, Debug)]
pub struct SharedProvider(pub Arc<VaultProvider>);

impl CredentialProvider for SharedProvider {
    type Credentials = VaultToken;

    fn name(&self) -> &'static str {
        "vault"
    }

    fn fetch(&self) -> BoxFuture<'_, Result<VaultToken, ProviderError>> {
        self.0.fetch()
    }
}

fn transient(message: String) -> ProviderError {
    ProviderError::new(ErrorKind::Transient, message)
}

fn parse_auth(reply: &Reply) -> Result<Auth, String> {
    match serde_json::from_slice::<AuthReply>(&reply.body) {
        Ok(AuthReply { auth: Some(auth) }) if !auth.client_token.is_empty() => Ok(auth),
        Ok(_) => Err("the answer has no auth.client_token".to_owned()),
        Err(e) => Err(format!("unreadable answer: {e}")),
    }
}

/// Any status but 200/400/403: 429 and 5xx (503: sealed or standby) are transient; other codes
/// (a proxy's 404, say) mean a misconfiguration, also retried, so fixing it needs no restart.
fn vault_error(what: &str, status: u16, reply: &Reply) -> ProviderError {
    let hint = if status == 503 {
        " (sealed, or a standby without a leader)"
    } else {
        ""
    };
    transient(format!(
        "{what}: HTTP {status}{hint}: {}",
        errors_text(reply)
    ))
}

/// Vault's `errors` list on one line, bounded; never the body itself if it is not that shape
/// (it could echo a token).
fn errors_text(reply: &Reply) -> String {
    let text = match serde_json::from_slice::<ErrorsReply>(&reply.body) {
        Ok(e) if !e.errors.is_empty() => e.errors.join("; "),
        _ => "no error text".to_owned(),
    };
    let mut text = text.replace(['\n', '\r'], " ");
    if text.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

/// Writes the token to `path` (mode 0600, via a temporary file renamed into place, so a reader
/// never sees half a token). Failure is logged, not fatal: the proxy does not need the file.
async fn write_sink(path: PathBuf, token: Secret) {
    let result = tokio::task::spawn_blocking(move || {
        sidecar_runtime::private_file::write_private(&path, token.expose().as_bytes())
    })
    .await;
    match result {
        Ok(Ok(())) => tracing::debug!("token sink updated"),
        Ok(Err(e)) => tracing::warn!(error = %e, "writing the token sink failed"),
        Err(e) => tracing::warn!(error = %e, "writing the token sink failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(status: u16, body: &str) -> Reply {
        Reply {
            status,
            body: bytes::Bytes::from(body.to_owned()),
        }
    }

    #[test]
    fn errors_text_is_vaults_list_or_nothing_else() {
        assert_eq!(
            errors_text(&reply(
                400,
                r#"{"errors":["role \"x\" could not be found"]}"#
            )),
            "role \"x\" could not be found"
        );
        assert_eq!(
            errors_text(&reply(400, r#"{"errors":["a","b\nc"]}"#)),
            "a; b c"
        );
        // A body of another shape is not echoed (it might hold a token).
        assert_eq!(
            errors_text(&reply(500, r#"{"auth":{"client_token":"hvs.secret"}}"#)),
            "no error text"
        );
        assert!(
            errors_text(&reply(
                400,
                &format!(r#"{{"errors":["{}"]}}"#, "x".repeat(1000))
            ))
            .len()
                < 400
        );
    }

    #[test]
    fn a_sealed_vault_is_transient_and_says_so() {
        let e = vault_error(
            "Vault login",
            503,
            &reply(503, r#"{"errors":["Vault is sealed"]}"#),
        );
        assert_eq!(e.kind, ErrorKind::Transient);
        assert!(e.message.contains("sealed"), "{e}");
    }

    #[test]
    fn auth_blocks_parse() {
        let auth = parse_auth(&reply(
            200,
            r#"{"auth":{"client_token":"hvs.x","lease_duration":60,"renewable":true,"policies":["p"]}}"#,
        ))
        .unwrap();
        assert_eq!(auth.lease_duration, 60);
        assert!(auth.renewable);
        assert!(parse_auth(&reply(200, r#"{"auth":null}"#)).is_err());
        assert!(parse_auth(&reply(200, "not json")).is_err());
    }
}

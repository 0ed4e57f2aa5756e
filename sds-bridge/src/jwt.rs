//! JWT-SVIDs as SDS generic secrets, for Envoy's credential_injector (REFERENCE §3).
//!
//! Tokens come from workload-client's per-audience cache, the same one jwt-auth-helper uses:
//! it fetches each audience once, refreshes at half-life and wakes subscribers after every
//! fetch, so a refreshed token reaches Envoy well before the old one expires.

use std::collections::BTreeSet;

use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    GenericSecret, Secret, secret,
};
use tokio::sync::watch;
use workload_client::{JwtKey, JwtSvidCache};

use crate::catalog::{Rendered, render};
use crate::stream::JwtSource;

/// The cache plus the audience policy.
#[derive(Clone, Debug)]
pub struct JwtSecrets {
    cache: JwtSvidCache,
    /// `None`: any audience (the socket's permissions are the boundary).
    allowed: Option<BTreeSet<String>>,
}

impl JwtSecrets {
    /// Tokens from `cache`, restricted to `allowed` audiences if given.
    pub fn new(cache: JwtSvidCache, allowed: Option<BTreeSet<String>>) -> Self {
        Self { cache, allowed }
    }

    /// Wakes after every fetch attempt for `key`; the cache keeps the key while the receiver
    /// lives.
    pub fn subscribe(&self, key: &JwtKey) -> watch::Receiver<u64> {
        self.cache.subscribe(key)
    }

    /// Makes sure `key` has a token, waiting at most `max_wait` for its first fetch.
    pub async fn warm(&self, key: &JwtKey, max_wait: std::time::Duration) {
        let _ = self.cache.get(key, max_wait).await;
    }
}

impl JwtSource for JwtSecrets {
    fn allowed(&self, key: &JwtKey) -> bool {
        self.allowed
            .as_ref()
            .is_none_or(|a| key.audiences().iter().all(|aud| a.contains(aud)))
    }

    fn secret(&self, name: &str, key: &JwtKey) -> Option<Rendered> {
        self.cache
            .peek(key)
            .map(|svid| generic_secret(name, svid.token()))
    }
}

/// A generic secret named `name` holding `token` inline, as credential_injector's generic
/// credential reads it.
pub fn generic_secret(name: &str, token: &str) -> Rendered {
    render(Secret {
        name: name.to_owned(),
        r#type: Some(secret::Type::GenericSecret(GenericSecret {
            secret: Some(DataSource {
                specifier: Some(data_source::Specifier::InlineString(token.to_owned())),
                watched_directory: None,
            }),
            ..Default::default()
        })),
    })
}

//! JWT-SVIDs as SDS generic secrets, for Envoy's credential_injector
//! (`docs/protocols.md#sds-jwt-svid`).
//!
//! Tokens come from workload-client's per-audience cache, the same one jwt-auth-helper uses:
//! it fetches each audience once, refreshes at half-life and wakes subscribers after every
//! fetch, so a refreshed token reaches Envoy well before the old one expires.

use std::collections::BTreeSet;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    GenericSecret, Secret, secret,
};
use tokio::sync::watch;
use workload_client::{JwtKey, JwtSvidCache};

use crate::catalog::{Rendered, render};
use crate::limits::{KeyLimit, Refusal, Refusals};
use crate::stream::JwtSource;

/// The cache plus the audience policy and the bridge-wide key cap.
#[derive(Clone, Debug)]
pub struct JwtSecrets {
    cache: JwtSvidCache,
    /// `None`: any audience (the socket's permissions are the boundary).
    allowed: Option<BTreeSet<String>>,
    /// Every key this bridge puts in the cache is admitted here first.
    limit: Arc<KeyLimit>,
    refusals: Refusals,
}

impl JwtSecrets {
    /// Tokens from `cache`, restricted to `allowed` audiences if given, with at most
    /// `max_keys` distinct keys; refusals are counted in `refusals`.
    pub fn new(
        cache: JwtSvidCache,
        allowed: Option<BTreeSet<String>>,
        max_keys: usize,
        refusals: Refusals,
    ) -> Self {
        Self {
            cache,
            allowed,
            limit: Arc::new(KeyLimit::new(max_keys)),
            refusals,
        }
    }

    /// Wakes after every fetch attempt for `key`; the cache keeps the key while the receiver
    /// lives. `None` (counted, logged once) when the bridge already holds its maximum of keys.
    pub fn subscribe(&self, key: &JwtKey) -> Option<watch::Receiver<u64>> {
        let rx = self
            .limit
            .admit(key, &self.cache, || self.cache.subscribe(key));
        if rx.is_none() {
            self.refusals.refused(Refusal::JwtKeysTotal, 1);
        }
        rx
    }

    /// Makes sure `key` has a token, waiting at most `max_wait` for its first fetch; `false`
    /// (counted, logged once) when the bridge already holds its maximum of keys.
    pub async fn warm(&self, key: &JwtKey, max_wait: std::time::Duration) -> bool {
        // Hold a subscription while waiting, so the entry created on admission stays.
        let Some(_subscribed) = self.subscribe(key) else {
            return false;
        };
        let _ = self.cache.get(key, max_wait).await;
        true
    }

    /// The refusal counter, for the per-request limits the service enforces.
    pub fn refusals(&self) -> &Refusals {
        &self.refusals
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use workload_client::{CacheConfig, Endpoint, WorkloadApiClient};

    use super::*;

    fn key(aud: &str) -> JwtKey {
        JwtKey::new([aud]).unwrap()
    }

    #[tokio::test]
    async fn the_bridge_wide_key_cap_refuses_new_audiences_and_keeps_serving_admitted_ones() {
        // No agent: entries are created (and their fetches fail), which is all this counts.
        let client = WorkloadApiClient::new(Endpoint::Unix("/nonexistent/agent.sock".into()));
        let cache = JwtSvidCache::new(client, CacheConfig::default());
        let refusals = Refusals::default();
        let jwt = JwtSecrets::new(cache.clone(), None, 2, refusals.clone());

        let _a = jwt.subscribe(&key("a")).unwrap();
        assert!(jwt.warm(&key("b"), Duration::from_millis(10)).await);
        // Full: a third audience is refused, before it reaches the cache.
        assert!(jwt.subscribe(&key("c")).is_none());
        assert!(!jwt.warm(&key("d"), Duration::from_millis(10)).await);
        assert_eq!(cache.stats().entries.len(), 2);
        // Admitted keys are still served to any client.
        assert!(jwt.subscribe(&key("a")).is_some());
        assert!(jwt.warm(&key("b"), Duration::from_millis(10)).await);

        let mut registry = prometheus_client::registry::Registry::default();
        refusals.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(r#"refusals_total{reason="jwt_keys_total"} 2"#),
            "{text}"
        );
    }
}

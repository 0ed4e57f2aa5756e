//! The OIDC discovery documents (`docs/protocols.md#oidc-discovery`), so AWS STS, Vault or Entra
//! ID can trust JWT-SVIDs by issuer URL: the configuration served at
//! `/.well-known/openid-configuration` and the own trust domain's JWKS served at `/keys`
//! ([`crate::discovery`] serves them, following rotations).

use serde_json::{Value, json};

/// The discovery document for `issuer`.
pub fn discovery_document(issuer: &str) -> Value {
    json!({
        "issuer": issuer,
        "jwks_uri": format!("{issuer}/keys"),
        "authorization_endpoint": "",
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256", "ES256", "ES384"],
    })
}

/// The JWKS as OIDC relying parties expect it: `use` is `sig` (RFC 7517 §4.2), where the
/// Workload API's SPIFFE bundles say `jwt-svid`. SPIRE's discovery provider does the same.
pub fn oidc_jwks(jwks: &Value) -> String {
    let mut jwks = jwks.clone();
    if let Some(keys) = jwks.get_mut("keys").and_then(Value::as_array_mut) {
        for key in keys.iter_mut().filter_map(Value::as_object_mut) {
            key.insert("use".into(), Value::String("sig".into()));
        }
    }
    jwks.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_document_points_at_keys() {
        let doc = discovery_document("https://oidc.example.org");
        assert_eq!(doc["jwks_uri"], "https://oidc.example.org/keys");
        assert_eq!(doc["response_types_supported"], json!(["id_token"]));
        assert_eq!(doc["authorization_endpoint"], "");
    }

    #[test]
    fn oidc_keys_are_for_signatures() {
        let jwks = json!({"keys": [{"kid": "a", "use": "jwt-svid"}, {"kid": "b"}]});
        let out: Value = serde_json::from_str(&oidc_jwks(&jwks)).unwrap();
        assert_eq!(out["keys"][0]["use"], "sig");
        assert_eq!(out["keys"][1]["use"], "sig");
        assert_eq!(out["keys"][1]["kid"], "b");
    }
}

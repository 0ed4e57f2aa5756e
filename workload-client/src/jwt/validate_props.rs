//! Property tests for JWT-SVID header and claims parsing ([`validate_jwt_svid`]; fuzzing on stable
//! Rust). Cases come from `PROPTEST_CASES` (default 256); `cargo xtask fuzz` runs them for longer.

use std::sync::LazyLock;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use proptest::prelude::*;
use serde_json::{Value, json};
use spiffe::{JwtBundle, JwtBundleSet, TrustDomain};

use super::{MAX_TOKEN_LEN, TrustDomainPolicy, ValidationError, validate_jwt_svid};

const AUD: &str = "backend";
const KID: &str = "k1";
/// What an error may hold, in bytes: a log line, not a copy of the token.
const MAX_ERROR_LEN: usize = 1024;

struct Key {
    pair: EcdsaKeyPair,
    bundles: JwtBundleSet,
}

static KEY: LazyLock<Key> = LazyLock::new(|| {
    let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
    let point = pair.public_key().as_ref();
    let jwk = json!({"kty":"EC","crv":"P-256","kid":KID,"use":"jwt-svid",
                     "x":B64.encode(&point[1..33]),"y":B64.encode(&point[33..65])});
    let mut bundles = JwtBundleSet::new();
    bundles.add_bundle(
        JwtBundle::from_jwt_authorities(
            TrustDomain::new("example.org").unwrap(),
            json!({"keys":[jwk]}).to_string().as_bytes(),
        )
        .unwrap(),
    );
    Key { pair, bundles }
});

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// `header.claims.signature`, signed with the bundle's key whatever the header says.
fn sign(header: &str, claims: &str) -> String {
    let input = format!("{}.{}", B64.encode(header), B64.encode(claims));
    let sig = KEY
        .pair
        .sign(&SystemRandom::new(), input.as_bytes())
        .unwrap();
    format!("{input}.{}", B64.encode(sig.as_ref()))
}

fn validate(token: &str) -> Result<spiffe::JwtSvid, ValidationError> {
    validate_jwt_svid(token, AUD, &KEY.bundles, &TrustDomainPolicy::AnyWithBundle)
}

/// The error of a refused token: bounded, and never a copy of the token's signature.
fn check_refusal(token: &str, err: &ValidationError) -> Result<(), TestCaseError> {
    let text = format!("{err} {err:?}");
    prop_assert!(
        text.len() <= 2 * MAX_ERROR_LEN,
        "{} bytes: {text:.200}",
        text.len()
    );
    if let Some(sig) = token.rsplit('.').next().filter(|s| s.len() >= 16) {
        prop_assert!(
            !text.contains(sig),
            "error echoes the signature: {text:.200}"
        );
    }
    Ok(())
}

/// A header as a JSON value: the allowed ES256 with our kid, or a variation of it.
fn header() -> impl Strategy<Value = (Value, bool)> {
    let alg = prop_oneof![
        4 => Just(json!("ES256")),
        1 => prop::sample::select(vec!["none", "HS256", "RS256", "PS512", "es256", "ES512", ""])
            .prop_map(|a| json!(a)),
        1 => Just(Value::Null),
        1 => Just(json!(256)),
    ];
    let kid = prop_oneof![
        4 => Just(json!(KID)),
        1 => prop::sample::select(vec!["", "k2", "K1", "k1 "]).prop_map(|k| json!(k)),
        1 => Just(Value::Null),
        1 => Just(json!(["k1"])),
    ];
    (alg, kid, any::<bool>()).prop_map(|(alg, kid, typ)| {
        let ok = alg == json!("ES256") && kid == json!(KID);
        let mut h = json!({"alg": alg, "kid": kid});
        if typ {
            h["typ"] = json!("JWT");
        }
        (h, ok)
    })
}

/// Claims and whether they make a valid JWT-SVID for [`AUD`] in `example.org`.
fn claims() -> impl Strategy<Value = (Value, bool)> {
    let sub = prop_oneof![
        4 => "[a-z0-9]{1,8}(/[a-z0-9_-][a-z0-9._-]{0,7}){0,3}"
            .prop_map(|p| (json!(format!("spiffe://example.org/{p}")), true)),
        1 => "[a-z0-9]{1,8}".prop_map(|p| (json!(format!("spiffe://other.org/{p}")), false)),
        // The trust domain's own ID is a SPIFFE ID too: spiffe (like go-spiffe) accepts it.
        1 => Just((json!("spiffe://example.org"), true)),
        1 => prop::sample::select(vec![
            "spiffe://Example.org/x", "https://example.org/x",
            "spiffe://example.org/../x", "", "spiffe://example.org/x?y",
        ]).prop_map(|s| (json!(s), false)),
        1 => Just((json!(42), false)),
        1 => Just((Value::Null, false)),
    ];
    let aud = prop_oneof![
        3 => prop::collection::vec("[a-z]{1,8}", 0..4).prop_flat_map(|others| {
            let n = others.len();
            (Just(others), 0..=n, any::<bool>())
        }).prop_map(|(mut auds, at, with)| {
            auds.retain(|a| a != AUD);
            if with {
                auds.insert(at.min(auds.len()), AUD.to_owned());
            }
            (json!(auds), with)
        }),
        1 => Just((json!(AUD), true)),
        1 => "[a-z]{1,8}".prop_filter("not ours", |a| a != AUD).prop_map(|a| (json!(a), false)),
        1 => Just((json!([1, 2]), false)),
    ];
    // Well clear of now, so the clock moving during a case cannot flip the answer.
    let exp = prop_oneof![
        3 => (60i64..100_000).prop_map(|d| (Some(d), true)),
        1 => (60i64..100_000).prop_map(|d| (Some(-d), false)),
        1 => Just((None, false)),
    ];
    (sub, aud, exp).prop_map(|((sub, sub_ok), (aud, aud_ok), (exp, exp_ok))| {
        let mut c = json!({"sub": sub, "aud": aud, "iat": now()});
        if let Some(d) = exp {
            c["exp"] = json!(now() + d);
        }
        (c, sub_ok && aud_ok && exp_ok)
    })
}

proptest! {
    /// Header and claims parsing: a signed token validates exactly when every rule holds.
    #[test]
    fn signed_tokens_validate_exactly_when_header_and_claims_are_valid(
        (header, header_ok) in header(),
        (claims, claims_ok) in claims(),
    ) {
        let token = sign(&header.to_string(), &claims.to_string());
        match validate(&token) {
            Ok(svid) => {
                prop_assert!(header_ok && claims_ok, "accepted {header} {claims}");
                let id = svid.spiffe_id().to_string();
                prop_assert_eq!(Some(id.as_str()), claims["sub"].as_str());
            }
            Err(e) => {
                prop_assert!(!(header_ok && claims_ok), "refused {header} {claims}: {e}");
                check_refusal(&token, &e)?;
            }
        }
    }

    /// Any one-character change to a valid token is refused (the signature covers the
    /// header and claims as sent; the signature itself is checked).
    #[test]
    fn a_changed_character_is_refused(
        pos in any::<prop::sample::Index>(),
        replacement in prop::sample::select(
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ \u{e9}"
                .chars().collect::<Vec<_>>()),
    ) {
        let claims = json!({"sub": "spiffe://example.org/web", "aud": [AUD], "exp": now() + 600});
        let token = sign(&json!({"alg":"ES256","kid":KID}).to_string(), &claims.to_string());
        prop_assert!(validate(&token).is_ok());
        let mut chars: Vec<char> = token.chars().collect();
        let i = pos.index(chars.len());
        prop_assume!(chars[i] != replacement);
        chars[i] = replacement;
        let changed: String = chars.into_iter().collect();
        match validate(&changed) {
            Ok(_) => prop_assert!(false, "accepted {changed} (changed at {i})"),
            Err(e) => check_refusal(&changed, &e)?,
        }
    }

    /// Arbitrary JSON in well-formed segments, and arbitrary text: refused, never a panic.
    #[test]
    fn arbitrary_segments_are_refused_with_a_bounded_error(
        header in "(?s).{0,200}",
        claims in "(?s).{0,400}",
        sig in prop::collection::vec(any::<u8>(), 0..80),
        raw in "(?s).{0,300}",
    ) {
        let token = format!("{}.{}.{}", B64.encode(&header), B64.encode(&claims), B64.encode(&sig));
        let err = validate(&token).unwrap_err();
        check_refusal(&token, &err)?;
        let err = validate(&raw).unwrap_err();
        check_refusal(&raw, &err)?;
    }

    /// Claims of the wrong type or shape, with long attacker-chosen strings in them, signed
    /// with a trusted key: refused with an error that does not carry them.
    #[test]
    fn badly_typed_claims_are_refused_without_echoing_them(
        long in ("[a-zA-Z0-9 ]{1,40}", 2000usize..6000).prop_map(|(s, n)| s.repeat(n / s.len())),
        field in prop::sample::select(vec!["sub", "aud", "exp", "nbf", "iat"]),
        as_array in any::<bool>(),
    ) {
        let mut claims = json!({"sub": "spiffe://example.org/web", "aud": [AUD], "exp": now() + 600});
        claims[field] = if as_array { json!([long.clone()]) } else { json!(long.clone()) };
        let token = sign(&json!({"alg":"ES256","kid":KID}).to_string(), &claims.to_string());
        match validate(&token) {
            // `iat` and `nbf` are not JWT-SVID claims: their type is not checked.
            Ok(_) => prop_assert!(field == "iat" || field == "nbf", "accepted a bad {field}"),
            Err(e) => check_refusal(&token, &e)?,
        }
    }

    /// The size cap: past [`MAX_TOKEN_LEN`] nothing is decoded.
    #[test]
    fn oversized_tokens_are_refused_unparsed(extra in 1usize..4096) {
        let claims = json!({"sub": "spiffe://example.org/web", "aud": [AUD], "exp": now() + 600,
                            "pad": "x".repeat(MAX_TOKEN_LEN)});
        let mut token = sign(&json!({"alg":"ES256","kid":KID}).to_string(), &claims.to_string());
        token.push_str(&"A".repeat(extra));
        prop_assert!(token.len() > MAX_TOKEN_LEN);
        prop_assert!(matches!(validate(&token), Err(ValidationError::Malformed(_))));
    }
}

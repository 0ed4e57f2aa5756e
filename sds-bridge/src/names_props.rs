//! Property tests for SDS resource names, `jwt-svid:` included (fuzzing on stable Rust).
//! Cases come from `PROPTEST_CASES` (default 256); `cargo xtask fuzz` runs them for longer.

use proptest::prelude::*;
use workload_client::JwtKey;
use workload_client::spiffe::{SpiffeId, TrustDomain};

use super::{JWT_SVID_PREFIX, MAX_AUDIENCES, MAX_NAME_LEN, NameError, ResourceName};

fn trust_domain() -> impl Strategy<Value = String> {
    "[a-z0-9]([a-z0-9.-]{0,20}[a-z0-9])?"
}

fn spiffe_id() -> impl Strategy<Value = SpiffeId> {
    (
        trust_domain(),
        prop::collection::vec("[a-zA-Z0-9._-]{1,10}", 1..4),
    )
        .prop_filter_map("valid SPIFFE ID", |(td, segs)| {
            SpiffeId::new(format!("spiffe://{td}/{}", segs.join("/"))).ok()
        })
}

/// An audience as it may appear once decoded: anything but whitespace and control characters,
/// including the characters the scheme escapes (`%`, `,`, `;`).
fn audience() -> impl Strategy<Value = String> {
    prop_oneof![
        "[^\\s\\p{Cc}]{1,24}",
        "[a-z:/.%,;]{1,24}",
        Just("spiffe://example.org/backend".to_owned()),
    ]
}

fn resource_name() -> impl Strategy<Value = ResourceName> {
    prop_oneof![
        Just(ResourceName::DefaultSvid),
        Just(ResourceName::RootCa),
        Just(ResourceName::AllBundles),
        trust_domain().prop_filter_map("valid trust domain", |td| TrustDomain::new(&td)
            .ok()
            .map(ResourceName::TrustDomain)),
        spiffe_id().prop_map(ResourceName::Svid),
        (
            prop::collection::vec(audience(), 1..=MAX_AUDIENCES),
            prop::option::of(spiffe_id()),
        )
            .prop_map(|(auds, id)| {
                let key = JwtKey::new(auds).unwrap();
                ResourceName::JwtSvid(match id {
                    Some(id) => key.with_spiffe_id(id),
                    None => key,
                })
            }),
    ]
}

/// Names close to valid ones: fixed names in other cases, `jwt-svid:` with stray separators,
/// bad escapes, parameters, and SPIFFE URIs with odd characters.
fn near_miss() -> impl Strategy<Value = String> {
    let fixed = prop::sample::select(vec![
        "default",
        "Default",
        "ROOTCA",
        "rootca",
        "ALL",
        "all",
        "",
        "jwt-svid",
        "JWT-SVID:a",
    ])
    .prop_map(str::to_owned);
    let jwt = (
        prop::collection::vec("[a-z%,;=0-9A-F\\s]{0,10}", 0..20),
        prop::option::of(prop_oneof![
            Just(";spiffe_id=spiffe://example.org/x".to_owned()),
            Just(";spiffe_id=".to_owned()),
            Just(";spiffe_id=spiffe://example.org/x;spiffe_id=spiffe://example.org/y".to_owned()),
            Just(";other=1".to_owned()),
            "(;[a-z_]{0,10}=?[a-z:/.]{0,20})",
        ]),
    )
        .prop_map(|(auds, param)| {
            format!(
                "{JWT_SVID_PREFIX}{}{}",
                auds.join(","),
                param.unwrap_or_default()
            )
        });
    let spiffe = "spiffe://[a-zA-Z0-9.%/_:@-]{0,30}";
    prop_oneof![fixed, jwt, spiffe.prop_map(|s| s)]
}

/// What any parse result must satisfy: Ok only for names that print back to an equivalent
/// name no longer than the input (so a parsed name never holds more than was sent); errors of
/// the documented kind, with text proportional to the input.
fn check_any(input: &str) -> Result<(), TestCaseError> {
    match ResourceName::parse(input) {
        Ok(name) => {
            let printed = name.to_string();
            prop_assert!(printed.len() <= input.len(), "{input:?} -> {printed:?}");
            prop_assert_eq!(ResourceName::parse(&printed), Ok(name.clone()));
            match &name {
                ResourceName::JwtSvid(key) => {
                    prop_assert!(input.len() <= MAX_NAME_LEN);
                    prop_assert!((1..=MAX_AUDIENCES).contains(&key.audiences().len()));
                    for aud in key.audiences() {
                        prop_assert!(!aud.is_empty());
                        prop_assert!(!aud.chars().any(|c| c.is_control() || c.is_whitespace()));
                    }
                }
                // Fixed names and SPIFFE URIs are answered under the name asked for, so only
                // the canonical spelling is accepted.
                _ => prop_assert_eq!(&printed, input),
            }
        }
        Err(e) => {
            if input.starts_with(JWT_SVID_PREFIX) {
                prop_assert!(
                    matches!(e, NameError::MalformedJwtSvid(_)),
                    "{input:?}: {e:?}"
                );
            } else if !input.starts_with("spiffe://") {
                prop_assert_eq!(&e, &NameError::Unknown);
            }
            let text = e.to_string();
            prop_assert!(text.len() <= 4 * input.len() + 512, "{} bytes", text.len());
        }
    }
    Ok(())
}

proptest! {
    #[test]
    fn resource_names_round_trip_through_display(name in resource_name()) {
        let printed = name.to_string();
        prop_assert_eq!(ResourceName::parse(&printed), Ok(name));
    }

    #[test]
    fn jwt_svid_audience_order_and_duplicates_do_not_matter(
        auds in prop::collection::vec(audience(), 1..=MAX_AUDIENCES),
        shuffle in any::<prop::sample::Index>(),
    ) {
        let key = JwtKey::new(auds.clone()).unwrap();
        let printed = ResourceName::JwtSvid(key.clone()).to_string();
        // The same audiences rotated, escaped the way the name scheme documents.
        let mut rotated: Vec<String> = key.audiences().to_vec();
        let by = shuffle.index(rotated.len());
        rotated.rotate_left(by);
        rotated.push(rotated[0].clone());
        let escaped: Vec<String> = rotated
            .iter()
            .map(|a| a.replace('%', "%25").replace(',', "%2c").replace(';', "%3B"))
            .collect();
        let name = format!("{JWT_SVID_PREFIX}{}", escaped.join(","));
        prop_assume!(name.len() <= MAX_NAME_LEN && rotated.len() <= MAX_AUDIENCES);
        prop_assert_eq!(
            ResourceName::parse(&name).map(|n| n.to_string()),
            Ok(printed)
        );
    }

    #[test]
    fn near_misses_are_refused_or_well_formed(input in near_miss()) {
        check_any(&input)?;
    }

    #[test]
    fn arbitrary_text_never_panics(input in "(?s).{0,600}") {
        check_any(&input)?;
        check_any(&format!("{JWT_SVID_PREFIX}{input}"))?;
        check_any(&format!("spiffe://{input}"))?;
    }

    #[test]
    fn names_past_the_length_cap_are_refused(aud in "[a-z]{1,64}", extra in 0usize..512) {
        let long = aud.repeat(MAX_NAME_LEN / aud.len() + 1) + &"b".repeat(extra);
        let name = format!("{JWT_SVID_PREFIX}{long}");
        prop_assert!(matches!(
            ResourceName::parse(&name),
            Err(NameError::MalformedJwtSvid(_))
        ));
    }

    #[test]
    fn more_than_the_audience_cap_is_refused(
        auds in prop::collection::vec("[a-z]{1,8}", MAX_AUDIENCES + 1..MAX_AUDIENCES + 8)
    ) {
        let name = format!("{JWT_SVID_PREFIX}{}", auds.join(","));
        prop_assert!(ResourceName::parse(&name).is_err());
    }
}

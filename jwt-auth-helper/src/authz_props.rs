//! Property tests for reading the bearer token of an inbound request (the validator path;
//! fuzzing on stable Rust). The token's own parsing is fuzzed in workload-client (`jwt::validate`).

use proptest::prelude::*;

use super::bearer;

proptest! {
    #[test]
    fn bearer_returns_the_token_after_any_case_of_the_scheme(
        scheme in "[bB][eE][aA][rR][eE][rR]",
        spaces in "[ ]{1,4}",
        token in "[A-Za-z0-9._~+/=-]{1,200}",
        pad in "[ \t]{0,3}",
    ) {
        let value = format!("{pad}{scheme}{spaces}{token}{pad}");
        prop_assert_eq!(bearer(&value), Some(token.as_str()));
    }

    #[test]
    fn anything_else_is_no_token_and_a_token_is_part_of_the_value(value in "(?s).{0,300}") {
        if let Some(token) = bearer(&value) {
            prop_assert!(!token.is_empty());
            prop_assert_eq!(token, token.trim());
            prop_assert!(value.contains(token));
            let scheme = value.trim().split_once(' ').map(|(s, _)| s).unwrap_or_default();
            prop_assert!(scheme.eq_ignore_ascii_case("bearer"), "{value:?}");
        }
    }
}

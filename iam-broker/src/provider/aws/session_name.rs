//! `RoleSessionName` from the workload's SPIFFE ID (`docs/protocols.md#aws-sts`).
//!
//! STS allows 2–64 characters of `[\w+=,.@-]` (ASCII). The name shows up in the assumed-role
//! ARN and in CloudTrail, so it should say which workload acted, and two workloads must never
//! share one. The derivation:
//!
//! 1. drop the `spiffe://` scheme;
//! 2. map `/` to `@` (`spiffe://example.org/ns/default/sa/web` →
//!    `example.org@ns@default@sa@web`). A valid SPIFFE ID contains only `[a-z0-9._-]` in its
//!    trust domain and `[A-Za-z0-9._-]` in its path, so for those this step is one-to-one;
//! 3. replace any other character outside the STS alphabet with `-`;
//! 4. if step 3 changed anything, the input already held an `@`, the result is shorter than 2
//!    or longer than 64 characters, keep the first 53 characters and append `-` and 10 hex
//!    digits of SHA-256 over the *original* input. Distinct inputs then stay distinct (up to a
//!    40-bit hash collision) while the name stays readable.
//!
//! Deterministic: the same SPIFFE ID always gives the same name, on every node.

use std::fmt;

/// Shortest name STS accepts.
pub const MIN_LEN: usize = 2;
/// Longest name STS accepts.
pub const MAX_LEN: usize = 64;
/// Hex digits of the disambiguating hash.
const HASH_HEX: usize = 10;

/// A valid `RoleSessionName`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SessionName(String);

impl SessionName {
    /// Derives the name for `spiffe_id` (any string is accepted; see the module docs).
    pub fn derive(spiffe_id: &str) -> Self {
        let rest = spiffe_id.strip_prefix("spiffe://").unwrap_or(spiffe_id);
        // An `@` in the input would make `/`→`@` ambiguous: hash it.
        let mut lossy = rest.contains('@');
        let mut readable = String::with_capacity(rest.len());
        for c in rest.chars() {
            match c {
                '/' => readable.push('@'),
                c if is_allowed(c) => readable.push(c),
                _ => {
                    readable.push('-');
                    lossy = true;
                }
            }
        }
        if !lossy && (MIN_LEN..=MAX_LEN).contains(&readable.len()) {
            return Self(readable);
        }
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, spiffe_id.as_bytes());
        let hash: String = digest
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
            .chars()
            .take(HASH_HEX)
            .collect();
        // `readable` is ASCII by construction, so byte truncation is char truncation.
        readable.truncate(MAX_LEN - 1 - HASH_HEX);
        if readable.is_empty() {
            readable.push_str("spiffe");
        }
        Self(format!("{readable}-{hash}"))
    }

    /// Checks a name given by the operator (`--session-name`): no rewriting, an error instead.
    pub fn parse(name: &str) -> Result<Self, String> {
        if !(MIN_LEN..=MAX_LEN).contains(&name.len()) {
            return Err(format!(
                "must be {MIN_LEN} to {MAX_LEN} characters (has {})",
                name.chars().count()
            ));
        }
        if let Some(bad) = name.chars().find(|c| !is_allowed(*c)) {
            return Err(format!(
                "character {bad:?} is not allowed (STS accepts letters, digits and _+=,.@-)"
            ));
        }
        Ok(Self(name.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// STS's `[\w+=,.@-]`, ASCII only.
fn is_allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '=' | ',' | '.' | '@' | '-')
}

impl fmt::Display for SessionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SessionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn valid(name: &str) -> bool {
        SessionName::parse(name).is_ok()
    }

    #[test]
    fn derivation_table() {
        let long_path = format!("spiffe://example.org/{}", "segment/".repeat(20));
        let exactly_64 = format!("spiffe://example.org/{}", "a".repeat(64 - 12));
        let one_more = format!("{exactly_64}a");
        // (input, expected name, or None where only the shape is checked)
        let exactly_64_name = exactly_64[9..].replace('/', "@");
        let cases: &[(&str, Option<&str>)] = &[
            (
                "spiffe://example.org/ns/default/sa/web",
                Some("example.org@ns@default@sa@web"),
            ),
            ("spiffe://example.org", Some("example.org")),
            ("spiffe://td.example/a_b-c.d", Some("td.example@a_b-c.d")),
            // Exactly 64 characters after mapping: kept whole; one more: truncated + hash.
            (&exactly_64, Some(&exactly_64_name)),
            (&one_more, None),
            (&long_path, None),
            // Odd characters (not valid in a SPIFFE ID, but never passed through).
            ("spiffe://example.org/ns/my app/sa/x*y", None),
            ("spiffe://example.org/ünïcødé/ワークロード", None),
            ("spiffe://example.org/has@at", None),
            // Too short, empty.
            ("spiffe://a", None),
            ("", None),
        ];
        for (input, want) in cases {
            let got = SessionName::derive(input);
            let s = got.as_str();
            assert!(valid(s), "{input:?} -> {s:?} is not a valid session name");
            assert_eq!(SessionName::derive(input), got, "deterministic");
            match want {
                Some(w) => assert_eq!(s, *w, "{input:?}"),
                None => {
                    let (readable, hash) = s.rsplit_once('-').unwrap();
                    assert_eq!(hash.len(), HASH_HEX, "{input:?} -> {s:?}");
                    assert!(hash.chars().all(|c| c.is_ascii_hexdigit()));
                    assert!(!readable.is_empty());
                    assert!(s.len() <= MAX_LEN);
                }
            }
        }
        // Readable prefixes are kept.
        assert!(
            SessionName::derive(&long_path)
                .as_str()
                .starts_with("example.org@segment@segment@")
        );
        assert!(
            SessionName::derive("spiffe://example.org/ns/my app")
                .as_str()
                .starts_with("example.org@ns@my-app-")
        );
    }

    #[test]
    fn distinct_ids_get_distinct_names() {
        let prefix = format!("spiffe://example.org/{}", "x".repeat(60));
        let inputs = [
            format!("{prefix}/a"),
            format!("{prefix}/b"),
            "spiffe://example.org/ns/my app".to_owned(),
            "spiffe://example.org/ns/my-app".to_owned(),
            "spiffe://example.org/ns/my_app".to_owned(),
            "spiffe://example.org/a@b".to_owned(),
            "spiffe://example.org/a/b".to_owned(),
            "spiffe://example.org/é".to_owned(),
            "spiffe://example.org/è".to_owned(),
        ];
        let names: HashSet<String> = inputs
            .iter()
            .map(|i| SessionName::derive(i).as_str().to_owned())
            .collect();
        assert_eq!(names.len(), inputs.len(), "{names:?}");
    }

    #[test]
    fn operator_names_are_checked_not_rewritten() {
        assert!(valid("ci-runner@example.org"));
        assert!(SessionName::parse("a").unwrap_err().contains("2 to 64"));
        assert!(SessionName::parse(&"a".repeat(65)).is_err());
        assert!(SessionName::parse("has space").unwrap_err().contains("' '"));
        assert!(SessionName::parse("a/b").is_err());
    }
}

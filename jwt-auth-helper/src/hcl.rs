//! The upstream helper's configuration file: flat HCL attributes, e.g.
//!
//! ```hcl
//! socket_path = "unix:///run/secrets/workload-spiffe-uds/socket"
//! host = "127.0.0.1"
//! port = 9010
//! jwt_mode = "jwt_injection"
//! audience = "spiffe://example.org/backend"
//! ```
//!
//! Only this flat form exists upstream, so this is a small parser for exactly it (strings with
//! `\"`/`\\` escapes, integers, `#`, `//` and `/* */` comments) rather than a general HCL
//! dependency. Unknown keys are errors: a typo must not silently fall back to a default.

use std::collections::BTreeMap;

/// Keys the upstream file defines.
pub const KEYS: &[&str] = &["socket_path", "host", "port", "jwt_mode", "audience"];

/// A parse error with its line number.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct HclError {
    /// 1-based line.
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

/// Parses the file into `key -> value` (integers as their decimal text).
pub fn parse(text: &str) -> Result<BTreeMap<String, String>, HclError> {
    let mut out = BTreeMap::new();
    let mut in_block_comment = false;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let err = |reason: String| HclError { line, reason };
        let mut rest = raw.trim();
        if in_block_comment {
            match rest.find("*/") {
                Some(end) => {
                    in_block_comment = false;
                    rest = rest[end + 2..].trim();
                }
                None => continue,
            }
        }
        if let Some(body) = rest.strip_prefix("/*") {
            match body.find("*/") {
                Some(end) => rest = body[end + 2..].trim(),
                None => {
                    in_block_comment = true;
                    continue;
                }
            }
        }
        if rest.is_empty() || rest.starts_with('#') || rest.starts_with("//") {
            continue;
        }
        let (key, value) = rest
            .split_once('=')
            .ok_or_else(|| err(format!("expected `key = value`, got {rest:?}")))?;
        let key = key.trim();
        if !KEYS.contains(&key) {
            return Err(err(format!(
                "unknown key {key:?} (expected one of {})",
                KEYS.join(", ")
            )));
        }
        let value = parse_value(value.trim()).map_err(err)?;
        if out.insert(key.to_owned(), value).is_some() {
            return Err(err(format!("{key:?} is set twice")));
        }
    }
    if in_block_comment {
        return Err(HclError {
            line: text.lines().count(),
            reason: "unterminated /* comment".to_owned(),
        });
    }
    Ok(out)
}

fn parse_value(v: &str) -> Result<String, String> {
    if let Some(body) = v.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = body.chars();
        while let Some(c) = chars.next() {
            match c {
                '"' => {
                    let trailing = chars.as_str().trim();
                    if trailing.is_empty()
                        || trailing.starts_with('#')
                        || trailing.starts_with("//")
                    {
                        return Ok(out);
                    }
                    return Err(format!("unexpected {trailing:?} after string"));
                }
                '\\' => match chars.next() {
                    Some('"') => out.push('"'),
                    Some('\\') => out.push('\\'),
                    Some('n') => out.push('\n'),
                    Some('t') => out.push('\t'),
                    other => return Err(format!("unsupported escape \\{}", other.unwrap_or(' '))),
                },
                c => out.push(c),
            }
        }
        return Err("unterminated string".to_owned());
    }
    let token = v.split(['#']).next().unwrap_or_default();
    let token = token.split("//").next().unwrap_or_default().trim();
    if !token.is_empty() && token.chars().all(|c| c.is_ascii_digit()) {
        Ok(token.to_owned())
    } else {
        Err(format!("expected a quoted string or an integer, got {v:?}"))
    }
}

#[cfg(test)]
#[path = "hcl_props.rs"]
mod props;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_upstream_example() {
        let text = r#"
            # envoy-jwt-auth-helper.conf
            socket_path = "unix:///tmp/agent.sock"
            host = "127.0.0.1"   // loopback
            port = 9010
            /* modes: jwt_injection,
               jwt_svid_validator */
            jwt_mode = "jwt_injection"
            audience = "spiffe://example.org/my\"service"
        "#;
        let m = parse(text).unwrap();
        assert_eq!(m["socket_path"], "unix:///tmp/agent.sock");
        assert_eq!(m["port"], "9010");
        assert_eq!(m["jwt_mode"], "jwt_injection");
        assert_eq!(m["audience"], "spiffe://example.org/my\"service");
    }

    #[test]
    fn errors_name_the_line_and_problem() {
        let cases = [
            ("jwt_mod = \"x\"", 1, "unknown key"),
            (
                "\n\nport = nine",
                3,
                "expected a quoted string or an integer",
            ),
            ("audience = \"open", 1, "unterminated string"),
            ("host = \"a\"\nhost = \"b\"", 2, "set twice"),
            ("just words", 1, "expected `key = value`"),
            ("/* never closed", 1, "unterminated /*"),
        ];
        for (text, line, reason) in cases {
            let e = parse(text).unwrap_err();
            assert_eq!(e.line, line, "{text:?}: {e}");
            assert!(e.reason.contains(reason), "{text:?}: {e}");
        }
    }
}

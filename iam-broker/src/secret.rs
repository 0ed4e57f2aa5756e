//! Secrets in their own type: `Debug` and `Display` print `<redacted>`, so a secret can sit in
//! a struct that is logged or debug-printed without leaking. Only [`Secret::expose`] reads it.

use std::fmt;

/// A secret string (an AWS secret key, a session token, an authorization token).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Box<str>);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into().into_boxed_str())
    }

    /// The value, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the value is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Compares with `other` in time independent of where they differ (the length may leak,
    /// which tells an attacker nothing useful about a random token).
    pub fn constant_time_eq(&self, other: &[u8]) -> bool {
        aws_lc_rs::constant_time::verify_slices_are_equal(self.0.as_bytes(), other).is_ok()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_the_value() {
        let s = Secret::new("AKIA-very-secret");
        assert_eq!(format!("{s:?} {s}"), "<redacted> <redacted>");
        assert_eq!(s.expose(), "AKIA-very-secret");
        assert!(s.constant_time_eq(b"AKIA-very-secret"));
        assert!(!s.constant_time_eq(b"AKIA-very-secreT"));
        assert!(!s.constant_time_eq(b"short"));
    }
}

//! A byte buffer for private keys whose `Debug` never prints the bytes (the project's rule:
//! secrets have their own types), so an accidental `?value` in a log line cannot leak a key.

use std::fmt;

/// Private key material (PKCS#8 DER). `Debug` prints `<redacted>` and the length only.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretBytes(Vec<u8>);

impl SecretBytes {
    /// Wraps key bytes.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// The bytes, for the few places that must hand them on (the Workload API response,
    /// the state directory).
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<redacted {} bytes>", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let s = SecretBytes::new(b"PRIVATE".to_vec());
        assert_eq!(format!("{s:?}"), "<redacted 7 bytes>");
    }
}

//! A shared secret that clients send in a header (AWS's container-credentials
//! `Authorization` token, Azure's `X-IDENTITY-HEADER`), compared in constant time, from a value
//! or a file re-read for rotation. One implementation for every provider: the SDKs differ only in
//! the header's name.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;

use crate::secret::Secret;

/// Where a header secret comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum HeaderToken {
    /// A fixed value.
    Value(Secret),
    /// A file, re-read when a request does not match (so it can rotate).
    File(PathBuf),
}

impl fmt::Debug for HeaderToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Value(_) => f.write_str("Value(<redacted>)"),
            Self::File(p) => write!(f, "File({})", p.display()),
        }
    }
}

/// A token must fit in an HTTP header value, as the SDKs send it verbatim; `what` names it in
/// the error (`container-credentials token`).
pub fn check_token(what: &str, token: &str) -> Result<(), String> {
    if token.is_empty() {
        return Err(format!("the {what} must not be empty"));
    }
    if token.bytes().any(|b| !(0x20..0x7f).contains(&b)) {
        return Err(format!(
            "the {what} must be printable ASCII (it is sent as a header)"
        ));
    }
    Ok(())
}

/// A header secret, compared in constant time. A token file is re-read (at
/// most once a second), so a rotated file is picked up; a file that disappears, cannot be read
/// or holds no valid token fails closed: no token is accepted until it holds one again (the
/// operator deleting it means to revoke it).
pub struct TokenCheck {
    file: Option<PathBuf>,
    /// `None`: the file has no usable token right now.
    current: ArcSwapOption<Secret>,
    last_read: Mutex<std::time::Instant>,
}

/// The outcome of comparing a presented token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenMatch {
    /// The presented token is the configured one.
    Matches,
    /// It is not.
    Differs,
    /// The token file has no usable token: every request is refused.
    Unavailable,
}

impl fmt::Debug for TokenCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenCheck")
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

/// How often a token file may be re-read.
const TOKEN_REREAD: Duration = Duration::from_secs(1);

impl TokenCheck {
    /// Reads the token (from the file, if it is one).
    pub fn new(token: &HeaderToken) -> std::io::Result<Self> {
        let (file, value) = match token {
            HeaderToken::Value(v) => (None, Some(v.clone())),
            HeaderToken::File(path) => {
                // Checked again here: the file may have changed since the configuration read
                // it, and an empty token must never match an empty header (fail closed).
                let text = std::fs::read_to_string(path)?;
                let token = check_token("token", text.trim())
                    .ok()
                    .map(|()| Secret::new(text.trim()));
                (Some(path.clone()), token)
            }
        };
        Ok(Self {
            file,
            current: ArcSwapOption::from(value.map(Arc::new)),
            last_read: Mutex::new(std::time::Instant::now()),
        })
    }

    /// Compares `presented` with the token, re-reading a token file first when it is due.
    pub async fn matches(&self, presented: &[u8]) -> TokenMatch {
        // A token file is re-read at most once a second, whether or not this request matches:
        // a rotated-out token must stop working even if no client presents the new one yet.
        if let Some(path) = &self.file {
            let due = {
                let mut last = self
                    .last_read
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let due = last.elapsed() >= TOKEN_REREAD;
                if due {
                    *last = std::time::Instant::now();
                }
                due
            };
            if due {
                let problem = match tokio::fs::read_to_string(path).await {
                    Ok(text) if check_token("token", text.trim()).is_ok() => {
                        let was_unavailable = self.current.load().is_none();
                        self.current.store(Some(Arc::new(Secret::new(text.trim()))));
                        if was_unavailable {
                            tracing::info!(file = %path.display(), "token file readable again");
                        }
                        None
                    }
                    Ok(_) => Some("holds no valid token".to_owned()),
                    Err(e) => Some(e.to_string()),
                };
                // Fail closed, and say so once per outage rather than once a second.
                if let Some(problem) = problem
                    && self.current.swap(None).is_some()
                {
                    tracing::warn!(
                        file = %path.display(),
                        error = %problem,
                        "token file unusable; refusing requests that need it until it holds a token"
                    );
                }
            }
        }
        match self.current.load().as_deref() {
            Some(token) if token.constant_time_eq(presented) => TokenMatch::Matches,
            Some(_) => TokenMatch::Differs,
            None => TokenMatch::Unavailable,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn token_file_is_reread_after_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "first\n").unwrap();
        let check = TokenCheck::new(&HeaderToken::File(path.clone())).unwrap();
        assert_eq!(check.matches(b"first").await, TokenMatch::Matches);
        assert_eq!(check.matches(b"second").await, TokenMatch::Differs);
        std::fs::write(&path, "second").unwrap();
        // Re-read at most once a second.
        *check.last_read.lock().unwrap() -= TOKEN_REREAD;
        assert_eq!(check.matches(b"second").await, TokenMatch::Matches);
        assert_eq!(check.matches(b"first").await, TokenMatch::Differs);
    }

    #[tokio::test]
    async fn a_deleted_or_unreadable_token_file_fails_closed_until_it_is_readable_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "first\n").unwrap();
        let check = TokenCheck::new(&HeaderToken::File(path.clone())).unwrap();
        assert_eq!(check.matches(b"first").await, TokenMatch::Matches);
        let reread = || *check.last_read.lock().unwrap() -= TOKEN_REREAD;

        // Deleted: the old token used to stay valid forever.
        std::fs::remove_file(&path).unwrap();
        reread();
        assert_eq!(check.matches(b"first").await, TokenMatch::Unavailable);
        // Still refused between re-reads.
        assert_eq!(check.matches(b"first").await, TokenMatch::Unavailable);
        // Unreadable (a directory in its place: EISDIR, even for root) or invalid content.
        std::fs::create_dir(&path).unwrap();
        reread();
        assert_eq!(check.matches(b"first").await, TokenMatch::Unavailable);
        std::fs::remove_dir(&path).unwrap();
        std::fs::write(&path, "").unwrap();
        reread();
        assert_eq!(check.matches(b"").await, TokenMatch::Unavailable);
        // Readable again: the new token works, the old one does not.
        std::fs::write(&path, "second").unwrap();
        reread();
        assert_eq!(check.matches(b"second").await, TokenMatch::Matches);
        assert_eq!(check.matches(b"first").await, TokenMatch::Differs);
    }

    #[tokio::test]
    async fn a_token_file_emptied_before_start_matches_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "\n").unwrap();
        let check = TokenCheck::new(&HeaderToken::File(path)).unwrap();
        assert_eq!(check.matches(b"").await, TokenMatch::Unavailable);
    }

    #[tokio::test]
    async fn value_token_is_compared_and_never_printed() {
        let check = TokenCheck::new(&HeaderToken::Value(Secret::new("s3cret"))).unwrap();
        assert_eq!(check.matches(b"s3cret").await, TokenMatch::Matches);
        assert_eq!(check.matches(b"s3cre").await, TokenMatch::Differs);
        assert!(!format!("{check:?}").contains("s3cret"));
    }
}

//! `spiffe-dev-agent mint-jwt`: a JWT-SVID signed offline with a trust domain's current key from
//! a state directory, printed whole. The Workload API hands out tokens only for the agent's own
//! `--spiffe-id`s; this signs for any SPIFFE ID of a trust domain whose keys the directory
//! holds: the agent's own, or one it federates with (`--federate-with` creates and keeps that
//! domain's keys there and publishes them as its federated bundle), so a partner's token is
//! one command away.

use std::path::PathBuf;
use std::time::Duration;

use spiffe::SpiffeId;

use crate::authority::AuthorityError;
use crate::state::{StateDir, StateError};

/// Arguments of `mint-jwt`.
#[derive(Debug, clap::Args)]
pub struct MintJwtArgs {
    /// The running agent's --state-dir (the keys are read from <dir>/<trust domain>/).
    #[arg(long, env = "DEV_AGENT_STATE_DIR")]
    pub state_dir: PathBuf,
    /// The token's `sub`; its trust domain's current key signs it.
    #[arg(long)]
    pub spiffe_id: String,
    /// An audience (`aud`); repeatable.
    #[arg(long = "audience", required = true)]
    pub audiences: Vec<String>,
    /// Lifetime. Keep it within the agent's --jwt-ttl: after a key rotation the agent publishes
    /// the old key for that long, not for longer tokens it never saw.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
    /// The `iss` claim (none by default; a trust domain's issuer is its own, not this agent's).
    #[arg(long)]
    pub issuer: Option<String>,
}

/// Why no token was minted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MintError {
    /// `--spiffe-id` is not a SPIFFE ID of a workload.
    #[error("--spiffe-id {value:?}: {reason}")]
    SpiffeId {
        /// The value as given.
        value: String,
        /// What is wrong.
        reason: String,
    },
    /// The state directory holds no keys for the trust domain.
    #[error(
        "no keys for {trust_domain} in {dir}: start the agent with --state-dir {dir} and \
         --trust-domain {trust_domain} (or --federate-with {trust_domain}) first"
    )]
    NoKeys {
        /// The trust domain.
        trust_domain: String,
        /// The state directory.
        dir: String,
    },
    /// An operator dropped the federation with this trust domain (`POST /federation/drop`):
    /// the agent no longer trusts its keys, and neither does this command.
    #[error(
        "the federation with {trust_domain} was dropped (<state-dir>/{trust_domain}/federation-dropped): \
         its keys are no longer trusted"
    )]
    FederationDropped {
        /// The trust domain.
        trust_domain: String,
    },
    /// Reading the keys failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// Signing failed.
    #[error(transparent)]
    Sign(#[from] AuthorityError),
}

/// Signs the token `args` describe.
///
/// # Errors
///
/// [`MintError`] when the SPIFFE ID is not a workload's, the directory has no keys for its
/// trust domain, or reading or signing fails.
pub fn mint_jwt(args: &MintJwtArgs) -> Result<String, MintError> {
    let sub = SpiffeId::new(&args.spiffe_id)
        .map_err(|e| e.to_string())
        .and_then(|id| {
            if id.path().is_empty() {
                Err("names a trust domain: a JWT-SVID's subject has a path".to_owned())
            } else {
                Ok(id)
            }
        })
        .map_err(|reason| MintError::SpiffeId {
            value: args.spiffe_id.clone(),
            reason,
        })?;
    let td = sub.trust_domain();
    let state = StateDir::new(&args.state_dir);
    if state.federation_dropped(td)? {
        return Err(MintError::FederationDropped {
            trust_domain: td.to_string(),
        });
    }
    let authority = state
        .load_existing(td, args.ttl)?
        .ok_or_else(|| MintError::NoKeys {
            trust_domain: td.to_string(),
            dir: args.state_dir.display().to_string(),
        })?
        .with_jwt_issuer(args.issuer.clone());
    Ok(authority.sign_jwt(&sub, &args.audiences, args.ttl)?)
}

//! JWT-SVIDs: the per-audience cache, bundle watching and local validation.

pub(crate) mod bundles;
pub(crate) mod cache;
pub(crate) mod validate;

//! JWT-SVIDs: the per-audience cache, bundle watching and local validation.

pub mod bundles;
pub mod cache;
pub mod validate;

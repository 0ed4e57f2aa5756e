//! Regenerates the Workload API code and fails if it differs from what is committed.
//!
//! `REGEN_PROTO=1 cargo test -p workload-proto --test regen` (what `cargo xtask regen` runs)
//! writes the fresh output over `src/generated/workload.rs` instead of failing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers outside #[test] fns

use std::path::{Path, PathBuf};

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs tonic-prost-build with the vendored `protoc` into `out` and returns the generated file.
fn generate(out: &Path) -> PathBuf {
    let protoc = protoc_bin_vendored::protoc_bin_path().expect("vendored protoc");
    let include = protoc_bin_vendored::include_path().expect("vendored protoc include path");
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .out_dir(out)
        // These carry private keys and tokens: lib.rs gives them redacting Debug impls.
        .skip_debug([".X509SVID", ".JWTSVID", ".ValidateJWTSVIDRequest"])
        .compile_with_config(
            config,
            &[crate_dir().join("workload.proto")],
            &[crate_dir(), include],
        )
        .expect("generate workload.proto");
    // The proto has no package, so prost names the file `_.rs`.
    out.join("_.rs")
}

#[test]
fn committed_code_matches_regenerated() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let fresh = std::fs::read_to_string(generate(tmp.path())).expect("read generated");
    let committed_path = crate_dir().join("src/generated/workload.rs");

    if std::env::var_os("REGEN_PROTO").is_some() {
        std::fs::write(&committed_path, &fresh).expect("write generated code");
        return;
    }

    let committed = std::fs::read_to_string(&committed_path).unwrap_or_default();
    assert!(
        committed == fresh,
        "src/generated/workload.rs is stale: run `cargo xtask regen` and commit the result"
    );
}

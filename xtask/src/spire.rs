//! `cargo xtask spire`: SPIRE's server, agent and OIDC discovery provider, built from the Go
//! module proxy into `<root>/.tools/spire-<version>/bin` (git-ignored), for the tests that run
//! the sidecars against real SPIRE. `cargo xtask test` calls it when they are missing.
//!
//! Built as [`crate::go_install`] builds every Go program of the suite; `spire-server` needs cgo
//! (its SQLite datastore): gcc must be installed.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Result, root};

/// The SPIRE release the tests are written against.
pub(crate) const VERSION: &str = "1.13.3";

/// The three programs, by Go package.
const PROGRAMS: [(&str, &str); 3] = [
    ("spire-server", "github.com/spiffe/spire/cmd/spire-server"),
    ("spire-agent", "github.com/spiffe/spire/cmd/spire-agent"),
    (
        "oidc-discovery-provider",
        "github.com/spiffe/spire/support/oidc-discovery-provider",
    ),
];

/// Where the binaries go.
pub(crate) fn bin_dir() -> PathBuf {
    root().join(format!(".tools/spire-{VERSION}/bin"))
}

/// The exact commands, for error messages and docs/spire.md.
fn how() -> String {
    let pkgs: Vec<String> = PROGRAMS
        .iter()
        .map(|(_, p)| format!("{p}@v{VERSION}"))
        .collect();
    format!(
        "cargo xtask spire (in a new module: go get -tool {}; then GOBIN={} CGO_ENABLED=1 go install -ldflags='-s -w' <the three packages>; needs Go and gcc)",
        pkgs.join(" "),
        bin_dir().display()
    )
}

/// Builds the binaries unless the ones in [`bin_dir`] already report [`VERSION`].
pub(crate) fn install() -> Result<PathBuf> {
    let bin = bin_dir();
    if PROGRAMS
        .iter()
        .all(|(name, _)| reports_version(&bin.join(name)))
    {
        println!("==> SPIRE {VERSION} is installed in {}", bin.display());
        return Ok(bin);
    }
    let packages: Vec<&str> = PROGRAMS.iter().map(|(_, p)| *p).collect();
    crate::go_install::install(
        &format!("SPIRE {VERSION} (spire-server, spire-agent, oidc-discovery-provider)"),
        &root().join(format!(".tools/spire-{VERSION}/module")),
        &bin,
        &packages,
        VERSION,
        "-s -w",
        &format!("install SPIRE with: {}", how()),
    )?;
    match PROGRAMS
        .iter()
        .find(|(name, _)| !reports_version(&bin.join(name)))
    {
        Some((name, _)) => Err(format!(
            "{} does not report version {VERSION} after building; install SPIRE with: {}",
            bin.join(name).display(),
            how()
        )),
        None => Ok(bin),
    }
}

/// `spire-server --version` prints `1.13.3` (or `1.13.3-dev-unk` built outside SPIRE's
/// release pipeline) on stderr.
fn reports_version(bin: &Path) -> bool {
    Command::new(bin)
        .arg("--version")
        .output()
        .is_ok_and(|out| {
            let text = String::from_utf8_lossy(&out.stderr).into_owned()
                + &String::from_utf8_lossy(&out.stdout);
            out.status.success() && text.trim().starts_with(VERSION)
        })
}

//! `aws_signing_helper`, AWS's own IAM Roles Anywhere client
//! (github.com/aws/rolesanywhere-credential-helper), built from the Go module proxy into
//! `<root>/.tools/aws-signing-helper-<version>/bin`: the suite proves its Roles Anywhere
//! stand-in against it before the stand-in judges the broker. `cargo xtask test` builds it when
//! missing. The module's main package is its root, so the binary is named after the module
//! (`rolesanywhere-credential-helper`); cgo is needed (its PKCS#11 support).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Result, root};

/// The release the stand-in is proven against.
pub(crate) const VERSION: &str = "1.4.0";
const MODULE: &str = "github.com/aws/rolesanywhere-credential-helper";
const BINARY: &str = "rolesanywhere-credential-helper";

/// Builds it unless the one in `.tools` already reports [`VERSION`]; returns its path.
pub(crate) fn install() -> Result<PathBuf> {
    let dir = root().join(format!(".tools/aws-signing-helper-{VERSION}"));
    let bin = dir.join("bin");
    let path = bin.join(BINARY);
    if reports_version(&path) {
        println!(
            "==> aws_signing_helper {VERSION} is installed at {}",
            path.display()
        );
        return Ok(path);
    }
    let how = format!(
        "install it with: cargo xtask signing-helper (in a new module: go get -tool {MODULE}@v{VERSION}; then GOBIN={} CGO_ENABLED=1 go install -ldflags='-s -w -X {MODULE}/cmd.Version={VERSION}' {MODULE}; needs Go and gcc)",
        bin.display()
    );
    crate::go_install::install(
        &format!("aws_signing_helper {VERSION}"),
        &dir.join("module"),
        &bin,
        &[MODULE],
        VERSION,
        &format!("-s -w -X {MODULE}/cmd.Version={VERSION}"),
        &how,
    )?;
    if reports_version(&path) {
        Ok(path)
    } else {
        Err(format!(
            "{} does not report version {VERSION}; {how}",
            path.display()
        ))
    }
}

/// `rolesanywhere-credential-helper version` prints the version it was built with.
fn reports_version(bin: &Path) -> bool {
    Command::new(bin).arg("version").output().is_ok_and(|out| {
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == VERSION
    })
}

//! The SIEM tooling: a Python virtual environment with pySigma and the backends pinned in
//! deploy/siem/requirements.txt (under target/, remade when the pins change), the query
//! conversion it runs, and rsyslog for the shipping config's syntax check.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Result, bail};

use crate::{
    python,
    toolchain::{APT_LOCK_WAIT, have, run},
};

/// The pySigma venv's interpreter, made or updated first.
pub fn ensure_venv(root: &Path) -> Result<PathBuf> {
    python::venv(root, "siem-venv", "deploy/siem/requirements.txt")
}

/// `cargo xtask siem`: regenerate deploy/siem/<backend>/ from the Sigma rules.
pub fn convert(root: &Path) -> Result<()> {
    let python = ensure_venv(root)?;
    run(Command::new(python).arg(root.join("deploy/siem/convert.py")))
}

/// What the SIEM and shipping tests need: the venv (its python in `SIEM_PYTHON`) and
/// rsyslogd with the Elasticsearch output module.
pub fn ensure_test_tools(root: &Path) -> Result<PathBuf> {
    let missing: Vec<&str> = ["rsyslog", "rsyslog-elasticsearch"]
        .into_iter()
        .filter(|p| !deb_installed(p))
        .collect();
    if !missing.is_empty() {
        apt_install(&missing)?;
    }
    ensure_venv(root)
}

fn deb_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f", "${Status}", package])
        .output()
        .is_ok_and(|o| o.status.success() && o.stdout.ends_with(b" installed"))
}

pub(crate) fn apt_install(packages: &[&str]) -> Result<()> {
    if !have("apt-get") {
        bail!(
            "the tests need {} and this is not a Debian-family system: install them first",
            packages.join(", ")
        );
    }
    run(Command::new("apt-get")
        .args(["update", "-q"])
        .args(APT_LOCK_WAIT))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(APT_LOCK_WAIT)
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

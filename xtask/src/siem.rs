//! The SIEM tooling: a Python virtual environment with pySigma and the backends pinned in
//! deploy/siem/requirements.txt (under target/, remade when the pins change), the query
//! conversion it runs, and rsyslog for the shipping config's syntax check.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::toolchain::{have, run};

fn venv_dir(root: &Path) -> PathBuf {
    root.join("target/siem-venv")
}

/// The Python interpreter of the venv, made or updated first.
pub fn ensure_venv(root: &Path) -> Result<PathBuf> {
    let venv = venv_dir(root);
    let python = venv.join("bin/python");
    let requirements = root.join("deploy/siem/requirements.txt");
    let pins = std::fs::read_to_string(&requirements)
        .with_context(|| format!("reading {}", requirements.display()))?;
    // The stamp holds the pins the venv was made from: a changed pin remakes it.
    let stamp = venv.join("t1571-requirements.txt");
    if python.exists() && std::fs::read_to_string(&stamp).is_ok_and(|s| s == pins) {
        return Ok(python);
    }
    if venv.exists() {
        std::fs::remove_dir_all(&venv).with_context(|| format!("removing {}", venv.display()))?;
    }
    if Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .map_or(true, |s| !s.success())
    {
        // Debian's python3 makes venvs only with python3-venv (ensurepip) installed.
        let _ = std::fs::remove_dir_all(&venv);
        apt_install(&["python3-venv"])?;
        run(Command::new("/usr/bin/python3")
            .args(["-m", "venv"])
            .arg(&venv))?;
    }
    run(Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-input",
            "--disable-pip-version-check",
            "--requirement",
        ])
        .arg(&requirements))?;
    std::fs::write(&stamp, pins).with_context(|| format!("writing {}", stamp.display()))?;
    Ok(python)
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

fn apt_install(packages: &[&str]) -> Result<()> {
    if !have("apt-get") {
        bail!(
            "the SIEM tests need {} and this is not a Debian-family system: install them first",
            packages.join(", ")
        );
    }
    run(Command::new("apt-get").arg("update").arg("-q"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

//! Python tools in project-made virtual environments under target/, one per pinned
//! requirements file, remade when a pin changes; never installed by hand.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result};

use crate::{siem::apt_install, toolchain::run};

/// The interpreter of `target/<name>`, made from `requirements` (relative to the root).
pub fn venv(root: &Path, name: &str, requirements: &str) -> Result<PathBuf> {
    let venv = root.join("target").join(name);
    let python = venv.join("bin/python");
    let requirements = root.join(requirements);
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

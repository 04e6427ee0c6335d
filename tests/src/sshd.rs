//! A test sshd's configuration: its own host key, no PAM, no passwords.

use std::{path::Path, path::PathBuf, process::Command};

use anyhow::{Context, Result, ensure};

/// Writes a host key and an `sshd_config` for it into `dir` and returns the config's path.
/// Also makes sshd's privilege separation directory: the package's service would, and
/// that service is never run.
pub fn sshd_config(dir: &Path) -> Result<PathBuf> {
    let key = dir.join("host_ed25519");
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()
        .context("ssh-keygen")?;
    ensure!(st.success(), "ssh-keygen failed ({st})");
    let cfg = dir.join("sshd_config");
    std::fs::write(
        &cfg,
        format!(
            "HostKey {}\nPidFile none\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n",
            key.display()
        ),
    )?;
    std::fs::create_dir_all("/run/sshd")?;
    Ok(cfg)
}

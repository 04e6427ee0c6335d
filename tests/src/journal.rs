//! A systemd-journald for the test and its entries, read back with journalctl.

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result};
use serde_json::Value;

use crate::{poll_until, wait_until};

pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// A systemd-journald for the test: the running one, else one started here (and stopped
/// when dropped). Entries are read back with journalctl.
pub struct Journald {
    child: Option<Child>,
}

fn journal_socket_answers() -> bool {
    std::os::unix::net::UnixDatagram::unbound()
        .and_then(|s| s.connect(JOURNAL_SOCKET))
        .is_ok()
}

impl Journald {
    pub fn ensure() -> Result<Self> {
        if journal_socket_answers() {
            return Ok(Self { child: None });
        }
        let child = Command::new("/lib/systemd/systemd-journald")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting systemd-journald (package systemd)")?;
        let journald = Self { child: Some(child) };
        wait_until(
            &format!("systemd-journald to answer on {JOURNAL_SOCKET}"),
            Duration::from_secs(10),
            journal_socket_answers,
        )?;
        Ok(journald)
    }

    /// Entries matching `matches` (FIELD=value; journalctl ANDs different fields), as JSON
    /// objects, waiting up to 15 s for at least `want`.
    pub fn entries(&self, matches: &[&str], want: usize) -> Result<Vec<Value>> {
        poll_until(
            Duration::from_secs(15),
            || {
                let out = Command::new("journalctl")
                    .args(["-o", "json", "--all", "--no-pager"])
                    .args(matches)
                    .output()
                    .context("running journalctl")?;
                Ok(String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .filter_map(|l| serde_json::from_str(l).ok())
                    .collect::<Vec<Value>>())
            },
            |v| v.len() >= want,
        )
    }

    /// The first entry matching `matches`, waiting for it.
    pub fn entry(&self, matches: &[&str]) -> Result<Value> {
        self.entries(matches, 1)?
            .into_iter()
            .next()
            .with_context(|| format!("no journal entry for {matches:?}"))
    }
}

impl Drop for Journald {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

//! A systemd-journald for the test and its entries, read back with journalctl.

use std::{
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, Weak},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::poll_until;

pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// A systemd-journald for the test: the running one, else one started here and shared by
/// every test of this process (stopped when the last holder drops it). Entries are read
/// back with journalctl.
pub struct Journald {
    _started: Arc<Started>,
}

/// The journald this process started, if it had to.
struct Started(Option<Child>);

/// Tests run in parallel threads: two journalds started at once unlink each other's
/// socket and one exits, leaving a socket nobody answers. So one start, shared.
static SHARED: Mutex<Weak<Started>> = Mutex::new(Weak::new());

fn journal_socket_answers() -> bool {
    std::os::unix::net::UnixDatagram::unbound()
        .and_then(|s| s.connect(JOURNAL_SOCKET))
        .is_ok()
}

impl Journald {
    pub fn ensure() -> Result<Self> {
        let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(started) = shared.upgrade() {
            return Ok(Self { _started: started });
        }
        let started = Arc::new(Started::new()?);
        *shared = Arc::downgrade(&started);
        Ok(Self { _started: started })
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

impl Started {
    fn new() -> Result<Self> {
        if journal_socket_answers() {
            return Ok(Self(None));
        }
        let mut child = Command::new("/lib/systemd/systemd-journald")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting systemd-journald (package systemd)")?;
        let (answered, exited) = poll_until(
            Duration::from_secs(10),
            || {
                let exited = child.try_wait().context("waiting on systemd-journald")?;
                Ok((journal_socket_answers(), exited))
            },
            |(answers, exited)| *answers || exited.is_some(),
        )?;
        if answered {
            // Ours, or one started beside it that won the socket: either way it answers.
            return Ok(Self(Some(child)));
        }
        let _ = child.kill();
        let _ = child.wait();
        match exited {
            Some(status) => {
                bail!("systemd-journald exited ({status}) and nothing answers on {JOURNAL_SOCKET}")
            }
            None => bail!(
                "timed out after 10s waiting for systemd-journald to answer on {JOURNAL_SOCKET}"
            ),
        }
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

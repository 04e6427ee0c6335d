//! systemd service notifications (`Type=notify`): READY=1 once the hooks are attached,
//! RELOADING=1/READY=1 around a policy reload, STOPPING=1 on the way out, and WATCHDOG=1
//! from the event loop itself, so a stalled loop stops feeding the watchdog and systemd
//! restarts the sensor. Without NOTIFY_SOCKET (run by hand, in a pod) all of it is a no-op.

use std::time::Duration;

use libsystemd::daemon::{self, NotifyState};

pub struct Notifier {
    enabled: bool,
    /// How often the loop pings: half the watchdog timeout, as sd_watchdog_enabled(3) advises.
    watchdog: Option<Duration>,
}

impl Notifier {
    pub fn from_env() -> Self {
        let enabled = std::env::var_os("NOTIFY_SOCKET").is_some();
        Self {
            enabled,
            watchdog: if enabled {
                daemon::watchdog_enabled(false).map(|t| t / 2)
            } else {
                None
            },
        }
    }

    /// The loop's ping interval, if systemd runs a watchdog for this service.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog
    }

    fn send(&self, state: &[NotifyState]) {
        if !self.enabled {
            return;
        }
        if let Err(e) = daemon::notify(false, state) {
            log::warn!("sd_notify: {e}");
        }
    }

    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status.into())]);
    }

    pub fn reloading(&self) {
        self.send(&[NotifyState::Reloading]);
    }

    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping]);
    }

    pub fn watchdog(&self) {
        if self.watchdog.is_some() {
            self.send(&[NotifyState::Watchdog]);
        }
    }
}

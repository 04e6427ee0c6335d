//! The signals the loop answers: SIGINT and SIGTERM stop it, SIGHUP reloads the policy,
//! SIGUSR1 does nothing (or, in a build with the `test-hooks` feature and
//! `--test-stall-on-usr1`, stalls the loop for the /healthz and watchdog tests).

use anyhow::{Context, Result};
use tokio::signal::unix::{Signal as Stream, SignalKind, signal};

/// What a signal asks of the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGINT or SIGTERM (named): detach and stop.
    Stop(&'static str),
    /// SIGHUP: reload the policy.
    Reload,
    /// SIGUSR1: handled so a stray one cannot kill the sensor.
    User1,
}

pub struct Signals {
    interrupt: Stream,
    terminate: Stream,
    hangup: Stream,
    user1: Stream,
    /// `--test-stall-on-usr1`.
    #[cfg(feature = "test-hooks")]
    test_stall: bool,
}

impl Signals {
    /// Installs the handlers: from here on these signals are the loop's to answer.
    pub fn install(#[cfg(feature = "test-hooks")] test_stall: bool) -> Result<Self> {
        let on =
            |kind: SignalKind, name: &str| signal(kind).with_context(|| format!("{name} handler"));
        Ok(Self {
            interrupt: on(SignalKind::interrupt(), "SIGINT")?,
            terminate: on(SignalKind::terminate(), "SIGTERM")?,
            hangup: on(SignalKind::hangup(), "SIGHUP")?,
            user1: on(SignalKind::user_defined1(), "SIGUSR1")?,
            #[cfg(feature = "test-hooks")]
            test_stall,
        })
    }

    /// The next signal. Cancel-safe: a signal that arrives while another branch of the
    /// loop runs waits for the next call.
    pub async fn recv(&mut self) -> Signal {
        tokio::select! {
            _ = self.interrupt.recv() => Signal::Stop("SIGINT"),
            _ = self.terminate.recv() => Signal::Stop("SIGTERM"),
            _ = self.hangup.recv() => Signal::Reload,
            _ = self.user1.recv() => Signal::User1,
        }
    }

    /// SIGUSR1: nothing, but in a test build asked to stall.
    pub fn user1(&self) {
        #[cfg(feature = "test-hooks")]
        if self.test_stall {
            log::warn!("SIGUSR1 (test hook): stalling the event loop for 10 s");
            std::thread::sleep(std::time::Duration::from_secs(10));
        }
    }
}

//! The one polling loop of the tests: a condition checked until it holds or a deadline
//! passes, and an error that names what was waited for (and the last value seen).

use std::{
    fmt::Debug,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

/// Calls `probe` until `done` accepts its value or `timeout` has passed, and returns the
/// accepted value or, when time ran out, the last one: for a caller that asserts on it
/// with its own, fuller message. An error from `probe` ends the wait at once.
pub fn poll_until<T>(
    timeout: Duration,
    mut probe: impl FnMut() -> Result<T>,
    done: impl Fn(&T) -> bool,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    // Short pauses first (most waits end quickly), then no busier than 4 probes a second.
    let mut pause = Duration::from_millis(10);
    loop {
        let v = probe()?;
        let now = Instant::now();
        if done(&v) || now >= deadline {
            return Ok(v);
        }
        thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}

/// Like [`poll_until`], but running out of time is an error naming `what` was waited for
/// and the last value seen.
pub fn wait_for_value<T: Debug>(
    what: &str,
    timeout: Duration,
    probe: impl FnMut() -> Result<T>,
    done: impl Fn(&T) -> bool,
) -> Result<T> {
    let v = poll_until(timeout, probe, &done)?;
    if !done(&v) {
        bail!("timed out after {timeout:?} waiting for {what}; last seen: {v:?}");
    }
    Ok(v)
}

/// Waits until `cond` holds; running out of time is an error naming `what`.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) -> Result<()> {
    if !poll_until(timeout, || Ok(cond()), |held| *held)? {
        bail!("timed out after {timeout:?} waiting until {what}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_condition_that_comes_true_ends_the_wait() {
        let mut n = 0;
        wait_until("the third call", Duration::from_secs(5), || {
            n += 1;
            n == 3
        })
        .unwrap();
        assert_eq!(n, 3);
    }

    #[test]
    fn running_out_of_time_names_what_was_waited_for() {
        let e = wait_for_value("a seven", Duration::from_millis(30), || Ok(1), |v| *v == 7)
            .unwrap_err()
            .to_string();
        assert!(e.contains("waiting for a seven; last seen: 1"), "{e}");
        let e = wait_until("never", Duration::from_millis(30), || false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("waiting until never"), "{e}");
    }

    #[test]
    fn poll_until_returns_the_last_value_when_time_runs_out() {
        let mut n = 0;
        let last = poll_until(
            Duration::from_millis(30),
            || {
                n += 1;
                Ok(n)
            },
            |_| false,
        )
        .unwrap();
        assert!(last >= 2, "{last}");
    }
}

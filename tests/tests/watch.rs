//! `sensor watch` in a real terminal: tmux runs it, send-keys types, capture-pane reads
//! the screen. An alert from a real connect appears, a filter hides it, q quits; without a
//! terminal it prints plain lines.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use sensor_tests::{ATTACH_LOCK, Net, root_or_skip, sensor_bin};

const PUBLIC: &str = "198.51.100.44";

struct Tmux {
    name: String,
}

impl Tmux {
    fn start(cmd: &str) -> Result<Self> {
        let name = format!("t1571-watch-{}", std::process::id());
        let ok = Command::new("tmux")
            .args([
                "new-session",
                "-d",
                "-s",
                &name,
                "-x",
                "200",
                "-y",
                "50",
                cmd,
            ])
            .status()
            .context("running tmux")?
            .success();
        if !ok {
            bail!("tmux new-session failed");
        }
        Ok(Self { name })
    }

    fn screen(&self) -> String {
        Command::new("tmux")
            .args(["capture-pane", "-p", "-t", &self.name])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    fn keys(&self, keys: &[&str]) -> Result<()> {
        let ok = Command::new("tmux")
            .args(["send-keys", "-t", &self.name])
            .args(keys)
            .status()?
            .success();
        if !ok {
            bail!("tmux send-keys failed");
        }
        Ok(())
    }

    fn alive(&self) -> bool {
        Command::new("tmux")
            .args(["has-session", "-t", &self.name])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Waits until the screen satisfies `pred`.
    fn wait(&self, what: &str, pred: impl Fn(&str) -> bool) -> Result<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s = self.screen();
            if pred(&s) {
                return Ok(s);
            }
            if Instant::now() > deadline {
                bail!("screen never showed {what}:\n{s}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.name])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

#[test]
fn live_view_shows_an_alert_filters_it_and_quits() -> Result<()> {
    if !root_or_skip("watch") {
        return Ok(());
    }
    let _shared = ATTACH_LOCK.read().unwrap_or_else(|e| e.into_inner());
    let net = Net::new()?;
    net.subnet("198.51.100.1", PUBLIC, 24)?;
    let tmux = Tmux::start(&format!("{} watch --live", sensor_bin().display()))?;
    tmux.wait("the view", |s| s.contains("t1571-sensor watch"))?;
    // The sensor it started needs a moment to attach; connect until the alert shows.
    let target = format!("{PUBLIC}:4444");
    let deadline = Instant::now() + Duration::from_secs(30);
    let screen = loop {
        net.run("nc", &["-z", "-w2", PUBLIC, "4444"])?;
        let s = tmux.screen();
        if s.contains(&target) {
            break s;
        }
        if Instant::now() > deadline {
            bail!("no alert on screen:\n{s}");
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let row = screen
        .lines()
        .find(|l| l.contains(&target))
        .context("alert row")?;
    assert!(row.contains("High") && row.contains("nc"), "{row}");
    // Filter on another process: the row goes.
    tmux.keys(&["/", "curl", "Enter"])?;
    tmux.wait("the filter hiding the alert", |s| {
        s.contains("process ~ curl") && !s.contains(&target)
    })?;
    // Clear it: back again.
    tmux.keys(&["c"])?;
    tmux.wait("the alert again", |s| s.contains(&target))?;
    tmux.keys(&["q"])?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while tmux.alive() {
        if Instant::now() > deadline {
            bail!("watch did not quit on q:\n{}", tmux.screen());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

#[test]
fn without_a_terminal_it_prints_plain_lines() -> Result<()> {
    let alert = r#"{"@timestamp":"2026-11-25T12:00:00.000Z","event":{"kind":"alert","action":"network-connect","risk_score":2,"reason":"x"},"process":{"executable":"/usr/bin/python3.11","pid":7},"user":{"name":"alice"},"destination":{"ip":"192.0.2.9","port":5555}}"#;
    let input = format!("{alert}\nnot json\n");
    let mut child = Command::new(sensor_bin())
        .args(["watch", "--file", "-", "--severity", "medium"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    std::io::Write::write_all(child.stdin.as_mut().context("stdin")?, input.as_bytes())?;
    drop(child.stdin.take());
    let out = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.trim_end(),
        "Medium 2026-11-25T12:00:00.000Z /usr/bin/python3.11 (pid 7, user alice) -> 192.0.2.9:5555 x"
    );
    // A filter that excludes it prints nothing.
    let mut child = Command::new(sensor_bin())
        .args(["watch", "--file", "-", "--severity", "high"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    std::io::Write::write_all(child.stdin.as_mut().context("stdin")?, input.as_bytes())?;
    drop(child.stdin.take());
    assert_eq!(child.wait_with_output()?.stdout, b"");
    Ok(())
}

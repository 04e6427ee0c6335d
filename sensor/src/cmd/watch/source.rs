//! Where `sensor watch` reads lines: the journal, a file, stdin, or a sensor it starts.
//!
//! Any local user can write a journal entry with the sensor's identifier and fields over
//! journald's world-writable native socket. So the sensor's entries are selected only by
//! fields journald sets itself from the sender's credentials and cgroup (`_UID`, `_PID`,
//! `_SYSTEMD_UNIT`), never by `SYSLOG_IDENTIFIER` or `_COMM` (a process sets its own), and
//! each entry is checked again here rather than trusting journalctl's match syntax alone.

use std::{
    io::{BufRead, BufReader, IsTerminal, Read},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use anyhow::{Context, Result};
use serde_json::Value;

use crate::output::journald::ALERT_IDENTIFIER;

/// The unit the shipped service file (and the Debian package) installs.
pub const DEFAULT_UNIT: &str = "t1571-sensor.service";

/// A longer line is skipped (and counted as bad): memory per line stays bounded whatever
/// the source holds. The sensor's own entries are far smaller (4 KiB bounds per field).
const MAX_LINE: usize = 1 << 20;

/// Whose journal entries are the sensor's, by fields journald itself sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A sensor run by systemd as this unit (as root): `_SYSTEMD_UNIT=` and `_UID=0`.
    Unit(String),
    /// A sensor started by hand (as root), this boot: `_PID=` and `_UID=0`.
    Pid(u32),
}

/// One journal entry, judged.
#[derive(Debug, PartialEq, Eq)]
pub enum Entry {
    /// The sensor's ECS line (`SENSOR_ECS_JSON` of an entry under the alert identifier).
    Ecs(String),
    /// The sensor's, but not an ECS line (its own log lines, stdout of the unit).
    Other,
    /// Not attributed to the sensor by journald: never shown.
    Untrusted,
    /// Not a journal entry as `journalctl -o json` writes one.
    Bad,
}

impl Origin {
    /// journalctl matches: different fields are ANDed (the same field twice would be ORed,
    /// so each appears once).
    pub fn matches(&self) -> Vec<String> {
        match self {
            Origin::Unit(unit) => vec![format!("_SYSTEMD_UNIT={unit}"), "_UID=0".into()],
            Origin::Pid(pid) => vec![format!("_PID={pid}"), "_UID=0".into()],
        }
    }

    /// Judges one line of `journalctl -o json`, checking the trusted fields again.
    pub fn entry(&self, line: &str) -> Entry {
        let Ok(Value::Object(e)) = serde_json::from_str::<Value>(line) else {
            return Entry::Bad;
        };
        // A field sent twice comes back as an array, binary data as numbers: only a
        // single string counts.
        let field = |k: &str| e.get(k).and_then(Value::as_str);
        let ours = field("_UID") == Some("0")
            && match self {
                Origin::Unit(unit) => field("_SYSTEMD_UNIT") == Some(unit.as_str()),
                Origin::Pid(pid) => field("_PID") == Some(pid.to_string().as_str()),
            };
        if !ours {
            return Entry::Untrusted;
        }
        // Among the sensor's own entries the identifier tells alerts from log lines.
        if field("SYSLOG_IDENTIFIER") != Some(ALERT_IDENTIFIER) {
            return Entry::Other;
        }
        match (e.get("SENSOR_ECS_JSON"), field("SENSOR_ECS_JSON")) {
            (None, _) => Entry::Other,
            (Some(_), Some(ecs)) => Entry::Ecs(ecs.to_string()),
            (Some(_), None) => Entry::Bad,
        }
    }

    /// `journalctl -f` for this origin's entries, as JSON (`--all`: fields over 4 KiB in full).
    fn journalctl(&self) -> Command {
        let mut cmd = Command::new("journalctl");
        cmd.args(["-f", "-n", "200", "-o", "json", "--all", "--no-pager"]);
        if let Origin::Pid(_) = self {
            // A PID names the sensor only in this boot.
            cmd.arg("-b");
        }
        cmd.args(self.matches());
        cmd
    }
}

/// What a source hands the view.
#[derive(Debug, PartialEq, Eq)]
pub enum Input {
    Line(String),
    /// The sensor's entry that is no ECS line (its log lines): nothing to show.
    Other,
    /// A journal entry journald does not attribute to the sensor.
    Untrusted,
    /// Unreadable: not JSON, over [`MAX_LINE`], or a malformed journal entry.
    Bad,
}

/// Where lines come from; a child process (journalctl or a sensor) is killed on drop.
pub struct Source {
    pub lines: mpsc::Receiver<Input>,
    child: Option<Child>,
}

impl Drop for Source {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Got {
    /// A line, in the buffer.
    Line,
    /// A line over [`MAX_LINE`], consumed and dropped.
    TooLong,
    /// The end (or a read error).
    End,
}

/// Reads one line of at most [`MAX_LINE`] bytes into `buf`.
fn bounded_line(r: &mut impl BufRead, buf: &mut Vec<u8>) -> Got {
    buf.clear();
    match r.by_ref().take(MAX_LINE as u64 + 1).read_until(b'\n', buf) {
        Ok(0) | Err(_) => Got::End,
        Ok(_) if buf.len() > MAX_LINE && buf.last() != Some(&b'\n') => {
            // Skip the rest of the long line without keeping it.
            let mut sink = Vec::new();
            loop {
                sink.clear();
                match r.by_ref().take(64 * 1024).read_until(b'\n', &mut sink) {
                    Ok(0) | Err(_) => return Got::TooLong,
                    Ok(_) if sink.last() == Some(&b'\n') => return Got::TooLong,
                    Ok(_) => {}
                }
            }
        }
        Ok(_) => Got::Line,
    }
}

fn reader_thread(
    r: impl Read + Send + 'static,
    follow: bool,
    judge: impl Fn(&str) -> Input + Send + 'static,
) -> mpsc::Receiver<Input> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut r = BufReader::new(r);
        let mut buf = Vec::new();
        loop {
            let input = match bounded_line(&mut r, &mut buf) {
                Got::End if follow => {
                    std::thread::sleep(Duration::from_millis(200));
                    continue;
                }
                Got::End => break,
                Got::TooLong => Input::Bad,
                // Invalid UTF-8 does not end the stream: it shows as U+FFFD.
                Got::Line => judge(String::from_utf8_lossy(&buf).trim_end()),
            };
            if tx.send(input).is_err() {
                break;
            }
        }
    });
    rx
}

fn ecs_line(line: &str) -> Input {
    Input::Line(line.to_string())
}

fn spawn_lines(
    mut cmd: Command,
    what: &str,
    judge: impl Fn(&str) -> Input + Send + 'static,
) -> Result<Source> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    let out = child.stdout.take().context("child stdout")?;
    Ok(Source {
        lines: reader_thread(out, false, judge),
        child: Some(child),
    })
}

/// Where to read, from the command line.
pub struct Choice<'a> {
    pub file: Option<&'a std::path::Path>,
    pub live: bool,
    /// Explicitly the journal (`--journal`, `--unit` or `--pid`).
    pub journal: bool,
    pub origin: Origin,
}

pub fn open(c: &Choice) -> Result<Source> {
    if let Some(path) = c.file {
        if path.as_os_str() == "-" {
            return Ok(Source {
                lines: reader_thread(std::io::stdin(), false, ecs_line),
                child: None,
            });
        }
        let f = std::fs::File::open(path).with_context(|| format!("--file {}", path.display()))?;
        return Ok(Source {
            lines: reader_thread(f, true, ecs_line),
            child: None,
        });
    }
    if c.live {
        let exe = std::env::current_exe().context("finding the sensor binary")?;
        let mut cmd = Command::new(exe);
        cmd.arg("run");
        return spawn_lines(cmd, "t1571-sensor run", ecs_line);
    }
    if !c.journal && !std::io::stdin().is_terminal() {
        return Ok(Source {
            lines: reader_thread(std::io::stdin(), false, ecs_line),
            child: None,
        });
    }
    let origin = c.origin.clone();
    spawn_lines(
        origin.journalctl(),
        "journalctl (is systemd-journald running?)",
        move |line| match origin.entry(line) {
            Entry::Ecs(ecs) => Input::Line(ecs),
            Entry::Other => Input::Other,
            Entry::Untrusted => Input::Untrusted,
            Entry::Bad => Input::Bad,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(fields: &[(&str, Value)]) -> String {
        let m: serde_json::Map<String, Value> = fields
            .iter()
            .map(|(k, v)| ((*k).to_string(), v.clone()))
            .collect();
        Value::Object(m).to_string()
    }

    #[test]
    fn only_entries_journald_attributes_to_the_sensor_count() {
        let unit = Origin::Unit(DEFAULT_UNIT.into());
        let pid = Origin::Pid(4242);
        let ecs = Value::from(r#"{"event":{"kind":"alert"}}"#);
        let real = entry(&[
            ("_UID", "0".into()),
            ("_PID", "4242".into()),
            ("_SYSTEMD_UNIT", DEFAULT_UNIT.into()),
            ("SYSLOG_IDENTIFIER", ALERT_IDENTIFIER.into()),
            ("SENSOR_ECS_JSON", ecs.clone()),
        ]);
        assert_eq!(unit.entry(&real), Entry::Ecs(ecs.as_str().unwrap().into()));
        assert_eq!(pid.entry(&real), Entry::Ecs(ecs.as_str().unwrap().into()));
        // A forger's entry: the identifier and fields, but its own uid (and _COMM).
        let forged = entry(&[
            ("_UID", "65534".into()),
            ("_PID", "4242".into()),
            ("_SYSTEMD_UNIT", DEFAULT_UNIT.into()),
            ("_COMM", "t1571-sensor".into()),
            ("SYSLOG_IDENTIFIER", ALERT_IDENTIFIER.into()),
            ("SENSOR_ECS_JSON", ecs.clone()),
        ]);
        assert_eq!(unit.entry(&forged), Entry::Untrusted);
        assert_eq!(pid.entry(&forged), Entry::Untrusted);
        // Root, but another unit or process.
        let other = entry(&[
            ("_UID", "0".into()),
            ("_PID", "7".into()),
            ("_SYSTEMD_UNIT", "cron.service".into()),
            ("SYSLOG_IDENTIFIER", ALERT_IDENTIFIER.into()),
            ("SENSOR_ECS_JSON", ecs.clone()),
        ]);
        assert_eq!(unit.entry(&other), Entry::Untrusted);
        assert_eq!(pid.entry(&other), Entry::Untrusted);
        // No trusted fields at all, or an array where one string belongs.
        let bare = entry(&[
            ("SYSLOG_IDENTIFIER", ALERT_IDENTIFIER.into()),
            ("SENSOR_ECS_JSON", ecs.clone()),
        ]);
        assert_eq!(unit.entry(&bare), Entry::Untrusted);
        let doubled = entry(&[
            ("_UID", Value::from(vec!["0", "65534"])),
            ("_SYSTEMD_UNIT", DEFAULT_UNIT.into()),
            ("SYSLOG_IDENTIFIER", ALERT_IDENTIFIER.into()),
            ("SENSOR_ECS_JSON", ecs.clone()),
        ]);
        assert_eq!(unit.entry(&doubled), Entry::Untrusted);
        // The sensor's own log line is not an alert; garbage is bad.
        let log = entry(&[
            ("_UID", "0".into()),
            ("_SYSTEMD_UNIT", DEFAULT_UNIT.into()),
            ("SYSLOG_IDENTIFIER", "t1571-sensor-log".into()),
            ("MESSAGE", "attached".into()),
        ]);
        assert_eq!(unit.entry(&log), Entry::Other);
        assert_eq!(unit.entry("not json"), Entry::Bad);
        assert_eq!(
            unit.matches(),
            ["_SYSTEMD_UNIT=t1571-sensor.service", "_UID=0"]
        );
        assert_eq!(pid.matches(), ["_PID=4242", "_UID=0"]);
    }

    #[test]
    fn a_line_over_the_bound_is_skipped_and_the_next_one_read() {
        let long = "x".repeat(MAX_LINE + 10);
        let text = format!("{long}\nshort\n");
        let mut r = BufReader::new(text.as_bytes());
        let mut buf = Vec::new();
        assert_eq!(bounded_line(&mut r, &mut buf), Got::TooLong);
        assert_eq!(bounded_line(&mut r, &mut buf), Got::Line);
        assert_eq!(buf, b"short\n");
        assert_eq!(bounded_line(&mut r, &mut buf), Got::End);
    }
}

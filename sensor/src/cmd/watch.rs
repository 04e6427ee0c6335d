//! `sensor watch`: the live view a sysadmin runs over ssh. A refreshing terminal table
//! (ratatui on crossterm): alerts newest first in severity colours, the current window's
//! top processes, destinations and ports, and counters. Lines come from the journal
//! (`journalctl -f`, only entries journald attributes to the sensor), a file, stdin, or a
//! sensor this command starts itself (`--live`). Filter by severity, process and port;
//! pause; quit on q. When stdout is not a terminal, matching alerts are printed as plain
//! lines instead. Either way every text from an alert passes [`printable`] first.

mod source;
mod tui;

use std::{
    borrow::Cow,
    collections::{HashMap, VecDeque},
    io::{IsTerminal, Write},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use ratatui::style::Color;
use serde_json::Value;

pub use source::{DEFAULT_UNIT, Entry, Origin};
use source::{Input, Source};

#[derive(clap::Args, Debug, Clone)]
pub struct WatchArgs {
    /// Read JSON lines from this file (followed as it grows); `-` for stdin.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["journal", "live"])]
    file: Option<PathBuf>,
    /// Follow the sensor's entries in the journal (the default on a terminal). Entries are
    /// taken only when journald itself attributes them to the sensor: the unit (`--unit`)
    /// and uid 0, or `--pid` and uid 0; never by identifier, which any user can write.
    #[arg(long, conflicts_with = "live")]
    journal: bool,
    /// The sensor's systemd unit, in the journal [default: t1571-sensor.service].
    #[arg(long, value_name = "NAME", conflicts_with_all = ["file", "live", "pid"])]
    unit: Option<String>,
    /// A sensor started by hand (as root), by its process id, in the journal of this boot.
    #[arg(long, value_name = "PID", conflicts_with_all = ["file", "live"])]
    pid: Option<u32>,
    /// Start a sensor in-process-tree (`sensor run`, as root) and watch its output.
    #[arg(long)]
    live: bool,
    /// Show only alerts of at least this severity.
    #[arg(long, value_enum, default_value = "low")]
    severity: MinSeverity,
    /// Show only processes whose executable contains this text.
    #[arg(long, value_name = "TEXT")]
    process: Option<String>,
    /// Show only this destination port.
    #[arg(long, value_name = "PORT")]
    port: Option<u16>,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum MinSeverity {
    Low,
    Medium,
    High,
}

impl MinSeverity {
    fn risk(self) -> u64 {
        match self {
            MinSeverity::Low => 1,
            MinSeverity::Medium => 2,
            MinSeverity::High => 3,
        }
    }

    fn next(self) -> Self {
        match self {
            MinSeverity::Low => MinSeverity::Medium,
            MinSeverity::Medium => MinSeverity::High,
            MinSeverity::High => MinSeverity::Low,
        }
    }
}

/// Text from an alert made safe for a terminal, the same for the table and for plain
/// lines: control characters (C0, DEL, C1: cursor moves, screen clears, carriage returns,
/// OSC titles) and bidirectional overrides (text that reads other than it is) become
/// visible escapes, and a backslash is doubled so an escape cannot be faked.
pub fn printable(s: &str) -> Cow<'_, str> {
    fn bidi(c: char) -> bool {
        matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    }
    fn hostile(c: char) -> bool {
        c.is_control() || bidi(c) || matches!(c, '\\' | '\u{2028}' | '\u{2029}')
    }
    if !s.chars().any(hostile) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x80 && c.is_control() => {
                out.push_str(&format!("\\x{:02x}", u32::from(c)));
            }
            c if hostile(c) => out.push_str(&format!("\\u{{{:04x}}}", u32::from(c))),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// One alert as the view shows it (every text through [`printable`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    pub time: String,
    pub risk: u64,
    pub executable: String,
    pub pid: u64,
    pub user: String,
    pub destination: String,
    pub port: u64,
    pub reason: String,
}

impl Alert {
    /// An alert from one ECS line the sensor printed; None for other lines.
    pub fn from_line(v: &Value) -> Option<Self> {
        if v["event"]["kind"] != "alert" {
            return None;
        }
        let s = |p: &Value| printable(p.as_str().unwrap_or("")).into_owned();
        Some(Self {
            time: s(&v["@timestamp"]),
            risk: v["event"]["risk_score"].as_u64().unwrap_or(0),
            executable: s(&v["process"]["executable"]),
            pid: v["process"]["pid"].as_u64().unwrap_or(0),
            user: printable(
                v["user"]["name"]
                    .as_str()
                    .or(v["user"]["id"].as_str())
                    .unwrap_or(""),
            )
            .into_owned(),
            destination: s(&v["destination"]["ip"]),
            port: v["destination"]["port"].as_u64().unwrap_or(0),
            reason: s(&v["event"]["reason"]),
        })
    }

    fn severity(&self) -> &'static str {
        match self.risk {
            3.. => "High",
            2 => "Medium",
            _ => "Low",
        }
    }

    fn colour(&self) -> Color {
        match self.risk {
            3.. => Color::Red,
            2 => Color::Yellow,
            _ => Color::Cyan,
        }
    }

    pub fn plain(&self) -> String {
        format!(
            "{:<6} {} {} (pid {}, user {}) -> {}:{} {}",
            self.severity(),
            self.time,
            self.executable,
            self.pid,
            self.user,
            self.destination,
            self.port,
            self.reason
        )
    }
}

/// What the view filters on.
#[derive(Debug, Clone)]
pub struct Filter {
    pub severity: MinSeverity,
    pub process: Option<String>,
    pub port: Option<u16>,
}

impl Filter {
    pub fn shows(&self, a: &Alert) -> bool {
        a.risk >= self.severity.risk()
            && self
                .process
                .as_deref()
                .is_none_or(|p| a.executable.contains(p))
            && self.port.is_none_or(|p| a.port == u64::from(p))
    }
}

/// Alerts kept for the table (newest first) and the rollup window.
const KEEP: usize = 1000;
const WINDOW: Duration = Duration::from_secs(300);

/// The view's state, fed one line at a time.
pub struct State {
    alerts: VecDeque<(Instant, Alert)>,
    events: u64,
    alert_count: u64,
    lost: u64,
    bad_lines: u64,
    /// Journal entries journald does not attribute to the sensor (never shown).
    untrusted: u64,
    rate: (Instant, u64, f64),
    pub paused: bool,
    pub filter: Filter,
}

impl State {
    pub fn new(filter: Filter) -> Self {
        Self {
            alerts: VecDeque::new(),
            events: 0,
            alert_count: 0,
            lost: 0,
            bad_lines: 0,
            untrusted: 0,
            rate: (Instant::now(), 0, 0.0),
            paused: false,
            filter,
        }
    }

    /// Takes one input from a source; returns the alert it carried, if any.
    fn take(&mut self, input: Input) -> Option<Alert> {
        match input {
            Input::Line(line) => self.feed(&line),
            Input::Other => None,
            Input::Untrusted => {
                self.untrusted += 1;
                None
            }
            Input::Bad => {
                self.bad_lines += 1;
                None
            }
        }
    }

    /// Takes one line; returns the alert it carried, if any.
    pub fn feed(&mut self, line: &str) -> Option<Alert> {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            self.bad_lines += 1;
            return None;
        };
        if v["event"]["action"] == "network-connect" {
            self.events += v["sensor"]["folded_count"].as_u64().unwrap_or(1);
        }
        if let Some(lost) = v["sensor"]["lost_events_total"].as_u64() {
            self.lost = self.lost.max(lost);
        }
        let alert = Alert::from_line(&v)?;
        self.alert_count += 1;
        if !self.paused {
            self.alerts.push_front((Instant::now(), alert.clone()));
            self.alerts.truncate(KEEP);
        }
        Some(alert)
    }

    fn events_per_second(&mut self) -> f64 {
        let (at, count, _) = self.rate;
        let dt = at.elapsed().as_secs_f64();
        if dt >= 1.0 {
            self.rate = (
                Instant::now(),
                self.events,
                (self.events - count) as f64 / dt,
            );
        }
        self.rate.2
    }

    fn shown(&self) -> impl Iterator<Item = &Alert> {
        self.alerts
            .iter()
            .map(|(_, a)| a)
            .filter(|a| self.filter.shows(a))
    }

    /// Top `n` values of `key` over the current window's shown alerts.
    fn top(&self, n: usize, key: impl Fn(&Alert) -> String) -> Vec<(String, u64)> {
        let mut counts: HashMap<String, u64> = HashMap::new();
        for (at, a) in &self.alerts {
            if at.elapsed() <= WINDOW && self.filter.shows(a) {
                *counts.entry(key(a)).or_default() += 1;
            }
        }
        let mut v: Vec<_> = counts.into_iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v.truncate(n);
        v
    }
}

pub fn run(args: WatchArgs) -> Result<()> {
    let filter = Filter {
        severity: args.severity,
        process: args.process.clone(),
        port: args.port,
    };
    let origin = match (args.pid, &args.unit) {
        (Some(pid), _) => Origin::Pid(pid),
        (None, unit) => Origin::Unit(unit.as_deref().unwrap_or(DEFAULT_UNIT).to_string()),
    };
    let source = source::open(&source::Choice {
        file: args.file.as_deref(),
        live: args.live,
        // Naming the sensor names the journal as the source.
        journal: args.journal || args.pid.is_some() || args.unit.is_some(),
        origin,
    })?;
    let mut state = State::new(filter);
    if !std::io::stdout().is_terminal() {
        return plain(&source, &mut state);
    }
    let mut terminal = ratatui::try_init().context("opening the terminal")?;
    let r = tui::tui(&source, &mut state, &mut terminal);
    ratatui::restore();
    r
}

/// Not a terminal: one plain line per matching alert, until the source ends.
fn plain(source: &Source, state: &mut State) -> Result<()> {
    let mut out = std::io::stdout().lock();
    for input in source.lines.iter() {
        if input == Input::Untrusted {
            eprintln!(
                "sensor watch: skipped a journal entry journald does not attribute to the sensor ({} so far)",
                state.untrusted + 1
            );
        }
        if let Some(a) = state.take(input)
            && state.filter.shows(&a)
        {
            writeln!(out, "{}", a.plain()).context("writing to stdout")?;
            out.flush().context("writing to stdout")?;
        }
    }
    Ok(())
}

/// Checks the arguments before anything starts (used by the CLI's validation).
pub fn validate(args: &WatchArgs) -> Result<()> {
    if let Some(path) = &args.file
        && path.as_os_str() != "-"
        && !path.exists()
    {
        bail!("--file {}: no such file", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = r#"{"@timestamp":"2026-11-25T12:00:00.000Z","event":{"kind":"alert","action":"network-connect","risk_score":3,"reason":"known C2 port"},"process":{"executable":"/usr/bin/nc.openbsd","pid":42},"user":{"name":"root"},"destination":{"ip":"203.0.113.7","port":4444},"sensor":{"folded_count":1}}"#;

    #[test]
    fn alerts_are_read_and_filtered() {
        let mut s = State::new(Filter {
            severity: MinSeverity::Low,
            process: None,
            port: None,
        });
        let a = s.feed(LINE).unwrap();
        assert_eq!(a.port, 4444);
        assert_eq!(a.risk, 3);
        assert!(a.plain().starts_with("High   2026-11-25T12:00:00.000Z /usr/bin/nc.openbsd (pid 42, user root) -> 203.0.113.7:4444"));
        assert_eq!(s.shown().count(), 1);
        s.filter.process = Some("curl".into());
        assert_eq!(s.shown().count(), 0);
        s.filter.process = None;
        s.filter.port = Some(8088);
        assert_eq!(s.shown().count(), 0);
        s.filter.port = Some(4444);
        assert_eq!(s.top(3, |x| x.port.to_string()), [("4444".into(), 1)]);
        assert!(s.feed("not json").is_none());
        assert_eq!(s.bad_lines, 1);
        assert_eq!(s.events, 1);
    }

    #[test]
    fn control_characters_and_bidi_overrides_are_shown_escaped() {
        assert!(matches!(printable("/usr/bin/nc"), Cow::Borrowed(_)));
        assert_eq!(
            printable("/tmp/a\x1b[2J\rb\u{9b}c\u{202e}d\\e\u{7f}"),
            r"/tmp/a\x1b[2J\x0db\u{009b}c\u{202e}d\\e\x7f"
        );
        // The alert's texts and so both the table and the plain line carry the escapes.
        let hostile = LINE.replace("/usr/bin/nc.openbsd", "/usr/bin/nc\\u001b[2J\\r");
        let mut s = State::new(Filter {
            severity: MinSeverity::Low,
            process: None,
            port: None,
        });
        let a = s.feed(&hostile).unwrap();
        assert_eq!(a.executable, r"/usr/bin/nc\x1b[2J\x0d");
        assert!(!a.plain().contains(['\x1b', '\r']));
    }
}

//! `sensor watch`: the live view a sysadmin runs over ssh. A refreshing terminal table
//! (ratatui on crossterm): alerts newest first in severity colours, the current window's
//! top processes, destinations and ports, and counters. Lines come from the journal
//! (`journalctl -f`), a file, stdin, or a sensor this command starts itself (`--live`).
//! Filter by severity, process and port; pause; quit on q. When stdout is not a terminal,
//! matching alerts are printed as plain lines instead.

use std::{
    collections::{HashMap, VecDeque},
    io::{BufRead, BufReader, IsTerminal, Write},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use ratatui::{
    Frame,
    crossterm::event::{self, Event, KeyCode, KeyEventKind},
    layout::{Constraint, Layout},
    style::{Color, Modifier, Style},
    text::Line,
    widgets::{Block, Borders, Paragraph, Row, Table},
};
use serde_json::Value;

#[derive(clap::Args, Debug, Clone)]
pub struct WatchArgs {
    /// Read JSON lines from this file (followed as it grows); `-` for stdin.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["journal", "live"])]
    file: Option<PathBuf>,
    /// Follow the sensor service's entries in the journal (the default on a terminal).
    #[arg(long, conflicts_with = "live")]
    journal: bool,
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

/// One alert as the view shows it.
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
        let s = |p: &Value| p.as_str().unwrap_or("").to_string();
        Some(Self {
            time: s(&v["@timestamp"]),
            risk: v["event"]["risk_score"].as_u64().unwrap_or(0),
            executable: s(&v["process"]["executable"]),
            pid: v["process"]["pid"].as_u64().unwrap_or(0),
            user: v["user"]["name"]
                .as_str()
                .or(v["user"]["id"].as_str())
                .unwrap_or("")
                .to_string(),
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
            rate: (Instant::now(), 0, 0.0),
            paused: false,
            filter,
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

/// Where lines come from; a child process (journalctl or a sensor) is killed on drop.
struct Source {
    lines: mpsc::Receiver<String>,
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

fn reader_thread(r: impl std::io::Read + Send + 'static, follow: bool) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut r = BufReader::new(r);
        let mut line = String::new();
        loop {
            line.clear();
            match r.read_line(&mut line) {
                Ok(0) if follow => std::thread::sleep(Duration::from_millis(200)),
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if tx.send(line.trim_end().to_string()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    rx
}

fn spawn_lines(mut cmd: Command, what: &str) -> Result<Source> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    let out = child.stdout.take().context("child stdout")?;
    Ok(Source {
        lines: reader_thread(out, false),
        child: Some(child),
    })
}

fn open(args: &WatchArgs) -> Result<Source> {
    if let Some(path) = &args.file {
        if path.as_os_str() == "-" {
            return Ok(Source {
                lines: reader_thread(std::io::stdin(), false),
                child: None,
            });
        }
        let f = std::fs::File::open(path).with_context(|| format!("--file {}", path.display()))?;
        return Ok(Source {
            lines: reader_thread(f, true),
            child: None,
        });
    }
    if args.live {
        let exe = std::env::current_exe().context("finding the sensor binary")?;
        let mut cmd = Command::new(exe);
        cmd.arg("run");
        return spawn_lines(cmd, "sensor run");
    }
    if !args.journal && !std::io::stdin().is_terminal() {
        return Ok(Source {
            lines: reader_thread(std::io::stdin(), false),
            child: None,
        });
    }
    // The journal: each alert entry carries the whole document in SENSOR_ECS_JSON.
    let mut cmd = Command::new("journalctl");
    cmd.args([
        "-f",
        "-n",
        "200",
        "-o",
        "cat",
        "--output-fields=SENSOR_ECS_JSON",
        "-t",
        crate::output::journald::ALERT_IDENTIFIER,
    ]);
    spawn_lines(cmd, "journalctl (is systemd-journald running?)")
}

pub fn run(args: WatchArgs) -> Result<()> {
    let filter = Filter {
        severity: args.severity,
        process: args.process.clone(),
        port: args.port,
    };
    let source = open(&args)?;
    let mut state = State::new(filter);
    if !std::io::stdout().is_terminal() {
        return plain(&source, &mut state);
    }
    let mut terminal = ratatui::try_init().context("opening the terminal")?;
    let r = tui(&source, &mut state, &mut terminal);
    ratatui::restore();
    r
}

/// Not a terminal: one plain line per matching alert, until the source ends.
fn plain(source: &Source, state: &mut State) -> Result<()> {
    let mut out = std::io::stdout().lock();
    for line in source.lines.iter() {
        if let Some(a) = state.feed(&line)
            && state.filter.shows(&a)
        {
            writeln!(out, "{}", a.plain()).context("writing to stdout")?;
            out.flush().context("writing to stdout")?;
        }
    }
    Ok(())
}

/// Text being typed into a filter.
enum Typing {
    None,
    Process(String),
    Port(String),
}

fn tui(source: &Source, state: &mut State, terminal: &mut ratatui::DefaultTerminal) -> Result<()> {
    let mut typing = Typing::None;
    loop {
        while let Ok(line) = source.lines.try_recv() {
            state.feed(&line);
        }
        terminal
            .draw(|f| draw(f, state, &typing))
            .context("drawing")?;
        if !event::poll(Duration::from_millis(250)).context("reading the terminal")? {
            continue;
        }
        // Resize events just fall through to the next draw.
        let Event::Key(key) = event::read().context("reading the terminal")? else {
            continue;
        };
        if key.kind != KeyEventKind::Press {
            continue;
        }
        typing = match (typing, key.code) {
            (Typing::None, KeyCode::Char('q')) => return Ok(()),
            (Typing::None, KeyCode::Char(' ' | 'p')) => {
                state.paused = !state.paused;
                Typing::None
            }
            (Typing::None, KeyCode::Char('s')) => {
                state.filter.severity = state.filter.severity.next();
                Typing::None
            }
            (Typing::None, KeyCode::Char('/')) => Typing::Process(String::new()),
            (Typing::None, KeyCode::Char(':')) => Typing::Port(String::new()),
            (Typing::None, KeyCode::Char('c')) => {
                state.filter.process = None;
                state.filter.port = None;
                Typing::None
            }
            (Typing::Process(t), KeyCode::Enter) => {
                state.filter.process = (!t.is_empty()).then_some(t);
                Typing::None
            }
            (Typing::Port(t), KeyCode::Enter) => {
                state.filter.port = t.parse().ok();
                Typing::None
            }
            (Typing::Process(_) | Typing::Port(_), KeyCode::Esc) => Typing::None,
            (Typing::Process(mut t), KeyCode::Backspace) => {
                t.pop();
                Typing::Process(t)
            }
            (Typing::Port(mut t), KeyCode::Backspace) => {
                t.pop();
                Typing::Port(t)
            }
            (Typing::Process(mut t), KeyCode::Char(c)) if t.len() < 256 => {
                t.push(c);
                Typing::Process(t)
            }
            (Typing::Port(mut t), KeyCode::Char(c)) if c.is_ascii_digit() && t.len() < 5 => {
                t.push(c);
                Typing::Port(t)
            }
            (t, _) => t,
        };
    }
}

fn draw(f: &mut Frame, state: &mut State, typing: &Typing) {
    let [head, body, foot] = Layout::vertical([
        Constraint::Length(3),
        Constraint::Min(6),
        Constraint::Length(8),
    ])
    .areas(f.area());
    let rate = state.events_per_second();
    let filter = format!(
        "severity >= {:?}{}{}",
        state.filter.severity,
        state
            .filter
            .process
            .as_deref()
            .map(|p| format!(", process ~ {p}"))
            .unwrap_or_default(),
        state
            .filter
            .port
            .map(|p| format!(", port {p}"))
            .unwrap_or_default()
    );
    let prompt = match typing {
        Typing::None => String::new(),
        Typing::Process(t) => format!("  process filter: {t}_"),
        Typing::Port(t) => format!("  port filter: {t}_"),
    };
    let status = format!(
        "events/s {rate:.1}  alerts {}  lost {}  bad lines {}  [{filter}]{}{prompt}",
        state.alert_count,
        state.lost,
        state.bad_lines,
        if state.paused { "  PAUSED" } else { "" },
    );
    f.render_widget(
        Paragraph::new(vec![
            Line::from(status),
            Line::from("q quit  p pause  s severity  / process  : port  c clear"),
        ])
        .block(
            Block::default()
                .borders(Borders::BOTTOM)
                .title("t1571-sensor watch"),
        ),
        head,
    );
    let rows: Vec<Row> = state
        .shown()
        .take(usize::from(body.height))
        .map(|a| {
            Row::new(vec![
                a.severity().to_string(),
                a.time.get(11..19).unwrap_or(&a.time).to_string(),
                a.executable.clone(),
                a.pid.to_string(),
                a.user.clone(),
                format!("{}:{}", a.destination, a.port),
            ])
            .style(Style::default().fg(a.colour()))
        })
        .collect();
    f.render_widget(
        Table::new(
            rows,
            [
                Constraint::Length(6),
                Constraint::Length(8),
                Constraint::Percentage(40),
                Constraint::Length(8),
                Constraint::Length(10),
                Constraint::Percentage(30),
            ],
        )
        .header(
            Row::new(vec!["sev", "time", "process", "pid", "user", "destination"])
                .style(Style::default().add_modifier(Modifier::BOLD)),
        )
        .block(
            Block::default()
                .borders(Borders::ALL)
                .title("alerts, newest first"),
        ),
        body,
    );
    let [a, b, c] = Layout::horizontal([Constraint::Ratio(1, 3); 3]).areas(foot);
    for (area, title, top) in [
        (a, "top processes", state.top(6, |x| x.executable.clone())),
        (
            b,
            "top destinations",
            state.top(6, |x| x.destination.clone()),
        ),
        (c, "top ports", state.top(6, |x| x.port.to_string())),
    ] {
        let lines: Vec<Line> = top
            .into_iter()
            .map(|(k, n)| Line::from(format!("{n:>6}  {k}")))
            .collect();
        f.render_widget(
            Paragraph::new(lines).block(Block::default().borders(Borders::ALL).title(title)),
            area,
        );
    }
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
}

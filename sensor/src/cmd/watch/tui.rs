//! The terminal view of `sensor watch` (ratatui on crossterm): the table, the top lists,
//! the counters, and the keys.

use std::time::Duration;

use anyhow::{Context, Result};
use ratatui::{
    Frame,
    crossterm::event::{self, Event, KeyCode, KeyEventKind},
    layout::{Constraint, Layout},
    style::{Modifier, Style},
    text::Line,
    widgets::{Block, Borders, Paragraph, Row, Table},
};

use super::{source::Source, state::State};

/// Text being typed into a filter.
enum Typing {
    None,
    Process(String),
    Port(String),
}

pub(super) fn tui(
    source: &Source,
    state: &mut State,
    terminal: &mut ratatui::DefaultTerminal,
) -> Result<()> {
    let mut typing = Typing::None;
    loop {
        while let Ok(input) = source.lines.try_recv() {
            state.take(input);
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
        "events/s {rate:.1}  alerts {}  lost {}  bad lines {}{}  [{filter}]{}{prompt}",
        state.alert_count,
        state.lost,
        state.bad_lines,
        if state.untrusted > 0 {
            format!("  not from the sensor {}", state.untrusted)
        } else {
            String::new()
        },
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
                a.severity_text().to_string(),
                a.time.get(11..19).unwrap_or(&a.time).to_string(),
                a.executable.clone(),
                a.pid.map_or_else(|| "-".into(), |p| p.to_string()),
                a.user.clone(),
                a.flow.to_string(),
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
                Constraint::Percentage(35),
                Constraint::Length(8),
                Constraint::Length(10),
                Constraint::Percentage(35),
            ],
        )
        .header(
            Row::new(vec!["sev", "time", "process", "pid", "user", "flow"])
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
        (b, "top addresses", state.top(6, |x| x.flow.address())),
        (
            c,
            "top ports",
            state.top(6, |x| {
                x.flow.port().map_or_else(|| "-".into(), |p| p.to_string())
            }),
        ),
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

//! The view's state, fed one line at a time: the alerts kept for the table, the counters,
//! the rate and the top lists over the current window.

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

use super::{alert::Alert, filter::Filter, source::Input};
use crate::output::{
    ecs::{Action, ConnectionLine, StatusLine},
    metrics::stats::Stats,
    status::EventsLost,
};

/// Alerts kept for the table (newest first) and the rollup window.
const KEEP: usize = 1000;
const WINDOW: Duration = Duration::from_secs(300);

/// The view's state, fed one line at a time.
pub struct State {
    alerts: VecDeque<(Instant, Alert)>,
    pub(super) events: u64,
    pub(super) alert_count: u64,
    pub(super) lost: u64,
    pub(super) bad_lines: u64,
    /// Journal entries journald does not attribute to the sensor (never shown).
    pub(super) untrusted: u64,
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
    pub(super) fn take(&mut self, input: Input) -> Option<Alert> {
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
        // Every line reads into the connection line's type: the sections a kind lacks are
        // absent, and `sensor.*` fields it does not know are kept in its `extra` map.
        let Ok(l) = serde_json::from_str::<ConnectionLine<'_>>(line) else {
            self.bad_lines += 1;
            return None;
        };
        let sensor = &l.sensor.fields;
        if l.event.action == Action::NetworkConnect {
            self.events += sensor.folded_count.unwrap_or(1);
        }
        // The loss total is in the status lines' own payloads: such a line (one a metrics
        // interval, or a loss) is read again into its type; one that does not read is bad.
        let lost = match l.event.action {
            Action::SensorStats | Action::SensorStopped => {
                serde_json::from_str::<StatusLine<'_, Stats>>(line)
                    .map(|s| Some(s.sensor.fields.lost_events_total))
            }
            Action::EventsLost => serde_json::from_str::<StatusLine<'_, EventsLost>>(line)
                .map(|s| Some(s.sensor.fields.lost_events_total)),
            _ => Ok(None),
        };
        match lost {
            Ok(lost) => self.lost = self.lost.max(lost.unwrap_or(0)),
            Err(_) => {
                self.bad_lines += 1;
                return None;
            }
        }
        let alert = Alert::from_line(&l)?;
        self.alert_count += 1;
        if !self.paused {
            self.alerts.push_front((Instant::now(), alert.clone()));
            self.alerts.truncate(KEEP);
        }
        Some(alert)
    }

    pub(super) fn events_per_second(&mut self) -> f64 {
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

    pub(super) fn shown(&self) -> impl Iterator<Item = &Alert> {
        self.alerts
            .iter()
            .map(|(_, a)| a)
            .filter(|a| self.filter.shows(a))
    }

    /// Top `n` values of `key` over the current window's shown alerts.
    pub(super) fn top(&self, n: usize, key: impl Fn(&Alert) -> String) -> Vec<(String, u64)> {
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

#[cfg(test)]
mod tests {
    use super::{super::filter::MinSeverity, *};
    use crate::output::{ecs::Kind, status::status};
    use serde_json::Value;

    const LINE: &str = r#"{"@timestamp":"2026-11-25T12:00:00.000Z","event":{"kind":"alert","action":"network-connect","risk_score":3,"reason":"known C2 port"},"process":{"executable":"/usr/bin/nc.openbsd","pid":42},"user":{"name":"root"},"destination":{"ip":"203.0.113.7","port":4444},"sensor":{"folded_count":2}}"#;

    fn state() -> State {
        State::new(Filter {
            severity: MinSeverity::Low,
            process: None,
            port: None,
        })
    }

    #[test]
    fn alerts_are_read_and_filtered() {
        let mut s = state();
        let a = s.feed(LINE).unwrap();
        assert_eq!(a.flow.port(), Some(4444));
        assert_eq!(a.risk, 3);
        assert!(a.plain().starts_with("High   2026-11-25T12:00:00.000Z /usr/bin/nc.openbsd (pid 42, user root) -> 203.0.113.7:4444"));
        assert_eq!(s.shown().count(), 1);
        s.filter.process = Some("curl".into());
        assert_eq!(s.shown().count(), 0);
        s.filter.process = None;
        s.filter.port = Some(8088);
        assert_eq!(s.shown().count(), 0);
        s.filter.port = Some(4444);
        assert_eq!(s.top(3, |x| x.flow.address()), [("203.0.113.7".into(), 1)]);
        assert!(s.feed("not json").is_none());
        // A line of an action this release does not know is not read as something else.
        assert!(
            s.feed(&LINE.replace("network-connect", "network-teleport"))
                .is_none()
        );
        assert_eq!(s.bad_lines, 2);
        assert_eq!(s.events, 2, "a folded line stands for its count");
        // The loss total, from the typed payloads the sensor writes.
        let stats = Stats {
            lost_events_total: 7,
            ..Default::default()
        };
        let stats = status(Kind::Metric, Action::SensorStats, "h", stats);
        let stats = serde_json::to_string(&stats).unwrap();
        assert!(s.feed(&stats).is_none());
        assert_eq!(s.lost, 7);
        let lost = EventsLost {
            lost_events: 2,
            lost_events_total: 9,
            cause: "ring buffer full".into(),
        };
        let lost = status(Kind::PipelineError, Action::EventsLost, "h", lost);
        assert!(s.feed(&serde_json::to_string(&lost).unwrap()).is_none());
        assert_eq!(s.lost, 9);
        // A stats line whose counter is not a number is bad, not read as 0.
        assert_eq!(s.bad_lines, 2);
        let wrong = stats.replace(r#""lost_events_total":7"#, r#""lost_events_total":"7""#);
        assert_ne!(wrong, stats);
        assert!(s.feed(&wrong).is_none());
        assert_eq!((s.bad_lines, s.lost), (3, 9));
    }

    /// Lines the current release wrote (the replay fixture, one malformed line among them)
    /// read into the type.
    #[test]
    fn recorded_lines_are_read() {
        let mut s = state();
        let text = include_str!("../../../../tests/fixtures/atomic4-beacon.jsonl");
        let alerts = text.lines().filter_map(|l| s.feed(l)).count();
        // Only the line the fixture holds as not JSON is bad.
        let not_json = text
            .lines()
            .filter(|l| serde_json::from_str::<Value>(l).is_err())
            .count();
        assert_eq!((s.bad_lines, not_json), (1, 1));
        assert_eq!(alerts, 10, "every alert it holds");
    }

    #[test]
    fn hostile_texts_reach_the_alert_escaped() {
        // The alert's texts and so both the table and the plain line carry the escapes.
        let hostile = LINE.replace("/usr/bin/nc.openbsd", "/usr/bin/nc\\u001b[2J\\r");
        let a = state().feed(&hostile).unwrap();
        assert_eq!(a.executable, r"/usr/bin/nc\x1b[2J\x0d");
        assert!(!a.plain().contains(['\x1b', '\r']));
    }
}

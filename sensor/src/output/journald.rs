//! Alerts and the sensor's own log lines to systemd-journald over its native protocol
//! (libsystemd's `journal_send`, which passes entries too large for a datagram through a
//! sealed memfd, as the protocol defines). One alert is one journal entry: a human
//! `MESSAGE`, a `PRIORITY` from its severity, its key fields as `SENSOR_*` journal fields,
//! and the whole ECS document in `SENSOR_ECS_JSON`, so `journalctl -o json` gives it back.

use std::net::IpAddr;

use libsystemd::logging::{Priority, journal_send};

use crate::{
    detect::{decision::Line, severity::Severity},
    enrich::Enriched,
    kernel::records::{Flow, canonical},
};

/// Alerts are `-t t1571-sensor`; the sensor's log lines `-t t1571-sensor-log`, so a
/// filter for one never gets the other.
pub const ALERT_IDENTIFIER: &str = "t1571-sensor";
pub const LOG_IDENTIFIER: &str = "t1571-sensor-log";

/// What one alert entry says, taken from the typed decision (never read back from JSON).
#[derive(Debug, Clone)]
pub struct Summary<'a> {
    /// `event.action` (`network-connect`, `beacon-detected`, ...).
    pub action: &'a str,
    /// `event.kind`: `alert`, `event`, `state`, `metric`, ...
    pub kind: &'a str,
    /// 0 when unscored.
    pub risk: u8,
    pub executable: Option<&'a str>,
    pub pid: Option<u32>,
    pub user: Option<&'a str>,
    pub destination: Option<(IpAddr, u16)>,
}

impl<'a> Summary<'a> {
    /// A line that is not about one connection (state, metrics, errors).
    pub fn status(kind: &'a str, action: &'a str) -> Self {
        Self {
            action,
            kind,
            risk: 0,
            executable: None,
            pid: None,
            user: None,
            destination: None,
        }
    }

    fn connection(e: &'a Enriched, kind: &'a str, action: &'a str, risk: u8) -> Self {
        let c = &e.conn;
        // The end the line is about, as the line prints it: a listen's own address, the
        // listener an inbound connection reached, a connect's peer.
        let (ip, port) = match c.flow {
            Flow::Connect | Flow::Udp => (c.dst, c.dport),
            Flow::Listen | Flow::Inbound => (c.src, c.sport),
        };
        Self {
            action,
            kind,
            risk,
            executable: e.proc.executable.as_deref(),
            pid: Some(c.tgid),
            user: e.user_name.as_deref(),
            destination: Some((canonical(ip), port)),
        }
    }

    /// What an engine line is about, from its types (the same kinds and actions the
    /// renderer writes).
    pub fn of(line: &'a Line<Enriched>) -> Self {
        match line {
            Line::Connection(d) => {
                let risk = d.decision.risk;
                let kind = if risk > 0 { "alert" } else { "event" };
                Self::connection(&d.conn, kind, d.conn.conn.flow.action(), risk)
            }
            Line::Beacon(b) => Self::connection(&b.conn, "alert", "beacon-detected", b.risk),
            Line::Rollup(_) => Self::status("event", "alert-rollup"),
            Line::Scan(s) => Self {
                risk: s.risk,
                executable: Some(s.key.executable.as_str()).filter(|e| !e.is_empty()),
                user: Some(s.key.user.as_str()).filter(|u| !u.is_empty()),
                ..Self::status("alert", "network-scan")
            },
            Line::Summary(_) => Self::status("state", "engine-summary"),
        }
    }
}

/// Journal priority of an entry: High alerts `err`, Medium `warning` (both shown by
/// `journalctl -p warning`), Low `notice`, everything else `info`.
pub fn priority(s: &Summary) -> Priority {
    match (s.kind, s.risk) {
        ("alert", 3..) => Priority::Error,
        ("alert", 2) => Priority::Warning,
        ("alert", _) => Priority::Notice,
        ("pipeline_error", _) => Priority::Warning,
        _ => Priority::Info,
    }
}

/// An alert's severity name (`Info` for an alert without risk, which the engine never makes).
fn severity(risk: u8) -> &'static str {
    Severity::of(risk).map_or("Info", Severity::as_str)
}

/// `High: /usr/bin/curl (pid 4242, user alice) -> 203.0.113.7:8088 [T1571]`, or the
/// action for entries that are not about one connection.
pub fn message(s: &Summary) -> String {
    let Some((ip, port)) = s.destination else {
        return format!("{}: {}", s.kind, s.action);
    };
    let dst = match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    };
    let who = match (s.pid, s.user) {
        (Some(pid), Some(user)) => format!(" (pid {pid}, user {user})"),
        (Some(pid), None) => format!(" (pid {pid})"),
        _ => String::new(),
    };
    format!(
        "{}: {}{who} -> {dst} [T1571]",
        if s.kind == "alert" {
            severity(s.risk)
        } else {
            s.kind
        },
        s.executable.unwrap_or("unknown process"),
    )
}

/// The journal fields of one entry, ECS document included.
pub fn fields(s: &Summary, ecs_json: &str) -> Vec<(&'static str, String)> {
    let mut f = vec![
        ("SYSLOG_IDENTIFIER", ALERT_IDENTIFIER.to_string()),
        ("SENSOR_EVENT_ACTION", s.action.to_string()),
        ("SENSOR_EVENT_KIND", s.kind.to_string()),
        ("SENSOR_ECS_JSON", ecs_json.to_string()),
    ];
    if s.kind == "alert" {
        f.push(("SENSOR_RISK_SCORE", s.risk.to_string()));
        f.push(("SENSOR_SEVERITY", severity(s.risk).to_string()));
        f.push(("SENSOR_TECHNIQUE", "T1571".to_string()));
    }
    if let Some(e) = s.executable {
        f.push(("SENSOR_PROCESS_EXECUTABLE", e.to_string()));
    }
    if let Some(pid) = s.pid {
        f.push(("SENSOR_PROCESS_PID", pid.to_string()));
    }
    if let Some(u) = s.user {
        f.push(("SENSOR_USER_NAME", u.to_string()));
    }
    if let Some((ip, port)) = s.destination {
        f.push(("SENSOR_DESTINATION_IP", ip.to_string()));
        f.push(("SENSOR_DESTINATION_PORT", port.to_string()));
    }
    f
}

/// The journal as an output: failures are counted, said once when they start and once
/// when the journal is back, and every entry is retried (a datagram send costs nothing).
#[derive(Debug, Default)]
pub struct Journal {
    /// Entries the journal did not take.
    pub failed: u64,
    failing: bool,
}

/// One journal entry, owned: built where the line's summary is, sent by the output writer.
#[derive(Debug)]
pub struct Entry {
    priority: Priority,
    message: String,
    fields: Vec<(&'static str, String)>,
}

impl Entry {
    pub fn new(s: &Summary, ecs_json: &str) -> Self {
        Self {
            priority: priority(s),
            message: message(s),
            fields: fields(s, ecs_json),
        }
    }
}

impl Journal {
    pub fn send(&mut self, s: &Summary, ecs_json: &str) -> bool {
        self.send_entry(&Entry::new(s, ecs_json))
    }

    pub fn send_entry(&mut self, e: &Entry) -> bool {
        let r = journal_send(
            e.priority,
            &e.message,
            e.fields.iter().map(|(k, v)| (*k, v.as_str())),
        );
        match r {
            Ok(()) => {
                if self.failing {
                    self.failing = false;
                    log::warn!(
                        "journald reachable again; {} entries could not be written",
                        self.failed
                    );
                }
                true
            }
            Err(e) => {
                self.failed += 1;
                if !self.failing {
                    self.failing = true;
                    // To stderr, not the journal: it is the journal that failed.
                    eprintln!(
                        "sensor: journald unreachable ({e}); entries are counted as lost and retried"
                    );
                }
                false
            }
        }
    }
}

/// The sensor's log lines as journal entries of their own identifier and priority.
pub struct Logger {
    pub level: log::LevelFilter,
}

impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= self.level
    }

    fn log(&self, r: &log::Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let priority = match r.level() {
            log::Level::Error => Priority::Error,
            log::Level::Warn => Priority::Warning,
            log::Level::Info => Priority::Info,
            _ => Priority::Debug,
        };
        let msg = r.args().to_string();
        let sent = journal_send(
            priority,
            &msg,
            [
                ("SYSLOG_IDENTIFIER", LOG_IDENTIFIER),
                ("SENSOR_LOG_TARGET", r.target()),
            ]
            .into_iter(),
        );
        if sent.is_err() {
            eprintln!("[{}] {msg}", r.level());
        }
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(risk: u8) -> Summary<'static> {
        Summary {
            action: "network-connect",
            kind: "alert",
            risk,
            executable: Some("/usr/bin/curl"),
            pid: Some(4242),
            user: Some("alice"),
            destination: Some(("203.0.113.7".parse().unwrap(), 8088)),
        }
    }

    #[test]
    fn message_and_priority_follow_severity() {
        assert_eq!(
            message(&alert(3)),
            "High: /usr/bin/curl (pid 4242, user alice) -> 203.0.113.7:8088 [T1571]"
        );
        assert!(matches!(priority(&alert(3)), Priority::Error));
        assert!(matches!(priority(&alert(2)), Priority::Warning));
        assert!(matches!(priority(&alert(1)), Priority::Notice));
        let mut v6 = alert(2);
        v6.destination = Some(("2001:db8::7".parse().unwrap(), 4444));
        assert!(message(&v6).starts_with("Medium: "));
        assert!(message(&v6).ends_with("-> [2001:db8::7]:4444 [T1571]"));
        let mut event = alert(0);
        event.kind = "event";
        assert!(matches!(priority(&event), Priority::Info));
    }

    #[test]
    fn fields_carry_the_key_values_and_the_document() {
        let f = fields(&alert(3), "{\"a\":1}");
        let get = |k: &str| f.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("SENSOR_RISK_SCORE"), Some("3"));
        assert_eq!(get("SENSOR_DESTINATION_PORT"), Some("8088"));
        assert_eq!(get("SENSOR_ECS_JSON"), Some("{\"a\":1}"));
        assert_eq!(get("SYSLOG_IDENTIFIER"), Some(ALERT_IDENTIFIER));
    }
}

//! One alert as `sensor watch` shows it, read from one ECS line: its texts made safe for a
//! terminal, and its flow shown the way round the flow kind puts it (a listener's own
//! address, an inbound peer before the local end, an outbound source before its
//! destination).

use std::{borrow::Cow, fmt, net::IpAddr};

use ratatui::style::Color;

use crate::output::ecs::{self, Action, ConnectionLine, Kind, Severity};

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

/// One end of a flow, ready to print; either part may be missing from a line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Endpoint {
    pub ip: Option<IpAddr>,
    pub port: Option<u16>,
}

impl Endpoint {
    fn of(e: Option<&ecs::Endpoint>) -> Self {
        e.map(|e| Self {
            // An IPv4-mapped IPv6 address is shown as the IPv4 address it is.
            ip: e.ip.map(|ip| ip.to_canonical()),
            port: e.port,
        })
        .unwrap_or_default()
    }

    fn ip_text(&self) -> String {
        self.ip.map_or_else(|| "-".into(), |ip| ip.to_string())
    }
}

/// `ip:port` (`[ip]:port` for IPv6); the address alone when the port is not known (a
/// connect's source port is bound after the tracepoints see it), `-` for a missing address.
impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.ip, self.port) {
            (Some(IpAddr::V6(ip)), Some(p)) => write!(f, "[{ip}]:{p}"),
            (Some(ip), Some(p)) => write!(f, "{ip}:{p}"),
            (Some(ip), None) => write!(f, "{ip}"),
            (None, Some(p)) => write!(f, "-:{p}"),
            (None, None) => f.write_str("-"),
        }
    }
}

/// The alert's flow, by kind: each line kind puts its ends in different fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flow {
    /// A listening socket (`network-listen`): its local end, in `source.*`.
    Listen { local: Endpoint },
    /// An inbound connection (`network-accept`): the remote peer in `source.*`, the local
    /// end it reached in `destination.*`.
    Inbound { peer: Endpoint, local: Endpoint },
    /// An outbound TCP connect or UDP send (`network-connect`, and a beacon's connections).
    /// UDP lines have no source: the hook runs before the route picks one.
    Outbound {
        source: Option<Endpoint>,
        destination: Endpoint,
        udp: bool,
    },
}

impl Flow {
    fn of(line: &ConnectionLine<'_>) -> Self {
        let (source, destination) = (line.source.as_ref(), line.destination.as_ref());
        match line.event.action {
            Action::NetworkListen => Flow::Listen {
                local: Endpoint::of(source),
            },
            Action::NetworkAccept => Flow::Inbound {
                peer: Endpoint::of(source),
                local: Endpoint::of(destination),
            },
            _ => Flow::Outbound {
                source: source.map(|s| Endpoint::of(Some(s))),
                destination: Endpoint::of(destination),
                udp: line.network.as_ref().and_then(|n| n.transport.as_deref()) == Some("udp"),
            },
        }
    }

    /// The port the port filter and the top list use: where an outbound flow goes, the
    /// listener's own port for a listen or an inbound connection.
    pub fn port(&self) -> Option<u16> {
        match self {
            Flow::Listen { local } | Flow::Inbound { local, .. } => local.port,
            Flow::Outbound { destination, .. } => destination.port,
        }
    }

    /// The address the alert is about, for the top list: where an outbound flow goes,
    /// where an inbound one comes from, where a listener listens.
    pub fn address(&self) -> String {
        match self {
            Flow::Listen { local } => local.ip_text(),
            Flow::Inbound { peer, .. } => peer.ip_text(),
            Flow::Outbound { destination, .. } => destination.ip_text(),
        }
    }
}

impl fmt::Display for Flow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Flow::Listen { local } => write!(f, "listening on {local}"),
            Flow::Inbound { peer, local } => write!(f, "{peer} -> {local}"),
            Flow::Outbound {
                source,
                destination,
                udp,
            } => {
                if let Some(s) = source {
                    write!(f, "{s} ")?;
                }
                write!(f, "-> {destination}{}", if *udp { "/udp" } else { "" })
            }
        }
    }
}

/// One alert as the view shows it (every text through [`printable`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    pub time: String,
    /// `event.risk_score`: 0 (not scored) to 3.
    pub risk: u8,
    pub executable: String,
    pub pid: Option<u32>,
    pub user: String,
    pub flow: Flow,
    pub reason: String,
}

impl Alert {
    /// An alert from one line the sensor printed; None for lines that are not alerts.
    pub fn from_line(line: &ConnectionLine<'_>) -> Option<Self> {
        if line.event.kind != Kind::Alert {
            return None;
        }
        let text = |s: Option<&str>| printable(s.unwrap_or("")).into_owned();
        let process = line.process.as_ref();
        let user = line.user.as_ref();
        Some(Self {
            time: printable(&line.timestamp).into_owned(),
            risk: line.event.risk_score.unwrap_or(0),
            executable: text(process.and_then(|p| p.executable.as_deref())),
            pid: process.and_then(|p| p.pid),
            user: text(user.and_then(|u| u.name.as_deref().or(u.id.as_deref()))),
            flow: Flow::of(line),
            reason: text(line.event.reason.as_deref()),
        })
    }

    /// None for an alert that was not scored (risk 0).
    pub fn severity(&self) -> Option<Severity> {
        Severity::of(self.risk)
    }

    /// The severity's name, for both views.
    pub fn severity_text(&self) -> &'static str {
        self.severity().map_or("-", Severity::as_str)
    }

    pub fn colour(&self) -> Color {
        match self.severity() {
            Some(Severity::High) => Color::Red,
            Some(Severity::Medium) => Color::Yellow,
            _ => Color::Cyan,
        }
    }

    pub fn plain(&self) -> String {
        let pid = self.pid.map_or_else(|| "-".into(), |p| p.to_string());
        format!(
            "{:<6} {} {} (pid {pid}, user {}) {} {}",
            self.severity_text(),
            self.time,
            self.executable,
            self.user,
            self.flow,
            self.reason
        )
    }
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;

    /// An alert line of each flow kind, with the ends where the sensor puts them.
    const CONNECT: &str = r#"{"event":{"kind":"alert","action":"network-connect"},"network":{"transport":"tcp"},"source":{"ip":"192.0.2.10","port":40000},"destination":{"ip":"203.0.113.7","port":9001},"sensor":{}}"#;
    const LISTEN: &str = r#"{"event":{"kind":"alert","action":"network-listen"},"network":{"transport":"tcp"},"source":{"ip":"::ffff:192.0.2.1","port":4444},"sensor":{}}"#;
    const INBOUND: &str = r#"{"event":{"kind":"alert","action":"network-accept"},"network":{"transport":"tcp","direction":"ingress"},"source":{"ip":"192.0.2.9","port":51000},"destination":{"ip":"192.0.2.1","port":4444},"sensor":{}}"#;
    const UDP: &str = r#"{"event":{"kind":"alert","action":"network-connect"},"network":{"transport":"udp"},"destination":{"ip":"2001:db8::7","port":5353},"sensor":{}}"#;

    fn alert(line: &str) -> Option<Alert> {
        Alert::from_line(&serde_json::from_str(line).unwrap())
    }

    #[rstest]
    #[case::connect(CONNECT, "192.0.2.10:40000 -> 203.0.113.7:9001", 9001, "203.0.113.7")]
    #[case::listen(LISTEN, "listening on 192.0.2.1:4444", 4444, "192.0.2.1")]
    #[case::inbound(INBOUND, "192.0.2.9:51000 -> 192.0.2.1:4444", 4444, "192.0.2.9")]
    #[case::udp(UDP, "-> [2001:db8::7]:5353/udp", 5353, "2001:db8::7")]
    #[case::connect_unbound_source(
        &CONNECT.replace(r#","port":40000"#, ""),
        "192.0.2.10 -> 203.0.113.7:9001",
        9001,
        "203.0.113.7"
    )]
    fn each_flow_kind_is_shown_the_way_round_it_goes(
        #[case] line: &str,
        #[case] shown: &str,
        #[case] port: u16,
        #[case] address: &str,
    ) {
        let a = alert(line).unwrap();
        assert_eq!(a.flow.to_string(), shown);
        assert!(a.plain().contains(&format!(") {shown} ")), "{}", a.plain());
        assert_eq!(a.flow.port(), Some(port));
        assert_eq!(a.flow.address(), address);
    }

    #[test]
    fn a_line_that_is_not_an_alert_is_none() {
        assert_eq!(alert(&CONNECT.replace("alert", "event")), None);
    }

    #[test]
    fn a_missing_end_is_shown_as_missing() {
        let a = alert(r#"{"event":{"kind":"alert","action":"network-listen"},"sensor":{}}"#);
        assert_eq!(a.unwrap().flow.to_string(), "listening on -");
    }

    #[test]
    fn control_characters_and_bidi_overrides_are_shown_escaped() {
        assert!(matches!(printable("/usr/bin/nc"), Cow::Borrowed(_)));
        assert_eq!(
            printable("/tmp/a\x1b[2J\rb\u{9b}c\u{202e}d\\e\u{7f}"),
            r"/tmp/a\x1b[2J\x0db\u{009b}c\u{202e}d\\e\x7f"
        );
    }
}

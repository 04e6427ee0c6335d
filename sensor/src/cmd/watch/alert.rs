//! One alert as `sensor watch` shows it, read from one ECS line: its texts made safe for a
//! terminal, and its flow shown the way round the flow kind puts it (a listener's own
//! address, an inbound peer before the local end, an outbound source before its
//! destination).

use std::{borrow::Cow, fmt, net::IpAddr};

use ratatui::style::Color;
use serde_json::Value;

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

/// One end of a flow, ready to print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The address as printed: an IPv4-mapped IPv6 address as IPv4, anything that is not
    /// an address through [`printable`].
    pub ip: String,
    pub port: u16,
}

impl Endpoint {
    fn new(ip: &str, port: u16) -> Self {
        let ip = match ip.parse::<IpAddr>() {
            Ok(a) => a.to_canonical().to_string(),
            Err(_) => printable(ip).into_owned(),
        };
        Self { ip, port }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.ip.contains(':') {
            write!(f, "[{}]:{}", self.ip, self.port)
        } else {
            write!(f, "{}:{}", self.ip, self.port)
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
    /// An outbound TCP connect or UDP send (`network-connect`). UDP lines have no source:
    /// the hook runs before the route picks one.
    Outbound {
        source: Option<Endpoint>,
        destination: Endpoint,
        udp: bool,
    },
}

impl Flow {
    /// The port the port filter and the top list use: where an outbound flow goes, the
    /// listener's own port for a listen or an inbound connection.
    pub fn port(&self) -> u16 {
        match self {
            Flow::Listen { local } | Flow::Inbound { local, .. } => local.port,
            Flow::Outbound { destination, .. } => destination.port,
        }
    }

    /// The address the alert is about, for the top list: where an outbound flow goes,
    /// where an inbound one comes from, where a listener listens.
    pub fn address(&self) -> &str {
        match self {
            Flow::Listen { local } => &local.ip,
            Flow::Inbound { peer, .. } => &peer.ip,
            Flow::Outbound { destination, .. } => &destination.ip,
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
    pub risk: u64,
    pub executable: String,
    pub pid: u64,
    pub user: String,
    pub flow: Flow,
    pub reason: String,
}

impl Alert {
    /// An alert from one ECS line the sensor printed; None for other lines.
    pub fn from_line(v: &Value) -> Option<Self> {
        if v["event"]["kind"] != "alert" {
            return None;
        }
        let s = |p: &Value| printable(p.as_str().unwrap_or("")).into_owned();
        let end = |e: &Value| {
            e.is_object().then(|| {
                let port = e["port"].as_u64().and_then(|p| u16::try_from(p).ok());
                Endpoint::new(e["ip"].as_str().unwrap_or(""), port.unwrap_or(0))
            })
        };
        let (source, destination) = (end(&v["source"]), end(&v["destination"]));
        let missing = || Endpoint::new("", 0);
        let flow = match v["event"]["action"].as_str() {
            Some("network-listen") => Flow::Listen {
                local: source.unwrap_or_else(missing),
            },
            Some("network-accept") => Flow::Inbound {
                peer: source.unwrap_or_else(missing),
                local: destination.unwrap_or_else(missing),
            },
            _ => Flow::Outbound {
                source,
                destination: destination.unwrap_or_else(missing),
                udp: v["network"]["transport"] == "udp",
            },
        };
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
            flow,
            reason: s(&v["event"]["reason"]),
        })
    }

    pub fn severity(&self) -> &'static str {
        match self.risk {
            3.. => "High",
            2 => "Medium",
            _ => "Low",
        }
    }

    pub fn colour(&self) -> Color {
        match self.risk {
            3.. => Color::Red,
            2 => Color::Yellow,
            _ => Color::Cyan,
        }
    }

    pub fn plain(&self) -> String {
        format!(
            "{:<6} {} {} (pid {}, user {}) {} {}",
            self.severity(),
            self.time,
            self.executable,
            self.pid,
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
    const CONNECT: &str = r#"{"event":{"kind":"alert","action":"network-connect"},"network":{"transport":"tcp"},"source":{"ip":"192.0.2.10","port":40000},"destination":{"ip":"203.0.113.7","port":9001}}"#;
    const LISTEN: &str = r#"{"event":{"kind":"alert","action":"network-listen"},"network":{"transport":"tcp"},"source":{"ip":"::ffff:192.0.2.1","port":4444}}"#;
    const INBOUND: &str = r#"{"event":{"kind":"alert","action":"network-accept"},"network":{"transport":"tcp","direction":"ingress"},"source":{"ip":"192.0.2.9","port":51000},"destination":{"ip":"192.0.2.1","port":4444}}"#;
    const UDP: &str = r#"{"event":{"kind":"alert","action":"network-connect"},"network":{"transport":"udp"},"destination":{"ip":"2001:db8::7","port":5353}}"#;

    #[rstest]
    #[case::connect(CONNECT, "192.0.2.10:40000 -> 203.0.113.7:9001", 9001, "203.0.113.7")]
    #[case::listen(LISTEN, "listening on 192.0.2.1:4444", 4444, "192.0.2.1")]
    #[case::inbound(INBOUND, "192.0.2.9:51000 -> 192.0.2.1:4444", 4444, "192.0.2.9")]
    #[case::udp(UDP, "-> [2001:db8::7]:5353/udp", 5353, "2001:db8::7")]
    fn each_flow_kind_is_shown_the_way_round_it_goes(
        #[case] line: &str,
        #[case] shown: &str,
        #[case] port: u16,
        #[case] address: &str,
    ) {
        let v: Value = serde_json::from_str(line).unwrap();
        let a = Alert::from_line(&v).unwrap();
        assert_eq!(a.flow.to_string(), shown);
        assert!(a.plain().contains(&format!(") {shown} ")), "{}", a.plain());
        assert_eq!(a.flow.port(), port);
        assert_eq!(a.flow.address(), address);
    }

    #[test]
    fn a_line_that_is_not_an_alert_is_none() {
        let v: Value = serde_json::from_str(&CONNECT.replace("alert", "event")).unwrap();
        assert_eq!(Alert::from_line(&v), None);
    }

    #[test]
    fn control_characters_and_bidi_overrides_are_shown_escaped() {
        assert!(matches!(printable("/usr/bin/nc"), Cow::Borrowed(_)));
        assert_eq!(
            printable("/tmp/a\x1b[2J\rb\u{9b}c\u{202e}d\\e\u{7f}"),
            r"/tmp/a\x1b[2J\x0db\u{009b}c\u{202e}d\\e\x7f"
        );
        // An address that is not one is escaped like any other text.
        assert_eq!(Endpoint::new("a\x1bb", 1).ip, r"a\x1bb");
    }
}

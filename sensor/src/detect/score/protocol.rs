//! Protocol on the port: what a flow's first bytes speak, scored against the port.
//! - A protocol that does not belong on a standard port (SSH or anything unknown on 443,
//!   not HTTP on 80): at least `[protocol] mismatch_risk` (Medium), one tier more for a
//!   high-risk process.
//! - TLS, HTTP or SSH on a non-standard port: pairing evidence, one tier more on a flow the
//!   port tiers already scored (never a tier of its own: services on odd ports are common).
//! - TLS SNI or HTTP Host that is a bare IP address where a name is expected: one tier more
//!   on a scored flow, Low on its own.
//! - A JA4 on `[protocol] ja4_blocklist`: High.
//!
//! Excluded destinations stay at 0. docs/protocol.md has the table.

use serde::Serialize;

use crate::{
    detect::{policy::Policy, score::Verdict},
    enrich::protocol::{Protocol, ProtocolFacts},
};

/// One finding, with what it was judged on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum ProtocolReason {
    /// `seen` on `port`, where `expected` belongs.
    Mismatch {
        seen: Protocol,
        port: u16,
        expected: Vec<Protocol>,
    },
    /// A known protocol on a port with no expectation of it.
    NonStandardPort { seen: Protocol, port: u16 },
    /// The TLS SNI or the HTTP Host is an IP address.
    BareIp { field: BareIpField },
    /// The JA4 is on the blocklist.
    Ja4Blocklisted { ja4: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BareIpField {
    Sni,
    HttpHost,
}

impl ProtocolReason {
    /// The stable code (`sensor.matched.protocol`, what the Sigma rules match).
    pub fn code(&self) -> &'static str {
        match self {
            Self::Mismatch { .. } => "protocol_mismatch",
            Self::NonStandardPort { .. } => "protocol_non_standard_port",
            Self::BareIp { .. } => "bare_ip_name",
            Self::Ja4Blocklisted { .. } => "ja4_blocklisted",
        }
    }

    /// In words, for `event.reason`.
    pub fn text(&self) -> String {
        match self {
            Self::Mismatch {
                seen,
                port,
                expected,
            } => {
                let exp: Vec<&str> = expected.iter().map(|p| p.name()).collect();
                format!(
                    "protocol does not belong on a standard port: {} on {port}, expected {} ([protocol])",
                    seen.name(),
                    exp.join(" or ")
                )
            }
            Self::NonStandardPort { seen, port } => format!(
                "{} on non-standard port {port} (protocol pairing, one tier more)",
                seen.name()
            ),
            Self::BareIp { field } => format!(
                "{} is a bare IP address where a name is expected",
                match field {
                    BareIpField::Sni => "TLS SNI",
                    BareIpField::HttpHost => "HTTP Host",
                }
            ),
            Self::Ja4Blocklisted { ja4 } => {
                format!("JA4 {ja4} is on the blocklist ([protocol] ja4_blocklist)")
            }
        }
    }
}

/// What the first bytes added to a verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProtocolVerdict {
    pub protocol: Protocol,
    pub reasons: Vec<ProtocolReason>,
    /// The port tiers' risk before the first bytes were scored.
    pub port_risk: u8,
}

/// Scores `facts` of a connection to `port` on top of `base` (the port tiers' verdict):
/// returns the new risk and what made it.
pub fn score(
    policy: &Policy,
    facts: &ProtocolFacts,
    port: u16,
    base: &Verdict,
) -> (u8, ProtocolVerdict) {
    let pp = &policy.protocol;
    let mut reasons = Vec::new();
    let seen = facts.protocol;
    let expected = pp.expected(port);
    if !expected.is_empty() && !expected.contains(&seen) {
        reasons.push(ProtocolReason::Mismatch {
            seen,
            port,
            expected: expected.clone(),
        });
    } else if expected.is_empty()
        && seen != Protocol::Other
        && !policy.standard_ports.contains(&port)
    {
        reasons.push(ProtocolReason::NonStandardPort { seen, port });
    }
    let bare = |s: &str| host_part(s).parse::<std::net::IpAddr>().is_ok();
    if facts
        .tls
        .as_ref()
        .and_then(|t| t.sni.as_deref())
        .is_some_and(bare)
    {
        reasons.push(ProtocolReason::BareIp {
            field: BareIpField::Sni,
        });
    }
    if facts
        .http
        .as_ref()
        .and_then(|h| h.host.as_deref())
        .is_some_and(bare)
    {
        reasons.push(ProtocolReason::BareIp {
            field: BareIpField::HttpHost,
        });
    }
    if let Some(ja4) = facts.tls.as_ref().and_then(|t| t.ja4.as_deref())
        && pp.ja4_blocklist.contains(ja4)
    {
        reasons.push(ProtocolReason::Ja4Blocklisted {
            ja4: ja4.to_string(),
        });
    }
    let port_risk = base.risk;
    let mut risk = port_risk;
    if base.excluded_by.is_none() {
        for r in &reasons {
            risk = match r {
                ProtocolReason::Mismatch { .. } => {
                    let floor = pp.mismatch_risk + u8::from(base.high_risk.is_some());
                    risk.max(floor)
                }
                ProtocolReason::NonStandardPort { .. } if port_risk > 0 => risk + 1,
                ProtocolReason::NonStandardPort { .. } => risk,
                ProtocolReason::BareIp { .. } if port_risk > 0 => risk + 1,
                ProtocolReason::BareIp { .. } => risk.max(1),
                ProtocolReason::Ja4Blocklisted { .. } => 3,
            }
            .min(3);
        }
    }
    (
        risk,
        ProtocolVerdict {
            protocol: seen,
            reasons,
            port_risk,
        },
    )
}

/// A Host header's host: `[v6]:port`, `v4:port` or a bare name or address.
fn host_part(s: &str) -> &str {
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match s.rsplit_once(':') {
        // One colon: host and port; more: an unbracketed IPv6 address.
        Some((h, _)) if !h.contains(':') => h,
        _ => s,
    }
}

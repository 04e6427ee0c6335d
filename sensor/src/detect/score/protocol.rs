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

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use rstest::rstest;

    use super::*;
    use crate::{
        detect::{score::score as score_subject, subject::Subject},
        enrich::protocol::{HttpFacts, SshFacts, TlsFacts},
    };

    pub(crate) fn facts(protocol: Protocol) -> ProtocolFacts {
        ProtocolFacts {
            protocol,
            tls: (protocol == Protocol::Tls).then(|| TlsFacts {
                version: Some("1.3".into()),
                sni: Some("c2.example".into()),
                alpn: vec!["h2".into()],
                ja4: Some("t13d3112h2_e8f1e7e78f70_b26ce05bbdd6".into()),
            }),
            http: (protocol == Protocol::Http).then(|| HttpFacts {
                method: "GET".into(),
                host: Some("c2.example".into()),
                user_agent: Some("curl/7.88.1".into()),
            }),
            ssh: (protocol == Protocol::Ssh).then(|| SshFacts {
                banner: "SSH-2.0-OpenSSH_9.2p1".into(),
            }),
            captured: 100,
            truncated: false,
        }
    }

    fn run(p: &Policy, exe: &str, port: u16, f: ProtocolFacts, dst: &str) -> Verdict {
        let s = Subject {
            protocol: Some(Arc::new(f)),
            ..Subject::named(Some(exe), "x")
        };
        score_subject(p, &s.to(dst.parse().unwrap(), port))
    }

    fn codes(v: &Verdict) -> Vec<&'static str> {
        v.protocol
            .as_ref()
            .map(|p| p.reasons.iter().map(ProtocolReason::code).collect())
            .unwrap_or_default()
    }

    const PUBLIC: &str = "203.0.113.7";

    #[rstest]
    // Expected pairs: nothing added.
    #[case("curl", 443, Protocol::Tls, 0, &[])]
    #[case("curl", 80, Protocol::Http, 0, &[])]
    #[case("ssh", 22, Protocol::Ssh, 0, &[])]
    #[case("curl", 8443, Protocol::Tls, 0, &[])]
    // Not what the standard port expects: Medium, High for a high-risk process.
    #[case("ssh", 443, Protocol::Ssh, 2, &["protocol_mismatch"])]
    #[case("nc.openbsd", 80, Protocol::Other, 3, &["protocol_mismatch"])]
    #[case("systemd", 80, Protocol::Other, 2, &["protocol_mismatch"])]
    #[case("curl", 8080, Protocol::Tls, 3, &["protocol_mismatch"])]
    #[case("ssh", 22, Protocol::Http, 2, &["protocol_mismatch"])]
    #[case("openssl", 993, Protocol::Other, 3, &["protocol_mismatch"])]
    // Known protocols on non-standard ports: one tier more on a scored flow.
    #[case("nginx", 4444, Protocol::Tls, 2, &["protocol_non_standard_port"])]
    #[case("python3", 5555, Protocol::Ssh, 3, &["protocol_non_standard_port"])]
    #[case("curl", 8088, Protocol::Http, 3, &["protocol_non_standard_port"])]
    #[case("java", 9443, Protocol::Tls, 0, &["protocol_non_standard_port"])]
    // Unknown bytes on a non-standard port: the port tiers alone.
    #[case("nc", 4444, Protocol::Other, 3, &[])]
    #[case("java", 9443, Protocol::Other, 0, &[])]
    // A standard port without expectation (3000): nothing added.
    #[case("node", 3000, Protocol::Http, 0, &[])]
    fn tiers(
        #[case] exe: &str,
        #[case] port: u16,
        #[case] protocol: Protocol,
        #[case] risk: u8,
        #[case] want: &[&str],
    ) {
        let v = run(&Policy::default(), exe, port, facts(protocol), PUBLIC);
        assert_eq!(
            (v.risk, codes(&v).as_slice()),
            (risk, want),
            "{exe} {port} {protocol:?}"
        );
        let reasons = v.reasons().join("; ");
        for code in want {
            let phrase = match *code {
                "protocol_mismatch" => "protocol does not belong on a standard port",
                _ => "protocol pairing",
            };
            assert!(reasons.contains(phrase), "{reasons}");
        }
    }

    #[rstest]
    #[case(Protocol::Tls, "203.0.113.7", "bare_ip_name", 1)]
    #[case(Protocol::Tls, "2001:db8::7", "bare_ip_name", 1)]
    #[case(Protocol::Http, "203.0.113.7:80", "bare_ip_name", 1)]
    #[case(Protocol::Http, "[2001:db8::7]:8080", "bare_ip_name", 1)]
    #[case(Protocol::Http, "c2.example:80", "", 0)]
    #[case(Protocol::Tls, "1.example", "", 0)]
    fn bare_ip_names(
        #[case] protocol: Protocol,
        #[case] name: &str,
        #[case] code: &str,
        #[case] risk: u8,
    ) {
        let mut f = facts(protocol);
        if let Some(t) = f.tls.as_mut() {
            t.sni = Some(name.into());
        }
        if let Some(h) = f.http.as_mut() {
            h.host = Some(name.into());
        }
        let port = if protocol == Protocol::Tls { 443 } else { 80 };
        let v = run(&Policy::default(), "systemd", port, f.clone(), PUBLIC);
        let want: Vec<&str> = [code].into_iter().filter(|c| !c.is_empty()).collect();
        assert_eq!((v.risk, codes(&v)), (risk, want), "{name}");
        // On a flow the port tiers scored, one tier more.
        let v = run(&Policy::default(), "nginx", 4444, f, PUBLIC);
        assert_eq!(v.risk, (1 + risk + 1).min(3), "{name}");
    }

    #[test]
    fn ja4_blocklist_is_high_and_empty_by_default() {
        let f = facts(Protocol::Tls);
        assert_eq!(
            run(&Policy::default(), "systemd", 443, f.clone(), PUBLIC).risk,
            0
        );
        let p = Policy::parse(
            "[protocol]\nja4_blocklist = [\"T13D3112H2_E8F1E7E78F70_B26CE05BBDD6\"]\n",
        )
        .unwrap();
        let v = run(&p, "systemd", 443, f, PUBLIC);
        assert_eq!((v.risk, codes(&v)), (3, vec!["ja4_blocklisted"]));
        assert!(v.reasons().join(" ").contains("ja4_blocklist"));
    }

    #[test]
    fn excluded_destinations_disabled_policy_and_other_flows_add_nothing() {
        let v = run(
            &Policy::default(),
            "ssh",
            443,
            facts(Protocol::Ssh),
            "10.1.2.3",
        );
        assert_eq!(v.risk, 0);
        let off = Policy::parse("[protocol]\nenabled = false\n").unwrap();
        let v = run(&off, "ssh", 443, facts(Protocol::Ssh), PUBLIC);
        assert_eq!((v.risk, v.protocol), (0, None));
        let mut p =
            Policy::parse("[protocol]\nmismatch_risk = 3\nssh_ports = [22, 2222]\n").unwrap();
        assert_eq!(run(&p, "ssh", 443, facts(Protocol::Ssh), PUBLIC).risk, 3);
        assert_eq!(run(&p, "ssh", 2222, facts(Protocol::Ssh), PUBLIC).risk, 0);
        p.protocol.tls_ports.clear();
        assert!(codes(&run(&p, "ssh", 443, facts(Protocol::Ssh), PUBLIC)).is_empty());
    }

    #[rstest]
    #[case("203.0.113.7", "203.0.113.7")]
    #[case("203.0.113.7:8080", "203.0.113.7")]
    #[case("[2001:db8::1]:443", "2001:db8::1")]
    #[case("2001:db8::1", "2001:db8::1")]
    #[case("c2.example:80", "c2.example")]
    #[case("[broken", "broken")]
    fn host_parts(#[case] host: &str, #[case] want: &str) {
        assert_eq!(host_part(host), want);
    }
}

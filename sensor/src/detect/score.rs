//! The T1571 scoring model, exactly the reference's three tiers:
//! risk 3 = high-risk process and known C2 port; 2 = high-risk process on a non-standard
//! port above 1024; 1 = known C2 port only. Excluded destinations score 0. One tier of
//! this sensor's own: an unmanaged executable (no package installed it, and it is not
//! under a trusted path: `[unmanaged]`) on a known C2 port scores `[unmanaged] risk`
//! (Medium by default) instead of 1, so a modified copy of a tool that no fingerprint
//! matches is not left at Low.
//!
//! Listening sockets (and inbound connections to them) are scored on the local port with
//! the same tiers (a high-risk process listening on a C2 port is a bind shell: 3), plus a
//! known service listening away from its `service_ports` (Atomic test 3 on Linux: sshd on
//! 2222): 2. Exclusions do not apply (the local address is usually the wildcard); a
//! loopback-only listener, reachable only from this host, scores one tier less.

mod high_risk;
mod listen;
pub mod protocol;

use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;

pub use self::high_risk::high_risk_entry;
use self::{high_risk::high_risk, listen::score_listen};
use crate::{
    detect::{policy::Policy, subject::Subject, unmanaged::unmanaged},
    kernel::records::{Flow, canonical},
};

/// How the process was found on the high-risk list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MatchedBy {
    /// The executable's basename (what an attacker cannot change without copying the file).
    Executable,
    /// The executable's content: a renamed copy of a listed binary.
    Content,
    /// The executable runs from memory, a deleted file, or a world-writable temp directory.
    Location,
    /// `comm`, used only when the executable could not be resolved.
    Comm,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HighRisk {
    /// The list entry that matched (`python3` for `python3.11`).
    pub entry: String,
    pub matched_by: MatchedBy,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// 0 (not scored) to 3.
    pub risk: u8,
    pub known_c2_port: bool,
    pub non_standard_port: bool,
    pub high_risk: Option<HighRisk>,
    /// The excluded network the destination fell in; such connections score 0.
    pub excluded_by: Option<IpNet>,
    /// Listens: a known service listening away from its standard ports (`service_ports`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_away: Option<ServiceAway>,
    /// Listens: bound to loopback only, so scored one tier less.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub loopback_only: bool,
    /// The executable is unmanaged (see [`unmanaged`]).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub unmanaged: bool,
    /// What the flow's first bytes added (connects whose first bytes were seen).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<protocol::ProtocolVerdict>,
}

/// A known service on a port that is not its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceAway {
    pub service: String,
    pub standard: Vec<u16>,
}

/// `High`, `Medium`, `Low` for risk 3, 2, 1: the one mapping, for every event kind.
/// (The mapping itself is [`crate::detect::severity::Severity::of`].)
pub fn severity(risk: u8) -> Option<&'static str> {
    crate::detect::severity::Severity::of(risk).map(|s| s.as_str())
}

impl Verdict {
    /// Which lists matched, in words, for `event.reason`.
    pub fn reasons(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(net) = self.excluded_by {
            out.push(format!(
                "destination in excluded network {net} (excluded_networks)"
            ));
            return out;
        }
        if let Some(h) = &self.high_risk {
            let by = match h.matched_by {
                MatchedBy::Executable => "executable",
                MatchedBy::Content => "content (renamed copy)",
                MatchedBy::Location => "location (fileless or temp directory)",
                MatchedBy::Comm => "comm, executable unknown",
            };
            out.push(format!(
                "high-risk process {} by {by} (high_risk_executables)",
                h.entry
            ));
        }
        if self.known_c2_port {
            out.push("known C2 port (c2_ports)".to_string());
        } else if self.non_standard_port {
            out.push("non-standard port above 1024 (not in standard_ports)".to_string());
        }
        if let Some(s) = &self.service_away {
            let ports: Vec<String> = s.standard.iter().map(u16::to_string).collect();
            out.push(format!(
                "service {} listening away from its ports {} (service_ports)",
                s.service,
                ports.join(", ")
            ));
        }
        if self.unmanaged {
            out.push(
                "unmanaged executable: not in the package database nor under a trusted path ([unmanaged])"
                    .to_string(),
            );
        }
        if self.loopback_only {
            out.push("loopback-only listener (one tier less)".to_string());
        }
        if let Some(p) = &self.protocol {
            out.extend(p.reasons.iter().map(protocol::ProtocolReason::text));
        }
        out
    }
}

/// The tier of a known C2 port alone: 1, or the unmanaged tier.
fn c2_port_tier(policy: &Policy, unmanaged: bool) -> u8 {
    if unmanaged { policy.unmanaged.risk } else { 1 }
}

/// Scores one connection, listen or inbound connection.
pub fn score(policy: &Policy, subject: &Subject) -> Verdict {
    match subject.flow {
        Flow::Connect | Flow::Udp => score_connect(policy, subject),
        Flow::Listen | Flow::Inbound => score_listen(policy, subject),
    }
}

fn score_connect(policy: &Policy, subject: &Subject) -> Verdict {
    let (dst, port) = (subject.dst, subject.port);
    let high_risk = high_risk(policy, subject);
    let known_c2_port = policy.c2_ports.contains(&port);
    let non_standard_port = !policy.standard_ports.contains(&port) && port > 1024;
    let excluded_by = excluded_network(policy, dst);
    let unmanaged = unmanaged(policy, subject);
    let risk = if excluded_by.is_some() {
        0
    } else {
        match (high_risk.is_some(), known_c2_port, non_standard_port) {
            (true, true, _) => 3,
            (true, false, true) => 2,
            (_, true, _) => c2_port_tier(policy, unmanaged),
            _ => 0,
        }
    };
    // Said only where it made the tier.
    let unmanaged = unmanaged && known_c2_port && high_risk.is_none() && excluded_by.is_none();
    let mut v = Verdict {
        risk,
        known_c2_port,
        non_standard_port,
        high_risk,
        unmanaged,
        excluded_by,
        service_away: None,
        loopback_only: false,
        protocol: None,
    };
    if let Some(facts) = subject.protocol.as_deref()
        && policy.protocol.enabled
        && subject.flow == Flow::Connect
    {
        let (risk, pv) = protocol::score(policy, facts, port, &v);
        v.risk = risk;
        v.protocol = Some(pv);
    }
    v
}

/// The excluded network containing `ip`; IPv4-mapped IPv6 is judged as its IPv4 address.
pub fn excluded_network(policy: &Policy, ip: IpAddr) -> Option<IpNet> {
    let ip = canonical(ip);
    policy
        .excluded_networks
        .iter()
        .find(|n| n.contains(&ip))
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::policy::{DEFAULT_C2_PORTS, DEFAULT_STANDARD_PORTS};

    pub(super) const PUBLIC: &str = "203.0.113.7";

    /// Scores `subject` as a connection to `dst`:`port`.
    pub(super) fn sc(p: &Policy, subject: &Subject, dst: IpAddr, port: u16) -> Verdict {
        score(p, &subject.clone().to(dst, port))
    }

    pub(super) fn s(exe: Option<&str>, port: u16) -> Verdict {
        sc(
            &Policy::default(),
            &Subject::named(exe, "comm"),
            PUBLIC.parse().unwrap(),
            port,
        )
    }

    #[test]
    fn every_tier_for_every_listed_port() {
        for &port in DEFAULT_C2_PORTS {
            assert_eq!(s(Some("bash"), port).risk, 3, "high-risk + C2 {port}");
            assert_eq!(s(Some("systemd"), port).risk, 1, "C2 only {port}");
        }
        for &port in DEFAULT_STANDARD_PORTS {
            assert_eq!(s(Some("bash"), port).risk, 0, "standard {port}");
            assert_eq!(s(Some("systemd"), port).risk, 0, "standard {port}");
        }
    }

    #[test]
    fn connects_are_unchanged_by_service_ports() {
        // sshd connecting out on 2222 is no listen: the connect tiers alone apply.
        assert_eq!(s(Some("/usr/sbin/sshd"), 2222).risk, 0);
    }

    #[test]
    fn tier_two_boundaries() {
        assert_eq!(s(Some("python3"), 1024).risk, 0, "1024 is not above 1024");
        assert_eq!(s(Some("python3"), 1025).risk, 2);
        assert_eq!(s(Some("python3"), 5555).risk, 2);
        assert_eq!(s(Some("python3"), 65535).risk, 2);
        assert_eq!(s(Some("python3"), 8080).risk, 0, "standard port");
        assert_eq!(s(Some("python3"), 22).risk, 0, "low port");
        assert_eq!(s(Some("nginx"), 5555).risk, 0, "not high-risk");
        // 444 and 587 are C2 ports at or below 1024: tier 3 for high-risk, tier 1 otherwise.
        assert_eq!(s(Some("curl"), 444).risk, 3);
        assert_eq!(s(Some("nginx"), 587).risk, 1);
    }

    #[rstest::rstest]
    // An unmanaged executable on a C2 port: the unmanaged tier, said in the reasons.
    #[case(Some(true), 4444, 2, true)]
    #[case(Some(false), 4444, 1, false)]
    #[case(None, 4444, 1, false)]
    // Not a C2 port: nothing of its own.
    #[case(Some(true), 5555, 0, false)]
    fn unmanaged_tier(
        #[case] flag: Option<bool>,
        #[case] port: u16,
        #[case] risk: u8,
        #[case] said: bool,
    ) {
        let s = Subject {
            unmanaged: flag,
            ..Subject::named(Some("/var/lib/x/update-agent"), "x")
        };
        let v = sc(&Policy::default(), &s, PUBLIC.parse().unwrap(), port);
        assert_eq!((v.risk, v.unmanaged), (risk, said));
        assert_eq!(
            v.reasons()
                .iter()
                .any(|r| r.contains("unmanaged executable")),
            said
        );
        // Configurable; a high-risk program keeps its own tiers; listens alike.
        let p = Policy::parse("[unmanaged]\nrisk = 3\n").unwrap();
        assert_eq!(
            sc(&p, &s, PUBLIC.parse().unwrap(), port).risk,
            if said { 3 } else { risk }
        );
        let py = Subject {
            executable: Some("/var/lib/x/python3".into()),
            ..s.clone()
        };
        assert_eq!(
            sc(&Policy::default(), &py, PUBLIC.parse().unwrap(), 4444).risk,
            3
        );
        let l = s.to("0.0.0.0".parse().unwrap(), port).as_flow(Flow::Listen);
        assert_eq!(score(&Policy::default(), &l).risk, risk);
    }

    #[test]
    fn exclusions() {
        let p = Policy::default();
        for ip in [
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.254",
            "192.168.1.1",
            "127.0.0.1",
            "169.254.1.1",
            "0.0.0.0",
            "::1",
            "::",
            "fe80::1",
            "fd00::7",
            "fc00::1",
            "::ffff:10.0.0.1",
            "::ffff:127.0.0.1",
        ] {
            let v = sc(
                &p,
                &Subject::named(Some("nc"), "nc"),
                ip.parse().unwrap(),
                4444,
            );
            assert_eq!(v.risk, 0, "{ip} is excluded");
            assert!(v.excluded_by.is_some());
        }
        for ip in [
            "172.32.0.1",
            "172.15.255.255",
            "11.0.0.1",
            "192.0.2.1",
            "198.51.100.1",
            "203.0.113.1",
            "2001:db8::7",
            "::ffff:203.0.113.7",
            "fe00::1",
            "100.64.0.1",
        ] {
            assert_eq!(
                sc(
                    &p,
                    &Subject::named(Some("nc"), "nc"),
                    ip.parse().unwrap(),
                    4444
                )
                .risk,
                3,
                "{ip} is public"
            );
        }
    }

    #[test]
    fn reasons_and_severity() {
        let v = s(Some("nc.openbsd"), 4444);
        assert_eq!(severity(v.risk), Some("High"));
        let r = v.reasons().join("; ");
        assert!(r.contains("nc.openbsd") && r.contains("c2_ports"), "{r}");
        assert_eq!(severity(s(Some("python3"), 5555).risk), Some("Medium"));
        assert!(
            s(Some("python3"), 5555)
                .reasons()
                .join(" ")
                .contains("standard_ports")
        );
        assert_eq!(severity(s(Some("nginx"), 4444).risk), Some("Low"));
        assert_eq!(severity(s(Some("nginx"), 80).risk), None);
    }
}

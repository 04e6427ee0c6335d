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

use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;

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
        out
    }
}

fn high_risk(policy: &Policy, s: &Subject) -> Option<HighRisk> {
    let hit = |entry: String, matched_by| Some(HighRisk { entry, matched_by });
    if let Some(name) = s.exe_name() {
        if let Some(e) = high_risk_entry(policy, name) {
            return hit(e, MatchedBy::Executable);
        }
    } else if let Some(e) = high_risk_entry(policy, s.comm.as_deref().unwrap_or("")) {
        return hit(e, MatchedBy::Comm);
    }
    if let Some(e) = &s.content_match {
        return hit(e.clone(), MatchedBy::Content);
    }
    if let Some(l) = s.location.as_deref() {
        return hit(format!("<{l}>"), MatchedBy::Location);
    }
    let exe = s.executable.as_deref()?;
    policy
        .writable_locations
        .iter()
        .find(|p| p.is_match(exe))
        .and_then(|p| hit(format!("<writable {}>", p.as_str()), MatchedBy::Location))
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

/// A listening socket, on its local port and address; an inbound connection to it on the
/// same port, with the listener's process (its `dst` is the peer, so a connection from
/// loopback counts one tier less as a loopback listener does).
fn score_listen(policy: &Policy, subject: &Subject) -> Verdict {
    let port = subject.port;
    let high_risk = high_risk(policy, subject);
    let known_c2_port = policy.c2_ports.contains(&port);
    let non_standard_port = !policy.standard_ports.contains(&port) && port > 1024;
    let unmanaged = unmanaged(policy, subject);
    let service_away = subject.exe_name().and_then(|name| {
        let ports = policy.service_ports.get(name)?;
        (!ports.contains(&port)).then(|| ServiceAway {
            service: name.to_string(),
            standard: ports.iter().copied().collect(),
        })
    });
    let tier: u8 = match (high_risk.is_some(), known_c2_port, non_standard_port) {
        (true, true, _) => 3,
        (true, false, true) => 2,
        _ if service_away.is_some() => 2.max(c2_port_tier(policy, unmanaged && known_c2_port)),
        (_, true, _) => c2_port_tier(policy, unmanaged),
        _ => 0,
    };
    let loopback_only = canonical(subject.dst).is_loopback();
    let unmanaged = unmanaged && known_c2_port && high_risk.is_none();
    Verdict {
        risk: if loopback_only {
            tier.saturating_sub(1)
        } else {
            tier
        },
        known_c2_port,
        non_standard_port,
        high_risk,
        excluded_by: None,
        service_away,
        loopback_only,
        unmanaged,
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
    Verdict {
        risk,
        known_c2_port,
        non_standard_port,
        high_risk,
        unmanaged,
        excluded_by,
        service_away: None,
        loopback_only: false,
    }
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

/// The list entry `name` matches: exactly, or after removing a version suffix
/// (`python3.11` -> `python3` -> `python`, `ruby3.1` -> `ruby`). A deleted executable's
/// ` (deleted)` marker is ignored.
pub fn high_risk_entry(policy: &Policy, name: &str) -> Option<String> {
    let name = name.strip_suffix(" (deleted)").unwrap_or(name);
    let list = &policy.high_risk_executables;
    if list.contains(name) {
        return Some(name.to_string());
    }
    // Drop `.N` components from the end: python3.11 -> python3.
    let mut cand = name;
    while let Some((head, tail)) = cand.rsplit_once('.') {
        if tail.is_empty() || !tail.bytes().all(|b| b.is_ascii_digit()) {
            break;
        }
        cand = head;
        if list.contains(cand) {
            return Some(cand.to_string());
        }
    }
    // Then trailing digits: python3 -> python, lua5 -> lua.
    let base = cand.trim_end_matches(|c: char| c.is_ascii_digit());
    if base.len() < cand.len() && !base.is_empty() && list.contains(base) {
        return Some(base.to_string());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::policy::{DEFAULT_C2_PORTS, DEFAULT_HIGH_RISK, DEFAULT_STANDARD_PORTS};

    const PUBLIC: &str = "203.0.113.7";

    /// Scores `subject` as a connection to `dst`:`port`.
    fn sc(p: &Policy, subject: &Subject, dst: IpAddr, port: u16) -> Verdict {
        score(p, &subject.clone().to(dst, port))
    }

    fn s(exe: Option<&str>, port: u16) -> Verdict {
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

    fn listen(exe: &str, local: &str, port: u16) -> Verdict {
        let p = Policy::default();
        let s = Subject::named(Some(exe), "comm")
            .to(local.parse().unwrap(), port)
            .as_flow(Flow::Listen);
        score(&p, &s)
    }

    #[test]
    fn listens_score_on_the_local_port() {
        // A bind shell: High, on the wildcard or a public address (no exclusions apply).
        assert_eq!(listen("/usr/bin/nc.openbsd", "0.0.0.0", 4444).risk, 3);
        assert_eq!(listen("/usr/bin/nc.openbsd", "::", 4444).risk, 3);
        assert_eq!(listen("/usr/bin/python3.11", "192.168.1.5", 9001).risk, 3);
        // High-risk on a non-standard port above 1024: Medium; standard or low: nothing.
        assert_eq!(listen("/usr/bin/python3", "0.0.0.0", 5555).risk, 2);
        assert_eq!(listen("/usr/bin/python3", "0.0.0.0", 8080).risk, 0);
        assert_eq!(listen("/usr/bin/python3", "0.0.0.0", 1024).risk, 0);
        // A known service away from its ports: Medium; on them: nothing.
        let v = listen("/usr/sbin/sshd", "0.0.0.0", 2222);
        assert_eq!(v.risk, 2);
        assert_eq!(v.service_away.as_ref().unwrap().standard, [22]);
        assert!(v.reasons().iter().any(|r| r.contains("service sshd")));
        assert_eq!(listen("/usr/sbin/sshd", "0.0.0.0", 22).risk, 0);
        assert_eq!(listen("/usr/sbin/nginx", "0.0.0.0", 443).risk, 0);
        assert_eq!(listen("/usr/sbin/nginx", "0.0.0.0", 8081).risk, 2);
        // Neither: a C2 port alone is Low, anything else nothing.
        assert_eq!(listen("/usr/sbin/unknownd", "0.0.0.0", 4444).risk, 1);
        assert_eq!(listen("/usr/sbin/unknownd", "0.0.0.0", 5555).risk, 0);
        // Loopback-only: one tier less.
        let v = listen("/usr/bin/nc", "127.0.0.1", 4444);
        assert_eq!((v.risk, v.loopback_only), (2, true));
        assert_eq!(listen("/usr/bin/nc", "::1", 5555).risk, 1);
        assert_eq!(listen("/usr/sbin/sshd", "127.0.0.1", 2222).risk, 1);
    }

    #[test]
    fn writable_locations_make_any_binary_high_risk() {
        assert_eq!(s(Some("/root/.cache/x/updater"), 4444).risk, 3);
        let v = s(Some("/home/alice/.cache/pip/agent"), 9001);
        assert_eq!(v.risk, 3);
        assert_eq!(v.high_risk.unwrap().matched_by, MatchedBy::Location);
        assert_eq!(s(Some("/usr/local/bin/updater"), 4444).risk, 1);
        let p = Policy::parse("writable_locations = [\"/srv/drop/*\"]\n").unwrap();
        let sub = Subject::named(Some("/srv/drop/a"), "a").to(PUBLIC.parse().unwrap(), 5555);
        assert_eq!(score(&p, &sub).risk, 2);
        let sub = Subject::named(Some("/root/.cache/a"), "a").to(PUBLIC.parse().unwrap(), 5555);
        assert_eq!(score(&p, &sub).risk, 0, "the list was replaced");
        assert!(Policy::parse("writable_locations = [\"drop/*\"]\n").is_err());
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

    #[test]
    fn every_high_risk_name_matches() {
        for &name in DEFAULT_HIGH_RISK {
            let v = s(Some(name), 4444);
            assert_eq!(v.risk, 3, "{name}");
            assert_eq!(v.high_risk.unwrap().entry, name);
        }
    }

    #[test]
    fn versioned_interpreters_normalise() {
        let p = Policy::default();
        for (name, entry) in [
            ("python3.11", Some("python3")),
            ("python3.12", Some("python3")),
            ("python2.7", Some("python2")),
            ("ruby3.1", Some("ruby")),
            ("perl5.36.0", Some("perl")),
            ("php8.2", Some("php")),
            ("lua5.4", Some("lua")),
            ("node18", Some("node")),
            ("bash (deleted)", Some("bash")),
            ("nc.openbsd", Some("nc.openbsd")),
            ("python3-config", None),
            ("php-fpm8.2", None),
            ("notcurl", None),
            ("curly", None),
            ("sshd", None),
            ("3", None),
            ("", None),
        ] {
            assert_eq!(high_risk_entry(&p, name).as_deref(), entry, "{name}");
        }
    }

    #[test]
    fn comm_only_when_executable_unknown() {
        let p = Policy::default();
        let dst = PUBLIC.parse().unwrap();
        // A renamed comm does not make a benign executable high-risk...
        assert_eq!(
            sc(&p, &Subject::named(Some("nginx"), "bash"), dst, 5555).risk,
            0
        );
        // ...nor a high-risk executable benign.
        assert_eq!(
            sc(&p, &Subject::named(Some("curl"), "kworker/0:1"), dst, 5555).risk,
            2
        );
        let v = sc(&p, &Subject::named(None, "curl"), dst, 5555);
        assert_eq!(v.risk, 2);
        assert_eq!(v.high_risk.unwrap().matched_by, MatchedBy::Comm);
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
    fn content_and_location_make_high_risk() {
        let p = Policy::default();
        let dst = PUBLIC.parse().unwrap();
        let copy = Subject {
            content_match: Some("curl".into()),
            location: None,
            ..Subject::named(Some("update-agent"), "update-agent")
        };
        let v = sc(&p, &copy, dst, 4444);
        assert_eq!(
            (v.risk, v.high_risk.as_ref().unwrap().matched_by),
            (3, MatchedBy::Content)
        );
        assert!(v.reasons()[0].contains("content"));
        let memfd = Subject {
            content_match: None,
            location: Some("memfd".into()),
            ..Subject::named(Some("x"), "x")
        };
        let v = sc(&p, &memfd, dst, 5555);
        assert_eq!(
            (v.risk, v.high_risk.unwrap().matched_by),
            (2, MatchedBy::Location)
        );
        // A listed name wins over the other signals; nothing flagged stays tier 1 at most.
        let both = Subject {
            content_match: Some("wget".into()),
            location: Some("tmp".into()),
            ..Subject::named(Some("curl"), "c")
        };
        assert_eq!(
            sc(&p, &both, dst, 4444).high_risk.unwrap().matched_by,
            MatchedBy::Executable
        );
        assert_eq!(
            sc(&p, &Subject::named(Some("x"), "curl"), dst, 4444).risk,
            1,
            "comm ignored when exe known"
        );
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

//! The five published SIEM rules, each reduced to its documented semantics
//! (../shared/reference/detection-model.md, "Where the five differ"), scored on one corpus
//! next to this engine. The table asserted here is the one in docs/rules-compared.md. All rules get the
//! same Linux lists; what differs is how they use them:
//!
//! | rule | process match | tier 2 | event filter | excluded destinations |
//! |---|---|---|---|---|
//! | Splunk | list name anywhere in the path (substring) | standard-port test | outbound | none |
//! | Chronicle | name at the end of the path, no separator | `port > 1024` only | any high-risk process or C2 port; risk falls back to 1 | RFC 1918 + 127/8 |
//! | Sumo Logic | anchored basename | standard-port test | outbound | RFC 1918 |
//! | QRadar | name at the end of the path, no separator | standard-port test | no direction filter; WHERE lists no `pwsh` | RFC 1918 |
//! | LogScale | anchored basename | standard-port test | outbound IPv4 only (`NetworkConnectIP4`) | RFC 1918 + local address 127.0.0.1 |
//!
//! None of the five handle IPv6 (or IPv4-mapped IPv6) exclusions, and none normalise
//! versioned interpreter names: `python3.11` is not `python3` to them. Splunk's per-event
//! score is shown; as written its `stats ... by ParentImage` then drops every Event ID 3
//! event, which has no ParentImage (`splunk_as_written_returns_nothing`).

use std::net::IpAddr;

use ipnet::IpNet;

use sensor::detect::{
    policy::{DEFAULT_STANDARD_PORTS, Policy},
    score::score,
    subject::Subject,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Match {
    /// The list name anywhere in the path.
    Substring,
    /// The whole basename (after the last `/`).
    Basename,
    /// The path ends with the name, no separator required (`(?i)(...)$`, `LIKE '%name'`).
    Suffix,
}

struct Rule {
    name: &'static str,
    process: Match,
    tier2_standard_test: bool,
    excluded: &'static [&'static str],
    /// Chronicle: its event filter admits any high-risk process, and its risk formula falls
    /// back to 1, so every high-risk process reaching a non-excluded address scores >= 1.
    high_risk_floor: bool,
    /// QRadar: names its WHERE clause leaves out (an event needs a listed name or a C2 port
    /// to be selected at all).
    where_lacks: &'static [&'static str],
    /// Outbound only (Initiated=true, or an outbound-connect event type).
    outbound_only: bool,
    ipv4_only: bool,
    /// Fields its aggregation groups by (Splunk: host, Image, User, ParentImage).
    group_by: &'static [&'static str],
}

const RFC1918: &[&str] = &["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"];
const RFC1918_LOOPBACK: &[&str] = &[
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "127.0.0.0/8",
];
/// LogScale drops the local address 127.0.0.1, an exact match: a loopback connect's local
/// address. The corpus's loopback rows are connects to 127.0.0.1 from 127.0.0.1.
const RFC1918_LOCAL_127_0_0_1: &[&str] = &[
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "127.0.0.1/32",
];

/// The fields a Sysmon Event ID 3 record carries (of those the rules read).
const EVENT_ID_3_FIELDS: &[&str] = &[
    "Computer",
    "Image",
    "User",
    "DestinationIp",
    "DestinationPort",
    "Initiated",
];

const RULES: [Rule; 5] = [
    Rule {
        name: "splunk",
        process: Match::Substring,
        tier2_standard_test: true,
        excluded: &[],
        high_risk_floor: false,
        where_lacks: &[],
        outbound_only: true,
        ipv4_only: false,
        group_by: &["Computer", "Image", "User", "ParentImage"],
    },
    Rule {
        name: "chronicle",
        process: Match::Suffix,
        tier2_standard_test: false,
        excluded: RFC1918_LOOPBACK,
        high_risk_floor: true,
        where_lacks: &[],
        outbound_only: true,
        ipv4_only: false,
        group_by: &["Computer"],
    },
    Rule {
        name: "sumo",
        process: Match::Basename,
        tier2_standard_test: true,
        excluded: RFC1918,
        high_risk_floor: false,
        where_lacks: &[],
        outbound_only: true,
        ipv4_only: false,
        group_by: &["Computer", "Image", "User"],
    },
    Rule {
        name: "qradar",
        process: Match::Suffix,
        tier2_standard_test: true,
        excluded: RFC1918,
        high_risk_floor: false,
        where_lacks: &["pwsh"],
        outbound_only: false,
        ipv4_only: false,
        group_by: &["Computer", "Image", "User"],
    },
    Rule {
        name: "logscale",
        process: Match::Basename,
        tier2_standard_test: true,
        excluded: RFC1918_LOCAL_127_0_0_1,
        high_risk_floor: false,
        where_lacks: &[],
        outbound_only: true,
        ipv4_only: true,
        group_by: &["Computer", "Image", "User"],
    },
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    Out,
    In,
}

/// Whether `rule` calls `image` one of `names`.
fn names_match(rule: &Rule, names: &[&str], image: &str) -> bool {
    let base = image.rsplit('/').next().unwrap_or(image);
    names.iter().any(|e| match rule.process {
        Match::Substring => image.contains(e),
        Match::Basename => base == *e,
        Match::Suffix => image.ends_with(e),
    })
}

/// One rule's score for (image path, destination, port, direction).
fn rule_score(rule: &Rule, p: &Policy, image: &str, dst: IpAddr, port: u16, dir: Dir) -> u8 {
    if (rule.outbound_only && dir == Dir::In) || (rule.ipv4_only && dst.is_ipv6()) {
        return 0;
    }
    // The SIEM rules compare IPv4 ranges only: an IPv6 address never falls in one.
    let excluded = rule
        .excluded
        .iter()
        .filter_map(|n| n.parse::<IpNet>().ok())
        .any(|n| n.contains(&dst));
    if excluded {
        return 0;
    }
    let list: Vec<&str> = p.high_risk_executables.iter().map(String::as_str).collect();
    let high = names_match(rule, &list, image);
    let c2 = p.c2_ports.contains(&port);
    let in_where: Vec<&str> = list
        .iter()
        .copied()
        .filter(|n| !rule.where_lacks.contains(n))
        .collect();
    if !c2 && !names_match(rule, &in_where, image) {
        return 0;
    }
    let tier2 =
        high && port > 1024 && (!rule.tier2_standard_test || !p.standard_ports.contains(&port));
    match (high && c2, tier2, c2, high && rule.high_risk_floor) {
        (true, ..) => 3,
        (_, true, ..) => 2,
        (_, _, true, _) | (.., true) => 1,
        _ => 0,
    }
}

fn engine_score(p: &Policy, image: &str, dst: IpAddr, port: u16, dir: Dir) -> u8 {
    // The sensor scores the connects a process makes; an accepted connection is none.
    if dir == Dir::In {
        return 0;
    }
    score(p, &Subject::named(Some(image), "").to(dst, port)).risk
}

/// (image, destination, port, direction, [engine, splunk, chronicle, sumo, qradar, logscale], why)
type Row = (&'static str, &'static str, u16, Dir, [u8; 6], &'static str);

const CORPUS: &[Row] = &[
    (
        "/usr/bin/nc.openbsd",
        "203.0.113.7",
        4444,
        Dir::Out,
        [3, 3, 3, 3, 3, 3],
        "Atomic 1: all agree",
    ),
    (
        "/usr/bin/curl",
        "203.0.113.7",
        8088,
        Dir::Out,
        [3, 3, 3, 3, 3, 3],
        "Atomic 2: all agree",
    ),
    (
        "/usr/sbin/nginx",
        "203.0.113.7",
        4444,
        Dir::Out,
        [1, 1, 1, 1, 1, 1],
        "C2 port only: all agree",
    ),
    (
        "/usr/bin/bash",
        "203.0.113.7",
        1024,
        Dir::Out,
        [0, 0, 1, 0, 0, 0],
        "not above 1024; Chronicle falls back to 1",
    ),
    (
        "/usr/bin/bash",
        "203.0.113.7",
        443,
        Dir::Out,
        [0, 0, 1, 0, 0, 0],
        "standard port; Chronicle falls back to 1",
    ),
    (
        "/usr/bin/notcurl",
        "203.0.113.7",
        5555,
        Dir::Out,
        [0, 2, 2, 0, 2, 0],
        "Splunk substring; Chronicle and QRadar suffix",
    ),
    (
        "/usr/bin/ssh",
        "203.0.113.7",
        2222,
        Dir::Out,
        [0, 2, 2, 0, 2, 0],
        "`sh` inside (Splunk) and at the end of (Chronicle, QRadar) `ssh`",
    ),
    (
        "/usr/bin/python3",
        "203.0.113.7",
        8080,
        Dir::Out,
        [0, 0, 2, 0, 0, 0],
        "Chronicle: no standard-port test",
    ),
    (
        "/usr/bin/python3.11",
        "203.0.113.7",
        9001,
        Dir::Out,
        [3, 3, 1, 1, 1, 1],
        "versioned name: engine normalises, Splunk substring",
    ),
    (
        "/usr/bin/pwsh",
        "203.0.113.7",
        5555,
        Dir::Out,
        [2, 2, 2, 2, 2, 2],
        "QRadar's WHERE clause has no pwsh, but its suffix `sh` selects it",
    ),
    (
        "/usr/bin/nc.openbsd",
        "203.0.113.7",
        4444,
        Dir::In,
        [0, 0, 0, 0, 3, 0],
        "inbound: QRadar has no direction filter",
    ),
    (
        "/usr/bin/bash",
        "10.0.0.5",
        4444,
        Dir::Out,
        [0, 3, 0, 0, 0, 0],
        "RFC 1918: Splunk excludes nothing",
    ),
    (
        "/usr/bin/bash",
        "127.0.0.1",
        4444,
        Dir::Out,
        [0, 3, 0, 3, 3, 0],
        "loopback: Chronicle and LogScale drop it",
    ),
    (
        "/usr/bin/bash",
        "2001:db8::7",
        4444,
        Dir::Out,
        [3, 3, 3, 3, 3, 0],
        "public IPv6: LogScale never sees it",
    ),
    (
        "/usr/bin/bash",
        "::1",
        4444,
        Dir::Out,
        [0, 3, 3, 3, 3, 0],
        "IPv6 loopback: only the engine excludes it",
    ),
    (
        "/usr/bin/bash",
        "fd00::1",
        4444,
        Dir::Out,
        [0, 3, 3, 3, 3, 0],
        "IPv6 unique-local: only the engine excludes it",
    ),
    (
        "/usr/bin/bash",
        "::ffff:10.0.0.1",
        4444,
        Dir::Out,
        [0, 3, 3, 3, 3, 0],
        "IPv4-mapped private: only the engine excludes it",
    ),
    (
        "/usr/bin/bash",
        "169.254.1.1",
        4444,
        Dir::Out,
        [0, 3, 3, 3, 3, 3],
        "link-local: only the engine",
    ),
    (
        "/usr/bin/perl",
        "100.64.0.1",
        7777,
        Dir::Out,
        [3, 3, 3, 3, 3, 3],
        "CGNAT counts as public everywhere",
    ),
];

#[test]
fn five_rules_versus_engine_on_the_corpus() {
    let p = Policy::default();
    let mut diffs = 0;
    for (image, dst, port, dir, want, why) in CORPUS {
        let ip: IpAddr = dst.parse().unwrap();
        let mut got = [engine_score(&p, image, ip, *port, *dir), 0, 0, 0, 0, 0];
        for (i, rule) in RULES.iter().enumerate() {
            got[i + 1] = rule_score(rule, &p, image, ip, *port, *dir);
        }
        assert_eq!(
            &got,
            want,
            "{image} -> {dst}:{port} {dir:?} ({why}); order: engine, {}",
            RULES.map(|r| r.name).join(", ")
        );
        diffs += usize::from(got.iter().any(|&r| r != got[0]));
    }
    // The corpus is there to show differences: most rows must show one.
    assert!(diffs >= 14, "{diffs}");
}

#[test]
fn the_rules_really_differ_where_the_reference_says() {
    let p = Policy::default();
    let ip: IpAddr = "203.0.113.7".parse().unwrap();
    let [splunk, chronicle, sumo, qradar, logscale] = &RULES;
    let out = Dir::Out;
    // Substring, suffix and anchored basename.
    assert_eq!(rule_score(splunk, &p, "/opt/x/notbash", ip, 4444, out), 3);
    assert_eq!(
        rule_score(chronicle, &p, "/opt/x/notbash", ip, 4444, out),
        3
    );
    assert_eq!(rule_score(qradar, &p, "/opt/x/notbash", ip, 4444, out), 3);
    assert_eq!(rule_score(sumo, &p, "/opt/x/notbash", ip, 4444, out), 1);
    assert_eq!(rule_score(logscale, &p, "/opt/x/notbash", ip, 4444, out), 1);
    // Only Splunk finds a name in the middle of the path.
    assert_eq!(rule_score(splunk, &p, "/opt/curl/agent", ip, 5555, out), 2);
    assert_eq!(
        rule_score(chronicle, &p, "/opt/curl/agent", ip, 5555, out),
        0
    );
    // Chronicle's tier 2 ignores the standard list, for every standard port above 1024,
    // and every high-risk process to a public address is at least 1 there.
    for &port in DEFAULT_STANDARD_PORTS.iter().filter(|&&p| p > 1024) {
        assert_eq!(
            rule_score(chronicle, &p, "/bin/sh", ip, port, out),
            2,
            "{port}"
        );
        assert_eq!(rule_score(sumo, &p, "/bin/sh", ip, port, out), 0, "{port}");
        assert_eq!(engine_score(&p, "/bin/sh", ip, port, out), 0, "{port}");
    }
    for port in [22, 80, 443, 1024] {
        assert_eq!(
            rule_score(chronicle, &p, "/bin/sh", ip, port, out),
            1,
            "{port}"
        );
    }
    // QRadar: with no other name ending pwsh's path (the Windows list: `pwsh.exe`), pwsh
    // scores only when a C2 port selects the event.
    let windows_like = Policy {
        high_risk_executables: ["pwsh", "powershell"]
            .map(String::from)
            .into_iter()
            .collect(),
        ..Policy::default()
    };
    let w = &windows_like;
    assert_eq!(rule_score(qradar, w, "/usr/bin/pwsh", ip, 4444, out), 3);
    assert_eq!(rule_score(qradar, w, "/usr/bin/pwsh", ip, 5555, out), 0);
    assert_eq!(rule_score(sumo, w, "/usr/bin/pwsh", ip, 5555, out), 2);
    // LogScale: 127.0.0.1 exactly, not 127/8; no IPv6 at all.
    let lo2: IpAddr = "127.0.0.2".parse().unwrap();
    assert_eq!(rule_score(logscale, &p, "/bin/sh", lo2, 4444, out), 3);
    assert_eq!(rule_score(chronicle, &p, "/bin/sh", lo2, 4444, out), 0);
    let v6: IpAddr = "2001:db8::7".parse().unwrap();
    assert_eq!(
        rule_score(logscale, &p, "/usr/sbin/nginx", v6, 4444, out),
        0
    );
}

/// Splunk's search ends in `stats ... by host, Image, User, ParentImage`, and `stats` drops
/// every event that lacks a by-field. Sysmon Event ID 3 has no ParentImage: as written it
/// returns nothing, whatever its per-event score. The others group by fields the event has.
#[test]
fn splunk_as_written_returns_nothing() {
    let p = Policy::default();
    for rule in &RULES {
        let keeps_groups = rule.group_by.iter().all(|f| EVENT_ID_3_FIELDS.contains(f));
        let scored = CORPUS
            .iter()
            .filter(|(image, dst, port, dir, ..)| {
                rule_score(rule, &p, image, dst.parse().unwrap(), *port, *dir) > 0
            })
            .count();
        assert!(scored > 0, "{}", rule.name);
        assert_eq!(keeps_groups, rule.name != "splunk", "{}", rule.name);
    }
}

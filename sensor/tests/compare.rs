//! The five published SIEM rules, each reduced to its documented semantics
//! (../shared/reference/detection-model.md), scored on one corpus next to this engine.
//! The table asserted here is the one in the README. All rules get the same Linux lists;
//! what differs is how they use them:
//!
//! | rule | process match | tier 2 | excluded destinations |
//! |---|---|---|---|
//! | Splunk | list name anywhere in the path (substring) | standard-port test | none |
//! | Chronicle | anchored basename | `port > 1024` only | RFC 1918 + 127/8 |
//! | Sumo Logic | anchored basename | standard-port test | RFC 1918 |
//! | QRadar | anchored basename | standard-port test | RFC 1918 |
//! | LogScale | anchored basename | standard-port test | RFC 1918 + 127/8 (local address) |
//!
//! None of the five handle IPv6 (or IPv4-mapped IPv6) exclusions, and none normalise
//! versioned interpreter names: `python3.11` is not `python3` to an anchored match.

use std::net::IpAddr;

use ipnet::IpNet;

use sensor::detect::{
    policy::{DEFAULT_STANDARD_PORTS, Policy},
    score::score,
    subject::Subject,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Match {
    Substring,
    Anchored,
}

struct Rule {
    name: &'static str,
    process: Match,
    tier2_standard_test: bool,
    excluded: &'static [&'static str],
}

const RFC1918: &[&str] = &["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"];
const RFC1918_LOOPBACK: &[&str] = &[
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "127.0.0.0/8",
];

const RULES: [Rule; 5] = [
    Rule {
        name: "splunk",
        process: Match::Substring,
        tier2_standard_test: true,
        excluded: &[],
    },
    Rule {
        name: "chronicle",
        process: Match::Anchored,
        tier2_standard_test: false,
        excluded: RFC1918_LOOPBACK,
    },
    Rule {
        name: "sumo",
        process: Match::Anchored,
        tier2_standard_test: true,
        excluded: RFC1918,
    },
    Rule {
        name: "qradar",
        process: Match::Anchored,
        tier2_standard_test: true,
        excluded: RFC1918,
    },
    Rule {
        name: "logscale",
        process: Match::Anchored,
        tier2_standard_test: true,
        excluded: RFC1918_LOOPBACK,
    },
];

/// One rule's score for (image path, destination, port).
fn rule_score(rule: &Rule, p: &Policy, image: &str, dst: IpAddr, port: u16) -> u8 {
    // The SIEM rules compare IPv4 ranges only: an IPv6 address never falls in one.
    let excluded = rule
        .excluded
        .iter()
        .filter_map(|n| n.parse::<IpNet>().ok())
        .any(|n| n.contains(&dst));
    if excluded {
        return 0;
    }
    let base = image.rsplit('/').next().unwrap_or(image);
    let high = p.high_risk_executables.iter().any(|e| match rule.process {
        Match::Substring => image.contains(e.as_str()),
        Match::Anchored => base == e,
    });
    let c2 = p.c2_ports.contains(&port);
    let tier2 =
        high && port > 1024 && (!rule.tier2_standard_test || !p.standard_ports.contains(&port));
    match (high && c2, tier2, c2) {
        (true, _, _) => 3,
        (_, true, _) => 2,
        (_, _, true) => 1,
        _ => 0,
    }
}

fn engine_score(p: &Policy, image: &str, dst: IpAddr, port: u16) -> u8 {
    score(p, &Subject::named(Some(image), "").to(dst, port)).risk
}

/// (image, destination, port, [engine, splunk, chronicle, sumo, qradar, logscale], why)
const CORPUS: &[(&str, &str, u16, [u8; 6], &str)] = &[
    (
        "/usr/bin/nc.openbsd",
        "203.0.113.7",
        4444,
        [3, 3, 3, 3, 3, 3],
        "Atomic 1: all agree",
    ),
    (
        "/usr/bin/curl",
        "203.0.113.7",
        8088,
        [3, 3, 3, 3, 3, 3],
        "Atomic 2: all agree",
    ),
    (
        "/usr/sbin/nginx",
        "203.0.113.7",
        4444,
        [1, 1, 1, 1, 1, 1],
        "C2 port only: all agree",
    ),
    (
        "/usr/bin/bash",
        "203.0.113.7",
        1024,
        [0, 0, 0, 0, 0, 0],
        "port not above 1024",
    ),
    (
        "/usr/bin/notcurl",
        "203.0.113.7",
        5555,
        [0, 2, 0, 0, 0, 0],
        "Splunk substring",
    ),
    (
        "/usr/bin/ssh",
        "203.0.113.7",
        2222,
        [0, 2, 0, 0, 0, 0],
        "Splunk: `sh` inside `ssh`",
    ),
    (
        "/usr/bin/python3",
        "203.0.113.7",
        8080,
        [0, 0, 2, 0, 0, 0],
        "Chronicle: no standard-port test",
    ),
    (
        "/usr/bin/python3.11",
        "203.0.113.7",
        9001,
        [3, 3, 1, 1, 1, 1],
        "versioned name: engine normalises, Splunk substring",
    ),
    (
        "/usr/bin/bash",
        "10.0.0.5",
        4444,
        [0, 3, 0, 0, 0, 0],
        "RFC 1918: Splunk excludes nothing",
    ),
    (
        "/usr/bin/bash",
        "127.0.0.1",
        4444,
        [0, 3, 0, 3, 3, 0],
        "loopback: Chronicle and LogScale drop it",
    ),
    (
        "/usr/bin/bash",
        "::1",
        4444,
        [0, 3, 3, 3, 3, 3],
        "IPv6 loopback: only the engine",
    ),
    (
        "/usr/bin/bash",
        "fd00::1",
        4444,
        [0, 3, 3, 3, 3, 3],
        "IPv6 unique-local: only the engine",
    ),
    (
        "/usr/bin/bash",
        "::ffff:10.0.0.1",
        4444,
        [0, 3, 3, 3, 3, 3],
        "IPv4-mapped private: only the engine",
    ),
    (
        "/usr/bin/bash",
        "169.254.1.1",
        4444,
        [0, 3, 3, 3, 3, 3],
        "link-local: only the engine",
    ),
    (
        "/usr/bin/perl",
        "100.64.0.1",
        7777,
        [3, 3, 3, 3, 3, 3],
        "CGNAT counts as public everywhere",
    ),
];

#[test]
fn five_rules_versus_engine_on_the_corpus() {
    let p = Policy::default();
    let mut diffs = 0;
    for (image, dst, port, want, why) in CORPUS {
        let ip: IpAddr = dst.parse().unwrap();
        let mut got = [engine_score(&p, image, ip, *port), 0, 0, 0, 0, 0];
        for (i, rule) in RULES.iter().enumerate() {
            got[i + 1] = rule_score(rule, &p, image, ip, *port);
        }
        assert_eq!(
            &got,
            want,
            "{image} -> {dst}:{port} ({why}); order: engine, {}",
            RULES.map(|r| r.name).join(", ")
        );
        diffs += usize::from(got.iter().any(|&r| r != got[0]));
    }
    // The corpus is there to show differences: most rows must show one.
    assert!(diffs >= 10, "{diffs}");
}

#[test]
fn the_rules_really_differ_where_the_reference_says() {
    let p = Policy::default();
    let ip: IpAddr = "203.0.113.7".parse().unwrap();
    let [splunk, chronicle, sumo, ..] = &RULES;
    // Substring vs anchored.
    assert_eq!(rule_score(splunk, &p, "/opt/x/notbash", ip, 4444), 3);
    assert_eq!(rule_score(sumo, &p, "/opt/x/notbash", ip, 4444), 1);
    // Chronicle's tier 2 ignores the standard list, for every standard port above 1024.
    for &port in DEFAULT_STANDARD_PORTS.iter().filter(|&&p| p > 1024) {
        assert_eq!(rule_score(chronicle, &p, "/bin/sh", ip, port), 2, "{port}");
        assert_eq!(rule_score(sumo, &p, "/bin/sh", ip, port), 0, "{port}");
        assert_eq!(engine_score(&p, "/bin/sh", ip, port), 0, "{port}");
    }
}

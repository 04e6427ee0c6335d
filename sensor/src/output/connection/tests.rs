//! The connection line's fields, each flow kind's ends, and a recorded line read back
//! into the subject live scoring decided on.

use std::{net::IpAddr, sync::Arc};

use serde_json::{Value, json};

use super::*;
use crate::{
    detect::{policy::Policy, score::score, subject::Subject},
    enrich::{
        Provenance,
        container::{Trust, untrusted},
        procfs::ProcessInfo,
        users::NameSource,
    },
    kernel::{
        argv::Argv,
        records::tests::{bytes, connect, raw},
    },
    output::{
        RULE_NAME, connection_line,
        recorded::{self, Recorded},
        write_line,
    },
};

fn argv(v: Vec<String>) -> Argv {
    v.into_iter().collect()
}

/// The decision the default lists make for `e`.
pub(super) fn decision(e: &Enriched) -> Decision {
    let verdict = score(&Policy::default(), &Subject::from_enriched(e));
    Decision {
        risk: verdict.risk,
        verdict,
        allow_rule: None,
        beacon: None,
        fold: None,
    }
}

/// `e`'s line, as written (and read back as JSON).
pub(super) fn line_json(e: &Enriched, cx: &Context) -> Value {
    let d = decision(e);
    serde_json::to_value(connection_line(e, &d, cx)).unwrap()
}

/// A connection of `flow` between `local` and `peer` by `exe`.
pub(crate) fn flow_conn(flow: Flow, exe: &str, local: (&str, u16), peer: (&str, u16)) -> Enriched {
    let octets = |ip: &str| match ip.parse::<IpAddr>().unwrap() {
        IpAddr::V4(a) => {
            let mut o = [0u8; 16];
            o[..4].copy_from_slice(&a.octets());
            (sensor_common::AF_INET, o)
        }
        IpAddr::V6(a) => (sensor_common::AF_INET6, a.octets()),
    };
    let ((family, saddr), (_, daddr)) = (octets(local.0), octets(peer.0));
    let mut raw = raw(family, daddr, peer.1);
    raw.data.saddr = saddr;
    raw.data.sport = local.1;
    let mut conn = connect(&bytes(&raw));
    conn.flow = flow;
    Enriched {
        conn,
        proc: ProcessInfo {
            executable: Some(exe.into()),
            ..Default::default()
        },
        user_name: None,
        provenance: Default::default(),
        host_name: "h".into(),
        attribution: None,
        unix_ns: 1_800_000_000_000_000_123,
        protocol: None,
    }
}

/// The line for a connection to 203.0.113.7:`port` from 192.0.2.10:40000 by `proc`,
/// scored by the lists.
fn record_json(proc: &ProcessInfo, port: u16) -> Value {
    let mut raw = raw(sensor_common::AF_INET, [0; 16], port);
    raw.data.daddr[..4].copy_from_slice(&[203, 0, 113, 7]);
    raw.data.saddr[..4].copy_from_slice(&[192, 0, 2, 10]);
    let e = Enriched {
        conn: connect(&bytes(&raw)),
        proc: proc.clone(),
        user_name: Some("alice".into()),
        provenance: Default::default(),
        host_name: "h".into(),
        attribution: None,
        unix_ns: 0,
        protocol: None,
    };
    line_json(&e, &Context::named("h"))
}

#[test]
fn alert_has_the_ecs_fields() {
    let proc = ProcessInfo {
        executable: Some("/usr/bin/nc.openbsd".into()),
        args: Some(argv(vec!["nc".into(), "203.0.113.7".into(), "4444".into()])),
        ppid: Some(1),
        parent_executable: Some("/usr/bin/bash".into()),
        ancestors: vec!["/usr/bin/bash".into(), "/usr/sbin/sshd".into()],
        ..Default::default()
    };
    let j = record_json(&proc, 4444);
    assert_eq!(j["event"]["kind"], "alert");
    assert_eq!(j["event"]["risk_score"], 3);
    assert_eq!(j["sensor"]["severity"], "High");
    assert_eq!(j["threat"]["technique"]["id"][0], "T1571");
    assert_eq!(j["threat"]["tactic"]["id"][0], "TA0011");
    assert_eq!(j["process"]["executable"], "/usr/bin/nc.openbsd");
    assert_eq!(j["process"]["name"], "nc.openbsd");
    assert_eq!(j["process"]["command_line"], "nc 203.0.113.7 4444");
    assert_eq!(j["process"]["parent"]["executable"], "/usr/bin/bash");
    assert_eq!(j["destination"]["ip"], "203.0.113.7");
    assert_eq!(j["destination"]["port"], 4444);
    assert_eq!(j["network"]["type"], "ipv4");
    assert_eq!(j["user"]["name"], "alice");
    assert_eq!(j["rule"]["name"], RULE_NAME);
    assert!(j.get("container").is_none());
    assert_eq!(
        j["sensor"]["process"]["lineage"],
        "sshd > bash > nc.openbsd"
    );
    assert_eq!(j["sensor"]["unknown_fields"], json!([]));
}

/// A 30,000-argument argv and a URL whose password runs past what is kept: the line
/// shows the kept start, counts every argument, says both are cut, leaks nothing.
#[test]
fn a_huge_argv_prints_its_start_and_its_count() {
    let raw = "x\0".repeat(30_000);
    let proc = ProcessInfo {
        args: Argv::parse(raw.as_bytes()),
        ..Default::default()
    };
    let j = record_json(&proc, 4444);
    assert_eq!(j["process"]["args_count"], 30_000);
    assert_eq!(j["process"]["command_line"].as_str().unwrap().len(), 4096);
    assert_eq!(j["process"]["args"].as_array().unwrap().len(), 2048);
    assert_eq!(
        j["sensor"]["truncated"],
        json!(["process.command_line", "process.args"])
    );
    let secret = "s".repeat(20_000);
    let raw = format!("curl\0https://bob:{secret}@203.0.113.7/\0");
    let proc = ProcessInfo {
        args: Argv::parse(raw.as_bytes()),
        ..Default::default()
    };
    let j = record_json(&proc, 4444);
    assert!(!j.to_string().contains("sss"), "{j}");
    assert_eq!(j["process"]["args"][1], "https://bob:<redacted>");
    assert_eq!(j["sensor"]["redacted"], json!(["url-userinfo"]));
}

#[test]
fn complete_ecs_redacted_and_bounded() {
    let long = "A".repeat(5000);
    let proc = ProcessInfo {
        executable: Some("/usr/bin/curl".into()),
        args: Some(argv(vec![
            "curl".into(),
            "-u".into(),
            "alice:hunter2".into(),
            "https://bob:s3cret@203.0.113.7:4444/".into(),
            long.clone(),
        ])),
        ppid: Some(1),
        parent_executable: Some("/usr/bin/bash".into()),
        ..Default::default()
    };
    let j = record_json(&proc, 4444);
    let text = j.to_string();
    assert!(
        !text.contains("hunter2") && !text.contains("s3cret"),
        "{text}"
    );
    assert_eq!(j["process"]["args"][2], "alice:<redacted>");
    assert_eq!(
        j["sensor"]["redacted"],
        json!(["user-password-flag", "url-userinfo"])
    );
    assert_eq!(j["process"]["args_count"], 5);
    assert_eq!(j["process"]["args"][4].as_str().unwrap().len(), 4096);
    assert_eq!(j["process"]["command_line"].as_str().unwrap().len(), 4096);
    assert_eq!(
        j["sensor"]["truncated"],
        json!(["process.command_line", "process.args"])
    );
    assert_eq!(j["process"]["parent"]["name"], "bash");
    assert_eq!(j["process"]["entity_id"].as_str().unwrap().len(), 32);
    assert_eq!(j["related"]["ip"], json!(["192.0.2.10", "203.0.113.7"]));
    assert_eq!(j["related"]["user"], json!(["alice"]));
    assert_eq!(j["rule"]["reference"], crate::output::TECHNIQUE_URL);
    assert_eq!(
        j["threat"]["technique"]["reference"][0],
        crate::output::TECHNIQUE_URL
    );
    // Both ends are known (192.0.2.10:40000): the flow has a Community ID.
    assert!(
        j["network"]["community_id"]
            .as_str()
            .unwrap()
            .starts_with("1:")
    );
}

#[test]
fn ipv4_mapped_destination_prints_as_ipv4() {
    let mut raw = raw(sensor_common::AF_INET6, [0; 16], 4444);
    raw.data.daddr[10..12].copy_from_slice(&[0xff, 0xff]);
    raw.data.daddr[12..].copy_from_slice(&[203, 0, 113, 7]);
    raw.data.sport = 0;
    let e = Enriched {
        conn: connect(&bytes(&raw)),
        proc: ProcessInfo::default(),
        user_name: None,
        provenance: Default::default(),
        host_name: "h".into(),
        attribution: None,
        unix_ns: 0,
        protocol: None,
    };
    let j = line_json(&e, &Context::named("h"));
    assert_eq!(j["destination"]["ip"], "203.0.113.7");
    assert_eq!(j["network"]["type"], "ipv4");
    assert_eq!(
        j["sensor"]["destination"]["original_ip"],
        "::ffff:203.0.113.7"
    );
    // No source port (the tracepoint path): no Community ID, never one over port 0.
    assert!(j["network"].get("community_id").is_none());
    assert!(j["source"].get("port").is_none());
}

#[test]
fn vanished_process_is_kept_and_marked() {
    let j = record_json(&ProcessInfo::default(), 4444);
    assert_eq!(j["event"]["kind"], "alert");
    // Scored from comm ("curl") since the executable is unknown.
    assert_eq!(j["event"]["risk_score"], 3);
    assert_eq!(j["sensor"]["matched"]["high_risk_matched_by"], "comm");
    assert_eq!(j["process"]["name"], "curl");
    assert!(j["process"].get("executable").is_none());
    let unknown = j["sensor"]["unknown_fields"].as_array().unwrap();
    assert!(unknown.contains(&json!("process.executable")));
}

#[test]
fn hostile_strings_stay_on_one_line() {
    let proc = ProcessInfo {
        executable: Some("/tmp/a\nb\"c\u{0}\u{1b}[31m".into()),
        args: Some(argv(vec![
            "x\r\n{\"event\":1}".into(),
            String::from_utf8_lossy(b"\xff\xfe").into_owned(),
        ])),
        ..Default::default()
    };
    let j = record_json(&proc, 4444);
    let mut buf = Vec::new();
    write_line(&mut buf, &j).unwrap();
    let text = String::from_utf8(buf).unwrap();
    assert_eq!(text.matches('\n').count(), 1);
    assert!(text.ends_with('\n'));
    let back: Value = serde_json::from_str(text.trim_end()).unwrap();
    assert_eq!(back["process"]["executable"], "/tmp/a\nb\"c\u{0}\u{1b}[31m");
}

#[test]
fn unscored_is_an_event_without_rule() {
    let j = record_json(
        &ProcessInfo {
            executable: Some("/usr/sbin/nginx".into()),
            ..Default::default()
        },
        80,
    );
    assert_eq!(j["event"]["kind"], "event");
    assert_eq!(j["event"]["risk_score"], 0);
    assert!(j.get("rule").is_none() && j.get("threat").is_none());
}

/// Replay reads a recorded line into the same subject live capture decided on.
#[test]
fn live_record_and_its_line_read_the_same() {
    let mut raw = raw(sensor_common::AF_INET, [0; 16], 4444);
    raw.data.daddr[..4].copy_from_slice(&[203, 0, 113, 7]);
    let c = connect(&bytes(&raw));
    let proc = ProcessInfo {
        executable: Some("/usr/bin/nc.openbsd".into()),
        args: Some(argv(vec!["nc".into()])),
        ppid: Some(1),
        parent_executable: Some("/usr/bin/bash".into()),
        container_id: Some("abc".into()),
        content_match: Some("nc".into()),
        location: Some("tmp"),
        ..Default::default()
    };
    let e = Enriched {
        conn: c,
        proc,
        user_name: Some("alice".into()),
        provenance: Provenance {
            user_name: Some(NameSource::Host),
            container: Some(Trust::Trusted),
        },
        host_name: "h".into(),
        attribution: None,
        unix_ns: 1_800_000_000_000_000_123,
        protocol: None,
    };
    let obs = Subject::from_enriched(&e);
    let back = replayed(&e).subject().unwrap();
    // One process either way: its start time live, its entity id's hash replayed.
    assert!(obs.process_start.is_some() && back.process_start.is_some());
    let same = |s: &Subject| Subject {
        process_start: None,
        ..s.clone()
    };
    assert_eq!(same(&obs), same(&back));
    assert!(obs.container_trusted && obs.user_name_source == Some(NameSource::Host));
    // What was not trusted live is not trusted replayed.
    let forged = Enriched {
        provenance: Provenance {
            user_name: Some(NameSource::Container),
            container: Some(Trust::Untrusted(untrusted::DELEGATED)),
        },
        ..e.clone()
    };
    let doc = line_json(&forged, &Context::named("h"));
    assert_eq!(doc["sensor"]["container"]["reason"], "delegated-cgroup");
    let back = replayed(&forged).subject().unwrap();
    assert_eq!(same(&Subject::from_enriched(&forged)), same(&back));
    assert!(!back.container_trusted);
    assert_eq!(back.user_name_source, Some(NameSource::Container));
    // Content and location identity survive a record-and-replay round trip.
    assert_eq!(
        (obs.content_match.as_deref(), obs.location.as_deref()),
        (Some("nc"), Some("tmp"))
    );
    let gone = Enriched {
        proc: ProcessInfo::default(),
        user_name: None,
        provenance: Provenance::default(),
        ..e
    };
    assert_eq!(
        same(&Subject::from_enriched(&gone)),
        same(&replayed(&gone).subject().unwrap())
    );
}

/// `e`'s line as written, read back as replay reads it.
pub(super) fn replayed(e: &Enriched) -> Recorded {
    let d = decision(e);
    let text = serde_json::to_string(&connection_line(e, &d, &Context::named("h"))).unwrap();
    match recorded::read(&text).unwrap() {
        recorded::Read::Connection(r) => *r,
        recorded::Read::Other => panic!("not read as a connection: {text}"),
    }
}

/// The printed strings are made once per process, never shown for another image after an
/// exec (same pid and start time), and the cache stays under its byte bound.
#[test]
fn printed_strings_cached_per_process_and_exec() {
    let cx = Context::named("h");
    let mut e = flow_conn(
        Flow::Connect,
        "/usr/bin/nc",
        ("192.0.2.10", 40000),
        ("203.0.113.7", 4444),
    );
    e.conn.start_time_ns = 77;
    e.proc.args = Some(argv(vec![
        "nc".into(),
        "--password".into(),
        "hunter2".into(),
    ]));
    let first = cx.printed(&e);
    assert!(Arc::ptr_eq(&first, &cx.printed(&e)), "a hit");
    assert_eq!(
        first.command_line.as_deref(),
        Some("nc --password <redacted>")
    );
    // An exec: the same process, another image and argv.
    e.proc.executable = Some("/usr/bin/curl".into());
    e.proc.args = Some(argv(vec!["curl".into()]));
    let j = line_json(&e, &cx);
    assert_eq!(j["process"]["executable"], "/usr/bin/curl");
    assert_eq!(j["process"]["command_line"], "curl");
    assert_eq!(cx.printed_cache().0, 1, "the entry replaced");
    // Many processes: the bytes stay bounded, the dropped entries counted.
    for pid in 0..20_000 {
        e.conn.tgid = pid;
        cx.printed(&e);
    }
    let (entries, bytes, evicted) = cx.printed_cache();
    assert!(bytes <= crate::output::printed::MAX_BYTES, "{bytes}");
    assert!(evicted > 0 && entries < 20_000, "{entries} {evicted}");
}

//! The engine's lines as printed: allow rules, beacons, flood control, rollups and
//! summaries, from recorded connection lines (the replay path) through `output::write`.

use std::sync::Arc;

use sensor::{
    detect::{
        decision::Line,
        engine::{Config, Engine, beacon_risk},
        policy::Policy,
    },
    enrich::procfs::exe_name,
    output::{self, BEACON_RULE_ID, clock, recorded::Recorded},
};
use serde_json::{Value, json};

/// Lines as printed.
fn printed(lines: &[Line<Recorded>]) -> Vec<Value> {
    let cx = output::Context::named("h");
    lines
        .iter()
        .map(|l| {
            let mut buf = Vec::new();
            output::write(l, &cx, &mut buf).unwrap();
            serde_json::from_slice(&buf).unwrap()
        })
        .collect()
}

const S: i128 = 1_000_000_000;
const T0: i128 = 1_800_000_000 * S;

fn conn(exe: &str, pid: u64, port: u16, ts: i128) -> Value {
    json!({
        "@timestamp": clock::rfc3339(ts),
        "event": {"kind": "event", "action": "network-connect", "risk_score": 0},
        "process": {"pid": pid, "executable": exe, "name": exe_name(exe),
                    "thread": {"name": exe_name(exe)},
                    "parent": {"executable": "/usr/bin/bash"}},
        "user": {"id": "1000", "name": "alice"},
        "destination": {"ip": "203.0.113.7", "port": port},
        "host": {"name": "h"},
        "sensor": {},
    })
}

fn engine(policy: &str, cfg: Config) -> Engine<Recorded> {
    Engine::new(Arc::new(Policy::parse(policy).unwrap()), cfg)
}

fn actions(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .map(|v| v["event"]["action"].as_str().unwrap_or("").to_string())
        .collect()
}

#[test]
fn allow_rule_suppresses_and_counts() {
    let mut e = engine(
        "[[allow]]\nname = \"dev\"\nexecutables = [\"node\"]\ndestination_ports = [8088]\n",
        Config {
            all: true,
            ..Config::default()
        },
    );
    let o = e
        .connection(&conn("/usr/bin/node", 1, 8088, T0).to_string())
        .unwrap();
    let lines = printed(&o.lines);
    assert!(!o.alert);
    assert_eq!(lines[0]["event"]["kind"], "event");
    assert_eq!(lines[0]["sensor"]["allow_rule"], "dev");
    assert!(
        lines[0]["event"]["reason"]
            .as_str()
            .unwrap()
            .contains("allow rule dev")
    );
    let o = e
        .connection(&conn("/usr/bin/curl", 2, 8088, T0).to_string())
        .unwrap();
    let lines = printed(&o.lines);
    assert!(o.alert);
    assert_eq!(lines[0]["event"]["risk_score"], 3);
    // A connection a rule matches but that would not alert is not "suppressed".
    e.connection(&conn("/usr/bin/node", 1, 8089, T0).to_string())
        .unwrap();
    assert_eq!(e.stats.suppressed.get("dev"), Some(&1));
    let fin = printed(&e.finish(T0 + S));
    let summary = fin.last().unwrap();
    assert_eq!(summary["event"]["action"], "engine-summary");
    assert_eq!(summary["sensor"]["engine"]["suppressed_by_rule"]["dev"], 1);
    assert_eq!(summary["sensor"]["window"]["suppressed_by_rule"]["dev"], 1);
}

#[test]
fn beacon_event_and_raised_risk() {
    // nginx on a non-standard, non-C2 port scores 0; ten regular connects make it Low.
    let mut e = engine("", Config::default());
    let mut all = Vec::new();
    for i in 0..10 {
        let o = e
            .connection(&conn("/usr/sbin/nginx", 100 + i as u64, 5555, T0 + i * 60 * S).to_string())
            .unwrap();
        assert_eq!(o.alert, i == 9, "connection {i}");
        all.extend(printed(&o.lines));
    }
    // The periodic summary after 300 s of recorded time comes first.
    assert_eq!(
        actions(&all),
        ["engine-summary", "network-connect", "beacon-detected"]
    );
    all.remove(0);
    let (c, b) = (&all[0], &all[1]);
    assert_eq!(c["event"]["risk_score"], 1);
    assert_eq!(c["sensor"]["beacon"]["interval_seconds"], 60.0);
    assert!(c["event"]["reason"].as_str().unwrap().contains("beacon"));
    assert_eq!(b["rule"]["id"], BEACON_RULE_ID);
    assert_eq!(b["sensor"]["beacon"]["connections"], 10);
    assert_eq!(b["destination"]["port"], 5555);
    assert_eq!(b["process"]["executable"], "/usr/sbin/nginx");
    // A shell beaconing on a C2 port stays High (capped at 3).
    assert_eq!(beacon_risk(3), 3);
    assert_eq!(beacon_risk(2), 3);
    assert_eq!(beacon_risk(0), 1);
}

#[test]
fn standard_ports_and_excluded_networks_are_not_beacon_tracked() {
    let mut e = engine("", Config::default());
    for i in 0..20 {
        let mut d = conn("/usr/bin/curl", 1, 443, T0 + i * 60 * S);
        e.connection(&d.to_string()).unwrap();
        d["destination"]["ip"] = json!("10.0.0.1");
        d["destination"]["port"] = json!(5555);
        e.connection(&d.to_string()).unwrap();
    }
    assert_eq!(e.beacon_keys(), 0);
    assert_eq!(e.stats.alerts, 0);
}

#[test]
fn flood_is_folded_and_rollup_summarises() {
    let mut e = engine("", Config::default());
    let mut lines = Vec::new();
    for i in 0..100 {
        // One nc process looping connects every 50 ms.
        lines.extend(printed(
            &e.connection(&conn("/usr/bin/nc", 7, 4444, T0 + i * S / 20).to_string())
                .unwrap()
                .lines,
        ));
    }
    assert_eq!(lines.len(), 1, "one line at once, the rest held");
    lines.extend(printed(&e.tick(T0 + 11 * S)));
    let folded: u64 = lines
        .iter()
        .filter(|v| v["event"]["action"] == "network-connect")
        .map(|v| v["sensor"]["folded_count"].as_u64().unwrap())
        .sum();
    assert_eq!(folded, 100);
    lines.extend(printed(&e.tick(T0 + 300 * S)));
    let rollup: Vec<_> = lines
        .iter()
        .filter(|v| v["event"]["action"] == "alert-rollup")
        .collect();
    assert_eq!(rollup.len(), 1);
    assert_eq!(rollup[0]["sensor"]["rollup"]["connections"], 100);
    // Grouped by the uid the kernel gave (a name may be unresolvable for a short-lived
    // process and must not split its group).
    assert_eq!(rollup[0]["user"]["id"], "1000");
    assert!(actions(&lines).contains(&"engine-summary".to_string()));
}

#[test]
fn bad_documents_are_errors_not_panics() {
    let mut e = engine("", Config::default());
    for bad in [
        json!({}),
        json!({"@timestamp": "x", "destination": {"ip": "203.0.113.7", "port": 1}}),
        json!({"@timestamp": clock::rfc3339(T0), "destination": {"ip": "nope", "port": 1}, "process": {"name": "a"}}),
        json!({"@timestamp": clock::rfc3339(T0), "destination": {"ip": "203.0.113.7", "port": 70000}, "process": {"name": "a"}}),
        json!({"@timestamp": clock::rfc3339(T0), "destination": {"ip": "203.0.113.7", "port": 1}}),
        json!([1, 2]),
        json!("string"),
    ] {
        assert!(e.connection(&bad.to_string()).is_err(), "{bad}");
    }
    assert_eq!(e.stats.connections, 0);
}

#[test]
fn quiet_connections_build_no_json_and_are_counted() {
    let mut e = engine("", Config::default());
    let obs = |exe: &str, port: u16| {
        Recorded::parse(&conn(exe, 1, port, T0).to_string())
            .unwrap()
            .subject()
            .unwrap()
    };
    for (exe, port, prints) in [
        ("/usr/bin/curl", 443, false),
        ("/usr/sbin/nginx", 5555, false),
        ("/usr/bin/curl", 5555, true),
    ] {
        let mut built = false;
        let ob = obs(exe, port);
        let o = e.decide(&ob, || {
            built = true;
            Recorded::parse(&conn(exe, 1, port, T0).to_string()).unwrap()
        });
        assert_eq!((built, o.alert), (prints, prints), "{exe} {port}");
    }
    assert_eq!(e.stats.connections, 3);
    assert_eq!(
        e.beacon_keys(),
        2,
        "nginx:5555 is tracked for beacons without JSON"
    );
}

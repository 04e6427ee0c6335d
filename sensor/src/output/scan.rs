//! The `network-scan` alert: one group's connects in one window once they passed the
//! scan threshold (written at the threshold and again at window end).

use std::borrow::Cow;

use crate::{
    detect::{scan::Summary, severity::Severity},
    enrich::procfs::exe_name,
    output::{
        clock,
        ecs::{
            Action, EcsLine, Event, Host, Kind, Parent, Process, Rule, Scan, ScanLine, ScanSensor,
            ScanTarget,
        },
        flow::NETWORK,
        rollup::group_user,
    },
};

pub const SCAN_RULE_ID: &str = "t1571-network-scan";
pub const SCAN_RULE_NAME: &str = "Port or host scan";
/// Network Service Discovery: what a scan is, whatever ports it hits.
const SCAN_TECHNIQUE_URL: &str = "https://attack.mitre.org/techniques/T1046/";
const CONNECTION_INFO: &[Cow<'static, str>] = &[Cow::Borrowed("connection"), Cow::Borrowed("info")];

pub fn line(s: &Summary) -> ScanLine<'_> {
    let (k, w) = (&s.key, &s.window);
    let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
    let mut event = Event::new(Kind::Alert, Action::NetworkScan);
    event.category = Cow::Borrowed(NETWORK);
    event.types = Cow::Borrowed(CONNECTION_INFO);
    event.dataset = Some(Cow::Borrowed("sensor.scan"));
    event.risk_score = Some(s.risk);
    event.severity = Some(s.risk);
    event.start = Some(Cow::Owned(clock::rfc3339(w.first_ns)));
    event.end = Some(Cow::Owned(clock::rfc3339(w.last_ns)));
    event.reason = Some(Cow::Owned(format!(
        "{} connects to {} distinct ports on {} distinct hosts in {} s (threshold: more than \
         {} ports or {} hosts)",
        w.connections,
        w.distinct_ports(),
        w.distinct_hosts(),
        (w.last_ns - w.first_ns) / 1_000_000_000,
        w.threshold.ports,
        w.threshold.hosts,
    )));
    let reason = match s.reason {
        crate::detect::scan::Reason::Threshold => "threshold",
        crate::detect::scan::Reason::WindowEnd => "window-end",
        crate::detect::scan::Reason::MemoryBudget => "memory-budget",
        crate::detect::scan::Reason::Exit => "exit",
    };
    let mut line = EcsLine::new(
        Cow::Owned(clock::rfc3339(s.at_ns)),
        event,
        ScanSensor {
            severity: Severity::of(s.risk),
            scan: Some(Scan {
                reason: Cow::Borrowed(reason),
                connections: w.connections,
                connections_folded: w.folded,
                distinct_ports: w.distinct_ports(),
                distinct_hosts: w.distinct_hosts(),
                hosts_not_counted: w.hosts_not_counted,
                sample: w
                    .sample
                    .iter()
                    .map(|&(ip, port)| ScanTarget { ip, port })
                    .collect(),
                c2_ports: w.c2_ports.iter().copied().collect(),
                pids: w.pids().collect(),
                processes_not_listed: w.processes_not_listed,
                threshold_ports: w.threshold.ports,
                threshold_hosts: w.threshold.hosts,
                window_seconds: w.threshold.window_seconds,
                window_start: Cow::Owned(clock::rfc3339(w.start_ns)),
            }),
            extra: Default::default(),
        },
    );
    line.host = Some(Host {
        name: opt(&k.host).map(Cow::Owned),
        ..Default::default()
    });
    let executable = opt(&k.executable);
    line.process = Some(Process {
        name: executable
            .as_deref()
            .map(|e| Cow::Owned(exe_name(e).to_string())),
        executable: executable.filter(|e| e.contains('/')).map(Cow::Owned),
        parent: opt(&k.parent).map(|p| Parent {
            executable: Some(Cow::Owned(p)),
            ..Default::default()
        }),
        ..Default::default()
    })
    .filter(|p| *p != Process::default());
    line.user = opt(&k.user).map(group_user);
    line.rule = Some(Rule {
        id: Some(Cow::Borrowed(SCAN_RULE_ID)),
        name: Some(Cow::Borrowed(SCAN_RULE_NAME)),
        reference: Some(Cow::Borrowed(SCAN_TECHNIQUE_URL)),
    });
    line
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::{Value, json};

    use crate::{
        detect::{
            decision::{Decision, Line},
            engine::{Config, Engine},
            policy::Policy,
            score::score,
            subject::Subject,
        },
        enrich::{Enriched, procfs::ProcessInfo},
        kernel::records::tests::{bytes, connect, raw},
        output::{
            Context, connection_line,
            recorded::{self, Recorded},
        },
    };

    const MS: i128 = 1_000_000;

    /// `nc` (pid `pid`) to 203.0.113.7:`port` at `ts`.
    fn nc(pid: u32, port: u16, ts: i128) -> Enriched {
        let mut r = raw(sensor_common::AF_INET, [0; 16], port);
        r.data.daddr[..4].copy_from_slice(&[203, 0, 113, 7]);
        r.header.tgid = pid;
        r.header.start_time_ns = 1000 + u64::from(pid);
        Enriched {
            conn: connect(&bytes(&r)),
            proc: ProcessInfo {
                executable: Some("/usr/bin/nc.openbsd".into()),
                parent_executable: Some("/usr/bin/bash".into()),
                ..Default::default()
            },
            user_name: Some("root".into()),
            provenance: Default::default(),
            host_name: "h".into(),
            attribution: None,
            unix_ns: ts,
            protocol: None,
        }
    }

    /// 100 ports from pid 10, 4444 from pid 11 and then from pid 10 in the middle.
    fn traffic() -> Vec<Enriched> {
        let t0 = 1_800_000_000_000 * MS;
        let mut v: Vec<_> = (0..100)
            .map(|p| nc(10, 20_000 + p, t0 + i128::from(p) * MS))
            .collect();
        v.insert(50, nc(11, 4444, t0 + 50 * MS));
        v.insert(51, nc(10, 4444, t0 + 50 * MS));
        v
    }

    /// (action, pid, port) of connection lines, and the scan lines as printed.
    fn printed<C: crate::output::Render>(lines: &[Line<C>]) -> (Vec<u16>, Vec<Value>) {
        let cx = Context::named("h");
        let mut ports = Vec::new();
        let mut scans = Vec::new();
        for l in lines {
            match l {
                Line::Connection(d) => {
                    let v =
                        serde_json::to_value(connection_line(&d.conn, &d.decision, &cx)).unwrap();
                    ports.push(v["destination"]["port"].as_u64().unwrap() as u16);
                }
                Line::Scan(s) => scans.push(serde_json::to_value(super::line(s)).unwrap()),
                _ => {}
            }
        }
        (ports, scans)
    }

    /// Live and replayed (each connection's `--all` line read back) fold the same scan: the
    /// engine is shared, and a replayed process is told apart by its entity id.
    #[test]
    fn live_and_replay_summarise_the_same_scan() {
        let policy = Arc::new(Policy::default());
        let cx = Context::named("h");
        let (mut live, mut replay) = (Vec::new(), Vec::new());
        let mut e1: Engine<Enriched> = Engine::new(policy.clone(), Config::default());
        let mut e2: Engine<Recorded> = Engine::new(policy.clone(), Config::default());
        for e in traffic() {
            let s = Subject::from_enriched(&e);
            let verdict = score(&policy, &s);
            let d = Decision {
                risk: verdict.risk,
                verdict,
                allow_rule: None,
                beacon: None,
                fold: None,
            };
            let text = serde_json::to_string(&connection_line(&e, &d, &cx)).unwrap();
            let recorded::Read::Connection(r) = recorded::read(&text).unwrap() else {
                panic!("not a connection line");
            };
            let rs = r.subject().unwrap();
            live.extend(e1.decide(&s, || e.clone()).lines);
            replay.extend(e2.decide(&rs, || *r).lines);
        }
        let end = 1_800_000_001_000 * MS;
        live.extend(e1.finish(end));
        replay.extend(e2.finish(end));
        let (ports, scans) = printed(&live);
        let (replay_ports, replay_scans) = printed(&replay);
        assert_eq!(
            ports.len(),
            22,
            "20 before the threshold, 4444 twice: {ports:?}"
        );
        assert_eq!(ports.iter().filter(|&&p| p == 4444).count(), 2);
        assert_eq!(ports, replay_ports);
        let strip = |v: &Value| {
            let mut v = v["sensor"]["scan"].clone();
            v.as_object_mut().unwrap().remove("window_start");
            v
        };
        assert_eq!(scans.len(), 2);
        assert_eq!(
            scans.iter().map(strip).collect::<Vec<_>>(),
            replay_scans.iter().map(strip).collect::<Vec<_>>()
        );
        let end = &scans[1];
        assert_eq!(end["event"]["action"], "network-scan");
        assert_eq!(end["event"]["kind"], "alert");
        assert_eq!(end["event"]["risk_score"], 3);
        assert_eq!(end["rule"]["id"], super::SCAN_RULE_ID);
        assert_eq!(end["process"]["executable"], "/usr/bin/nc.openbsd");
        assert_eq!(end["process"]["parent"]["executable"], "/usr/bin/bash");
        let s = &end["sensor"]["scan"];
        assert_eq!(s["reason"], "exit");
        assert_eq!(s["connections"], 102);
        assert_eq!(s["connections_folded"], 80);
        assert_eq!(s["distinct_ports"], 101);
        assert_eq!(s["distinct_hosts"], 1);
        assert_eq!(s["c2_ports"], json!([4444]));
        assert_eq!(s["pids"], json!([10, 11]));
        assert_eq!(s["sample"][0], json!({"ip": "203.0.113.7", "port": 20000}));
        assert_eq!(scans[0]["sensor"]["scan"]["reason"], "threshold");
    }
}

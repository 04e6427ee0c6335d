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
            ScanTarget, User,
        },
        flow::NETWORK,
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
    line.user = opt(&k.user).map(|u| User {
        name: Some(Cow::Owned(u)),
        ..Default::default()
    });
    line.rule = Some(Rule {
        id: Some(Cow::Borrowed(SCAN_RULE_ID)),
        name: Some(Cow::Borrowed(SCAN_RULE_NAME)),
        reference: Some(Cow::Borrowed(SCAN_TECHNIQUE_URL)),
    });
    line
}

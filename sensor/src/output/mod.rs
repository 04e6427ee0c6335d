//! ECS JSON lines. One object per line whatever bytes the process put in its path or
//! command line: serde_json escapes control characters and the strings are already valid
//! UTF-8 (lossy conversion happens in `procs`), so a line can never be split or broken.
//! Unknown values are left out rather than faked, and listed in `sensor.unknown_fields`.

pub mod clock;

use std::io::Write;

use anyhow::{Context, Result};
use serde_json::{Map, Value, json};

use crate::{detect::score::Verdict, enrich::procfs::ProcessInfo, kernel::records::Connection};

pub const RULE_NAME: &str = "Command and control over a non-standard port";
pub const RULE_ID: &str = "t1571-non-standard-port";

/// Everything known about one connection after enrichment and scoring.
pub struct Record<'a> {
    pub conn: &'a Connection,
    pub proc: &'a ProcessInfo,
    pub user_name: Option<&'a str>,
    pub verdict: &'a Verdict,
    pub host_name: &'a str,
    /// Where the attribution came from (kernel-exec, kernel-fork, procfs), None if nowhere.
    pub attribution: Option<&'static str>,
    /// Wall-clock time of the connect, Unix nanoseconds.
    pub unix_ns: i128,
}

impl Record<'_> {
    pub fn to_json(&self) -> Value {
        let c = self.conn;
        let p = self.proc;
        let v = self.verdict;
        let alert = v.risk > 0;
        let name = p
            .executable
            .as_deref()
            .map(crate::enrich::procfs::exe_name)
            .unwrap_or(&c.comm);
        let mut unknown = Vec::new();
        for (field, known) in [
            ("process.executable", p.executable.is_some()),
            ("process.command_line", p.args.is_some()),
            ("process.parent.pid", p.ppid.is_some()),
            ("process.parent.executable", p.parent_executable.is_some()),
            ("user.name", self.user_name.is_some()),
        ] {
            if !known {
                unknown.push(field);
            }
        }
        let reasons = v.reasons();
        let mut doc = json!({
            "@timestamp": clock::rfc3339(self.unix_ns),
            "event": {
                "kind": if alert { "alert" } else { "event" },
                "category": ["network"],
                "type": ["connection", "start"],
                "action": "network-connect",
                "outcome": "unknown",
                "module": "sensor",
                "dataset": "sensor.network",
                "risk_score": v.risk,
                "severity": v.risk,
                "reason": if reasons.is_empty() { Value::Null } else { Value::from(reasons.join("; ")) },
            },
            "rule": if alert { json!({"name": RULE_NAME, "id": RULE_ID}) } else { Value::Null },
            "threat": if alert { threat() } else { Value::Null },
            "process": {
                "pid": c.tgid,
                "name": name,
                "executable": p.executable,
                "command_line": p.command_line(),
                "args": p.args,
                "thread": {"id": c.tid, "name": c.comm},
                "parent": {"pid": p.ppid, "executable": p.parent_executable},
            },
            "user": {"id": c.uid.to_string(), "name": self.user_name},
            "group": {"id": c.gid.to_string()},
            // The local port is bound after SYN_SENT on the tracepoint path: 0 means unknown.
            "source": {"ip": c.src.to_string(), "port": (c.sport != 0).then_some(c.sport)},
            "destination": {"ip": c.dst.to_string(), "port": c.dport},
            "network": {
                "transport": "tcp",
                "type": if crate::detect::score::canonical(c.dst).is_ipv4() { "ipv4" } else { "ipv6" },
                "direction": "egress",
            },
            "host": {"name": self.host_name},
            "container": {"id": p.container_id},
            "sensor": {
                "severity": v.severity(),
                "process": {
                    "attribution": self.attribution.unwrap_or("none"),
                    "lineage": crate::enrich::proctable::lineage(p),
                    "ancestors": if p.ancestors.is_empty() { Value::Null } else { json!(p.ancestors) },
                    "content_match": p.content_match,
                    "location": p.location,
                    "fileless": p.location.map(|l| matches!(l, "memfd" | "fd" | "deleted")),
                },
                "probe": c.probe.map(|p| p.hook()),
                "cgroup_id": c.cgroup_id,
                "matched": matched(v),
                "unknown_fields": unknown,
            },
        });
        prune(&mut doc);
        doc
    }
}

/// `High`, `Medium`, `Low` for risk 3, 2, 1.
pub fn severity(risk: u8) -> Option<&'static str> {
    match risk {
        3 => Some("High"),
        2 => Some("Medium"),
        1 => Some("Low"),
        _ => None,
    }
}

/// MITRE ATT&CK T1571 under TA0011, as every alert carries it.
pub fn threat() -> Value {
    json!({
        "framework": "MITRE ATT&CK",
        "tactic": {"id": ["TA0011"], "name": ["Command and Control"]},
        "technique": {"id": ["T1571"], "name": ["Non-Standard Port"]},
    })
}

fn matched(v: &Verdict) -> Value {
    json!({
        "high_risk_executable": v.high_risk.as_ref().map(|h| &h.entry),
        "high_risk_matched_by": v.high_risk.as_ref().map(|h| h.matched_by),
        "known_c2_port": v.known_c2_port,
        "non_standard_port": v.non_standard_port,
        "excluded_network": v.excluded_by.map(|n| n.to_string()),
    })
}

/// Rewrites a connection document's scoring fields for the engine's final decision:
/// `risk` after beacon raise and allow rules, the allow rule that suppressed it, and the
/// beacon statistics when the connection is part of one.
pub fn set_verdict(
    doc: &mut Value,
    v: &Verdict,
    risk: u8,
    allow_rule: Option<&str>,
    beacon: Option<Value>,
) {
    let Some(obj) = doc.as_object_mut() else {
        return;
    };
    let alert = risk > 0;
    let mut reasons = v.reasons();
    if let Some(b) = &beacon {
        reasons.push(format!(
            "regular-interval beacon every {} s (risk raised by one)",
            b["interval_seconds"]
        ));
    }
    if let Some(rule) = allow_rule {
        reasons.push(format!("suppressed by allow rule {rule}"));
    }
    let event = obj.entry("event").or_insert_with(|| json!({}));
    if !event.is_object() {
        *event = json!({});
    }
    if let Some(e) = event.as_object_mut() {
        e.insert("kind".into(), json!(if alert { "alert" } else { "event" }));
        e.insert("risk_score".into(), json!(risk));
        e.insert("severity".into(), json!(risk));
        match reasons.is_empty() {
            true => e.remove("reason"),
            false => e.insert("reason".into(), json!(reasons.join("; "))),
        };
    }
    if alert {
        obj.insert("rule".into(), json!({"name": RULE_NAME, "id": RULE_ID}));
        obj.insert("threat".into(), threat());
    } else {
        obj.remove("rule");
        obj.remove("threat");
    }
    let sensor = obj.entry("sensor").or_insert_with(|| json!({}));
    if !sensor.is_object() {
        *sensor = json!({});
    }
    if let Some(s) = sensor.as_object_mut() {
        s.insert("severity".into(), json!(severity(risk)));
        s.insert("matched".into(), matched(v));
        s.insert("allow_rule".into(), json!(allow_rule));
        s.insert("beacon".into(), beacon.unwrap_or(Value::Null));
        s.remove("folded_count");
    }
    prune(doc);
}

/// A sensor health event (`event.kind` "state" or "pipeline_error") with extra `sensor.*` fields.
pub fn status(kind: &str, action: &str, host_name: &str, sensor: Value) -> Value {
    let mut doc = json!({
        "@timestamp": clock::rfc3339(clock::BootClock::now_unix_ns()),
        "event": {"kind": kind, "category": ["host"], "type": ["info"], "action": action,
                  "module": "sensor", "dataset": "sensor.status"},
        "host": {"name": host_name},
        "sensor": sensor,
    });
    prune(&mut doc);
    doc
}

/// Drops nulls and objects left empty, so absent means unknown.
pub fn prune(v: &mut Value) {
    if let Value::Object(map) = v {
        prune_map(map);
    }
}

fn prune_map(map: &mut Map<String, Value>) {
    map.retain(|_, v| {
        if let Value::Object(inner) = v {
            prune_map(inner);
            !inner.is_empty()
        } else {
            !v.is_null()
        }
    });
}

/// Writes one JSON line.
pub fn write_line(out: &mut impl Write, doc: &Value) -> Result<()> {
    serde_json::to_writer(&mut *out, doc).context("writing JSON to stdout")?;
    out.write_all(b"\n").context("writing JSON to stdout")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{detect::policy::Policy, detect::score::score};

    fn record_json(proc: &ProcessInfo, port: u16) -> Value {
        let mut raw = crate::kernel::records::tests::raw(sensor_common::AF_INET, [0; 16], port);
        raw.daddr[..4].copy_from_slice(&[203, 0, 113, 7]);
        let conn =
            crate::kernel::records::tests::connect(&crate::kernel::records::tests::bytes(&raw));
        let name = proc
            .executable
            .as_deref()
            .map(crate::enrich::procfs::exe_name);
        let verdict = score(
            &Policy::default(),
            &crate::detect::score::Subject::named(name, &conn.comm),
            conn.dst,
            conn.dport,
        );
        Record {
            conn: &conn,
            proc,
            user_name: Some("alice"),
            verdict: &verdict,
            host_name: "h",
            attribution: None,
            unix_ns: 0,
        }
        .to_json()
    }

    #[test]
    fn alert_has_the_ecs_fields() {
        let proc = ProcessInfo {
            executable: Some("/usr/bin/nc.openbsd".into()),
            args: Some(vec!["nc".into(), "203.0.113.7".into(), "4444".into()]),
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
            args: Some(vec![
                "x\r\n{\"event\":1}".into(),
                String::from_utf8_lossy(b"\xff\xfe").into_owned(),
            ]),
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
}

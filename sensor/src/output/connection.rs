//! The `network-connect` line of a live connection and its `beacon-detected` alert,
//! rendered once from the enriched connection and the engine's decision.

use serde_json::{Map, Value, json};

use crate::{
    detect::decision::{BeaconAlert, Decision},
    enrich::{Enriched, procfs::exe_name, proctable::lineage},
    kernel::records::canonical,
    output::{self, Render, clock},
};

/// The connection's own fields, shared by its line and its beacon alert.
fn parts(e: &Enriched) -> Map<String, Value> {
    let c = &e.conn;
    let p = &e.proc;
    let name = p.executable.as_deref().map(exe_name).unwrap_or(&c.comm);
    let doc = json!({
        "@timestamp": clock::rfc3339(e.unix_ns),
        "process": {
            "pid": c.tgid,
            "name": name,
            "executable": p.executable,
            "command_line": p.command_line(),
            "args": p.args,
            "thread": {"id": c.tid, "name": c.comm},
            "parent": {"pid": p.ppid, "executable": p.parent_executable},
        },
        "user": {"id": c.uid.to_string(), "name": e.user_name},
        "destination": {"ip": c.dst.to_string(), "port": c.dport},
        "network": {
            "transport": "tcp",
            "type": if canonical(c.dst).is_ipv4() { "ipv4" } else { "ipv6" },
            "direction": "egress",
        },
        "host": {"name": e.host_name},
        "container": {"id": p.container_id},
    });
    match doc {
        Value::Object(m) => m,
        _ => unreachable!("json! of an object literal is an object"),
    }
}

impl Render for Enriched {
    fn connection(&self, d: &Decision) -> Value {
        let c = &self.conn;
        let p = &self.proc;
        let alert = d.alert();
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
        let reasons = d.reasons();
        let mut doc = parts(self);
        let mut event = json!({
            "kind": if alert { "alert" } else { "event" },
            "category": ["network"],
            "type": ["connection", "start"],
            "action": "network-connect",
            "outcome": "unknown",
            "module": "sensor",
            "dataset": "sensor.network",
            "risk_score": d.risk,
            "severity": d.risk,
            "reason": if reasons.is_empty() { Value::Null } else { Value::from(reasons.join("; ")) },
        });
        // A folded line spans its connections: event.start is the first repeat, event.end
        // (like @timestamp) the last.
        if let Some(first) = d.fold.and_then(|f| f.first_ns) {
            event["start"] = json!(clock::rfc3339(first));
            event["end"] = json!(clock::rfc3339(self.unix_ns));
        }
        doc.insert("event".into(), event);
        if alert {
            doc.insert("rule".into(), output::connect_rule());
            doc.insert("threat".into(), output::threat());
        }
        doc.insert("group".into(), json!({"id": c.gid.to_string()}));
        // The local port is bound after SYN_SENT on the tracepoint path: 0 means unknown.
        doc.insert(
            "source".into(),
            json!({"ip": c.src.to_string(), "port": (c.sport != 0).then_some(c.sport)}),
        );
        doc.insert(
            "sensor".into(),
            json!({
                "severity": d.severity(),
                "process": {
                    "attribution": self.attribution.unwrap_or("none"),
                    "lineage": lineage(p),
                    "ancestors": if p.ancestors.is_empty() { Value::Null } else { json!(p.ancestors) },
                    "content_match": p.content_match,
                    "location": p.location,
                    "fileless": p.location.map(|l| matches!(l, "memfd" | "fd" | "deleted")),
                },
                "probe": c.probe.map(|p| p.hook()),
                "cgroup_id": c.cgroup_id,
                "matched": output::matched(&d.verdict),
                "allow_rule": d.allow_rule,
                "beacon": d.beacon.as_ref().map(output::beacon_fields),
                "folded_count": d.fold.map(|f| f.count),
                "unknown_fields": unknown,
            }),
        );
        let mut doc = Value::Object(doc);
        output::prune(&mut doc);
        doc
    }

    fn beacon(&self, b: &BeaconAlert<Self>) -> Value {
        output::beacon_event(parts(self), &b.beacon, b.risk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        detect::{policy::Policy, score::score, subject::Subject},
        enrich::procfs::ProcessInfo,
        kernel::records::tests::{bytes, connect, raw},
        output::{RULE_NAME, write_line},
    };

    /// The line for a connection to 203.0.113.7:`port` by `proc`, scored by the lists.
    fn record_json(proc: &ProcessInfo, port: u16) -> Value {
        let mut raw = raw(sensor_common::AF_INET, [0; 16], port);
        raw.data.daddr[..4].copy_from_slice(&[203, 0, 113, 7]);
        let e = Enriched {
            conn: connect(&bytes(&raw)),
            proc: proc.clone(),
            user_name: Some("alice".into()),
            host_name: "h".into(),
            attribution: None,
            unix_ns: 0,
        };
        let verdict = score(&Policy::default(), &Subject::from_enriched(&e));
        e.connection(&Decision {
            risk: verdict.risk,
            verdict,
            allow_rule: None,
            beacon: None,
            fold: None,
        })
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

    /// Replay reads a recorded line into the same subject live capture decided on.
    #[test]
    fn live_record_and_its_document_read_the_same() {
        let mut raw = raw(sensor_common::AF_INET, [0; 16], 4444);
        raw.data.daddr[..4].copy_from_slice(&[203, 0, 113, 7]);
        let c = connect(&bytes(&raw));
        let proc = ProcessInfo {
            executable: Some("/usr/bin/nc.openbsd".into()),
            args: Some(vec!["nc".into()]),
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
            host_name: "h".into(),
            attribution: None,
            unix_ns: 1_800_000_000_000_000_123,
        };
        let line = |e: &Enriched| {
            let verdict = score(&Policy::default(), &Subject::from_enriched(e));
            e.connection(&Decision {
                risk: verdict.risk,
                verdict,
                allow_rule: None,
                beacon: None,
                fold: None,
            })
        };
        let obs = Subject::from_enriched(&e);
        assert_eq!(obs, Subject::from_doc(&line(&e)).unwrap());
        // Content and location identity survive a record-and-replay round trip.
        assert_eq!(
            (obs.content_match.as_deref(), obs.location.as_deref()),
            (Some("nc"), Some("tmp"))
        );
        let gone = Enriched {
            proc: ProcessInfo::default(),
            user_name: None,
            ..e
        };
        assert_eq!(
            Subject::from_enriched(&gone),
            Subject::from_doc(&line(&gone)).unwrap()
        );
    }
}

//! The `network-connect` line of a live connection and its `beacon-detected` alert,
//! rendered once from the enriched connection and the engine's decision.

use std::net::IpAddr;

use serde_json::{Map, Value, json};

use crate::{
    detect::decision::{BeaconAlert, Decision},
    enrich::{Enriched, procfs::exe_name, proctable::lineage},
    kernel::records::canonical,
    output::{
        self, Render, clock,
        community_id::{TCP, community_id},
        context::Context,
        doc::{J, Obj},
        redact::{self, MAX_FIELD},
    },
};

/// What is printed of a process's strings: secrets redacted, each string bounded.
pub(crate) struct Printed {
    pub executable: Option<String>,
    pub parent_executable: Option<String>,
    pub args: Option<Vec<String>>,
    pub command_line: Option<String>,
    pub args_count: Option<usize>,
    /// The redaction patterns that fired (`sensor.redacted`).
    pub redacted: Vec<&'static str>,
    /// The fields cut at MAX_FIELD (`sensor.truncated`).
    pub truncated: Vec<&'static str>,
}

impl Printed {
    pub fn of(e: &Enriched) -> Self {
        let p = &e.proc;
        let mut truncated = Vec::new();
        fn mark(truncated: &mut Vec<&'static str>, field: &'static str) {
            if !truncated.contains(&field) {
                truncated.push(field);
            }
        }
        let cut = |truncated: &mut Vec<&'static str>, field: &'static str, s: &mut String| {
            if redact::bound(s, MAX_FIELD) {
                mark(truncated, field);
            }
        };
        let mut executable = p.executable.clone();
        if let Some(x) = executable.as_mut() {
            cut(&mut truncated, "process.executable", x);
        }
        let mut parent_executable = p.parent_executable.clone();
        if let Some(x) = parent_executable.as_mut() {
            cut(&mut truncated, "process.parent.executable", x);
        }
        let mut redacted = Vec::new();
        let mut args = None;
        let mut command_line = None;
        if let Some(argv) = p.args.as_ref() {
            // The kept start of the argv (see `Argv`): at most a few KiB.
            let mut a = argv.to_vec();
            redacted = redact::redact(&mut a);
            if argv.partial_last()
                && let Some(name) = a.last_mut().and_then(redact::redact_cut)
                && !redacted.contains(&name)
            {
                redacted.push(name);
            }
            let mut line = a.join(" ");
            cut(&mut truncated, "process.command_line", &mut line);
            if argv.is_cut() {
                mark(&mut truncated, "process.command_line");
            }
            // The arguments the printed line shows (each bounded); `args_count` says all.
            let mut start = 0;
            let shown = a
                .iter()
                .take_while(|x| {
                    let starts = start;
                    start += x.len() + 1;
                    starts < line.len() || starts == 0
                })
                .count();
            a.truncate(shown);
            if shown < argv.count() {
                mark(&mut truncated, "process.args");
            }
            for arg in a.iter_mut() {
                cut(&mut truncated, "process.args", arg);
            }
            command_line = Some(line);
            args = Some(a);
        }
        Self {
            executable,
            parent_executable,
            args_count: p.args.as_ref().map(|a| a.count()),
            args,
            command_line,
            redacted,
            truncated,
        }
    }
}

/// An address as printed: IPv4-mapped IPv6 (`::ffff:a.b.c.d`) as its IPv4 form, with the
/// original kept for `sensor.*.original_ip`.
fn printed_ip(ip: IpAddr) -> (String, Option<String>) {
    let c = canonical(ip);
    (c.to_string(), (c != ip).then(|| ip.to_string()))
}

/// The connection's own fields, shared by its line and its beacon alert.
fn parts(e: &Enriched, cx: &Context) -> Map<String, Value> {
    let c = &e.conn;
    let p = &e.proc;
    let pr = Printed::of(e);
    let name = p.executable.as_deref().map(exe_name).unwrap_or(&c.comm);
    let (dst, dst_original) = printed_ip(c.dst);
    let (src, src_original) = printed_ip(c.src);
    // The local port is bound after SYN_SENT on the tracepoint path: 0 means unknown.
    let sport = (c.sport != 0).then_some(c.sport);
    let flow_id = community_id(0, canonical(c.src), c.sport, canonical(c.dst), c.dport, TCP);
    let doc = json!({
        "@timestamp": clock::rfc3339(e.unix_ns),
        "process": {
            "pid": c.tgid,
            "entity_id": cx.entity_id(c.tgid, c.start_time_ns),
            "name": name,
            "executable": pr.executable,
            "command_line": pr.command_line,
            "args": pr.args,
            "args_count": pr.args_count,
            "thread": {"id": c.tid, "name": c.comm},
            "parent": {
                "pid": p.ppid,
                "executable": pr.parent_executable,
                "name": p.parent_executable.as_deref().map(exe_name),
                // The kernel's parent (real_parent), whose start time the record carries.
                "entity_id": (c.ppid != 0)
                    .then(|| cx.entity_id(c.ppid, c.parent_start_time_ns))
                    .flatten(),
            },
        },
        "user": {"id": c.uid.to_string(), "name": e.user_name},
        "destination": {"ip": dst, "port": c.dport},
        "source": {"ip": src, "port": sport},
        "network": {
            "transport": "tcp",
            "iana_number": TCP.to_string(),
            "type": if canonical(c.dst).is_ipv4() { "ipv4" } else { "ipv6" },
            "direction": "egress",
            "community_id": flow_id,
        },
        "related": {
            // An unspecified source (not yet bound) relates to nothing.
            "ip": if src == dst || canonical(c.src).is_unspecified() { json!([dst]) } else { json!([src, dst]) },
            "user": e.user_name.as_ref().map(|u| [u]),
        },
        "host": {"name": e.host_name},
        "container": {
            "id": p.container_id,
            "name": p.pod.as_ref().map(|pod| &pod.container),
            "runtime": p.container_runtime,
        },
        "orchestrator": p.pod.as_ref().map(|pod| json!({
            "type": "kubernetes",
            "namespace": pod.namespace,
            "resource": {"type": "pod", "name": pod.name, "id": pod.uid},
        })),
        "sensor": {
            // What allow rules believed of the user name and container id above.
            "container": e.provenance.container.map(|t| json!({"trusted": t.is_trusted(), "reason": t.reason()})),
            "user": e.provenance.user_name.map(|s| json!({"name_source": s.as_str()})),
            "redacted": (!pr.redacted.is_empty()).then_some(&pr.redacted),
            "truncated": (!pr.truncated.is_empty()).then_some(&pr.truncated),
            "destination": {"original_ip": dst_original},
            "source": {"original_ip": src_original},
        },
    });
    match doc {
        Value::Object(m) => m,
        _ => unreachable!("json! of an object literal is an object"),
    }
}

/// The `network-connect` line as [`Render::connection`] and [`Context::stamp`] make it,
/// as a borrowed document written straight to the output: the same bytes, a fraction of
/// the allocations. `tests::direct_line_is_the_value_line` holds the two together.
fn connection_doc<'a>(e: &'a Enriched, d: &'a Decision, cx: &'a Context) -> J<'a> {
    let c = &e.conn;
    let p = &e.proc;
    let alert = d.alert();
    let Printed {
        executable,
        parent_executable,
        args,
        command_line,
        args_count,
        redacted,
        truncated,
    } = Printed::of(e);
    let name = p.executable.as_deref().map(exe_name).unwrap_or(&c.comm);
    let (dst, dst_original) = printed_ip(c.dst);
    let (src, src_original) = printed_ip(c.src);
    let sport = (c.sport != 0).then_some(c.sport);
    let flow_id = community_id(0, canonical(c.src), c.sport, canonical(c.dst), c.dport, TCP);
    let related_ip = if src == dst || canonical(c.src).is_unspecified() {
        vec![J::from(dst.clone())]
    } else {
        vec![J::from(src.clone()), J::from(dst.clone())]
    };
    let mut unknown = Vec::new();
    for (field, known) in [
        ("process.executable", p.executable.is_some()),
        ("process.command_line", p.args.is_some()),
        ("process.parent.pid", p.ppid.is_some()),
        ("process.parent.executable", p.parent_executable.is_some()),
        ("user.name", e.user_name.is_some()),
    ] {
        if !known {
            unknown.push(J::from(field));
        }
    }
    let reasons = d.reasons();

    // Keys in byte order, as the `Value` route prints them (see `Obj`).
    let mut thread = Obj::with_capacity(2);
    thread.put("id", c.tid).put("name", c.comm.as_str());
    let mut parent = Obj::with_capacity(4);
    parent
        .put(
            "entity_id",
            (c.ppid != 0)
                .then(|| cx.entity_id(c.ppid, c.parent_start_time_ns))
                .flatten(),
        )
        .put("executable", parent_executable)
        .put("name", p.parent_executable.as_deref().map(exe_name))
        .put("pid", p.ppid);
    let mut process = Obj::with_capacity(9);
    process
        .put(
            "args",
            args.map(|a| J::Arr(a.into_iter().map(J::from).collect())),
        )
        .put("args_count", args_count)
        .put("command_line", command_line)
        .put("entity_id", cx.entity_id(c.tgid, c.start_time_ns))
        .put("executable", executable)
        .put("name", name)
        .put("parent", parent)
        .put("pid", c.tgid)
        .put("thread", thread);
    let mut user = Obj::with_capacity(2);
    user.put("id", c.uid.to_string())
        .put("name", e.user_name.as_deref());
    let mut destination = Obj::with_capacity(2);
    destination.put("ip", dst).put("port", c.dport);
    let mut source = Obj::with_capacity(2);
    source.put("ip", src).put("port", sport);
    let mut network = Obj::with_capacity(5);
    network
        .put("community_id", flow_id)
        .put("direction", "egress")
        .put("iana_number", TCP.to_string())
        .put("transport", "tcp")
        .put(
            "type",
            if canonical(c.dst).is_ipv4() {
                "ipv4"
            } else {
                "ipv6"
            },
        );
    let mut related = Obj::with_capacity(2);
    related.put("ip", J::Arr(related_ip)).put(
        "user",
        e.user_name.as_deref().map(|u| J::Arr(vec![J::from(u)])),
    );
    let mut host = Obj::with_capacity(5);
    let mut named = false;
    if cx.stamps_host() {
        for (k, v) in cx.host_json() {
            if !named && k.as_str() >= "name" {
                host.put("name", e.host_name.as_str());
                named = true;
            }
            if k != "name" {
                host.put(k, J::Raw(v));
            }
        }
    }
    if !named {
        host.put("name", e.host_name.as_str());
    }
    let mut container = Obj::with_capacity(3);
    container
        .put("id", p.container_id.as_deref())
        .put("name", p.pod.as_ref().map(|pod| pod.container.as_str()))
        .put("runtime", p.container_runtime);
    let orchestrator = p.pod.as_ref().map(|pod| {
        J::val(json!({
            "type": "kubernetes",
            "namespace": pod.namespace,
            "resource": {"type": "pod", "name": pod.name, "id": pod.uid},
        }))
    });

    // A folded line spans its connections: event.start is the first repeat, event.end
    // (like @timestamp) the last.
    let span = d.fold.and_then(|f| f.first_ns);
    let mut event = Obj::with_capacity(14);
    event
        .put("action", "network-connect")
        .put("category", J::Arr(vec![J::from("network")]))
        .put("dataset", "sensor.network")
        .put("end", span.map(|_| clock::rfc3339(e.unix_ns)))
        .put("id", cx.event_id())
        .put("kind", if alert { "alert" } else { "event" })
        .put("module", "sensor")
        .put("outcome", "unknown")
        .put("reason", (!reasons.is_empty()).then(|| reasons.join("; ")))
        .put("risk_score", d.risk)
        .put("severity", d.risk)
        .put("start", span.map(clock::rfc3339))
        .put(
            "type",
            J::Arr(vec![J::from("connection"), J::from("start")]),
        );
    let mut group = Obj::with_capacity(1);
    group.put("id", c.gid.to_string());

    let mut sprocess = Obj::with_capacity(11);
    sprocess
        .put(
            "ancestors",
            (!p.ancestors.is_empty())
                .then(|| J::Arr(p.ancestors.iter().map(|a| J::from(a.as_str())).collect())),
        )
        .put("attribution", e.attribution.unwrap_or("none"))
        .put("content_match", p.content_match.as_deref())
        .put(
            "fileless",
            p.location.map(|l| matches!(l, "memfd" | "fd" | "deleted")),
        )
        .put("identity", p.identity)
        .put("image_mismatch", p.image_mismatch.then_some(true))
        .put("lineage", lineage(p))
        .put("loader", p.loader.as_deref())
        .put("loader_check", p.loader_check)
        .put("loader_claim", p.loader_claim.as_deref())
        .put("location", p.location)
        .put("unmanaged", p.unmanaged);
    let v = &d.verdict;
    let mut matched = Obj::with_capacity(6);
    matched
        .put("excluded_network", v.excluded_by.map(|n| n.to_string()))
        .put(
            "high_risk_executable",
            v.high_risk.as_ref().map(|h| h.entry.as_str()),
        )
        .put(
            "high_risk_matched_by",
            v.high_risk.as_ref().map(|h| J::val(json!(h.matched_by))),
        )
        .put("known_c2_port", v.known_c2_port)
        .put("non_standard_port", v.non_standard_port)
        .put("unmanaged_executable", v.unmanaged.then_some(true));
    let names = |v: Vec<&'static str>| {
        (!v.is_empty()).then(|| J::Arr(v.into_iter().map(J::from).collect()))
    };
    let mut sdst = Obj::with_capacity(1);
    sdst.put("original_ip", dst_original);
    let mut ssrc = Obj::with_capacity(1);
    ssrc.put("original_ip", src_original);
    let scontainer = e.provenance.container.map(|t| {
        let mut o = Obj::with_capacity(2);
        o.put("reason", t.reason()).put("trusted", t.is_trusted());
        o
    });
    let suser = e.provenance.user_name.map(|s| {
        let mut o = Obj::with_capacity(1);
        o.put("name_source", s.as_str());
        o
    });
    let mut sensor = Obj::with_capacity(16);
    sensor
        .put("allow_rule", d.allow_rule.as_deref())
        .put(
            "beacon",
            d.beacon.as_ref().map(|b| J::val(output::beacon_fields(b))),
        )
        .put("cgroup_id", c.cgroup_id)
        .put("container", scontainer)
        .put("destination", sdst)
        .put("folded_count", d.fold.map(|f| f.count))
        .put("matched", matched)
        .put("probe", c.probe.map(|p| p.hook()))
        .put("process", sprocess)
        .put("redacted", names(redacted))
        .put("severity", d.severity())
        .put("source", ssrc)
        .put("truncated", names(truncated))
        .put("unknown_fields", J::Arr(unknown))
        .put("user", suser);

    let mut doc = Obj::with_capacity(17);
    doc.put("@timestamp", clock::rfc3339(e.unix_ns))
        .put("agent", J::Raw(cx.agent_json()))
        .put("container", container)
        .put("destination", destination)
        .put("ecs", J::Raw(cx.ecs_json()))
        .put("event", event)
        .put("group", group)
        .put("host", host)
        .put("network", network)
        .put("orchestrator", orchestrator)
        .put("process", process)
        .put("related", related)
        .put("rule", alert.then(|| J::Raw(output::connect_rule_json())))
        .put("sensor", sensor)
        .put("source", source)
        .put("threat", alert.then(|| J::Raw(output::threat_json())))
        .put("user", user);
    J::Obj(doc)
}

impl Render for Enriched {
    fn connection_doc<'a>(&'a self, d: &'a Decision, cx: &'a Context) -> Option<J<'a>> {
        Some(connection_doc(self, d, cx))
    }

    fn connection(&self, d: &Decision, cx: &Context) -> Value {
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
        let mut doc = parts(self, cx);
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
        let own = doc.remove("sensor").unwrap_or(Value::Null);
        let mut sensor = json!({
            "severity": d.severity(),
            "process": {
                "attribution": self.attribution.unwrap_or("none"),
                "lineage": lineage(p),
                "ancestors": if p.ancestors.is_empty() { Value::Null } else { json!(p.ancestors) },
                "content_match": p.content_match,
                "location": p.location,
                "fileless": p.location.map(|l| matches!(l, "memfd" | "fd" | "deleted")),
                "identity": p.identity,
                "loader": p.loader,
                "loader_check": p.loader_check,
                "loader_claim": p.loader_claim,
                "unmanaged": p.unmanaged,
                "image_mismatch": p.image_mismatch.then_some(true),
            },
            "probe": c.probe.map(|p| p.hook()),
            "cgroup_id": c.cgroup_id,
            "matched": output::matched(&d.verdict),
            "allow_rule": d.allow_rule,
            "beacon": d.beacon.as_ref().map(output::beacon_fields),
            "folded_count": d.fold.map(|f| f.count),
            "unknown_fields": unknown,
        });
        if let (Some(s), Value::Object(own)) = (sensor.as_object_mut(), own) {
            s.extend(own);
        }
        doc.insert("sensor".into(), sensor);
        let mut doc = Value::Object(doc);
        output::prune(&mut doc);
        doc
    }

    fn beacon(&self, b: &BeaconAlert<Self>, cx: &Context) -> Value {
        output::beacon_event(parts(self, cx), &b.beacon, b.risk)
    }

    fn sysmon(&self, d: &Decision, cx: &Context) -> Option<Value> {
        Some(output::sysmon::network_connect(self, d, cx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::argv::Argv;

    fn argv(v: Vec<String>) -> Argv {
        v.into_iter().collect()
    }
    use crate::{
        detect::{decision::Decided, policy::Policy, score::score, subject::Subject},
        enrich::{
            Provenance,
            container::{Trust, untrusted},
            procfs::ProcessInfo,
            users::NameSource,
        },
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
            provenance: Default::default(),
            host_name: "h".into(),
            attribution: None,
            unix_ns: 0,
        };
        let verdict = score(&Policy::default(), &Subject::from_enriched(&e));
        e.connection(
            &Decision {
                risk: verdict.risk,
                verdict,
                allow_rule: None,
                beacon: None,
                fold: None,
            },
            &Context::named("h"),
        )
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
        assert_eq!(j["related"]["ip"], json!(["203.0.113.7"]));
        assert_eq!(j["related"]["user"], json!(["alice"]));
        assert_eq!(j["rule"]["reference"], crate::output::TECHNIQUE_URL);
        assert_eq!(
            j["threat"]["technique"]["reference"][0],
            crate::output::TECHNIQUE_URL
        );
        // The test record's source port is known (40000): the flow has a Community ID.
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
        };
        let verdict = score(&Policy::default(), &Subject::from_enriched(&e));
        let j = e.connection(
            &Decision {
                risk: verdict.risk,
                verdict,
                allow_rule: None,
                beacon: None,
                fold: None,
            },
            &Context::named("h"),
        );
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
    fn live_record_and_its_document_read_the_same() {
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
        };
        let line = |e: &Enriched| {
            let verdict = score(&Policy::default(), &Subject::from_enriched(e));
            e.connection(
                &Decision {
                    risk: verdict.risk,
                    verdict,
                    allow_rule: None,
                    beacon: None,
                    fold: None,
                },
                &Context::named("h"),
            )
        };
        let obs = Subject::from_enriched(&e);
        assert_eq!(obs, Subject::from_doc(&line(&e)).unwrap());
        assert!(obs.container_trusted && obs.user_name_source == Some(NameSource::Host));
        // What was not trusted live is not trusted replayed.
        let forged = Enriched {
            provenance: Provenance {
                user_name: Some(NameSource::Container),
                container: Some(Trust::Untrusted(untrusted::DELEGATED)),
            },
            ..e.clone()
        };
        let doc = line(&forged);
        assert_eq!(doc["sensor"]["container"]["reason"], "delegated-cgroup");
        let replayed = Subject::from_doc(&doc).unwrap();
        assert_eq!(Subject::from_enriched(&forged), replayed);
        assert!(!replayed.container_trusted);
        assert_eq!(replayed.user_name_source, Some(NameSource::Container));
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
            Subject::from_enriched(&gone),
            Subject::from_doc(&line(&gone)).unwrap()
        );
    }

    /// The line written straight from its parts is byte for byte the rendered `Value`'s
    /// (but for the event id, new per line), for every shape a live connection line takes.
    #[test]
    fn direct_line_is_the_value_line() {
        use crate::{
            detect::{beacon::Beacon, beacon::Stats, decision::Line, fold::FoldState},
            enrich::{host::HostInfo, host::OsInfo, kubelet::Pod},
            output::{Format, render, write},
        };
        let full = Context::new(
            HostInfo {
                hostname: "node-1".into(),
                id: Some("0123456789abcdef0123456789abcdef".into()),
                os: OsInfo {
                    name: Some("Debian GNU/Linux".into()),
                    kernel: Some("6.18.0".into()),
                    ..Default::default()
                },
            },
            Format::Ecs,
        );
        let named = Context::named("h");
        let mut v4 = raw(sensor_common::AF_INET, [0; 16], 4444);
        v4.data.daddr[..4].copy_from_slice(&[203, 0, 113, 7]);
        v4.data.saddr[..4].copy_from_slice(&[203, 0, 113, 1]);
        let mut mapped = raw(sensor_common::AF_INET6, [0; 16], 8088);
        mapped.data.daddr[10..12].copy_from_slice(&[0xff, 0xff]);
        mapped.data.daddr[12..].copy_from_slice(&[198, 51, 100, 7]);
        mapped.data.sport = 0;
        let mut v6 = raw(sensor_common::AF_INET6, [0; 16], 443);
        v6.data.daddr[..2].copy_from_slice(&[0x20, 0x01]);
        let rich = ProcessInfo {
            executable: Some("/tmp/x/python3.11 (deleted)".into()),
            args: Some(argv(vec![
                "python3".into(),
                "-u".into(),
                "alice:hunter2".into(),
                "password=x \"q\"\n".into(),
                "A".repeat(5000),
            ])),
            ppid: Some(1),
            parent_executable: Some("/usr/bin/bash".into()),
            container_id: Some("abc".into()),
            content_match: Some("python3".into()),
            location: Some("deleted"),
            ancestors: vec!["/usr/bin/bash".into(), "?".into()],
            pod: Some(Pod {
                namespace: "ns".into(),
                name: "pod".into(),
                uid: None,
                container: "c".into(),
            }),
            container_runtime: Some("containerd"),
            loader: Some("/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2".into()),
            loader_check: Some("maps"),
            loader_claim: Some("/home/u/python3".into()),
            unmanaged: Some(true),
            identity: Some("pending"),
            image_mismatch: true,
        };
        let beacon = Beacon {
            stats: Stats {
                interval_s: 60.0004,
                jitter_s: 0.25,
                dispersion: 0.01,
                skew: -0.5,
                gaps: 9,
            },
            connections: 10,
            first_seen_ns: 1,
            last_seen_ns: 600_000_000_001,
            new: true,
        };
        let mut cases = 0;
        for ev in [&v4, &mapped, &v6] {
            for proc in [ProcessInfo::default(), rich.clone()] {
                for user in [None, Some("alice".to_string())] {
                    let e = Enriched {
                        conn: connect(&bytes(ev)),
                        proc: proc.clone(),
                        provenance: Provenance {
                            user_name: user.as_ref().map(|_| match ev.data.dport {
                                4444 => NameSource::Host,
                                _ => NameSource::Container,
                            }),
                            container: proc.container_id.as_ref().map(|_| match ev.data.dport {
                                4444 => Trust::Trusted,
                                _ => Trust::Untrusted(untrusted::LAYOUT),
                            }),
                        },
                        user_name: user,
                        host_name: "h".into(),
                        attribution: Some("kernel-exec"),
                        unix_ns: 1_800_000_000_123_456_789,
                    };
                    let verdict = score(&Policy::default(), &Subject::from_enriched(&e));
                    let base = Decision {
                        risk: verdict.risk,
                        verdict,
                        allow_rule: None,
                        beacon: None,
                        fold: None,
                    };
                    let decisions = [
                        base.clone(),
                        Decision {
                            risk: 0,
                            allow_rule: Some("ok".into()),
                            ..base.clone()
                        },
                        Decision {
                            risk: 3,
                            beacon: Some(beacon.clone()),
                            fold: Some(FoldState {
                                count: 7,
                                first_ns: Some(5),
                            }),
                            ..base.clone()
                        },
                    ];
                    for d in decisions {
                        for cx in [&full, &named] {
                            let line = Line::Connection(Box::new(Decided {
                                conn: e.clone(),
                                ts_ns: e.unix_ns,
                                decision: d.clone(),
                            }));
                            assert!(connection_doc(&e, &d, cx).presorted(), "keys in order");
                            let mut direct = Vec::new();
                            write(&line, cx, &mut direct).unwrap();
                            let via_value = serde_json::to_string(&render(&line, cx)).unwrap();
                            let direct = String::from_utf8(direct).unwrap();
                            let id = |t: &str| {
                                serde_json::from_str::<Value>(t).unwrap()["event"]["id"]
                                    .as_str()
                                    .unwrap()
                                    .to_string()
                            };
                            assert_eq!(
                                direct.replace(&id(&direct), "ID"),
                                via_value.replace(&id(&via_value), "ID")
                            );
                            cases += 1;
                        }
                    }
                }
            }
        }
        assert_eq!(cases, 72);
    }
}

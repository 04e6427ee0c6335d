//! The connection line (`network-connect`, `network-listen`, `network-accept`, UDP
//! connects), built once per (enriched connection, decision, flow kind). The flow kind
//! sets the two ends, the transport and its IANA number (and so the Community ID), the
//! direction and the rule, in one table ([`Shape`]); replay reads the ends back through
//! the same table.

use std::{borrow::Cow, net::IpAddr, sync::LazyLock};

use crate::{
    detect::{
        beacon::{Beacon, round_ms},
        decision::Decision,
        score::{MatchedBy, Verdict},
        severity::Severity,
    },
    enrich::{Enriched, procfs::exe_name},
    kernel::{
        records::{Flow, canonical},
        sockets::UDP_HOOK,
    },
    output::{
        RULE_ID, RULE_NAME, Render, TACTIC_URL, TECHNIQUE_URL, clock,
        community_id::community_id,
        context::Context,
        ecs::{
            Action, BeaconStats, ConnectionLine, ConnectionSensor, Container, ContainerTrust,
            Endpoint, Event, Extra, Group, Kind, Matched, Network, Orchestrator, Original, Parent,
            Process, Related, Resource, Rule, SCHEMA_VERSION, SensorProcess, ServiceAway,
            SysmonLine, Tactic, Thread, Threat, User, UserSource,
        },
        flow::{NETWORK, Shape, Side, UDP},
        sysmon,
    },
};

pub const LISTEN_RULE_NAME: &str = "Listener on a non-standard port (bind shell or moved service)";
pub const LISTEN_RULE_ID: &str = "t1571-listen";
pub const INBOUND_RULE_NAME: &str = "Inbound connection to a flagged listener";
pub const INBOUND_RULE_ID: &str = "t1571-inbound";

/// An end as printed: IPv4-mapped IPv6 in its IPv4 form (the kernel's form kept for
/// `sensor.*.original_ip`), port 0 (not bound yet) left out, and no end at all for the
/// unspecified address without a port (a UDP datagram's source before routing).
fn endpoint(ip: IpAddr, port: u16) -> Option<(Endpoint, Option<Original>)> {
    let c = canonical(ip);
    if c.is_unspecified() && port == 0 {
        return None;
    }
    let original = (c != ip).then_some(Original {
        original_ip: Some(ip),
    });
    let end = Endpoint {
        ip: Some(c),
        port: (port != 0).then_some(port),
        extra: Extra::new(),
    };
    Some((end, original))
}

/// `Some(v)` unless `v` is all absent (an object with nothing in it is left out).
fn some<T: Default + PartialEq>(v: T) -> Option<T> {
    (v != T::default()).then_some(v)
}

fn b(s: &str) -> Cow<'_, str> {
    Cow::Borrowed(s)
}

/// The connection's own fields: everything but what the decision sets ([`decide`]).
pub fn parts<'a>(e: &'a Enriched, cx: &'a Context) -> ConnectionLine<'a> {
    let c = &e.conn;
    let p = &e.proc;
    let shape = Shape::of(c.flow);
    let pr = cx.printed(e);
    let mut ends: [Option<(Endpoint, Option<Original>)>; 2] = [None, None];
    for (side, ip, port) in [(shape.local, c.src, c.sport), (shape.peer, c.dst, c.dport)] {
        match side {
            Side::Source => ends[0] = endpoint(ip, port),
            Side::Destination => ends[1] = endpoint(ip, port),
            Side::Absent => {}
        }
    }
    let [source, destination] = ends;
    let (src, dst) = (canonical(c.src), canonical(c.dst));
    // A hash over an address not known yet (unspecified) would correlate with nothing.
    let flow_id = (!src.is_unspecified() && !dst.is_unspecified())
        .then(|| community_id(0, src, c.sport, dst, c.dport, shape.iana_number))
        .flatten();
    let family = if shape.peer == Side::Absent { src } else { dst };
    let mut related_ip = Vec::with_capacity(2);
    for end in [&source, &destination].into_iter().flatten() {
        if let Some(ip) = end
            .0
            .ip
            .filter(|ip| !ip.is_unspecified() && !related_ip.contains(ip))
        {
            related_ip.push(ip);
        }
    }
    let unknown = [
        ("process.executable", p.executable.is_some()),
        ("process.command_line", p.args.is_some()),
        ("process.parent.pid", p.ppid.is_some()),
        ("process.parent.executable", p.parent_executable.is_some()),
        ("user.name", e.user_name.is_some()),
    ]
    .into_iter()
    .filter(|(_, known)| !known)
    .map(|(f, _)| b(f))
    .collect();
    let names = |v: Vec<&'static str>| (!v.is_empty()).then(|| v.into_iter().map(b).collect());
    let mut event = Event::new(Kind::Event, Action::of_flow(c.flow));
    event.category = Cow::Borrowed(NETWORK);
    event.dataset = Some(b("sensor.network"));
    event.outcome = Some(b("unknown"));
    event.types = Cow::Borrowed(shape.types);
    let listener = matches!(c.flow, Flow::Listen | Flow::Inbound);
    let probe = match c.flow {
        Flow::Udp => Some(UDP_HOOK),
        _ => c.probe.map(|p| p.hook()),
    };
    let sensor = ConnectionSensor {
        cgroup_id: Some(c.cgroup_id),
        container: e.provenance.container.map(|t| ContainerTrust {
            reason: t.reason().map(b),
            trusted: Some(t.is_trusted()),
        }),
        destination: destination.as_ref().and_then(|d| d.1.clone()),
        // The listener's network namespace (inode, as /proc/PID/ns/net): the same port
        // in two namespaces is two listeners.
        netns: (listener && c.netns != 0).then_some(c.netns),
        probe: probe.map(b),
        process: Some(SensorProcess {
            ancestors: (!p.ancestors.is_empty())
                .then(|| p.ancestors.iter().map(|a| b(a)).collect()),
            attribution: Some(b(e.attribution.unwrap_or("none"))),
            content_match: p.content_match.as_deref().map(b),
            fileless: p.location.map(|l| matches!(l, "memfd" | "fd" | "deleted")),
            identity: p.identity.map(b),
            image_mismatch: p.image_mismatch.then_some(true),
            lineage: pr.lineage.clone().map(Cow::Owned),
            loader: p.loader.as_deref().map(b),
            loader_check: p.loader_check.map(b),
            loader_claim: p.loader_claim.as_deref().map(b),
            location: p.location.map(b),
            unmanaged: p.unmanaged,
            extra: Extra::new(),
        }),
        redacted: names(pr.redacted.clone()),
        source: source.as_ref().and_then(|s| s.1.clone()),
        truncated: names(pr.truncated.clone()),
        unknown_fields: Some(unknown),
        user: e.provenance.user_name.map(|s| UserSource {
            name_source: Some(b(s.as_str())),
        }),
        ..Default::default()
    };
    let mut line = ConnectionLine::new(Cow::Owned(clock::rfc3339(e.unix_ns)), event, sensor);
    line.container = some(Container {
        id: p.container_id.as_deref().map(b),
        name: p.pod.as_ref().map(|pod| b(&pod.container)),
        runtime: p.container_runtime.map(b),
    });
    line.orchestrator = p.pod.as_ref().map(|pod| Orchestrator {
        namespace: Some(b(&pod.namespace)),
        resource: Some(Resource {
            id: pod.uid.as_deref().map(b),
            name: Some(b(&pod.name)),
            kind: Some(b("pod")),
        }),
        kind: Some(b("kubernetes")),
    });
    line.destination = destination.map(|d| d.0);
    line.source = source.map(|s| s.0);
    line.group = Some(Group {
        id: Some(Cow::Owned(c.gid.to_string())),
    });
    line.host = Some(crate::output::ecs::Host {
        name: Some(b(&e.host_name)),
        ..Default::default()
    });
    line.network = Some(Network {
        community_id: flow_id.map(Cow::Owned),
        direction: shape.direction.map(b),
        iana_number: Some(b(iana_str(shape.iana_number))),
        protocol: None,
        transport: Some(b(shape.transport)),
        kind: Some(b(if family.is_ipv4() { "ipv4" } else { "ipv6" })),
    });
    line.process = Some(Process {
        args: pr
            .args
            .as_ref()
            .map(|a| a.iter().map(|x| Cow::Owned(x.clone())).collect()),
        args_count: pr.args_count,
        command_line: pr.command_line.clone().map(Cow::Owned),
        entity_id: cx.entity_id(c.tgid, c.start_time_ns).map(Cow::Owned),
        executable: pr.executable.clone().map(Cow::Owned),
        name: Some(b(p.executable.as_deref().map(exe_name).unwrap_or(&c.comm))),
        parent: some(Parent {
            // The kernel's parent (real_parent), whose start time the record carries.
            entity_id: (c.ppid != 0)
                .then(|| cx.entity_id(c.ppid, c.parent_start_time_ns))
                .flatten()
                .map(Cow::Owned),
            executable: pr.parent_executable.clone().map(Cow::Owned),
            name: p.parent_executable.as_deref().map(exe_name).map(b),
            pid: p.ppid,
        }),
        pid: Some(c.tgid),
        thread: Some(Thread {
            id: Some(c.tid),
            name: Some(b(&c.comm)),
        }),
        extra: Extra::new(),
    });
    line.related = some(Related {
        ip: related_ip,
        user: e.user_name.as_deref().map(|u| vec![b(u)]),
    });
    line.user = Some(User {
        id: Some(Cow::Owned(c.uid.to_string())),
        name: e.user_name.as_deref().map(b),
    });
    if let Some(facts) = e.protocol.as_deref() {
        protocol::protocol_fields(&mut line, facts);
    }
    line
}

fn iana_str(n: u8) -> &'static str {
    match n {
        UDP => "17",
        _ => "6",
    }
}

/// Sets what the decision says on a connection line, live or recorded: kind, risk,
/// severity, reason, span, rule, threat and the `sensor.*` verdict.
pub fn decide<'a>(line: &mut ConnectionLine<'a>, flow: Flow, d: &'a Decision) {
    let alert = d.alert();
    let reasons = d.reasons();
    let ev = &mut line.event;
    ev.kind = if alert { Kind::Alert } else { Kind::Event };
    ev.risk_score = Some(d.risk);
    ev.severity = Some(d.risk);
    ev.reason = (!reasons.is_empty()).then(|| Cow::Owned(reasons.join("; ")));
    // A folded line spans its connections: event.start is the first repeat, event.end
    // (like @timestamp) the last.
    if let Some(first) = d.fold.and_then(|f| f.first_ns) {
        ev.start = Some(Cow::Owned(clock::rfc3339(first)));
        ev.end = Some(line.timestamp.clone());
    }
    line.rule = alert.then(|| rule(flow));
    line.threat = alert.then(|| Cow::Borrowed(threat()));
    line.sensor.schema_version = b(SCHEMA_VERSION);
    let s = &mut line.sensor.fields;
    s.severity = Severity::of(d.risk);
    s.matched = Some(matched(&d.verdict, flow));
    s.allow_rule = d.allow_rule.as_deref().map(b);
    s.beacon = d.beacon.as_ref().map(beacon_stats);
    s.folded_count = d.fold.map(|f| f.count);
}

/// The rule a flow's alert carries.
fn rule(flow: Flow) -> Rule<'static> {
    let (id, name) = match flow {
        Flow::Connect | Flow::Udp => (RULE_ID, RULE_NAME),
        Flow::Listen => (LISTEN_RULE_ID, LISTEN_RULE_NAME),
        Flow::Inbound => (INBOUND_RULE_ID, INBOUND_RULE_NAME),
    };
    Rule {
        id: Some(b(id)),
        name: Some(b(name)),
        reference: Some(b(TECHNIQUE_URL)),
    }
}

/// MITRE ATT&CK T1571 under TA0011, as every alert carries it.
pub fn threat() -> &'static Threat<'static> {
    static THREAT: LazyLock<Threat<'static>> = LazyLock::new(|| {
        let one = |s: &'static str| Cow::Owned(vec![b(s)]);
        Threat {
            framework: Some(b("MITRE ATT&CK")),
            tactic: Some(Tactic {
                id: one("TA0011"),
                name: one("Command and Control"),
                reference: one(TACTIC_URL),
            }),
            technique: Some(Tactic {
                id: one("T1571"),
                name: one("Non-Standard Port"),
                reference: one(TECHNIQUE_URL),
            }),
        }
    });
    &THREAT
}

/// Which lists matched (`sensor.matched`); listens and inbound connections also say
/// whether a service was away from its ports and whether the listener is loopback-only.
fn matched(v: &Verdict, flow: Flow) -> Matched<'_> {
    let listener = matches!(flow, Flow::Listen | Flow::Inbound);
    Matched {
        excluded_network: v.excluded_by.map(|n| Cow::Owned(n.to_string())),
        high_risk_executable: v.high_risk.as_ref().map(|h| b(&h.entry)),
        high_risk_matched_by: v.high_risk.as_ref().map(|h| b(matched_by(h.matched_by))),
        known_c2_port: Some(v.known_c2_port),
        loopback_only: listener.then_some(v.loopback_only),
        non_standard_port: Some(v.non_standard_port),
        protocol: v
            .protocol
            .as_ref()
            .filter(|p| !p.reasons.is_empty())
            .map(|p| p.reasons.iter().map(|r| b(r.code())).collect()),
        service_away: v
            .service_away
            .as_ref()
            .filter(|_| listener)
            .map(|s| ServiceAway {
                service: b(&s.service),
                standard: s.standard.clone(),
            }),
        unmanaged_executable: v.unmanaged.then_some(true),
    }
}

fn matched_by(m: MatchedBy) -> &'static str {
    match m {
        MatchedBy::Executable => "executable",
        MatchedBy::Content => "content",
        MatchedBy::Location => "location",
        MatchedBy::Comm => "comm",
    }
}

/// A beacon's statistics (`sensor.beacon`).
pub fn beacon_stats(b: &Beacon) -> BeaconStats<'static> {
    BeaconStats {
        connections: b.connections,
        dispersion: round_ms(b.stats.dispersion),
        first_seen: Cow::Owned(clock::rfc3339(b.first_seen_ns)),
        gaps_analysed: b.stats.gaps,
        interval_seconds: round_ms(b.stats.interval_s),
        jitter_seconds: round_ms(b.stats.jitter_s),
        last_seen: Cow::Owned(clock::rfc3339(b.last_seen_ns)),
        skew: round_ms(b.stats.skew),
    }
}

impl Render for Enriched {
    fn flow(&self) -> Flow {
        self.conn.flow
    }

    fn parts<'a>(&'a self, cx: &'a Context) -> ConnectionLine<'a> {
        parts(self, cx)
    }

    fn sysmon<'a>(&'a self, d: &'a Decision, cx: &'a Context) -> Option<SysmonLine<'a>> {
        sysmon::network_connect(self, d, cx)
    }
}

pub mod protocol;

#[cfg(test)]
mod flows;
#[cfg(test)]
mod tests;

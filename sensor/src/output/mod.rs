//! ECS JSON lines. One object per line whatever bytes the process put in its path or
//! command line: serde_json escapes control characters and the strings are already valid
//! UTF-8 (lossy conversion happens in `enrich::procfs`), so a line can never be split or
//! broken. Unknown values are left out rather than faked, and listed in
//! `sensor.unknown_fields`. Every line is rendered once, from detection's typed decision.

pub mod clock;
pub mod community_id;
mod connection;
pub mod context;
pub mod doc;
pub mod ecs;
pub mod journald;
pub mod listen;
pub mod metrics;
pub mod queue;
mod recorded;
pub mod redact;
mod rollup;
pub mod sink;
mod sysmon;

pub use context::{Context, Format};

use std::{io::Write, sync::LazyLock};

use anyhow::{Context as _, Result};
use serde_json::{Map, Value, json};

use crate::{
    detect::{
        beacon::{Beacon, round_ms},
        decision::{BeaconAlert, Decision, EngineSummary, Line},
        score::{Verdict, severity},
    },
    kernel::records::Flow,
};

pub const RULE_NAME: &str = "Command and control over a non-standard port";
pub const RULE_ID: &str = "t1571-non-standard-port";
pub const BEACON_RULE_NAME: &str = "Regular-interval beaconing on a non-standard port";
pub const BEACON_RULE_ID: &str = "t1571-beacon";
pub const TECHNIQUE_URL: &str = "https://attack.mitre.org/techniques/T1571/";
pub const TACTIC_URL: &str = "https://attack.mitre.org/tactics/TA0011/";

/// A connection as output knows how to render it: live (the enriched connection) or
/// replayed (the recorded line, whose scoring fields are rewritten).
pub trait Render: Sized {
    /// The `network-connect` line for this connection and its decision.
    fn connection(&self, d: &Decision, cx: &Context) -> Value;
    /// The `beacon-detected` alert this connection raised.
    fn beacon(&self, b: &BeaconAlert<Self>, cx: &Context) -> Value;
    /// The connection as a Sysmon Event ID 3 record, where the source allows one.
    fn sysmon(&self, _d: &Decision, _cx: &Context) -> Option<Value> {
        None
    }
    /// The whole stamped `network-connect` line as a borrowed document, where the source
    /// has one: [`write`] prints it without building a `Value`.
    fn connection_doc<'a>(&'a self, _d: &'a Decision, _cx: &'a Context) -> Option<doc::J<'a>> {
        None
    }
}

/// One engine line, in the context's format: a connection as Sysmon Event ID 3 under
/// `--format sysmon-json`; everything else (and every line by default) as ECS JSON,
/// stamped with `ecs`, `agent`, `host` and a unique `event.id`.
pub fn render<C: listen::Flowed>(line: &Line<C>, cx: &Context) -> Value {
    if let (Format::SysmonJson, Line::Connection(d)) = (cx.format, line)
        && let Some(v) = d.conn.sysmon(&d.decision, cx)
    {
        return v;
    }
    let mut doc = match line {
        Line::Connection(d) if d.conn.flow() != Flow::Connect => d.conn.flow_line(&d.decision, cx),
        Line::Connection(d) => d.conn.connection(&d.decision, cx),
        Line::Beacon(b) => b.conn.beacon(b, cx),
        Line::Rollup(s) => rollup::render(s),
        Line::Summary(s) => engine_summary(s, &cx.host.hostname),
    };
    cx.stamp(&mut doc);
    doc
}

/// One engine line as [`render`] makes it, serialised into `out` (no newline). A live
/// connection line in ECS is written straight from its typed parts; the bytes are the
/// same as `render` and `serde_json` would write.
pub fn write<C: listen::Flowed>(line: &Line<C>, cx: &Context, out: &mut Vec<u8>) -> Result<()> {
    if let (Format::Ecs, Line::Connection(d)) = (cx.format, line)
        && d.conn.flow() == Flow::Connect
        && let Some(doc) = d.conn.connection_doc(&d.decision, cx)
    {
        doc.write(out);
        return Ok(());
    }
    serde_json::to_writer(&mut *out, &render(line, cx)).context("serialising a line")
}

/// The connection rule, on every connection alert.
fn connect_rule() -> Value {
    json!({"name": RULE_NAME, "id": RULE_ID, "reference": TECHNIQUE_URL})
}

/// The same, serialised once.
fn connect_rule_json() -> &'static str {
    static RULE: LazyLock<String> = LazyLock::new(|| connect_rule().to_string());
    &RULE
}

/// MITRE ATT&CK T1571 under TA0011, as every alert carries it.
pub fn threat() -> Value {
    json!({
        "framework": "MITRE ATT&CK",
        "tactic": {"id": ["TA0011"], "name": ["Command and Control"], "reference": [TACTIC_URL]},
        "technique": {"id": ["T1571"], "name": ["Non-Standard Port"], "reference": [TECHNIQUE_URL]},
    })
}

/// The same, serialised once.
fn threat_json() -> &'static str {
    static THREAT: LazyLock<String> = LazyLock::new(|| threat().to_string());
    &THREAT
}

/// Which lists matched (`sensor.matched`).
fn matched(v: &Verdict) -> Value {
    json!({
        "high_risk_executable": v.high_risk.as_ref().map(|h| &h.entry),
        "high_risk_matched_by": v.high_risk.as_ref().map(|h| h.matched_by),
        "known_c2_port": v.known_c2_port,
        "non_standard_port": v.non_standard_port,
        "excluded_network": v.excluded_by.map(|n| n.to_string()),
        "unmanaged_executable": v.unmanaged.then_some(true),
    })
}

/// A beacon's statistics (`sensor.beacon`).
fn beacon_fields(b: &Beacon) -> Value {
    json!({
        "interval_seconds": round_ms(b.stats.interval_s),
        "jitter_seconds": round_ms(b.stats.jitter_s),
        "dispersion": round_ms(b.stats.dispersion),
        "skew": round_ms(b.stats.skew),
        "gaps_analysed": b.stats.gaps,
        "connections": b.connections,
        "first_seen": clock::rfc3339(b.first_seen_ns),
        "last_seen": clock::rfc3339(b.last_seen_ns),
    })
}

/// The `beacon-detected` alert: who and where (`conn`: the connection's @timestamp, host,
/// process, user, destination, network and container), and the interval statistics.
fn beacon_event(conn: Map<String, Value>, b: &Beacon, risk: u8) -> Value {
    let pick = |k: &str| conn.get(k).cloned().unwrap_or(Value::Null);
    let mut doc = json!({
        "@timestamp": pick("@timestamp"),
        "event": {
            "kind": "alert",
            "category": ["network"],
            "type": ["connection", "info"],
            "action": "beacon-detected",
            "module": "sensor",
            "dataset": "sensor.beacon",
            "risk_score": risk,
            "severity": risk,
            "start": clock::rfc3339(b.first_seen_ns),
            "end": clock::rfc3339(b.last_seen_ns),
            "reason": format!(
                "{} connections at a regular {:.1} s interval (jitter {:.2} s)",
                b.connections, b.stats.interval_s, b.stats.jitter_s
            ),
        },
        "rule": {"name": BEACON_RULE_NAME, "id": BEACON_RULE_ID, "reference": TECHNIQUE_URL},
        "threat": threat(),
        "host": pick("host"),
        "process": pick("process"),
        "user": pick("user"),
        "destination": pick("destination"),
        "network": pick("network"),
        "container": pick("container"),
        "related": pick("related"),
        "sensor": {"severity": severity(risk), "beacon": beacon_fields(b)},
    });
    // The connection's own sensor fields (redacted, truncated, original addresses).
    if let (Some(Value::Object(own)), Some(s)) = (conn.get("sensor"), doc["sensor"].as_object_mut())
    {
        for k in ["redacted", "truncated", "destination", "source"] {
            if let Some(v) = own.get(k) {
                s.insert(k.into(), v.clone());
            }
        }
    }
    prune(&mut doc);
    doc
}

/// The engine's `engine-summary` state event.
fn engine_summary(s: &EngineSummary, host_name: &str) -> Value {
    let window = json!({
        "connections": s.window_connections,
        "suppressed_by_rule": s.window_suppressed,
    });
    let mut doc = status(
        "state",
        "engine-summary",
        host_name,
        json!({"engine": s.stats, "window": window}),
    );
    if let Some(o) = doc.as_object_mut() {
        o.insert("@timestamp".into(), json!(clock::rfc3339(s.at_ns)));
    }
    doc
}

/// A sensor health event (`event.kind` "state" or "pipeline_error") with extra `sensor.*` fields.
pub fn status(kind: &str, action: &str, host_name: &str, sensor: Value) -> Value {
    let mut doc = json!({
        "@timestamp": clock::rfc3339(clock::BootClock::now_unix_ns()),
        "ecs": {"version": context::ECS_VERSION},
        "agent": {"type": context::AGENT_TYPE, "version": context::AGENT_VERSION},
        "event": {"kind": kind, "id": context::next_event_id(), "category": ["host"], "type": ["info"], "action": action,
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

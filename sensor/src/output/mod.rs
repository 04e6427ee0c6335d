//! ECS JSON lines. One object per line whatever bytes the process put in its path or
//! command line: serde_json escapes control characters and the strings are already valid
//! UTF-8 (lossy conversion happens in `enrich::procfs`), so a line can never be split or
//! broken. Unknown values are left out rather than faked, and listed in
//! `sensor.unknown_fields`. Every line is rendered once, from detection's typed decision.

mod beacon;
pub mod clock;
pub mod community_id;
pub mod connection;
pub mod context;
pub mod ecs;
pub mod flow;
pub mod journald;
pub mod metrics;
mod printed;
pub mod queue;
pub mod recorded;
pub mod redact;
mod rollup;
mod scan;
pub mod sink;
pub mod status;
mod sysmon;

pub use context::{Context, Format};
pub use status::status;

use std::io::Write;

use anyhow::{Context as _, Result};
use serde::Serialize;

use crate::{
    detect::decision::{Decision, Line},
    kernel::records::Flow,
    output::ecs::{ConnectionLine, SysmonLine},
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
    fn flow(&self) -> Flow;
    /// The connection's line without what the decision sets ([`connection::decide`]).
    fn parts<'a>(&'a self, cx: &'a Context) -> ConnectionLine<'a>;
    /// The connection as a Sysmon Event ID 3 record, where the source allows one.
    fn sysmon<'a>(&'a self, _d: &'a Decision, _cx: &'a Context) -> Option<SysmonLine<'a>> {
        None
    }
}

/// The `network-*` line of a connection and its decision.
pub fn connection_line<'a, C: Render>(
    conn: &'a C,
    d: &'a Decision,
    cx: &'a Context,
) -> ConnectionLine<'a> {
    let mut line = conn.parts(cx);
    connection::decide(&mut line, conn.flow(), d);
    cx.stamp(&mut line);
    line
}

/// One engine line serialised into `out` (no newline), in the context's format: a
/// connection as Sysmon Event ID 3 under `--format sysmon-json` (where it has one);
/// everything else (and every line by default) as ECS JSON, stamped with `ecs`, `agent`,
/// `host` and a unique `event.id`. Each line is built once, from types, and written
/// straight into `out`.
pub fn write<C: Render>(line: &Line<C>, cx: &Context, out: &mut Vec<u8>) -> Result<()> {
    match line {
        Line::Connection(d) => {
            if cx.format == Format::SysmonJson
                && let Some(s) = d.conn.sysmon(&d.decision, cx)
            {
                return to_writer(out, &s);
            }
            to_writer(out, &connection_line(&d.conn, &d.decision, cx))
        }
        Line::Beacon(b) => {
            let mut l = beacon::line(b.conn.parts(cx), &b.beacon, b.risk);
            cx.stamp(&mut l);
            to_writer(out, &l)
        }
        Line::Rollup(s) => {
            let mut l = rollup::line(s);
            cx.stamp(&mut l);
            to_writer(out, &l)
        }
        // Not a connection: ECS under `--format sysmon-json` too (Sysmon has no such event).
        Line::Scan(s) => {
            let mut l = scan::line(s);
            cx.stamp(&mut l);
            to_writer(out, &l)
        }
        Line::Summary(s) => to_writer(out, &status::engine_summary(s, cx)),
    }
}

fn to_writer(out: &mut Vec<u8>, line: &impl Serialize) -> Result<()> {
    serde_json::to_writer(out, line).context("serialising a line")
}

/// Writes one JSON line.
pub fn write_line(out: &mut impl Write, line: &impl Serialize) -> Result<()> {
    serde_json::to_writer(&mut *out, line).context("writing JSON to stdout")?;
    out.write_all(b"\n").context("writing JSON to stdout")
}

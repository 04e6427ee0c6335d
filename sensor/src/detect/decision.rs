//! What detection decided, as types: the output stage renders every line from these.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::{
    detect::{
        beacon::{self, Beacon},
        fold::{self, FoldState},
        rollup, scan,
        score::Verdict,
        severity::Severity,
    },
    enrich::Enriched,
};

/// Heap bytes a connection carried through the engine holds: what flood control pays to
/// hold one.
pub trait HeapBytes {
    fn heap_bytes(&self) -> usize;
}

impl HeapBytes for Enriched {
    fn heap_bytes(&self) -> usize {
        Enriched::heap_bytes(self)
    }
}

/// One connection's decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// What the lists said (before beacons and allow rules).
    pub verdict: Verdict,
    /// The final risk: raised by a beacon, 0 when an allow rule suppressed it.
    pub risk: u8,
    /// The allow rule that suppressed the alert.
    pub allow_rule: Option<String>,
    /// The beacon this connection is part of.
    pub beacon: Option<Beacon>,
    /// Flood control: how many connections the line stands for (alerts only).
    pub fold: Option<FoldState>,
}

impl Decision {
    pub fn alert(&self) -> bool {
        self.risk > 0
    }

    pub fn severity(&self) -> Option<Severity> {
        Severity::of(self.risk)
    }

    /// The lists that matched, the beacon and the allow rule, in words (`event.reason`).
    pub fn reasons(&self) -> Vec<String> {
        let mut reasons = self.verdict.reasons();
        if let Some(b) = &self.beacon {
            // Written as JSON writes the number (60.0, not 60), as the field shows it.
            reasons.push(format!(
                "regular-interval beacon every {} s (risk raised by one)",
                serde_json::to_string(&b.interval_rounded()).unwrap_or_default()
            ));
        }
        if let Some(rule) = &self.allow_rule {
            reasons.push(format!("suppressed by allow rule {rule}"));
        }
        reasons
    }
}

/// A connection and its decision.
#[derive(Debug, Clone)]
pub struct Decided<C> {
    pub conn: C,
    /// The connection's time (Unix nanoseconds).
    pub ts_ns: i128,
    pub decision: Decision,
}

impl<C: HeapBytes> Decided<C> {
    /// What holding this decision costs: itself, its connection and its decision's names.
    pub fn bytes(&self) -> usize {
        let v = &self.decision.verdict;
        std::mem::size_of::<Self>()
            + self.conn.heap_bytes()
            + self.decision.allow_rule.as_deref().map_or(0, str::len)
            + v.high_risk.as_ref().map_or(0, |h| h.entry.len())
            + v.service_away
                .as_ref()
                .map_or(0, |a| a.service.len() + 2 * a.standard.len())
    }
}

/// The `beacon-detected` alert: the connection that made the key a beacon.
#[derive(Debug, Clone)]
pub struct BeaconAlert<C> {
    pub conn: C,
    /// The time of the connection that made the key a beacon.
    pub ts_ns: i128,
    pub beacon: Beacon,
    pub risk: u8,
}

/// The engine's periodic or final summary (`engine-summary`).
#[derive(Debug, Clone)]
pub struct EngineSummary {
    pub at_ns: i128,
    pub stats: StatsReport,
    pub window_connections: u64,
    pub window_suppressed: BTreeMap<String, u64>,
}

/// Cumulative counters: the `sensor-stopped` event and summaries carry them.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct StatsReport {
    pub connections: u64,
    /// First-bytes observations of connections (protocol on the port), not in `connections`.
    pub protocol_observations: u64,
    pub alerts: u64,
    pub suppressed_total: u64,
    pub suppressed_by_rule: BTreeMap<String, u64>,
    pub allow_rules: usize,
    pub beacons_detected: u64,
    pub beaconing_connections: u64,
    pub beacon_keys: usize,
    pub beacon_keys_evicted: u64,
    pub beacon_keys_evicted_by_reason: beacon::Evictions,
    /// The beacon tracker's estimated memory.
    pub beacon_tracker_bytes: usize,
    pub folded_connections: u64,
    pub fold_table_full: u64,
    /// Flood control's keys and estimated memory, and periods it ended early for memory.
    pub fold_keys: usize,
    pub fold_bytes: usize,
    pub fold_max_bytes: usize,
    pub fold_evictions: fold::Evictions,
    pub rollup_windows: u64,
    pub rollup_connections_in_no_group: u64,
    /// The open window's groups and their estimated memory, and why alerts fit no group.
    pub rollup_groups: usize,
    pub rollup_bytes: usize,
    pub rollup_max_bytes: usize,
    pub rollup_no_group_by_reason: rollup::NoGroup,
    /// Scans summarised, connects folded into them (no line of their own), open
    /// windows, their estimated memory, and windows ended early for memory.
    pub scans_detected: u64,
    pub scan_connects_folded: u64,
    pub scan_windows: usize,
    pub scan_bytes: usize,
    pub scan_max_bytes: usize,
    pub scan_evictions: scan::Evictions,
}

/// One line the engine wants printed, in the order it is to be printed.
#[derive(Debug, Clone)]
pub enum Line<C> {
    Connection(Box<Decided<C>>),
    Beacon(Box<BeaconAlert<C>>),
    Rollup(Box<rollup::Summary>),
    Scan(Box<scan::Summary>),
    Summary(Box<EngineSummary>),
}

impl<C> Line<C> {
    /// The line's time (its `@timestamp`), Unix nanoseconds.
    pub fn ts_ns(&self) -> i128 {
        match self {
            Line::Connection(d) => d.ts_ns,
            Line::Beacon(b) => b.ts_ns,
            Line::Rollup(s) => s.window_end_ns,
            Line::Scan(s) => s.at_ns,
            Line::Summary(s) => s.at_ns,
        }
    }
}

//! The sensor's counters, gathered from the pipeline, the output and the loop: for the
//! `sensor-stats` and `sensor-stopped` lines and for the metrics endpoint.

use super::stall::LoopStall;
use crate::{
    output::{metrics::Snapshot, sink::Sink},
    pipeline::Pipeline,
};

/// The loop's totals for the metrics endpoint.
pub fn snapshot(pipeline: &Pipeline, out: &Sink, lost: u64) -> Snapshot {
    let c = pipeline.counters;
    let engine = pipeline.engine.report();
    Snapshot {
        events_seen: c.connections,
        events_filtered: c.connections.saturating_sub(c.printed),
        events_emitted: out.emitted(),
        alerts: c.alerts_by_severity,
        ring_lost: lost,
        output_lost: out.lost(),
        output_dropped: out.dropped,
        process_table_entries: pipeline.table.len() as u64,
        policy_reloads: c.reloads,
        policy_reload_failures: c.reload_failures,
        beacons_detected: engine.beacons_detected,
        beacon_keys: engine.beacon_keys as u64,
        beacon_tracker_bytes: engine.beacon_tracker_bytes as u64,
        beacon_evictions: engine.beacon_keys_evicted_by_reason,
        folded_connections: engine.folded_connections,
        kernel: pipeline.kernel.counts,
    }
}

/// The sensor's counters, for `sensor-stats` metrics and the `sensor-stopped` event.
pub fn counters_json(
    pipeline: &Pipeline,
    out: &Sink,
    lost: u64,
    stall: &LoopStall,
) -> serde_json::Value {
    let c = pipeline.counters;
    let table = pipeline.table.stats();
    serde_json::json!({
        "connections": c.connections,
        "connections_attributed": c.attributed,
        "alerts": c.alerts,
        "malformed_records": c.malformed,
        "lost_events_total": lost,
        "output_lost": out.lost(),
        "output_dropped": out.dropped,
        "policy_reloads": c.reloads,
        "policy_reload_failures": c.reload_failures,
        "loss_counter_read_errors": c.loss_read_errors,
        "passwd_read_errors": pipeline.users.host.read_errors,
        "container_passwd_unreadable": pipeline.users.containers.unreadable,
        "container_users": pipeline.users.containers.report(),
        "cgroup_scans_cut": pipeline.table.cgroups.scans_cut,
        "hashing": pipeline.table.identities.hasher.as_ref().map(|h| h.report()),
        "identity_cache": pipeline.table.identities.cache_report(),
        "process_records": {"exec": c.execs, "fork": c.forks, "exit": c.exits},
        "process_table": {"entries": table.entries, "bytes": table.bytes, "max_bytes": table.max_bytes, "evicted": table.evicted, "expired": table.expired},
        "engine": pipeline.engine.report(),
        "sockets": pipeline.sockets.report(),
        "kernel": pipeline.kernel.report(),
        "loop": {"max_stall_ms": stall.max_ms()},
    })
}

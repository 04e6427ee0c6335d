//! The sensor's [`Stats`], gathered from the pipeline, the output and the loop: for the
//! `sensor-stats` and `sensor-stopped` lines and for the metrics endpoint.

use super::stall::LoopStall;
use crate::{
    output::{
        metrics::stats::{Loop, Stats},
        sink::Sink,
    },
    pipeline::Pipeline,
};

/// The sensor's counters now. `lost`: ring-buffer losses reported so far.
pub fn collect(pipeline: &Pipeline, out: &Sink, lost: u64, stall: &LoopStall) -> Stats {
    let users = &pipeline.users;
    let identities = &pipeline.table.identities;
    Stats {
        counters: pipeline.counters,
        lost_events_total: lost,
        output_written: out.emitted(),
        output_lost: out.lost(),
        output_dropped: out.dropped,
        passwd_read_errors: users.host.read_errors,
        container_passwd_unreadable: users.containers.unreadable,
        container_users: users.containers.report(),
        cgroup_scans_cut: pipeline.table.cgroups.scans_cut,
        hashing: identities.hasher.as_ref().map(|h| h.report()),
        identity_cache: identities.cache_report(),
        process_table: pipeline.table.stats(),
        engine: pipeline.engine.report(),
        sockets: pipeline.sockets.report(),
        kernel: pipeline.kernel.report(),
        event_loop: Loop {
            max_stall_ms: stall.max_ms(),
        },
    }
}

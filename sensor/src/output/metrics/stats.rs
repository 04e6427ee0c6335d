//! The sensor's own counters, in one struct: [`Stats`]. Its serialised names are the
//! `sensor.*` fields of the `sensor-stats` and `sensor-stopped` lines, and the same names,
//! path joined with `_` under the `t1571_sensor_` prefix, are the Prometheus metrics
//! (see `EXPORTED` in the parent module; counters get Prometheus's `_total` suffix).

use serde::Serialize;

use crate::{
    detect::{decision::StatsReport, severity::Severity},
    enrich::{hasher, identity::CacheReport, proctable, users::ContainerUsersReport},
    kernel::filter::Records,
};

/// Everything the sensor reports about itself: the `sensor` object of `sensor-stats` and
/// `sensor-stopped`, and what `/metrics` exports. Read back (`sensor watch`), a counter or
/// section a line of an earlier release lacks reads as 0; one of the wrong type is refused.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(default)]
pub struct Stats {
    /// What the pipeline counted (flattened: its names are top-level names).
    #[serde(flatten)]
    pub counters: Counters,
    /// Records the kernel could not reserve in a ring buffer (reported in `events-lost`).
    pub lost_events_total: u64,
    /// Lines written to the outputs.
    pub output_written: u64,
    /// Entries the journal did not take (journald unreachable).
    pub output_lost: u64,
    /// Lines dropped because the output queue was full (a reader not keeping up).
    pub output_dropped: u64,
    /// Failed reads of the host's passwd file.
    pub passwd_read_errors: u64,
    /// Container passwd files that could not be read.
    pub container_passwd_unreadable: u64,
    pub container_users: ContainerUsersReport,
    /// cgroup scans cut short at their bound.
    pub cgroup_scans_cut: u64,
    /// The executable hasher, when it runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hashing: Option<hasher::Report>,
    pub identity_cache: CacheReport,
    pub process_table: proctable::Stats,
    pub engine: StatsReport,
    pub sockets: Sockets,
    pub kernel: Kernel,
    #[serde(rename = "loop")]
    pub event_loop: Loop,
}

/// What the pipeline counts as records go by (read back as [`Stats`] is).
#[derive(
    Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(default)]
pub struct Counters {
    /// Connections handled (TCP connects, listens, inbound opens, UDP; each connect the
    /// kernel folded counts).
    pub connections: u64,
    /// Connections whose executable was known.
    pub connections_attributed: u64,
    /// Connection lines printed (alerts, and with `--all` every connection).
    pub connections_printed: u64,
    /// Connections that scored an alert.
    pub alerts: u64,
    /// Alert lines printed (connections and beacons) by severity.
    pub alerts_by_severity: BySeverity,
    /// Ring-buffer records that did not decode (dropped, counted).
    pub malformed_records: u64,
    /// Reads of the kernel's loss counter that failed (the sensor carries on).
    pub loss_counter_read_errors: u64,
    pub policy_reloads: u64,
    pub policy_reload_failures: u64,
    pub process_records: ProcessRecords,
}

/// Alert lines by severity.
#[derive(
    Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, schemars::JsonSchema,
)]
pub struct BySeverity {
    pub low: u64,
    pub medium: u64,
    pub high: u64,
}

impl BySeverity {
    /// Counts a line of `risk` (0: no alert, not counted).
    pub fn count(&mut self, risk: u8) {
        match Severity::of(risk) {
            None => {}
            Some(Severity::Low) => self.low += 1,
            Some(Severity::Medium) => self.medium += 1,
            Some(Severity::High) => self.high += 1,
        }
    }
}

/// Process lifecycle records handled.
#[derive(
    Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, schemars::JsonSchema,
)]
pub struct ProcessRecords {
    pub exec: u64,
    pub fork: u64,
    pub exit: u64,
}

/// Listens, inbound opens and UDP: what the socket hooks counted, and the listeners kept
/// for inbound attribution.
#[derive(
    Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, schemars::JsonSchema,
)]
pub struct Sockets {
    pub listens: u64,
    pub listeners: usize,
    pub listeners_evicted: u64,
    pub listener_bytes: usize,
    pub inbound: u64,
    /// Inbound connections to a port no listen record was seen for.
    pub inbound_unattributed: u64,
    pub udp: u64,
    pub udp_standard_port_dropped_in_kernel: u64,
    pub udp_repeats_dropped_in_kernel: u64,
}

/// What the kernel filtered, folded and counted, as userspace last read it.
#[derive(
    Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, schemars::JsonSchema,
)]
pub struct Kernel {
    /// Per record kind: seen, filtered, emitted, lost.
    pub records: Records,
    /// TCP connects folded in the kernel (counted, not emitted).
    pub folded: u64,
    /// TCP connects passed up unfolded because the fold table was full.
    pub fold_table_full: u64,
    /// Folded connects collected from the fold table and counted in.
    pub fold_collected: u64,
    pub fold_keys: usize,
    pub fold_keys_deleted: u64,
    /// Collected repeats with no record kept to stand for them.
    pub fold_untemplated: u64,
    pub fold_templates: usize,
    pub fold_template_bytes: usize,
    pub fold_templates_refused: u64,
    /// Reads of the kernel's counters that failed.
    pub counter_read_errors: u64,
    pub filter_pushes: u64,
    pub filter_generation: u32,
    /// Protocol on the port (the egress hook's first payloads).
    #[serde(default)]
    pub protocol: Protocol,
}

/// The egress hook's counters, and the records userspace received from it.
#[derive(
    Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(default)]
pub struct Protocol {
    /// First payloads the kernel looked at.
    pub seen: u64,
    /// The expected protocol on its port, connect kept in the kernel: stayed there.
    pub expected_in_kernel: u64,
    /// A protocol the port does not expect.
    pub mismatch: u64,
    /// Records the kernel sent up, and of them those cut at the capture bound.
    pub sent: u64,
    pub truncated: u64,
    /// Records the kernel could not send (ring full).
    pub dropped: u64,
    /// No expectation on the port and the connect kept in the kernel: nothing sent.
    pub unexpected_in_kernel: u64,
    /// Connects whose flow the kernel could not remember.
    pub untracked: u64,
    /// Records userspace received.
    pub received: u64,
}

/// The event loop.
#[derive(
    Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, schemars::JsonSchema,
)]
pub struct Loop {
    /// Its longest single turn since start: every other record, timer and signal waited
    /// that long.
    pub max_stall_ms: u64,
}

//! What the pipeline counted, for the status events and metrics.

/// Counters reported in the status events (and, later, as metrics).
#[derive(Debug, Default, Clone, Copy)]
pub struct Counters {
    pub connections: u64,
    /// Connections whose executable was known.
    pub attributed: u64,
    pub alerts: u64,
    pub malformed: u64,
    /// Reads of the kernel's loss counter that failed (the sensor carries on).
    pub loss_read_errors: u64,
    pub execs: u64,
    pub forks: u64,
    pub exits: u64,
    /// Connection lines printed (alerts, and with --all every connection).
    pub printed: u64,
    /// Alert lines printed (connections and beacons) by severity: Low, Medium, High.
    pub alerts_by_severity: [u64; 3],
    pub reloads: u64,
    pub reload_failures: u64,
}

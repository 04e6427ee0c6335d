//! `--metrics ADDR`: a Prometheus text endpoint (prometheus-client) and `/healthz`, served
//! on a thread of its own with its own small tokio runtime, so a stalled event loop cannot
//! stall its own health check: `/healthz` answers 503 when the loop has not drained or
//! ticked for [`STALL_AFTER`].
//!
//! The event loop publishes a [`Snapshot`] of its counters after every drain and tick:
//! the hot path only bumps plain integers, and the registry is touched once a batch.
//! The listener itself is bounded in connections, bytes and time ([`serve`]).

mod serve;

use std::{
    net::SocketAddr,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

pub use self::serve::{MAX_CONNECTIONS, serve};
use crate::{
    detect::beacon::Evictions,
    kernel::filter::{KIND_NAMES, KernelCounts, STAT_NAMES},
};

/// `/healthz` turns 503 when the event loop has been silent this long (it ticks every
/// `--stats-interval`, 1 s by default, even on an idle host).
pub const STALL_AFTER: Duration = Duration::from_secs(5);

/// The loop's counters, totals since start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Connect records read from the ring buffer.
    pub events_seen: u64,
    /// Connections scored and not printed (no alert, no `--all`) or suppressed by a rule.
    pub events_filtered: u64,
    /// Connection lines written.
    pub events_emitted: u64,
    /// Alerts by severity: Low, Medium, High.
    pub alerts: [u64; 3],
    /// Records the kernel could not reserve in the ring buffer.
    pub ring_lost: u64,
    /// Lines an output could not take (journald down, a full queue).
    pub output_lost: u64,
    /// Lines dropped because the output queue was full (stdout or journald not keeping up).
    pub output_dropped: u64,
    pub process_table_entries: u64,
    pub policy_reloads: u64,
    pub policy_reload_failures: u64,
    pub beacons_detected: u64,
    pub beacon_keys: u64,
    pub beacon_tracker_bytes: u64,
    pub beacon_evictions: Evictions,
    pub folded_connections: u64,
    /// The kernel's per-kind record counters and its fold counters.
    pub kernel: KernelCounts,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Severity {
    severity: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindOutcome {
    kind: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Hook {
    hook: String,
}

pub struct Metrics {
    registry: Registry,
    events_seen: Counter,
    events_filtered: Counter,
    events_emitted: Counter,
    alerts: Family<Severity, Counter>,
    ring_lost: Counter,
    output_lost: Counter,
    output_dropped: Counter,
    table: Gauge,
    reloads: Counter,
    reload_failures: Counter,
    beacons: Counter,
    beacon_keys: Gauge,
    beacon_bytes: Gauge,
    beacon_evicted: Family<Reason, Counter>,
    folded: Counter,
    kernel_records: Family<KindOutcome, Counter>,
    kernel_folded: Counter,
    kernel_fold_table_full: Counter,
    /// The listener's own counters, moved by its thread.
    listener: Listener,
    /// The event loop's longest turn so far (cmd::stall).
    loop_max_stall: Gauge<f64, AtomicU64>,
    /// The last snapshot published: counters move by the difference.
    last: Mutex<Snapshot>,
    /// Milliseconds since `start` at the loop's last sign of life.
    heartbeat_ms: AtomicU64,
    start: Instant,
}

const SEVERITIES: [&str; 3] = ["low", "medium", "high"];
const EVICTION_REASONS: [&str; 3] = ["executable_quota", "tracker_full", "memory_budget"];

fn by_reason(e: &Evictions) -> [u64; 3] {
    [e.executable_quota, e.tracker_full, e.memory_budget]
}

/// What the metrics listener met: failed accepts (each one a retry after a back-off),
/// connections cut to stay within [`MAX_CONNECTIONS`], exchanges past their deadline.
struct Listener {
    accept_errors: Counter,
    cut: Counter,
    timed_out: Counter,
    open: Gauge,
}

impl Metrics {
    pub fn new(hook: &str) -> Self {
        let mut registry = Registry::with_prefix("t1571_sensor");
        let counter = |r: &mut Registry, name: &str, help: &str| {
            let c = Counter::default();
            r.register(name, help, c.clone());
            c
        };
        let events_seen = counter(
            &mut registry,
            "events_seen",
            "Connect records read from the kernel",
        );
        let events_filtered = counter(
            &mut registry,
            "events_filtered",
            "Connections scored and not printed (no alert, or suppressed)",
        );
        let events_emitted = counter(&mut registry, "events_emitted", "Connection lines written");
        let alerts = Family::<Severity, Counter>::default();
        registry.register("alerts", "Alerts by severity", alerts.clone());
        let ring_lost = counter(
            &mut registry,
            "ring_buffer_lost",
            "Records the kernel could not reserve in the ring buffer",
        );
        let output_lost = counter(
            &mut registry,
            "output_lost",
            "Lines an output could not take",
        );
        let output_dropped = counter(
            &mut registry,
            "output_dropped",
            "Lines dropped because the output queue was full (a reader not keeping up)",
        );
        let table = Gauge::default();
        registry.register(
            "process_table_entries",
            "Processes in the process table",
            table.clone(),
        );
        let reloads = counter(&mut registry, "policy_reloads", "Policy reloads applied");
        let reload_failures = counter(
            &mut registry,
            "policy_reload_failures",
            "Policy reloads refused (the old policy kept)",
        );
        let beacons = counter(&mut registry, "beacons_detected", "Beacons detected");
        let beacon_keys = Gauge::default();
        registry.register(
            "beacon_keys",
            "Destinations (executable, address, port) the beacon tracker holds",
            beacon_keys.clone(),
        );
        let beacon_bytes = Gauge::default();
        registry.register(
            "beacon_tracker_bytes",
            "The beacon tracker's estimated memory, bytes",
            beacon_bytes.clone(),
        );
        let beacon_evicted = Family::<Reason, Counter>::default();
        registry.register(
            "beacon_keys_evicted",
            "Beacon tracker keys evicted: executable_quota (an executable's own, over its quota), tracker_full and memory_budget (from the executable holding the most)",
            beacon_evicted.clone(),
        );
        for reason in EVICTION_REASONS {
            let _ = beacon_evicted.get_or_create(&Reason { reason });
        }
        let listener = Listener {
            accept_errors: counter(
                &mut registry,
                "metrics_accept_errors",
                "Failed accepts on the metrics listener (EMFILE...), each retried after a back-off",
            ),
            cut: counter(
                &mut registry,
                "metrics_connections_cut",
                "Metrics connections closed unanswered to admit a newer one (at most 32 open)",
            ),
            timed_out: counter(
                &mut registry,
                "metrics_connections_timed_out",
                "Metrics connections closed for not completing an exchange within 1 s",
            ),
            open: Gauge::default(),
        };
        registry.register(
            "metrics_connections_open",
            "Metrics connections open at the last accept",
            listener.open.clone(),
        );
        let folded = counter(
            &mut registry,
            "folded_connections",
            "Connections folded into an earlier alert by flood control",
        );
        let kernel_records = Family::<KindOutcome, Counter>::default();
        registry.register(
            "kernel_records",
            "Records in the kernel by kind and outcome: seen, filtered (could not matter), emitted to the ring buffer, lost (ring buffer full)",
            kernel_records.clone(),
        );
        for (_, kind) in KIND_NAMES {
            for outcome in STAT_NAMES {
                let _ = kernel_records.get_or_create(&KindOutcome { kind, outcome });
            }
        }
        let kernel_folded = counter(
            &mut registry,
            "kernel_folded_connections",
            "TCP connects folded in the kernel (counted into an alert, not emitted)",
        );
        let kernel_fold_table_full = counter(
            &mut registry,
            "kernel_fold_table_full",
            "TCP connects passed up unfolded because the kernel fold table was full",
        );
        let hooks = Family::<Hook, Gauge>::default();
        registry.register("hook_info", "The connect hook in use", hooks.clone());
        hooks
            .get_or_create(&Hook {
                hook: hook.to_string(),
            })
            .set(1);
        for severity in SEVERITIES {
            // Present at 0 from the start, so rate() works from the first alert.
            let _ = alerts.get_or_create(&Severity { severity });
        }
        let loop_max_stall = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "loop_max_stall_seconds",
            "The event loop's longest single turn since start (every record waited that long)",
            loop_max_stall.clone(),
        );
        Self {
            registry,
            events_seen,
            events_filtered,
            events_emitted,
            alerts,
            ring_lost,
            output_lost,
            output_dropped,
            table,
            reloads,
            reload_failures,
            beacons,
            beacon_keys,
            beacon_bytes,
            beacon_evicted,
            folded,
            kernel_records,
            kernel_folded,
            kernel_fold_table_full,
            listener,
            loop_max_stall,
            last: Mutex::new(Snapshot::default()),
            heartbeat_ms: AtomicU64::new(0),
            start: Instant::now(),
        }
    }

    /// The event loop's longest turn so far.
    pub fn loop_stall(&self, max: Duration) {
        self.loop_max_stall.set(max.as_secs_f64());
    }

    /// Publishes the loop's totals (and counts as its sign of life).
    pub fn publish(&self, s: &Snapshot) {
        self.alive();
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let up = |c: &Counter, new: u64, old: u64| {
            c.inc_by(new.saturating_sub(old));
        };
        up(&self.events_seen, s.events_seen, last.events_seen);
        up(
            &self.events_filtered,
            s.events_filtered,
            last.events_filtered,
        );
        up(&self.events_emitted, s.events_emitted, last.events_emitted);
        for (i, severity) in SEVERITIES.into_iter().enumerate() {
            up(
                &self.alerts.get_or_create(&Severity { severity }),
                s.alerts[i],
                last.alerts[i],
            );
        }
        up(&self.ring_lost, s.ring_lost, last.ring_lost);
        up(&self.output_lost, s.output_lost, last.output_lost);
        up(&self.output_dropped, s.output_dropped, last.output_dropped);
        up(&self.reloads, s.policy_reloads, last.policy_reloads);
        up(
            &self.reload_failures,
            s.policy_reload_failures,
            last.policy_reload_failures,
        );
        up(&self.beacons, s.beacons_detected, last.beacons_detected);
        up(&self.folded, s.folded_connections, last.folded_connections);
        let (new, old) = (
            by_reason(&s.beacon_evictions),
            by_reason(&last.beacon_evictions),
        );
        for (i, reason) in EVICTION_REASONS.into_iter().enumerate() {
            up(
                &self.beacon_evicted.get_or_create(&Reason { reason }),
                new[i],
                old[i],
            );
        }
        let gauge = |g: &Gauge, v: u64| g.set(i64::try_from(v).unwrap_or(i64::MAX));
        gauge(&self.beacon_keys, s.beacon_keys);
        gauge(&self.beacon_bytes, s.beacon_tracker_bytes);
        for (kind, name) in KIND_NAMES {
            let (new, old) = (s.kernel.of(kind), last.kernel.of(kind));
            for (i, outcome) in STAT_NAMES.into_iter().enumerate() {
                up(
                    &self.kernel_records.get_or_create(&KindOutcome {
                        kind: name,
                        outcome,
                    }),
                    new[i],
                    old[i],
                );
            }
        }
        up(&self.kernel_folded, s.kernel.folded, last.kernel.folded);
        up(
            &self.kernel_fold_table_full,
            s.kernel.fold_table_full,
            last.kernel.fold_table_full,
        );
        self.table
            .set(i64::try_from(s.process_table_entries).unwrap_or(i64::MAX));
        *last = s.clone();
    }

    /// The event loop is alive (called on every drain and tick).
    pub fn alive(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.heartbeat_ms.store(ms, Ordering::Relaxed);
    }

    pub fn healthy(&self) -> bool {
        let now = self.start.elapsed();
        let last = Duration::from_millis(self.heartbeat_ms.load(Ordering::Relaxed));
        now.saturating_sub(last) < STALL_AFTER
    }

    pub fn render(&self) -> Result<String> {
        let mut out = String::new();
        encode(&mut out, &self.registry).context("encoding metrics")?;
        Ok(out)
    }
}

/// `--metrics ADDR`: `IP:PORT`, `[IPV6]:PORT`, or an IPv6 address without brackets, the
/// port after its last colon (what `$(POD_IP):9464` gives on an IPv6 pod network).
pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse().or_else(|_| {
        s.rsplit_once(':')
            .and_then(|(ip, port)| {
                Some(SocketAddr::new(
                    ip.parse::<std::net::Ipv6Addr>().ok()?.into(),
                    port.parse().ok()?,
                ))
            })
            .ok_or_else(|| format!("{s:?} is not IP:PORT"))
    })
}

/// Binds `addr`, so a bad address fails at start-up, naming it (and a port below 1024
/// is bound while the sensor still holds its capabilities).
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener> {
    std::net::TcpListener::bind(addr).with_context(|| format!("--metrics {addr}: bind"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_move_by_what_the_loop_counted() {
        let m = Metrics::new("tp_btf/inet_sock_set_state");
        let mut s = Snapshot {
            events_seen: 10,
            alerts: [1, 0, 2],
            ..Default::default()
        };
        m.publish(&s);
        s.events_seen = 15;
        s.alerts[2] = 5;
        s.kernel.kinds[sensor_common::RecordKind::Connect as usize] = [2000, 1990, 10, 0];
        s.kernel.folded = 7;
        s.beacon_evictions.executable_quota = 9;
        s.beacon_tracker_bytes = 1234;
        m.publish(&s);
        let text = m.render().unwrap();
        assert!(text.contains("t1571_sensor_events_seen_total 15"), "{text}");
        assert!(
            text.contains("t1571_sensor_alerts_total{severity=\"high\"} 5"),
            "{text}"
        );
        assert!(
            text.contains("t1571_sensor_alerts_total{severity=\"medium\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("t1571_sensor_hook_info{hook=\"tp_btf/inet_sock_set_state\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "t1571_sensor_kernel_records_total{kind=\"connect\",outcome=\"filtered\"} 1990"
            ),
            "{text}"
        );
        assert!(
            text.contains("t1571_sensor_kernel_records_total{kind=\"udp\",outcome=\"lost\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("t1571_sensor_kernel_folded_connections_total 7"),
            "{text}"
        );
        assert!(
            text.contains("t1571_sensor_beacon_keys_evicted_total{reason=\"executable_quota\"} 9"),
            "{text}"
        );
        assert!(
            text.contains("t1571_sensor_beacon_keys_evicted_total{reason=\"tracker_full\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("t1571_sensor_beacon_tracker_bytes 1234"),
            "{text}"
        );
        assert!(
            text.contains("t1571_sensor_metrics_accept_errors_total 0"),
            "{text}"
        );
        assert!(m.healthy());
    }

    #[rstest::rstest]
    #[case::v4("127.0.0.1:9464", Some("127.0.0.1:9464"))]
    #[case::v6_bracketed("[2001:db8::7]:9464", Some("[2001:db8::7]:9464"))]
    #[case::v6_bare_as_pod_ip_gives_it("2001:db8::7:9464", Some("[2001:db8::7]:9464"))]
    #[case::v6_loopback_bare("::1:9464", Some("[::1]:9464"))]
    #[case::no_port("192.0.2.7", None)]
    #[case::bare_v6_without_port("2001:db8::7", None)]
    #[case::unexpanded_variable("$(POD_IP):9464", None)]
    fn metrics_addresses(#[case] given: &str, #[case] want: Option<&str>) {
        let got = parse_addr(given).map(|a| a.to_string());
        match want {
            Some(w) => assert_eq!(got.as_deref(), Ok(w)),
            None => assert!(got.unwrap_err().contains(given)),
        }
    }
}

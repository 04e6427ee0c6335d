//! `--metrics ADDR`: a Prometheus text endpoint (prometheus-client) and `/healthz`, served
//! on a thread of its own with its own small tokio runtime, so a stalled event loop cannot
//! stall its own health check: `/healthz` answers 503 when the loop has not drained or
//! ticked for [`STALL_AFTER`].
//!
//! The metrics are fields of [`Stats`], the struct the `sensor-stats` and `sensor-stopped`
//! lines print, named by their path there ([`EXPORTED`]): the event loop publishes it on
//! every stats tick; the hot path only bumps plain integers, and says it is alive after
//! every drain. The listener itself is bounded in connections, bytes and time ([`serve`]).

mod serve;
pub mod stats;

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
use serde_json::Value;

pub use self::{
    serve::{MAX_CONNECTIONS, serve},
    stats::Stats,
};

/// `/healthz` turns 503 when the event loop has been silent this long (it ticks every
/// `--stats-interval`, 1 s by default, even on an idle host).
pub const STALL_AFTER: Duration = Duration::from_secs(5);

/// Every metric's prefix.
pub const PREFIX: &str = "t1571_sensor";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Only grows (Prometheus adds `_total` to its name).
    Counter,
    /// Goes up and down.
    Gauge,
}

/// One field of [`Stats`] on `/metrics`. Its path in the serialised stats, `.`-joined, is
/// its name, `_`-joined (a trailing `_total` is Prometheus's, added once). A field holding
/// an object of numbers is one metric labelled by its keys (`labels[0]`); an object of
/// such objects, by both levels' keys.
struct Export {
    path: &'static str,
    kind: Kind,
    labels: &'static [&'static str],
    help: &'static str,
}

const fn counter(path: &'static str, help: &'static str) -> Export {
    Export {
        path,
        kind: Kind::Counter,
        labels: &[],
        help,
    }
}

const fn gauge(path: &'static str, help: &'static str) -> Export {
    Export {
        path,
        kind: Kind::Gauge,
        labels: &[],
        help,
    }
}

const fn by(path: &'static str, labels: &'static [&'static str], help: &'static str) -> Export {
    Export {
        path,
        kind: Kind::Counter,
        labels,
        help,
    }
}

/// What `/metrics` exports of [`Stats`].
const EXPORTED: &[Export] = &[
    counter(
        "connections",
        "Connections handled: TCP connects, listens, inbound opens, UDP",
    ),
    counter(
        "connections_attributed",
        "Connections whose executable was known",
    ),
    counter(
        "connections_printed",
        "Connection lines printed (alerts, and with --all every connection)",
    ),
    counter("alerts", "Connections that scored an alert"),
    by(
        "alerts_by_severity",
        &["severity"],
        "Alert lines printed (connections and beacons) by severity",
    ),
    counter(
        "malformed_records",
        "Ring-buffer records that did not decode (dropped)",
    ),
    counter(
        "loss_counter_read_errors",
        "Failed reads of the kernel's loss counter",
    ),
    counter("policy_reloads", "Policy reloads applied"),
    counter(
        "policy_reload_failures",
        "Policy reloads refused (the old policy kept)",
    ),
    by(
        "process_records",
        &["kind"],
        "Process lifecycle records handled, by kind",
    ),
    counter(
        "lost_events_total",
        "Records the kernel could not reserve in a ring buffer",
    ),
    counter("output_written", "Lines written to the outputs"),
    counter("output_lost", "Entries the journal did not take"),
    counter(
        "output_dropped",
        "Lines dropped because the output queue was full (a reader not keeping up)",
    ),
    gauge("process_table.entries", "Processes in the process table"),
    gauge(
        "process_table.bytes",
        "The process table's estimated memory, bytes",
    ),
    counter(
        "process_table.evicted",
        "Processes evicted from the full process table",
    ),
    counter("engine.beacons_detected", "Beacons detected"),
    gauge(
        "engine.beacon_keys",
        "Destinations (executable, address, port) the beacon tracker holds",
    ),
    gauge(
        "engine.beacon_tracker_bytes",
        "The beacon tracker's estimated memory, bytes",
    ),
    by(
        "engine.beacon_keys_evicted_by_reason",
        &["reason"],
        "Beacon tracker keys evicted: executable_quota (an executable's own, over its quota), tracker_full and memory_budget (from the executable holding the most)",
    ),
    counter(
        "engine.folded_connections",
        "Connections folded into an earlier alert by flood control",
    ),
    counter(
        "engine.suppressed_total",
        "Connections an allow rule suppressed",
    ),
    counter("sockets.listens", "Listen records handled"),
    counter("sockets.inbound", "Inbound connections handled"),
    counter("sockets.udp", "UDP records handled"),
    by(
        "kernel.records",
        &["kind", "outcome"],
        "Records in the kernel by kind and outcome: seen, filtered (could not matter), emitted to the ring buffer, lost (ring buffer full)",
    ),
    counter(
        "kernel.folded",
        "TCP connects folded in the kernel (counted into an alert, not emitted)",
    ),
    counter(
        "kernel.fold_table_full",
        "TCP connects passed up unfolded because the kernel fold table was full",
    ),
    gauge(
        "loop.max_stall_ms",
        "The event loop's longest single turn since start, ms (every record waited that long)",
    ),
];

impl Export {
    /// The metric's name under [`PREFIX`], without Prometheus's `_total`.
    fn name(&self) -> String {
        let name = self.path.replace('.', "_");
        match self.kind {
            Kind::Counter => name.strip_suffix("_total").unwrap_or(&name).to_string(),
            Kind::Gauge => name,
        }
    }

    /// The field in the serialised stats.
    fn pointer(&self) -> String {
        format!("/{}", self.path.replace('.', "/"))
    }
}

type Labels = Vec<(&'static str, String)>;

/// The registered form of one [`Export`].
enum Registered {
    Counter(Family<Labels, Counter>),
    Gauge(Family<Labels, Gauge>),
}

impl Registered {
    /// Moves the metric of `labels` to `new` (a counter by what it grew since `old`).
    fn set(&self, labels: &Labels, new: u64, old: u64) {
        match self {
            Self::Counter(f) => {
                f.get_or_create(labels).inc_by(new.saturating_sub(old));
            }
            Self::Gauge(f) => {
                f.get_or_create(labels)
                    .set(i64::try_from(new).unwrap_or(i64::MAX));
            }
        }
    }
}

/// The numbers of one exported field: (labels, value) for each, in order.
fn values(e: &Export, stats: &Value) -> Vec<(Labels, u64)> {
    let Some(v) = stats.pointer(&e.pointer()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    match e.labels {
        [] => out.extend(v.as_u64().map(|n| (Vec::new(), n))),
        [l1] => {
            for (k, n) in v.as_object().into_iter().flatten() {
                out.extend(n.as_u64().map(|n| (vec![(*l1, k.clone())], n)));
            }
        }
        [l1, l2, ..] => {
            for (k1, inner) in v.as_object().into_iter().flatten() {
                for (k2, n) in inner.as_object().into_iter().flatten() {
                    let labels = vec![(*l1, k1.clone()), (*l2, k2.clone())];
                    out.extend(n.as_u64().map(|n| (labels, n)));
                }
            }
        }
    }
    out
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Hook {
    hook: String,
}

pub struct Metrics {
    registry: Registry,
    /// [`EXPORTED`], registered, in its order.
    exported: Vec<Registered>,
    /// The listener's own counters, moved by its thread.
    listener: Listener,
    /// The last stats published, serialised: counters move by the difference.
    last: Mutex<Value>,
    /// Milliseconds since `start` at the loop's last sign of life.
    heartbeat_ms: AtomicU64,
    start: Instant,
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
        let mut registry = Registry::with_prefix(PREFIX);
        let exported = EXPORTED
            .iter()
            .map(|e| match e.kind {
                Kind::Counter => {
                    let f = Family::<Labels, Counter>::default();
                    registry.register(e.name(), e.help, f.clone());
                    Registered::Counter(f)
                }
                Kind::Gauge => {
                    let f = Family::<Labels, Gauge>::default();
                    registry.register(e.name(), e.help, f.clone());
                    Registered::Gauge(f)
                }
            })
            .collect();
        let counter = |r: &mut Registry, name: &str, help: &str| {
            let c = Counter::default();
            r.register(name, help, c.clone());
            c
        };
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
        let hooks = Family::<Hook, Gauge>::default();
        registry.register("hook_info", "The connect hook in use", hooks.clone());
        hooks
            .get_or_create(&Hook {
                hook: hook.to_string(),
            })
            .set(1);
        Self {
            registry,
            exported,
            listener,
            last: Mutex::new(Value::Null),
            heartbeat_ms: AtomicU64::new(0),
            start: Instant::now(),
        }
    }

    /// Publishes the sensor's stats (and counts as the loop's sign of life). Every
    /// exported field is present from the first publication on, at 0 if nothing counted.
    pub fn publish(&self, stats: &Stats) -> Result<()> {
        self.alive();
        let new = serde_json::to_value(stats).context("serialising the stats")?;
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        for (e, m) in EXPORTED.iter().zip(&self.exported) {
            let old = values(e, &last);
            for (labels, n) in values(e, &new) {
                let was = old
                    .iter()
                    .find(|(l, _)| *l == labels)
                    .map_or(0, |(_, n)| *n);
                m.set(&labels, n, was);
            }
        }
        *last = new;
        Ok(())
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
        let mut s = Stats::default();
        s.counters.connections = 10;
        s.counters.alerts_by_severity.low = 1;
        s.counters.alerts_by_severity.high = 2;
        m.publish(&s).unwrap();
        s.counters.connections = 15;
        s.counters.alerts_by_severity.high = 5;
        s.lost_events_total = 3;
        s.kernel.records.connect = crate::kernel::filter::Outcomes {
            seen: 2000,
            filtered: 1990,
            emitted: 10,
            lost: 0,
        };
        s.kernel.folded = 7;
        s.engine.beacon_keys_evicted_by_reason.executable_quota = 9;
        s.engine.beacon_tracker_bytes = 1234;
        s.event_loop.max_stall_ms = 40;
        m.publish(&s).unwrap();
        let text = m.render().unwrap();
        for want in [
            "t1571_sensor_connections_total 15",
            "t1571_sensor_lost_events_total 3",
            "t1571_sensor_alerts_by_severity_total{severity=\"high\"} 5",
            "t1571_sensor_alerts_by_severity_total{severity=\"medium\"} 0",
            "t1571_sensor_hook_info{hook=\"tp_btf/inet_sock_set_state\"} 1",
            "t1571_sensor_kernel_records_total{kind=\"connect\",outcome=\"filtered\"} 1990",
            "t1571_sensor_kernel_records_total{kind=\"udp\",outcome=\"lost\"} 0",
            "t1571_sensor_kernel_folded_total 7",
            "t1571_sensor_engine_beacon_keys_evicted_by_reason_total{reason=\"executable_quota\"} 9",
            "t1571_sensor_engine_beacon_keys_evicted_by_reason_total{reason=\"tracker_full\"} 0",
            "t1571_sensor_engine_beacon_tracker_bytes 1234",
            "t1571_sensor_loop_max_stall_ms 40",
            "t1571_sensor_metrics_accept_errors_total 0",
        ] {
            assert!(text.contains(want), "{want} missing:\n{text}");
        }
        assert!(m.healthy());
    }

    /// Every exported name is a field of the stats lines: its path resolves to a number
    /// (or an object of them, by its labels) in the serialised [`Stats`].
    #[test]
    fn every_metric_is_a_stats_field() {
        let v = serde_json::to_value(Stats::default()).unwrap();
        for e in EXPORTED {
            let found = v.pointer(&e.pointer());
            let ok = match (e.labels.len(), found) {
                (0, Some(n)) => n.is_u64(),
                (_, Some(o)) => !values(e, &v).is_empty() && o.is_object(),
                (_, None) => false,
            };
            assert!(
                ok,
                "{} is not a number field of the stats: {found:?}",
                e.path
            );
        }
        let mut names: Vec<String> = EXPORTED.iter().map(Export::name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), EXPORTED.len(), "two metrics of one name");
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

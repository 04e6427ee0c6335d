//! One row in one round: the storm beside its subject, and what the subject spent.

use std::{process::Command, time::Duration};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::{
    Bench, Row, Traffic,
    subject::{self, Kind, Running},
};

/// One row in one round.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Sample {
    pub round: u32,
    pub connects: u64,
    pub per_second: f64,
    /// Against no sensor on the same traffic in the same round.
    pub ratio: Option<f64>,
    /// The subject's utime + stime over the storm and its catch-up afterwards.
    pub cpu_seconds: Option<f64>,
    /// Its CPU use (% of one CPU) in the quiet second before the storm.
    pub idle_cpu_percent: Option<f64>,
    pub peak_rss_kib: Option<u64>,
    /// VmRSS once the subject has caught up after the storm.
    pub steady_rss_kib: Option<u64>,
    /// Seconds the subject kept working after the storm ended.
    pub catch_up_seconds: Option<f64>,
    /// Lines the subject printed (connect alerts or events, and a few status lines), as
    /// the harness's reader counted them, and their bytes.
    pub lines: Option<u64>,
    pub bytes: Option<u64>,
    /// Connection lines the sensor printed (`sensor.connections_printed`).
    pub printed: Option<u64>,
    /// Lines the sensor wrote to its outputs (`sensor.output_written`).
    pub written: Option<u64>,
    /// Lines the sensor dropped because its output queue was full: the reader did not keep
    /// up (`sensor.output_dropped`).
    pub output_dropped: Option<u64>,
    /// Connect records the kernel could not reserve (`sensor.kernel.records.connect.lost`).
    pub kernel_connect_lost: Option<u64>,
    /// Connects userspace handled (`sensor.connections` of `sensor-stopped`).
    pub handled: Option<u64>,
    /// Ring-buffer events lost (`sensor.lost_events_total`, or bpftrace's "Lost N events").
    pub lost: Option<u64>,
    /// Every counter of `sensor-stopped` whose name says "lost" or "dropped".
    pub loss_counters: Value,
    /// Alert latency, connect to line read, in ms (paced runs only).
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub latency_max_ms: Option<f64>,
    pub latency_samples: Option<usize>,
}

impl Bench {
    /// Starts the row's subject, runs the storm for `seconds` (paced at `rate` connects/s
    /// if given: then each connect line's latency is measured), waits for the subject to
    /// catch up, and stops it.
    pub(super) fn measure(
        &self,
        row: &Row,
        round: u32,
        seconds: f64,
        rate: Option<u32>,
    ) -> Result<Sample> {
        let log = self.logs.join(format!("{}-{}.stderr", row.name, round + 1));
        let running = match &row.subject {
            Some(kind) => Some(Running::start(kind, &self.sensor, &log, rate.is_some())?),
            None => None,
        };
        // Its CPU over a quiet second first: what it spends on the rest of the host (other
        // processes' lifecycle records, timers), to tell apart from what the storm costs.
        let (idle, before) = match &running {
            Some(r) => {
                let a = subject::cpu_seconds(r.pid())?;
                std::thread::sleep(Duration::from_secs(1));
                let b = subject::cpu_seconds(r.pid())?;
                (Some(b - a), Some(b))
            }
            None => (None, None),
        };
        let exe = match row.traffic {
            Traffic::Scan => &self.curl,
            _ => &self.storm,
        };
        let mut cmd = Command::new(exe);
        cmd.args(["--netns", &self.net.client_path()])
            .args(row.traffic.storm_args())
            .args(["--seconds", &seconds.to_string()]);
        if let Some(r) = rate {
            cmd.args(["--rate", &r.to_string()]);
        }
        let out = cmd
            .output()
            .with_context(|| format!("running {}", exe.display()))?;
        if !out.status.success() {
            bail!(
                "{cmd:?} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let storm: Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("storm printed {:?}", String::from_utf8_lossy(&out.stdout)))?;
        let connects = storm["connects"].as_u64().context("storm: no connects")?;
        if storm["errors"].as_u64() != Some(0) {
            eprintln!(
                "xtask bench: warning: the storm had {} errors besides RSTs (first: {})",
                storm["errors"], storm["first_error"]
            );
        }
        let mut s = Sample {
            connects,
            per_second: storm["per_second"].as_f64().unwrap_or(0.0),
            loss_counters: Value::Null,
            ..Default::default()
        };
        let Some(running) = running else {
            return Ok(s);
        };
        let pid = running.pid();
        let caught_up = subject::settle(pid, Duration::from_secs(30))?;
        let cpu = subject::cpu_seconds(pid)? - before.unwrap_or(0.0);
        let (peak, steady) = subject::memory_kib(pid)?;
        let o = running.stop(matches!(row.subject, Some(Kind::Bpftrace)))?;
        s.cpu_seconds = Some(cpu);
        s.idle_cpu_percent = idle.map(|i| i * 100.0);
        s.peak_rss_kib = Some(peak);
        s.steady_rss_kib = Some(steady);
        s.catch_up_seconds = Some(caught_up.as_secs_f64());
        s.lines = Some(o.lines);
        s.bytes = Some(o.bytes);
        if let Some(stopped) = &o.stopped {
            let sensor = &stopped["sensor"];
            s.handled = sensor["connections"].as_u64();
            s.lost = sensor["lost_events_total"].as_u64();
            s.printed = sensor["connections_printed"].as_u64();
            s.written = sensor["output_written"].as_u64();
            s.output_dropped = sensor["output_dropped"].as_u64();
            s.kernel_connect_lost = sensor["kernel"]["records"]["connect"]["lost"].as_u64();
            let mut counters = serde_json::Map::new();
            loss_counters(sensor, "", &mut counters);
            s.loss_counters = Value::Object(counters);
        } else if matches!(row.subject, Some(Kind::Bpftrace)) {
            let stderr = std::fs::read_to_string(&log).unwrap_or_default();
            s.lost = Some(o.bpftrace_lost + subject::bpftrace_lost(&stderr));
        } else if matches!(row.subject, Some(Kind::Sensor { .. })) {
            eprintln!(
                "xtask bench: warning: {} printed no sensor-stopped line; stderr:\n{}",
                row.label,
                subject::tail_of(&log)
            );
        }
        if rate.is_some() {
            let mut l = o.latencies_ns;
            l.sort_unstable();
            if !l.is_empty() {
                let at = |q: f64| l[((l.len() - 1) as f64 * q).round() as usize] as f64 / 1e6;
                s.latency_p50_ms = Some(at(0.5));
                s.latency_p99_ms = Some(at(0.99));
                s.latency_max_ms = Some(at(1.0));
            }
            s.latency_samples = Some(l.len());
        }
        Ok(s)
    }
}

/// Counters named "...lost..." or "...dropped..." anywhere in `v`, by dotted path.
fn loss_counters(v: &Value, path: &str, out: &mut serde_json::Map<String, Value>) {
    if let Value::Object(m) = v {
        for (k, v) in m {
            let p = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            if v.is_number() && (k.contains("lost") || k.contains("dropped")) {
                out.insert(p, v.clone());
            } else {
                loss_counters(v, &p, out);
            }
        }
    }
}

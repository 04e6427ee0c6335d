//! Command-line arguments shared by the subcommands, and the one parser for every
//! interval flag.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Result;
use clap::{Parser, ValueEnum};

use crate::{
    detect::{beacon, engine::Config, rollup},
    kernel::probe::ProbeChoice,
    output::sink::Output,
};

/// A number of seconds in `lo..=hi`, for every interval flag.
pub fn seconds(
    lo: f64,
    hi: f64,
) -> impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync + 'static {
    move |s: &str| match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (lo..=hi).contains(&v) => Ok(Duration::from_secs_f64(v)),
        _ => Err(format!(
            "{s:?} is not a number of seconds between {lo} and {hi}"
        )),
    }
}

pub const DEFAULT_RING_BUFFER: u32 = 1 << 20;

#[derive(Parser)]
pub struct RunArgs {
    /// Also print every observed connection, scored or not, as `event.kind: "event"`.
    #[arg(long)]
    pub all: bool,
    /// Policy file (TOML); built-in defaults are the reference model's Linux lists.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Size of each of the three ring buffers (TCP connects; exec/fork/exit; UDP, listens
    /// and inbound opens), in bytes: a power of two, at least one page. The kernel
    /// allocates all three: 3 x BYTES of locked memory (3 MiB by default).
    #[arg(long, default_value_t = DEFAULT_RING_BUFFER, value_name = "BYTES")]
    pub ring_buffer_size: u32,
    /// Kernel hook: auto tries fentry, then kprobe, then the BTF tracepoint, then the
    /// classic tracepoint (which needs tracefs, mounted privately if missing).
    #[arg(long, value_enum, default_value = "auto")]
    pub probe: ProbeChoice,
    /// Kernel-side debug messages (aya-log), relayed to stderr. Off keeps them off the hot path.
    #[arg(long, value_enum, default_value = "off")]
    pub kernel_log: KernelLog,
    /// Longest a record may wait before the sensor reads it, in milliseconds. The kernel
    /// wakes the sensor when a quarter of the ring buffer is pending or no wakeup was sent
    /// for this long, and a timer armed after busy drains picks up the rest: a busy host
    /// is not charged one wakeup per connect, an idle one no timer. 0 wakes on every record.
    #[arg(long, default_value_t = 2, value_name = "MS", value_parser = clap::value_parser!(u64).range(0..=1000))]
    pub max_delay: u64,
    /// How often kernel loss counters are checked, in seconds.
    #[arg(long, default_value = "1", value_name = "SECONDS", value_parser = seconds(0.01, 3600.0))]
    pub stats_interval: Duration,
    /// How often a `metric` event with the sensor's counters (connections, attribution,
    /// losses, process table size) is printed, in seconds.
    #[arg(long, default_value = "60", value_name = "SECONDS", value_parser = seconds(0.01, 3600.0))]
    pub metrics_interval: Duration,
    /// procfs mount to enrich from (the host's /proc when run in a container).
    #[arg(long, default_value = "/proc", value_name = "PATH")]
    pub proc_root: PathBuf,
    /// The host's root directory, for its account database and its binaries' fingerprints.
    /// Default: `/proc/1/root` (the host's `/` on the host and in a hostPID container) when
    /// readable, else `/`.
    #[arg(long, value_name = "PATH")]
    pub host_root: Option<PathBuf>,
    /// Most processes the process table holds (exited ones are evicted first).
    #[arg(long, default_value_t = 65_536, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_processes: u32,
    /// How long exited processes stay in the table for late events, in seconds.
    #[arg(long, default_value = "30", value_name = "SECONDS", value_parser = seconds(0.01, 3600.0))]
    pub exit_grace: Duration,
    /// Where lines go: stdout (JSON lines), journald (one structured entry per line, over
    /// the native protocol), or both.
    #[arg(long, value_enum, default_value = "stdout")]
    pub output: Output,
    /// Serve Prometheus metrics (`/metrics`) and a health check (`/healthz`) on this
    /// address, e.g. 127.0.0.1:9464 (an IPv6 address may come without brackets, as
    /// `$(POD_IP):9464` gives it). Off by default.
    #[arg(long, value_name = "ADDR", value_parser = crate::output::metrics::parse_addr)]
    pub metrics: Option<SocketAddr>,
    /// `host.name` in every line. In a pod, the node's name from the downward API
    /// (NODE_NAME); default: the kernel's host name.
    #[arg(long, env = "NODE_NAME", value_name = "NAME")]
    pub host_name: Option<String>,
    /// Check the command line and the policy, then exit without loading anything.
    #[arg(long)]
    pub dry_run: bool,
    /// Test hook: SIGUSR1 blocks the event loop for 10 s (a stalled reader, for /healthz
    /// and watchdog tests).
    #[cfg(feature = "test-hooks")]
    #[arg(long, hide = true)]
    pub test_stall_on_usr1: bool,
    /// Keep every capability after the programs are attached (debugging). By default the
    /// sensor keeps only CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH (and CAP_BPF on kernels
    /// that want it for map access), and sets no_new_privs.
    #[arg(long)]
    pub keep_capabilities: bool,
    /// Output format: ECS JSON, or Sysmon Event ID 3 field names for connections
    /// (Image, DestinationIp, ...; the sensor's own events stay ECS).
    #[arg(long, value_enum, default_value = "ecs")]
    pub format: OutputFormat,
    #[command(flatten)]
    pub engine: EngineArgs,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum OutputFormat {
    Ecs,
    SysmonJson,
}

impl From<OutputFormat> for crate::output::Format {
    fn from(f: OutputFormat) -> Self {
        match f {
            OutputFormat::Ecs => Self::Ecs,
            OutputFormat::SysmonJson => Self::SysmonJson,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub enum KernelLog {
    Off = 0,
    Error = 1,
    Warn = 2,
    Info = 3,
    Debug = 4,
    Trace = 5,
}

impl KernelLog {
    /// aya-log levels: Error = 1 ... Trace = 5; 0 disables every kernel log statement.
    pub fn level(self) -> u8 {
        self as u8
    }
}

/// The engine's command-line settings, shared by `run` and `replay`.
#[derive(clap::Args)]
pub struct EngineArgs {
    /// Rollup window, seconds: one summary per (host, executable, user, parent) per window.
    #[arg(long, default_value = "300", value_name = "SECONDS", value_parser = seconds(1.0, 86_400.0))]
    pub rollup_window: Duration,
    /// Flood-control period, seconds: identical alerts within it are folded; 0 disables.
    #[arg(long, default_value = "10", value_name = "SECONDS", value_parser = seconds(0.0, 3600.0))]
    pub fold_period: Duration,
    /// Connections at a regular interval before a beacon is flagged (3 to 33: the detector
    /// keeps the last 33 connection times per destination).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(3..=33))]
    pub beacon_min_connections: u32,
    /// Destinations (executable, address, port) the beacon detector tracks at most (and
    /// 1.5 KiB each of memory); one executable holds at most a quarter of them, and a full
    /// tracker evicts from the executable holding the most.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(16..=1_000_000))]
    pub beacon_max_keys: u32,
}

impl EngineArgs {
    pub fn config(&self, all: bool) -> Config {
        let d = Config::default();
        Config {
            all,
            rollup: rollup::Config {
                window_ns: self.rollup_window.as_nanos() as i128,
                ..d.rollup
            },
            beacon: beacon::Config {
                min_connections: self.beacon_min_connections as usize,
                max_keys: self.beacon_max_keys as usize,
                ..d.beacon
            },
            fold_ns: self.fold_period.as_nanos() as i128,
            ..d
        }
    }
}

/// The host's `/`: as given (and then it must be readable), else the first readable default.
pub fn host_root(given: Option<PathBuf>) -> Result<PathBuf> {
    let readable = |p: &std::path::Path| std::fs::read_dir(p.join("etc")).is_ok();
    match given {
        Some(p) if readable(&p) => Ok(p),
        Some(p) => anyhow::bail!(
            "--host-root {}: cannot read {}/etc",
            p.display(),
            p.display()
        ),
        None => Ok(["/proc/1/root", "/"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| readable(p))
            .unwrap_or_else(|| PathBuf::from("/"))),
    }
}

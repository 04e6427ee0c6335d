//! T1571 sensor: outbound TCP connects from the kernel, scored for command and control
//! over non-standard ports, as ECS JSON lines.
//!
//! Data path: `loader`/`attach` (kernel hooks) -> `events` (ring buffer records) ->
//! `procs`/`users`/`container` (enrich) -> `score` (policy) -> `engine` (allow rules, beacons,
//! rollups, flood control) -> `output` (JSON), driven by `run`. `replay` feeds recorded lines
//! to the same `engine`; `explain` prints one connection's reason chain.

mod attach;
mod beacon;
mod btf;
mod cgroups;
mod check;
mod clock;
#[cfg(test)]
mod compare;
mod container;
mod engine;
mod events;
mod explain;
mod fold;
mod glob;
mod identity;
mod layout;
mod loader;
mod output;
mod pipeline;
mod policy;
mod procs;
mod proctable;
mod replay;
mod rollup;
mod run;
mod score;
#[cfg(test)]
mod testing;
#[cfg(test)]
mod testrng;
mod tracefs;
mod users;

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

use crate::{attach::Probe, policy::Policy};

#[derive(Parser)]
#[command(
    name = "sensor",
    version,
    about = "eBPF sensor for C2 over non-standard ports (MITRE ATT&CK T1571)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Capture outbound TCP connects and print scored alerts as JSON lines on stdout.
    Run(RunArgs),
    /// Check whether the sensor can run here and which kernel hook it would use.
    /// Exit status 0 when it can, 1 when it cannot.
    Check {
        #[arg(long, default_value_t = DEFAULT_RING_BUFFER, value_name = "BYTES")]
        ring_buffer_size: u32,
        /// Only print, as JSON, the struct offsets read from this kernel's BTF.
        #[arg(long)]
        layout: bool,
    },
    /// Benchmark baseline: attach an empty program to the connect tracepoint and wait for
    /// SIGINT/SIGTERM (used by `cargo xtask bench`).
    #[command(hide = true)]
    BenchBaseline {
        /// On the BTF tracepoint instead of the classic one.
        #[arg(long)]
        btf: bool,
    },
    /// Print the effective policy as TOML.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Explain how one connection would be scored: verdict and the reason chain.
    Score(explain::ScoreArgs),
    /// Re-score JSON lines recorded by `sensor run --all` with the current policy.
    Replay(replay::ReplayArgs),
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Print the policy in force (built-in defaults, or --config).
    Show {
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
    },
}

const DEFAULT_RING_BUFFER: u32 = 1 << 20;

#[derive(Parser)]
struct RunArgs {
    /// Also print every observed connection, scored or not, as `event.kind: "event"`.
    #[arg(long)]
    all: bool,
    /// Policy file (TOML); built-in defaults are the reference model's Linux lists.
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Ring buffer size in bytes: a power of two, at least one page.
    #[arg(long, default_value_t = DEFAULT_RING_BUFFER, value_name = "BYTES")]
    ring_buffer_size: u32,
    /// Kernel hook: auto tries fentry, then kprobe, then the BTF tracepoint, then the
    /// classic tracepoint (which needs tracefs, mounted privately if missing).
    #[arg(long, value_enum, default_value = "auto")]
    probe: ProbeChoice,
    /// Kernel-side debug messages (aya-log), relayed to stderr. Off keeps them off the hot path.
    #[arg(long, value_enum, default_value = "off")]
    kernel_log: KernelLog,
    /// Longest a record may wait before the sensor reads it, in milliseconds. The kernel
    /// wakes the sensor when a quarter of the ring buffer is pending or no wakeup was sent
    /// for this long, and a timer armed after busy drains picks up the rest: a busy host
    /// is not charged one wakeup per connect, an idle one no timer. 0 wakes on every record.
    #[arg(long, default_value_t = 5, value_name = "MS", value_parser = clap::value_parser!(u64).range(0..=1000))]
    max_delay: u64,
    /// How often kernel loss counters are checked, in seconds.
    #[arg(long, default_value_t = 1.0, value_name = "SECONDS", value_parser = parse_interval)]
    stats_interval: f64,
    /// How often a `metric` event with the sensor's counters (connections, attribution,
    /// losses, process table size) is printed, in seconds.
    #[arg(long, default_value_t = 60.0, value_name = "SECONDS", value_parser = parse_interval)]
    metrics_interval: f64,
    /// procfs mount to enrich from (the host's /proc when run in a container).
    #[arg(long, default_value = "/proc", value_name = "PATH")]
    proc_root: PathBuf,
    /// The host's root directory, for its account database and its binaries' fingerprints.
    /// Default: `/proc/1/root` (the host's `/` on the host and in a hostPID container) when
    /// readable, else `/`.
    #[arg(long, value_name = "PATH")]
    host_root: Option<PathBuf>,
    /// Most processes the process table holds (exited ones are evicted first).
    #[arg(long, default_value_t = 65_536, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    max_processes: u32,
    /// How long exited processes stay in the table for late events, in seconds.
    #[arg(long, default_value_t = 30.0, value_name = "SECONDS", value_parser = parse_interval)]
    exit_grace: f64,
    #[command(flatten)]
    engine: engine::EngineArgs,
}

#[derive(Clone, Copy, ValueEnum)]
enum ProbeChoice {
    Auto,
    Fentry,
    Kprobe,
    #[value(name = "tp_btf", alias = "tp-btf")]
    TpBtf,
    Tracepoint,
}

#[derive(Clone, Copy, ValueEnum)]
enum KernelLog {
    Off,
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

fn parse_interval(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.01..=3600.0).contains(&v) => Ok(v),
        _ => Err(format!(
            "{s:?} is not a number of seconds between 0.01 and 3600"
        )),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Kernel-side messages (aya-log) arrive under the eBPF crate's target: let them through
    // at the level asked for, whatever RUST_LOG says about the rest.
    let kernel_filter = match &cli.command {
        Command::Run(a) if !matches!(a.kernel_log, KernelLog::Off) => ",sensor_ebpf=trace",
        _ => "",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .parse_filters(kernel_filter)
        .format_target(false)
        .init();
    let result = match cli.command {
        Command::Run(args) => run(args).map(|()| true),
        Command::Check { layout: true, .. } => check::print_layout(),
        Command::Check {
            ring_buffer_size, ..
        } => check::check(ring_buffer_size),
        Command::BenchBaseline { btf } => loader::baseline(btf).map(|()| true),
        Command::Policy {
            command: PolicyCommand::Show { config },
        } => load_policy(config.as_deref()).map(|p| {
            print!("{}", p.to_toml());
            true
        }),
        Command::Score(args) => explain::run(args).map(|()| true),
        Command::Replay(args) => replay::run(args).map(|()| true),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("sensor: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_policy(path: Option<&std::path::Path>) -> Result<Policy> {
    path.map_or_else(|| Ok(Policy::default()), Policy::load)
}

/// The host's `/`: as given (and then it must be readable), else the first readable default.
fn host_root(given: Option<PathBuf>) -> Result<PathBuf> {
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

fn run(args: RunArgs) -> Result<()> {
    let policy = load_policy(args.config.as_deref())?;
    loader::validate_ring_buffer_size(args.ring_buffer_size).context("--ring-buffer-size")?;
    let probes = match args.probe {
        ProbeChoice::Auto => attach::AUTO_ORDER.to_vec(),
        ProbeChoice::Fentry => vec![Probe::Fentry],
        ProbeChoice::Kprobe => vec![Probe::Kprobe],
        ProbeChoice::TpBtf => vec![Probe::TpBtf],
        ProbeChoice::Tracepoint => vec![Probe::Tracepoint],
    };
    // aya-log levels: Error = 1 ... Trace = 5; 0 disables every kernel log statement.
    let kernel_log_level = match args.kernel_log {
        KernelLog::Off => 0,
        KernelLog::Error => 1,
        KernelLog::Warn => 2,
        KernelLog::Info => 3,
        KernelLog::Debug => 4,
        KernelLog::Trace => 5,
    };
    let host_root = host_root(args.host_root)?;
    let identities = identity::Identities::scan(&policy, &host_root);
    let opts = run::Options {
        load: loader::Options {
            ring_buffer_bytes: args.ring_buffer_size,
            probes,
            kernel_log_level,
            // Wake the reader per quarter ring; the drain timer handles the rest.
            wakeup_bytes: if args.max_delay == 0 {
                0
            } else {
                u64::from(args.ring_buffer_size / 4)
            },
            max_delay: Duration::from_millis(args.max_delay),
        },
        pipeline: pipeline::Pipeline {
            engine: engine::Engine::new(
                policy.clone(),
                args.engine.config(args.all),
                pipeline::host_name(),
            ),
            policy,
            table: proctable::ProcTable::new(
                procs::Procfs::new(args.proc_root),
                identities,
                args.max_processes as usize,
                Duration::from_secs_f64(args.exit_grace),
            ),
            users: users::Users::new(host_root.join("etc/passwd")),
            host_name: pipeline::host_name(),
            clock: clock::BootClock::sync(),
            counters: Default::default(),
        },
        stats_interval: Duration::from_secs_f64(args.stats_interval),
        max_delay: Duration::from_millis(args.max_delay),
        metrics_interval: Duration::from_secs_f64(args.metrics_interval),
        config: args.config,
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?
        .block_on(run::run(opts))
}

#[cfg(test)]
mod tests {
    /// clap checks the whole command tree (unique names, groups, defaults) only when asked
    /// or in a debug build's first parse of that subcommand: ask once, for all of them.
    #[test]
    fn command_line_definition_is_valid() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}

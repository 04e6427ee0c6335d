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
mod layout;
mod loader;
mod output;
mod pipeline;
mod policy;
mod procs;
mod replay;
mod rollup;
mod run;
mod score;
#[cfg(test)]
mod testrng;
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
    /// Kernel hook: auto tries fentry, then kprobe, then the tracepoint.
    #[arg(long, value_enum, default_value = "auto")]
    probe: ProbeChoice,
    /// Kernel-side debug messages (aya-log), relayed to stderr. Off keeps them off the hot path.
    #[arg(long, value_enum, default_value = "off")]
    kernel_log: KernelLog,
    /// How often kernel loss counters are checked, in seconds.
    #[arg(long, default_value_t = 1.0, value_name = "SECONDS", value_parser = parse_interval)]
    stats_interval: f64,
    /// procfs mount to enrich from (the host's /proc when run in a container).
    #[arg(long, default_value = "/proc", value_name = "PATH")]
    proc_root: PathBuf,
    /// Account database for user names.
    #[arg(long, default_value = "/etc/passwd", value_name = "PATH")]
    passwd: PathBuf,
    #[command(flatten)]
    engine: engine::EngineArgs,
}

#[derive(Clone, Copy, ValueEnum)]
enum ProbeChoice {
    Auto,
    Fentry,
    Kprobe,
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
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(args).map(|()| true),
        Command::Check { ring_buffer_size } => check::check(ring_buffer_size),
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

fn run(args: RunArgs) -> Result<()> {
    let policy = load_policy(args.config.as_deref())?;
    loader::validate_ring_buffer_size(args.ring_buffer_size).context("--ring-buffer-size")?;
    let probes = match args.probe {
        ProbeChoice::Auto => attach::AUTO_ORDER.to_vec(),
        ProbeChoice::Fentry => vec![Probe::Fentry],
        ProbeChoice::Kprobe => vec![Probe::Kprobe],
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
    let opts = run::Options {
        load: loader::Options {
            ring_buffer_bytes: args.ring_buffer_size,
            probes,
            kernel_log_level,
        },
        pipeline: pipeline::Pipeline {
            engine: engine::Engine::new(
                policy.clone(),
                args.engine.config(args.all),
                pipeline::host_name(),
            ),
            policy,
            procfs: procs::Procfs::new(args.proc_root),
            users: users::Users::new(args.passwd),
            host_name: pipeline::host_name(),
            clock: clock::BootClock::sync(),
            all: args.all,
            counters: Default::default(),
        },
        stats_interval: Duration::from_secs_f64(args.stats_interval),
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

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

use std::{net::IpAddr, path::PathBuf, process::ExitCode, time::Duration};

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
    Score(ScoreArgs),
    /// Re-score JSON lines recorded by `sensor run --all` with the current policy.
    Replay(ReplayArgs),
}

#[derive(Parser)]
struct ScoreArgs {
    /// Executable path (or bare name) of the connecting process.
    #[arg(long)]
    exe: String,
    /// Destination address.
    #[arg(long)]
    dst: IpAddr,
    /// Destination port.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    port: u16,
    /// User name, or a numeric uid.
    #[arg(long)]
    user: Option<String>,
    /// Parent executable path.
    #[arg(long)]
    parent: Option<String>,
    #[arg(long)]
    host: Option<String>,
    #[arg(long)]
    container: Option<String>,
    #[arg(long)]
    k8s_namespace: Option<String>,
    /// When (RFC 3339), for allow-rule schedules; default now.
    #[arg(long)]
    time: Option<String>,
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Parser)]
struct ReplayArgs {
    /// Recorded JSON lines; `-` or nothing reads stdin.
    file: Option<PathBuf>,
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Also print connections that do not alert.
    #[arg(long)]
    all: bool,
    #[command(flatten)]
    engine: EngineArgs,
}

#[derive(clap::Args)]
struct EngineArgs {
    /// Rollup window, seconds: one summary per (host, executable, user, parent) per window.
    #[arg(long, default_value_t = 300.0, value_name = "SECONDS", value_parser = parse_window)]
    rollup_window: f64,
    /// Flood-control period, seconds: identical alerts within it are folded; 0 disables.
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS", value_parser = parse_fold)]
    fold_period: f64,
    /// Connections at a regular interval before a beacon is flagged.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(3..=1000))]
    beacon_min_connections: u32,
}

impl EngineArgs {
    fn config(&self, all: bool) -> engine::Config {
        let d = engine::Config::default();
        engine::Config {
            all,
            rollup: rollup::Config {
                window_ns: (self.rollup_window * 1e9) as i128,
                ..d.rollup
            },
            beacon: beacon::Config {
                min_connections: self.beacon_min_connections as usize,
                ..d.beacon
            },
            fold_ns: (self.fold_period * 1e9) as i128,
            ..d
        }
    }
}

fn parse_window(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (1.0..=86_400.0).contains(&v) => Ok(v),
        _ => Err(format!(
            "{s:?} is not a number of seconds between 1 and 86400"
        )),
    }
}

fn parse_fold(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=3600.0).contains(&v) => Ok(v),
        _ => Err(format!(
            "{s:?} is not a number of seconds between 0 and 3600"
        )),
    }
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
    engine: EngineArgs,
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
        Command::Score(args) => score_cmd(args).map(|()| true),
        Command::Replay(args) => replay_cmd(args).map(|()| true),
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

fn score_cmd(a: ScoreArgs) -> Result<()> {
    let policy = load_policy(a.config.as_deref())?;
    let ts_ns = match &a.time {
        Some(t) => clock::parse_rfc3339(t)
            .with_context(|| format!("--time {t:?} is not an RFC 3339 time"))?,
        None => clock::BootClock::now_unix_ns(),
    };
    let (user_id, user_name) = match a.user {
        Some(u) => match u.parse::<u32>() {
            Ok(uid) => (Some(uid), None),
            Err(_) => (None, Some(u)),
        },
        None => (None, None),
    };
    let obs = engine::Obs {
        ts_ns,
        comm: Some(procs::exe_name(&a.exe).to_string()),
        executable: Some(a.exe),
        pid: None,
        parent_executable: a.parent,
        user_id,
        user_name,
        dst: Some(a.dst),
        port: a.port,
        host_name: a.host,
        container_id: a.container,
        kubernetes_namespace: a.k8s_namespace,
    };
    let doc = explain::explain(&policy, &obs);
    if a.json {
        println!("{doc}");
    } else {
        print!("{}", explain::render(&doc));
    }
    Ok(())
}

fn replay_cmd(a: ReplayArgs) -> Result<()> {
    let policy = load_policy(a.config.as_deref())?;
    let mut engine = engine::Engine::new(policy, a.engine.config(a.all), "replay".into());
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut err = std::io::stderr();
    match a.file.as_deref() {
        None => replay::replay(&mut engine, std::io::stdin().lock(), &mut out, &mut err),
        Some(p) if p.as_os_str() == "-" => {
            replay::replay(&mut engine, std::io::stdin().lock(), &mut out, &mut err)
        }
        Some(p) => {
            let f =
                std::fs::File::open(p).with_context(|| format!("cannot open {}", p.display()))?;
            replay::replay(&mut engine, std::io::BufReader::new(f), &mut out, &mut err)
        }
    }
    .map(|_| ())
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
    let host_name = pipeline::host_name();
    let opts = run::Options {
        load: loader::Options {
            ring_buffer_bytes: args.ring_buffer_size,
            probes,
            kernel_log_level,
        },
        pipeline: pipeline::Pipeline {
            policy: policy.clone(),
            procfs: procs::Procfs::new(args.proc_root),
            users: users::Users::new(args.passwd),
            host_name: host_name.clone(),
            clock: clock::BootClock::sync(),
            all: args.all,
            counters: Default::default(),
            engine: engine::Engine::new(policy, args.engine.config(args.all), host_name.clone()),
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

//! The command line: clap definitions and dispatch to `cmd`.

use std::{path::PathBuf, process::ExitCode};

use clap::{CommandFactory, Parser, Subcommand};

use crate::cmd::{self, run::KernelLog};

#[derive(Parser)]
#[command(
    name = "t1571-sensor",
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
    Run(cmd::run::RunArgs),
    /// Check whether the sensor can run here and which kernel hook it would use.
    /// Exit status 0 when it can, 1 when it cannot.
    Check {
        #[arg(long, default_value_t = cmd::run::DEFAULT_RING_BUFFER, value_name = "BYTES")]
        ring_buffer_size: u32,
        /// Only print, as JSON, the struct offsets read from this kernel's BTF.
        #[arg(long)]
        layout: bool,
    },
    /// Benchmark baseline: attach an empty program to the connect tracepoint and wait for
    /// SIGINT/SIGTERM (used by `cargo xtask bench`).
    #[cfg(feature = "test-hooks")]
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
    Score(cmd::explain::ScoreArgs),
    /// Re-score JSON lines recorded by `t1571-sensor run --all` with the current policy.
    Replay(cmd::replay::ReplayArgs),
    /// Live view of the sensor's alerts in the terminal (journal, file, stdin, or --live).
    Watch(cmd::watch::WatchArgs),
    /// Print the man page (roff) on stdout.
    #[command(hide = true)]
    Man,
    /// Write the JSON Schema of every line kind into DIR (deploy/schema/ in the source).
    #[command(hide = true)]
    Schema {
        dir: PathBuf,
        /// Only compare DIR with the types; fail when it differs.
        #[arg(long)]
        check: bool,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Print the policy in force (built-in defaults, or --config).
    Show {
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
    },
    /// Validate a policy file and print what it changes from the defaults (before a reload).
    Check {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
}

/// Parses the command line, runs the subcommand, and maps the result to an exit status.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // Kernel-side messages (aya-log) arrive under the eBPF crate's target: let them through
    // at the level asked for, whatever RUST_LOG says about the rest.
    let kernel_filter = match &cli.command {
        Command::Run(a) if !matches!(a.kernel_log, KernelLog::Off) => ",sensor_ebpf=trace",
        _ => "",
    };
    let mut logger =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    logger.parse_filters(kernel_filter).format_target(false);
    match &cli.command {
        // Log lines go to the journal too when alerts do, as entries of their own.
        Command::Run(a) if a.output.journald() => {
            let level = logger.build().filter();
            let _ = log::set_boxed_logger(Box::new(crate::output::journald::Logger { level }));
            log::set_max_level(level);
        }
        _ => logger.init(),
    }
    let result = match cli.command {
        Command::Run(args) => cmd::run::main(args).map(|()| true),
        Command::Check { layout: true, .. } => cmd::check::print_layout(),
        Command::Check {
            ring_buffer_size, ..
        } => cmd::check::check(ring_buffer_size),
        #[cfg(feature = "test-hooks")]
        Command::BenchBaseline { btf } => crate::kernel::load::baseline(btf).map(|()| true),
        Command::Policy {
            command: PolicyCommand::Show { config },
        } => cmd::policy::show(config.as_deref()).map(|()| true),
        Command::Policy {
            command: PolicyCommand::Check { file },
        } => cmd::policy::check(&file).map(|()| true),
        Command::Watch(args) => cmd::watch::run(args).map(|()| true),
        Command::Man => man().map(|()| true),
        Command::Schema { dir, check } => cmd::schema::run(&dir, check).map(|()| true),
        Command::Score(args) => cmd::explain::run(args).map(|()| true),
        Command::Replay(args) => cmd::replay::run(args).map(|()| true),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("t1571-sensor: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The man page, rendered from this command line (clap_mangen), as section 8.
fn man() -> anyhow::Result<()> {
    let cmd = Cli::command();
    let mut out = std::io::stdout().lock();
    clap_mangen::Man::new(cmd)
        .section("8")
        .render(&mut out)
        .map_err(|e| anyhow::anyhow!("writing the man page: {e}"))
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

//! `sensor watch`: the live view a sysadmin runs over ssh. A refreshing terminal table
//! (ratatui on crossterm): alerts newest first in severity colours, the current window's
//! top processes, addresses and ports, and counters. Lines come from the journal
//! (`journalctl -f`, only entries journald attributes to the sensor), a file, stdin, or a
//! sensor this command starts itself (`--live`). Filter by severity, process and port;
//! pause; quit on q. When stdout is not a terminal, matching alerts are printed as plain
//! lines instead. Either way every text from an alert passes [`printable`] first.
//!
//! The model (`alert`, `filter`, `state`), where lines come from (`source`) and the two
//! views (`tui`, `plain`) are separate modules.

mod alert;
mod filter;
mod plain;
mod source;
mod state;
mod tui;

use std::{io::IsTerminal, path::PathBuf};

use anyhow::{Context, Result, bail};

pub use alert::{Alert, Endpoint, Flow, printable};
pub use filter::{Filter, MinSeverity};
pub use source::{DEFAULT_UNIT, Entry, Origin};
pub use state::State;

#[derive(clap::Args, Debug, Clone)]
pub struct WatchArgs {
    /// Read JSON lines from this file (followed as it grows); `-` for stdin.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["journal", "live"])]
    file: Option<PathBuf>,
    /// Follow the sensor's entries in the journal (the default on a terminal). Entries are
    /// taken only when journald itself attributes them to the sensor: the unit (`--unit`)
    /// and uid 0, or `--pid` and uid 0; never by identifier, which any user can write.
    #[arg(long, conflicts_with = "live")]
    journal: bool,
    /// The sensor's systemd unit, in the journal [default: t1571-sensor.service].
    #[arg(long, value_name = "NAME", conflicts_with_all = ["file", "live", "pid"])]
    unit: Option<String>,
    /// A sensor started by hand (as root), by its process id, in the journal of this boot.
    #[arg(long, value_name = "PID", conflicts_with_all = ["file", "live"])]
    pid: Option<u32>,
    /// Start a sensor in-process-tree (`t1571-sensor run`, as root) and watch its output.
    #[arg(long)]
    live: bool,
    /// Show only alerts of at least this severity.
    #[arg(long, value_enum, default_value = "low")]
    severity: MinSeverity,
    /// Show only processes whose executable contains this text.
    #[arg(long, value_name = "TEXT")]
    process: Option<String>,
    /// Show only this port: where an outbound flow goes, a listener's own port for a
    /// listen or an inbound connection.
    #[arg(long, value_name = "PORT")]
    port: Option<u16>,
}

pub fn run(args: WatchArgs) -> Result<()> {
    let filter = Filter {
        severity: args.severity,
        process: args.process.clone(),
        port: args.port,
    };
    let origin = match (args.pid, &args.unit) {
        (Some(pid), _) => Origin::Pid(pid),
        (None, unit) => Origin::Unit(unit.as_deref().unwrap_or(DEFAULT_UNIT).to_string()),
    };
    let source = source::open(&source::Choice {
        file: args.file.as_deref(),
        live: args.live,
        // Naming the sensor names the journal as the source.
        journal: args.journal || args.pid.is_some() || args.unit.is_some(),
        origin,
    })?;
    let mut state = State::new(filter);
    if !std::io::stdout().is_terminal() {
        return plain::plain(&source, &mut state);
    }
    let mut terminal = ratatui::try_init().context("opening the terminal")?;
    let r = tui::tui(&source, &mut state, &mut terminal);
    ratatui::restore();
    r
}

/// Checks the arguments before anything starts (used by the CLI's validation).
pub fn validate(args: &WatchArgs) -> Result<()> {
    if let Some(path) = &args.file
        && path.as_os_str() != "-"
        && !path.exists()
    {
        bail!("--file {}: no such file", path.display());
    }
    Ok(())
}

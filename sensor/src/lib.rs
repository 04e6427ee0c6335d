//! T1571 sensor: outbound TCP connects from the kernel, scored for command and control
//! over non-standard ports, as ECS JSON lines.
//!
//! The modules are the data path, in order; each imports only from the ones before it:
//! `kernel` (load, attach, decode ring-buffer records) -> `enrich` (process table, procfs,
//! identity, users, containers) -> `detect` (policy, scoring, allow rules, beacons,
//! rollups, flood control) -> `output` (ECS JSON) -> `pipeline` (the four stages run for
//! each record) -> `cmd` (one module per subcommand; `run` and `explain` use all four
//! stages too) -> `cli` (clap and dispatch).

pub mod kernel;

pub mod enrich;

pub mod detect;

pub mod output;

pub mod pipeline;

pub mod cmd;

pub mod cli;

#[cfg(test)]
mod testing;
#[cfg(test)]
mod testrng;

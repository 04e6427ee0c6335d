//! Per-record work after the ring buffer: lifecycle records update the process table;
//! connects are attributed (table, then /proc), scored and formatted.

use std::{io::Write, sync::Arc};

use anyhow::Result;
use serde_json::{Value, json};

use crate::{
    detect::{engine::Engine, policy::Policy, subject::Subject},
    enrich::{Enriched, procfs::ProcessInfo, proctable::ProcTable, users::Users},
    kernel::records::{Connection, Record},
    output::{self, clock::BootClock},
};

/// Counters reported in the status events (and, later, as metrics).
#[derive(Debug, Default, Clone, Copy)]
pub struct Counters {
    pub connections: u64,
    /// Connections whose executable was known.
    pub attributed: u64,
    pub alerts: u64,
    pub malformed: u64,
    /// Reads of the kernel's loss counter that failed (the sensor carries on).
    pub loss_read_errors: u64,
    pub execs: u64,
    pub forks: u64,
    pub exits: u64,
}

pub struct Pipeline {
    pub table: ProcTable,
    pub users: Users,
    pub host_name: String,
    /// ECS stamping (ecs, agent, host, event.id) and the output format.
    pub output: output::Context,
    pub clock: BootClock,
    pub counters: Counters,
    /// Scoring, allow rules, beacons, rollups, flood control: decides what is printed.
    /// It owns the policy.
    pub engine: Engine<Enriched>,
}

impl Pipeline {
    pub fn handle(&mut self, record: &Record, out: &mut impl Write) -> Result<()> {
        match record {
            Record::Connect(c) => self.connect(c, out)?,
            Record::Exec(e) => {
                self.counters.execs += 1;
                self.table.on_exec(e);
            }
            Record::Fork(t) => {
                self.counters.forks += 1;
                self.table.on_fork(t);
            }
            Record::Exit(t) => {
                self.counters.exits += 1;
                self.table.on_exit(t);
            }
        }
        Ok(())
    }

    fn connect(&mut self, conn: &Connection, out: &mut impl Write) -> Result<()> {
        self.counters.connections += 1;
        let (mut proc, source) = match self.table.resolve(conn.tgid, conn.start_time_ns, conn.ppid)
        {
            Some((info, src)) => (info, Some(src.as_str())),
            // Nobody knows the process: keep what the kernel gave.
            None => (
                ProcessInfo {
                    ppid: (conn.ppid != 0).then_some(conn.ppid),
                    ..Default::default()
                },
                None,
            ),
        };
        if proc.executable.is_some() {
            self.counters.attributed += 1;
        }
        // The kernel's cgroup id names the container when nothing else did.
        if proc.container_id.is_none() {
            proc.container_id = self.table.cgroups.container_id(conn.cgroup_id);
        }
        let enriched = Enriched {
            conn: conn.clone(),
            proc,
            user_name: self.users.name(conn.uid).map(str::to_string),
            host_name: self.host_name.clone(),
            attribution: source,
            unix_ns: self.clock.to_unix_ns(conn.boot_ns),
        };
        // Every connection goes to the engine (beacons and allow counts need the unscored
        // too); only what it prints is rendered.
        let subject = Subject::from_enriched(&enriched);
        let outcome = self.engine.decide(&subject, move || enriched);
        if outcome.alert {
            self.counters.alerts += 1;
        }
        outcome
            .lines
            .iter()
            .try_for_each(|line| output::write_line(out, &output::render(line, &self.output)))
    }

    /// Writes the lines due by `now_ns` (ended fold periods, rollup windows, summaries).
    pub fn tick(&mut self, now_ns: i128, out: &mut impl Write) -> Result<()> {
        let lines = self.engine.tick(now_ns);
        lines
            .iter()
            .try_for_each(|line| output::write_line(out, &output::render(line, &self.output)))
    }

    /// Writes everything the engine holds, at exit.
    pub fn finish(&mut self, now_ns: i128, out: &mut impl Write) -> Result<()> {
        let lines = self.engine.finish(now_ns);
        lines
            .iter()
            .try_for_each(|line| output::write_line(out, &output::render(line, &self.output)))
    }
}

impl Pipeline {
    /// Installs a new policy (SIGHUP): one swap of the engine's `Arc`.
    pub fn set_policy(&mut self, policy: Policy) {
        self.engine.set_policy(Arc::new(policy));
    }
}

/// SIGHUP: re-reads `--config`. A valid file replaces the policy; an invalid one keeps
/// the old policy and says why (stderr and a state event); nothing stops the sensor.
pub fn reload(path: Option<&std::path::Path>, pipeline: &mut Pipeline) -> Value {
    let host = pipeline.host_name.clone();
    let Some(path) = path else {
        log::warn!("SIGHUP: no --config was given, nothing to reload");
        return output::status(
            "state",
            "policy-reload-failed",
            &host,
            json!({"error": "no --config was given"}),
        );
    };
    match Policy::load(path) {
        Ok(policy) => {
            let rules = policy.allow.len();
            pipeline.set_policy(policy);
            log::info!(
                "SIGHUP: policy reloaded from {} ({rules} allow rules)",
                path.display()
            );
            output::status(
                "state",
                "policy-reloaded",
                &host,
                json!({"config": path.display().to_string(), "allow_rules": rules}),
            )
        }
        Err(e) => {
            log::warn!("SIGHUP: keeping the old policy: {e:#}");
            output::status(
                "state",
                "policy-reload-failed",
                &host,
                json!({"config": path.display().to_string(), "error": format!("{e:#}")}),
            )
        }
    }
}

pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}

//! Per-record work after the ring buffer: lifecycle records update the process table;
//! connects are attributed (table, then /proc), scored and formatted.

use std::io::Write;

use anyhow::Result;
use serde_json::{Value, json};

use crate::{
    detect::engine::{self, Engine},
    detect::policy::Policy,
    detect::score::{self, Subject},
    enrich::procfs::{self, ProcessInfo},
    enrich::proctable::ProcTable,
    enrich::users::Users,
    kernel::records::{Connection, Record},
    output::clock::BootClock,
    output::{self, Record as OutRecord},
};

/// Counters reported in the status events (and, later, as metrics).
#[derive(Debug, Default, Clone, Copy)]
pub struct Counters {
    pub connections: u64,
    /// Connections whose executable was known.
    pub attributed: u64,
    pub alerts: u64,
    pub malformed: u64,
    pub execs: u64,
    pub forks: u64,
    pub exits: u64,
}

pub struct Pipeline {
    pub policy: Policy,
    pub table: ProcTable,
    pub users: Users,
    pub host_name: String,
    pub clock: BootClock,
    pub counters: Counters,
    /// Allow rules, beacons, rollups, flood control; decides what is printed.
    pub engine: Engine,
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
        let subject = Subject {
            exe_name: proc.executable.as_deref().map(procfs::exe_name),
            comm: &conn.comm,
            content_match: proc.content_match.as_deref(),
            location: proc.location,
        };
        let verdict = score::score(&self.policy, &subject, conn.dst, conn.dport);
        let record = OutRecord {
            conn,
            proc: &proc,
            user_name: self.users.name(conn.uid),
            verdict: &verdict,
            host_name: &self.host_name,
            attribution: source,
            unix_ns: self.clock.to_unix_ns(conn.boot_ns),
        };
        // Every connection goes to the engine (beacons and allow counts need the unscored
        // too); it builds the JSON only for what it prints.
        let obs = engine::Obs::from_record(&record);
        let outcome = self.engine.process(&obs, &verdict, || record.to_json());
        if outcome.alert {
            self.counters.alerts += 1;
        }
        outcome
            .lines
            .iter()
            .try_for_each(|line| output::write_line(out, line))
    }
}

impl Pipeline {
    /// Installs a new policy (SIGHUP) in the scorer and the engine together.
    pub fn set_policy(&mut self, policy: Policy) {
        self.engine.set_policy(policy.clone());
        self.policy = policy;
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

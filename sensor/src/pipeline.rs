//! Per-connection work after the ring buffer: enrich from procfs, score, format.

use std::io::Write;

use anyhow::Result;

use crate::{
    clock::BootClock,
    engine::{self, Engine},
    events::Connection,
    output::{self, Record},
    policy::Policy,
    procs::{self, Procfs},
    score,
    users::Users,
};

/// Counters reported at shutdown (and, later, as metrics).
#[derive(Debug, Default, Clone, Copy)]
pub struct Counters {
    pub connections: u64,
    pub alerts: u64,
    pub malformed: u64,
}

pub struct Pipeline {
    pub policy: Policy,
    pub procfs: Procfs,
    pub users: Users,
    pub host_name: String,
    pub clock: BootClock,
    /// Also emit unscored connections (`--all`).
    pub all: bool,
    pub counters: Counters,
    /// Allow rules, beacons, rollups, flood control; decides what is printed.
    pub engine: Engine,
}

impl Pipeline {
    pub fn handle(&mut self, conn: &Connection, out: &mut impl Write) -> Result<()> {
        self.counters.connections += 1;
        let proc = self.procfs.lookup(conn.tgid, conn.start_time_ns, conn.ppid);
        let exe_name = proc.executable.as_deref().map(procs::exe_name);
        let verdict = score::score(&self.policy, exe_name, &conn.comm, conn.dst, conn.dport);
        let record = Record {
            conn,
            proc: &proc,
            user_name: self.users.name(conn.uid),
            verdict: &verdict,
            host_name: &self.host_name,
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

pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}

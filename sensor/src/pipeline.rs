//! Per-connection work after the ring buffer: enrich from procfs, score, format.

use std::io::Write;

use anyhow::Result;

use crate::{
    clock::BootClock,
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
}

impl Pipeline {
    pub fn handle(&mut self, conn: &Connection, out: &mut impl Write) -> Result<()> {
        self.counters.connections += 1;
        let proc = self.procfs.lookup(conn.tgid, conn.start_time_ns, conn.ppid);
        let exe_name = proc.executable.as_deref().map(procs::exe_name);
        let verdict = score::score(&self.policy, exe_name, &conn.comm, conn.dst, conn.dport);
        if verdict.risk == 0 && !self.all {
            return Ok(());
        }
        if verdict.risk > 0 {
            self.counters.alerts += 1;
        }
        let record = Record {
            conn,
            proc: &proc,
            user_name: self.users.name(conn.uid),
            verdict: &verdict,
            host_name: &self.host_name,
            unix_ns: self.clock.to_unix_ns(conn.boot_ns),
        };
        output::write_line(out, &record.to_json())
    }
}

pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}

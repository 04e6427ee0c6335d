//! Per-record work after the ring buffer: lifecycle records update the process table;
//! connects, listens and UDP are attributed (table, then /proc), scored and formatted;
//! inbound connections are attributed through the listen record of their local port.

mod kernel_side;
mod listeners;
mod protocol;
mod reload;

use std::sync::Arc;

use anyhow::{Context as _, Result};

use self::listeners::Listener;
pub use self::{
    kernel_side::KernelSide, listeners::Sockets, protocol::PayloadCounts, reload::reload,
};
// The counters are the stats' own (one struct for the stats lines and /metrics).
pub use crate::output::metrics::stats::Counters;
// The host's name is enrich's; `cmd::run` names it through here.
pub use crate::enrich::host::host_name;
use crate::{
    detect::{decision::Line, engine::Engine, policy::Policy, subject::Subject},
    enrich::{
        Enriched, Provenance, attribute::attribute, kubelet::Pods, procfs::ProcessInfo,
        proctable::ProcTable, users::UserNames,
    },
    kernel::{
        filter::FoldDelta,
        fold::from_key,
        records::{Connection, Flow, Record},
    },
    output::{self, clock::BootClock, journald::Summary, sink::Sink},
};

pub struct Pipeline {
    pub table: ProcTable,
    /// Container id -> Kubernetes pod, from the node's kubelet links.
    pub pods: Pods,
    /// The host's users, and each container's own.
    pub users: UserNames,
    pub host_name: String,
    /// ECS stamping (ecs, agent, host, event.id) and the output format.
    pub output: output::Context,
    pub clock: BootClock,
    pub counters: Counters,
    /// Scoring, allow rules, beacons, rollups, flood control: decides what is printed.
    /// It owns the policy.
    pub engine: Engine<Enriched>,
    pub sockets: Sockets,
    pub kernel: KernelSide,
}

impl Pipeline {
    pub fn handle(&mut self, record: &Record, out: &mut Sink) -> Result<()> {
        match record {
            Record::Connect(c) => self.connect(c, out)?,
            Record::Exec(e) => {
                self.counters.process_records.exec += 1;
                self.table.on_exec(e);
            }
            Record::Fork(t) => {
                self.counters.process_records.fork += 1;
                self.table.on_fork(t);
            }
            Record::Exit(t) => {
                self.counters.process_records.exit += 1;
                self.table.on_exit(t);
            }
            Record::Payload(p) => self.payload(p, out)?,
        }
        Ok(())
    }

    fn connect(&mut self, conn: &Connection, out: &mut Sink) -> Result<()> {
        match conn.flow {
            Flow::Inbound => return self.inbound(conn, out),
            Flow::Listen => self.sockets.listens += 1,
            Flow::Udp => self.sockets.udp += 1,
            Flow::Connect => {
                if self.kernel.folding {
                    self.kernel.keep_template(conn);
                }
            }
        }
        self.connect_n(conn, 1, out)
    }

    /// Repeats the kernel folded, collected from its fold table: each key's count is
    /// decided as that many connections, the key's last record standing for them at the
    /// time of the latest repeat. `now_boot_ns` and `period_ns` expire the templates.
    pub fn kernel_folded(
        &mut self,
        deltas: &[FoldDelta],
        now_boot_ns: u64,
        period_ns: u64,
        out: &mut Sink,
    ) -> Result<()> {
        for d in deltas {
            self.kernel.fold_collected += d.count;
            let mut c = match self.kernel.templates.get(&d.key) {
                Some(t) => t.clone(),
                None => {
                    self.kernel.fold_untemplated += d.count;
                    from_key(&d.key)
                }
            };
            c.boot_ns = d.last_ns;
            self.connect_n(&c, d.count, out)?;
        }
        // A key idle three periods is gone from the kernel's table (deleted after two).
        let keep = period_ns.saturating_mul(3);
        self.kernel.expire_templates(now_boot_ns, keep);
        Ok(())
    }

    /// `n` identical connections (1, or repeats the kernel folded).
    fn connect_n(&mut self, conn: &Connection, n: u64, out: &mut Sink) -> Result<()> {
        self.counters.connections += n;
        let unix_ns = self.clock.to_unix_ns(conn.boot_ns);
        let enriched = attribute(
            &mut self.table,
            &mut self.pods,
            &mut self.users,
            conn,
            self.host_name.clone(),
            unix_ns,
        );
        if enriched.proc.executable.is_some() {
            self.counters.connections_attributed += n;
        }
        if conn.flow == Flow::Listen {
            self.sockets.remember(Listener {
                conn: conn.clone(),
                proc: enriched.proc.clone(),
                user_name: enriched.user_name.clone(),
                provenance: enriched.provenance,
                attribution: enriched.attribution,
            });
        }
        self.decide(enriched, n, out)
    }

    /// An inbound connection: the kernel saw it in softirq, so the process is the one that
    /// listened on its local port, from the listen record.
    fn inbound(&mut self, conn: &Connection, out: &mut Sink) -> Result<()> {
        self.sockets.inbound += 1;
        let unix_ns = self.clock.to_unix_ns(conn.boot_ns);
        let enriched = match self.sockets.listener(conn) {
            Some(l) => {
                let mut c = conn.clone();
                let task = &l.conn;
                (c.tgid, c.tid, c.ppid, c.uid, c.gid) =
                    (task.tgid, task.tid, task.ppid, task.uid, task.gid);
                (c.start_time_ns, c.cgroup_id) = (task.start_time_ns, task.cgroup_id);
                c.comm = task.comm.clone();
                Enriched {
                    conn: c,
                    proc: l.proc.clone(),
                    user_name: l.user_name.clone(),
                    provenance: l.provenance,
                    host_name: self.host_name.clone(),
                    attribution: l.attribution.map(|_| "listen-record"),
                    unix_ns,
                    protocol: None,
                }
            }
            None => {
                self.sockets.inbound_unattributed += 1;
                // The interrupted task is not the listener: keep nothing of it.
                let mut c = conn.clone();
                (
                    c.tgid,
                    c.tid,
                    c.ppid,
                    c.uid,
                    c.gid,
                    c.start_time_ns,
                    c.cgroup_id,
                ) = (0, 0, 0, 0, 0, 0, 0);
                c.comm = String::new();
                Enriched {
                    conn: c,
                    proc: ProcessInfo::default(),
                    user_name: None,
                    provenance: Provenance::default(),
                    host_name: self.host_name.clone(),
                    attribution: None,
                    unix_ns,
                    protocol: None,
                }
            }
        };
        self.counters.connections += 1;
        self.decide(enriched, 1, out)
    }

    fn decide(&mut self, enriched: Enriched, n: u64, out: &mut Sink) -> Result<()> {
        // Every connection goes to the engine (beacons and allow counts need the unscored
        // too); only what it prints is rendered.
        let subject = Subject::from_enriched(&enriched);
        let outcome = self.engine.decide_n(&subject, n, move || enriched);
        if outcome.alert {
            self.counters.alerts += n;
        }
        self.emit(&outcome.lines, out)
    }

    /// Renders each engine line once and writes it where the sensor's output goes.
    fn emit(&mut self, lines: &[Line<Enriched>], out: &mut Sink) -> Result<()> {
        for line in lines {
            let risk = match line {
                Line::Connection(d) => {
                    self.counters.connections_printed += 1;
                    d.decision.risk
                }
                Line::Beacon(b) => b.risk,
                Line::Scan(s) => s.risk,
                _ => 0,
            };
            self.counters.alerts_by_severity.count(risk);
            // Owned: the line moves into the output queue.
            let mut buf = Vec::with_capacity(4096);
            output::write(line, &self.output, &mut buf)?;
            // serde_json writes UTF-8 only.
            let text = String::from_utf8(buf).context("serialising a line")?;
            out.emit_line(text, &Summary::of(line))?;
        }
        Ok(())
    }

    /// Writes the lines due by `now_ns` (ended fold periods, rollup windows, summaries).
    pub fn tick(&mut self, now_ns: i128, out: &mut Sink) -> Result<()> {
        let lines = self.engine.tick(now_ns);
        self.emit(&lines, out)
    }

    /// Writes everything the engine holds, at exit.
    pub fn finish(&mut self, now_ns: i128, out: &mut Sink) -> Result<()> {
        let lines = self.engine.finish(now_ns);
        self.emit(&lines, out)
    }
}

impl Pipeline {
    /// Installs a new policy (SIGHUP): one swap of the engine's `Arc`.
    pub fn set_policy(&mut self, policy: Policy) {
        self.engine.set_policy(Arc::new(policy));
    }
}

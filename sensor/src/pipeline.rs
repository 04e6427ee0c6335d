//! Per-record work after the ring buffer: lifecycle records update the process table;
//! connects are attributed (table, then /proc), scored and formatted.

use std::sync::Arc;

use anyhow::Result;
use serde_json::{Value, json};

use crate::{
    detect::{decision::Line, engine::Engine, policy::Policy, subject::Subject},
    enrich::{
        Enriched,
        kubelet::{self, Pods},
        procfs::ProcessInfo,
        proctable::ProcTable,
        users::UserNames,
    },
    kernel::records::{Connection, Record},
    output::{self, clock::BootClock, journald::Summary, sink::Sink},
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
    /// Connection lines printed (alerts, and with --all every connection).
    pub printed: u64,
    /// Alert lines printed (connections and beacons) by severity: Low, Medium, High.
    pub alerts_by_severity: [u64; 3],
    pub reloads: u64,
    pub reload_failures: u64,
}

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
}

impl Pipeline {
    pub fn handle(&mut self, record: &Record, out: &mut Sink) -> Result<()> {
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

    fn connect(&mut self, conn: &Connection, out: &mut Sink) -> Result<()> {
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
        // A container's pod (the kubelet's links on the node) and runtime (its cgroup).
        if let Some(id) = &proc.container_id {
            proc.pod = self.pods.lookup(id).cloned();
            let cgroup = self.table.cgroups.path(conn.cgroup_id);
            proc.container_runtime = cgroup.and_then(kubelet::runtime_from_cgroup);
            if let Some(pod) = &mut proc.pod
                && pod.uid.is_none()
            {
                pod.uid = cgroup.and_then(kubelet::pod_uid_from_cgroup);
            }
        }
        let user_name = self
            .users
            .name(conn.tgid, conn.uid, proc.container_id.is_some());
        let enriched = Enriched {
            conn: conn.clone(),
            proc,
            user_name,
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
        self.emit(&outcome.lines, out)
    }

    /// Renders each engine line once and writes it where the sensor's output goes.
    fn emit(&mut self, lines: &[Line<Enriched>], out: &mut Sink) -> Result<()> {
        for line in lines {
            let risk = match line {
                Line::Connection(d) => {
                    self.counters.printed += 1;
                    d.decision.risk
                }
                Line::Beacon(b) => b.risk,
                _ => 0,
            };
            if let Some(n) = self
                .counters
                .alerts_by_severity
                .get_mut(usize::from(risk.min(3)).wrapping_sub(1))
            {
                *n += 1;
            }
            out.emit(&output::render(line, &self.output), &Summary::of(line))?;
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

/// SIGHUP: re-reads `--config`. A valid file replaces the policy; an invalid one keeps
/// the old policy and says why (stderr and a state event); nothing stops the sensor.
/// Returns the state event and its action.
pub fn reload(path: Option<&std::path::Path>, pipeline: &mut Pipeline) -> (Value, &'static str) {
    let host = pipeline.host_name.clone();
    let failed = "policy-reload-failed";
    let Some(path) = path else {
        log::warn!("SIGHUP: no --config was given, nothing to reload");
        let doc = output::status(
            "state",
            failed,
            &host,
            json!({"error": "no --config was given"}),
        );
        return (doc, failed);
    };
    match Policy::load(path) {
        Ok(policy) => {
            let rules = policy.allow.len();
            pipeline.set_policy(policy);
            log::info!(
                "policy reloaded from {} ({rules} allow rules)",
                path.display()
            );
            let doc = output::status(
                "state",
                "policy-reloaded",
                &host,
                json!({"config": path.display().to_string(), "allow_rules": rules}),
            );
            (doc, "policy-reloaded")
        }
        Err(e) => {
            log::warn!("SIGHUP: keeping the old policy: {e:#}");
            let doc = output::status(
                "state",
                failed,
                &host,
                json!({"config": path.display().to_string(), "error": format!("{e:#}")}),
            );
            (doc, failed)
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

//! Per-record work after the ring buffer: lifecycle records update the process table;
//! connects, listens and UDP are attributed (table, then /proc), scored and formatted;
//! inbound connections are attributed through the listen record of their local port.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use sensor_common::{AF_INET, AF_INET6, FOLD_MAX, FoldKey};

use anyhow::{Context as _, Result};
use serde_json::{Value, json};

use crate::{
    detect::{decision::Line, engine::Engine, policy::Policy, subject::Subject},
    enrich::{
        Enriched, Provenance,
        kubelet::{self, Pods},
        procfs::ProcessInfo,
        proctable::ProcTable,
        users::UserNames,
    },
    kernel::{
        filter::{FoldDelta, KernelCounts},
        records::{Connection, Flow, Record, canonical},
    },
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

/// Listeners seen, by network namespace, local address and port, for inbound
/// attribution, and what the socket hooks counted.
#[derive(Debug, Default)]
pub struct Sockets {
    listeners: HashMap<(u32, IpAddr, u16), Listener>,
    pub listens: u64,
    pub inbound: u64,
    /// Inbound connections to a port no listen record was seen for (listening since
    /// before the sensor started): counted, scored as unknown.
    pub inbound_unattributed: u64,
    pub udp: u64,
    /// Listeners forgotten to keep the table bounded.
    pub listeners_evicted: u64,
    /// Bytes the listeners hold (see [`Listener::bytes`]).
    listener_bytes: usize,
    /// UDP datagrams the kernel dropped and counted: to standard ports, and repeats.
    pub kernel_udp_dropped: (u64, u64),
}

/// What a listen record said about its process: an inbound connection, seen in softirq,
/// gets it.
#[derive(Debug, Clone)]
struct Listener {
    conn: Connection,
    proc: ProcessInfo,
    user_name: Option<String>,
    provenance: Provenance,
    attribution: Option<&'static str>,
}

/// Listeners kept: one per listening (namespace, address, port); more are evicted, counted.
const MAX_LISTENERS: usize = 4096;
/// Bytes the listeners may hold: a process with long paths and a deep ancestry listening
/// on thousands of ports would otherwise keep a copy of them per port.
const MAX_LISTENER_BYTES: usize = 4 << 20;

impl Listener {
    fn bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + 64
            + crate::enrich::parts_heap_bytes(&self.conn, &self.proc, self.user_name.as_deref())
    }
}

impl Sockets {
    /// For `sensor-stats` and `sensor-stopped`.
    pub fn report(&self) -> Value {
        json!({
            "listens": self.listens,
            "listeners": self.listeners.len(),
            "listeners_evicted": self.listeners_evicted,
            "listener_bytes": self.listener_bytes,
            "inbound": self.inbound,
            "inbound_unattributed": self.inbound_unattributed,
            "udp": self.udp,
            "udp_standard_port_dropped_in_kernel": self.kernel_udp_dropped.0,
            "udp_repeats_dropped_in_kernel": self.kernel_udp_dropped.1,
        })
    }

    fn remember(&mut self, l: Listener) {
        let key = (l.conn.netns, canonical(l.conn.src), l.conn.sport);
        let bytes = l.bytes();
        if let Some(old) = self.listeners.insert(key, l) {
            self.listener_bytes -= old.bytes();
        }
        self.listener_bytes += bytes;
        while (self.listeners.len() > MAX_LISTENERS || self.listener_bytes > MAX_LISTENER_BYTES)
            && self.listeners.len() > 1
            && let Some(k) = self.listeners.keys().find(|k| **k != key).copied()
        {
            if let Some(old) = self.listeners.remove(&k) {
                self.listener_bytes -= old.bytes();
            }
            self.listeners_evicted += 1;
        }
    }

    /// The listener an inbound connection reached, in its own network namespace: on its
    /// exact local address, else on the IPv4 or IPv6 wildcard. (A kernel without the
    /// namespace offsets gives 0 to both records, and then keeps one namespace.)
    fn listener(&self, c: &Connection) -> Option<&Listener> {
        [
            canonical(c.src),
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        ]
        .iter()
        .find_map(|a| self.listeners.get(&(c.netns, *a, c.sport)))
    }
}

/// What the kernel filtered, folded and counted, as last read, and the connects it
/// folded that userspace has collected.
#[derive(Debug, Default)]
pub struct KernelSide {
    pub counts: KernelCounts,
    /// Folded connects collected from the kernel's fold table and counted in.
    pub fold_collected: u64,
    /// Keys in the kernel's fold table at the last collection, and idle ones deleted.
    pub fold_keys: usize,
    pub fold_keys_deleted: u64,
    /// Reads of the kernel's counters that failed.
    pub read_errors: u64,
    /// Policy pushes into the kernel's filter maps, and the generation in force.
    pub filter_pushes: u64,
    pub filter_generation: u32,
    /// Whether the kernel folds (then the last record of each key is kept as the template
    /// its folded repeats are reported with).
    pub folding: bool,
    /// Per kernel fold key, the last connect record seen.
    templates: HashMap<FoldKey, Connection>,
    /// Estimated bytes the templates hold, and records not kept for that budget (their
    /// repeats are then built from the key, counted in `fold_untemplated`).
    template_bytes: usize,
    pub templates_refused: u64,
    /// The kernel time of the latest connect record handled: the ring buffer is read in
    /// order, so a key whose window started well before it has had its first record seen.
    handled_ns: u64,
    /// Collected repeats with no record kept to stand for them (built from the key).
    pub fold_untemplated: u64,
}

/// Bytes the templates may hold: one per kernel fold key would be up to 2 x 16,384 records.
const MAX_TEMPLATE_BYTES: usize = 2 << 20;

/// How far apart in kernel time two CPUs' records may be committed out of order.
const RING_ORDER_SLACK_NS: u64 = 1_000_000;

/// A template's cost: its slot (doubled for the map's spare room) and its comm.
fn template_bytes(c: &Connection) -> usize {
    2 * std::mem::size_of::<(FoldKey, Connection)>() + c.comm.len()
}

impl KernelSide {
    /// Keeps `conn` as its key's template, within the keys' and the bytes' bounds.
    fn keep_template(&mut self, conn: &Connection) {
        self.handled_ns = self.handled_ns.max(conn.boot_ns);
        let k = fold_key(conn);
        let bytes = template_bytes(conn);
        if let Some(old) = self.templates.get_mut(&k) {
            self.template_bytes = self.template_bytes + bytes - template_bytes(old);
            old.clone_from(conn);
        } else if self.templates.len() < 2 * FOLD_MAX as usize
            && self.template_bytes + bytes <= MAX_TEMPLATE_BYTES
        {
            self.templates.insert(k, conn.clone());
            self.template_bytes += bytes;
        } else {
            self.templates_refused += 1;
        }
    }

    /// Forgets the templates of keys idle longer than `keep_ns`.
    fn expire_templates(&mut self, now_boot_ns: u64, keep_ns: u64) {
        let bytes = &mut self.template_bytes;
        self.templates.retain(|_, c| {
            let live = now_boot_ns.saturating_sub(c.boot_ns) <= keep_ns;
            if !live {
                *bytes -= template_bytes(c);
            }
            live
        });
    }

    /// Whether the first record of a kernel fold key has been handled: its template is
    /// kept, or a connect emitted after it (by more than [`RING_ORDER_SLACK_NS`], for
    /// records of other CPUs committed out of order) has been handled, so it was lost to
    /// a full ring buffer. Only with no later connect at all is it taken as lost after
    /// `wait_ns`. A lagging event loop (a slow host) then never reports repeats before
    /// the record that names their process.
    pub fn fold_ready(
        &self,
        key: &FoldKey,
        window_start_ns: u64,
        now_ns: u64,
        wait_ns: u64,
    ) -> bool {
        self.templates.contains_key(key)
            || self.handled_ns > window_start_ns.saturating_add(RING_ORDER_SLACK_NS)
            || now_ns.saturating_sub(window_start_ns) > wait_ns
    }

    /// For `sensor-stats` and `sensor-stopped`.
    pub fn report(&self) -> Value {
        let mut v = self.counts.report();
        if let Value::Object(m) = &mut v {
            m.insert("fold_collected".into(), self.fold_collected.into());
            m.insert("fold_keys".into(), self.fold_keys.into());
            m.insert("fold_keys_deleted".into(), self.fold_keys_deleted.into());
            m.insert("fold_untemplated".into(), self.fold_untemplated.into());
            m.insert("fold_templates".into(), self.templates.len().into());
            m.insert("fold_template_bytes".into(), self.template_bytes.into());
            m.insert(
                "fold_templates_refused".into(),
                self.templates_refused.into(),
            );
            m.insert("counter_read_errors".into(), self.read_errors.into());
            m.insert("filter_pushes".into(), self.filter_pushes.into());
            m.insert("filter_generation".into(), self.filter_generation.into());
        }
        v
    }
}

/// The kernel fold table's key for a connect record.
pub fn fold_key(c: &Connection) -> FoldKey {
    let (family, daddr) = match c.dst {
        IpAddr::V4(a) => {
            let mut d = [0u8; 16];
            d[..4].copy_from_slice(&a.octets());
            (AF_INET, d)
        }
        IpAddr::V6(a) => (AF_INET6, a.octets()),
    };
    FoldKey {
        tgid: c.tgid,
        family,
        dport: c.dport,
        start_time_ns: c.start_time_ns,
        daddr,
    }
}

/// A connect record standing for repeats no record was kept for: what the key says.
fn from_key(k: &FoldKey) -> Connection {
    let dst = if k.family == AF_INET {
        IpAddr::V4(Ipv4Addr::new(
            k.daddr[0], k.daddr[1], k.daddr[2], k.daddr[3],
        ))
    } else {
        IpAddr::V6(Ipv6Addr::from(k.daddr))
    };
    let unspecified = match dst {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    Connection {
        flow: Flow::Connect,
        tgid: k.tgid,
        tid: k.tgid,
        ppid: 0,
        // Unknown: the kernel's invalid uid/gid, never mistaken for root.
        uid: u32::MAX,
        gid: u32::MAX,
        boot_ns: 0,
        start_time_ns: k.start_time_ns,
        parent_start_time_ns: 0,
        cgroup_id: 0,
        dst,
        dport: k.dport,
        src: unspecified,
        sport: 0,
        probe: None,
        comm: String::new(),
        image: None,
        netns: 0,
    }
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
    pub sockets: Sockets,
    pub kernel: KernelSide,
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
        let (mut proc, mut source) =
            match self.table.resolve(conn.tgid, conn.start_time_ns, conn.ppid) {
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
        // The image the kernel saw making the connect, not whatever the process runs now.
        let image = self
            .table
            .connect_image(conn.tgid, conn.start_time_ns, conn.image, &mut proc);
        source = image.attribution().or(source);
        if proc.executable.is_some() {
            self.counters.attributed += n;
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
        // Whether the id is the runtime's, judged on the kernel's cgroup of this connect.
        let container = proc
            .container_id
            .as_deref()
            .map(|id| self.table.cgroups.trust(conn.cgroup_id, id, conn.tgid));
        let user = self.users.name(
            conn.tgid,
            conn.start_time_ns,
            conn.uid,
            proc.container_id.is_some(),
        );
        let provenance = Provenance {
            user_name: user.as_ref().map(|u| u.source),
            container,
        };
        let enriched = Enriched {
            conn: conn.clone(),
            proc,
            user_name: user.map(|u| u.name),
            provenance,
            host_name: self.host_name.clone(),
            attribution: source,
            unix_ns: self.clock.to_unix_ns(conn.boot_ns),
        };
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::records::tests::{bytes, connect, raw};

    /// The key userspace builds from a record is the one the kernel built from the same
    /// record, for both families, and a key turns back into the same destination.
    #[test]
    fn fold_key_matches_the_kernels() {
        let mut d = [0u8; 16];
        d[..4].copy_from_slice(&[203, 0, 113, 7]);
        let ev = raw(AF_INET, d, 4444);
        let c = connect(&bytes(&ev));
        let k = fold_key(&c);
        assert_eq!(
            k,
            FoldKey {
                tgid: ev.header.tgid,
                family: AF_INET,
                dport: 4444,
                start_time_ns: ev.header.start_time_ns,
                daddr: d,
            }
        );
        assert_eq!((from_key(&k).dst, from_key(&k).dport), (c.dst, 4444));
        let v6: Ipv6Addr = "::ffff:198.51.100.7".parse().unwrap();
        let c = connect(&bytes(&raw(AF_INET6, v6.octets(), 8088)));
        let k = fold_key(&c);
        assert_eq!((k.family, k.daddr), (AF_INET6, v6.octets()));
        assert_eq!(from_key(&k).dst, IpAddr::V6(v6));
    }

    /// One record kept per kernel fold key, comm at its longest (16 invalid bytes, 48 in
    /// UTF-8): within the byte budget, refusals counted, and expiry gives the bytes back.
    #[test]
    fn fold_templates_are_bounded_in_bytes() {
        let mut k = KernelSide::default();
        let mut ev = raw(AF_INET, [0; 16], 4444);
        ev.header.comm = [0xff; 16];
        let n = 2 * FOLD_MAX;
        for i in 0..n {
            (ev.header.tgid, ev.data.dport) = (i, (i % 60_000) as u16 + 1025);
            let mut c = connect(&bytes(&ev));
            c.boot_ns = 1_000;
            assert_eq!(c.comm.len(), 48);
            k.keep_template(&c);
            assert!(k.template_bytes <= MAX_TEMPLATE_BYTES);
        }
        assert!(k.templates_refused > 0);
        assert_eq!(k.templates.len() as u64 + k.templates_refused, u64::from(n));
        k.expire_templates(1_000 + 10, 10);
        assert!(!k.templates.is_empty() && k.template_bytes > 0);
        k.expire_templates(1_000 + 11, 10);
        assert_eq!((k.templates.len(), k.template_bytes), (0, 0));
    }

    /// A lagging event loop: repeats the kernel folded wait for their key's first record
    /// however long the loop lags, unless a later connect shows that record was lost.
    #[test]
    fn folded_repeats_wait_for_their_first_record() {
        let mut k = KernelSide::default();
        let ev = raw(AF_INET, [0; 16], 4444);
        let mut first = connect(&bytes(&ev));
        first.boot_ns = 1_000_000_000;
        let key = fold_key(&first);
        let wait = 60_000_000_000;
        // Ten seconds later, the loop has read nothing of it yet.
        assert!(!k.fold_ready(&key, first.boot_ns, 11_000_000_000, wait));
        k.keep_template(&first);
        assert!(k.fold_ready(&key, first.boot_ns, 11_000_000_000, wait));
        // Another key whose first record was lost: a connect read after it says so...
        let mut later = connect(&bytes(&raw(AF_INET, [0; 16], 9001)));
        later.boot_ns = 3_000_000_000;
        let lost = FoldKey { dport: 8088, ..key };
        assert!(!k.fold_ready(&lost, 2_000_000_000, 11_000_000_000, wait));
        k.keep_template(&later);
        assert!(k.fold_ready(&lost, 2_000_000_000, 11_000_000_000, wait));
        // ...but not one committed within the slack of it (another CPU's, out of order).
        assert!(!k.fold_ready(&lost, 2_999_500_000, 11_000_000_000, wait));
        // With no connect after it at all, it is taken as lost after the wait.
        assert!(k.fold_ready(&lost, 2_999_500_000, 63_000_000_000, wait));
    }

    /// The same port listened on in two network namespaces: an inbound connection goes
    /// to the listener of its own namespace, whichever listened last.
    #[test]
    fn listeners_are_per_network_namespace() {
        let mut sockets = Sockets::default();
        let listen = |netns: u32, tgid: u32| {
            let mut ev = raw(AF_INET, [0; 16], 0);
            ev.header.kind = sensor_common::RecordKind::Listen as u32;
            (ev.header.tgid, ev.data.sport, ev.data.netns) = (tgid, 4444, netns);
            Listener {
                conn: connect(&bytes(&ev)),
                proc: ProcessInfo::default(),
                user_name: None,
                provenance: Default::default(),
                attribution: None,
            }
        };
        sockets.remember(listen(111, 10));
        sockets.remember(listen(222, 20));
        let inbound = |netns: u32| {
            let mut ev = raw(AF_INET, [0; 16], 5000);
            ev.header.kind = sensor_common::RecordKind::Inbound as u32;
            ev.data.daddr[..4].copy_from_slice(&[198, 51, 100, 1]);
            ev.data.saddr[..4].copy_from_slice(&[192, 0, 2, 7]);
            (ev.data.sport, ev.data.netns) = (4444, netns);
            connect(&bytes(&ev))
        };
        let who = |netns| sockets.listener(&inbound(netns)).map(|l| l.conn.tgid);
        assert_eq!(who(111), Some(10));
        assert_eq!(who(222), Some(20));
        assert_eq!(who(333), None);
    }
}

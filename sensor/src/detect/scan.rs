//! Scan summaries. Per group of host, executable, user and parent (the SIEM rules' `by`
//! keys, so a shell loop running one `nc` per port is one scan; a single scanning process
//! is always inside one group, whose alert lists its pid), once the distinct ports or hosts
//! in a window pass the policy's threshold, connects are folded into one `network-scan`
//! summary, emitted at the threshold and at window end, instead of one line each. A known
//! C2 port not yet seen from that process (pid and start time) still gets its own line.
//! Counting runs in userspace after scoring and before rendering: a folded connect costs
//! a map lookup, never a rendered line. Memory is bounded in bytes: the oldest windows
//! end early (their summaries printed, counted) to admit new ones; what still does not
//! fit is printed line by line as before and counted, never hidden.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    mem::size_of,
    net::IpAddr,
};

use serde::Serialize;

use crate::detect::{policy::ScanPolicy, rollup::GroupKey};

#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// Estimated bytes the open windows hold at most.
    pub max_bytes: usize,
    /// Distinct hosts counted per window (more are counted as not counted).
    pub max_hosts: usize,
    /// (host, port) pairs kept as a sample.
    pub sample: usize,
    /// Processes listed per window (their C2 ports remembered).
    pub max_processes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_bytes: 2 << 20,
            max_hosts: 1024,
            sample: 16,
            max_processes: 32,
        }
    }
}

/// One process: pid and start time.
pub type ProcessId = (u64, u64);

/// Why memory was short, in windows or connects.
#[derive(
    Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[schemars(rename = "ScanEvictions")]
#[serde(default)]
pub struct Evictions {
    /// Windows ended early to keep the table within its byte budget.
    pub memory_budget: u64,
    /// Connects no window could hold (printed one line each, as without scan summaries).
    pub connects_untracked: u64,
}

/// Distinct ports: a short list, then a 65,536-bit map (exact, 8 KiB) once it grows.
#[derive(Debug, Clone)]
enum Ports {
    Few(Vec<u16>),
    Map(Box<[u64; 1024]>, usize),
}

const SHORT_PORTS: usize = 64;
const MAP_BYTES: usize = 1024 * 8;
/// A window's fixed cost: its entry and key slots in both maps (doubled for spare room).
const ENTRY_BYTES: usize = 2 * (size_of::<GroupKey>() + size_of::<Window>()) + 64;
const HOST_BYTES: usize = 2 * size_of::<IpAddr>() + 8;
const PROCESS_BYTES: usize = size_of::<(ProcessId, Vec<u16>)>() + 8;

impl Ports {
    fn count(&self) -> usize {
        match self {
            Ports::Few(v) => v.len(),
            Ports::Map(_, n) => *n,
        }
    }
}

/// One group's open window.
#[derive(Debug, Clone)]
pub struct Window {
    pub start_ns: i128,
    pub end_ns: i128,
    pub first_ns: i128,
    pub last_ns: i128,
    pub connections: u64,
    ports: Ports,
    hosts: HashSet<IpAddr>,
    /// Connects to a host not counted (`max_hosts` reached).
    pub hosts_not_counted: u64,
    pub max_risk: u8,
    pub sample: Vec<(IpAddr, u16)>,
    /// Every known C2 port hit, in full (the list is the policy's, so bounded).
    pub c2_ports: BTreeSet<u16>,
    /// Processes seen and the C2 ports each was already printed for.
    processes: Vec<(ProcessId, Vec<u16>)>,
    pub processes_not_listed: u64,
    /// Threshold passed: connects are folded.
    pub scanning: bool,
    /// The threshold in force when it was last counted.
    pub threshold: ScanPolicy,
    /// Connects folded into the summary (not printed one line each).
    pub folded: u64,
    bytes: usize,
}

impl Window {
    pub fn distinct_ports(&self) -> usize {
        self.ports.count()
    }
    pub fn distinct_hosts(&self) -> usize {
        self.hosts.len()
    }
    pub fn pids(&self) -> impl Iterator<Item = u64> + '_ {
        self.processes.iter().map(|((pid, _), _)| *pid)
    }
}

/// Why a summary was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// The threshold was passed just now.
    Threshold,
    /// The window ended.
    WindowEnd,
    /// The window was ended early for memory.
    MemoryBudget,
    /// Exit or the end of a replay.
    Exit,
}

/// A `network-scan` alert.
#[derive(Debug, Clone)]
pub struct Summary {
    pub key: GroupKey,
    pub window: Window,
    pub reason: Reason,
    /// At least Medium, and at least the highest risk seen.
    pub risk: u8,
    pub at_ns: i128,
}

/// What one connect became.
pub struct Observed {
    /// Print its own line (false: folded into a scan).
    pub print: bool,
    pub summaries: Vec<Summary>,
}

pub struct Scans {
    cfg: Config,
    windows: HashMap<GroupKey, Window>,
    /// Windows by end time, for ending them in order (and evicting the oldest).
    order: BTreeMap<(i128, u64), GroupKey>,
    seq: u64,
    bytes: usize,
    pub scans_detected: u64,
    pub connects_folded: u64,
    pub evictions: Evictions,
}

/// A connect as the scan counter sees it.
pub struct Connect<'a> {
    pub key: &'a GroupKey,
    pub process: ProcessId,
    pub dst: IpAddr,
    pub port: u16,
    pub risk: u8,
    /// A known C2 port (the policy's list).
    pub c2: bool,
    pub ts_ns: i128,
    pub n: u64,
}

impl Scans {
    pub fn new(cfg: Config) -> Self {
        Self {
            cfg,
            windows: HashMap::new(),
            order: BTreeMap::new(),
            seq: 0,
            bytes: 0,
            scans_detected: 0,
            connects_folded: 0,
            evictions: Evictions::default(),
        }
    }

    pub fn windows(&self) -> usize {
        self.windows.len()
    }
    pub fn bytes(&self) -> usize {
        self.bytes
    }
    pub fn max_bytes(&self) -> usize {
        self.cfg.max_bytes
    }

    /// Summaries of the scanning windows that ended at or before `now_ns`.
    pub fn advance(&mut self, now_ns: i128) -> Vec<Summary> {
        let mut out = Vec::new();
        while let Some((&(end, _), _)) = self.order.first_key_value()
            && end <= now_ns
        {
            out.extend(self.end_first(Reason::WindowEnd, end));
        }
        out
    }

    /// Every scanning window still open (exit, end of a replay).
    pub fn flush(&mut self, now_ns: i128) -> Vec<Summary> {
        let mut out = Vec::new();
        while !self.order.is_empty() {
            out.extend(self.end_first(Reason::Exit, now_ns));
        }
        out
    }

    /// Ends the window that ends first; its summary if it was a scan.
    fn end_first(&mut self, reason: Reason, at_ns: i128) -> Option<Summary> {
        let slot = *self.order.first_key_value()?.0;
        self.end(slot, reason, at_ns)
    }

    fn end(&mut self, slot: (i128, u64), reason: Reason, at_ns: i128) -> Option<Summary> {
        let key = self.order.remove(&slot)?;
        let w = self.windows.remove(&key)?;
        self.bytes = self.bytes.saturating_sub(w.bytes);
        if reason == Reason::MemoryBudget {
            self.evictions.memory_budget += 1;
        }
        let at = if reason == Reason::MemoryBudget {
            w.last_ns
        } else {
            at_ns
        };
        w.scanning.then(|| summary(key, w, reason, at))
    }

    /// Ends the oldest windows (not `keep`'s) until `cost` more bytes fit; whether they do.
    fn make_room(&mut self, cost: usize, keep: &GroupKey, out: &mut Vec<Summary>) -> bool {
        while self.bytes + cost > self.cfg.max_bytes {
            let Some(slot) = self.order.iter().find(|(_, k)| *k != keep).map(|(s, _)| *s) else {
                return false;
            };
            out.extend(self.end(slot, Reason::MemoryBudget, 0));
        }
        true
    }

    /// Counts one connect (`n` repeats) under the policy's threshold.
    pub fn observe(&mut self, c: &Connect<'_>, policy: &ScanPolicy) -> Observed {
        let mut out = self.advance(c.ts_ns);
        if !self.windows.contains_key(c.key) {
            let cost = ENTRY_BYTES + 2 * key_bytes(c.key) + SHORT_PORTS * 2;
            if !self.make_room(cost, c.key, &mut out) {
                self.evictions.connects_untracked += c.n;
                return Observed {
                    print: true,
                    summaries: out,
                };
            }
            self.seq += 1;
            let end_ns = c.ts_ns + policy.window_ns();
            self.order.insert((end_ns, self.seq), c.key.clone());
            self.windows.insert(
                c.key.clone(),
                Window {
                    start_ns: c.ts_ns,
                    end_ns,
                    first_ns: c.ts_ns,
                    last_ns: c.ts_ns,
                    connections: 0,
                    ports: Ports::Few(Vec::with_capacity(SHORT_PORTS)),
                    hosts: HashSet::new(),
                    hosts_not_counted: 0,
                    max_risk: 0,
                    sample: Vec::new(),
                    c2_ports: BTreeSet::new(),
                    processes: Vec::new(),
                    processes_not_listed: 0,
                    scanning: false,
                    threshold: *policy,
                    folded: 0,
                    bytes: cost,
                },
            );
            self.bytes += cost;
        }
        // Growth this connect may need: a port map, a host, a process.
        let (grow_map, grow_host, grow_proc) = match self.windows.get(c.key) {
            Some(w) => (
                matches!(&w.ports, Ports::Few(v) if v.len() >= SHORT_PORTS && !v.contains(&c.port)),
                !w.hosts.contains(&c.dst) && w.hosts.len() < self.cfg.max_hosts,
                !w.processes.iter().any(|(p, _)| *p == c.process)
                    && w.processes.len() < self.cfg.max_processes,
            ),
            None => (false, false, false),
        };
        let want = usize::from(grow_map) * MAP_BYTES
            + usize::from(grow_host) * HOST_BYTES
            + usize::from(grow_proc) * PROCESS_BYTES;
        let room = want == 0 || self.make_room(want, c.key, &mut out);
        let Some(w) = self.windows.get_mut(c.key) else {
            self.evictions.connects_untracked += c.n;
            return Observed {
                print: true,
                summaries: out,
            };
        };
        let mut added = 0;
        w.connections += c.n;
        w.first_ns = w.first_ns.min(c.ts_ns);
        w.last_ns = w.last_ns.max(c.ts_ns);
        w.max_risk = w.max_risk.max(c.risk);
        match &mut w.ports {
            Ports::Few(v) if !v.contains(&c.port) => {
                if v.len() < SHORT_PORTS {
                    v.push(c.port);
                } else if room {
                    let mut map = Box::new([0u64; 1024]);
                    for &p in v.iter().chain([&c.port]) {
                        map[usize::from(p) / 64] |= 1 << (p % 64);
                    }
                    w.ports = Ports::Map(map, SHORT_PORTS + 1);
                    added += MAP_BYTES;
                }
            }
            Ports::Map(map, n) => {
                let (i, bit) = (usize::from(c.port) / 64, 1u64 << (c.port % 64));
                if map[i] & bit == 0 {
                    map[i] |= bit;
                    *n += 1;
                }
            }
            Ports::Few(_) => {}
        }
        if !w.hosts.contains(&c.dst) {
            if grow_host && room {
                w.hosts.insert(c.dst);
                added += HOST_BYTES;
            } else {
                w.hosts_not_counted += c.n;
            }
        }
        if w.sample.len() < self.cfg.sample && !w.sample.contains(&(c.dst, c.port)) {
            w.sample.push((c.dst, c.port));
        }
        // The process, and whether this C2 port is new for it.
        let proc = match w.processes.iter_mut().position(|(p, _)| *p == c.process) {
            Some(i) => Some(i),
            None if grow_proc && room => {
                w.processes.push((c.process, Vec::new()));
                added += PROCESS_BYTES;
                Some(w.processes.len() - 1)
            }
            None => {
                w.processes_not_listed += c.n;
                None
            }
        };
        let new_c2 = c.c2
            && match proc.and_then(|i| w.processes.get_mut(i)) {
                Some((_, seen)) if seen.contains(&c.port) => false,
                Some((_, seen)) => {
                    seen.push(c.port);
                    added += 2;
                    true
                }
                // Not remembered: always printed.
                None => true,
            };
        if c.c2 && w.c2_ports.insert(c.port) {
            added += 2;
        }
        w.bytes += added;
        self.bytes += added;
        w.threshold = *policy;
        let over = w.ports.count() > policy.ports as usize || w.hosts.len() > policy.hosts as usize;
        let mut print = true;
        if w.scanning || over {
            print = new_c2;
            if !print {
                w.folded += c.n;
                self.connects_folded += c.n;
            }
        }
        if over && !w.scanning {
            w.scanning = true;
            self.scans_detected += 1;
            out.push(summary(
                c.key.clone(),
                w.clone(),
                Reason::Threshold,
                c.ts_ns,
            ));
        }
        Observed {
            print,
            summaries: out,
        }
    }
}

fn key_bytes(k: &GroupKey) -> usize {
    k.host.len() + k.executable.len() + k.user.len() + k.parent.len()
}

fn summary(key: GroupKey, window: Window, reason: Reason, at_ns: i128) -> Summary {
    Summary {
        risk: window.max_risk.max(2),
        key,
        window,
        reason,
        at_ns,
    }
}

#[cfg(test)]
mod tests;

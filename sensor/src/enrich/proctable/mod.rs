//! The process table: every process the kernel told us about, keyed by pid *and* start
//! time so a reused pid can never inherit another process's identity. Fed by exec, fork
//! and exit records, seeded from /proc at start-up, with /proc as the fallback for what
//! the kernel did not send. Exited processes stay for a grace period so their in-flight
//! connects still resolve; the table is bounded and its size is reported.

mod image;
mod lifecycle;
mod resolve;
mod storage;

use std::{
    collections::{HashMap, VecDeque},
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

pub use self::{
    image::ImageMatch,
    resolve::lineage,
    storage::{DEFAULT_MAX_BYTES, Entry, Stats},
};
use crate::enrich::{
    cgroups::CgroupMap, identity::Identities, loader, packages::Packages, procfs::Procfs,
};

/// Process identity: tgid and start time in clock ticks (the granularity /proc shows, so
/// kernel- and /proc-sourced keys agree).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub tgid: u32,
    pub start: u64,
}

/// How an entry's data was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// An exec record: the kernel's own view of the new image.
    Exec,
    /// A fork record: inherited from the parent's entry.
    Fork,
    /// Read from /proc (start-up seed, or a process the kernel never described).
    Procfs,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Exec => "kernel-exec",
            Source::Fork => "kernel-fork",
            Source::Procfs => "procfs",
        }
    }
}

pub struct ProcTable {
    entries: HashMap<Key, Entry>,
    /// The most recent process seen with each pid, for records that carry no start time.
    by_pid: HashMap<u32, u64>,
    /// Exited entries in exit order: expiry and eviction take from the front in O(1).
    exit_order: VecDeque<(Instant, Key)>,
    procfs: Procfs,
    pub identities: Identities,
    /// cgroup id -> path, for the container of a process /proc no longer shows.
    pub cgroups: CgroupMap,
    /// Processes started through the dynamic loader, resolved at their first connect.
    loaded: HashMap<Key, Arc<loader::Run>>,
    /// The host's package-managed files, for the unmanaged-executable tier.
    pub packages: Packages,
    ns_per_tick: u64,
    grace: Duration,
    capacity: usize,
    /// Bytes of entries and loader runs, and their bound.
    bytes: usize,
    max_bytes: usize,
    pub evicted: u64,
    pub expired: u64,
}

impl ProcTable {
    pub fn new(procfs: Procfs, identities: Identities, capacity: usize, grace: Duration) -> Self {
        let ns_per_tick = (1_000_000_000 / procfs.ticks_per_sec()).max(1);
        Self {
            entries: HashMap::new(),
            by_pid: HashMap::new(),
            exit_order: VecDeque::new(),
            procfs,
            identities,
            cgroups: CgroupMap::new(Path::new("/proc/self/mountinfo")),
            loaded: HashMap::new(),
            packages: Packages::unknown("not loaded"),
            ns_per_tick,
            grace,
            capacity: capacity.max(1),
            bytes: 0,
            max_bytes: DEFAULT_MAX_BYTES,
            evicted: 0,
            expired: 0,
        }
    }

    /// Bounds the table's bytes (see [`Stats::bytes`]); entries are evicted past it.
    pub fn set_max_bytes(&mut self, max: usize) {
        self.max_bytes = max;
    }

    pub fn key(&self, tgid: u32, start_ns: u64) -> Key {
        Key {
            tgid,
            start: start_ns / self.ns_per_tick,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn stats(&self) -> Stats {
        Stats {
            entries: self.entries.len(),
            bytes: self.bytes,
            max_bytes: self.max_bytes,
            evicted: self.evicted,
            expired: self.expired,
        }
    }
}

/// What the tests of every part of the table build it from.
#[cfg(test)]
pub(crate) mod test_support {
    use std::{path::Path, time::Duration};

    use super::ProcTable;
    use crate::{
        enrich::{identity::Identities, procfs::Procfs},
        kernel::records::{Exec, Task},
    };

    pub fn table(cap: usize) -> ProcTable {
        ProcTable::new(
            Procfs::new("/nonexistent-proc"),
            Identities::scan(|_| None, Path::new("/nonexistent")),
            cap,
            Duration::from_millis(50),
        )
    }

    pub fn task(tgid: u32, start_ns: u64, ppid: u32, pstart_ns: u64) -> Task {
        Task {
            tgid,
            ppid,
            uid: 0,
            gid: 0,
            boot_ns: 0,
            start_time_ns: start_ns,
            parent_start_time_ns: pstart_ns,
            cgroup_id: 0,
            comm: "x".into(),
        }
    }

    pub fn exec(tgid: u32, start_ns: u64, ppid: u32, pstart_ns: u64, file: &str) -> Exec {
        Exec {
            task: task(tgid, start_ns, ppid, pstart_ns),
            filename: file.into(),
            args: Some([file, "arg"].into_iter().collect()),
            exe_ino: 0,
            exe_dev: 0,
            exe_nlink: Some(1),
            exe_name: String::new(),
        }
    }

    pub const S: u64 = 10_000_000; // one clock tick at USER_HZ 100
}

#[cfg(test)]
mod tests {
    use crate::enrich::proctable::test_support::*;

    #[test]
    fn pid_reuse_never_inherits_identity() {
        let mut t = table(100);
        t.on_exec(&exec(500, 100 * S, 1, 0, "/usr/bin/curl"));
        t.on_exit(&task(500, 100 * S, 1, 0));
        // pid 500 comes back as another program, later.
        t.on_exec(&exec(500, 900 * S, 1, 0, "/usr/sbin/nginx"));
        let (old, _) = t.resolve(500, 100 * S, 0).unwrap();
        let (new, _) = t.resolve(500, 900 * S, 0).unwrap();
        assert_eq!(old.executable.as_deref(), Some("/usr/bin/curl"));
        assert_eq!(new.executable.as_deref(), Some("/usr/sbin/nginx"));
        // A start time nobody has: unknown, not the latest process with that pid.
        assert!(t.resolve(500, 500 * S, 0).is_none());
        // Without a start time the most recent process with the pid is the best guess.
        assert_eq!(
            t.resolve(500, 0, 0).unwrap().0.executable.as_deref(),
            Some("/usr/sbin/nginx")
        );
    }
}

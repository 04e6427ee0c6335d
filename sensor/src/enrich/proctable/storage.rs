//! The table's storage and its bounds: entries and loader runs accounted in bytes,
//! eviction past the count or the bytes (the longest-exited first), expiry after the
//! grace period.

use std::{sync::Arc, time::Instant};

use crate::{
    enrich::{
        identity::IdState,
        loader,
        proctable::{Key, ProcTable, Source},
    },
    kernel::argv::Argv,
};

/// What one process is. Strings shared by a fork's parent and child are reference-counted.
#[derive(Debug, Clone)]
pub struct Entry {
    pub parent: Option<Key>,
    pub ppid: u32,
    pub executable: Option<Arc<str>>,
    /// Bounded in bytes; shared with forks and with every connect's `ProcessInfo`.
    pub args: Option<Argv>,
    pub container_id: Option<Arc<str>>,
    /// The high-risk entry this executable is a copy of, by content.
    pub content_match: Option<Arc<str>>,
    /// memfd / deleted / fd / tmp / dev_shm, when the executable's location is suspicious.
    pub location: Option<&'static str>,
    pub source: Source,
    pub exited: Option<Instant>,
    /// Whether `content_match` is final, or the file's hash is still being taken.
    pub identity: IdState,
    /// The executable this entry describes, as (device, inode): from the exec record
    /// (device in `st_dev` encoding), else from `stat` of /proc's exe link (device 0
    /// where stat does not show the kernel's: compare inodes only).
    pub image: Option<(u64, u64)>,
    /// What the process ran before its last exec (one image back, itself without one): a
    /// connect made just before an exec is described by the image that made it.
    pub previous: Option<Box<Entry>>,
}

impl Entry {
    /// The bytes this entry accounts for: its slot and its strings, argv in full even when
    /// shared with a fork's parent (an upper bound: what it would cost were it the last).
    pub(super) fn bytes(&self) -> usize {
        ENTRY_FIXED
            + self.executable.as_deref().map_or(0, str::len)
            + self.args.as_ref().map_or(0, Argv::heap_bytes)
            + self.container_id.as_deref().map_or(0, str::len)
            + self.content_match.as_deref().map_or(0, str::len)
            + self.previous.as_deref().map_or(0, Entry::bytes)
    }
}

/// An entry's fixed cost: the entry, its key, its `by_pid` slot and hash-table overhead.
const ENTRY_FIXED: usize = std::mem::size_of::<Entry>()
    + 2 * std::mem::size_of::<Key>()
    + std::mem::size_of::<(u32, u64)>()
    + 16;

/// A loader run's bytes (see [`Entry::bytes`]).
fn run_bytes(r: &loader::Run) -> usize {
    std::mem::size_of::<loader::Run>()
        + r.loader.len()
        + r.program.as_deref().map_or(0, str::len)
        + r.content_match.as_deref().map_or(0, str::len)
}

/// The table's default bound in bytes (entries, strings, argv, loader runs): what an
/// unprivileged user can grow it to with huge command lines, whatever the entry count.
pub const DEFAULT_MAX_BYTES: usize = 24 << 20;

/// The table's size and turnover, as `sensor.process_table` reports it.
#[derive(
    Debug,
    Default,
    Clone,
    Copy,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[schemars(rename = "ProcessTableStats")]
pub struct Stats {
    pub entries: usize,
    /// Bytes accounted for (see [`Entry::bytes`]) and the bound.
    pub bytes: usize,
    pub max_bytes: usize,
    pub evicted: u64,
    pub expired: u64,
}

impl ProcTable {
    pub(super) fn insert(&mut self, key: Key, entry: Entry) {
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            self.evict_one();
        }
        let bytes = entry.bytes();
        self.by_pid.insert(key.tgid, key.start);
        if let Some(old) = self.entries.insert(key, entry) {
            self.bytes -= old.bytes();
        }
        self.bytes += bytes;
        // Over the byte bound: the longest-exited first, then any but the new one.
        while self.bytes > self.max_bytes && self.entries.len() > 1 {
            let Some(victim) = self
                .pop_exited(|_| true)
                .or_else(|| self.entries.keys().find(|k| **k != key).copied())
            else {
                break;
            };
            self.remove(victim);
            self.evicted += 1;
        }
    }

    /// Makes room: the longest-exited entry, else any (a full table of live processes
    /// means the capacity is too small; the count says so).
    fn evict_one(&mut self) {
        let victim = self
            .pop_exited(|_| true)
            .or_else(|| self.entries.keys().next().copied());
        if let Some(k) = victim {
            self.remove(k);
            self.evicted += 1;
        }
    }

    /// The longest-exited entry still in the table, if `old_enough` accepts its exit time,
    /// taken off the exit queue. Queue items whose entry went or changed are skipped.
    fn pop_exited(&mut self, old_enough: impl Fn(Instant) -> bool) -> Option<Key> {
        while let Some(&(t, k)) = self.exit_order.front() {
            if self.entries.get(&k).is_none_or(|e| e.exited != Some(t)) {
                self.exit_order.pop_front();
                continue;
            }
            if !old_enough(t) {
                return None;
            }
            self.exit_order.pop_front();
            return Some(k);
        }
        None
    }

    fn remove(&mut self, k: Key) {
        if let Some(e) = self.entries.remove(&k) {
            self.bytes -= e.bytes();
        }
        if let Some(r) = self.loaded.remove(&k) {
            self.bytes -= run_bytes(&r);
        }
        if self.by_pid.get(&k.tgid) == Some(&k.start) {
            self.by_pid.remove(&k.tgid);
        }
    }

    /// Sets (or clears) the loader run of `key`, its bytes accounted.
    pub(super) fn set_run(&mut self, key: Key, run: Option<Arc<loader::Run>>) {
        let old = match run {
            Some(r) => {
                self.bytes += run_bytes(&r);
                self.loaded.insert(key, r)
            }
            None => self.loaded.remove(&key),
        };
        if let Some(old) = old {
            self.bytes -= run_bytes(&old);
        }
    }

    /// Drops entries exited longer than the grace period.
    pub fn expire(&mut self, now: Instant) {
        let grace = self.grace;
        while let Some(k) = self.pop_exited(|t| now.saturating_duration_since(t) > grace) {
            self.remove(k);
            self.expired += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::enrich::proctable::test_support::*;

    #[test]
    fn exited_entries_live_for_the_grace_period() {
        let mut t = table(100);
        t.on_exec(&exec(40, 5 * S, 1, 0, "/usr/bin/nc"));
        t.on_exit(&task(40, 5 * S, 1, 0));
        t.expire(Instant::now());
        assert!(
            t.resolve(40, 5 * S, 0).is_some(),
            "still there right after exit"
        );
        t.expire(Instant::now() + Duration::from_millis(100));
        assert!(t.resolve(40, 5 * S, 0).is_none());
        assert_eq!(t.stats().expired, 1);
    }

    #[test]
    fn bounded_and_evicts_the_exited_first() {
        let mut t = table(3);
        for pid in 1..=3 {
            t.on_exec(&exec(pid, pid as u64 * S, 0, 0, "/bin/sh"));
        }
        t.on_exit(&task(2, 2 * S, 0, 0));
        t.on_exec(&exec(4, 4 * S, 0, 0, "/bin/sh"));
        assert_eq!(t.len(), 3);
        assert_eq!(t.stats().evicted, 1);
        assert!(t.resolve(2, 2 * S, 0).is_none(), "the exited one went");
        assert!(t.resolve(1, S, 0).is_some() && t.resolve(3, 3 * S, 0).is_some());
        for pid in 5..50 {
            t.on_exec(&exec(pid, pid as u64 * S, 0, 0, "/bin/sh"));
        }
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn bounded_in_bytes_whatever_the_argv() {
        let mut t = table(1000);
        t.set_max_bytes(64 << 10);
        let huge = "x\0".repeat(30_000);
        for pid in 1..=100 {
            let mut e = exec(pid, pid as u64 * S, 0, 0, "/bin/holder");
            e.args = Argv::parse(huge.as_bytes());
            t.on_exec(&e);
            assert!(t.stats().bytes <= 64 << 10, "{:?}", t.stats());
        }
        // About 8 KiB each: a handful fit, the rest were evicted and counted.
        assert!((5..=8).contains(&t.len()), "{}", t.len());
        assert_eq!(t.stats().evicted as usize, 100 - t.len());
        let (info, _) = t.resolve(100, 100 * S, 0).unwrap();
        assert_eq!(info.args.as_ref().map(Argv::count), Some(30_000));
        // What is removed is given back.
        for pid in 1..=100 {
            t.on_exit(&task(pid, pid as u64 * S, 0, 0));
        }
        t.expire(Instant::now() + Duration::from_secs(1));
        assert_eq!((t.len(), t.stats().bytes), (0, 0));
    }

    #[test]
    fn entry_memory() {
        // Reported in the issue note: fixed part of an entry plus its key and map slot.
        let fixed = std::mem::size_of::<Entry>()
            + std::mem::size_of::<Key>()
            + std::mem::size_of::<(u32, u64)>();
        eprintln!("process table entry: {fixed} bytes fixed + strings");
        assert!(fixed < 256);
    }
}

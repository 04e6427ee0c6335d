//! The process table: every process the kernel told us about, keyed by pid *and* start
//! time so a reused pid can never inherit another process's identity. Fed by exec, fork
//! and exit records, seeded from /proc at start-up, with /proc as the fallback for what
//! the kernel did not send. Exited processes stay for a grace period so their in-flight
//! connects still resolve; the table is bounded and its size is reported.

use std::{
    collections::{HashMap, VecDeque},
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{
    enrich::cgroups::CgroupMap,
    enrich::exe::resolve_on_disk,
    enrich::identity::{ExeFile, IdState, Identities, suspicious_location},
    enrich::loader,
    enrich::packages::Packages,
    enrich::procfs::{self, ProcessInfo, Procfs},
    kernel::{
        argv::Argv,
        records::{Exec, Task},
    },
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

/// How a connect record's executable compares with the process's images in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageMatch {
    /// The entry's current image made the connect.
    Current,
    /// The image before its last exec made it.
    Previous,
    /// Neither, but the live process's /proc exe is that image (its exec record was
    /// lost): described by /proc's exe and command line.
    Procfs,
    /// None of them: the line must not describe any program.
    Mismatch,
    /// Nothing to compare (no inode in the record or the entry, or no entry).
    Unchecked,
}

impl ImageMatch {
    /// `sensor.process.attribution` when the match replaced the table's description.
    pub fn attribution(self) -> Option<&'static str> {
        (self == ImageMatch::Procfs).then_some("procfs-image")
    }
}

/// Whether image `a` (an entry's) is image `b` (a record's): same inode, and same
/// device unless one side's is unknown (0).
fn same_image(a: (u64, u64), b: (u64, u64)) -> bool {
    a.1 == b.1 && (a.0 == 0 || b.0 == 0 || a.0 == b.0)
}

impl Entry {
    /// The bytes this entry accounts for: its slot and its strings, argv in full even when
    /// shared with a fork's parent (an upper bound: what it would cost were it the last).
    fn bytes(&self) -> usize {
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
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    pub entries: usize,
    /// Bytes accounted for (see [`Entry::bytes`]) and the bound.
    pub bytes: usize,
    pub max_bytes: usize,
    pub evicted: u64,
    pub expired: u64,
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

const ANCESTRY_DEPTH: usize = 8;

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

    /// Loads every live process from /proc. Call after the lifecycle hooks are attached, so
    /// no process falls between the seed and the first record.
    pub fn seed(&mut self) {
        for pid in self.procfs.pids() {
            if let Some(start) = self.procfs.start_ticks(pid)
                && !self.entries.contains_key(&Key { tgid: pid, start })
            {
                self.load_from_procfs(Key { tgid: pid, start });
            }
        }
    }

    fn load_from_procfs(&mut self, key: Key) -> Option<&Entry> {
        let info = self.procfs.lookup_ticks(key.tgid, Some(key.start), 0)?;
        let parent = info
            .ppid
            .and_then(|p| self.by_pid.get(&p).map(|&start| Key { tgid: p, start }));
        let proc_exe = self.procfs.exe_link(key.tgid);
        let (content_match, identity) = self.identities.identify(&ExeFile::Path(proc_exe), None);
        let entry = Entry {
            parent,
            ppid: info.ppid.unwrap_or(0),
            location: info
                .executable
                .as_deref()
                .and_then(|e| suspicious_location(e, None)),
            executable: info.executable.map(Arc::from),
            args: info.args,
            container_id: info.container_id.map(Arc::from),
            content_match: content_match.map(Arc::from),
            source: Source::Procfs,
            exited: None,
            identity,
            image: self.procfs.exe_id(key.tgid),
            previous: None,
        };
        self.insert(key, entry);
        self.entries.get(&key)
    }

    fn insert(&mut self, key: Key, entry: Entry) {
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

    pub fn on_exec(&mut self, e: &Exec) {
        let key = self.key(e.task.tgid, e.task.start_time_ns);
        let parent = Some(self.key(e.task.ppid, e.task.parent_start_time_ns));
        // /proc describes this exec only while the process lives and still runs the image
        // the kernel mapped: userspace lags, and the process may have exec'd again since.
        let alive = self.procfs.start_ticks(key.tgid) == Some(key.start)
            && (e.exe_ino == 0
                || self
                    .procfs
                    .exe_id(key.tgid)
                    .is_some_and(|id| same_image(id, (e.exe_dev, e.exe_ino))));
        // The executable: /proc's link while it shows this image (symlinks resolved, memfd
        // named), else the exec'd path resolved on disk if it is the inode the kernel mapped.
        let (executable, identity_path) = if alive && let Some(exe) = self.procfs.exe(key.tgid) {
            (Some(exe), Some(self.procfs.exe_link(key.tgid).into()))
        } else {
            let parent_root = self.procfs.root_of(e.task.ppid);
            match resolve_on_disk(&e.filename, e.exe_dev, e.exe_ino, &parent_root) {
                Some((shown, opened)) => (Some(shown), Some(opened)),
                // A memfd has no path: name it as /proc/PID/exe would.
                None if e.exe_nlink == Some(0) && e.exe_name.starts_with("memfd:") => {
                    (Some(format!("/{} (deleted)", e.exe_name)), None)
                }
                None => (Some(e.filename.clone()).filter(|f| !f.is_empty()), None),
            }
        };
        let location = executable
            .as_deref()
            .and_then(|x| suspicious_location(x, e.exe_nlink));
        let (content_match, identity) = identity_path.map_or((None, IdState::Known), |p| {
            self.identities
                .identify(&p, (e.exe_ino != 0).then_some(e.exe_ino))
        });
        // Kernel argv is capped; /proc has the whole line while the process lives.
        let args = if alive
            && e.args
                .as_ref()
                .is_none_or(|a| a.raw_len() >= sensor_common::ARGS_LEN - 1)
        {
            self.procfs.cmdline(key.tgid).or_else(|| e.args.clone())
        } else {
            e.args.clone()
        };
        // /proc while the process lives, else the kernel's cgroup id, else the parent's.
        let container_id = self
            .procfs
            .container_id(key.tgid)
            .or_else(|| self.cgroups.container_id(e.task.cgroup_id))
            .map(Arc::from)
            .or_else(|| {
                parent
                    .and_then(|p| self.entries.get(&p))
                    .and_then(|p| p.container_id.clone())
            });
        // The image it ran until now, kept one deep for a connect made just before.
        let previous = self.entries.get(&key).map(|old| {
            Box::new(Entry {
                previous: None,
                ..old.clone()
            })
        });
        // A loader's program is pinned now, while its working directory is the exec's.
        let run = loader::is_loader(executable.as_deref(), content_match.as_deref()).then(|| {
            loader::pin(
                &self.procfs,
                &mut self.identities,
                (key.tgid, e.task.ppid),
                (alive, true),
                executable.as_deref().unwrap_or_default(),
                e.args.as_ref(),
            )
        });
        self.set_run(key, run.map(Arc::new));
        self.insert(
            key,
            Entry {
                parent,
                ppid: e.task.ppid,
                executable: executable.map(Arc::from),
                args,
                container_id,
                content_match: content_match.map(Arc::from),
                location,
                source: Source::Exec,
                exited: None,
                identity,
                image: (e.exe_ino != 0).then_some((e.exe_dev, e.exe_ino)),
                previous,
            },
        );
    }

    /// An entry whose file the worker was hashing takes its answer, once there.
    fn settle_identity(&mut self, key: Key) {
        let Some(IdState::Pending(file)) = self.entries.get(&key).map(|e| &e.identity) else {
            return;
        };
        let settled = self.identities.settled(&file.clone());
        let Some(e) = self.entries.get_mut(&key) else {
            return;
        };
        let before = e.bytes();
        match settled {
            Ok(m) => {
                e.content_match = m.map(Arc::from);
                e.identity = IdState::Known;
            }
            Err(state) => e.identity = state,
        }
        let after = e.bytes();
        self.bytes = self.bytes + after - before;
    }

    /// Sets (or clears) the loader run of `key`, its bytes accounted.
    fn set_run(&mut self, key: Key, run: Option<Arc<loader::Run>>) {
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

    /// A process the kernel exec'd as a dynamic loader: the program pinned at its exec
    /// record, checked against its maps once, at the first connect (see [`loader`]). A
    /// loader process met only through /proc gets the claim from there, never confirmed.
    fn loader_run(&mut self, key: Key) -> Option<Arc<loader::Run>> {
        let alive = self.procfs.start_ticks(key.tgid) == Some(key.start);
        if let Some(r) = self.loaded.get(&key).cloned() {
            if r.check != loader::Check::Pending {
                return Some(r);
            }
            let check = loader::confirm(&self.procfs, &r, key.tgid, alive);
            let run = Arc::new(loader::Run {
                check,
                ..(*r).clone()
            });
            self.set_run(key, Some(run.clone()));
            return Some(run);
        }
        let e = self.entries.get(&key)?;
        if !loader::is_loader(e.executable.as_deref(), e.content_match.as_deref()) {
            return None;
        }
        let (exe, ppid) = (e.executable.clone()?, e.ppid);
        let run = Arc::new(loader::pin(
            &self.procfs,
            &mut self.identities,
            (key.tgid, ppid),
            (alive, false),
            &exe,
            None,
        ));
        self.set_run(key, Some(run.clone()));
        Some(run)
    }

    pub fn on_fork(&mut self, t: &Task) {
        let key = self.key(t.tgid, t.start_time_ns);
        let pkey = self.key(t.ppid, t.parent_start_time_ns);
        let parent = match self.entries.get(&pkey) {
            Some(p) => Some(p.clone()),
            None => self.load_from_procfs(pkey).cloned(),
        };
        // A fork of a loader process runs the same program, pinned at the same exec.
        let run = self.loaded.get(&pkey).cloned();
        if run.is_some() {
            self.set_run(key, run);
        }
        let entry = match parent {
            Some(p) => Entry {
                parent: Some(pkey),
                ppid: t.ppid,
                source: Source::Fork,
                exited: None,
                previous: None,
                ..p
            },
            None => Entry {
                parent: Some(pkey),
                ppid: t.ppid,
                executable: None,
                args: None,
                container_id: None,
                content_match: None,
                location: None,
                source: Source::Fork,
                exited: None,
                identity: IdState::Known,
                image: None,
                previous: None,
            },
        };
        self.insert(key, entry);
    }

    pub fn on_exit(&mut self, t: &Task) {
        let key = self.key(t.tgid, t.start_time_ns);
        if let Some(e) = self.entries.get_mut(&key)
            && e.exited.is_none()
        {
            let now = Instant::now();
            e.exited = Some(now);
            self.exit_order.push_back((now, key));
        }
    }

    /// Describes a connect's process (`info`, from [`ProcTable::resolve`]) by the image
    /// the kernel saw making it (`image`, from the record): when the process exec'd since,
    /// its previous image; when neither is that image but the live process's /proc exe is
    /// (its exec record was lost: a flood filled the ring), /proc's; else no program at
    /// all, marked.
    pub fn connect_image(
        &mut self,
        tgid: u32,
        start_ns: u64,
        image: Option<(u64, u64)>,
        info: &mut ProcessInfo,
    ) -> ImageMatch {
        let key = if start_ns != 0 {
            self.key(tgid, start_ns)
        } else {
            match self.by_pid.get(&tgid) {
                Some(&start) => Key { tgid, start },
                None => return ImageMatch::Unchecked,
            }
        };
        let (Some(image), Some(e)) = (image, self.entries.get(&key)) else {
            return ImageMatch::Unchecked;
        };
        let Some(current) = e.image else {
            return ImageMatch::Unchecked;
        };
        if same_image(current, image) {
            return ImageMatch::Current;
        }
        if let Some(p) = e.previous.as_deref()
            && p.image.is_some_and(|i| same_image(i, image))
        {
            info.executable = p.executable.as_deref().map(str::to_string);
            info.args = p.args.clone();
            info.content_match = p.content_match.as_deref().map(str::to_string);
            info.location = p.location;
            return ImageMatch::Previous;
        }
        if self.procfs_image(key, image, info) {
            return ImageMatch::Procfs;
        }
        info.executable = None;
        info.args = None;
        info.content_match = None;
        info.location = None;
        info.image_mismatch = true;
        ImageMatch::Mismatch
    }

    /// Describes `info` by /proc when the process `key` still lives and its exe is
    /// `image`, read twice around the path and command line so an exec in between is
    /// not taken for the connecting image. False (`info` untouched) otherwise.
    fn procfs_image(&mut self, key: Key, image: (u64, u64), info: &mut ProcessInfo) -> bool {
        let live = || self.procfs.start_ticks(key.tgid) == Some(key.start);
        let exe_is = |id: Option<(u64, u64)>| id.is_some_and(|i| same_image(i, image));
        if !live() || !exe_is(self.procfs.exe_id(key.tgid)) {
            return false;
        }
        let exe = self.procfs.exe(key.tgid);
        let args = self.procfs.cmdline(key.tgid);
        let link = self.procfs.exe_link(key.tgid);
        let Some(exe) = exe else { return false };
        if !exe_is(self.procfs.exe_id(key.tgid)) || !live() {
            return false;
        }
        // The file the record names (its inode), never whatever the link reaches later.
        let (content_match, identity) = self
            .identities
            .identify(&ExeFile::Path(link), Some(image.1));
        info.location = suspicious_location(&exe, None);
        info.unmanaged = match &info.container_id {
            None => self.packages.is_managed(&exe).map(|m| !m),
            Some(_) => None,
        };
        info.executable = Some(exe);
        info.args = args;
        info.content_match = content_match;
        info.identity = identity.as_str();
        // The table's loader run described the table's image, not this one.
        info.loader = None;
        info.loader_check = None;
        true
    }

    /// Drops entries exited longer than the grace period.
    pub fn expire(&mut self, now: Instant) {
        let grace = self.grace;
        while let Some(k) = self.pop_exited(|t| now.saturating_duration_since(t) > grace) {
            self.remove(k);
            self.expired += 1;
        }
    }

    /// Attribution for a connect by `tgid` started at `start_ns` (0 = unknown): the table
    /// first, /proc second. None when neither knows the process.
    pub fn resolve(
        &mut self,
        tgid: u32,
        start_ns: u64,
        kernel_ppid: u32,
    ) -> Option<(ProcessInfo, Source)> {
        let key = if start_ns != 0 {
            self.key(tgid, start_ns)
        } else {
            Key {
                tgid,
                start: *self.by_pid.get(&tgid)?,
            }
        };
        // Unknown, or known only as a blank fork of an unknown parent: /proc may know more.
        let blank = self
            .entries
            .get(&key)
            .is_none_or(|e| e.executable.is_none());
        if blank && self.load_from_procfs(key).is_none() && !self.entries.contains_key(&key) {
            return None;
        }
        self.settle_identity(key);
        let run = self.loader_run(key);
        let e = self.entries.get(&key)?;
        let mut info = ProcessInfo {
            executable: e.executable.as_deref().map(str::to_string),
            args: e.args.clone(),
            ppid: Some(if kernel_ppid != 0 {
                kernel_ppid
            } else {
                e.ppid
            }),
            parent_executable: None,
            container_id: e.container_id.as_deref().map(str::to_string),
            content_match: e.content_match.as_deref().map(str::to_string),
            location: e.location,
            ancestors: Vec::new(),
            // Filled by the pipeline from the container id.
            pod: None,
            container_runtime: None,
            loader: None,
            loader_check: None,
            loader_claim: None,
            unmanaged: None,
            identity: e.identity.as_str(),
            image_mismatch: false,
        };
        if let Some(run) = &run {
            info.loader = Some(run.loader.clone());
            info.loader_check = Some(run.check.as_str());
            if run.confirmed() {
                // The program the loader ran is the process's executable; the loader beside.
                info.executable = run.program.clone();
                info.content_match = run.content_match.clone();
                info.location = run.location;
            } else {
                // Unconfirmed: the loader stays the executable and scores as `ld.so`; the
                // claim is shown beside it, for the analyst, never for scoring or rules.
                info.loader_claim = run.program.clone();
                info.content_match = Some(loader::LOADER.to_string());
            }
        }
        // Only the host's own files are in its package database; a container's are not.
        // Managed means the host's file at that path is the image the kernel ran.
        let image = match run.as_deref() {
            Some(r) if r.confirmed() => r.file,
            _ => e.image,
        };
        info.unmanaged = match (&info.executable, &info.container_id) {
            (Some(exe), None) => self.packages.is_managed_image(exe, image).map(|m| !m),
            _ => None,
        };
        let mut next = e.parent;
        for _ in 0..ANCESTRY_DEPTH {
            let Some(k) = next else { break };
            let Some(p) = self.entries.get(&k) else { break };
            info.ancestors
                .push(p.executable.as_deref().unwrap_or("?").to_string());
            next = p.parent.filter(|pk| *pk != k);
        }
        info.parent_executable = info
            .ancestors
            .first()
            .filter(|x| *x != "?")
            .cloned()
            .or_else(|| {
                // Parent not in the table (e.g. exited before start-up): ask /proc.
                info.ppid.and_then(|p| self.procfs.exe(p))
            });
        Some((info, e.source))
    }
}

/// Basename chain, nearest ancestor last, for `sshd > bash > python3` at a glance.
pub fn lineage(info: &ProcessInfo) -> Option<String> {
    let me = info.executable.as_deref().map(procfs::exe_name)?;
    let mut names: Vec<&str> = info
        .ancestors
        .iter()
        .rev()
        .map(|a| procfs::exe_name(a))
        .collect();
    names.push(me);
    Some(names.join(" > "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(cap: usize) -> ProcTable {
        ProcTable::new(
            Procfs::new("/nonexistent-proc"),
            Identities::scan(|_| None, Path::new("/nonexistent")),
            cap,
            Duration::from_millis(50),
        )
    }

    fn task(tgid: u32, start_ns: u64, ppid: u32, pstart_ns: u64) -> Task {
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

    fn exec(tgid: u32, start_ns: u64, ppid: u32, pstart_ns: u64, file: &str) -> Exec {
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

    const S: u64 = 10_000_000; // one clock tick at USER_HZ 100

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

    #[test]
    fn fork_inherits_and_ancestry_reads_at_a_glance() {
        let mut t = table(100);
        t.on_exec(&exec(10, S, 1, 0, "/usr/sbin/sshd"));
        t.on_fork(&task(20, 2 * S, 10, S));
        t.on_exec(&exec(20, 2 * S, 10, S, "/usr/bin/bash"));
        t.on_fork(&task(30, 3 * S, 20, 2 * S));
        // The forked child is bash until it execs.
        assert_eq!(
            t.resolve(30, 3 * S, 0).unwrap().0.executable.as_deref(),
            Some("/usr/bin/bash")
        );
        t.on_exec(&exec(30, 3 * S, 20, 2 * S, "/usr/bin/python3.11"));
        let (info, src) = t.resolve(30, 3 * S, 20).unwrap();
        assert_eq!(src, Source::Exec);
        assert_eq!(info.parent_executable.as_deref(), Some("/usr/bin/bash"));
        assert_eq!(info.ancestors, ["/usr/bin/bash", "/usr/sbin/sshd"]);
        assert_eq!(lineage(&info).unwrap(), "sshd > bash > python3.11");
        assert_eq!(info.args.unwrap(), ["/usr/bin/python3.11", "arg"]);
    }

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
    fn memfd_and_tmp_are_flagged() {
        let mut t = table(10);
        let mut e = exec(60, 6 * S, 1, 0, "/dev/fd/3");
        e.exe_nlink = Some(0);
        t.on_exec(&e);
        assert_eq!(t.resolve(60, 6 * S, 0).unwrap().0.location, Some("fd"));
        // With the dentry name from the kernel, a vanished memfd process is named as /proc would.
        e.task.tgid = 62;
        e.exe_name = "memfd:payload".into();
        t.on_exec(&e);
        let (info, _) = t.resolve(62, 6 * S, 0).unwrap();
        assert_eq!(info.executable.as_deref(), Some("/memfd:payload (deleted)"));
        assert_eq!(info.location, Some("memfd"));
        t.on_exec(&exec(61, 6 * S, 1, 0, "/tmp/.x/agent"));
        assert_eq!(t.resolve(61, 6 * S, 0).unwrap().0.location, Some("tmp"));
    }

    #[test]
    fn a_connect_is_described_by_the_image_that_made_it() {
        let mut t = table(10);
        let mut py = exec(70, 7 * S, 1, 0, "/usr/bin/python3");
        (py.exe_dev, py.exe_ino) = (8, 100);
        t.on_exec(&py);
        let mut sleep = exec(70, 7 * S, 1, 0, "/usr/bin/sleep");
        (sleep.exe_dev, sleep.exe_ino) = (8, 200);
        t.on_exec(&sleep);
        let image = |t: &mut ProcTable, img| {
            let (mut info, _) = t.resolve(70, 7 * S, 0).unwrap();
            let m = t.connect_image(70, 7 * S, img, &mut info);
            (m, info.executable, info.image_mismatch)
        };
        let python = Some("/usr/bin/python3".to_string());
        let sleep_exe = Some("/usr/bin/sleep".to_string());
        assert_eq!(
            image(&mut t, Some((8, 100))),
            (ImageMatch::Previous, python, false)
        );
        assert_eq!(
            image(&mut t, Some((8, 200))),
            (ImageMatch::Current, sleep_exe.clone(), false)
        );
        assert_eq!(
            image(&mut t, Some((8, 300))),
            (ImageMatch::Mismatch, None, true)
        );
        // Same inode on another device is another file.
        assert_eq!(image(&mut t, Some((9, 100))).0, ImageMatch::Mismatch);
        assert_eq!(
            image(&mut t, None),
            (ImageMatch::Unchecked, sleep_exe, false)
        );
        // A fork runs its parent's current image, not the one before.
        t.on_fork(&task(71, 8 * S, 70, 7 * S));
        let (mut info, _) = t.resolve(71, 8 * S, 0).unwrap();
        assert_eq!(
            t.connect_image(71, 8 * S, Some((8, 100)), &mut info),
            ImageMatch::Mismatch
        );
    }

    #[test]
    fn a_lost_exec_record_is_recovered_from_procs_exe_when_it_is_the_connecting_image() {
        // This test process stands for `nc`: its fork record came (a copy of the parent's
        // image), its exec record was lost, and its connect carries its real image.
        let mut t = ProcTable::new(
            Procfs::new("/proc"),
            Identities::scan(|_| None, Path::new("/nonexistent")),
            10,
            Duration::from_secs(5),
        );
        let pid = std::process::id();
        let start_ns = t.procfs.start_ticks(pid).unwrap() * t.ns_per_tick;
        let real = t.procfs.exe_id(pid).unwrap();
        let own_exe = t.procfs.exe(pid).unwrap();
        let parent = 0x7fff_fff0;
        let mut bash = exec(parent, S, 1, 0, "/usr/bin/bash");
        (bash.exe_dev, bash.exe_ino) = (real.0, real.1 + 1);
        t.on_exec(&bash);
        t.on_fork(&task(pid, start_ns, parent, S));
        let connect = |t: &mut ProcTable, start_ns, img| {
            let (mut info, _) = t.resolve(pid, start_ns, 0).unwrap();
            assert_eq!(info.executable.as_deref(), Some("/usr/bin/bash"));
            let m = t.connect_image(pid, start_ns, Some(img), &mut info);
            (m, info)
        };

        let (m, info) = connect(&mut t, start_ns, real);
        assert_eq!(m, ImageMatch::Procfs);
        assert_eq!(m.attribution(), Some("procfs-image"));
        assert_eq!(info.executable.as_deref(), Some(own_exe.as_str()));
        assert!(!info.image_mismatch);
        let argv0 = std::env::args().next().unwrap();
        let args = info.args.expect("the command line from /proc");
        assert_eq!(args.iter().next().map(|a| a.to_string()), Some(argv0));
        assert_eq!(info.parent_executable.as_deref(), Some("/usr/bin/bash"));

        // /proc's exe is another file than the record's: blanked and flagged as before.
        let (m, info) = connect(&mut t, start_ns, (real.0, real.1 + 2));
        assert_eq!(
            (m, info.executable, info.image_mismatch),
            (ImageMatch::Mismatch, None, true)
        );
        assert_eq!(m.attribution(), None);

        // Another process under a reused pid (another start time) is never read from /proc.
        let later = start_ns + 3 * t.ns_per_tick;
        t.on_fork(&task(pid, later, parent, S));
        let (m, info) = connect(&mut t, later, real);
        assert_eq!(
            (m, info.executable, info.image_mismatch),
            (ImageMatch::Mismatch, None, true)
        );
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

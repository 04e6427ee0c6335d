//! Process enrichment from procfs: executable, command line, parent, container.
//! Everything read here is attacker-influenced and may vanish mid-read: every field is
//! optional and no read can fail the event.

use std::{
    fs,
    path::{Path, PathBuf},
};

use procfs::FromRead;

use crate::{enrich::container, kernel::argv::Argv};

/// What is known about one process. `None` means unknown (gone, or unreadable).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessInfo {
    pub executable: Option<String>,
    /// The command line, bounded in bytes and shared (see [`Argv`]).
    pub args: Option<Argv>,
    pub ppid: Option<u32>,
    pub parent_executable: Option<String>,
    pub container_id: Option<String>,
    /// The high-risk list entry this executable is a byte-for-byte (or build-id) copy of.
    pub content_match: Option<String>,
    /// Why the executable's location is suspicious (memfd, deleted, tmp, ...).
    pub location: Option<&'static str>,
    /// Ancestors' executables, parent first ("?" where unknown).
    pub ancestors: Vec<String>,
    /// The Kubernetes pod of its container, from the kubelet's links on the node.
    pub pod: Option<crate::enrich::kubelet::Pod>,
    /// The container runtime its cgroup names (containerd, cri-o, docker, podman).
    pub container_runtime: Option<&'static str>,
    /// The dynamic loader the kernel exec'd when `executable` is the program it ran.
    pub loader: Option<String>,
    /// How that program was checked (maps, mismatch, process-gone, unresolved).
    pub loader_check: Option<&'static str>,
    /// The program a loader's arguments name, when that was not confirmed (the
    /// executable is then the loader): shown, never scored.
    pub loader_claim: Option<String>,
    /// Not in the host's package database (None: unknown, e.g. in a container).
    pub unmanaged: Option<bool>,
    /// `pending` while the executable's hash is being taken, `skipped-budget` when it was
    /// not (see `identity::IdState`); None once known.
    pub identity: Option<&'static str>,
    /// The executable the kernel saw making the connect is none of the images the
    /// process table knows for it: the program is not named rather than named wrongly.
    pub image_mismatch: bool,
}

impl ProcessInfo {
    /// Heap bytes this description holds, its argv in full though shared (an upper
    /// bound, for caches that keep descriptions).
    pub fn heap_bytes(&self) -> usize {
        let s = |o: &Option<String>| o.as_deref().map_or(0, str::len);
        s(&self.executable)
            + self.args.as_ref().map_or(0, Argv::heap_bytes)
            + s(&self.parent_executable)
            + s(&self.container_id)
            + s(&self.content_match)
            + s(&self.loader)
            + s(&self.loader_claim)
            + self.ancestors.iter().map(|a| a.len() + 24).sum::<usize>()
            + self.pod.as_ref().map_or(0, |p| {
                p.namespace.len() + p.name.len() + p.container.len() + s(&p.uid)
            })
    }

    /// The kept arguments joined by spaces.
    pub fn command_line(&self) -> Option<String> {
        self.args.as_ref().map(Argv::join)
    }
}

pub struct Procfs {
    root: PathBuf,
    /// Clock ticks per second, to compare /proc start times with the kernel's nanoseconds.
    ticks_per_sec: u64,
}

impl Procfs {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            // sysconf(_SC_CLK_TCK); 100 on every Linux, should it ever fail.
            ticks_per_sec: Some(procfs::ticks_per_second())
                .filter(|&t| t > 0)
                .unwrap_or(100),
        }
    }

    fn dir(&self, pid: u32) -> PathBuf {
        self.root.join(pid.to_string())
    }

    pub fn ticks_per_sec(&self) -> u64 {
        self.ticks_per_sec
    }

    /// Every numeric entry of the procfs root.
    pub fn pids(&self) -> Vec<u32> {
        fs::read_dir(&self.root)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().to_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The process's start time in clock ticks since boot, if it exists.
    pub fn start_ticks(&self, pid: u32) -> Option<u64> {
        read_stat(&self.dir(pid)).map(|s| s.start_ticks)
    }

    /// `/proc/PID/root`: the process's view of `/` (its container's, if any).
    pub fn root_of(&self, pid: u32) -> PathBuf {
        self.dir(pid).join("root")
    }

    /// `/proc/PID/exe` itself: opening it reaches the mapped file, even a deleted one.
    /// When the leader thread has exited (a zombie while other threads live on, whose
    /// exe no longer reads), a live thread's `/proc/PID/task/TID/exe`.
    pub fn exe_link(&self, pid: u32) -> PathBuf {
        self.live_exe(pid)
            .map_or_else(|| self.dir(pid).join("exe"), |(link, _)| link)
    }

    pub fn exe(&self, pid: u32) -> Option<String> {
        self.live_exe(pid).map(|(_, target)| target)
    }

    /// The command line; a live thread's when the leader thread has exited (its own reads
    /// empty then).
    pub fn cmdline(&self, pid: u32) -> Option<Argv> {
        read_cmdline(&self.dir(pid).join("cmdline")).or_else(|| {
            let (link, _) = self.live_thread_exe(pid)?;
            read_cmdline(&link.with_file_name("cmdline"))
        })
    }

    /// The mapped executable's identity as `stat` shows it: (device, inode). The device
    /// is 0 where `stat` does not show the device the kernel's records carry (overlayfs,
    /// btrfs: an anonymous device per mount or subvolume): then compare inodes only.
    pub fn exe_id(&self, pid: u32) -> Option<(u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        let link = self.exe_link(pid);
        // stat follows the magic link without opening the file.
        let meta = fs::metadata(&link).ok()?;
        Some((if dev_shown(&link) { meta.dev() } else { 0 }, meta.ino()))
    }

    /// The process's exe link and its target: its own, else a live thread's.
    fn live_exe(&self, pid: u32) -> Option<(PathBuf, String)> {
        let own = self.dir(pid).join("exe");
        match read_link(&own) {
            Some(target) => Some((own, target)),
            None => self.live_thread_exe(pid),
        }
    }

    /// The first thread (of at most [`MAX_THREADS_SCANNED`]) whose exe link reads: a
    /// process whose leader exited still runs its image in the others.
    fn live_thread_exe(&self, pid: u32) -> Option<(PathBuf, String)> {
        let tasks = fs::read_dir(self.dir(pid).join("task")).ok()?;
        tasks
            .take(MAX_THREADS_SCANNED)
            .flatten()
            .filter(|t| t.file_name().to_str() != Some(&pid.to_string()))
            .find_map(|t| {
                let link = t.path().join("exe");
                read_link(&link).map(|target| (link, target))
            })
    }

    pub fn container_id(&self, pid: u32) -> Option<String> {
        fs::read_to_string(self.dir(pid).join("cgroup"))
            .ok()
            .and_then(|c| container::id_from_cgroup_file(&c))
    }

    /// Looks up `pid`. When `start_ticks` is given and /proc shows a different start
    /// time, the pid was reused: None. A vanished process is None too.
    pub fn lookup_ticks(
        &self,
        pid: u32,
        start_ticks: Option<u64>,
        kernel_ppid: u32,
    ) -> Option<ProcessInfo> {
        let stat = read_stat(&self.dir(pid))?;
        if start_ticks.is_some_and(|t| t != stat.start_ticks) {
            return None;
        }
        let ppid = if kernel_ppid != 0 {
            kernel_ppid
        } else {
            stat.ppid
        };
        Some(ProcessInfo {
            executable: self.exe(pid),
            args: self.cmdline(pid),
            ppid: Some(ppid),
            parent_executable: self.exe(ppid),
            container_id: self.container_id(pid),
            ..Default::default()
        })
    }
}

struct Stat {
    ppid: u32,
    start_ticks: u64,
}

/// /proc/PID/stat, parsed by the procfs crate (comm may hold spaces and parentheses).
fn read_stat(dir: &Path) -> Option<Stat> {
    let text = fs::read(dir.join("stat")).ok()?;
    parse_stat(&text)
}

fn parse_stat(text: &[u8]) -> Option<Stat> {
    // procfs slices past the last ')' without checking: make sure fields follow it.
    let close = text.iter().rposition(|&b| b == b')')?;
    if text.len() < close + 3 {
        return None;
    }
    let stat = procfs::process::Stat::from_read(text).ok()?;
    Some(Stat {
        ppid: u32::try_from(stat.ppid).ok()?,
        start_ticks: stat.starttime,
    })
}

/// Threads looked at for a live one when the leader has exited: the scan is bounded
/// whatever the process spawns.
const MAX_THREADS_SCANNED: usize = 64;

/// Whether `stat` of `path` shows the device the kernel's `sb->s_dev` is: not on
/// overlayfs and btrfs, whose files report another device than their superblock's.
fn dev_shown(path: &Path) -> bool {
    const BTRFS_SUPER_MAGIC: i64 = 0x9123_683e;
    const OVERLAYFS_SUPER_MAGIC: i64 = 0x794c_7630;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: valid NUL-terminated path and a zeroed statfs to fill.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return false;
    }
    !matches!(st.f_type as i64, BTRFS_SUPER_MAGIC | OVERLAYFS_SUPER_MAGIC)
}

fn read_link(path: &Path) -> Option<String> {
    fs::read_link(path)
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

/// A command line is the process's to size (up to the kernel's argument limit): a
/// bounded start of it is kept and the rest only counted (see [`Argv::read`]). Kernel
/// threads and zombies have none.
fn read_cmdline(path: &Path) -> Option<Argv> {
    Argv::read(fs::File::open(path).ok()?)
}

/// Basename of an executable path, keeping a ` (deleted)` marker off the name.
pub fn exe_name(executable: &str) -> &str {
    let exe = executable.strip_suffix(" (deleted)").unwrap_or(executable);
    exe.rsplit('/').next().unwrap_or(exe)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_hostile_comm() {
        // A whole line as the kernel writes it (52 fields), with a comm made to confuse.
        let s = parse_stat(
            b"42 (a) b (c) ) S 7 42 42 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 12345 0 0 \
              18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0",
        )
        .unwrap();
        assert_eq!((s.ppid, s.start_ticks), (7, 12345));
        assert!(parse_stat(b"42 (x").is_none());
        assert!(parse_stat(b"").is_none());
    }

    #[test]
    fn exe_names() {
        assert_eq!(exe_name("/usr/bin/nc.openbsd"), "nc.openbsd");
        assert_eq!(exe_name("/tmp/x (deleted)"), "x");
        assert_eq!(exe_name("curl"), "curl");
    }

    #[test]
    fn looks_up_itself_and_detects_reuse() {
        let procfs = Procfs::new("/proc");
        let me = std::process::id();
        let start = procfs.start_ticks(me).unwrap();
        let info = procfs.lookup_ticks(me, Some(start), 0).unwrap();
        let exe = std::env::current_exe().unwrap();
        assert_eq!(info.executable.as_deref(), exe.to_str());
        assert!(info.args.unwrap().iter().next().unwrap().contains("sensor"));
        assert_eq!(info.ppid, Some(std::os::unix::process::parent_id()));
        assert!(procfs.pids().contains(&me));
        // A start time that is not ours means "another process with this pid".
        assert_eq!(procfs.lookup_ticks(me, Some(start + 1), 0), None);
        // A pid that does not exist: None, no panic.
        assert_eq!(procfs.lookup_ticks(u32::MAX, None, 0), None);
        // The identity of the mapped file is the one stat shows for it.
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(&exe).unwrap();
        let (dev, ino) = procfs.exe_id(me).unwrap();
        assert_eq!(ino, meta.ino());
        assert!(dev == meta.dev() || dev == 0);
    }
}

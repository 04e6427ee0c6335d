//! Process enrichment from procfs: executable, command line, parent, container.
//! Everything read here is attacker-influenced and may vanish mid-read: every field is
//! optional and no read can fail the event.

use std::{
    fs,
    path::{Path, PathBuf},
};

use crate::container;

/// What procfs told us about one process. `None` means unknown (gone, or unreadable).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessInfo {
    pub executable: Option<String>,
    pub args: Option<Vec<String>>,
    pub ppid: Option<u32>,
    pub parent_executable: Option<String>,
    pub container_id: Option<String>,
}

impl ProcessInfo {
    pub fn command_line(&self) -> Option<String> {
        self.args.as_ref().map(|a| a.join(" "))
    }
}

pub struct Procfs {
    root: PathBuf,
    /// Clock ticks per second, to compare /proc start times with the kernel's nanoseconds.
    ticks_per_sec: u64,
}

impl Procfs {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        Self {
            root: root.into(),
            ticks_per_sec: u64::try_from(ticks).ok().filter(|&t| t > 0).unwrap_or(100),
        }
    }

    fn dir(&self, pid: u32) -> PathBuf {
        self.root.join(pid.to_string())
    }

    /// Looks up `pid`. When `start_time_ns` (boot-based, from the kernel) is non-zero and
    /// /proc shows a different start time, the pid was reused: nothing is attributed.
    pub fn lookup(&self, pid: u32, start_time_ns: u64, kernel_ppid: u32) -> ProcessInfo {
        let dir = self.dir(pid);
        let stat = read_stat(&dir);
        if let (Some(stat), true) = (&stat, start_time_ns != 0) {
            let want = start_time_ns / (1_000_000_000 / self.ticks_per_sec);
            if stat.start_ticks != want {
                return ProcessInfo::default();
            }
        }
        let ppid = match kernel_ppid {
            0 => stat.as_ref().map(|s| s.ppid),
            p => Some(p),
        };
        ProcessInfo {
            executable: read_link(&dir.join("exe")),
            args: read_cmdline(&dir.join("cmdline")),
            ppid,
            parent_executable: ppid.and_then(|p| read_link(&self.dir(p).join("exe"))),
            container_id: fs::read_to_string(dir.join("cgroup"))
                .ok()
                .and_then(|c| container::id_from_cgroup_file(&c)),
        }
    }
}

struct Stat {
    ppid: u32,
    start_ticks: u64,
}

/// /proc/PID/stat: `pid (comm) state ppid ... starttime(22nd)`. comm may hold spaces and
/// parentheses, so fields are counted from the last ')'.
fn read_stat(dir: &Path) -> Option<Stat> {
    let text = fs::read(dir.join("stat")).ok()?;
    parse_stat(&text)
}

fn parse_stat(text: &[u8]) -> Option<Stat> {
    let close = text.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(text.get(close + 1..)?).ok()?;
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    // fields[0] is state (field 3); ppid is field 4, starttime field 22.
    Some(Stat {
        ppid: fields.get(1)?.parse().ok()?,
        start_ticks: fields.get(19)?.parse().ok()?,
    })
}

fn read_link(path: &Path) -> Option<String> {
    fs::read_link(path)
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

/// NUL-separated argv; invalid UTF-8 is replaced, not dropped.
fn read_cmdline(path: &Path) -> Option<Vec<String>> {
    let raw = fs::read(path).ok()?;
    if raw.is_empty() {
        // Kernel threads and zombies have no command line.
        return None;
    }
    let raw = raw.strip_suffix(&[0]).unwrap_or(&raw);
    Some(
        raw.split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    )
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
        let s =
            parse_stat(b"42 (a) b (c) ) S 7 42 42 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 12345 0 0")
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
        let info = procfs.lookup(me, 0, 0);
        assert_eq!(
            info.executable.as_deref(),
            std::env::current_exe()
                .ok()
                .and_then(|p| p.to_str().map(String::from))
                .as_deref()
        );
        assert!(info.args.unwrap()[0].contains("sensor"));
        assert_eq!(info.ppid, Some(std::os::unix::process::parent_id()));
        // A start time that cannot be ours means "another process with this pid".
        assert_eq!(procfs.lookup(me, 1, 0), ProcessInfo::default());
        // A pid that does not exist: all unknown, no panic.
        assert_eq!(procfs.lookup(u32::MAX, 0, 0).executable, None);
    }
}

//! uid -> user name from the host's account database, cached. Re-read when a uid is not
//! found and the file changed, so users added after start-up resolve.
//! Hand-written rather than through libc's getpwuid: the file is the host's (under
//! `--host-root`), not this process's NSS view, and a split on ':' is all it takes.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use crate::enrich::{procfs::Procfs, rootfs};

pub struct Users {
    path: PathBuf,
    names: HashMap<u32, String>,
    mtime: Option<SystemTime>,
    /// Reads of the file that failed (names then stay unknown); reported in metrics.
    pub read_errors: u64,
}

impl Users {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        let mut u = Self {
            path: path.into(),
            names: HashMap::new(),
            mtime: None,
            read_errors: 0,
        };
        u.reload();
        u
    }

    fn reload(&mut self) {
        let mtime = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        if mtime.is_some() && mtime == self.mtime {
            return;
        }
        self.mtime = mtime;
        // Type and size checked before it is opened for reading (never a device node).
        match rootfs::read_path(&self.path, MAX_PASSWD) {
            Ok(b) => self.names = parse_passwd(&String::from_utf8_lossy(&b)),
            Err(e) => {
                // Said once per failing streak, counted every time.
                if self.read_errors == 0 || !self.names.is_empty() {
                    log::warn!(
                        "cannot read {}: {e}; user names stay unknown until it can be read",
                        self.path.display()
                    );
                }
                self.read_errors += 1;
                self.names.clear();
            }
        }
    }

    pub fn name(&mut self, uid: u32) -> Option<&str> {
        if !self.names.contains_key(&uid) {
            self.reload();
        }
        self.names.get(&uid).map(String::as_str)
    }

    /// The name as last read, without looking at the file again.
    pub fn cached(&self, uid: u32) -> Option<&str> {
        self.names.get(&uid).map(String::as_str)
    }
}

/// Whose account database gave a user name: allow rules believe only the host's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameSource {
    /// The host's account database names the kernel's uid so (for a process in a
    /// container, its own passwd says the same).
    Host,
    /// Only the container's own passwd, which its root writes, names it so.
    Container,
}

impl NameSource {
    pub fn as_str(self) -> &'static str {
        match self {
            NameSource::Host => "host",
            NameSource::Container => "container",
        }
    }

    /// From a recorded line's `sensor.user.name_source`; anything else is no source.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "host" => Some(NameSource::Host),
            "container" => Some(NameSource::Container),
            _ => None,
        }
    }
}

/// A user name and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserName {
    pub name: String,
    pub source: NameSource,
}

/// `name:x:uid:gid:gecos:home:shell` lines; malformed lines are skipped.
pub fn parse_passwd(text: &str) -> HashMap<u32, String> {
    let mut out = HashMap::new();
    for line in text.lines() {
        let mut f = line.split(':');
        let (Some(name), Some(_), Some(uid)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if let Ok(uid) = uid.parse() {
            // First entry wins, as getpwuid does.
            out.entry(uid).or_insert_with(|| name.to_string());
        }
    }
    out
}

// Users in containers: their names come from the container's own account database
// (`/proc/PID/root/etc/passwd`, read inside that root with a bound), never the node's: a
// container's uid 1000 is not the node's uid 1000. The file is the container's to size:
// it is scanned for the uid asked about, line by line, and only that name is kept, per
// (mount namespace, uid), the cache bounded in bytes. A name that cannot be read is left
// out, and `user.id` stands alone.

/// The largest passwd file read (a real one is a few KiB).
const MAX_PASSWD: u64 = 1 << 20;
/// A longer passwd line names nobody (a user name is at most 32 bytes on Linux).
const MAX_LINE: usize = 1024;
/// A longer name is not kept (not a name `useradd` makes).
const MAX_NAME: usize = 256;
/// Bytes of names (and answers that there is none) kept; dropped whole past that.
const MAX_CACHE_BYTES: usize = 256 << 10;
/// A cached answer's fixed cost: key, value and hash-table slot.
const ANSWER_BYTES: usize = 64;

/// uid -> name answers, keyed by (mount namespace inode, uid); None: no such uid in that
/// passwd, or none readable.
#[derive(Default)]
pub struct ContainerUsers {
    names: HashMap<(u64, u32), Option<Box<str>>>,
    bytes: usize,
    /// passwd files that could not be read (gone, not a regular file, too large).
    pub unreadable: u64,
    /// passwd scans made (one per namespace and uid not cached), and cache flushes.
    pub scans: u64,
    pub flushed: u64,
}

/// The first entry of the passwd `file` for `uid` (as getpwuid takes the first), read
/// line by line with a bound on each line and on the whole.
fn scan_passwd(file: std::fs::File, uid: u32) -> Option<String> {
    use std::io::{BufRead, BufReader, Read};
    let mut r = BufReader::with_capacity(8 << 10, file.take(MAX_PASSWD));
    let mut line = Vec::with_capacity(256);
    loop {
        line.clear();
        let n = (&mut r)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut line)
            .ok()?;
        if n == 0 {
            return None;
        }
        if n == MAX_LINE && !line.ends_with(b"\n") {
            // An overlong line names nobody: skip to its end.
            loop {
                let buf = r.fill_buf().ok()?;
                if buf.is_empty() {
                    return None;
                }
                match buf.iter().position(|&b| b == b'\n') {
                    Some(i) => {
                        r.consume(i + 1);
                        break;
                    }
                    None => {
                        let all = buf.len();
                        r.consume(all);
                    }
                }
            }
            continue;
        }
        let line = line.strip_suffix(b"\n").unwrap_or(&line);
        let mut f = line.split(|&b| b == b':');
        if let (Some(name), Some(_), Some(u)) = (f.next(), f.next(), f.next())
            && std::str::from_utf8(u).ok().and_then(|u| u.parse().ok()) == Some(uid)
        {
            return Some(String::from_utf8_lossy(name).into_owned());
        }
    }
}

/// The mount namespace of `pid` under `proc_root`, as its inode number.
pub fn mount_ns(proc_root: &Path, pid: u32) -> Option<u64> {
    std::fs::metadata(proc_root.join(pid.to_string()).join("ns/mnt"))
        .ok()
        .map(|m| m.ino())
}

impl ContainerUsers {
    /// The name of `uid` as the container of `pid` (in mount namespace `ns`) knows it.
    pub fn name(&mut self, proc_root: &Path, pid: u32, ns: u64, uid: u32) -> Option<&str> {
        if !self.names.contains_key(&(ns, uid)) {
            let root = proc_root.join(pid.to_string()).join("root");
            // Type and size checked on an O_PATH fd before it is opened for reading.
            let opened = rootfs::open_path_in(&root, "etc/passwd")
                .and_then(|fd| rootfs::reopen_regular(&fd, MAX_PASSWD));
            self.scans += 1;
            let name = match opened {
                Ok((file, _)) => scan_passwd(file, uid).filter(|n| n.len() <= MAX_NAME),
                Err(_) => {
                    self.unreadable += 1;
                    None
                }
            };
            let bytes = ANSWER_BYTES + name.as_ref().map_or(0, String::len);
            if self.bytes + bytes > MAX_CACHE_BYTES {
                self.names.clear();
                self.bytes = 0;
                self.flushed += 1;
            }
            self.bytes += bytes;
            self.names
                .insert((ns, uid), name.map(String::into_boxed_str));
        }
        self.names.get(&(ns, uid))?.as_deref()
    }

    /// For `sensor-stats`.
    pub fn report(&self) -> ContainerUsersReport {
        ContainerUsersReport {
            names: self.names.len(),
            bytes: self.bytes,
            scans: self.scans,
            flushed: self.flushed,
            unreadable: self.unreadable,
        }
    }
}

/// The container user-name cache, as `sensor.container_users` reports it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ContainerUsersReport {
    pub names: usize,
    pub bytes: usize,
    pub scans: u64,
    pub flushed: u64,
    pub unreadable: u64,
}

/// How long a process's mount namespace is trusted without a new stat: a process that
/// moves (setns, unshare) is followed within this, and a connect storm costs one stat of
/// `/proc/PID/ns/mnt` per process and period instead of one per connect (several µs each
/// on recent kernels, which build an nsfs inode for every lookup).
const NS_TTL: Duration = Duration::from_secs(1);
/// Processes whose namespace is remembered at most.
const MAX_NS_CACHE: usize = 4096;

/// Whose account database names a process's users.
pub struct UserNames {
    pub host: Users,
    pub containers: ContainerUsers,
    proc_root: PathBuf,
    /// Start times of pids, so a namespace read from a reused pid is never taken as the
    /// connecting process's.
    procfs: Procfs,
    /// The host's mount namespace (pid 1's), against which a process is "in a container".
    host_ns: Option<u64>,
    /// (pid, start time) -> its mount namespace (None: gone) and when that was read.
    ns_cache: HashMap<(u32, u64), (Option<u64>, Instant)>,
}

impl UserNames {
    pub fn new(host_passwd: impl Into<PathBuf>, proc_root: impl Into<PathBuf>) -> Self {
        let proc_root = proc_root.into();
        Self {
            host: Users::new(host_passwd),
            containers: ContainerUsers::default(),
            host_ns: mount_ns(&proc_root, 1),
            procfs: Procfs::new(&proc_root),
            proc_root,
            ns_cache: HashMap::new(),
        }
    }

    /// The mount namespace of the process (`pid`, started at `start_ns`), read at most once
    /// per [`NS_TTL`]; with an unknown start time (0) the pid alone is no identity: read.
    fn process_ns(&mut self, pid: u32, start_ns: u64) -> Option<u64> {
        if start_ns == 0 {
            return mount_ns(&self.proc_root, pid);
        }
        let now = Instant::now();
        if let Some(&(ns, at)) = self.ns_cache.get(&(pid, start_ns))
            && now.saturating_duration_since(at) < NS_TTL
        {
            return ns;
        }
        if self.ns_cache.len() >= MAX_NS_CACHE {
            self.ns_cache
                .retain(|_, (_, at)| now.saturating_duration_since(*at) < NS_TTL);
            if self.ns_cache.len() >= MAX_NS_CACHE {
                self.ns_cache.clear();
            }
        }
        // Read, then check the pid is still the process that started at `start_ns`: a
        // pid reused meanwhile (by a process in a container) must not lend its namespace.
        let tick_ns = (1_000_000_000 / self.procfs.ticks_per_sec()).max(1);
        let ns = mount_ns(&self.proc_root, pid)
            .filter(|_| self.procfs.start_ticks(pid) == Some(start_ns / tick_ns));
        self.ns_cache.insert((pid, start_ns), (ns, now));
        ns
    }

    /// `uid`'s name for process `pid` (started at `start_ns`, boot nanoseconds; 0 if
    /// unknown). `in_container` says what else is known (a container id) for a process
    /// already gone: its container's users cannot be read, and the host's are not its own.
    /// A name from a container's passwd is the host's only where the host's database
    /// (as last read) gives the kernel's uid the same name: the kernel uid is what the
    /// host's account is, whatever a container calls it.
    pub fn name(
        &mut self,
        pid: u32,
        start_ns: u64,
        uid: u32,
        in_container: bool,
    ) -> Option<UserName> {
        match self.process_ns(pid, start_ns) {
            Some(ns) if Some(ns) != self.host_ns => {
                let name = self.containers.name(&self.proc_root, pid, ns, uid)?;
                let source = if self.host.cached(uid) == Some(name) {
                    NameSource::Host
                } else {
                    NameSource::Container
                };
                Some(UserName {
                    name: name.to_string(),
                    source,
                })
            }
            None if in_container => None,
            _ => self.host.name(uid).map(|n| UserName {
                name: n.to_string(),
                source: NameSource::Host,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_reads_its_own_root() {
        let proc_root = Path::new("/proc");
        let pid = std::process::id();
        let ns = mount_ns(proc_root, pid).unwrap();
        let mut u = ContainerUsers::default();
        assert_eq!(u.name(proc_root, pid, ns, 0), Some("root"));
        assert_eq!(u.name(proc_root, pid, ns, 4_000_000_000), None);
        // A process that is gone: no name, counted, not retried for that namespace.
        assert_eq!(u.name(proc_root, u32::MAX, 1, 0), None);
        assert_eq!(u.name(proc_root, u32::MAX, 1, 0), None);
        assert_eq!(u.unreadable, 1);
        assert_eq!(u.scans, 3);
    }

    #[test]
    fn host_process_uses_the_host_database_gone_container_process_none() {
        let mut names = UserNames::new("/etc/passwd", "/proc");
        let root = Some(UserName {
            name: "root".into(),
            source: NameSource::Host,
        });
        assert_eq!(names.name(std::process::id(), 0, 0, false), root);
        assert_eq!(names.name(u32::MAX, 0, 0, true), None);
        assert_eq!(names.name(u32::MAX, 0, 0, false), root);
        // With a start time the namespace is remembered: the same answers, read once.
        for _ in 0..3 {
            assert_eq!(names.name(std::process::id(), 7, 0, false), root);
            assert_eq!(names.name(u32::MAX, 7, 0, true), None);
        }
        assert_eq!(names.ns_cache.len(), 2);
    }

    /// A fake proc tree: pid 1 (the host's mount namespace) and pid 77 in a container
    /// whose passwd maps 4242 (and 34, as the host does) to `backup`.
    #[rstest::rstest]
    #[case::container_name_for_a_uid_the_host_calls_otherwise(77, 4242, Some(("backup", NameSource::Container)))]
    #[case::container_agrees_with_the_host(77, 34, Some(("backup", NameSource::Host)))]
    #[case::container_only_name(77, 35, Some(("daemon2", NameSource::Container)))]
    #[case::host_process(1, 34, Some(("backup", NameSource::Host)))]
    #[case::host_process_unknown_uid(1, 4242, None)]
    fn name_provenance(
        #[case] pid: u32,
        #[case] uid: u32,
        #[case] want: Option<(&str, NameSource)>,
    ) {
        let dir =
            std::env::temp_dir().join(format!("t1571-users-{}-{pid}-{uid}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let host = "root:x:0:0::/:/bin/sh\nbackup:x:34:34::/:/bin/sh\ndaemon:x:35:35::/:/bin/sh\n";
        let container = "root:x:0:0::/:/bin/sh\nbackup:x:4242:1::/:/bin/sh\nbackup:x:34:1::/:/bin/sh\n\
             daemon2:x:35:1::/:/bin/sh\n";
        for (p, passwd) in [(1, host), (77, container)] {
            let d = dir.join(format!("proc/{p}"));
            std::fs::create_dir_all(d.join("ns")).unwrap();
            std::fs::create_dir_all(d.join("root/etc")).unwrap();
            // Its inode stands for the mount namespace.
            std::fs::write(d.join("ns/mnt"), "").unwrap();
            std::fs::write(d.join("root/etc/passwd"), passwd).unwrap();
        }
        std::fs::write(dir.join("passwd"), host).unwrap();
        let mut names = UserNames::new(dir.join("passwd"), dir.join("proc"));
        let got = names.name(pid, 0, uid, false);
        let _ = std::fs::remove_dir_all(&dir);
        let want = want.map(|(n, source)| UserName {
            name: n.into(),
            source,
        });
        assert_eq!(got, want);
    }

    /// A 1 MiB passwd: the uid asked about is found by a scan, overlong lines name
    /// nobody, and only answers are kept, bounded in bytes.
    #[test]
    fn a_huge_container_passwd_is_scanned_not_kept() {
        let dir = std::env::temp_dir().join(format!("t1571-bigpasswd-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let root = dir.join("proc/77/root/etc");
        std::fs::create_dir_all(&root).unwrap();
        let mut text = format!("evil{}:x:5:5::/:\n", "e".repeat(5000));
        for uid in 100_000..135_000 {
            text.push_str(&format!("u{uid}:x:{uid}:{uid}::/:\n"));
        }
        text.push_str("appuser:x:4321:4321::/:/bin/sh\n");
        assert!(text.len() < MAX_PASSWD as usize);
        std::fs::write(root.join("passwd"), &text).unwrap();
        let proc_root = dir.join("proc");
        let mut u = ContainerUsers::default();
        assert_eq!(u.name(&proc_root, 77, 9, 4321), Some("appuser"));
        assert_eq!(u.name(&proc_root, 77, 9, 100_007), Some("u100007"));
        assert_eq!(u.name(&proc_root, 77, 9, 5), None, "an overlong line");
        for ns in 0..10_000 {
            u.name(&proc_root, 77, ns, 100_001);
            assert!(u.bytes <= MAX_CACHE_BYTES);
        }
        assert!(u.flushed > 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn parses_and_skips_garbage() {
        let m = parse_passwd(
            "root:x:0:0:root:/root:/bin/bash\nbad line\nalice:x:1000:1000::/home/a:/bin/sh\ndup:x:0:0::/:/bin/sh\n",
        );
        assert_eq!(m.get(&0).map(String::as_str), Some("root"));
        assert_eq!(m.get(&1000).map(String::as_str), Some("alice"));
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn host_root_resolves() {
        let mut u = Users::new("/etc/passwd");
        assert_eq!(u.name(0), Some("root"));
        assert_eq!(u.name(4_000_000_000), None);
    }

    #[test]
    fn an_unreadable_file_is_counted_not_an_empty_database() {
        let mut u = Users::new("/nonexistent/etc/passwd");
        assert_eq!(u.read_errors, 1);
        assert_eq!(u.name(0), None);
        assert_eq!(u.read_errors, 2, "every failed read is counted");
    }
}

#[cfg(test)]
mod reuse_tests {
    use super::*;

    /// The record's process started at a time /proc does not show for its pid (the pid was
    /// reused, here by a process of a container): its namespace and passwd are not lent.
    #[test]
    fn a_reused_pid_lends_no_namespace() {
        let dir = std::env::temp_dir().join(format!("t1571-users-reuse-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for (p, passwd) in [
            (1, "root:x:0:0::/:/bin/sh\n"),
            (77, "backup:x:4242:1::/:/bin/sh\n"),
        ] {
            let d = dir.join(format!("proc/{p}"));
            std::fs::create_dir_all(d.join("ns")).unwrap();
            std::fs::create_dir_all(d.join("root/etc")).unwrap();
            std::fs::write(d.join("ns/mnt"), "").unwrap();
            std::fs::write(d.join("root/etc/passwd"), passwd).unwrap();
        }
        // pid 77 now is a process that started at tick 500.
        let stat = "77 (sh) S 1 77 77 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 500 0 0 \
                    18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0";
        std::fs::write(dir.join("proc/77/stat"), stat).unwrap();
        std::fs::write(dir.join("passwd"), "root:x:0:0::/:/bin/sh\n").unwrap();
        let mut names = UserNames::new(dir.join("passwd"), dir.join("proc"));
        let tick_ns = 1_000_000_000 / names.procfs.ticks_per_sec();
        // The process that started at tick 500 is pid 77's: its container names 4242.
        let same = names.name(77, 500 * tick_ns, 4242, false);
        // One that started at tick 400 is gone: the host's database, which has no 4242.
        let reused = names.name(77, 400 * tick_ns, 4242, false);
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(same.map(|u| u.name), Some("backup".to_string()));
        assert_eq!(reused, None);
    }
}

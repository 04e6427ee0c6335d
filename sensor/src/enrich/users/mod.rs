//! Whose account database names a process's users: the host's, or its container's own.

mod container;
mod host;

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

pub use self::{
    container::{ContainerUsers, ContainerUsersReport},
    host::{Users, parse_passwd},
};
use crate::enrich::procfs::Procfs;

/// The largest passwd file read (a real one is a few KiB).
const MAX_PASSWD: u64 = 1 << 20;

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

/// The mount namespace of `pid` under `proc_root`, as its inode number.
pub fn mount_ns(proc_root: &Path, pid: u32) -> Option<u64> {
    std::fs::metadata(proc_root.join(pid.to_string()).join("ns/mnt"))
        .ok()
        .map(|m| m.ino())
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

//! cgroup v2 id -> cgroup path. Every kernel record carries the task's cgroup v2 id, which
//! is the inode number of its directory in the cgroup2 hierarchy; mapping it back gives
//! the container id even when the process is gone before /proc can be read.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use procfs::FromBufRead;

use crate::enrich::container;

/// Directories walked per rescan at most: a runaway tree cannot stall the sensor.
const MAX_DIRS: usize = 100_000;
/// A miss rescans at most this often (a new container's cgroup appears between scans).
const RESCAN_EVERY: Duration = Duration::from_millis(200);
/// An id a rescan did not find is not looked for again for this long (removed cgroups).
const MISS_TTL: Duration = Duration::from_secs(10);
/// Bound on remembered misses.
const MAX_MISSES: usize = 4096;

pub struct CgroupMap {
    /// The cgroup2 mount point, if there is one.
    root: Option<PathBuf>,
    /// cgroup id -> (path, the container id parsed from it once, at scan time).
    by_id: HashMap<u64, (String, Option<String>)>,
    last_scan: Option<Instant>,
    misses: HashMap<u64, Instant>,
}

/// The cgroup2 mount point from a mountinfo file (parsed by the procfs crate).
pub fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    let mounts = procfs::process::MountInfos::from_buf_read(mountinfo.as_bytes()).ok()?;
    mounts
        .0
        .into_iter()
        .find(|m| m.fs_type == "cgroup2")
        .map(|m| m.mount_point)
}

impl CgroupMap {
    pub fn new(mountinfo: &Path) -> Self {
        // Unified (/sys/fs/cgroup) or hybrid (/sys/fs/cgroup/unified): wherever it is.
        let root = match std::fs::read_to_string(mountinfo) {
            Ok(m) => cgroup2_mount(&m),
            Err(e) => {
                log::warn!("reading {}: {e}", mountinfo.display());
                None
            }
        };
        match &root {
            Some(r) => log::debug!("cgroup2 hierarchy at {}", r.display()),
            // Said once, at start-up.
            None => log::warn!(
                "no cgroup2 hierarchy mounted (pure cgroup v1): container ids come from \
                 /proc/PID/cgroup only, so a process gone before it is read has none"
            ),
        }
        Self {
            root,
            by_id: HashMap::new(),
            last_scan: None,
            misses: HashMap::new(),
        }
    }

    /// The cgroup path (relative to the hierarchy's root, starting with `/`) of `id`.
    pub fn path(&mut self, id: u64) -> Option<&str> {
        // Id 1 is the root cgroup: no container there.
        if id <= 1 {
            return None;
        }
        let recent_miss = self.misses.get(&id).is_some_and(|t| t.elapsed() < MISS_TTL);
        if !self.by_id.contains_key(&id)
            && !recent_miss
            && self.last_scan.is_none_or(|t| t.elapsed() >= RESCAN_EVERY)
        {
            self.rescan();
            if !self.by_id.contains_key(&id) {
                if self.misses.len() >= MAX_MISSES {
                    self.misses.clear();
                }
                self.misses.insert(id, Instant::now());
            }
        }
        self.by_id.get(&id).map(|(path, _)| path.as_str())
    }

    /// Called for every connect of a process with no other container source: the id was
    /// parsed when the cgroup was scanned, so this is a lookup.
    pub fn container_id(&mut self, id: u64) -> Option<String> {
        self.path(id)?;
        self.by_id.get(&id).and_then(|(_, c)| c.clone())
    }

    fn rescan(&mut self) {
        self.last_scan = Some(Instant::now());
        let Some(root) = self.root.clone() else {
            return;
        };
        self.by_id.clear();
        // Breadth first: if the cap is reached, it is deep, unusual subtrees that are cut.
        let mut queue = std::collections::VecDeque::from([root.clone()]);
        let mut seen = 0;
        while let Some(dir) = queue.pop_front() {
            seen += 1;
            if seen > MAX_DIRS {
                break;
            }
            let Ok(meta) = std::fs::metadata(&dir) else {
                continue;
            };
            let rel = dir
                .strip_prefix(&root)
                .map(|p| format!("/{}", p.display()))
                .unwrap_or_default();
            let container = container::id_from_cgroup_path(&rel);
            self.by_id.insert(meta.ino(), (rel, container));
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            queue.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount() {
        let mi = "24 30 0:22 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw\n\
                  25 30 0:23 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert_eq!(
            cgroup2_mount(mi),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            cgroup2_mount("25 30 0:23 / /x rw - cgroup cgroup rw\n"),
            None
        );
        assert_eq!(cgroup2_mount("garbage"), None);
    }

    #[test]
    fn maps_a_new_cgroup_by_its_id() {
        let mut map = CgroupMap::new(Path::new("/proc/self/mountinfo"));
        let Some(root) = map.root.clone() else {
            crate::testing::skip(
                "maps_a_new_cgroup_by_its_id",
                "no cgroup2 mount in /proc/self/mountinfo",
            );
            return;
        };
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            crate::testing::skip(
                "maps_a_new_cgroup_by_its_id",
                "creating a cgroup needs root",
            );
            return;
        }
        let name = format!("t1571-unit-{}", std::process::id());
        let dir = root.join(&name);
        std::fs::create_dir(&dir).unwrap();
        let ino = std::fs::metadata(&dir).unwrap().ino();
        // Created after the first scan: found by the rescan a miss triggers.
        let found = map.path(ino).map(str::to_string);
        let _ = std::fs::remove_dir(&dir);
        assert_eq!(found.as_deref(), Some(format!("/{name}").as_str()));
        // An unknown id, once a rescan is allowed, is remembered as a miss: no rescan storm.
        std::thread::sleep(RESCAN_EVERY);
        assert_eq!(map.path(ino + 1_000_000), None);
        assert!(map.misses.contains_key(&(ino + 1_000_000)));
    }

    #[test]
    fn maps_this_process_cgroup() {
        let mut map = CgroupMap::new(Path::new("/proc/self/mountinfo"));
        let Some(root) = map.root.clone() else {
            crate::testing::skip(
                "maps_this_process_cgroup",
                "no cgroup2 mount in /proc/self/mountinfo",
            );
            return;
        };
        // Our own cgroup's directory inode is our cgroup id; the map must name it.
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let rel = own
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .unwrap()
            .to_string();
        let ino = std::fs::metadata(root.join(rel.trim_start_matches('/'))).map(|m| m.ino());
        if let Ok(ino) = ino
            && ino > 1
        {
            assert_eq!(map.path(ino), Some(rel.as_str()));
        }
        assert_eq!(map.path(1), None);
        assert_eq!(map.path(u64::MAX), None);
    }
}

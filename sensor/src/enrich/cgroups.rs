//! cgroup v2 id -> cgroup path. Every kernel record carries the task's cgroup v2 id, which
//! is the inode number of its directory in the cgroup2 hierarchy; mapping it back gives
//! the container id even when the process is gone before /proc can be read.

use std::{
    collections::HashMap,
    ffi::CString,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::fs::MetadataExt,
    },
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use procfs::FromBufRead;

use crate::enrich::container::{self, Trust, untrusted};

/// Directories walked per rescan at most: a runaway tree cannot stall the sensor.
const MAX_DIRS: usize = 100_000;
/// Bytes of paths a rescan keeps (the map and the walk's queue): a user's delegated
/// subtree (systemd's `user@UID.service`) can nest long names, each path longer than the
/// one above it.
const MAX_SCAN_BYTES: usize = 8 << 20;
/// A miss rescans at most this often (a new container's cgroup appears between scans).
const RESCAN_EVERY: Duration = Duration::from_millis(200);
/// An id a rescan did not find is not looked for again for this long (removed cgroups).
const MISS_TTL: Duration = Duration::from_secs(10);
/// Bound on remembered misses.
const MAX_MISSES: usize = 4096;
/// How long a cgroup's trust is remembered. Only root can change what it rests on (the
/// owners of the directories above a cgroup; cgroups never move between parents), so
/// this only bounds how late an administrator's `chown` is noticed.
const TRUST_TTL: Duration = Duration::from_secs(30);
/// cgroups whose trust is remembered at most; the cache is dropped whole past that.
const MAX_TRUST: usize = 4096;

pub struct CgroupMap {
    /// The cgroup2 mount point, if there is one.
    root: Option<PathBuf>,
    /// cgroup id -> (path, the container id parsed from it once, at scan time).
    by_id: HashMap<u64, (String, Option<String>)>,
    last_scan: Option<Instant>,
    misses: HashMap<u64, Instant>,
    /// cgroup id -> the container id its cgroup carries, if trusted, else why not.
    trust: HashMap<u64, (Result<String, &'static str>, Instant)>,
    /// Rescans stopped at [`MAX_DIRS`] or [`MAX_SCAN_BYTES`].
    pub scans_cut: u64,
}

/// The cgroup2 mount point from a mountinfo file (parsed by the procfs crate): a mount
/// of the hierarchy's root, as a pod's namespaced view (root `/kubepods/...`) shows only
/// its own cgroup and names paths relative to it.
pub fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    let mounts = procfs::process::MountInfos::from_buf_read(mountinfo.as_bytes()).ok()?;
    mounts
        .0
        .into_iter()
        .find(|m| m.fs_type == "cgroup2" && m.root == "/")
        .map(|m| m.mount_point)
}

/// The node's cgroup2 root through `/proc/1/root`, for a sensor in a pod (hostPID) whose
/// own mount is namespaced.
fn host_cgroup2_mount() -> Option<PathBuf> {
    let p = cgroup2_mount(&std::fs::read_to_string("/proc/1/mountinfo").ok()?)?;
    let via = Path::new("/proc/1/root").join(p.strip_prefix("/").unwrap_or(&p));
    via.is_dir().then_some(via)
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
        }
        .or_else(host_cgroup2_mount);
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
            trust: HashMap::new(),
            scans_cut: 0,
        }
    }

    /// Whether `claimed`, the container id attributed to a task in cgroup `id` (the
    /// kernel's cgroup2 id of the connect), can be believed: it must be the id that
    /// cgroup's own path carries, in a segment named as a runtime names it
    /// ([`container::runtime_layout`]), below directories that are all root's and
    /// writable by root only. A user given a delegated subtree (systemd's
    /// `user@UID.service`, any cgroup directory chowned to a user) can create a cgroup
    /// named after any container there and join it; root-owned directories leave that
    /// to root. Checked by fstat on each directory opened `O_PATH` from the hierarchy's
    /// mount down, then the leaf's inode is compared with `id` (the walk reached the
    /// kernel's cgroup, not one renamed into its old place); remembered per cgroup.
    ///
    /// A cgroup made since the last scan (rescans are rate-limited) is found through
    /// `/proc/PID/cgroup` of the connecting process `pid` instead: any path will do, as
    /// the walk must end at the kernel's cgroup.
    pub fn trust(&mut self, id: u64, claimed: &str, pid: u32) -> Trust {
        if self.root.is_none() {
            return Trust::Untrusted(untrusted::NO_CGROUP2);
        }
        let now = Instant::now();
        let cached = self
            .trust
            .get(&id)
            .filter(|(_, at)| now.saturating_duration_since(*at) < TRUST_TTL)
            .map(|(r, _)| r.clone());
        let result = match cached {
            Some(r) => r,
            None => {
                let r = self.check(id, pid);
                if self.trust.len() >= MAX_TRUST {
                    self.trust.clear();
                }
                // A cgroup not found yet may appear: only answers about a real cgroup stay.
                if r != Err(untrusted::CGROUP_UNKNOWN) {
                    self.trust.insert(id, (r.clone(), now));
                }
                r
            }
        };
        match result {
            Ok(own) if own == claimed => Trust::Trusted,
            Ok(_) => Trust::Untrusted(untrusted::NOT_KERNEL_CGROUP),
            Err(why) => Trust::Untrusted(why),
        }
    }

    fn check(&mut self, id: u64, pid: u32) -> Result<String, &'static str> {
        let root = self.root.clone().ok_or(untrusted::NO_CGROUP2)?;
        // The scanned path, else (not scanned yet, or renamed since) the process's own.
        let scanned = self.path(id).map(str::to_string);
        let r = match &scanned {
            Some(rel) => check_path(&root, rel, id),
            None => Err(untrusted::CGROUP_UNKNOWN),
        };
        if r != Err(untrusted::CGROUP_UNKNOWN) {
            return r;
        }
        match proc_cgroup2_path(pid) {
            Some(rel) if Some(&rel) != scanned.as_ref() => check_path(&root, &rel, id),
            _ => r,
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
        // Bytes of paths kept in the map plus those waiting in the queue.
        let mut bytes = 0usize;
        while let Some(dir) = queue.pop_front() {
            seen += 1;
            bytes = bytes.saturating_sub(dir.as_os_str().len());
            if seen > MAX_DIRS || bytes > MAX_SCAN_BYTES {
                self.scans_cut += 1;
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
            bytes += rel.len() + container.as_ref().map_or(0, String::len) + 64;
            self.by_id.insert(meta.ino(), (rel, container));
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                if bytes > MAX_SCAN_BYTES {
                    break;
                }
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    let p = e.path();
                    bytes += p.as_os_str().len();
                    queue.push_back(p);
                }
            }
        }
    }
}

/// The trust of the cgroup at `rel` under `root`, if it is cgroup `id`: every directory
/// from the mount down opened `O_PATH` and fstat'd, the last one's inode compared with `id`.
fn check_path(root: &Path, rel: &str, id: u64) -> Result<String, &'static str> {
    let segs: Vec<&str> = rel.split('/').filter(|s| !s.is_empty()).collect();
    // A path from outside this cgroup namespace (`/../..`) leads nowhere we can check.
    if segs.iter().any(|s| matches!(*s, "." | "..")) {
        return Err(untrusted::CGROUP_UNKNOWN);
    }
    let (mut dir, st) =
        open_dir(None, root.as_os_str().as_encoded_bytes()).ok_or(untrusted::CGROUP_UNKNOWN)?;
    let mut owners = vec![root_only(&st)];
    let mut ino = st.st_ino;
    for seg in &segs {
        let (next, st) = open_dir(Some(&dir), seg.as_bytes()).ok_or(untrusted::CGROUP_UNKNOWN)?;
        owners.push(root_only(&st));
        (dir, ino) = (next, st.st_ino);
    }
    if ino != id {
        return Err(untrusted::CGROUP_UNKNOWN);
    }
    let (at, own) = container::id_segment(&segs).ok_or(untrusted::NOT_KERNEL_CGROUP)?;
    if !container::runtime_layout(&segs, at) {
        return Err(untrusted::LAYOUT);
    }
    // owners[i] is the directory above segs[i]. The id's own directory may be handed to
    // the container (user namespaces); what is above it decides who named it.
    if !owners[..=at].iter().all(|&r| r) {
        return Err(untrusted::DELEGATED);
    }
    Ok(own)
}

/// The cgroup2 path (`0::` line) of process `pid`, as this process's cgroup namespace
/// shows it.
fn proc_cgroup2_path(pid: u32) -> Option<String> {
    if pid == 0 {
        return None;
    }
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string)
}

/// Opens directory `name` (under `at`, or an absolute path) `O_PATH`, never following a
/// link, and fstats it. Hand-written: std opens files to read them, not `O_PATH` at a fd.
fn open_dir(at: Option<&OwnedFd>, name: &[u8]) -> Option<(OwnedFd, libc::stat)> {
    let name = CString::new(name).ok()?;
    let dirfd = at.map_or(libc::AT_FDCWD, AsRawFd::as_raw_fd);
    // SAFETY: openat and fstat on a valid NUL-terminated name and owned fds; the stat
    // buffer is plain data the kernel fills.
    unsafe {
        let fd = libc::openat(
            dirfd,
            name.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        );
        if fd < 0 {
            return None;
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let mut st: libc::stat = std::mem::zeroed();
        (libc::fstat(fd.as_raw_fd(), &mut st) == 0).then_some((fd, st))
    }
}

/// Owned by root and writable by nobody else (a group with write must be root's group).
fn root_only(st: &libc::stat) -> bool {
    st.st_uid == 0 && st.st_mode & 0o002 == 0 && (st.st_mode & 0o020 == 0 || st.st_gid == 0)
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
        // A pod's namespaced mount is not the hierarchy's root.
        let pod = "24 30 0:22 /kubepods/x /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mount(pod), None);
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

    /// A real cgroup tree per case: `<case dir>/mid/<leaf>`, `mid` given `owner` and
    /// `mode`; the trust of `claimed` for the leaf's cgroup.
    #[rstest::rstest]
    #[case::root_owned_runtime_scope(0, 0o755, "docker-{ID}.scope", None, None)]
    #[case::delegated_to_a_user(4242, 0o755, "docker-{ID}.scope", None, Some(untrusted::DELEGATED))]
    #[case::root_owned_but_world_writable(
        0,
        0o777,
        "docker-{ID}.scope",
        None,
        Some(untrusted::DELEGATED)
    )]
    #[case::not_a_runtime_name(0, 0o755, "evil-{ID}.scope", None, Some(untrusted::LAYOUT))]
    #[case::another_id_claimed(
        0,
        0o755,
        "docker-{ID}.scope",
        Some("b"),
        Some(untrusted::NOT_KERNEL_CGROUP)
    )]
    fn trust_of_a_real_cgroup(
        #[case] owner: u32,
        #[case] mode: u32,
        #[case] leaf: &str,
        #[case] claimed: Option<&str>,
        #[case] want: Option<&str>,
    ) {
        use std::os::unix::fs::PermissionsExt;
        const ID: &str = "4f3c0b1e6a2d9c8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b";
        let mut map = CgroupMap::new(Path::new("/proc/self/mountinfo"));
        let test = "trust_of_a_real_cgroup";
        let Some(root) = map.root.clone() else {
            return crate::testing::skip(test, "no cgroup2 mount in /proc/self/mountinfo");
        };
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return crate::testing::skip(test, "creating a cgroup needs root");
        }
        let top = root.join(
            format!(
                "t1571-unit-trust-{}-{owner}-{mode:o}-{leaf}-{claimed:?}",
                std::process::id()
            )
            .replace(['{', '}', '"', ' '], ""),
        );
        let mid = top.join("mid");
        let dir = mid.join(leaf.replace("{ID}", ID));
        std::fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::chown(&mid, Some(owner), Some(owner)).unwrap();
        std::fs::set_permissions(&mid, std::fs::Permissions::from_mode(mode)).unwrap();
        let ino = std::fs::metadata(&dir).unwrap().ino();
        let claimed = claimed.map_or(ID.to_string(), |c| c.repeat(64));
        let got = map.trust(ino, &claimed, 0);
        let again = map.trust(ino, &claimed, 0);
        for d in [&dir, &mid, &top] {
            let _ = std::fs::remove_dir(d);
        }
        assert_eq!(got.reason(), want, "{}", dir.display());
        assert_eq!(got, again, "remembered");
        assert_eq!(map.trust.len(), 1);
    }

    #[test]
    fn the_root_cgroup_and_unknown_ids_are_untrusted() {
        let mut map = CgroupMap::new(Path::new("/proc/self/mountinfo"));
        let want = if map.root.is_some() {
            untrusted::CGROUP_UNKNOWN
        } else {
            untrusted::NO_CGROUP2
        };
        // No path known for either, and this process's own path leads elsewhere.
        assert_eq!(map.trust(1, "x", 0), Trust::Untrusted(want));
        let me = std::process::id();
        assert_eq!(map.trust(u64::MAX, "x", me), Trust::Untrusted(want));
        assert!(map.trust.is_empty(), "a missing cgroup is looked for again");
        // A path from outside the sensor's cgroup namespace is never walked.
        let root = Path::new("/sys/fs/cgroup");
        assert_eq!(
            check_path(root, "/../../x", 1),
            Err(untrusted::CGROUP_UNKNOWN)
        );
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

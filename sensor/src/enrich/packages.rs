//! The host's package-managed files, to call an executable "unmanaged": not installed by
//! the package manager. Read once at start-up from dpkg's file lists
//! (`/var/lib/dpkg/info/*.list` under the host root, each read with the [`rootfs`] rules
//! and a bound) into a sorted `Vec<u64>` of path hashes (SipHash keyed at random per
//! start, so no path can be crafted offline to collide with a listed one): about 8 bytes a
//! path, bounded in bytes. usrmerge is followed: a top-level `/bin`, `/sbin`, `/lib*` that
//! is a symlink in the host root is read as its target, in the lists and in lookups.
//!
//! rpm's database (`rpmdb.sqlite`, or Berkeley DB before rpm 4.16) needs an SQLite or BDB
//! reader this sensor does not carry: on an rpm host, and wherever the lists cannot be
//! read whole, the status is unknown and nothing is called unmanaged. Processes in
//! containers are "unknown" too: their files are their image's, not the host's database.

use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use log::{info, warn};

use crate::enrich::{identity::normalize, rootfs};

const INFO_DIR: &str = "var/lib/dpkg/info";
/// List files read at most (a desktop has a few thousand packages).
const MAX_LISTS: usize = 65_536;
/// The largest single list read (the biggest Debian packages list a few MiB).
const MAX_LIST_BYTES: u64 = 64 << 20;
/// The bound on the hash set: 4 Mi paths, 32 MiB.
pub const MAX_BYTES: usize = 32 << 20;
/// Top-level directories usrmerge may have made links.
const MERGED: &[&str] = &["bin", "sbin", "lib", "lib32", "lib64", "libx32"];

/// Whether the database could be read, and why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Every dpkg list was read.
    Loaded { lists: usize },
    /// No database, or one this sensor does not read, or cut short: unknown.
    Unknown(String),
}

pub struct Packages {
    hasher: RandomState,
    paths: Vec<u64>,
    /// `/bin` -> `/usr/bin` where the host root links them.
    merged: HashMap<String, String>,
    /// Where the listed paths are looked up to compare with the kernel's inode.
    host_root: PathBuf,
    /// (path hash, device, inode) -> whether the host's file at the path is that inode;
    /// cleared when full.
    verified: HashMap<(u64, u64, u64), bool>,
    pub status: Status,
}

/// Answers kept in [`Packages::verified`] at most (~40 bytes each).
const MAX_VERIFIED: usize = 4096;

impl Packages {
    /// Nothing known: no executable is called unmanaged.
    pub fn unknown(why: &str) -> Self {
        Self {
            hasher: RandomState::new(),
            paths: Vec::new(),
            merged: HashMap::new(),
            host_root: PathBuf::from("/"),
            verified: HashMap::new(),
            status: Status::Unknown(why.to_string()),
        }
    }

    /// Reads the dpkg lists under `host_root`.
    pub fn load(host_root: &Path) -> Self {
        let me = Self::read(host_root);
        match &me.status {
            Status::Loaded { lists } => info!(
                "package database: {} paths from {lists} dpkg lists, {} KiB",
                me.paths.len(),
                me.bytes() >> 10
            ),
            Status::Unknown(why) => {
                warn!("package database unknown ({why}): no executable is called unmanaged")
            }
        }
        me
    }

    fn read(host_root: &Path) -> Self {
        let lists = match rootfs::list_dir(host_root, INFO_DIR, MAX_LISTS) {
            Ok(l) => l,
            Err(_) => {
                let rpm = ["var/lib/rpm", "usr/lib/sysimage/rpm"]
                    .iter()
                    .any(|d| rootfs::list_dir(host_root, d, 1).is_ok());
                return Self::unknown(if rpm {
                    "an rpm database, which this sensor does not read"
                } else {
                    "no dpkg database"
                });
            }
        };
        if lists.len() >= MAX_LISTS {
            return Self::unknown("more dpkg lists than read");
        }
        let mut me = Self::unknown("");
        me.host_root = host_root.to_path_buf();
        if let Ok(top) = rootfs::list_dir(host_root, "", 4096) {
            for e in top {
                if let Some(target) = e
                    .link
                    .as_deref()
                    .filter(|_| MERGED.contains(&e.name.as_str()))
                {
                    let t = target.to_string_lossy();
                    let t = normalize(&format!("/{}", t.trim_start_matches('/')));
                    me.merged.insert(format!("/{}", e.name), t);
                }
            }
        }
        let mut n = 0;
        for l in lists.iter().filter(|l| l.name.ends_with(".list")) {
            let text = match rootfs::read_file(
                host_root,
                &format!("{INFO_DIR}/{}", l.name),
                MAX_LIST_BYTES,
            ) {
                Ok(t) => t,
                Err(e) => return Self::unknown(&format!("{}: {e:#}", l.name)),
            };
            for line in String::from_utf8_lossy(&text).lines() {
                if !line.starts_with('/') {
                    continue;
                }
                if me.paths.len() * 8 >= MAX_BYTES {
                    return Self::unknown(&format!("more than {} MiB of paths", MAX_BYTES >> 20));
                }
                let h = me.hash(line);
                me.paths.push(h);
            }
            n += 1;
        }
        me.paths.sort_unstable();
        me.paths.dedup();
        me.paths.shrink_to_fit();
        me.status = Status::Loaded { lists: n };
        me
    }

    /// The path as the lists and lookups both spell it: lexically normalised, a merged
    /// top-level directory replaced by its target.
    fn hash(&self, path: &str) -> u64 {
        let p = normalize(path);
        let merged = p
            .get(1..)
            .and_then(|r| r.split_once('/'))
            .and_then(|(top, rest)| {
                Some(format!("{}/{rest}", self.merged.get(&format!("/{top}"))?))
            });
        self.hasher.hash_one(merged.as_deref().unwrap_or(&p))
    }

    /// Whether `path` (an absolute path in the host's root) is a package-managed file;
    /// None when the database is unknown.
    pub fn is_managed(&self, path: &str) -> Option<bool> {
        self.listed(path).map(|(listed, _)| listed)
    }

    /// Whether `path` is listed, with its hash (the key of the verified cache too).
    fn listed(&self, path: &str) -> Option<(bool, u64)> {
        if !matches!(self.status, Status::Loaded { .. }) {
            return None;
        }
        let path = path.strip_suffix(" (deleted)").unwrap_or(path);
        let h = self.hash(path);
        Some((self.paths.binary_search(&h).is_ok(), h))
    }

    /// Whether the kernel's executable `image` (device, inode; device 0: unknown) at
    /// `path` is a package-managed file: the path is listed *and* the host's file at that
    /// path (looked up `O_PATH` inside the host root) is that inode, on that device unless
    /// the file system gives per-subvolume or per-layer devices (btrfs, overlayfs). A
    /// listed path over another file (a bind mount in a private mount namespace, a
    /// deleted file) is not managed, nor is one whose image is unknown. None when the
    /// database is unknown.
    pub fn is_managed_image(&mut self, path: &str, image: Option<(u64, u64)>) -> Option<bool> {
        let (listed, h) = self.listed(path)?;
        if !listed {
            return Some(false);
        }
        let Some((dev, ino)) = image else {
            return Some(false);
        };
        if path.ends_with(" (deleted)") {
            return Some(false);
        }
        let key = (h, dev, ino);
        if let Some(&v) = self.verified.get(&key) {
            return Some(v);
        }
        let same = rootfs::open_path_in(&self.host_root, &normalize(path))
            .ok()
            .and_then(|fd| Some((rootfs::fstat(&fd).ok()?, fd)))
            .is_some_and(|(m, fd)| {
                m.is_file()
                    && m.ino() == ino
                    && (dev == 0 || m.dev() == dev || rootfs::devices_per_subvolume(&fd))
            });
        if self.verified.len() >= MAX_VERIFIED {
            self.verified.clear();
        }
        self.verified.insert(key, same);
        Some(same)
    }

    /// Bytes the set holds.
    pub fn bytes(&self) -> usize {
        self.paths.capacity() * 8 + self.verified.capacity() * 40
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> std::path::PathBuf {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let root =
            std::env::temp_dir().join(format!("t1571-pkgs-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join(INFO_DIR)).unwrap();
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        std::os::unix::fs::symlink("usr/bin", root.join("bin")).unwrap();
        std::fs::write(
            root.join(INFO_DIR).join("bash.list"),
            "/.\n/bin\n/bin/bash\n/usr/share/doc/bash\n",
        )
        .unwrap();
        std::fs::write(
            root.join(INFO_DIR).join("python3.list"),
            "/usr/bin/python3.11\n",
        )
        .unwrap();
        std::fs::write(root.join(INFO_DIR).join("status"), "not a list\n").unwrap();
        root
    }

    #[rstest::rstest]
    #[case("/usr/bin/bash", Some(true))]
    #[case("/bin/bash", Some(true))]
    #[case("/usr/bin/python3.11", Some(true))]
    #[case("/bin/python3.11", Some(true))]
    #[case("/usr/bin/../bin/python3.11", Some(true))]
    #[case("/usr/bin/python3.11 (deleted)", Some(true))]
    #[case("/var/lib/x/update-agent", Some(false))]
    #[case("/usr/bin/python3", Some(false))]
    fn dpkg_lists_with_usrmerge(#[case] path: &str, #[case] want: Option<bool>) {
        let root = fixture("case");
        let p = Packages::read(&root);
        assert_eq!(p.status, Status::Loaded { lists: 2 });
        assert_eq!(p.is_managed(path), want, "{path}");
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn unreadable_is_unknown_and_a_device_list_is_not_opened() {
        assert_eq!(
            Packages::read(Path::new("/nonexistent")).is_managed("/bin/sh"),
            None
        );
        let root = fixture("dev");
        let dev = root.join(INFO_DIR).join("evil.list");
        let c = std::ffi::CString::new(dev.to_str().unwrap()).unwrap();
        // SAFETY: mknod on a valid path (root only; skipped otherwise).
        if unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(1, 3)) } == 0 {
            let p = Packages::read(&root);
            assert!(
                matches!(p.status, Status::Unknown(ref w) if w.contains("evil.list")),
                "{:?}",
                p.status
            );
        }
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn this_host() {
        let p = Packages::load(Path::new("/"));
        if matches!(p.status, Status::Loaded { .. }) {
            assert_eq!(p.is_managed("/usr/bin/dpkg"), Some(true));
            assert_eq!(p.is_managed("/usr/bin/no-such-program-t1571"), Some(false));
            // Managed only as the inode the host has at that path.
            let mut p = p;
            let m = std::fs::metadata("/usr/bin/dpkg").unwrap();
            let (dev, ino) = (m.dev(), m.ino());
            assert_eq!(
                p.is_managed_image("/usr/bin/dpkg", Some((dev, ino))),
                Some(true)
            );
            assert_eq!(
                p.is_managed_image("/usr/bin/dpkg", Some((0, ino))),
                Some(true)
            );
            assert_eq!(
                p.is_managed_image("/usr/bin/dpkg", Some((dev, ino + 1))),
                Some(false),
                "another file at a listed path (a bind mount) is not managed"
            );
            assert_eq!(p.is_managed_image("/usr/bin/dpkg", None), Some(false));
            assert_eq!(
                p.is_managed_image("/usr/bin/dpkg (deleted)", Some((dev, ino))),
                Some(false)
            );
            eprintln!(
                "package set: {} paths, {} KiB",
                p.paths.len(),
                p.bytes() >> 10
            );
            assert!(p.bytes() <= MAX_BYTES);
        }
    }
}

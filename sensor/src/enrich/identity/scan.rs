//! Start-up fingerprinting: the host's dynamic loaders and high-risk binaries, by
//! build-id and SHA-256, read inside the host root.

use std::{
    collections::{HashMap, HashSet},
    os::unix::fs::MetadataExt,
    path::Path,
    sync::Arc,
};

use log::debug;

use crate::enrich::{
    identity::{
        ExeFile, Identities,
        file::{build_id, open_regular, sha256},
    },
    rootfs,
};

/// Directories the host's own tools live in.
const BIN_DIRS: &[&str] = &[
    "usr/local/sbin",
    "usr/local/bin",
    "usr/sbin",
    "usr/bin",
    "sbin",
    "bin",
];
/// Known binaries larger than this are identified by build-id only.
const MAX_HASHED: u64 = 256 << 20;
/// Entries read per directory at start-up.
const MAX_DIR_ENTRIES: usize = 65_536;

/// The content match the identities give a fingerprinted dynamic loader (a renamed copy
/// included), and the high-risk name of a loader whose program is unknown.
pub const LOADER: &str = "ld.so";

/// A dynamic loader's file name: `ld-linux*.so*`, `ld-*.so*`, `ld.so`, `ld-musl-*.so*`.
pub fn is_loader_name(name: &str) -> bool {
    let name = name.strip_suffix(" (deleted)").unwrap_or(name);
    name == "ld.so" || (name.starts_with("ld-") && name.contains(".so"))
}

/// Where loaders live: the classic and multiarch library directories.
fn loader_dirs(host_root: &Path) -> Vec<String> {
    let mut dirs: Vec<String> = ["lib", "lib64", "lib32", "usr/lib", "usr/lib64", "usr/lib32"]
        .map(String::from)
        .to_vec();
    for base in ["lib", "usr/lib"] {
        if let Ok(entries) = rootfs::list_dir(host_root, base, MAX_DIR_ENTRIES) {
            dirs.extend(
                entries
                    .iter()
                    .filter(|e| e.name.contains("-linux-"))
                    .map(|e| format!("{base}/{}", e.name)),
            );
        }
    }
    dirs
}

impl Identities {
    /// Fingerprints the high-risk binaries under `host_root` (the host's `/`): the files
    /// whose name `entry_of` maps to a list entry (detection owns the list and its rules).
    pub fn scan(entry_of: impl Fn(&str) -> Option<String>, host_root: &Path) -> Self {
        let mut me = Self {
            by_build_id: HashMap::new(),
            by_sha256: HashMap::new(),
            sizes: HashSet::new(),
            cache: HashMap::new(),
            cache_clears: 0,
            hasher: None,
            known_files: 0,
            known_loaders: 0,
        };
        let mut seen = HashSet::new();
        // The host's dynamic loaders first (their fingerprints win), so a renamed copy of
        // ld.so is still known as one.
        let loader: Arc<str> = LOADER.into();
        for dir in loader_dirs(host_root) {
            let Ok(entries) = rootfs::list_dir(host_root, &dir, MAX_DIR_ENTRIES) else {
                continue;
            };
            for e in entries.iter().filter(|e| is_loader_name(&e.name)) {
                let rel = format!("{dir}/{}", e.name);
                if me.fingerprint(host_root, &rel, &loader, &mut seen) {
                    me.known_loaders += 1;
                }
            }
        }
        for dir in BIN_DIRS {
            // Listed and opened inside the host root: its links cannot reach the sensor's.
            let Ok(entries) = rootfs::list_dir(host_root, dir, MAX_DIR_ENTRIES) else {
                continue;
            };
            for e in entries {
                let Some(entry) = entry_of(&e.name) else {
                    continue;
                };
                let rel = format!("{dir}/{}", e.name);
                if me.fingerprint(host_root, &rel, &entry.into(), &mut seen) {
                    me.known_files += 1;
                }
            }
        }
        debug!(
            "fingerprinted {} high-risk executables and {} dynamic loaders",
            me.known_files, me.known_loaders
        );
        me
    }

    /// Fingerprints the regular file `rel` inside `host_root` as `entry` (build-id, and
    /// SHA-256 up to [`MAX_HASHED`]) unless its inode was `seen`; whether it was.
    fn fingerprint(
        &mut self,
        host_root: &Path,
        rel: &str,
        entry: &Arc<str>,
        seen: &mut HashSet<(u64, u64)>,
    ) -> bool {
        let Ok(fd) = rootfs::open_path_in(host_root, rel) else {
            return false;
        };
        let Some((f, meta)) = open_regular(&ExeFile::Fd(fd), None) else {
            return false;
        };
        if !seen.insert((meta.dev(), meta.ino())) {
            return false;
        }
        if let Some(id) = build_id(&f) {
            self.by_build_id.entry(id).or_insert_with(|| entry.clone());
        }
        if meta.size() <= MAX_HASHED
            && let Some(h) = sha256(&f, meta.size())
        {
            self.by_sha256.entry(h).or_insert_with(|| entry.clone());
            self.sizes.insert(meta.size());
        }
        true
    }
}

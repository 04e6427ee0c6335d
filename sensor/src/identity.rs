//! Executable identity by content, so `cp /usr/bin/curl /opt/update-agent` is still curl.
//!
//! At start-up the host's high-risk binaries (every file in the standard bin directories
//! whose name is on the list) are fingerprinted: ELF build-id when present (it survives
//! appended bytes) and SHA-256 of the whole file. A process's executable is fingerprinted
//! once per (device, inode, mtime, size) and looked up; the hot path only stats.

use std::{
    collections::HashMap,
    fs::File,
    io::Read,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use log::debug;
use object::{Object, read::elf::ElfFile64};
use sha2::{Digest, Sha256};

use crate::{policy::Policy, score::high_risk_entry};

/// Directories the host's own tools live in.
const BIN_DIRS: &[&str] = &[
    "usr/local/sbin",
    "usr/local/bin",
    "usr/sbin",
    "usr/bin",
    "sbin",
    "bin",
];
/// Files larger than this are identified by build-id only (read from their first MiB).
const MAX_HASHED: u64 = 64 << 20;
const BUILD_ID_WINDOW: u64 = 1 << 20;
/// Bound on cached file identities.
const CACHE_CAP: usize = 16_384;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FileKey {
    pub dev: u64,
    pub ino: u64,
    pub mtime_ns: i64,
    pub size: u64,
}

impl FileKey {
    pub fn of(meta: &std::fs::Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            mtime_ns: meta
                .mtime()
                .saturating_mul(1_000_000_000)
                .saturating_add(meta.mtime_nsec()),
            size: meta.size(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Fingerprint {
    build_id: Option<Vec<u8>>,
    sha256: Option<[u8; 32]>,
}

fn fingerprint(path: &Path, size: u64) -> Option<Fingerprint> {
    let mut f = File::open(path).ok()?;
    let mut data = Vec::new();
    let limit = if size > MAX_HASHED {
        BUILD_ID_WINDOW
    } else {
        MAX_HASHED
    };
    f.by_ref().take(limit).read_to_end(&mut data).ok()?;
    let build_id = ElfFile64::<object::Endianness>::parse(data.as_slice())
        .ok()
        .and_then(|elf| elf.build_id().ok().flatten().map(<[u8]>::to_vec))
        .filter(|id| !id.is_empty());
    let sha256 = (size <= MAX_HASHED).then(|| Sha256::digest(&data).into());
    Some(Fingerprint { build_id, sha256 })
}

/// Known high-risk binaries by fingerprint, and a cache of identified files.
pub struct Identities {
    by_build_id: HashMap<Vec<u8>, String>,
    by_sha256: HashMap<[u8; 32], String>,
    cache: HashMap<FileKey, Option<String>>,
    pub known_files: usize,
}

impl Identities {
    /// Fingerprints the high-risk binaries under `host_root` (the host's `/`).
    pub fn scan(policy: &Policy, host_root: &Path) -> Self {
        let mut me = Self {
            by_build_id: HashMap::new(),
            by_sha256: HashMap::new(),
            cache: HashMap::new(),
            known_files: 0,
        };
        let mut seen = std::collections::HashSet::new();
        for dir in BIN_DIRS {
            let Ok(entries) = std::fs::read_dir(host_root.join(dir)) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name();
                let Some(entry) = high_risk_entry(policy, &name.to_string_lossy()) else {
                    continue;
                };
                let path: PathBuf = e.path();
                let Ok(meta) = std::fs::metadata(&path) else {
                    continue;
                };
                if !meta.is_file() || !seen.insert((meta.dev(), meta.ino())) {
                    continue;
                }
                if let Some(fp) = fingerprint(&path, meta.size()) {
                    me.add(fp, &entry);
                    me.known_files += 1;
                }
            }
        }
        debug!("fingerprinted {} high-risk executables", me.known_files);
        me
    }

    fn add(&mut self, fp: Fingerprint, entry: &str) {
        if let Some(id) = fp.build_id {
            self.by_build_id
                .entry(id)
                .or_insert_with(|| entry.to_string());
        }
        if let Some(h) = fp.sha256 {
            self.by_sha256.entry(h).or_insert_with(|| entry.to_string());
        }
    }

    /// The high-risk list entry whose binary `path` is a copy of, if any. `path` may be a
    /// `/proc/PID/exe` link: opening it reaches the mapped file even if deleted.
    pub fn content_match(&mut self, path: &Path) -> Option<String> {
        let meta = std::fs::metadata(path).ok()?;
        let key = FileKey::of(&meta);
        if let Some(hit) = self.cache.get(&key) {
            return hit.clone();
        }
        let found = fingerprint(path, meta.size()).and_then(|fp| {
            fp.build_id
                .and_then(|id| self.by_build_id.get(&id).cloned())
                .or_else(|| fp.sha256.and_then(|h| self.by_sha256.get(&h).cloned()))
        });
        if self.cache.len() >= CACHE_CAP {
            self.cache.clear(); // crude but bounded; refilled on demand
        }
        self.cache.insert(key, found.clone());
        found
    }
}

/// Where an executable lives, when that alone makes it suspicious.
pub fn suspicious_location(exe: &str, nlink: Option<u32>) -> Option<&'static str> {
    if exe.starts_with("/memfd:") {
        Some("memfd")
    } else if exe.starts_with("/dev/fd/") || exe.starts_with("/proc/self/fd/") {
        Some("fd")
    } else if exe.ends_with(" (deleted)") || nlink == Some(0) {
        Some("deleted")
    } else if exe.starts_with("/dev/shm/") {
        Some("dev_shm")
    } else if exe.starts_with("/tmp/") || exe.starts_with("/var/tmp/") {
        Some("tmp")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        assert_eq!(
            suspicious_location("/memfd:x (deleted)", None),
            Some("memfd")
        );
        assert_eq!(suspicious_location("/dev/fd/3", Some(0)), Some("fd"));
        assert_eq!(
            suspicious_location("/usr/bin/x (deleted)", None),
            Some("deleted")
        );
        assert_eq!(suspicious_location("/usr/bin/x", Some(0)), Some("deleted"));
        assert_eq!(suspicious_location("/dev/shm/x", Some(1)), Some("dev_shm"));
        assert_eq!(suspicious_location("/tmp/x", Some(1)), Some("tmp"));
        assert_eq!(suspicious_location("/var/tmp/x", Some(1)), Some("tmp"));
        assert_eq!(suspicious_location("/usr/bin/curl", Some(1)), None);
        assert_eq!(suspicious_location("/tmpfoo/x", None), None);
    }

    #[test]
    fn copies_match_by_content_and_others_do_not() {
        let mut ids = Identities::scan(&Policy::default(), Path::new("/"));
        assert!(
            ids.known_files > 0,
            "no high-risk binaries found on this host"
        );
        let dir = std::env::temp_dir().join(format!("identity-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sh = std::fs::canonicalize("/bin/sh").unwrap();
        let copy = dir.join("innocent-name");
        std::fs::copy(&sh, &copy).unwrap();
        let entry = ids
            .content_match(&copy)
            .expect("a copy of sh is recognised");
        assert!(high_risk_entry(&Policy::default(), &entry).is_some());
        // Appending bytes changes the hash but not the build-id.
        let mut data = std::fs::read(&copy).unwrap();
        data.extend_from_slice(b"padding");
        let padded = dir.join("padded");
        std::fs::write(&padded, &data).unwrap();
        if ElfFile64::<object::Endianness>::parse(data.as_slice())
            .ok()
            .and_then(|e| e.build_id().ok().flatten())
            .is_some()
        {
            assert!(ids.content_match(&padded).is_some());
        }
        // The test binary itself is nobody's copy; and a second look comes from the cache.
        let me = std::env::current_exe().unwrap();
        assert_eq!(ids.content_match(&me), None);
        assert_eq!(ids.content_match(&me), None);
        assert!(ids.content_match(Path::new("/nonexistent")).is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }
}

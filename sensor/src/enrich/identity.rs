//! Executable identity by content, so `cp /usr/bin/curl /opt/update-agent` is still curl.
//!
//! At start-up the host's high-risk binaries (every file in the standard bin directories
//! whose name is on the list) are fingerprinted: ELF build-id (it survives appended bytes)
//! and SHA-256 of the whole file. A process's executable is identified once per (device,
//! inode, mtime, size): its build-id costs a few small reads of the ELF headers and notes,
//! and the whole file is hashed only when its size is that of a known binary (a hash can
//! only match then), so no file can make the sensor read much.

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    io::Read,
    os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt},
    path::Path,
};

use log::debug;
use sha2::{Digest, Sha256};

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
/// Bound on cached file identities.
const CACHE_CAP: usize = 16_384;
/// Bounds on what the ELF note walk reads.
const MAX_PHDRS: u64 = 256;
const MAX_NOTE_BYTES: u64 = 64 << 10;

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

/// Opens `path` without blocking (a FIFO swapped in cannot hang the sensor) and accepts
/// only a regular file, and only the inode `expect_ino` when given.
fn open_regular(path: &Path, expect_ino: Option<u64>) -> Option<(File, std::fs::Metadata)> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY)
        .open(path)
        .ok()?;
    let meta = f.metadata().ok()?;
    if !meta.is_file() || expect_ino.is_some_and(|ino| ino != meta.ino()) {
        return None;
    }
    Some((f, meta))
}

/// The GNU build-id from an ELF64 little-endian file's PT_NOTE segments.
pub fn build_id(f: &File) -> Option<Vec<u8>> {
    let mut eh = [0u8; 64];
    f.read_exact_at(&mut eh, 0).ok()?;
    if &eh[..4] != b"\x7fELF" || eh[4] != 2 || eh[5] != 1 {
        return None;
    }
    let u16_at = |b: &[u8], o: usize| b.get(o..o + 2).map(|x| u16::from_le_bytes([x[0], x[1]]));
    let u32_at = |b: &[u8], o: usize| {
        b.get(o..o + 4)
            .and_then(|x| x.try_into().ok())
            .map(u32::from_le_bytes)
    };
    let u64_at = |b: &[u8], o: usize| {
        b.get(o..o + 8)
            .and_then(|x| x.try_into().ok())
            .map(u64::from_le_bytes)
    };
    let phoff = u64_at(&eh, 0x20)?;
    let phentsize = u64::from(u16_at(&eh, 0x36)?);
    let phnum = u64::from(u16_at(&eh, 0x38)?).min(MAX_PHDRS);
    if phentsize < 56 {
        return None;
    }
    for i in 0..phnum {
        let mut ph = [0u8; 56];
        f.read_exact_at(&mut ph, phoff.checked_add(i.checked_mul(phentsize)?)?)
            .ok()?;
        if u32_at(&ph, 0)? != 4 {
            continue; // not PT_NOTE
        }
        let (off, size) = (u64_at(&ph, 8)?, u64_at(&ph, 32)?.min(MAX_NOTE_BYTES));
        let mut notes = vec![0u8; usize::try_from(size).ok()?];
        f.read_exact_at(&mut notes, off).ok()?;
        let mut at = 0usize;
        while at + 12 <= notes.len() {
            let namesz = usize::try_from(u32_at(&notes, at)?).ok()?;
            let descsz = usize::try_from(u32_at(&notes, at + 4)?).ok()?;
            let kind = u32_at(&notes, at + 8)?;
            let name_at = at + 12;
            let desc_at = name_at.checked_add(namesz.checked_add(3)? & !3)?;
            let next = desc_at.checked_add(descsz.checked_add(3)? & !3)?;
            if kind == 3 && notes.get(name_at..name_at + namesz)? == b"GNU\0" {
                return notes
                    .get(desc_at..desc_at + descsz)
                    .map(<[u8]>::to_vec)
                    .filter(|d| !d.is_empty());
            }
            at = next;
        }
    }
    None
}

fn sha256(f: &File, size: u64) -> Option<[u8; 32]> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut r = f.take(size);
    loop {
        let n = r.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Some(hasher.finalize().into())
}

/// Known high-risk binaries by fingerprint, and a cache of identified files.
pub struct Identities {
    by_build_id: HashMap<Vec<u8>, String>,
    by_sha256: HashMap<[u8; 32], String>,
    /// Sizes of the fingerprinted binaries: only a file of one of these sizes is hashed.
    sizes: HashSet<u64>,
    cache: HashMap<FileKey, Option<String>>,
    pub known_files: usize,
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
            known_files: 0,
        };
        let mut seen = HashSet::new();
        for dir in BIN_DIRS {
            let Ok(entries) = std::fs::read_dir(host_root.join(dir)) else {
                continue;
            };
            for e in entries.flatten() {
                let Some(entry) = entry_of(&e.file_name().to_string_lossy()) else {
                    continue;
                };
                let Some((f, meta)) = open_regular(&e.path(), None) else {
                    continue;
                };
                if !seen.insert((meta.dev(), meta.ino())) {
                    continue;
                }
                if let Some(id) = build_id(&f) {
                    me.by_build_id.entry(id).or_insert_with(|| entry.clone());
                }
                if meta.size() <= MAX_HASHED
                    && let Some(h) = sha256(&f, meta.size())
                {
                    me.by_sha256.entry(h).or_insert_with(|| entry.clone());
                    me.sizes.insert(meta.size());
                }
                me.known_files += 1;
            }
        }
        debug!("fingerprinted {} high-risk executables", me.known_files);
        me
    }

    /// The high-risk list entry whose binary the file at `path` is a copy of, if any.
    /// `path` may be a `/proc/PID/exe` link (it reaches the mapped file, even deleted);
    /// `expect_ino` rejects a file swapped in at the path since the kernel mapped it.
    pub fn content_match(&mut self, path: &Path, expect_ino: Option<u64>) -> Option<String> {
        let (f, meta) = open_regular(path, expect_ino)?;
        let key = FileKey::of(&meta);
        if let Some(hit) = self.cache.get(&key) {
            return hit.clone();
        }
        let found = build_id(&f)
            .and_then(|id| self.by_build_id.get(&id).cloned())
            .or_else(|| {
                self.sizes
                    .contains(&meta.size())
                    .then(|| sha256(&f, meta.size()))
                    .flatten()
                    .and_then(|h| self.by_sha256.get(&h).cloned())
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
    fn reads_build_ids_from_elf_notes() {
        let sh = File::open(std::fs::canonicalize("/bin/sh").unwrap()).unwrap();
        let id = build_id(&sh).expect("Debian's sh carries a GNU build-id");
        assert_eq!(id.len(), 20, "SHA-1 build-id");
        // Not ELF, or truncated: None, no panic.
        let dir = std::env::temp_dir().join(format!("buildid-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in [
            ("text", b"#!/bin/sh\n".to_vec()),
            ("short", b"\x7fELF\x02\x01".to_vec()),
        ] {
            std::fs::write(dir.join(name), bytes).unwrap();
            assert_eq!(build_id(&File::open(dir.join(name)).unwrap()), None);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

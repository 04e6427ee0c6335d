//! Executable identity by content, so `cp /usr/bin/curl /opt/update-agent` is still curl.
//!
//! At start-up the host's high-risk binaries (every file in the standard bin directories
//! whose name is on the list) are fingerprinted: ELF build-id (it survives appended bytes)
//! and SHA-256 of the whole file. A process's executable is identified once per (device,
//! inode, mtime, size): its build-id costs a few small reads of the ELF headers and notes,
//! and the whole file is hashed only when its size is that of a known binary (a hash can
//! only match then), so no file can make the sensor read much. That hash is never taken
//! on the event loop: a worker ([`hasher`]) does it, and until it answers the process's
//! identity is `pending` (or `skipped-budget` when the worker's queue was full).

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    os::{fd::OwnedFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
    sync::Arc,
};

use log::debug;
use object::{
    Endianness, FileKind, elf,
    read::{
        ReadCache,
        elf::{FileHeader, ProgramHeader},
    },
};

use crate::enrich::{hasher::Hasher, rootfs};

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
/// Bound on cached file identities, in entries and in bytes. An entry holds no heap of
/// its own (a match is the list entry's shared name), so its slot is its whole cost.
const CACHE_CAP: usize = 16_384;
pub const CACHE_MAX_BYTES: usize = 2 << 20;
/// An entry's slot, doubled for the map's spare room.
const CACHE_ENTRY_BYTES: usize = 2 * std::mem::size_of::<(FileKey, Known)>();
/// Bounds on what the ELF note walk reads.
const MAX_PHDRS: usize = 256;
const MAX_NOTE_BYTES: u64 = 64 << 10;
/// Entries read per directory at start-up.
const MAX_DIR_ENTRIES: usize = 65_536;

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

/// A file to identify: a path the sensor's own root resolves (`/proc/PID/exe`, a magic
/// link followed on purpose), or an `O_PATH` fd already opened inside a process's root.
#[derive(Debug)]
pub enum ExeFile {
    Path(PathBuf),
    Fd(OwnedFd),
}

impl From<PathBuf> for ExeFile {
    fn from(p: PathBuf) -> Self {
        ExeFile::Path(p)
    }
}

/// Executables larger than this are not opened for identification.
const MAX_EXECUTABLE: u64 = 1 << 30;

/// Opens `file` for reading only once an `O_PATH` fstat showed a regular file of bounded
/// size (a device node swapped in is never opened; see [`rootfs`]), non-blocking, and
/// only the inode `expect_ino` when given.
fn open_regular(file: &ExeFile, expect_ino: Option<u64>) -> Option<(File, std::fs::Metadata)> {
    let opened;
    let fd = match file {
        ExeFile::Path(p) => {
            opened = rootfs::open_path(p).ok()?;
            &opened
        }
        ExeFile::Fd(fd) => fd,
    };
    let (f, meta) = rootfs::reopen_regular(fd, MAX_EXECUTABLE).ok()?;
    if expect_ino.is_some_and(|ino| ino != meta.ino()) {
        return None;
    }
    Some((f, meta))
}

/// The GNU build-id from an ELF file's PT_NOTE segments (32 or 64-bit, either byte
/// order), parsed by `object` over a read cache: only the header, the program headers and
/// note segments of at most [`MAX_NOTE_BYTES`] are read.
pub fn build_id(f: &File) -> Option<Vec<u8>> {
    let cache = ReadCache::new(f);
    match FileKind::parse(&cache).ok()? {
        FileKind::Elf32 => notes_build_id::<elf::FileHeader32<Endianness>>(&cache),
        FileKind::Elf64 => notes_build_id::<elf::FileHeader64<Endianness>>(&cache),
        _ => None,
    }
}

fn notes_build_id<Elf: FileHeader<Endian = Endianness>>(
    data: &ReadCache<&File>,
) -> Option<Vec<u8>> {
    let header = Elf::parse(data).ok()?;
    let endian = header.endian().ok()?;
    let phdrs = header.program_headers(endian, data).ok()?;
    for ph in phdrs.iter().take(MAX_PHDRS) {
        if ph.p_filesz(endian).into() > MAX_NOTE_BYTES {
            continue;
        }
        let Ok(Some(mut notes)) = ph.notes(endian, data) else {
            continue;
        };
        while let Ok(Some(note)) = notes.next() {
            if note.name() == elf::ELF_NOTE_GNU && note.n_type(endian) == elf::NT_GNU_BUILD_ID {
                let id = note.desc();
                return (!id.is_empty()).then(|| id.to_vec());
            }
        }
    }
    None
}

fn sha256(f: &File, size: u64) -> Option<[u8; 32]> {
    crate::enrich::hasher::sha256_throttled(f, size, 0)
}

/// What is known of a file's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Known {
    /// Identified: the high-risk entry it is a copy of, if any.
    Done(Option<Arc<str>>),
    /// Its hash is being taken by the worker.
    Pending,
}

/// How far a process's executable was identified.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum IdState {
    /// As far as it can be (the content match, if any, is known).
    #[default]
    Known,
    /// The worker is hashing the file (its key, to look the answer up later).
    Pending(FileKey),
    /// The worker's queue was full: the file was not hashed.
    Skipped,
}

impl IdState {
    /// `sensor.process.identity` on the line; None once known.
    pub fn as_str(&self) -> Option<&'static str> {
        match self {
            IdState::Known => None,
            IdState::Pending(_) => Some("pending"),
            IdState::Skipped => Some("skipped-budget"),
        }
    }
}

/// Known high-risk binaries by fingerprint, and a cache of identified files.
pub struct Identities {
    by_build_id: HashMap<Vec<u8>, Arc<str>>,
    by_sha256: HashMap<[u8; 32], Arc<str>>,
    /// Sizes of the fingerprinted binaries: only a file of one of these sizes is hashed.
    sizes: HashSet<u64>,
    cache: HashMap<FileKey, Known>,
    /// Times the full cache was emptied (its entries are refilled on demand).
    pub cache_clears: u64,
    /// Whole-file hashes off the loop; None: hashed inline (one-shot commands, tests).
    pub hasher: Option<Hasher<FileKey>>,
    pub known_files: usize,
    /// Dynamic loaders fingerprinted (their content match is [`LOADER`]).
    pub known_loaders: usize,
}

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

    /// The high-risk list entry whose binary the file at `path` is a copy of, if any.
    /// `path` may be a `/proc/PID/exe` link (it reaches the mapped file, even deleted);
    /// `expect_ino` rejects a file swapped in at the path since the kernel mapped it.
    pub fn content_match(&mut self, path: &Path, expect_ino: Option<u64>) -> Option<String> {
        self.content_match_file(&ExeFile::Path(path.to_path_buf()), expect_ino)
    }

    /// [`Identities::content_match`] for a file to open by path or already opened `O_PATH`
    /// (a hash still pending or skipped counts as no match here).
    pub fn content_match_file(
        &mut self,
        file: &ExeFile,
        expect_ino: Option<u64>,
    ) -> Option<String> {
        self.identify(file, expect_ino).0
    }

    /// Hashes on the worker, starting it (see [`hasher`]).
    pub fn start_hasher(&mut self) {
        self.hasher = Hasher::spawn(
            crate::enrich::hasher::QUEUE,
            crate::enrich::hasher::BYTES_PER_SEC,
        );
    }

    /// The content match of `file` and how far it is known: a build-id is read here (a
    /// few small reads); a whole-file hash is handed to the worker when there is one.
    pub fn identify(
        &mut self,
        file: &ExeFile,
        expect_ino: Option<u64>,
    ) -> (Option<String>, IdState) {
        self.collect();
        let Some((f, meta)) = open_regular(file, expect_ino) else {
            return (None, IdState::Known);
        };
        let key = FileKey::of(&meta);
        match self.cache.get(&key) {
            Some(Known::Done(hit)) => return (hit.as_deref().map(str::to_string), IdState::Known),
            Some(Known::Pending) => return (None, IdState::Pending(key)),
            None => {}
        }
        if let Some(found) = build_id(&f).and_then(|id| self.by_build_id.get(&id).cloned()) {
            let name = found.to_string();
            self.remember(key, Known::Done(Some(found)));
            return (Some(name), IdState::Known);
        }
        if !self.sizes.contains(&meta.size()) {
            self.remember(key, Known::Done(None));
            return (None, IdState::Known);
        }
        match self.hasher.as_mut() {
            Some(h) => {
                if h.submit(key.clone(), f, meta.size()) {
                    self.remember(key.clone(), Known::Pending);
                    (None, IdState::Pending(key))
                } else {
                    // Not remembered: the next process of this file tries again.
                    (None, IdState::Skipped)
                }
            }
            None => {
                let found = sha256(&f, meta.size()).and_then(|h| self.by_sha256.get(&h).cloned());
                let name = found.as_deref().map(str::to_string);
                self.remember(key, Known::Done(found));
                (name, IdState::Known)
            }
        }
    }

    /// What became of a file handed to the worker: Some(match) once hashed (None inside:
    /// no match), None while it is still hashed. A file the cache forgot counts as skipped.
    pub fn settled(&mut self, key: &FileKey) -> Result<Option<String>, IdState> {
        self.collect();
        match self.cache.get(key) {
            Some(Known::Done(m)) => Ok(m.as_deref().map(str::to_string)),
            Some(Known::Pending) => Err(IdState::Pending(key.clone())),
            None => Err(IdState::Skipped),
        }
    }

    /// Takes the worker's answers into the cache.
    fn collect(&mut self) {
        let Some(h) = self.hasher.as_mut() else {
            return;
        };
        for (key, digest) in h.ready() {
            let found = digest.and_then(|d| self.by_sha256.get(&d).cloned());
            self.remember(key, Known::Done(found));
        }
    }

    fn remember(&mut self, key: FileKey, k: Known) {
        if self.cache.len() >= Self::cache_cap() {
            self.cache.clear(); // crude but bounded; refilled on demand
            self.cache_clears += 1;
        }
        self.cache.insert(key, k);
    }

    /// Entries the cache holds at most: [`CACHE_CAP`] or what [`CACHE_MAX_BYTES`] affords.
    fn cache_cap() -> usize {
        CACHE_CAP.min(CACHE_MAX_BYTES / CACHE_ENTRY_BYTES)
    }

    /// The cache of identified files, for `sensor-stats`.
    pub fn cache_report(&self) -> CacheReport {
        CacheReport {
            entries: self.cache.len(),
            bytes: self.cache.len() * CACHE_ENTRY_BYTES,
            max_bytes: Self::cache_cap() * CACHE_ENTRY_BYTES,
            clears: self.cache_clears,
        }
    }
}

/// The cache of identified files, as `sensor.identity_cache` reports it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct CacheReport {
    pub entries: usize,
    pub bytes: usize,
    pub max_bytes: usize,
    pub clears: u64,
}

/// `path` normalised lexically, as the kernel would walk it were every component a
/// directory: `//` and `.` dropped, `..` taking one component off (never above `/`). A
/// relative path stays relative. Used before classifying a path by its prefix, so
/// `/usr/../tmp/x` is judged as `/tmp/x`.
pub fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    let body = parts.join("/");
    if path.starts_with('/') {
        format!("/{body}")
    } else {
        body
    }
}

/// Where an executable lives, when that alone makes it suspicious. The path is normalised
/// first, so no `..` or `//` spelling moves it out of a writable location.
pub fn suspicious_location(exe: &str, nlink: Option<u32>) -> Option<&'static str> {
    let deleted = exe.ends_with(" (deleted)");
    let exe = normalize(exe.strip_suffix(" (deleted)").unwrap_or(exe));
    let under = |dir: &str| exe.strip_prefix(dir).is_some_and(|r| r.starts_with('/'));
    if exe.starts_with("/memfd:") {
        Some("memfd")
    } else if under("/dev/fd") || under("/proc/self/fd") || under("/proc/thread-self/fd") {
        Some("fd")
    } else if deleted || nlink == Some(0) {
        Some("deleted")
    } else if under("/dev/shm") {
        Some("dev_shm")
    } else if under("/tmp") || under("/var/tmp") {
        Some("tmp")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[rstest::rstest]
    #[case("/memfd:x (deleted)", None, Some("memfd"))]
    #[case("/dev/fd/3", Some(0), Some("fd"))]
    #[case("/proc/self/fd/3", None, Some("fd"))]
    #[case("/usr/bin/x (deleted)", None, Some("deleted"))]
    #[case("/usr/bin/x", Some(0), Some("deleted"))]
    #[case("/dev/shm/x", Some(1), Some("dev_shm"))]
    #[case("/tmp/x", Some(1), Some("tmp"))]
    #[case("/var/tmp/x", Some(1), Some("tmp"))]
    #[case("/usr/bin/curl", Some(1), None)]
    #[case("/tmpfoo/x", None, None)]
    // No spelling dodges the check.
    #[case("/usr/../tmp/x", Some(1), Some("tmp"))]
    #[case("//tmp/x", Some(1), Some("tmp"))]
    #[case("/tmp/./x", Some(1), Some("tmp"))]
    #[case("/var/tmp/../tmp/x", Some(1), Some("tmp"))]
    #[case("/../../tmp/x", Some(1), Some("tmp"))]
    #[case("/usr/bin/../../dev/shm/.x/y", Some(1), Some("dev_shm"))]
    #[case("/./dev//fd/3", None, Some("fd"))]
    #[case("/tmp/../usr/bin/curl", Some(1), None)]
    fn locations(#[case] exe: &str, #[case] nlink: Option<u32>, #[case] want: Option<&str>) {
        assert_eq!(suspicious_location(exe, nlink), want, "{exe}");
    }

    #[rstest::rstest]
    #[case("/usr/../tmp/x", "/tmp/x")]
    #[case("//tmp/x", "/tmp/x")]
    #[case("/tmp/./x", "/tmp/x")]
    #[case("/var/tmp/../tmp/x", "/var/tmp/x")]
    #[case("/..", "/")]
    #[case("/a/b/", "/a/b")]
    #[case("a/../b", "b")]
    fn normalises_lexically(#[case] path: &str, #[case] want: &str) {
        assert_eq!(normalize(path), want);
    }

    /// An attacker making files faster than the cache forgets them: the cache stays within
    /// its bytes (an entry is its slot: a match shares the list entry's name), emptied
    /// when full, counted.
    #[test]
    fn cache_is_bounded_in_bytes() {
        let mut ids = Identities::scan(|_| None, Path::new("/nonexistent"));
        let name: Arc<str> = "nc".into();
        for ino in 0..40_000u64 {
            let key = FileKey {
                dev: 1,
                ino,
                mtime_ns: 0,
                size: 4096,
            };
            ids.remember(key, Known::Done(Some(name.clone())));
            let r = ids.cache_report();
            assert!(r.bytes <= r.max_bytes, "{r:?}");
        }
        let r = ids.cache_report();
        assert!(r.max_bytes <= CACHE_MAX_BYTES, "{r:?}");
        assert_eq!(r.clears, 40_000 / Identities::cache_cap() as u64, "{r:?}");
    }

    /// A file sized like a known binary is hashed by the worker: pending at first, then
    /// its answer is in the cache; the caller never waits.
    #[test]
    fn hashing_is_pending_then_settled() {
        let dir = std::env::temp_dir().join(format!("t1571-pending-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("usr/bin")).unwrap();
        let known = vec![1u8; 1 << 20];
        std::fs::write(dir.join("usr/bin/node"), &known).unwrap();
        std::fs::write(dir.join("copy"), &known).unwrap();
        std::fs::write(dir.join("other"), vec![2u8; 1 << 20]).unwrap();
        let mut ids = Identities::scan(|n| (n == "node").then(|| "node".into()), &dir);
        assert_eq!(ids.known_files, 1);
        ids.start_hasher();
        for (file, want) in [("copy", Some("node".to_string())), ("other", None)] {
            let (m, state) = ids.identify(&ExeFile::Path(dir.join(file)), None);
            let IdState::Pending(key) = state else {
                panic!("{file}: {state:?}")
            };
            assert_eq!((m, state_str(&ids, &key)), (None, Some("pending")));
            let t = std::time::Instant::now();
            let got = loop {
                match ids.settled(&key) {
                    Ok(m) => break m,
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
                }
                assert!(t.elapsed().as_secs() < 20);
            };
            assert_eq!(got, want, "{file}");
            // Known from now on, without the worker.
            assert_eq!(
                ids.identify(&ExeFile::Path(dir.join(file)), None),
                (want, IdState::Known)
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn state_str(ids: &Identities, key: &FileKey) -> Option<&'static str> {
        match ids.cache.get(key) {
            Some(Known::Pending) => IdState::Pending(key.clone()).as_str(),
            _ => None,
        }
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

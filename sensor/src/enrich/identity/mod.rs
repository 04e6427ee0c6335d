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

mod file;
mod location;
mod scan;

use std::{
    collections::{HashMap, HashSet},
    os::unix::fs::MetadataExt,
    path::Path,
    sync::Arc,
};

use self::file::{open_regular, sha256};
pub use self::{
    file::{ExeFile, FileKey, build_id},
    location::{normalize, suspicious_location},
    scan::{LOADER, is_loader_name},
};
use crate::enrich::hasher::Hasher;

/// Bound on cached file identities, in entries and in bytes. An entry holds no heap of
/// its own (a match is the list entry's shared name), so its slot is its whole cost.
const CACHE_CAP: usize = 16_384;
pub const CACHE_MAX_BYTES: usize = 2 << 20;
/// An entry's slot, doubled for the map's spare room.
const CACHE_ENTRY_BYTES: usize = 2 * std::mem::size_of::<(FileKey, Known)>();

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

impl Identities {
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
#[derive(
    Debug,
    Default,
    Clone,
    Copy,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
pub struct CacheReport {
    pub entries: usize,
    pub bytes: usize,
    pub max_bytes: usize,
    pub clears: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

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
}

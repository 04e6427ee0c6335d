//! Reading an executable safely: opened only as a bounded regular file (the inode the
//! kernel mapped, when known), its ELF build-id from the notes, its SHA-256.

use std::{
    fs::File,
    os::{fd::OwnedFd, unix::fs::MetadataExt},
    path::PathBuf,
};

use object::{
    Endianness, FileKind, elf,
    read::{
        ReadCache,
        elf::{FileHeader, ProgramHeader},
    },
};

use crate::enrich::rootfs;

/// Bounds on what the ELF note walk reads.
const MAX_PHDRS: usize = 256;
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
pub(super) fn open_regular(
    file: &ExeFile,
    expect_ino: Option<u64>,
) -> Option<(File, std::fs::Metadata)> {
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

pub(super) fn sha256(f: &File, size: u64) -> Option<[u8; 32]> {
    crate::enrich::hasher::sha256_throttled(f, size, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

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

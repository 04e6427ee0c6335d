//! What a loader-started process maps: `/proc/PID/maps` searched as a stream (a process
//! can hold 64k mappings, megabytes of text, and the search runs on the event loop), and
//! whether an ELF file is a main program or a shared library (libc.so.6 is mapped in
//! every process, so "mapped" alone confirms nothing).

use std::{
    fs::File,
    io::{BufRead, BufReader, Read},
    path::Path,
};

use object::{
    Endianness, FileKind, ReadCache,
    elf::{self},
    read::elf::{Dyn, FileHeader, ProgramHeader},
};

/// Bytes of `/proc/PID/maps` searched at most: ~13k mappings. A process with more gets
/// no confirmation (it is then scored as the loader, never lower).
pub const MAX_MAPS_BYTES: u64 = 1 << 20;
/// The read buffer, and the longest line prefix parsed (the fields before the path).
const BUF: usize = 8 << 10;
/// Program headers and dynamic entries looked at, at most.
const MAX_PHDRS: usize = 64;
const MAX_DYNAMIC_BYTES: u64 = 64 << 10;

/// Whether the maps at `path` map the file `dev`:`ino` from file offset 0 (where the
/// loader maps a program's ELF header), reading at most `max` bytes through a small
/// buffer and stopping at the first such mapping. None when the file cannot be opened;
/// Some(false) when the cap was reached first.
pub fn maps_file_at_zero(path: &Path, dev: u64, ino: u64, max: u64) -> Option<bool> {
    let f = File::open(path).ok()?;
    let mut r = BufReader::with_capacity(BUF, f.take(max));
    let want = format!("{:02x}:{:02x}", libc::major(dev), libc::minor(dev));
    let mut line = Vec::with_capacity(256);
    let mut at_start = true;
    loop {
        line.clear();
        // A line longer than BUF is read in pieces; only a line's first piece is parsed.
        let n = (&mut r)
            .take(BUF as u64)
            .read_until(b'\n', &mut line)
            .ok()?;
        if n == 0 {
            return Some(false);
        }
        if at_start && maps_line_at_zero(&line, &want, ino) {
            return Some(true);
        }
        at_start = line.last() == Some(&b'\n');
    }
}

/// One maps line (`start-end perms offset MAJ:MIN inode path`): the file `want_dev`
/// `ino` from offset 0.
fn maps_line_at_zero(line: &[u8], want_dev: &str, ino: u64) -> bool {
    let mut f = line
        .split(|b| b.is_ascii_whitespace())
        .filter(|s| !s.is_empty())
        .skip(2);
    let offset = f.next();
    let dev = f.next();
    let inode = f.next();
    offset.is_some_and(|o| !o.is_empty() && o.iter().all(|&b| b == b'0'))
        && dev == Some(want_dev.as_bytes())
        && inode
            .and_then(|i| std::str::from_utf8(i).ok())
            .and_then(|i| i.parse::<u64>().ok())
            == Some(ino)
}

/// Whether an ELF file is a program the loader runs as its main: `ET_EXEC`, or `ET_DYN`
/// with a `PT_INTERP` and no `DT_SONAME`. A shared library names itself (`DT_SONAME`),
/// even one with an interpreter so that it can be run (glibc's libc.so.6 prints its
/// version); a loader has no interpreter. Reads the header, at most 64 program headers
/// and a dynamic section of at most 64 KiB.
pub fn is_program(f: &File) -> bool {
    let cache = ReadCache::new(f);
    match FileKind::parse(&cache) {
        Ok(FileKind::Elf32) => program::<elf::FileHeader32<Endianness>>(&cache),
        Ok(FileKind::Elf64) => program::<elf::FileHeader64<Endianness>>(&cache),
        _ => false,
    }
}

fn program<Elf: FileHeader<Endian = Endianness>>(data: &ReadCache<&File>) -> bool {
    let Ok(header) = Elf::parse(data) else {
        return false;
    };
    let Ok(endian) = header.endian() else {
        return false;
    };
    let Ok(phdrs) = header.program_headers(endian, data) else {
        return false;
    };
    let phdrs = &phdrs[..phdrs.len().min(MAX_PHDRS)];
    let has = |t| phdrs.iter().any(|p| p.p_type(endian) == t);
    let soname = phdrs
        .iter()
        .filter(|p| p.p_type(endian) == elf::PT_DYNAMIC)
        .filter(|p| p.p_filesz(endian).into() <= MAX_DYNAMIC_BYTES)
        .any(|p| {
            p.dynamic(endian, data).ok().flatten().is_some_and(|d| {
                d.iter()
                    .take_while(|e| e.tag32(endian) != Some(elf::DT_NULL as i32))
                    .any(|e| e.tag32(endian) == Some(elf::DT_SONAME as i32))
            })
        });
    match header.e_type(endian) {
        elf::ET_EXEC => !soname,
        elf::ET_DYN => has(elf::PT_INTERP) && !soname,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn programs_and_libraries() {
        let open = |p: &str| File::open(std::fs::canonicalize(p).unwrap()).unwrap();
        assert!(is_program(&open("/usr/bin/python3")), "python3");
        assert!(is_program(&open("/proc/self/exe")), "a PIE test binary");
        // libc.so.6 has an interpreter (it can be run) but names itself.
        let libc = "/lib/x86_64-linux-gnu/libc.so.6";
        if Path::new(libc).exists() {
            assert!(!is_program(&open(libc)), "libc");
        }
        assert!(!is_program(&open("/lib64/ld-linux-x86-64.so.2")), "ld.so");
        assert!(!is_program(&open("/etc/passwd")), "not ELF");
    }

    #[test]
    fn finds_a_mapping_at_offset_zero_within_the_cap() {
        let me = std::fs::metadata("/proc/self/exe").unwrap();
        let maps = Path::new("/proc/self/maps");
        assert_eq!(
            maps_file_at_zero(maps, me.dev(), me.ino(), MAX_MAPS_BYTES),
            Some(true)
        );
        assert_eq!(
            maps_file_at_zero(maps, me.dev(), u64::MAX, MAX_MAPS_BYTES),
            Some(false)
        );
        // Past the cap: not found, never a guess.
        assert_eq!(maps_file_at_zero(maps, me.dev(), me.ino(), 10), Some(false));
    }

    #[test]
    fn parses_lines() {
        let l = b"7f00-7f10 r-xp 00000000 08:10 99 /usr/lib/x86_64-linux-gnu/libc.so.6\n";
        assert!(maps_line_at_zero(l, "08:10", 99));
        assert!(!maps_line_at_zero(l, "08:10", 98));
        assert!(!maps_line_at_zero(l, "08:11", 99));
        let l = b"7f00-7f10 r-xp 00001000 08:10 99 /x\n";
        assert!(!maps_line_at_zero(l, "08:10", 99), "not offset 0");
        assert!(!maps_line_at_zero(b"garbage", "08:10", 99));
    }
}

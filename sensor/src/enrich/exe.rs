//! Executable path resolution: the exec'd path, on disk, as the inode the kernel mapped.

use std::{
    os::{fd::AsRawFd, fd::OwnedFd, unix::fs::MetadataExt},
    path::Path,
};

use crate::enrich::{identity::ExeFile, rootfs};

/// `filename` as a file on disk, accepted only if it is the inode the kernel mapped.
/// Looked up *inside* the parent's root (a container's files live in its mount namespace)
/// with openat2 RESOLVE_IN_ROOT and `O_PATH`, so no link in that root reaches the
/// sensor's files and nothing is opened for reading; the sensor's own root is tried only
/// when the parent's is gone, under the same rules. Returns the path to show (symlinks
/// resolved, `nc` as `nc.openbsd`, when the root is the sensor's own; as exec'd otherwise,
/// since the sensor's view of a container's file is a host-side path) and the `O_PATH` fd
/// to identify it by. The device must match too, except on btrfs, where `st_dev` is per
/// subvolume and differs from the kernel's superblock device.
pub fn resolve_on_disk(
    filename: &str,
    dev: u64,
    ino: u64,
    parent_root: &Path,
) -> Option<(String, ExeFile)> {
    if !filename.starts_with('/') || ino == 0 {
        return None;
    }
    let root = if rootfs::open_path(parent_root).is_ok() {
        parent_root
    } else {
        Path::new("/")
    };
    let fd = rootfs::open_path_in(root, filename).ok()?;
    let meta = rootfs::fstat(&fd).ok()?;
    if meta.ino() != ino || (meta.dev() != dev && !is_btrfs(&fd)) {
        return None;
    }
    let shown = if rootfs::is_our_root(root) {
        rootfs::fd_path(&fd)?
    } else {
        filename.to_string()
    };
    Some((shown, ExeFile::Fd(fd)))
}

fn is_btrfs(fd: &OwnedFd) -> bool {
    const BTRFS_SUPER_MAGIC: i64 = 0x9123_683e;
    // SAFETY: a valid fd (O_PATH is enough for fstatfs) and a zeroed statfs to fill.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    unsafe { libc::fstatfs(fd.as_raw_fd(), &mut st) == 0 && st.f_type as i64 == BTRFS_SUPER_MAGIC }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_inside_the_root_and_checks_the_inode() {
        let sh = std::fs::canonicalize("/bin/sh").unwrap();
        let m = std::fs::metadata(&sh).unwrap();
        let (shown, file) = resolve_on_disk("/bin/sh", m.dev(), m.ino(), Path::new("/")).unwrap();
        assert_eq!(shown, sh.to_str().unwrap(), "our root: symlinks resolved");
        assert!(matches!(file, ExeFile::Fd(_)));
        // Another inode at that path: not the file the kernel mapped.
        assert!(resolve_on_disk("/bin/sh", m.dev(), m.ino() + 1, Path::new("/")).is_none());
        assert!(resolve_on_disk("bin/sh", m.dev(), m.ino(), Path::new("/")).is_none());
        // A parent that is gone: the sensor's root, same rules.
        assert!(resolve_on_disk("/bin/sh", m.dev(), m.ino(), Path::new("/proc/0/root")).is_some());
    }
}

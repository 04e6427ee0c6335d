//! Executable path resolution: the exec'd path, on disk, as the inode the kernel mapped.

use std::path::Path;

/// `filename` as a path on disk, accepted only if it is the inode the kernel mapped.
/// Looked up in our root first (symlinks resolved: `nc` is shown as `nc.openbsd`), then
/// through the parent's root (a container's files live in its mount namespace; shown as
/// exec'd, since resolving through `/proc/PID/root` would give host-side paths). Returns
/// the path to show and the path to open. The device must match too, except on btrfs,
/// where `st_dev` is per subvolume and differs from the kernel's superblock device.
pub fn resolve_on_disk(
    filename: &str,
    dev: u64,
    ino: u64,
    parent_root: &Path,
) -> Option<(String, std::path::PathBuf)> {
    use std::os::unix::fs::MetadataExt;
    if !filename.starts_with('/') || ino == 0 {
        return None;
    }
    let inside = filename.trim_start_matches('/');
    for (root, ours) in [(Path::new("/"), true), (parent_root, false)] {
        let path = root.join(inside);
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if meta.ino() != ino || (meta.dev() != dev && !is_btrfs(&path)) {
            continue;
        }
        let shown = if ours {
            std::fs::canonicalize(&path)
                .ok()?
                .to_string_lossy()
                .into_owned()
        } else {
            filename.to_string()
        };
        return Some((shown, path));
    }
    None
}

fn is_btrfs(path: &Path) -> bool {
    const BTRFS_SUPER_MAGIC: i64 = 0x9123_683e;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: valid NUL-terminated path and a zeroed statfs to fill.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BTRFS_SUPER_MAGIC }
}

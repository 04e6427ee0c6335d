//! Reading files inside another root (`/proc/PID/root`, the node's `/proc/1/root`) as the
//! attacker-controlled data they are: every path is resolved by the kernel *inside* that
//! root (openat2 RESOLVE_IN_ROOT, so `..` and absolute symlinks cannot climb out, and no
//! magic links), opened non-blocking, accepted only as a regular file (or a directory,
//! where asked), and read with a bound. Hand-written because std has no openat2.

use std::{
    ffi::CString,
    fs::File,
    io::Read,
    os::fd::{FromRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};

/// Opens `rel` inside `root` with `flags`; the kernel keeps the walk inside `root`.
fn open_in(root: &Path, rel: &str, flags: i32) -> Result<OwnedFd> {
    let root_c = CString::new(root.as_os_str().as_encoded_bytes()).context("root with NUL")?;
    let rel_c = CString::new(rel.trim_start_matches('/')).context("path with NUL")?;
    // SAFETY: plain syscalls on valid NUL-terminated strings; every fd returned is owned.
    unsafe {
        let dir = libc::open(
            root_c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        );
        if dir < 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("opening {}", root.display()));
        }
        let dir = OwnedFd::from_raw_fd(dir);
        // libc's open_how is non-exhaustive: zeroed, then the fields set.
        let mut how: libc::open_how = std::mem::zeroed();
        how.flags = (flags | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK) as u64;
        how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
        let fd = libc::syscall(
            libc::SYS_openat2,
            std::os::fd::AsRawFd::as_raw_fd(&dir),
            rel_c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        );
        if fd < 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("opening {rel} inside {}", root.display()));
        }
        Ok(OwnedFd::from_raw_fd(fd as i32))
    }
}

/// At most `max` bytes of the regular file `rel` inside `root`; an error for anything else
/// (a FIFO, a device, a directory), or a file larger than `max`.
pub fn read_file(root: &Path, rel: &str, max: u64) -> Result<Vec<u8>> {
    let file = File::from(open_in(root, rel, libc::O_RDONLY)?);
    let meta = file.metadata().context("stat")?;
    if !meta.is_file() {
        bail!("{rel} inside {} is not a regular file", root.display());
    }
    if meta.len() > max {
        bail!(
            "{rel} inside {} is {} bytes, more than the {max} read",
            root.display(),
            meta.len()
        );
    }
    let mut out = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(max).read_to_end(&mut out).context("read")?;
    Ok(out)
}

/// One directory entry inside another root: its name and, for a symlink, its target
/// (read, never followed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub link: Option<PathBuf>,
}

/// Up to `max` entries of the directory `rel` inside `root`.
pub fn list_dir(root: &Path, rel: &str, max: usize) -> Result<Vec<Entry>> {
    let fd = open_in(root, rel, libc::O_RDONLY | libc::O_DIRECTORY)?;
    // The opened directory, through our own fd: no path is resolved again.
    let dir = PathBuf::from(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&fd)
    ));
    let mut out = Vec::new();
    for e in std::fs::read_dir(&dir).with_context(|| format!("listing {rel}"))? {
        if out.len() >= max {
            break;
        }
        let Ok(e) = e else { continue };
        let name = e.file_name().to_string_lossy().into_owned();
        let link = e
            .file_type()
            .is_ok_and(|t| t.is_symlink())
            .then(|| std::fs::read_link(e.path()).ok())
            .flatten();
        out.push(Entry { name, link });
    }
    drop(fd);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> (tempdir::Dir, PathBuf) {
        let d = tempdir::Dir::new("rootfs");
        let root = d.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/passwd"), "alice:x:1000:1000::/:/bin/sh\n").unwrap();
        // Links that try to climb out of the root.
        std::os::unix::fs::symlink("/etc/shadow-outside", root.join("etc/abs")).unwrap();
        std::os::unix::fs::symlink("../../outside", root.join("etc/rel")).unwrap();
        std::fs::write(d.path().join("outside"), "secret").unwrap();
        (d, root)
    }

    /// A scratch directory removed on drop (outside /tmp is not needed: nothing runs).
    mod tempdir {
        pub struct Dir(std::path::PathBuf);
        impl Dir {
            pub fn new(name: &str) -> Self {
                let p = std::env::temp_dir().join(format!("t1571-{name}-{}", std::process::id()));
                let _ = std::fs::remove_dir_all(&p);
                std::fs::create_dir_all(&p).unwrap();
                Self(p)
            }
            pub fn path(&self) -> &std::path::Path {
                &self.0
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn reads_inside_and_never_climbs_out() {
        let (_d, root) = fixture();
        assert_eq!(
            read_file(&root, "/etc/passwd", 4096).unwrap(),
            b"alice:x:1000:1000::/:/bin/sh\n"
        );
        // `..` past the root stays at the root: this is the root's own etc/passwd.
        assert!(read_file(&root, "../../etc/passwd", 4096).is_ok());
        // The relative link resolves inside the root, where there is no `outside`.
        assert!(read_file(&root, "etc/rel", 4096).is_err());
        assert!(read_file(&root, "etc/abs", 4096).is_err());
        // Bounded, and only regular files.
        assert!(read_file(&root, "etc/passwd", 4).is_err());
        assert!(read_file(&root, "etc", 4096).is_err());
    }

    #[test]
    fn lists_with_link_targets_unfollowed() {
        let (_d, root) = fixture();
        let mut e = list_dir(&root, "etc", 100).unwrap();
        e.sort_by(|a, b| a.name.cmp(&b.name));
        assert_eq!(e[0].name, "abs");
        assert_eq!(e[0].link.as_deref(), Some(Path::new("/etc/shadow-outside")));
        assert_eq!(e[2].name, "rel");
        assert_eq!(list_dir(&root, "etc", 1).unwrap().len(), 1);
    }
}

//! Reading files inside another root (`/proc/PID/root`, the node's `/proc/1/root`) as the
//! attacker-controlled data they are. Nothing is opened for reading before its type is
//! known: every path is first opened `O_PATH` (which runs no driver code and makes no
//! fsnotify open event), resolved by the kernel *inside* that root (openat2
//! RESOLVE_IN_ROOT, so `..` and absolute symlinks cannot climb out, and no magic links),
//! `fstat`ed, and only a regular file of bounded size (or a directory, where asked) is
//! reopened through the fd (`/proc/self/fd/N`, non-blocking, no controlling tty) and
//! checked to be the same inode. A device node planted as a container's `/etc/passwd` is
//! never opened. Hand-written because std has no openat2.

use std::{
    ffi::CString,
    fs::{File, Metadata},
    io::Read,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::fs::MetadataExt,
    },
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};

fn cstr(p: &[u8], what: &str) -> Result<CString> {
    CString::new(p).with_context(|| format!("{what} with NUL"))
}

/// An `O_PATH` fd of `path` as the sensor's own root resolves it (symlinks, and magic
/// links such as `/proc/PID/exe`, followed on purpose). Opens nothing for reading.
pub fn open_path(path: &Path) -> Result<OwnedFd> {
    open_path_with(path, 0)
}

/// [`open_path`] with extra flags (`O_NOFOLLOW`: a final symlink is returned as itself,
/// and so is never a regular file).
pub fn open_path_with(path: &Path, flags: i32) -> Result<OwnedFd> {
    let c = cstr(path.as_os_str().as_encoded_bytes(), "path")?;
    // SAFETY: a plain syscall on a valid NUL-terminated string; the fd returned is owned.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_CLOEXEC | flags) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("opening {}", path.display()));
    }
    // SAFETY: a new fd nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// An `O_PATH` fd of `rel` inside `root`: the kernel keeps the walk inside `root`.
pub fn open_path_in(root: &Path, rel: &str) -> Result<OwnedFd> {
    open_path_under(root, rel, libc::RESOLVE_IN_ROOT)
}

/// An `O_PATH` fd of the relative path `rel` beneath the directory `dir` (a process's
/// `/proc/PID/cwd`): the walk may not leave `dir`, so `..` above it and absolute
/// symlinks fail rather than resolve in the sensor's root.
pub fn open_path_beneath(dir: &Path, rel: &str) -> Result<OwnedFd> {
    if rel.starts_with('/') {
        bail!("{rel} is not relative");
    }
    open_path_under(dir, rel, libc::RESOLVE_BENEATH)
}

fn open_path_under(root: &Path, rel: &str, resolve: u64) -> Result<OwnedFd> {
    let dir = {
        let c = cstr(root.as_os_str().as_encoded_bytes(), "root")?;
        // SAFETY: as in open_path.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("opening {}", root.display()));
        }
        // SAFETY: a new fd nobody else owns.
        unsafe { OwnedFd::from_raw_fd(fd) }
    };
    let rel_t = rel.trim_start_matches('/');
    let rel_c = cstr(
        if rel_t.is_empty() {
            b"."
        } else {
            rel_t.as_bytes()
        },
        "path",
    )?;
    // SAFETY: libc's open_how is non-exhaustive: zeroed, then the fields set.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_PATH | libc::O_CLOEXEC) as u64;
    how.resolve = resolve | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: valid dirfd, NUL-terminated path and open_how of the size given.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            rel_c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("opening {rel} inside {}", root.display()));
    }
    // SAFETY: a new fd nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `fstat` of an fd (an `O_PATH` one included).
pub fn fstat(fd: &OwnedFd) -> Result<Metadata> {
    // std's metadata is statx(fd, "", AT_EMPTY_PATH), which works on O_PATH fds; the
    // borrowed File is forgotten so the fd stays `fd`'s.
    // SAFETY: the raw fd is valid for the call and not closed by ManuallyDrop.
    let f = std::mem::ManuallyDrop::new(unsafe { File::from_raw_fd(fd.as_raw_fd()) });
    f.metadata().context("fstat")
}

/// The file behind an `O_PATH` fd, opened for reading only if it is a regular file of
/// at most `max` bytes, and only if the reopened fd is the same inode.
pub fn reopen_regular(fd: &OwnedFd, max: u64) -> Result<(File, Metadata)> {
    let before = fstat(fd)?;
    if !before.is_file() {
        bail!("not a regular file ({:o})", before.mode() & libc::S_IFMT);
    }
    if before.len() > max {
        bail!("{} bytes, more than the {max} read", before.len());
    }
    let file = reopen(fd, libc::O_RDONLY)?;
    let after = file.metadata().context("fstat")?;
    if (after.dev(), after.ino()) != (before.dev(), before.ino()) || !after.is_file() {
        bail!("the file changed between its check and its open");
    }
    Ok((file, after))
}

/// Opens the file an `O_PATH` fd names through the fd itself, so no path is resolved
/// again (the sensor's own `/proc`).
fn reopen(fd: &OwnedFd, flags: i32) -> Result<File> {
    let c = cstr(
        format!("/proc/self/fd/{}", fd.as_raw_fd()).as_bytes(),
        "fd path",
    )?;
    // SAFETY: a plain syscall on a valid NUL-terminated string; the fd returned is owned.
    let n = unsafe {
        libc::open(
            c.as_ptr(),
            flags | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error()).context("reopening through /proc/self/fd");
    }
    // SAFETY: a new fd nobody else owns.
    Ok(unsafe { File::from_raw_fd(n) })
}

fn read_bounded(file: File, meta: &Metadata, max: u64) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(usize::try_from(meta.len().min(max)).unwrap_or(0));
    file.take(max).read_to_end(&mut out).context("read")?;
    Ok(out)
}

/// At most `max` bytes of the regular file `rel` inside `root`; an error for anything else
/// (a FIFO, a device, a directory), or a file larger than `max`. Nothing else is opened.
pub fn read_file(root: &Path, rel: &str, max: u64) -> Result<Vec<u8>> {
    let fd = open_path_in(root, rel)?;
    let (file, meta) =
        reopen_regular(&fd, max).with_context(|| format!("{rel} inside {}", root.display()))?;
    read_bounded(file, &meta, max)
}

/// [`read_file`] for a path the sensor's own root resolves (the host's passwd under
/// `--host-root`): the same type check before any open for reading.
pub fn read_path(path: &Path, max: u64) -> Result<Vec<u8>> {
    let fd = open_path(path)?;
    let (file, meta) = reopen_regular(&fd, max).with_context(|| path.display().to_string())?;
    read_bounded(file, &meta, max)
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
    let fd = open_path_in(root, rel)?;
    if !fstat(&fd)?.is_dir() {
        bail!("{rel} inside {} is not a directory", root.display());
    }
    // The opened directory, through our own fd: no path is resolved again.
    let dir = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
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

/// The path the sensor's own root gives the file behind `fd` (symlinks resolved): only
/// meaningful when that file lies under the sensor's root.
pub fn fd_path(fd: &OwnedFd) -> Option<String> {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

/// Whether the file system behind `fd` gives `st_dev` values that differ from the
/// device the kernel's records carry (btrfs: per subvolume; overlayfs: per layer).
pub fn devices_per_subvolume(fd: &OwnedFd) -> bool {
    const BTRFS_SUPER_MAGIC: i64 = 0x9123_683e;
    const OVERLAYFS_SUPER_MAGIC: i64 = 0x794c_7630;
    // SAFETY: a valid fd (O_PATH is enough for fstatfs) and a zeroed statfs to fill.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::fstatfs(fd.as_raw_fd(), &mut st) } == 0;
    ok && matches!(st.f_type as i64, BTRFS_SUPER_MAGIC | OVERLAYFS_SUPER_MAGIC)
}

/// Whether `root` is the sensor's own `/` (same device and inode).
pub fn is_our_root(root: &Path) -> bool {
    let Ok(ours) = std::fs::metadata("/") else {
        return false;
    };
    open_path(root)
        .and_then(|fd| fstat(&fd))
        .is_ok_and(|m| (m.dev(), m.ino()) == (ours.dev(), ours.ino()))
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
                static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let p =
                    std::env::temp_dir().join(format!("t1571-{name}-{}-{n}", std::process::id()));
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

    /// IN_OPEN events on `path` while `f` runs (inotify, non-blocking read after).
    fn opens_during(path: &Path, f: impl FnOnce()) -> usize {
        let c = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: inotify on a valid path; the buffer outlives the read.
        unsafe {
            let ino = libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC);
            assert!(ino >= 0);
            let w = libc::inotify_add_watch(ino, c.as_ptr(), libc::IN_OPEN);
            assert!(
                w >= 0,
                "{}: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
            f();
            let mut buf = [0u8; 4096];
            let n = libc::read(ino, buf.as_mut_ptr().cast(), buf.len());
            libc::close(ino);
            // Each event here has no name: a fixed 16-byte record.
            if n > 0 { n as usize / 16 } else { 0 }
        }
    }

    #[test]
    fn device_nodes_and_fifos_are_never_opened() {
        let (_d, root) = fixture();
        let dev = root.join("etc/passwd-dev");
        let fifo = root.join("etc/fifo");
        let c = CString::new(dev.as_os_str().as_encoded_bytes()).unwrap();
        let cf = CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mknod/mkfifo on valid paths. /dev/null's numbers: harmless if opened.
        if unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o644, libc::makedev(1, 3)) } != 0 {
            eprintln!("SKIPPED device_nodes_and_fifos_are_never_opened: mknod needs root");
            return;
        }
        assert_eq!(unsafe { libc::mkfifo(cf.as_ptr(), 0o644) }, 0);
        // Calibration: an ordinary open is seen, an O_PATH open is not.
        assert_eq!(opens_during(&dev, || drop(File::open(&dev).unwrap())), 1);
        assert_eq!(opens_during(&dev, || drop(open_path(&dev).unwrap())), 0);
        for (p, rel) in [(&dev, "etc/passwd-dev"), (&fifo, "etc/fifo")] {
            let n = opens_during(p, || {
                let e = read_file(&root, rel, 4096).unwrap_err();
                assert!(format!("{e:#}").contains("not a regular file"), "{e:#}");
                assert!(read_path(p, 4096).is_err());
            });
            assert_eq!(n, 0, "{rel} was opened");
        }
        // A regular file is reopened through its fd, the same inode.
        let fd = open_path_in(&root, "etc/passwd").unwrap();
        let (_, m) = reopen_regular(&fd, 4096).unwrap();
        assert_eq!(m.ino(), fstat(&fd).unwrap().ino());
        assert_eq!(read_path(&root.join("etc/passwd"), 4096).unwrap().len(), 29);
    }
}

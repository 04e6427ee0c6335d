//! Finding tracefs for the classic tracepoints, the fallback hooks: already mounted at
//! /sys/kernel/tracing, reachable through a mounted debugfs, or mounted by the sensor in
//! a mount namespace of its own, so the host's mounts are never changed. BTF tracepoints,
//! fentry and kprobes need none of this; it runs only when a classic tracepoint is
//! about to be attached.

use std::{
    ffi::CString,
    path::{Path, PathBuf},
    sync::OnceLock,
};

use anyhow::{Context, Result, bail};

/// The standard mount point; the kernel creates the directory even when nothing is mounted.
const TRACING: &str = "/sys/kernel/tracing";
/// Where a mounted debugfs exposes tracefs (automounted by the kernel on access).
const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";

/// Where tracefs was found, for the log, `sensor-started` and `sensor check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tracefs {
    /// Already mounted by the host at this path.
    Mounted(PathBuf),
    /// Under a mounted debugfs.
    Debugfs(PathBuf),
    /// Mounted here by the sensor, in its own mount namespace.
    MountedBySensor(PathBuf),
}

impl Tracefs {
    pub fn path(&self) -> &Path {
        match self {
            Tracefs::Mounted(p) | Tracefs::Debugfs(p) | Tracefs::MountedBySensor(p) => p,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Tracefs::Mounted(p) => format!("tracefs at {} (mounted by the host)", p.display()),
            Tracefs::Debugfs(p) => format!("tracefs under debugfs at {}", p.display()),
            Tracefs::MountedBySensor(p) => format!(
                "tracefs mounted by the sensor at {} in its own mount namespace",
                p.display()
            ),
        }
    }
}

/// A tracefs root has an `events` directory.
fn usable(root: &Path) -> bool {
    root.join("events").is_dir()
}

/// Finds tracefs, mounting it if needed. Mounts at most once per process; the answer
/// (success or failure) is kept, because aya caches its own tracefs lookup too.
pub fn ensure() -> Result<Tracefs> {
    static FOUND: OnceLock<Result<Tracefs, String>> = OnceLock::new();
    FOUND
        .get_or_init(|| find_or_mount().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

/// Where tracefs is without mounting anything, if anywhere.
pub fn find() -> Option<Tracefs> {
    if usable(Path::new(TRACING)) {
        return Some(Tracefs::Mounted(TRACING.into()));
    }
    usable(Path::new(DEBUGFS_TRACING)).then(|| Tracefs::Debugfs(DEBUGFS_TRACING.into()))
}

fn find_or_mount() -> Result<Tracefs> {
    if let Some(found) = find() {
        return Ok(found);
    }
    mount_private().with_context(|| {
        format!(
            "tracefs is not mounted (neither {TRACING} nor {DEBUGFS_TRACING}) and the sensor \
             could not mount it (needs CAP_SYS_ADMIN)"
        )
    })?;
    if !usable(Path::new(TRACING)) {
        bail!("mounted tracefs at {TRACING}, but it has no events directory");
    }
    Ok(Tracefs::MountedBySensor(TRACING.into()))
}

fn cstr(s: &str) -> CString {
    CString::new(s).expect("constant without NUL")
}

/// A private mount namespace for this thread (the sensor loads from its main thread,
/// before any other starts), with propagation from it cut, and tracefs mounted there.
fn mount_private() -> Result<()> {
    // SAFETY: plain syscalls with valid NUL-terminated strings or nulls.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return Err(std::io::Error::last_os_error()).context("unshare(CLONE_NEWNS)");
        }
        // Slave, not private: the host's later mounts still reach us, ours never reach it.
        let root = cstr("/");
        if libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_SLAVE,
            std::ptr::null(),
        ) != 0
        {
            return Err(std::io::Error::last_os_error())
                .context("making the new mount namespace a slave of the host's");
        }
        let (src, dst, fstype) = (cstr("nodev"), cstr(TRACING), cstr("tracefs"));
        if libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            fstype.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        ) != 0
        {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("mount -t tracefs nodev {TRACING}"));
        }
    }
    Ok(())
}

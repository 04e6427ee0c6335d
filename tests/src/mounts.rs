//! Mount namespaces for one command: tracefs hidden, a container's root, the cgroup2
//! hierarchy (found or mounted privately).

use std::{
    fs::File,
    io::{BufRead, BufReader},
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::PathBuf,
    process::{Child, Command, Stdio},
};

use anyhow::{Context, Result, bail};

use crate::Scratch;

/// The mount point of the cgroup2 hierarchy, from /proc/self/mountinfo.
pub fn cgroup2_root() -> Result<PathBuf> {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").context("reading mountinfo")?;
    mi.lines()
        .find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            (post.split_whitespace().next()? == "cgroup2").then_some(())?;
            pre.split_whitespace().nth(4).map(PathBuf::from)
        })
        .context("no cgroup2 hierarchy mounted")
}

/// Makes `cmd` run in a new mount namespace (private propagation) where each path of
/// `unmount` is lazily unmounted first, if it is mounted. The pid stays the program's own.
pub fn without_mounts(cmd: &mut Command, unmount: &[&str]) -> Result<()> {
    let paths: Vec<std::ffi::CString> = unmount
        .iter()
        .map(|p| std::ffi::CString::new(*p).context("path with NUL"))
        .collect::<Result<_>>()?;
    // SAFETY: only async-signal-safe syscalls between fork and exec, on strings built
    // before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let root = c"/";
            if libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            for p in &paths {
                // Not mounted (EINVAL) is the state wanted anyway.
                libc::umount2(p.as_ptr(), libc::MNT_DETACH);
            }
            Ok(())
        });
    }
    Ok(())
}

/// The host's program directories (those that exist here) a contained process needs
/// bind-mounted to run the host's programs: the `binds` of [`contained`].
pub fn program_dirs() -> Vec<&'static str> {
    ["usr", "bin", "lib", "lib64"]
        .into_iter()
        .filter(|d| std::path::Path::new("/").join(d).exists())
        .collect()
}

/// Makes `cmd` run as in a container: in a private mount namespace, with each directory of
/// `binds` (`/usr`, `/proc`, ...) bind-mounted from the host into `root`, chrooted there.
/// The pid stays the program's own.
pub fn contained(cmd: &mut Command, root: &std::path::Path, binds: &[&str]) -> Result<()> {
    let root_c = std::ffi::CString::new(root.as_os_str().as_encoded_bytes())
        .context("root path with NUL")?;
    let mut pairs = Vec::new();
    for d in binds {
        std::fs::create_dir_all(root.join(d))
            .with_context(|| format!("creating /{d} in {}", root.display()))?;
        pairs.push((
            std::ffi::CString::new(format!("/{d}")).context("path with NUL")?,
            std::ffi::CString::new(format!("{}/{d}", root.display())).context("path with NUL")?,
        ));
    }
    // SAFETY: only async-signal-safe syscalls between fork and exec, on strings made before.
    unsafe {
        cmd.pre_exec(move || {
            if libc::unshare(libc::CLONE_NEWNS) != 0
                || libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            for (src, dst) in &pairs {
                if libc::mount(
                    src.as_ptr(),
                    dst.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REC,
                    std::ptr::null(),
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if libc::chroot(root_c.as_ptr()) != 0 || libc::chdir(c"/".as_ptr()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}

/// The filesystem types mounted in process `pid`'s mount namespace.
pub fn mounted_types(pid: u32) -> Result<Vec<String>> {
    let mi = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .with_context(|| format!("reading /proc/{pid}/mountinfo"))?;
    Ok(mi
        .lines()
        .filter_map(|l| l.split_once(" - "))
        .filter_map(|(_, post)| post.split_whitespace().next().map(str::to_string))
        .collect())
}

/// The cgroup2 hierarchy for a test: the host's mount (unified, or hybrid under
/// `/sys/fs/cgroup/unified`) or, where there is none (or when asked), one mounted in a
/// private mount namespace that a helper process holds, so the host's mounts stay as they
/// are. `root` reaches it from the test (through the holder's `/proc/PID/root`);
/// [`Cgroup2::enter`] puts a command (the sensor) where it is mounted.
pub struct Cgroup2 {
    pub root: PathBuf,
    holder: Option<Child>,
    ns: Option<File>,
    _dir: Option<Scratch>,
}

impl Cgroup2 {
    /// The host's cgroup2 mount, else a private one.
    pub fn find_or_mount() -> Result<Self> {
        let mi = std::fs::read_to_string("/proc/self/mountinfo")?;
        let host = mi.lines().find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            (post.split_whitespace().next()? == "cgroup2").then_some(())?;
            pre.split_whitespace().nth(4).map(PathBuf::from)
        });
        match host {
            Some(root) => Ok(Self {
                root,
                holder: None,
                ns: None,
                _dir: None,
            }),
            None => Self::mount_privately(),
        }
    }

    /// A cgroup2 mount of its own, in a private mount namespace.
    pub fn mount_privately() -> Result<Self> {
        let dir = Scratch::new("cgroup2")?;
        let mut holder = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg("mount -t cgroup2 cgroup2 \"$1\" && echo mounted && exec sleep 3600")
            .arg("sh")
            .arg(&dir.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting unshare (util-linux)")?;
        let mut line = String::new();
        BufReader::new(holder.stdout.take().context("holder stdout")?).read_line(&mut line)?;
        let pid = holder.id();
        let mut me = Self {
            root: PathBuf::from(format!("/proc/{pid}/root")).join(
                dir.dir
                    .strip_prefix("/")
                    .context("scratch directory is not absolute")?,
            ),
            ns: None,
            holder: Some(holder),
            _dir: Some(dir),
        };
        if line.trim() != "mounted" {
            bail!("mounting cgroup2 in a private mount namespace failed");
        }
        me.ns = Some(
            File::open(format!("/proc/{pid}/ns/mnt")).context("opening the holder's mount ns")?,
        );
        Ok(me)
    }

    /// `path` (under `root`) as a process in the hierarchy's mount namespace names it.
    pub fn inside(&self, path: &std::path::Path) -> PathBuf {
        match &self.holder {
            Some(h) => {
                let prefix = PathBuf::from(format!("/proc/{}/root", h.id()));
                path.strip_prefix(&prefix)
                    .map_or_else(|_| path.to_path_buf(), |p| PathBuf::from("/").join(p))
            }
            None => path.to_path_buf(),
        }
    }

    /// Makes `cmd` run in the mount namespace where this hierarchy is mounted (nothing
    /// to do for the host's own).
    pub fn enter(&self, cmd: &mut Command) -> Result<()> {
        let Some(ns) = &self.ns else { return Ok(()) };
        let fd = ns.try_clone()?;
        // SAFETY: setns is async-signal-safe; `fd` moves into the closure and stays open.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNS) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(())
    }
}

impl Drop for Cgroup2 {
    fn drop(&mut self) {
        if let Some(h) = &mut self.holder {
            let _ = h.kill();
            let _ = h.wait();
        }
    }
}

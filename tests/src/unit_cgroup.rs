//! A process in a systemd-named cgroup, as a unit's process is, without systemd, and
//! entries written to journald's native socket as a client writes them.

use std::{
    ffi::CString,
    os::unix::{ffi::OsStrExt, process::CommandExt},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

/// A cgroup named the way systemd names a service, in every hierarchy journald may read a
/// process's unit from (cgroup2, and the v1 `name=systemd` one of a hybrid layout): a
/// process in it has that `_SYSTEMD_UNIT` in its journal entries, as under systemd.
pub struct UnitCgroup {
    pub unit: String,
    /// (slice, unit) directories per hierarchy.
    dirs: Vec<(PathBuf, PathBuf)>,
}

impl UnitCgroup {
    /// `unit` (`NAME.service`) under a slice of this test process.
    pub fn new(unit: &str) -> Result<Self> {
        let pid = std::process::id();
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
        let mut dirs = Vec::new();
        for l in mountinfo.lines() {
            let Some((pre, post)) = l.split_once(" - ") else {
                continue;
            };
            let mut post = post.split_whitespace();
            let fstype = post.next().unwrap_or_default();
            let options = post.nth(1).unwrap_or_default();
            let wanted = fstype == "cgroup2"
                || (fstype == "cgroup" && options.split(',').any(|o| o == "name=systemd"));
            let Some(mount) = pre.split_whitespace().nth(4) else {
                continue;
            };
            if wanted {
                let slice = Path::new(mount).join(format!("t1571-test-{pid}.slice"));
                let dir = slice.join(unit);
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                dirs.push((slice, dir));
            }
        }
        if dirs.is_empty() {
            bail!("no cgroup2 or name=systemd hierarchy mounted");
        }
        Ok(Self {
            unit: unit.to_string(),
            dirs,
        })
    }

    /// Makes `cmd` join the cgroup before it execs.
    pub fn join(&self, cmd: &mut Command) -> Result<()> {
        let procs: Vec<CString> = self
            .dirs
            .iter()
            .map(|(_, d)| CString::new(d.join("cgroup.procs").as_os_str().as_bytes()))
            .collect::<Result<_, _>>()?;
        // SAFETY: only open, write and close between fork and exec, on paths made before.
        unsafe {
            cmd.pre_exec(move || {
                for p in &procs {
                    let fd = libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                    let err = std::io::Error::last_os_error();
                    libc::close(fd);
                    if n != 1 {
                        return Err(err);
                    }
                }
                Ok(())
            });
        }
        Ok(())
    }
}

impl Drop for UnitCgroup {
    fn drop(&mut self) {
        for (slice, dir) in &self.dirs {
            let _ = std::fs::remove_dir(dir);
            let _ = std::fs::remove_dir(slice);
        }
    }
}

/// The native protocol's datagram for `fields` (a value with a newline in the binary form).
pub fn native_datagram(fields: &[(String, String)]) -> Vec<u8> {
    let mut d = Vec::new();
    for (k, v) in fields {
        if v.contains('\n') {
            d.extend_from_slice(k.as_bytes());
            d.push(b'\n');
            d.extend_from_slice(&(v.len() as u64).to_le_bytes());
            d.extend_from_slice(v.as_bytes());
        } else {
            d.extend_from_slice(format!("{k}={v}").as_bytes());
        }
        d.push(b'\n');
    }
    d
}

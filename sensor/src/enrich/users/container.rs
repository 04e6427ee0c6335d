//! Users in containers: their names come from the container's own account database
//! (`/proc/PID/root/etc/passwd`, read inside that root with a bound), never the node's: a
//! container's uid 1000 is not the node's uid 1000. The file is the container's to size:
//! it is scanned for the uid asked about, line by line, and only that name is kept, per
//! (mount namespace, uid), the cache bounded in bytes. A name that cannot be read is left
//! out, and `user.id` stands alone.

use std::{collections::HashMap, path::Path};

use crate::enrich::{rootfs, users::MAX_PASSWD};

/// A longer passwd line names nobody (a user name is at most 32 bytes on Linux).
const MAX_LINE: usize = 1024;
/// A longer name is not kept (not a name `useradd` makes).
const MAX_NAME: usize = 256;
/// Bytes of names (and answers that there is none) kept; dropped whole past that.
const MAX_CACHE_BYTES: usize = 256 << 10;
/// A cached answer's fixed cost: key, value and hash-table slot.
const ANSWER_BYTES: usize = 64;

/// uid -> name answers, keyed by (mount namespace inode, uid); None: no such uid in that
/// passwd, or none readable.
#[derive(Default)]
pub struct ContainerUsers {
    names: HashMap<(u64, u32), Option<Box<str>>>,
    bytes: usize,
    /// passwd files that could not be read (gone, not a regular file, too large).
    pub unreadable: u64,
    /// passwd scans made (one per namespace and uid not cached), and cache flushes.
    pub scans: u64,
    pub flushed: u64,
}

/// The first entry of the passwd `file` for `uid` (as getpwuid takes the first), read
/// line by line with a bound on each line and on the whole.
fn scan_passwd(file: std::fs::File, uid: u32) -> Option<String> {
    use std::io::{BufRead, BufReader, Read};
    let mut r = BufReader::with_capacity(8 << 10, file.take(MAX_PASSWD));
    let mut line = Vec::with_capacity(256);
    loop {
        line.clear();
        let n = (&mut r)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut line)
            .ok()?;
        if n == 0 {
            return None;
        }
        if n == MAX_LINE && !line.ends_with(b"\n") {
            // An overlong line names nobody: skip to its end.
            loop {
                let buf = r.fill_buf().ok()?;
                if buf.is_empty() {
                    return None;
                }
                match buf.iter().position(|&b| b == b'\n') {
                    Some(i) => {
                        r.consume(i + 1);
                        break;
                    }
                    None => {
                        let all = buf.len();
                        r.consume(all);
                    }
                }
            }
            continue;
        }
        let line = line.strip_suffix(b"\n").unwrap_or(&line);
        let mut f = line.split(|&b| b == b':');
        if let (Some(name), Some(_), Some(u)) = (f.next(), f.next(), f.next())
            && std::str::from_utf8(u).ok().and_then(|u| u.parse().ok()) == Some(uid)
        {
            return Some(String::from_utf8_lossy(name).into_owned());
        }
    }
}

impl ContainerUsers {
    /// The name of `uid` as the container of `pid` (in mount namespace `ns`) knows it.
    pub fn name(&mut self, proc_root: &Path, pid: u32, ns: u64, uid: u32) -> Option<&str> {
        if !self.names.contains_key(&(ns, uid)) {
            let root = proc_root.join(pid.to_string()).join("root");
            // Type and size checked on an O_PATH fd before it is opened for reading.
            let opened = rootfs::open_path_in(&root, "etc/passwd")
                .and_then(|fd| rootfs::reopen_regular(&fd, MAX_PASSWD));
            self.scans += 1;
            let name = match opened {
                Ok((file, _)) => scan_passwd(file, uid).filter(|n| n.len() <= MAX_NAME),
                Err(_) => {
                    self.unreadable += 1;
                    None
                }
            };
            let bytes = ANSWER_BYTES + name.as_ref().map_or(0, String::len);
            if self.bytes + bytes > MAX_CACHE_BYTES {
                self.names.clear();
                self.bytes = 0;
                self.flushed += 1;
            }
            self.bytes += bytes;
            self.names
                .insert((ns, uid), name.map(String::into_boxed_str));
        }
        self.names.get(&(ns, uid))?.as_deref()
    }

    /// For `sensor-stats`.
    pub fn report(&self) -> ContainerUsersReport {
        ContainerUsersReport {
            names: self.names.len(),
            bytes: self.bytes,
            scans: self.scans,
            flushed: self.flushed,
            unreadable: self.unreadable,
        }
    }
}

/// The container user-name cache, as `sensor.container_users` reports it.
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
pub struct ContainerUsersReport {
    pub names: usize,
    pub bytes: usize,
    pub scans: u64,
    pub flushed: u64,
    pub unreadable: u64,
}

#[cfg(test)]
mod tests {
    use crate::enrich::users::mount_ns;

    use super::*;

    #[test]
    fn this_process_reads_its_own_root() {
        let proc_root = Path::new("/proc");
        let pid = std::process::id();
        let ns = mount_ns(proc_root, pid).unwrap();
        let mut u = ContainerUsers::default();
        assert_eq!(u.name(proc_root, pid, ns, 0), Some("root"));
        assert_eq!(u.name(proc_root, pid, ns, 4_000_000_000), None);
        // A process that is gone: no name, counted, not retried for that namespace.
        assert_eq!(u.name(proc_root, u32::MAX, 1, 0), None);
        assert_eq!(u.name(proc_root, u32::MAX, 1, 0), None);
        assert_eq!(u.unreadable, 1);
        assert_eq!(u.scans, 3);
    }

    /// A 1 MiB passwd: the uid asked about is found by a scan, overlong lines name
    /// nobody, and only answers are kept, bounded in bytes.
    #[test]
    fn a_huge_container_passwd_is_scanned_not_kept() {
        let dir = std::env::temp_dir().join(format!("t1571-bigpasswd-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let root = dir.join("proc/77/root/etc");
        std::fs::create_dir_all(&root).unwrap();
        let mut text = format!("evil{}:x:5:5::/:\n", "e".repeat(5000));
        for uid in 100_000..135_000 {
            text.push_str(&format!("u{uid}:x:{uid}:{uid}::/:\n"));
        }
        text.push_str("appuser:x:4321:4321::/:/bin/sh\n");
        assert!(text.len() < MAX_PASSWD as usize);
        std::fs::write(root.join("passwd"), &text).unwrap();
        let proc_root = dir.join("proc");
        let mut u = ContainerUsers::default();
        assert_eq!(u.name(&proc_root, 77, 9, 4321), Some("appuser"));
        assert_eq!(u.name(&proc_root, 77, 9, 100_007), Some("u100007"));
        assert_eq!(u.name(&proc_root, 77, 9, 5), None, "an overlong line");
        for ns in 0..10_000 {
            u.name(&proc_root, 77, ns, 100_001);
            assert!(u.bytes <= MAX_CACHE_BYTES);
        }
        assert!(u.flushed > 0);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

//! uid -> user name from the host's account database, cached. Re-read when a uid is not
//! found and the file changed, so users added after start-up resolve.
//! Hand-written rather than through libc's getpwuid: the file is the host's (under
//! `--host-root`), not this process's NSS view, and a split on ':' is all it takes.

use std::{collections::HashMap, path::PathBuf, time::SystemTime};

use crate::enrich::{rootfs, users::MAX_PASSWD};

pub struct Users {
    path: PathBuf,
    names: HashMap<u32, String>,
    mtime: Option<SystemTime>,
    /// Reads of the file that failed (names then stay unknown); reported in metrics.
    pub read_errors: u64,
}

impl Users {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        let mut u = Self {
            path: path.into(),
            names: HashMap::new(),
            mtime: None,
            read_errors: 0,
        };
        u.reload();
        u
    }

    fn reload(&mut self) {
        let mtime = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        if mtime.is_some() && mtime == self.mtime {
            return;
        }
        self.mtime = mtime;
        // Type and size checked before it is opened for reading (never a device node).
        match rootfs::read_path(&self.path, MAX_PASSWD) {
            Ok(b) => self.names = parse_passwd(&String::from_utf8_lossy(&b)),
            Err(e) => {
                // Said once per failing streak, counted every time.
                if self.read_errors == 0 || !self.names.is_empty() {
                    log::warn!(
                        "cannot read {}: {e}; user names stay unknown until it can be read",
                        self.path.display()
                    );
                }
                self.read_errors += 1;
                self.names.clear();
            }
        }
    }

    pub fn name(&mut self, uid: u32) -> Option<&str> {
        if !self.names.contains_key(&uid) {
            self.reload();
        }
        self.names.get(&uid).map(String::as_str)
    }

    /// The name as last read, without looking at the file again.
    pub fn cached(&self, uid: u32) -> Option<&str> {
        self.names.get(&uid).map(String::as_str)
    }
}

/// `name:x:uid:gid:gecos:home:shell` lines; malformed lines are skipped.
pub fn parse_passwd(text: &str) -> HashMap<u32, String> {
    let mut out = HashMap::new();
    for line in text.lines() {
        let mut f = line.split(':');
        let (Some(name), Some(_), Some(uid)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if let Ok(uid) = uid.parse() {
            // First entry wins, as getpwuid does.
            out.entry(uid).or_insert_with(|| name.to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_skips_garbage() {
        let m = parse_passwd(
            "root:x:0:0:root:/root:/bin/bash\nbad line\nalice:x:1000:1000::/home/a:/bin/sh\ndup:x:0:0::/:/bin/sh\n",
        );
        assert_eq!(m.get(&0).map(String::as_str), Some("root"));
        assert_eq!(m.get(&1000).map(String::as_str), Some("alice"));
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn host_root_resolves() {
        let mut u = Users::new("/etc/passwd");
        assert_eq!(u.name(0), Some("root"));
        assert_eq!(u.name(4_000_000_000), None);
    }

    #[test]
    fn an_unreadable_file_is_counted_not_an_empty_database() {
        let mut u = Users::new("/nonexistent/etc/passwd");
        assert_eq!(u.read_errors, 1);
        assert_eq!(u.name(0), None);
        assert_eq!(u.read_errors, 2, "every failed read is counted");
    }
}

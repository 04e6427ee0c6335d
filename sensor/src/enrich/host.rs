//! The host the sensor watches, for ECS `host.*`: machine-id and os-release read through the
//! host's root (`--host-root`), hostname and kernel release from /proc/sys/kernel.

use std::{fs::File, io::Read, path::Path};

use crate::enrich::rootfs;

/// Longest file read here: machine-id is 33 bytes, os-release a few hundred.
const MAX_READ: u64 = 64 * 1024;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostInfo {
    pub hostname: String,
    /// /etc/machine-id: 32 hex digits, None when missing or malformed.
    pub id: Option<String>,
    pub os: OsInfo,
}

/// os-release(5) and the running kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OsInfo {
    /// `NAME`.
    pub name: Option<String>,
    /// `VERSION_ID`.
    pub version: Option<String>,
    /// `ID` (debian, ubuntu, rhel, ...).
    pub platform: Option<String>,
    /// The first `ID_LIKE` word, else `ID`: the family ECS asks for (debian, rhel, ...).
    pub family: Option<String>,
    /// `PRETTY_NAME`.
    pub full: Option<String>,
    /// The running kernel's release (/proc/sys/kernel/osrelease).
    pub kernel: Option<String>,
}

impl HostInfo {
    /// Reads what it can; anything unreadable stays None (and is left out of the output).
    pub fn read(host_root: &Path, hostname: String) -> Self {
        let id = read_small(&host_root.join("etc/machine-id"))
            .map(|s| s.trim().to_ascii_lowercase())
            .filter(|s| s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit()));
        // os-release(5): /etc/os-release, else /usr/lib/os-release.
        let os_release = ["etc/os-release", "usr/lib/os-release"]
            .iter()
            .find_map(|p| read_small(&host_root.join(p)))
            .unwrap_or_default();
        let mut os = parse_os_release(&os_release);
        os.kernel = read_small(Path::new("/proc/sys/kernel/osrelease"))
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty());
        Self { hostname, id, os }
    }
}

/// A small regular file's text: never a link (the host root's files are not the sensor's to
/// trust), never a FIFO (non-blocking open), at most MAX_READ bytes.
fn read_small(path: &Path) -> Option<String> {
    // O_PATH first: the type is checked before anything is opened for reading.
    let fd = rootfs::open_path_with(path, libc::O_NOFOLLOW).ok()?;
    let (f, _) = rootfs::reopen_regular(&fd, MAX_READ).ok()?;
    let mut buf = Vec::new();
    Read::take(&f as &File, MAX_READ)
        .read_to_end(&mut buf)
        .ok()?;
    Some(String::from_utf8_lossy(&buf).into_owned())
}

/// `KEY=value` lines, values optionally quoted (os-release(5)); only the keys ECS needs.
pub fn parse_os_release(text: &str) -> OsInfo {
    let mut os = OsInfo::default();
    let mut id_like = None;
    for line in text.lines() {
        let Some((k, v)) = line.trim().split_once('=') else {
            continue;
        };
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(v)
            .replace("\\\"", "\"");
        if v.is_empty() {
            continue;
        }
        match k {
            "NAME" => os.name = Some(v),
            "VERSION_ID" => os.version = Some(v),
            "ID" => os.platform = Some(v),
            "ID_LIKE" => id_like = v.split_whitespace().next().map(str::to_string),
            "PRETTY_NAME" => os.full = Some(v),
            _ => {}
        }
    }
    os.family = id_like.or_else(|| os.platform.clone());
    os
}

/// The kernel's hostname, "unknown" when unreadable or empty.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_os_release() {
        let os = parse_os_release(
            "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nID=debian\n# comment\nbogus\n",
        );
        assert_eq!(os.name.as_deref(), Some("Debian GNU/Linux"));
        assert_eq!(os.version.as_deref(), Some("12"));
        assert_eq!(os.platform.as_deref(), Some("debian"));
        assert_eq!(os.family.as_deref(), Some("debian"));
        assert_eq!(os.full.as_deref(), Some("Debian GNU/Linux 12 (bookworm)"));
        let ubuntu = parse_os_release("ID=ubuntu\nID_LIKE=debian\n");
        assert_eq!(ubuntu.family.as_deref(), Some("debian"));
        let rocky = parse_os_release("ID=\"rocky\"\nID_LIKE=\"rhel centos fedora\"\n");
        assert_eq!(rocky.family.as_deref(), Some("rhel"));
    }

    #[test]
    fn reads_this_host_and_refuses_links_and_junk() {
        let dir = std::env::temp_dir().join(format!("host-info-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("etc")).unwrap();
        std::fs::write(
            dir.join("etc/machine-id"),
            "0123456789ABCDEF0123456789abcdef\n",
        )
        .unwrap();
        std::fs::write(dir.join("etc/os-release"), "ID=debian\n").unwrap();
        let h = HostInfo::read(&dir, "h".into());
        assert_eq!(h.id.as_deref(), Some("0123456789abcdef0123456789abcdef"));
        assert_eq!(h.os.platform.as_deref(), Some("debian"));
        assert!(h.os.kernel.is_some());
        std::fs::remove_file(dir.join("etc/machine-id")).unwrap();
        std::os::unix::fs::symlink("/etc/machine-id", dir.join("etc/machine-id")).unwrap();
        assert_eq!(
            HostInfo::read(&dir, "h".into()).id,
            None,
            "a link is not followed"
        );
        std::fs::remove_file(dir.join("etc/machine-id")).unwrap();
        std::fs::write(dir.join("etc/machine-id"), "not-an-id\n").unwrap();
        assert_eq!(HostInfo::read(&dir, "h".into()).id, None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

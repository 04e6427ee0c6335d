//! Container attribution from a process's cgroup path. Runtimes name the leaf cgroup
//! after the 64-hex-digit container id: `docker-<id>.scope`, `cri-containerd-<id>.scope`,
//! `crio-<id>.scope`, `libpod-<id>.scope`, or a bare `<id>` under kubepods or docker.

/// The container id in a /proc/PID/cgroup file, if any line's path carries one.
pub fn id_from_cgroup_file(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| l.splitn(3, ':').nth(2))
        .find_map(id_from_cgroup_path)
}

/// The last path segment holding a 64-hex-digit id, with runtime prefixes and `.scope` removed.
pub fn id_from_cgroup_path(path: &str) -> Option<String> {
    path.rsplit('/').find_map(|seg| {
        let seg = seg.strip_suffix(".scope").unwrap_or(seg);
        let id = seg.rsplit(['-', ':']).next().unwrap_or(seg);
        (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| id.to_ascii_lowercase())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f3c0b1e6a2d9c8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b";

    #[test]
    fn runtimes() {
        for path in [
            format!("/system.slice/docker-{ID}.scope"),
            format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234.slice/cri-containerd-{ID}.scope"
            ),
            format!("/kubepods/besteffort/pod0a1b/{ID}"),
            format!("/machine.slice/libpod-{ID}.scope/container"),
            format!("/kubepods.slice/crio-{ID}.scope"),
            format!("/docker/{ID}"),
        ] {
            assert_eq!(id_from_cgroup_path(&path).as_deref(), Some(ID), "{path}");
        }
    }

    #[test]
    fn host_processes_have_none() {
        for path in [
            "/",
            "/user.slice/user-0.slice/session-3.scope",
            "/system.slice/ssh.service",
            "",
            "/abc-123",
        ] {
            assert_eq!(id_from_cgroup_path(path), None, "{path}");
        }
    }

    #[test]
    fn file_format() {
        let file = format!("12:cpu,cpuacct:/docker/{ID}\n0::/system.slice/docker-{ID}.scope\n");
        assert_eq!(id_from_cgroup_file(&file).as_deref(), Some(ID));
        assert_eq!(id_from_cgroup_file("0::/init.scope\n"), None);
        assert_eq!(id_from_cgroup_file("garbage"), None);
    }
}

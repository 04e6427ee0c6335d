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
    path.rsplit('/').find_map(segment_id)
}

/// The container id a single cgroup path segment carries, if any.
fn segment_id(seg: &str) -> Option<String> {
    let seg = seg.strip_suffix(".scope").unwrap_or(seg);
    let id = seg.rsplit(['-', ':']).next().unwrap_or(seg);
    is_id(id).then(|| id.to_ascii_lowercase())
}

fn is_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The index of the segment [`id_from_cgroup_path`] takes the id from, and the id.
pub fn id_segment(segs: &[&str]) -> Option<(usize, String)> {
    segs.iter()
        .enumerate()
        .rev()
        .find_map(|(i, s)| segment_id(s).map(|id| (i, id)))
}

/// Whether the id segment `segs[i]` is named as a runtime names a container's cgroup:
/// `docker-`, `cri-containerd-`, `crio-` or `libpod-<id>.scope` (systemd driver), or a
/// bare `<id>` under `/docker` or a kubepods pod (`/kubepods/<qos>/pod<uid>/<id>`,
/// cgroupfs driver). Anything else (`crio-conmon-<id>.scope`, `x-<id>`, an id in a
/// user's session) is no container a runtime made.
pub fn runtime_layout(segs: &[&str], i: usize) -> bool {
    let Some(seg) = segs.get(i) else { return false };
    let scoped = ["docker-", "cri-containerd-", "crio-", "libpod-"]
        .iter()
        .any(|p| {
            seg.strip_prefix(p)
                .and_then(|r| r.strip_suffix(".scope"))
                .is_some_and(is_id)
        });
    let bare = is_id(seg)
        && match i.checked_sub(1).and_then(|p| segs.get(p)) {
            Some(&"docker") => i == 1,
            Some(parent) => {
                parent.starts_with("pod")
                    && crate::enrich::kubelet::pod_uid_from_cgroup(parent).is_some()
                    && segs[..i].iter().any(|s| s.starts_with("kubepods"))
            }
            None => false,
        };
    scoped || bare
}

/// Whether a container id can be believed: the runtime made its cgroup, or anyone could
/// have (see [`crate::enrich::cgroups::CgroupMap::trust`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    Trusted,
    /// Why not, as printed in `sensor.container.reason`.
    Untrusted(&'static str),
}

impl Trust {
    pub fn is_trusted(self) -> bool {
        self == Trust::Trusted
    }

    pub fn reason(self) -> Option<&'static str> {
        match self {
            Trust::Trusted => None,
            Trust::Untrusted(r) => Some(r),
        }
    }
}

/// Reasons a container id is not trusted.
pub mod untrusted {
    /// No cgroup2 hierarchy is mounted for the sensor: nothing to check the id against.
    pub const NO_CGROUP2: &str = "no-cgroup2-hierarchy";
    /// The kernel's cgroup of the connect is not (or no longer) in the hierarchy.
    pub const CGROUP_UNKNOWN: &str = "cgroup-not-found";
    /// The id does not come from the connecting task's own cgroup2 path (a cgroup v1
    /// line, or inherited from the parent).
    pub const NOT_KERNEL_CGROUP: &str = "id-not-from-the-process-cgroup";
    /// The cgroup carrying the id is not named as a container runtime names one.
    pub const LAYOUT: &str = "not-a-runtime-cgroup-layout";
    /// A directory above it is owned by, or writable for, a user other than root: a
    /// delegated subtree, where that user may name cgroups as they please.
    pub const DELEGATED: &str = "delegated-cgroup";
    /// A replayed line that did not record the id as trusted.
    pub const NOT_RECORDED: &str = "not-recorded-as-trusted";
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

    #[rstest::rstest]
    #[case::docker_systemd(&format!("/system.slice/docker-{ID}.scope"), true)]
    #[case::containerd_systemd(&format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0a1b2c3d_4e5f_6071_8293_a4b5c6d7e8f9.slice/cri-containerd-{ID}.scope"), true)]
    #[case::crio(&format!("/kubepods.slice/crio-{ID}.scope"), true)]
    #[case::libpod_inner(&format!("/machine.slice/libpod-{ID}.scope/container"), true)]
    #[case::cgroupfs_pod(&format!("/kubepods/besteffort/pod0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9/{ID}"), true)]
    #[case::docker_cgroupfs(&format!("/docker/{ID}"), true)]
    #[case::bare_in_a_session(&format!("/user.slice/user-1000.slice/{ID}"), false)]
    #[case::bare_under_nested_docker(&format!("/x/docker/{ID}"), false)]
    #[case::bare_pod_without_kubepods(&format!("/x/pod0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9/{ID}"), false)]
    #[case::conmon(&format!("/kubepods.slice/crio-conmon-{ID}.scope"), false)]
    #[case::other_prefix(&format!("/system.slice/evil-{ID}.scope"), false)]
    #[case::colon(&format!("/system.slice/x:cri-containerd:{ID}"), false)]
    fn runtime_layouts(#[case] path: &str, #[case] runtime: bool) {
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let (i, id) = id_segment(&segs).unwrap();
        assert_eq!(id, ID);
        assert_eq!(Some(id), id_from_cgroup_path(path));
        assert_eq!(runtime_layout(&segs, i), runtime, "{path}");
    }

    #[test]
    fn the_id_segment_is_the_deepest() {
        let other = "a".repeat(64);
        let segs = ["system.slice", &*format!("docker-{ID}.scope"), &*other];
        assert_eq!(id_segment(&segs), Some((2, other.clone())));
        assert_eq!(id_segment(&["a", "b"]), None);
    }

    #[test]
    fn file_format() {
        let file = format!("12:cpu,cpuacct:/docker/{ID}\n0::/system.slice/docker-{ID}.scope\n");
        assert_eq!(id_from_cgroup_file(&file).as_deref(), Some(ID));
        assert_eq!(id_from_cgroup_file("0::/init.scope\n"), None);
        assert_eq!(id_from_cgroup_file("garbage"), None);
    }
}

//! Pod attribution on the node, with no API server: the kubelet names every container's
//! log link after its pod. `/var/log/containers/<pod>_<namespace>_<container>-<id>.log`
//! links to `/var/log/pods/<namespace>_<pod>_<pod uid>/<container>/N.log`. Read through the
//! node's root (`/proc/1/root` under hostPID), the names map a container id to its pod,
//! namespace, pod UID and container name. The links are read, never followed.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use crate::enrich::rootfs;

/// Where the kubelet keeps the links, inside the node's root.
const CONTAINERS_DIR: &str = "var/log/containers";
/// Links read per scan at most: a node with more containers than this is cut, not stalled.
const MAX_LINKS: usize = 20_000;
/// A miss rescans at most this often (a new pod's link appears shortly after it starts).
const RESCAN_EVERY: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    /// From the link's target (`/var/log/pods/<ns>_<pod>_<uid>/...`), when it has one.
    pub uid: Option<String>,
    pub container: String,
}

/// `<pod>_<namespace>_<container>-<64 hex id>.log` -> (id, pod). Pod and namespace names
/// are DNS labels or subdomains: they never contain `_`, so the split is unambiguous.
pub fn parse_link(name: &str, target: Option<&Path>) -> Option<(String, Pod)> {
    let stem = name.strip_suffix(".log")?;
    let (front, id) = stem.rsplit_once('-')?;
    if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut parts = front.splitn(3, '_');
    let (pod, ns, container) = (parts.next()?, parts.next()?, parts.next()?);
    if pod.is_empty() || ns.is_empty() || container.is_empty() || container.contains('_') {
        return None;
    }
    let uid = target.and_then(|t| {
        // .../pods/<ns>_<pod>_<uid>/<container>/N.log
        t.components().find_map(|c| {
            let s = c.as_os_str().to_str()?;
            let rest = s.strip_prefix(ns)?.strip_prefix('_')?.strip_prefix(pod)?;
            let uid = rest.strip_prefix('_')?;
            is_uid(uid).then(|| uid.to_string())
        })
    });
    Some((
        id.to_ascii_lowercase(),
        Pod {
            namespace: ns.into(),
            name: pod.into(),
            uid,
            container: container.into(),
        },
    ))
}

fn is_uid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| {
            matches!(i, 8 | 13 | 18 | 23) == (b == b'-') && (b == b'-' || b.is_ascii_hexdigit())
        })
}

/// The pod UID in a kubepods cgroup path: `kubepods-burstable-pod<uid>.slice` (systemd
/// driver, `_` for `-`) or `/kubepods/<qos>/pod<uid>/` (cgroupfs driver).
pub fn pod_uid_from_cgroup(path: &str) -> Option<String> {
    path.split('/').find_map(|seg| {
        let seg = seg.strip_suffix(".slice").unwrap_or(seg);
        let at = seg.rfind("pod")?;
        let uid = seg[at + 3..].replace('_', "-");
        is_uid(&uid).then_some(uid)
    })
}

/// The container runtime named by a cgroup path's leaf, where it names one.
pub fn runtime_from_cgroup(path: &str) -> Option<&'static str> {
    let leaf = path.rsplit('/').find(|s| !s.is_empty())?;
    [
        ("cri-containerd-", "containerd"),
        ("crio-", "cri-o"),
        ("docker-", "docker"),
        ("libpod-", "podman"),
    ]
    .into_iter()
    .find_map(|(prefix, runtime)| leaf.starts_with(prefix).then_some(runtime))
}

/// Container id -> pod, from the node's kubelet links; rescanned on a miss, at most
/// every [`RESCAN_EVERY`].
pub struct Pods {
    node_root: PathBuf,
    by_id: HashMap<String, Pod>,
    last_scan: Option<Instant>,
    /// Why the last scan failed (no kubelet on this host is the usual reason).
    pub last_error: Option<String>,
}

impl Pods {
    pub fn new(node_root: impl Into<PathBuf>) -> Self {
        Self {
            node_root: node_root.into(),
            by_id: HashMap::new(),
            last_scan: None,
            last_error: None,
        }
    }

    pub fn lookup(&mut self, container_id: &str) -> Option<&Pod> {
        if !self.by_id.contains_key(container_id)
            && self.last_scan.is_none_or(|t| t.elapsed() >= RESCAN_EVERY)
        {
            self.rescan();
        }
        self.by_id.get(container_id)
    }

    fn rescan(&mut self) {
        self.last_scan = Some(Instant::now());
        match rootfs::list_dir(&self.node_root, CONTAINERS_DIR, MAX_LINKS) {
            Ok(entries) => {
                self.last_error = None;
                self.by_id = entries
                    .iter()
                    .filter_map(|e| parse_link(&e.name, e.link.as_deref()))
                    .collect();
            }
            Err(e) => self.last_error = Some(format!("{e:#}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f3c0b1e6a2d9c8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b";
    const UID: &str = "0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9";

    #[test]
    fn kubelet_link_names() {
        let name = format!("web-7d9f8c6b5-x2x4z_shop_nginx-proxy-{ID}.log");
        let target = format!("/var/log/pods/shop_web-7d9f8c6b5-x2x4z_{UID}/nginx-proxy/0.log");
        let (id, pod) = parse_link(&name, Some(Path::new(&target))).unwrap();
        assert_eq!(id, ID);
        assert_eq!(
            pod,
            Pod {
                namespace: "shop".into(),
                name: "web-7d9f8c6b5-x2x4z".into(),
                uid: Some(UID.into()),
                container: "nginx-proxy".into(),
            }
        );
        // No target, or one of another pod: no UID, the rest still holds.
        assert_eq!(parse_link(&name, None).unwrap().1.uid, None);
        let other = format!("/var/log/pods/shop_other_{UID}/c/0.log");
        assert_eq!(
            parse_link(&name, Some(Path::new(&other))).unwrap().1.uid,
            None
        );
        for bad in [
            "random.log".to_string(),
            format!("pod_ns-{ID}.log"),
            format!("pod_ns_c-{}.log", &ID[1..]),
            format!("pod_ns_c-{ID}.txt"),
            format!("_ns_c-{ID}.log"),
        ] {
            assert_eq!(parse_link(&bad, None), None, "{bad}");
        }
    }

    #[test]
    fn cgroup_paths_of_both_drivers() {
        let systemd = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{ID}.scope",
            UID.replace('-', "_")
        );
        assert_eq!(pod_uid_from_cgroup(&systemd).as_deref(), Some(UID));
        assert_eq!(runtime_from_cgroup(&systemd), Some("containerd"));
        let cgroupfs = format!("/kubepods/besteffort/pod{UID}/{ID}");
        assert_eq!(pod_uid_from_cgroup(&cgroupfs).as_deref(), Some(UID));
        assert_eq!(runtime_from_cgroup(&cgroupfs), None);
        let crio = format!(
            "/kubepods.slice/kubepods-pod{}.slice/crio-{ID}.scope",
            UID.replace('-', "_")
        );
        assert_eq!(runtime_from_cgroup(&crio), Some("cri-o"));
        assert_eq!(pod_uid_from_cgroup(&crio).as_deref(), Some(UID));
        assert_eq!(pod_uid_from_cgroup("/system.slice/docker-x.scope"), None);
        assert_eq!(
            runtime_from_cgroup(&format!("/system.slice/docker-{ID}.scope")),
            Some("docker")
        );
    }

    #[test]
    fn a_node_tree_maps_ids_to_pods() {
        let root = std::env::temp_dir().join(format!("t1571-kubelet-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let dir = root.join(CONTAINERS_DIR);
        std::fs::create_dir_all(&dir).unwrap();
        let target = format!("/var/log/pods/kube-system_coredns-abc_{UID}/coredns/0.log");
        std::os::unix::fs::symlink(
            &target,
            dir.join(format!("coredns-abc_kube-system_coredns-{ID}.log")),
        )
        .unwrap();
        let mut pods = Pods::new(&root);
        let p = pods.lookup(ID).cloned();
        let missing = pods.lookup(&"0".repeat(64)).is_none();
        let _ = std::fs::remove_dir_all(&root);
        let p = p.unwrap();
        assert_eq!(
            (p.namespace.as_str(), p.name.as_str()),
            ("kube-system", "coredns-abc")
        );
        assert_eq!(p.uid.as_deref(), Some(UID));
        assert!(missing);
        // No kubelet on the host: no pods, and the reason is kept.
        let mut none = Pods::new("/nonexistent-root");
        assert!(none.lookup(ID).is_none());
        assert!(none.last_error.is_some());
    }
}

//! The enrich step for one connection: its process (the table, then /proc) described by
//! the image the kernel saw making it, its container, pod and runtime, and its user. The
//! pipeline and the bench both run it.

use crate::{
    enrich::{
        Enriched, Provenance,
        kubelet::{self, Pods},
        procfs::ProcessInfo,
        proctable::ProcTable,
        users::UserNames,
    },
    kernel::records::Connection,
};

/// Everything enrichment finds about `conn`, with `host_name` and `unix_ns` (its time on
/// the wall clock) as given.
pub fn attribute(
    table: &mut ProcTable,
    pods: &mut Pods,
    users: &mut UserNames,
    conn: &Connection,
    host_name: String,
    unix_ns: i128,
) -> Enriched {
    let (mut proc, mut source) = match table.resolve(conn.tgid, conn.start_time_ns, conn.ppid) {
        Some((info, src)) => (info, Some(src.as_str())),
        // Nobody knows the process: keep what the kernel gave.
        None => (
            ProcessInfo {
                ppid: (conn.ppid != 0).then_some(conn.ppid),
                ..Default::default()
            },
            None,
        ),
    };
    // The image the kernel saw making the connect, not whatever the process runs now.
    let image = table.connect_image(conn.tgid, conn.start_time_ns, conn.image, &mut proc);
    source = image.attribution().or(source);
    // The kernel's cgroup id names the container when nothing else did.
    if proc.container_id.is_none() {
        proc.container_id = table.cgroups.container_id(conn.cgroup_id);
    }
    // A container's pod (the kubelet's links on the node) and runtime (its cgroup).
    if let Some(id) = &proc.container_id {
        proc.pod = pods.lookup(id).cloned();
        let cgroup = table.cgroups.path(conn.cgroup_id);
        proc.container_runtime = cgroup.and_then(kubelet::runtime_from_cgroup);
        if let Some(pod) = &mut proc.pod
            && pod.uid.is_none()
        {
            pod.uid = cgroup.and_then(kubelet::pod_uid_from_cgroup);
        }
    }
    // Whether the id is the runtime's, judged on the kernel's cgroup of this connect.
    let container = proc
        .container_id
        .as_deref()
        .map(|id| table.cgroups.trust(conn.cgroup_id, id, conn.tgid));
    let user = users.name(
        conn.tgid,
        conn.start_time_ns,
        conn.uid,
        proc.container_id.is_some(),
    );
    let provenance = Provenance {
        user_name: user.as_ref().map(|u| u.source),
        container,
    };
    Enriched {
        conn: conn.clone(),
        proc,
        user_name: user.map(|u| u.name),
        provenance,
        host_name,
        attribution: source,
        unix_ns,
        protocol: None,
    }
}

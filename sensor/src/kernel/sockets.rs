//! The hooks beyond outbound TCP connects. The `inet_sock_set_state` program is attached
//! on every kernel, even where fentry or kprobe serves connects, because only it sees
//! CLOSE -> LISTEN and SYN_RECV -> ESTABLISHED; the `STATE_CONNECTS` map tells it whether
//! to emit connects too. UDP comes from the cgroup sock_addr hooks on the cgroup2 root,
//! attached multi (bpf links, BPF_F_ALLOW_MULTI before 5.7) so programs others attached
//! (systemd, Cilium) keep running; they always allow.

use std::{
    fs::File,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use aya::{
    Btf, Ebpf,
    programs::{BtfTracePoint, CgroupAttachMode, CgroupSockAddr, TracePoint},
};
use sensor_common::KernelLayout;

use crate::kernel::{
    attach::{LifecycleAttach, Probe, prepare_classic},
    layout::{self, TRACEPOINT_CATEGORY, TRACEPOINT_NAME},
};

/// Attaches the state hook for listens and inbound opens, unless the connect hook chosen
/// already is that program.
pub fn attach_state(
    ebpf: &mut Ebpf,
    chosen: Probe,
    layout: &KernelLayout,
    btf: Option<&Btf>,
) -> LifecycleAttach {
    let mut out = LifecycleAttach {
        event: "listen",
        attached: None,
        passed_over: Vec::new(),
    };
    if matches!(chosen, Probe::TpBtf | Probe::Tracepoint) {
        out.attached = Some(chosen.hook());
        return out;
    }
    let btf_try = (|| -> Result<()> {
        if !layout::has_sock_layout(layout) || layout.sk_protocol == sensor_common::OFFSET_UNKNOWN {
            bail!("struct sock layout unknown (needs kernel BTF)");
        }
        let btf = btf.context("no kernel BTF")?;
        let p: &mut BtfTracePoint = program(ebpf, "inet_sock_set_state_btf")?.try_into()?;
        p.load(TRACEPOINT_NAME, btf).context("load")?;
        p.attach().context("attach")?;
        Ok(())
    })();
    match btf_try {
        Ok(()) => {
            out.attached = Some(Probe::TpBtf.hook());
            return out;
        }
        Err(e) => out
            .passed_over
            .push((Probe::TpBtf.hook(), format!("{e:#}"))),
    }
    let classic = (|| -> Result<()> {
        prepare_classic(ebpf)?;
        let p: &mut TracePoint = program(ebpf, "inet_sock_set_state")?.try_into()?;
        p.load().context("load")?;
        p.attach(TRACEPOINT_CATEGORY, TRACEPOINT_NAME)
            .context("attach")?;
        Ok(())
    })();
    match classic {
        Ok(()) => out.attached = Some(Probe::Tracepoint.hook()),
        Err(e) => out
            .passed_over
            .push((Probe::Tracepoint.hook(), format!("{e:#}"))),
    }
    out
}

/// The UDP programs and the attach type each takes.
const UDP_PROGRAMS: [&str; 4] = [
    "udp_connect4",
    "udp_connect6",
    "udp_sendmsg4",
    "udp_sendmsg6",
];

/// The cgroup2 root the sensor's cgroup programs attach to, and an open descriptor of it.
pub fn open_cgroup2_root() -> Result<(PathBuf, File)> {
    let root = cgroup2_root().context("finding the cgroup2 root")?;
    let dir = File::open(&root).with_context(|| format!("opening {}", root.display()))?;
    Ok((root, dir))
}

/// How a cgroup program attaches: a cgroup bpf link (aya uses one from 5.7) always
/// attaches as BPF_F_ALLOW_MULTI and the kernel refuses any flag on it (EINVAL); the older
/// prog_attach path needs the flag said.
pub fn cgroup_attach_mode() -> CgroupAttachMode {
    use aya::util::KernelVersion;
    if KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(5, 7, 0)) {
        CgroupAttachMode::Single
    } else {
        CgroupAttachMode::AllowMultiple
    }
}

/// The hook name users see for the UDP programs.
pub const UDP_HOOK: &str = Probe::CgroupSockAddr.hook();

/// Attaches the four UDP hooks to the cgroup2 root, all or none.
pub fn attach_udp(ebpf: &mut Ebpf) -> LifecycleAttach {
    let mut out = LifecycleAttach {
        event: "udp",
        attached: None,
        passed_over: Vec::new(),
    };
    let r = (|| -> Result<()> {
        let (root, dir) = open_cgroup2_root()?;
        let mode = cgroup_attach_mode();
        let mut links = Vec::new();
        for name in UDP_PROGRAMS {
            let p: &mut CgroupSockAddr = program(ebpf, name)?.try_into()?;
            p.load().with_context(|| format!("{name}: load"))?;
            match p.attach(&dir, mode) {
                Ok(l) => links.push((name, l)),
                Err(e) => {
                    // All or none: a half-attached set would see connects but not sends.
                    for (n, l) in links {
                        let p: &mut CgroupSockAddr = program(ebpf, n)?.try_into()?;
                        let _ = p.detach(l);
                    }
                    return Err(e).with_context(|| format!("{name}: attach to {}", root.display()));
                }
            }
        }
        log::info!("UDP hooks attached to the cgroup2 root {}", root.display());
        Ok(())
    })();
    match r {
        Ok(()) => out.attached = Some(UDP_HOOK),
        Err(e) => out.passed_over.push((UDP_HOOK, format!("{e:#}"))),
    }
    out
}

/// The cgroup2 hierarchy's root: from this mount namespace's mountinfo, else the host's
/// (through /proc/1/root, as in a pod sharing the host's pid namespace). A cgroup2 mount's
/// root must be `/` of the hierarchy: a container's namespaced view is not the root.
/// Hand-parsed on purpose: enrich/cgroups.rs has the same search, but kernel/ sits below
/// enrich/ and may not import it.
pub fn cgroup2_root() -> Result<PathBuf> {
    let own = std::fs::read_to_string("/proc/self/mountinfo").context("/proc/self/mountinfo")?;
    if let Some(p) = find_cgroup2(&own) {
        return Ok(p);
    }
    if let Ok(host) = std::fs::read_to_string("/proc/1/mountinfo")
        && let Some(p) = find_cgroup2(&host)
    {
        let via = Path::new("/proc/1/root").join(p.strip_prefix("/").unwrap_or(&p));
        if via.is_dir() {
            return Ok(via);
        }
    }
    bail!("no cgroup2 hierarchy mounted at its root (pure cgroup v1 host)")
}

/// The mount point of a cgroup2 filesystem mounted at its hierarchy's root.
fn find_cgroup2(mountinfo: &str) -> Option<PathBuf> {
    use procfs::FromBufRead;
    let mounts = procfs::process::MountInfos::from_buf_read(mountinfo.as_bytes()).ok()?;
    mounts
        .0
        .into_iter()
        .find(|m| m.fs_type == "cgroup2" && m.root == "/")
        .map(|m| m.mount_point)
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::programs::Program> {
    ebpf.program_mut(name)
        .with_context(|| format!("program {name} missing from the eBPF object"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_only_a_root_cgroup2_mount() {
        let hybrid = "24 30 0:22 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw\n";
        assert_eq!(
            find_cgroup2(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let pod = "24 30 0:22 /kubepods/x /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(find_cgroup2(pod), None);
        assert_eq!(
            find_cgroup2("25 30 0:23 / /x rw - cgroup cgroup rw\n"),
            None
        );
    }
}

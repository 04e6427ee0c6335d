//! Computes what the kernel programs need to find their fields: struct offsets from the
//! kernel's BTF ([`KernelLayout`]), and, only when the classic tracepoints are the
//! fallback in use, record offsets from their format files ([`TracepointLayout`]).

use std::{collections::HashMap, path::Path};

use anyhow::{Context, Result, bail};
use sensor_common::{KernelLayout, OFFSET_UNKNOWN, TracepointLayout};

use crate::kernel::btf::Btf;

pub const TRACEPOINT_CATEGORY: &str = "sock";
pub const TRACEPOINT_NAME: &str = "inet_sock_set_state";

/// One `field:` line of a tracepoint format file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub offset: u32,
    pub size: u32,
}

/// Parses the `field:TYPE NAME;\toffset:N;\tsize:M;\tsigned:S;` lines of a format file.
pub fn parse_format(text: &str) -> HashMap<String, Field> {
    let mut fields = HashMap::new();
    for line in text.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("field:") else {
            continue;
        };
        let mut decl = None;
        let mut offset = None;
        let mut size = None;
        for part in rest.split(';').map(str::trim) {
            if let Some(v) = part.strip_prefix("offset:") {
                offset = v.parse().ok();
            } else if let Some(v) = part.strip_prefix("size:") {
                size = v.parse().ok();
            } else if decl.is_none() && !part.is_empty() {
                decl = Some(part);
            }
        }
        let (Some(decl), Some(offset), Some(size)) = (decl, offset, size) else {
            continue;
        };
        // The name is the last word of the declaration, without any array suffix.
        let Some(name) = decl
            .split_whitespace()
            .last()
            .map(|w| w.split('[').next().unwrap_or(w).trim_start_matches('*'))
        else {
            continue;
        };
        fields.insert(name.to_string(), Field { offset, size });
    }
    fields
}

/// The format file of tracepoint `category:name` under the tracefs at `tracefs`.
pub fn read_format(tracefs: &Path, category: &str, name: &str) -> Result<HashMap<String, Field>> {
    let p = tracefs
        .join("events")
        .join(category)
        .join(name)
        .join("format");
    let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    Ok(parse_format(&text))
}

/// Both classic tracepoints' offsets, from the format files under `tracefs`.
pub fn tracepoint_layout(tracefs: &Path) -> Result<TracepointLayout> {
    let mut l = TracepointLayout::UNKNOWN;
    apply_format(
        &mut l,
        &read_format(tracefs, TRACEPOINT_CATEGORY, TRACEPOINT_NAME)?,
    )?;
    // Without it exec records lack the path, nothing else: a warning, not a failure.
    if let Err(e) = read_format(tracefs, EXEC_TRACEPOINT.0, EXEC_TRACEPOINT.1)
        .and_then(|f| apply_exec_format(&mut l, &f))
    {
        log::warn!("exec records will not carry the executed path: {e:#}");
    }
    Ok(l)
}

/// Fills the tracepoint offsets, checking each field has the size the kernel program reads.
pub fn apply_format(layout: &mut TracepointLayout, fields: &HashMap<String, Field>) -> Result<()> {
    let want = |name: &str, size: u32| -> Result<u32> {
        let f = fields
            .get(name)
            .with_context(|| format!("tracepoint format has no field `{name}`"))?;
        if f.size != size {
            bail!(
                "tracepoint field `{name}` is {} bytes, expected {size}",
                f.size
            );
        }
        Ok(f.offset)
    };
    layout.oldstate = want("oldstate", 4)?;
    layout.newstate = want("newstate", 4)?;
    layout.sport = want("sport", 2)?;
    layout.dport = want("dport", 2)?;
    layout.family = want("family", 2)?;
    layout.protocol = want("protocol", 2)?;
    layout.saddr = want("saddr", 4)?;
    layout.daddr = want("daddr", 4)?;
    layout.saddr_v6 = want("saddr_v6", 16)?;
    layout.daddr_v6 = want("daddr_v6", 16)?;
    // Only for the socket's namespace: without it records carry none, nothing else lost.
    layout.skaddr = fields
        .get("skaddr")
        .filter(|f| f.size == 8)
        .map_or(OFFSET_UNKNOWN, |f| f.offset);
    Ok(())
}

/// Fills the struct offsets the BTF knows; unknown ones stay [`OFFSET_UNKNOWN`].
pub fn apply_btf(layout: &mut KernelLayout, btf: &Btf) {
    let sk = |m: &str| {
        btf.member_offset("sock_common", m)
            .unwrap_or(OFFSET_UNKNOWN)
    };
    let task = |m: &str| {
        btf.member_offset("task_struct", m)
            .unwrap_or(OFFSET_UNKNOWN)
    };
    layout.sk_family = sk("skc_family");
    layout.sk_dport = sk("skc_dport");
    layout.sk_num = sk("skc_num");
    layout.sk_daddr = sk("skc_daddr");
    layout.sk_rcv_saddr = sk("skc_rcv_saddr");
    layout.sk_v6_daddr = sk("skc_v6_daddr");
    layout.sk_v6_rcv_saddr = sk("skc_v6_rcv_saddr");
    layout.sk_protocol = btf
        .member_offset("sock", "sk_protocol")
        .unwrap_or(OFFSET_UNKNOWN);
    layout.task_real_parent = task("real_parent");
    layout.task_tgid = task("tgid");
    layout.task_start_boottime = match task("start_boottime") {
        // Kernels before 5.5 only have start_time (then boot-based).
        OFFSET_UNKNOWN => task("real_start_time"),
        off => off,
    };
    layout.task_pid = task("pid");
    layout.task_group_leader = task("group_leader");
    layout.task_mm = task("mm");
    let member = |s: &str, m: &str| btf.member_offset(s, m).unwrap_or(OFFSET_UNKNOWN);
    layout.mm_arg_start = member("mm_struct", "arg_start");
    layout.mm_arg_end = member("mm_struct", "arg_end");
    layout.mm_exe_file = member("mm_struct", "exe_file");
    layout.file_f_inode = member("file", "f_inode");
    layout.inode_i_ino = member("inode", "i_ino");
    layout.inode_i_nlink = member("inode", "__i_nlink");
    layout.inode_i_sb = member("inode", "i_sb");
    layout.sb_s_dev = member("super_block", "s_dev");
    layout.file_f_path = member("file", "f_path");
    layout.path_dentry = member("path", "dentry");
    layout.dentry_d_name = member("dentry", "d_name");
    layout.qstr_name = member("qstr", "name");
    layout.bprm_filename = member("linux_binprm", "filename");
    layout.task_signal = task("signal");
    // atomic_t: its one int member is at its start.
    layout.signal_live = member("signal_struct", "live");
    // possible_net_t: `struct net *net` is its only member (CONFIG_NET_NS).
    layout.sk_net = sk("skc_net");
    layout.net_ns = member("net", "ns");
    layout.ns_inum = member("ns_common", "inum");
}

pub const EXEC_TRACEPOINT: (&str, &str) = ("sched", "sched_process_exec");

/// sched_process_exec's `filename` field (a `__data_loc`, 4 bytes).
pub fn apply_exec_format(
    layout: &mut TracepointLayout,
    fields: &HashMap<String, Field>,
) -> Result<()> {
    let f = fields
        .get("filename")
        .context("sched_process_exec format has no `filename`")?;
    if f.size != 4 {
        bail!(
            "sched_process_exec `filename` is {} bytes, expected a 4-byte __data_loc",
            f.size
        );
    }
    layout.exec_filename = f.offset;
    Ok(())
}

/// True when the process table can be fed from the kernel (tasks' identity readable).
pub fn has_task_layout(l: &KernelLayout) -> bool {
    [
        l.task_tgid,
        l.task_pid,
        l.task_start_boottime,
        l.task_real_parent,
    ]
    .iter()
    .all(|&o| o != OFFSET_UNKNOWN)
}

/// True when the struct sock offsets needed by fentry, kprobe and tp_btf are all known.
pub fn has_sock_layout(l: &KernelLayout) -> bool {
    [l.sk_family, l.sk_dport, l.sk_num, l.sk_daddr, l.sk_v6_daddr]
        .iter()
        .all(|&o| o != OFFSET_UNKNOWN)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORMAT_6_18: &str = "name: inet_sock_set_state
ID: 2287
format:
	field:unsigned short common_type;	offset:0;	size:2;	signed:0;
	field:int common_pid;	offset:4;	size:4;	signed:1;

	field:const void * skaddr;	offset:8;	size:8;	signed:0;
	field:int oldstate;	offset:16;	size:4;	signed:1;
	field:int newstate;	offset:20;	size:4;	signed:1;
	field:__u16 sport;	offset:24;	size:2;	signed:0;
	field:__u16 dport;	offset:26;	size:2;	signed:0;
	field:__u16 family;	offset:28;	size:2;	signed:0;
	field:__u16 protocol;	offset:30;	size:2;	signed:0;
	field:__u8 saddr[4];	offset:32;	size:4;	signed:0;
	field:__u8 daddr[4];	offset:36;	size:4;	signed:0;
	field:__u8 saddr_v6[16];	offset:40;	size:16;	signed:0;
	field:__u8 daddr_v6[16];	offset:56;	size:16;	signed:0;

print fmt: \"family=%s\"";

    #[test]
    fn parses_format_file() {
        let f = parse_format(FORMAT_6_18);
        assert_eq!(f["skaddr"], Field { offset: 8, size: 8 });
        assert_eq!(
            f["daddr_v6"],
            Field {
                offset: 56,
                size: 16
            }
        );
        assert_eq!(f["common_pid"], Field { offset: 4, size: 4 });
        let mut l = TracepointLayout::UNKNOWN;
        apply_format(&mut l, &f).unwrap();
        assert_eq!((l.oldstate, l.newstate, l.dport, l.daddr), (16, 20, 26, 36));
        assert_eq!((l.protocol, l.family, l.daddr_v6), (30, 28, 56));
        assert_eq!(l.skaddr, 8);
    }

    #[test]
    fn missing_or_resized_field_is_an_error() {
        let mut f = parse_format(FORMAT_6_18);
        f.get_mut("dport").unwrap().size = 4;
        let err = apply_format(&mut { TracepointLayout::UNKNOWN }, &f).unwrap_err();
        assert!(err.to_string().contains("`dport` is 4 bytes"), "{err}");
        f.remove("daddr");
        f.get_mut("dport").unwrap().size = 2;
        let err = apply_format(&mut { TracepointLayout::UNKNOWN }, &f).unwrap_err();
        assert!(err.to_string().contains("no field `daddr`"), "{err}");
    }

    #[test]
    fn running_kernel_format_matches_reader() {
        // tracefs is found or mounted (in a private mount namespace) as the sensor does.
        let tracefs = match crate::kernel::tracefs::ensure() {
            Ok(t) => t,
            Err(e) => {
                crate::testing::skip("running_kernel_format_matches_reader", &format!("{e:#}"));
                return;
            }
        };
        let l = tracepoint_layout(tracefs.path()).unwrap();
        assert_ne!(l.exec_filename, OFFSET_UNKNOWN);
        assert_ne!(l.skaddr, OFFSET_UNKNOWN);
    }

    #[test]
    fn running_kernel_has_the_group_and_namespace_offsets() {
        let Ok(data) = std::fs::read("/sys/kernel/btf/vmlinux") else {
            crate::testing::skip(
                "running_kernel_has_the_group_and_namespace_offsets",
                "no BTF",
            );
            return;
        };
        let mut l = KernelLayout::UNKNOWN;
        apply_btf(&mut l, &Btf::parse(&data).unwrap());
        for (name, off) in [
            ("task_struct.signal", l.task_signal),
            ("signal_struct.live", l.signal_live),
            ("sock_common.skc_net", l.sk_net),
            ("net.ns", l.net_ns),
            ("ns_common.inum", l.ns_inum),
        ] {
            assert_ne!(off, OFFSET_UNKNOWN, "{name}");
        }
    }
}

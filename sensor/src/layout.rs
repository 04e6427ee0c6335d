//! Computes the [`KernelLayout`] handed to the kernel program: tracepoint field offsets
//! from the tracepoint's format file, struct offsets from the kernel's BTF.

use std::{collections::HashMap, path::Path};

use anyhow::{Context, Result, bail};
use sensor_common::{KernelLayout, OFFSET_UNKNOWN};

use crate::btf::Btf;

pub const TRACEPOINT_CATEGORY: &str = "sock";
pub const TRACEPOINT_NAME: &str = "inet_sock_set_state";

/// Where tracefs may be mounted, newest convention first.
const TRACEFS_ROOTS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

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

/// Finds the connect tracepoint's format file under a mounted tracefs.
pub fn format_path() -> Result<std::path::PathBuf> {
    format_path_of(TRACEPOINT_CATEGORY, TRACEPOINT_NAME)
}

pub fn format_path_of(category: &str, name: &str) -> Result<std::path::PathBuf> {
    for root in TRACEFS_ROOTS {
        let p = Path::new(root)
            .join("events")
            .join(category)
            .join(name)
            .join("format");
        match std::fs::metadata(&p) {
            Ok(_) => return Ok(p),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                bail!(
                    "cannot read {}: permission denied (tracefs needs root)",
                    p.display()
                )
            }
            Err(_) => {}
        }
    }
    bail!(
        "tracepoint {category}:{name} not found under {} (is tracefs mounted? try `mount -t tracefs nodev /sys/kernel/tracing`)",
        TRACEFS_ROOTS.join(" or ")
    )
}

/// Fills the tracepoint offsets, checking each field has the size the kernel program reads.
pub fn apply_format(layout: &mut KernelLayout, fields: &HashMap<String, Field>) -> Result<()> {
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
    layout.tp_oldstate = want("oldstate", 4)?;
    layout.tp_newstate = want("newstate", 4)?;
    layout.tp_sport = want("sport", 2)?;
    layout.tp_dport = want("dport", 2)?;
    layout.tp_family = want("family", 2)?;
    layout.tp_protocol = want("protocol", 2)?;
    layout.tp_saddr = want("saddr", 4)?;
    layout.tp_daddr = want("daddr", 4)?;
    layout.tp_saddr_v6 = want("saddr_v6", 16)?;
    layout.tp_daddr_v6 = want("daddr_v6", 16)?;
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
}

pub const EXEC_TRACEPOINT: (&str, &str) = ("sched", "sched_process_exec");

/// Reads sched_process_exec's format file for the `filename` field.
pub fn apply_exec_format(layout: &mut KernelLayout) -> Result<()> {
    let text = std::fs::read_to_string(format_path_of(EXEC_TRACEPOINT.0, EXEC_TRACEPOINT.1)?)?;
    let fields = parse_format(&text);
    let f = fields
        .get("filename")
        .context("sched_process_exec format has no `filename`")?;
    if f.size != 4 {
        bail!(
            "sched_process_exec `filename` is {} bytes, expected a 4-byte __data_loc",
            f.size
        );
    }
    layout.tp_exec_filename = f.offset;
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

/// True when the struct sock offsets needed by fentry/kprobe are all known.
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
        let mut l = KernelLayout::UNKNOWN;
        apply_format(&mut l, &f).unwrap();
        assert_eq!(
            (l.tp_oldstate, l.tp_newstate, l.tp_dport, l.tp_daddr),
            (16, 20, 26, 36)
        );
        assert_eq!((l.tp_protocol, l.tp_family, l.tp_daddr_v6), (30, 28, 56));
    }

    #[test]
    fn missing_or_resized_field_is_an_error() {
        let mut f = parse_format(FORMAT_6_18);
        f.get_mut("dport").unwrap().size = 4;
        let err = apply_format(&mut { KernelLayout::UNKNOWN }, &f).unwrap_err();
        assert!(err.to_string().contains("`dport` is 4 bytes"), "{err}");
        f.remove("daddr");
        f.get_mut("dport").unwrap().size = 2;
        let err = apply_format(&mut { KernelLayout::UNKNOWN }, &f).unwrap_err();
        assert!(err.to_string().contains("no field `daddr`"), "{err}");
    }

    #[test]
    fn running_kernel_format_matches_reader() {
        let Ok(path) = format_path() else {
            eprintln!("skipped: tracefs not mounted");
            return;
        };
        let text = std::fs::read_to_string(path).unwrap();
        apply_format(&mut { KernelLayout::UNKNOWN }, &parse_format(&text)).unwrap();
    }
}

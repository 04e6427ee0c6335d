//! `sensor check`: can the sensor run here, and with which hook? Tries every hook for
//! real (load + attach + detach) so the answer is the kernel's, not a guess.

use anyhow::Result;

use crate::kernel::{
    attach::{self, AUTO_ORDER, Probe},
    layout,
    load::{self, Environment},
    privileges::privileges,
    tracefs,
};

/// Returns whether the sensor can run; prints one line per check.
pub fn check(ring_buffer_bytes: u32) -> Result<bool> {
    let mut ok = true;
    let line = |what: &str, status: &str| println!("{what:<38} {status}");

    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    line("kernel", release.trim());

    let p = privileges();
    let privileged = p.ok;
    line(
        "privileges",
        &format!(
            "{} ({})",
            if privileged {
                "ok"
            } else {
                "MISSING: run as root or grant CAP_BPF+CAP_PERFMON"
            },
            p.detail
        ),
    );
    ok &= privileged;

    let env = Environment::probe();
    line(
        "kernel BTF (/sys/kernel/btf/vmlinux)",
        &match &env.btf_error {
            None if layout::has_sock_layout(&env.layout) => {
                "ok: struct sock_common and task_struct offsets found".into()
            }
            None => "present, but struct sock_common offsets not found".into(),
            Some(e) => format!(
                "unavailable: {e} (fentry, kprobe and BTF tracepoints need it; the classic tracepoint is left)"
            ),
        },
    );
    if let Err(e) = load::validate_ring_buffer_size(ring_buffer_bytes) {
        line("ring buffer", &format!("FAILED: {e:#}"));
        return Ok(false);
    }

    let opts = load::Options {
        ring_buffer_bytes,
        probes: AUTO_ORDER.to_vec(),
        kernel_log_level: 0,
        wakeup_bytes: 0,
        max_delay: std::time::Duration::ZERO,
    };
    match load::load_object(&opts, &env) {
        Ok(_) => line(
            "ring buffer",
            &format!("ok: {ring_buffer_bytes} bytes created"),
        ),
        Err(e) => {
            line("ring buffer", &format!("FAILED: {e:#}"));
            return Ok(false);
        }
    }
    let mut chosen: Option<Probe> = None;
    for probe in AUTO_ORDER {
        // A fresh object per hook, dropped (detached) right after.
        let attached = load::load_object(&opts, &env)
            .and_then(|mut ebpf| attach::attach(&mut ebpf, probe, &env.layout, env.btf.as_ref()));
        match attached {
            Ok(()) => {
                line(probe.hook(), "ok: loads and attaches");
                chosen.get_or_insert(probe);
            }
            Err(e) => line(probe.hook(), &format!("unavailable: {e:#}")),
        }
    }
    // The process table's feed: optional (the sensor runs without it), but reported.
    match load::load(
        &load::Options {
            probes: vec![chosen.unwrap_or(Probe::Tracepoint)],
            ..opts
        },
        &env,
    ) {
        Ok(loaded) => {
            for l in &loaded.lifecycle {
                for (hook, e) in &l.passed_over {
                    line(hook, &format!("unavailable: {e}"));
                }
                // exec, fork and exit feed the process table; listen and udp are events.
                let lifecycle = matches!(l.event, "exec" | "fork" | "exit");
                match (l.attached, lifecycle) {
                    (Some(hook), true) => line(hook, "ok: feeds the process table"),
                    (Some(hook), false) => line(hook, &format!("ok: {} records", l.event)),
                    (None, true) => line(
                        &format!("process {} records", l.event),
                        "unavailable (attribution falls back to /proc)",
                    ),
                    (None, false) => line(&format!("{} records", l.event), "unavailable"),
                }
            }
        }
        Err(e) => line("process lifecycle hooks", &format!("not tried: {e:#}")),
    }
    // Only the classic tracepoint needs tracefs; say where it is, or that it was mounted.
    line(
        "tracefs (classic tracepoints only)",
        &match tracefs::ensure() {
            Ok(t) => format!("ok: {}", t.describe()),
            Err(e) => format!("unavailable: {e:#}"),
        },
    );
    match chosen {
        Some(p) if ok => {
            line(
                "verdict",
                &format!("the sensor can run here, using {}", p.hook()),
            );
            Ok(true)
        }
        _ => {
            line("verdict", "the sensor CANNOT run here");
            Ok(false)
        }
    }
}

/// Every kernel struct member the programs read, as `struct.member`, with the offset
/// computed from this kernel's BTF (None when not found).
fn btf_offsets(l: &sensor_common::KernelLayout) -> Vec<(&'static str, Option<u32>)> {
    let known = |v: u32| (v != sensor_common::OFFSET_UNKNOWN).then_some(v);
    [
        ("sock_common.skc_family", l.sk_family),
        ("sock_common.skc_dport", l.sk_dport),
        ("sock_common.skc_num", l.sk_num),
        ("sock_common.skc_daddr", l.sk_daddr),
        ("sock_common.skc_rcv_saddr", l.sk_rcv_saddr),
        ("sock_common.skc_v6_daddr", l.sk_v6_daddr),
        ("sock_common.skc_v6_rcv_saddr", l.sk_v6_rcv_saddr),
        ("sock.sk_protocol", l.sk_protocol),
        ("task_struct.real_parent", l.task_real_parent),
        ("task_struct.tgid", l.task_tgid),
        ("task_struct.start_boottime", l.task_start_boottime),
        ("task_struct.pid", l.task_pid),
        ("task_struct.group_leader", l.task_group_leader),
        ("task_struct.mm", l.task_mm),
        ("mm_struct.arg_start", l.mm_arg_start),
        ("mm_struct.arg_end", l.mm_arg_end),
        ("mm_struct.exe_file", l.mm_exe_file),
        ("file.f_inode", l.file_f_inode),
        ("file.f_path", l.file_f_path),
        ("inode.i_ino", l.inode_i_ino),
        ("inode.__i_nlink", l.inode_i_nlink),
        ("inode.i_sb", l.inode_i_sb),
        ("super_block.s_dev", l.sb_s_dev),
        ("path.dentry", l.path_dentry),
        ("dentry.d_name", l.dentry_d_name),
        ("qstr.name", l.qstr_name),
        ("linux_binprm.filename", l.bprm_filename),
        ("task_struct.signal", l.task_signal),
        ("signal_struct.live", l.signal_live),
        ("sock_common.skc_net", l.sk_net),
        ("net.ns", l.net_ns),
        ("ns_common.inum", l.ns_inum),
    ]
    .into_iter()
    .map(|(name, v)| (name, known(v)))
    .collect()
}

/// `sensor check --layout`: the struct offsets this kernel's BTF gives the programs, as one
/// JSON object (`{"kernel", "btf_error", "offsets": {"struct.member": bytes | null}}`), for
/// comparing against other tools' reading of the same BTF.
pub fn print_layout() -> Result<bool> {
    let env = Environment::probe();
    let offsets: serde_json::Map<String, serde_json::Value> = btf_offsets(&env.layout)
        .into_iter()
        .map(|(name, v)| (name.to_string(), v.into()))
        .collect();
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!(
        "{}",
        serde_json::json!({
            "kernel": release.trim(),
            "btf_error": env.btf_error,
            "offsets": offsets,
        })
    );
    Ok(env.btf_error.is_none())
}

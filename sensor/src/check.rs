//! `sensor check`: can the sensor run here, and with which hook? Tries every hook for
//! real (load + attach + detach) so the answer is the kernel's, not a guess.

use anyhow::Result;

use crate::{
    attach::{self, AUTO_ORDER, Probe},
    loader::{self, Environment},
};

/// Effective capabilities from /proc/self/status.
fn effective_caps() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))?
        .trim();
    u64::from_str_radix(hex, 16).ok()
}

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Whether this process may load and attach the sensor's programs.
pub struct Privileges {
    pub ok: bool,
    /// `euid N, CAP_BPF b, CAP_PERFMON b, CAP_SYS_ADMIN b`, for messages.
    pub detail: String,
}

pub fn privileges() -> Privileges {
    let caps = effective_caps().unwrap_or(0);
    let has = |c: u32| caps & (1 << c) != 0;
    Privileges {
        ok: has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)),
        detail: format!(
            "euid {}, CAP_BPF {}, CAP_PERFMON {}, CAP_SYS_ADMIN {}",
            // SAFETY: geteuid has no preconditions.
            unsafe { libc::geteuid() },
            has(CAP_BPF),
            has(CAP_PERFMON),
            has(CAP_SYS_ADMIN)
        ),
    }
}

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
            None if crate::layout::has_sock_layout(&env.layout) => {
                "ok: struct sock_common and task_struct offsets found".into()
            }
            None => "present, but struct sock_common offsets not found".into(),
            Some(e) => format!(
                "unavailable: {e} (fentry, kprobe and BTF tracepoints need it; the classic tracepoint is left)"
            ),
        },
    );
    if let Err(e) = loader::validate_ring_buffer_size(ring_buffer_bytes) {
        line("ring buffer", &format!("FAILED: {e:#}"));
        return Ok(false);
    }

    let opts = loader::Options {
        ring_buffer_bytes,
        probes: AUTO_ORDER.to_vec(),
        kernel_log_level: 0,
        wakeup_bytes: 0,
        max_delay: std::time::Duration::ZERO,
    };
    match loader::load_object(&opts, &env) {
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
        let attached = loader::load_object(&opts, &env)
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
    match loader::load(
        &loader::Options {
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
                match l.attached {
                    Some(hook) => line(hook, "ok: feeds the process table"),
                    None => line(
                        &format!("process {} records", l.event),
                        "unavailable (attribution falls back to /proc)",
                    ),
                }
            }
        }
        Err(e) => line("process lifecycle hooks", &format!("not tried: {e:#}")),
    }
    // Only the classic tracepoint needs tracefs; say where it is, or that it was mounted.
    line(
        "tracefs (classic tracepoints only)",
        &match crate::tracefs::ensure() {
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

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

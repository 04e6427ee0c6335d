//! Choosing the kernel hook at run time: fentry on tcp_connect, else kprobe on
//! tcp_connect, else the `sock:inet_sock_set_state` tracepoint at CLOSE -> SYN_SENT.
//! The first that loads and attaches wins; every failure is kept so `sensor check` and the
//! start-up log can say why the others were passed over.

use anyhow::{Context, Result, anyhow, bail};
use aya::{
    Btf, Ebpf,
    programs::{FEntry, KProbe, RawTracePoint, TracePoint},
};
use sensor_common::{KernelLayout, OFFSET_UNKNOWN, PROBE_FENTRY, PROBE_KPROBE, PROBE_TRACEPOINT};

use crate::layout::{self, TRACEPOINT_CATEGORY, TRACEPOINT_NAME};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Probe {
    Fentry,
    Kprobe,
    Tracepoint,
}

/// Preference order for `--probe auto`: cheapest and most precise first.
pub const AUTO_ORDER: [Probe; 3] = [Probe::Fentry, Probe::Kprobe, Probe::Tracepoint];

const TARGET_FN: &str = "tcp_connect";

impl Probe {
    /// The hook as users see it in logs and in `sensor.probe`.
    pub fn hook(self) -> &'static str {
        match self {
            Probe::Fentry => "fentry/tcp_connect",
            Probe::Kprobe => "kprobe/tcp_connect",
            Probe::Tracepoint => "tracepoint/sock/inet_sock_set_state",
        }
    }

    /// The program's name in the eBPF object.
    fn program(self) -> &'static str {
        match self {
            Probe::Fentry => "tcp_connect_fentry",
            Probe::Kprobe => "tcp_connect_kprobe",
            Probe::Tracepoint => "inet_sock_set_state",
        }
    }

    pub fn from_abi(v: u8) -> Option<Self> {
        match v {
            PROBE_FENTRY => Some(Probe::Fentry),
            PROBE_KPROBE => Some(Probe::Kprobe),
            PROBE_TRACEPOINT => Some(Probe::Tracepoint),
            _ => None,
        }
    }
}

#[derive(Debug)]
pub struct Attempt {
    pub probe: Probe,
    pub error: String,
}

#[derive(Debug)]
pub struct Selection {
    pub chosen: Probe,
    /// Hooks tried before `chosen`, with why each failed.
    pub failed: Vec<Attempt>,
}

/// Tries `order` in turn with `try_attach`; the first success wins.
pub fn select(
    order: &[Probe],
    mut try_attach: impl FnMut(Probe) -> Result<()>,
) -> Result<Selection> {
    let mut failed = Vec::new();
    for &probe in order {
        match try_attach(probe) {
            Ok(()) => {
                return Ok(Selection {
                    chosen: probe,
                    failed,
                });
            }
            Err(e) => failed.push(Attempt {
                probe,
                error: format!("{e:#}"),
            }),
        }
    }
    let why: Vec<String> = failed
        .iter()
        .map(|a| format!("{}: {}", a.probe.hook(), a.error))
        .collect();
    bail!("no connect hook could be attached ({})", why.join("; "))
}

/// Loads and attaches one hook. On failure the program is unloaded again.
pub fn attach(
    ebpf: &mut Ebpf,
    probe: Probe,
    layout: &KernelLayout,
    btf: Option<&Btf>,
) -> Result<()> {
    let prog = program(ebpf, probe.program())?;
    match probe {
        Probe::Fentry => {
            let btf = btf.ok_or_else(|| anyhow!("kernel BTF unavailable"))?;
            if !layout::has_sock_layout(layout) {
                bail!("struct sock_common layout not found in BTF");
            }
            let p: &mut FEntry = prog.try_into()?;
            p.load(TARGET_FN, btf).context("load")?;
            if let Err(e) = p.attach() {
                let _ = p.unload();
                return Err(anyhow!(e).context("attach"));
            }
        }
        Probe::Kprobe => {
            if !layout::has_sock_layout(layout) {
                bail!("struct sock_common layout unknown (needs kernel BTF)");
            }
            let p: &mut KProbe = prog.try_into()?;
            p.load().context("load")?;
            if let Err(e) = p.attach(TARGET_FN, 0) {
                let _ = p.unload();
                return Err(anyhow!(e).context("attach"));
            }
        }
        Probe::Tracepoint => {
            if layout.tp_newstate == OFFSET_UNKNOWN {
                bail!("tracepoint format unavailable");
            }
            let p: &mut TracePoint = prog.try_into()?;
            p.load().context("load")?;
            if let Err(e) = p.attach(TRACEPOINT_CATEGORY, TRACEPOINT_NAME) {
                let _ = p.unload();
                return Err(anyhow!(e).context("attach"));
            }
        }
    }
    Ok(())
}

/// A lifecycle hook: its name for users, its program in the object, where it attaches.
struct LifecycleHook {
    hook: &'static str,
    program: &'static str,
    /// `Some(category)` for a tracepoint `category:program`, None for a raw tracepoint.
    category: Option<&'static str>,
}

const LIFECYCLE: [LifecycleHook; 3] = [
    LifecycleHook {
        hook: "tracepoint/sched/sched_process_exec",
        program: "sched_process_exec",
        category: Some("sched"),
    },
    LifecycleHook {
        hook: "raw_tracepoint/sched_process_fork",
        program: "sched_process_fork",
        category: None,
    },
    LifecycleHook {
        hook: "tracepoint/sched/sched_process_exit",
        program: "sched_process_exit",
        category: Some("sched"),
    },
];

/// Attaches the process lifecycle hooks feeding the process table. Each is independent:
/// a failure leaves the table to /proc for that part, and is reported.
pub fn attach_lifecycle(
    ebpf: &mut Ebpf,
    layout: &KernelLayout,
) -> Vec<(&'static str, Result<(), String>)> {
    let attach_one = |ebpf: &mut Ebpf, h: &LifecycleHook| -> Result<()> {
        if !layout::has_task_layout(layout) {
            bail!("task_struct layout unknown (needs kernel BTF)");
        }
        let prog = program(ebpf, h.program)?;
        match h.category {
            Some(category) => {
                let p: &mut TracePoint = prog.try_into()?;
                p.load().context("load")?;
                p.attach(category, h.program).context("attach")?;
            }
            None => {
                let p: &mut RawTracePoint = prog.try_into()?;
                p.load().context("load")?;
                p.attach(h.program).context("attach")?;
            }
        }
        Ok(())
    };
    LIFECYCLE
        .iter()
        .map(|h| (h.hook, attach_one(ebpf, h).map_err(|e| format!("{e:#}"))))
        .collect()
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::programs::Program> {
    ebpf.program_mut(name)
        .with_context(|| format!("program {name} missing from the eBPF object"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(works: &[Probe]) -> Result<Selection> {
        let mut tried = Vec::new();
        let sel = select(&AUTO_ORDER, |p| {
            tried.push(p);
            if works.contains(&p) {
                Ok(())
            } else {
                Err(anyhow!("EPERM"))
            }
        });
        // Never tries past the first success, never skips ahead.
        let stop = sel
            .as_ref()
            .map(|s| AUTO_ORDER.iter().position(|&p| p == s.chosen).unwrap() + 1)
            .unwrap_or(3);
        assert_eq!(tried, AUTO_ORDER[..stop]);
        sel
    }

    #[test]
    fn prefers_fentry() {
        let s = run(&[Probe::Fentry, Probe::Kprobe, Probe::Tracepoint]).unwrap();
        assert_eq!(s.chosen, Probe::Fentry);
        assert!(s.failed.is_empty());
    }

    #[test]
    fn falls_back_to_kprobe() {
        let s = run(&[Probe::Kprobe, Probe::Tracepoint]).unwrap();
        assert_eq!(s.chosen, Probe::Kprobe);
        assert_eq!(s.failed.len(), 1);
        assert_eq!(s.failed[0].probe, Probe::Fentry);
    }

    #[test]
    fn falls_back_to_tracepoint_like_this_machine() {
        let s = run(&[Probe::Tracepoint]).unwrap();
        assert_eq!(s.chosen, Probe::Tracepoint);
        let failed: Vec<Probe> = s.failed.iter().map(|a| a.probe).collect();
        assert_eq!(failed, [Probe::Fentry, Probe::Kprobe]);
        assert!(s.failed.iter().all(|a| a.error == "EPERM"));
    }

    #[test]
    fn nothing_works_is_an_error_naming_each_hook() {
        let err = run(&[]).unwrap_err().to_string();
        for p in AUTO_ORDER {
            assert!(err.contains(p.hook()), "{err}");
        }
    }

    #[test]
    fn forced_probe_tries_only_that_one() {
        let mut tried = Vec::new();
        let s = select(&[Probe::Tracepoint], |p| {
            tried.push(p);
            Ok(())
        })
        .unwrap();
        assert_eq!(
            (s.chosen, tried),
            (Probe::Tracepoint, vec![Probe::Tracepoint])
        );
    }

    #[test]
    fn abi_values_round_trip() {
        assert_eq!(Probe::from_abi(PROBE_FENTRY), Some(Probe::Fentry));
        assert_eq!(Probe::from_abi(PROBE_KPROBE), Some(Probe::Kprobe));
        assert_eq!(Probe::from_abi(PROBE_TRACEPOINT), Some(Probe::Tracepoint));
        assert_eq!(Probe::from_abi(0), None);
    }
}

//! Choosing the kernel hooks at run time. Connects: fentry on tcp_connect, else kprobe on
//! tcp_connect, else the BTF tracepoint `inet_sock_set_state` (tp_btf), else the classic
//! `sock:inet_sock_set_state` tracepoint, each at CLOSE -> SYN_SENT. Process lifecycle:
//! the tp_btf form of each sched tracepoint first, the classic (or raw) one as fallback.
//! The first that loads and attaches wins; every failure is kept so `sensor check`,
//! `sensor-started` and the start-up log can say why the others were passed over.
//! Only the classic tracepoints need tracefs ([`crate::kernel::tracefs`]).

use anyhow::{Context, Result, anyhow, bail};
use aya::{
    Btf, Ebpf,
    maps::Array,
    programs::{BtfTracePoint, FEntry, KProbe, RawTracePoint, TracePoint},
};
use sensor_common::{KernelLayout, STATE_CONNECTS_MAP, TP_LAYOUT_MAP, TracepointLayout};

pub use crate::kernel::probe::{AUTO_ORDER, Probe};
use crate::kernel::{
    layout::{self, TRACEPOINT_CATEGORY, TRACEPOINT_NAME},
    tracefs::{self, Tracefs},
};

const TARGET_FN: &str = "tcp_connect";

/// The connect program's name in the eBPF object.
fn program_name(probe: Probe) -> Result<&'static str> {
    Ok(match probe {
        Probe::Fentry => "tcp_connect_fentry",
        Probe::Kprobe => "tcp_connect_kprobe",
        Probe::TpBtf => "inet_sock_set_state_btf",
        Probe::Tracepoint => "inet_sock_set_state",
        Probe::CgroupSockAddr => bail!("{} sees UDP only, not TCP connects", probe.hook()),
    })
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

/// The kernel's BTF, or why there is none.
fn need_btf(btf: Option<&Btf>) -> Result<&Btf> {
    btf.ok_or_else(|| anyhow!("kernel BTF unavailable"))
}

/// Unloads `prog` again when attaching failed, so a passed-over hook holds nothing.
fn attached<P>(
    prog: &mut P,
    r: Result<impl Sized, aya::programs::ProgramError>,
    unload: impl FnOnce(&mut P),
) -> Result<()> {
    match r {
        Ok(_) => Ok(()),
        Err(e) => {
            unload(prog);
            Err(anyhow!(e).context("attach"))
        }
    }
}

/// Loads and attaches one connect hook. On failure the program is unloaded again.
pub fn attach(
    ebpf: &mut Ebpf,
    probe: Probe,
    layout: &KernelLayout,
    btf: Option<&Btf>,
) -> Result<()> {
    let name = program_name(probe)?;
    if probe != Probe::Tracepoint && !layout::has_sock_layout(layout) {
        bail!("struct sock_common layout unknown (needs kernel BTF)");
    }
    if probe == Probe::Tracepoint {
        prepare_classic(ebpf)?;
    }
    let prog = program(ebpf, name)?;
    match probe {
        Probe::Fentry => {
            let p: &mut FEntry = prog.try_into()?;
            p.load(TARGET_FN, need_btf(btf)?).context("load")?;
            let r = p.attach();
            return attached(p, r, |p| {
                let _ = p.unload();
            });
        }
        Probe::Kprobe => {
            let p: &mut KProbe = prog.try_into()?;
            p.load().context("load")?;
            let r = p.attach(TARGET_FN, 0);
            return attached(p, r, |p| {
                let _ = p.unload();
            });
        }
        Probe::TpBtf => {
            if layout.sk_protocol == sensor_common::OFFSET_UNKNOWN {
                bail!("struct sock::sk_protocol is not a plain field in this kernel's BTF");
            }
            let p: &mut BtfTracePoint = prog.try_into()?;
            p.load(TRACEPOINT_NAME, need_btf(btf)?).context("load")?;
            let r = p.attach();
            attached(p, r, |p| {
                let _ = p.unload();
            })?;
        }
        Probe::Tracepoint => {
            let p: &mut TracePoint = prog.try_into()?;
            p.load().context("load")?;
            let r = p.attach(TRACEPOINT_CATEGORY, TRACEPOINT_NAME);
            attached(p, r, |p| {
                let _ = p.unload();
            })?;
        }
        // program_name refused it above.
        Probe::CgroupSockAddr => bail!("{} is not a connect hook", probe.hook()),
    }
    // The state program serves connects only when it is the connect hook; otherwise it is
    // attached later for listens and inbound opens alone.
    set_state_connects(ebpf, true)
}

/// Tells the state program whether it serves connects (the chosen connect hook is it).
pub fn set_state_connects(ebpf: &mut Ebpf, on: bool) -> Result<()> {
    let map = ebpf
        .map_mut(STATE_CONNECTS_MAP)
        .with_context(|| format!("map {STATE_CONNECTS_MAP} missing from the eBPF object"))?;
    let mut a: Array<_, u32> = Array::try_from(map)?;
    a.set(0, u32::from(on), 0)
        .context("writing the STATE_CONNECTS map")
}

/// Makes the classic tracepoints usable: tracefs found (or mounted privately) and their
/// record offsets written into the kernel's `TP_LAYOUT` map. Idempotent.
pub fn prepare_classic(ebpf: &mut Ebpf) -> Result<Tracefs> {
    let tracefs = tracefs::ensure()?;
    let map = ebpf
        .map_mut(TP_LAYOUT_MAP)
        .with_context(|| format!("map {TP_LAYOUT_MAP} missing from the eBPF object"))?;
    let mut slot: Array<_, TracepointLayout> = Array::try_from(map)?;
    if slot.get(&0, 0).is_ok_and(|l| l.newstate != 0) {
        return Ok(tracefs);
    }
    let l = layout::tracepoint_layout(tracefs.path())
        .with_context(|| format!("reading tracepoint formats from {}", tracefs.describe()))?;
    slot.set(0, l, 0)
        .context("writing the tracepoint layout map")?;
    Ok(tracefs)
}

/// How a lifecycle hook's fallback attaches.
#[derive(Clone, Copy)]
enum Fallback {
    /// A classic tracepoint `category:name` (needs tracefs).
    Tracepoint(&'static str),
    /// A raw tracepoint, attached by name.
    Raw,
}

/// A lifecycle hook: its kernel tracepoint, tp_btf program first, then a fallback.
struct LifecycleHook {
    /// The tracepoint's name (`sched_process_exec`), also the fallback program's.
    name: &'static str,
    btf_hook: &'static str,
    btf_program: &'static str,
    fallback_hook: &'static str,
    fallback: Fallback,
}

const LIFECYCLE: [LifecycleHook; 3] = [
    LifecycleHook {
        name: "sched_process_exec",
        btf_hook: "tp_btf/sched_process_exec",
        btf_program: "sched_process_exec_btf",
        fallback_hook: "tracepoint/sched/sched_process_exec",
        fallback: Fallback::Tracepoint("sched"),
    },
    LifecycleHook {
        name: "sched_process_fork",
        btf_hook: "tp_btf/sched_process_fork",
        btf_program: "sched_process_fork_btf",
        fallback_hook: "raw_tracepoint/sched_process_fork",
        fallback: Fallback::Raw,
    },
    LifecycleHook {
        name: "sched_process_exit",
        btf_hook: "tp_btf/sched_process_exit",
        btf_program: "sched_process_exit_btf",
        fallback_hook: "tracepoint/sched/sched_process_exit",
        fallback: Fallback::Tracepoint("sched"),
    },
];

/// One lifecycle hook's outcome.
#[derive(Debug)]
pub struct LifecycleAttach {
    /// `exec`, `fork` or `exit`.
    pub event: &'static str,
    /// The hook attached, if any.
    pub attached: Option<&'static str>,
    /// Hooks tried and passed over, with why.
    pub passed_over: Vec<(&'static str, String)>,
}

impl LifecycleAttach {
    pub fn uses_tracefs(&self) -> bool {
        self.attached.is_some_and(|h| h.starts_with("tracepoint/"))
    }
}

/// Attaches the process lifecycle hooks feeding the process table. Each is independent:
/// a failure leaves the table to /proc for that part, and is reported.
pub fn attach_lifecycle(
    ebpf: &mut Ebpf,
    layout: &KernelLayout,
    btf: Option<&Btf>,
) -> Vec<LifecycleAttach> {
    let via_btf = |ebpf: &mut Ebpf, h: &LifecycleHook| -> Result<()> {
        if h.name == "sched_process_exec" && layout.bprm_filename == sensor_common::OFFSET_UNKNOWN {
            bail!("struct linux_binprm::filename not found in BTF");
        }
        let p: &mut BtfTracePoint = program(ebpf, h.btf_program)?.try_into()?;
        p.load(h.name, need_btf(btf)?).context("load")?;
        let r = p.attach();
        attached(p, r, |p| {
            let _ = p.unload();
        })
    };
    let via_fallback = |ebpf: &mut Ebpf, h: &LifecycleHook| -> Result<()> {
        match h.fallback {
            Fallback::Tracepoint(category) => {
                prepare_classic(ebpf)?;
                let p: &mut TracePoint = program(ebpf, h.name)?.try_into()?;
                p.load().context("load")?;
                let r = p.attach(category, h.name);
                attached(p, r, |p| {
                    let _ = p.unload();
                })
            }
            Fallback::Raw => {
                let p: &mut RawTracePoint = program(ebpf, h.name)?.try_into()?;
                p.load().context("load")?;
                let r = p.attach(h.name);
                attached(p, r, |p| {
                    let _ = p.unload();
                })
            }
        }
    };
    LIFECYCLE
        .iter()
        .map(|h| {
            let mut out = LifecycleAttach {
                event: h.name.trim_start_matches("sched_process_"),
                attached: None,
                passed_over: Vec::new(),
            };
            if !layout::has_task_layout(layout) {
                out.passed_over.push((
                    h.btf_hook,
                    "task_struct layout unknown (needs kernel BTF)".into(),
                ));
                return out;
            }
            for (hook, fallback) in [(h.btf_hook, false), (h.fallback_hook, true)] {
                let r = if fallback {
                    via_fallback(ebpf, h)
                } else {
                    via_btf(ebpf, h)
                };
                match r {
                    Ok(()) => {
                        out.attached = Some(hook);
                        break;
                    }
                    Err(e) => out.passed_over.push((hook, format!("{e:#}"))),
                }
            }
            out
        })
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
            .unwrap_or(AUTO_ORDER.len());
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
    fn falls_back_to_tp_btf_like_this_machine() {
        let s = run(&[Probe::TpBtf, Probe::Tracepoint]).unwrap();
        assert_eq!(s.chosen, Probe::TpBtf);
        let failed: Vec<Probe> = s.failed.iter().map(|a| a.probe).collect();
        assert_eq!(failed, [Probe::Fentry, Probe::Kprobe]);
        assert!(s.failed.iter().all(|a| a.error == "EPERM"));
    }

    #[test]
    fn classic_tracepoint_is_the_last_resort() {
        let s = run(&[Probe::Tracepoint]).unwrap();
        assert_eq!(s.chosen, Probe::Tracepoint);
        let failed: Vec<Probe> = s.failed.iter().map(|a| a.probe).collect();
        assert_eq!(failed, [Probe::Fentry, Probe::Kprobe, Probe::TpBtf]);
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
}

//! Whether this process may load and attach eBPF programs (effective capabilities), and
//! dropping every capability it no longer needs once they are attached.

use anyhow::{Context, Result};
use caps::{CapSet, Capability, CapsHashSet};
use procfs::FromRead;

/// Effective capabilities from /proc/self/status (parsed by the procfs crate).
fn effective_caps() -> Result<u64> {
    let status = procfs::process::Status::from_file("/proc/self/status")
        .context("reading /proc/self/status")?;
    Ok(status.capeff)
}

/// The other threads of this process whose permitted set is not empty, as `TID (name)`:
/// capabilities are per thread, so those keep theirs when this one drops.
fn other_threads_holding_capabilities() -> Vec<String> {
    // SAFETY: gettid has no preconditions.
    let me = unsafe { libc::gettid() };
    let Ok(process) = procfs::process::Process::myself() else {
        return Vec::new();
    };
    let Ok(tasks) = process.tasks() else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter(|t| t.tid != me)
        .filter_map(|t| t.status().ok())
        .filter(|s| s.capprm != 0)
        .map(|s| format!("{} ({})", s.pid, s.name))
        .collect()
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
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    let caps = match effective_caps() {
        Ok(caps) => caps,
        // Unknown is not "none": say so instead of reporting every capability missing.
        Err(e) => {
            return Privileges {
                ok: false,
                detail: format!("euid {euid}, capabilities unknown: {e:#}"),
            };
        }
    };
    let has = |c: u32| caps & (1 << c) != 0;
    Privileges {
        ok: has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)),
        detail: format!(
            "euid {euid}, CAP_BPF {}, CAP_PERFMON {}, CAP_SYS_ADMIN {}",
            has(CAP_BPF),
            has(CAP_PERFMON),
            has(CAP_SYS_ADMIN)
        ),
    }
}

/// What the sensor still needs once its programs are attached, and why. Everything else
/// (CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN, CAP_SYS_RESOURCE, ...) only served the load.
pub const KEPT: &[(Capability, &str)] = &[
    (
        Capability::CAP_SYS_PTRACE,
        "/proc/PID/exe, /proc/PID/root/..., environ and cmdline of every user's processes",
    ),
    (
        Capability::CAP_DAC_READ_SEARCH,
        "executables to fingerprint and containers' passwd files, whatever their modes",
    ),
];

/// What [`drop_capabilities`] did, for `sensor-started`.
#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct Dropped {
    /// The capabilities left in the effective and permitted sets, `CAP_*`, sorted.
    pub kept: Vec<String>,
    /// Whether this kernel refuses bpf() on an already-open map without CAP_BPF (kernels
    /// before the 2023 move of the `unprivileged_bpf_disabled` check out of the syscall
    /// entry, 6.1 among them): then CAP_BPF is kept for reloads and loss counters.
    pub bpf_needs_capability: bool,
    /// Whether the bounding set was cut to `kept` too (needs CAP_SETPCAP, which a systemd
    /// unit's bounding set may not give; NoNewPrivileges then stops any regain).
    pub bounding_set_dropped: bool,
    /// `--keep-capabilities`: nothing was dropped.
    pub all_kept: bool,
}

fn names(set: &CapsHashSet) -> Vec<String> {
    let mut v: Vec<String> = set.iter().map(ToString::to_string).collect();
    v.sort();
    v
}

/// Drops every capability not in [`KEPT`] from the effective, permitted, inheritable,
/// ambient and bounding sets, and sets no_new_privs. Capabilities are per thread: call it
/// while this is the process's only thread. `map_access` reads and writes the sensor's
/// open maps as a reload does (harmless: the same values again); it is tried with CAP_BPF
/// and CAP_SYS_ADMIN lowered, and when the kernel refuses, the one of the two held is kept.
pub fn drop_capabilities(keep_all: bool, map_access: impl FnOnce() -> bool) -> Result<Dropped> {
    let permitted = caps::read(None, CapSet::Permitted).context("reading the permitted set")?;
    if keep_all {
        return Ok(Dropped {
            kept: names(&permitted),
            bpf_needs_capability: false,
            bounding_set_dropped: false,
            all_kept: true,
        });
    }
    // The hashing thread drops all of its own at its start; any other holder is a gap.
    let holders = other_threads_holding_capabilities();
    if !holders.is_empty() {
        log::warn!(
            "dropping capabilities while other threads hold some ({}): only this one's are dropped",
            holders.join(", ")
        );
    }
    let bpf_caps = [Capability::CAP_BPF, Capability::CAP_SYS_ADMIN];
    let lowered: CapsHashSet = permitted
        .iter()
        .filter(|c| !bpf_caps.contains(c))
        .copied()
        .collect();
    caps::set(None, CapSet::Effective, &lowered).context("lowering the effective set")?;
    let bpf_needs_capability = !map_access();
    caps::set(None, CapSet::Effective, &permitted).context("restoring the effective set")?;

    let mut keep: CapsHashSet = KEPT
        .iter()
        .map(|(c, _)| *c)
        .filter(|c| permitted.contains(c))
        .collect();
    if bpf_needs_capability && let Some(c) = bpf_caps.iter().find(|c| permitted.contains(c)) {
        keep.insert(*c);
    }
    // The bounding set first: dropping from it needs CAP_SETPCAP, still effective here.
    let mut bounding_set_dropped = true;
    for c in caps::read(None, CapSet::Bounding).context("reading the bounding set")? {
        if !keep.contains(&c) && caps::drop(None, CapSet::Bounding, c).is_err() {
            bounding_set_dropped = false;
        }
    }
    if !bounding_set_dropped {
        log::info!(
            "bounding set left as given (no CAP_SETPCAP); no_new_privs keeps exec from regaining any"
        );
    }
    caps::clear(None, CapSet::Ambient).context("clearing the ambient set")?;
    caps::clear(None, CapSet::Inheritable).context("clearing the inheritable set")?;
    caps::set(None, CapSet::Effective, &keep).context("dropping from the effective set")?;
    caps::set(None, CapSet::Permitted, &keep).context("dropping from the permitted set")?;
    // SAFETY: prctl with constant integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error()).context("prctl(PR_SET_NO_NEW_PRIVS)");
    }
    Ok(Dropped {
        kept: names(&keep),
        bpf_needs_capability,
        bounding_set_dropped,
        all_kept: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A thread that still holds capabilities is named; once it has cleared its own it is
    /// not (the hashing thread's case).
    #[test]
    fn only_threads_still_holding_capabilities_are_named() {
        if own_status().1 == 0 {
            eprintln!("SKIPPED: this test process holds no capabilities");
            return;
        }
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let (told, heard) = std::sync::mpsc::channel::<()>();
        let t = std::thread::Builder::new()
            .name("capholder".into())
            .spawn(move || {
                told.send(()).unwrap();
                wait.recv().unwrap();
                caps::clear(None, CapSet::Effective).unwrap();
                caps::clear(None, CapSet::Permitted).unwrap();
                told.send(()).unwrap();
                wait.recv().unwrap();
            })
            .unwrap();
        heard.recv().unwrap();
        let named = other_threads_holding_capabilities();
        assert!(named.iter().any(|n| n.contains("(capholder)")), "{named:?}");
        go.send(()).unwrap();
        heard.recv().unwrap();
        let named = other_threads_holding_capabilities();
        assert!(
            !named.iter().any(|n| n.contains("(capholder)")),
            "{named:?}"
        );
        go.send(()).unwrap();
        t.join().unwrap();
    }

    /// This thread's capability sets and no_new_privs (capabilities are per thread, so a
    /// test thread can drop its own without touching the others).
    fn own_status() -> (u64, u64, u64, bool) {
        let s = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        let get = |k: &str| {
            let v = s.lines().find_map(|l| l.strip_prefix(k)).unwrap().trim();
            u64::from_str_radix(v, 16).unwrap()
        };
        (
            get("CapEff:"),
            get("CapPrm:"),
            get("CapBnd:"),
            s.contains("NoNewPrivs:\t1"),
        )
    }

    fn drop_in_a_thread(map_access_works: bool) -> (Dropped, (u64, u64, u64, bool)) {
        std::thread::spawn(move || {
            let d = drop_capabilities(false, || map_access_works).unwrap();
            (d, own_status())
        })
        .join()
        .unwrap()
    }

    fn full_root() -> bool {
        let all_held = caps::read(None, CapSet::Permitted).is_ok_and(|p| {
            p.contains(&Capability::CAP_SETPCAP) && p.contains(&Capability::CAP_BPF)
        });
        if !all_held {
            crate::testing::skip("drop_capabilities", "needs root with every capability");
        }
        all_held
    }

    #[test]
    fn keeps_exactly_the_documented_set_everywhere() {
        if !full_root() {
            return;
        }
        let want = (1 << Capability::CAP_SYS_PTRACE.index())
            | (1 << Capability::CAP_DAC_READ_SEARCH.index());
        let (d, (eff, prm, bnd, nnp)) = drop_in_a_thread(true);
        assert_eq!((eff, prm, bnd, nnp), (want, want, want, true));
        assert_eq!(d.kept, ["CAP_DAC_READ_SEARCH", "CAP_SYS_PTRACE"]);
        assert!(d.bounding_set_dropped && !d.bpf_needs_capability && !d.all_kept);
    }

    #[test]
    fn keeps_cap_bpf_when_the_kernel_refuses_map_access_without_it() {
        if !full_root() {
            return;
        }
        let (d, (eff, prm, _, _)) = drop_in_a_thread(false);
        let bpf = 1 << Capability::CAP_BPF.index();
        assert!(d.bpf_needs_capability);
        assert_eq!((eff & bpf, prm & bpf), (bpf, bpf));
        assert!(d.kept.contains(&"CAP_BPF".to_string()));
    }
}

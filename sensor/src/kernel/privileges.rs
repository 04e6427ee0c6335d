//! Whether this process may load and attach eBPF programs: effective capabilities.

use anyhow::{Context, Result};
use procfs::FromRead;

/// Effective capabilities from /proc/self/status (parsed by the procfs crate).
fn effective_caps() -> Result<u64> {
    let status = procfs::process::Status::from_file("/proc/self/status")
        .context("reading /proc/self/status")?;
    Ok(status.capeff)
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

//! Processes the tests start or look at: output collected on a thread, /proc figures
//! (memory, capabilities), the executable behind a command, a child reaped on drop.

use std::{
    io::Read,
    process::{Child, Command},
    sync::{Arc, Mutex},
    thread,
};

use anyhow::{Context, Result, bail};

/// Reads `from` to its end on a thread of its own, everything appended to the buffer
/// returned; join the thread to know the buffer is whole.
pub fn collect(
    mut from: impl Read + Send + 'static,
) -> (Arc<Mutex<Vec<u8>>>, thread::JoinHandle<()>) {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let b = buf.clone();
    let reader = thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = from.read(&mut chunk) {
            if n == 0 {
                break;
            }
            b.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    });
    (buf, reader)
}

/// `cmd`'s executable as found on PATH, links resolved: the path the sensor reports.
pub fn real_exe(cmd: &str) -> Result<String> {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .with_context(|| format!("looking up {cmd}"))?;
    let path = String::from_utf8(out.stdout).with_context(|| format!("the path of {cmd}"))?;
    let real = std::fs::canonicalize(path.trim())
        .with_context(|| format!("resolving {cmd} ({path:?})"))?;
    Ok(real.to_string_lossy().into_owned())
}

/// A `kB` field of /proc/PID/status (`VmRSS`, `VmHWM`, ...).
pub fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in {path}"))
}

/// (VmRSS, VmHWM) of `pid`, KiB.
pub fn memory_kib(pid: u32) -> Result<(u64, u64)> {
    Ok((status_kib(pid, "VmRSS")?, status_kib(pid, "VmHWM")?))
}

/// The capabilities a running sensor keeps once its programs are attached, as a mask:
/// CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH (/proc of every process, files whatever their
/// modes), and CAP_BPF on kernels before 6.5, whose bpf() syscall entry refuses every
/// command, map access on an open fd included, without it when
/// kernel.unprivileged_bpf_disabled is set (6.5 moved that check to map and program
/// creation).
pub fn kept_capabilities() -> Result<u64> {
    let mut mask = (1 << cap_number("CAP_SYS_PTRACE")?) | (1 << cap_number("CAP_DAC_READ_SEARCH")?);
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")?;
    let mut parts = release.trim().split(['.', '-']);
    let major: u32 = parts
        .next()
        .and_then(|p| p.parse().ok())
        .context("kernel release")?;
    let minor: u32 = parts
        .next()
        .and_then(|p| p.parse().ok())
        .context("kernel release")?;
    let unpriv_disabled = std::fs::read_to_string("/proc/sys/kernel/unprivileged_bpf_disabled")
        .map(|v| v.trim() != "0")
        .unwrap_or(true);
    if (major, minor) < (6, 5) && unpriv_disabled {
        mask |= 1 << cap_number("CAP_BPF")?;
    }
    Ok(mask)
}

/// CapInh, CapPrm, CapEff, CapBnd and CapAmb of process `pid`, from its /proc status.
pub fn capability_sets(pid: u32) -> Result<std::collections::HashMap<String, u64>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .filter(|l| l.starts_with("Cap"))
        .map(|l| {
            let (k, v) = l.split_once(':').context("a Cap line")?;
            let v = u64::from_str_radix(v.trim(), 16).context("capability mask")?;
            Ok((k.to_string(), v))
        })
        .collect()
}

/// A capability's number (linux/capability.h), for the names the shipped manifests use.
pub fn cap_number(name: &str) -> Result<u32> {
    Ok(match name {
        "CAP_DAC_READ_SEARCH" => 2,
        "CAP_SYS_PTRACE" => 19,
        "CAP_SYS_ADMIN" => 21,
        "CAP_SYS_RESOURCE" => 24,
        "CAP_PERFMON" => 38,
        "CAP_BPF" => 39,
        other => bail!("capability {other} is new to the tests: add its number"),
    })
}

/// A process the test started, killed and reaped on drop, so a failing test leaves no
/// listener, storm or holder behind.
pub struct Running(pub Child);

impl Running {
    /// Starts `cmd`; `what` names it in the error.
    pub fn spawn(mut cmd: Command, what: &str) -> Result<Self> {
        Ok(Self(
            cmd.spawn().with_context(|| format!("starting {what}"))?,
        ))
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

//! `cargo xtask vmtest`: the real-kernel integration tests on the kernels users run, each
//! booted once in a VM (virtme-ng under qemu, sharing this machine's filesystem), with
//! every chosen connect hook forced in turn in that one boot.
//!
//! Host side: install what is missing (qemu, kmod, busybox, bpftool through apt; virtme-ng
//! in a venv of the project's; the pinned kernel packages, cached outside the repository),
//! build the release sensor and the test executables, boot each kernel with a hard
//! timeout, print each (kernel, hook) block's test output and a summary table.
//!
//! Guest side (`xtask vm-guest PLAN`, run inside the VM, or on this machine for `host`):
//! `sensor check`, the BTF offsets cross-checked against bpftool, then the test
//! executables once per hook with `SENSOR_PROBE` set; results land as JSON in a
//! directory shared read-write with the host.

mod bpftool;
mod guest;
mod host;
mod report;

use bpftool::offsets_here;
pub use guest::guest;
use host::{
    Accel, Booted, boot, ensure_bpftool, ensure_vm_tools, prepare_kernel, probe_kvm, probes,
    suites, test_binaries,
};
use report::{report_kernel, summary};

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

/// A kernel the matrix boots: a Debian package, pinned by name. Bump them here and only
/// here (`apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]*-amd64$'`).
struct Kernel {
    /// What `--kernel` calls it.
    label: &'static str,
    package: &'static str,
    /// Who runs it.
    users: &'static str,
}

const KERNELS: [Kernel; 2] = [
    Kernel {
        label: "6.1",
        package: "linux-image-6.1.0-50-amd64",
        users: "Debian 12 (bookworm)",
    },
    Kernel {
        label: "6.12",
        package: "linux-image-6.12.101+deb12-amd64",
        users: "Debian 13 (trixie), Debian 12 backports",
    },
];

/// virtme-ng, pinned, installed with pip into [`venv`].
const VIRTME_NG: &str = "virtme-ng==1.42";
/// Downloads, the venv and extracted kernels: outside the repository, kept across runs.
const CACHE: &str = "/var/cache/t1571-sensor";
/// Host programs the VM runner needs: (a file that must exist, the Debian package).
const VM_PACKAGES: &[(&[&str], &str)] = &[
    (&["/usr/bin/qemu-system-x86_64"], "qemu-system-x86"),
    (
        &["/usr/sbin/modprobe", "/sbin/modprobe", "/usr/bin/kmod"],
        "kmod",
    ),
    (&["/bin/busybox", "/usr/bin/busybox"], "busybox-static"),
    (&["/usr/sbin/bpftool", "/usr/bin/bpftool"], "bpftool"),
    (&["/usr/bin/python3"], "python3"),
];
/// Guest memory: the tests' sensors, python3 and gcc fit comfortably.
const VM_MEMORY: &str = "2G";
/// Processes in the attribution burst inside an emulated (TCG) VM; 2000 with KVM or on
/// the host. `SENSOR_TEST_BURST` overrides.
const TCG_BURST: u32 = 200;
/// Hard limit per VM boot, whole test run included; `VMTEST_TIMEOUT` (seconds) overrides.
const VM_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Tests run with each forced hook by default (test binary, exact test names): what
/// depends on the connect hook's own reads. The Atomic cases (IPv4 and IPv6 addresses,
/// ports, pid, parent, user from the hook's record), a short-lived process attributed
/// from the kernel's exec record (the hook's process key must match it), and a clean
/// exit with no program left behind. The in-kernel filter and fold, which every connect
/// hook runs (a benign storm filtered and counted, a reload changing what passes, a
/// flood folded with exact counts).
const HOOK_SET: &[(&str, &[&str])] = &[
    (
        "matrix",
        &["one_sensor_per_hook_atomic_cases_kernel_attribution_clean_exit"],
    ),
    ("filter", &["one_sensor_filter_storm_reload_and_flood"]),
];
/// Once per kernel, with no hook forced: `sensor check` reports every hook and names
/// auto's pick, which is the one alerts carry; what depends on the lifecycle hooks
/// rather than the connect hook (a burst of short-lived processes, a fileless one, a
/// connect from a thread); the portability tests (no tracefs mounted, cgroup v1); the
/// adversary tests that bend exit and exec (a leaderless process, an exec right after a
/// connect) and listeners per network namespace.
/// A sensor start costs about a minute under emulation, so the matrix's own tests
/// (`tests/tests/matrix.rs`) check in one sensor's lifetime what the other files check
/// with a sensor each; `--full` runs every test. Timing-sensitive tests (beacon
/// intervals) and benchmarks stay out of the default set.
const AUTO_SET: &[(&str, &[&str])] = &[
    ("end_to_end", &["check_reports_the_hook_and_exits_zero"]),
    (
        "matrix",
        &[
            "one_sensor_per_hook_atomic_cases_kernel_attribution_clean_exit",
            "one_sensor_lifecycle_burst_fileless_and_thread",
        ],
    ),
    ("portable", &[]),
    ("filter", &["all_sees_what_the_filter_would_drop"]),
    // Exit and exec semantics (signal->live at exit, the image at connect) and the
    // socket's namespace, read at this kernel's offsets.
    ("adversary_kernel", &[]),
    // Protocol on the port: the egress hook and the flow table on this kernel (where the
    // hook cannot load, the sensor must say so and run without it).
    ("protocol", &[]),
];

#[derive(clap::Args)]
pub struct Args {
    /// Kernels, comma-separated: 6.1, 6.12 (booted in VMs), host (this machine's own
    /// kernel, no VM), or all.
    #[arg(long, default_value = "all")]
    kernel: String,
    /// Hooks, comma-separated: auto (whatever selection picks), fentry, kprobe, tp-btf,
    /// tracepoint, or all (auto and every hook this sensor build offers).
    #[arg(long, default_value = "all")]
    probe: String,
    /// Every integration test, timing-sensitive ones included, in every block.
    #[arg(long)]
    full: bool,
    /// The guest's architecture: x86_64, or arm64 (Debian's arm64 kernels under
    /// qemu-system-aarch64; see xtask/src/arm64).
    #[arg(long, default_value = "x86_64")]
    arch: String,
}

impl Args {
    /// The default matrix `cargo xtask test` runs after the host's own tests.
    pub fn default_matrix() -> Self {
        Self {
            kernel: "6.1,6.12".into(),
            probe: "all".into(),
            full: false,
            arch: "x86_64".into(),
        }
    }
}

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Cannot test at all here: SKIPPED with the reason, or a failure under CI=true.
fn skip(why: &str) -> Result<()> {
    if ci() {
        bail!("vmtest cannot run here and CI=true: {why}");
    }
    println!("\nvmtest SKIPPED: {why}\n");
    Ok(())
}

fn cache() -> PathBuf {
    PathBuf::from(CACHE)
}

fn venv() -> PathBuf {
    cache().join("venv")
}

fn log(msg: &str) {
    eprintln!("vmtest: {msg}");
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("vmtest: {cmd:?}");
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A kernel ready to boot.
struct Prepared {
    label: String,
    users: String,
    package: String,
    /// `uname -r` of the kernel.
    release: String,
    vmlinuz: PathBuf,
}

/// The whole matrix. `root` is the workspace; `xtask` the running xtask executable,
/// which the guest runs too.
pub fn vmtest(root: &Path, args: &Args) -> Result<()> {
    match args.arch.as_str() {
        "x86_64" | "amd64" => {}
        "arm64" | "aarch64" if !args.full => {
            return crate::arm64::vmtest(root, &crate::arm64::Args::new(&args.kernel, &args.probe));
        }
        "arm64" | "aarch64" => {
            bail!("--full needs the test executables: the arm64 guest runs the per-hook case only")
        }
        other => bail!("--arch {other}: x86_64 or arm64"),
    }
    let started = Instant::now();
    let mut kernels: Vec<&str> = Vec::new();
    for k in args.kernel.split(',').map(str::trim) {
        match k {
            "all" => kernels.extend(KERNELS.iter().map(|k| k.label).chain(["host"])),
            "host" => kernels.push("host"),
            k if KERNELS.iter().any(|x| x.label == k) => kernels.push(k),
            k => bail!(
                "--kernel {k}: expected one of {}, host, all",
                KERNELS.map(|k| k.label).join(", ")
            ),
        }
    }
    kernels.dedup();
    let wants_vm = kernels.iter().any(|&k| k != "host");
    if !is_root() {
        return skip("needs root (installs qemu and kernels, loads eBPF programs)");
    }

    crate::toolchain::ensure(false)?;
    crate::toolchain::ensure_test_programs()?;
    if wants_vm && let Err(e) = ensure_vm_tools() {
        return skip(&format!("the VM tools could not be installed: {e:#}"));
    }
    ensure_bpftool()?;
    // The tests use the test hooks (`--test-stall-on-usr1`).
    crate::build_sensor_with_test_hooks(root)?;
    crate::cargo(root, &["build", "-p", "xtask"])?;
    let tests = test_binaries(root)?;
    let sensor = root.join("target/release/t1571-sensor");
    let xtask = root.join("target/debug/xtask");
    let probes = probes(&sensor, &args.probe)?;
    let out_root = root.join("target/vmtest");
    let _ = std::fs::remove_dir_all(&out_root);
    std::fs::create_dir_all(&out_root)
        .with_context(|| format!("creating {}", out_root.display()))?;

    let mut prepared = Vec::new();
    for k in KERNELS.iter().filter(|k| kernels.contains(&k.label)) {
        prepared.push(prepare_kernel(k)?);
    }
    let accel = if wants_vm {
        match prepared.first() {
            Some(k) => probe_kvm(k, &out_root.join("kvm-probe")),
            None => Accel::Tcg("no kernel".into()),
        }
    } else {
        Accel::Tcg("no VM".into())
    };
    if wants_vm {
        log(&format!("accelerator: {}", accel.describe()));
    }

    // Plans first, then every VM at once (each guest runs its tests one at a time, so
    // the VMs share the host's CPUs between them), then this machine's kernel.
    let mut plans = Vec::new();
    for k in &kernels {
        let out = out_root.join(k);
        std::fs::create_dir_all(&out)?;
        let vm = prepared.iter().find(|p| p.label == *k);
        let burst = match (vm, &accel) {
            (Some(_), Accel::Tcg(_)) => TCG_BURST,
            _ => 2000,
        };
        let plan = Plan {
            kernel: k.to_string(),
            out: out.clone(),
            sensor: sensor.clone(),
            probes: probes.clone(),
            suites: suites(&tests, args.full),
            burst: std::env::var("SENSOR_TEST_BURST")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(burst),
            // The pinned kernels must offer every hook; this machine offers what it offers.
            every_hook_expected: vm.is_some(),
        };
        let plan_path = out.join("plan.json");
        std::fs::write(&plan_path, plan.to_json().to_string())?;
        plans.push((*k, vm, out, plan_path));
    }
    // The host's CPUs shared out between the VMs (measured: 6.1 and 6.12 side by side
    // with one vCPU each on 2 cores).
    let vms = plans.iter().filter(|p| p.1.is_some()).count().max(1);
    let cpus = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .div_ceil(vms);
    let timeout = vm_timeout();
    let mut outcomes: Vec<Option<(Result<Booted>, Duration)>> = Vec::new();
    std::thread::scope(|scope| {
        let handles: Vec<_> = plans
            .iter()
            .map(|(_, vm, out, plan_path)| {
                vm.map(|p| {
                    log(&format!(
                        "{}: booting {} ({}, as in {}) with {}, {cpus} vCPU(s)",
                        p.label,
                        p.release,
                        p.package,
                        p.users,
                        accel.describe()
                    ));
                    let accel = &accel;
                    let xtask = &xtask;
                    scope.spawn(move || {
                        let t0 = Instant::now();
                        let r = boot(p, accel, cpus, out, xtask, plan_path, timeout);
                        (r, t0.elapsed())
                    })
                })
            })
            .collect();
        for h in handles {
            outcomes.push(h.map(|h| {
                h.join().unwrap_or_else(|_| {
                    (Err(anyhow::anyhow!("VM thread panicked")), Duration::ZERO)
                })
            }));
        }
    });
    let mut rows = Vec::new();
    for ((k, vm, out, plan_path), outcome) in plans.iter().zip(outcomes) {
        let (outcome, elapsed) = match outcome {
            Some(o) => o,
            None => {
                log("host: running on this machine's kernel (no VM)");
                let t0 = Instant::now();
                (guest(plan_path).map(|()| Booted::Finished), t0.elapsed())
            }
        };
        rows.push(report_kernel(k, *vm, &accel, out, outcome, elapsed));
    }
    let host_offsets = if kernels.contains(&"host") {
        None
    } else {
        // Host offsets for the comparison even when its tests are not run: cheap.
        let out = out_root.join("host-layout");
        std::fs::create_dir_all(&out)?;
        Some(offsets_here(&sensor, &out))
    };
    let failed = summary(&rows, host_offsets, started.elapsed());
    if rows.iter().all(|r| r.not_booted) && wants_vm {
        return skip("qemu could not boot any kernel (see target/vmtest/*/console.log)");
    }
    if failed {
        bail!(
            "vmtest failed (summary above; logs in {})",
            out_root.display()
        );
    }
    Ok(())
}

fn vm_timeout() -> Duration {
    std::env::var("VMTEST_TIMEOUT")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(VM_TIMEOUT, Duration::from_secs)
}

/// What the guest runner is told: written as JSON by the host, read by `guest`.
struct Plan {
    kernel: String,
    out: PathBuf,
    sensor: PathBuf,
    probes: Vec<Option<String>>,
    suites: Value,
    burst: u32,
    every_hook_expected: bool,
}

impl Plan {
    fn to_json(&self) -> Value {
        json!({
            "kernel": self.kernel,
            "out": self.out,
            "sensor": self.sensor,
            "probes": self.probes,
            "suites": self.suites,
            "burst": self.burst,
            "every_hook_expected": self.every_hook_expected,
        })
    }
}

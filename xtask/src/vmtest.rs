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

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
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
}

impl Args {
    /// The default matrix `cargo xtask test` runs after the host's own tests.
    pub fn default_matrix() -> Self {
        Self {
            kernel: "6.1,6.12".into(),
            probe: "all".into(),
            full: false,
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

// ---------------------------------------------------------------------------------------
// Host side.

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
    crate::cargo(
        root,
        &[
            "build",
            "--release",
            "-p",
            "sensor",
            "--features",
            "test-hooks",
        ],
    )?;
    crate::cargo(root, &["build", "-p", "xtask"])?;
    let tests = test_binaries(root)?;
    let sensor = root.join("target/release/sensor");
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

fn have_any(paths: &[&str]) -> bool {
    paths.iter().any(|p| Path::new(p).exists())
}

fn apt_install(packages: &[&str]) -> Result<()> {
    if packages.is_empty() {
        return Ok(());
    }
    if !Path::new("/usr/bin/apt-get").exists() {
        bail!(
            "{} missing and this is not a Debian-family system: install them first",
            packages.join(", ")
        );
    }
    run(Command::new("apt-get").args(["update", "-q"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn ensure_bpftool() -> Result<()> {
    if have_any(&["/usr/sbin/bpftool", "/usr/bin/bpftool"]) {
        return Ok(());
    }
    apt_install(&["bpftool"])
}

/// qemu, kmod, busybox, bpftool via apt (apt-get update only when something is missing);
/// virtme-ng in the project's venv.
fn ensure_vm_tools() -> Result<()> {
    let mut missing: Vec<&str> = VM_PACKAGES
        .iter()
        .filter(|(files, _)| !have_any(files))
        .map(|&(_, p)| p)
        .collect();
    // Debian's python3 needs python3-venv for `-m venv` (ensurepip).
    if !Path::new("/usr/bin/python3").exists()
        || !Command::new("/usr/bin/python3")
            .args(["-c", "import ensurepip, venv"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    {
        missing.push("python3-venv");
    }
    apt_install(&missing)?;

    let vng = venv().join("bin/vng");
    let pinned = VIRTME_NG.rsplit("==").next().unwrap_or_default();
    let current = Command::new(&vng)
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    if current.as_deref().is_some_and(|v| v.contains(pinned)) {
        return Ok(());
    }
    std::fs::create_dir_all(cache())?;
    if !venv().join("bin/pip").exists() {
        run(Command::new("/usr/bin/python3")
            .args(["-m", "venv"])
            .arg(venv()))?;
    }
    run(Command::new(venv().join("bin/pip")).args([
        "install",
        "-q",
        "--disable-pip-version-check",
        VIRTME_NG,
    ]))
}

/// The pinned package downloaded (once) and extracted (once), its modules copied where
/// the guest's modprobe looks: /lib/modules/RELEASE.
fn prepare_kernel(k: &Kernel) -> Result<Prepared> {
    let dir = cache().join("kernels");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let find_deb = || -> Option<PathBuf> {
        std::fs::read_dir(&dir).ok()?.flatten().find_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (name.starts_with(&format!("{}_", k.package)) && name.ends_with(".deb"))
                .then(|| e.path())
        })
    };
    let deb = match find_deb() {
        Some(d) => d,
        None => {
            let download = || {
                run(Command::new("apt-get")
                    .args(["download", "-q", k.package])
                    .current_dir(&dir))
            };
            if download().is_err() {
                // Stale package lists: refresh once and retry.
                run(Command::new("apt-get").args(["update", "-q"]))?;
                download().with_context(|| {
                    format!(
                        "downloading {} (no longer in the archive? pick a current one with apt-cache search and update KERNELS in xtask/src/vmtest.rs)",
                        k.package
                    )
                })?;
            }
            find_deb().with_context(|| format!("{} downloaded but not found", k.package))?
        }
    };
    let release = k.package.trim_start_matches("linux-image-").to_string();
    let tree = dir.join(&release);
    let vmlinuz = tree.join(format!("boot/vmlinuz-{release}"));
    let modules = tree.join(format!("lib/modules/{release}"));
    if !vmlinuz.exists() || !modules.exists() {
        let _ = std::fs::remove_dir_all(&tree);
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree))?;
    }
    if !vmlinuz.exists() || !modules.exists() {
        bail!(
            "{} has no {} or {}",
            deb.display(),
            vmlinuz.display(),
            modules.display()
        );
    }
    // The guest sees this machine's /lib/modules, not the cache (virtme-ng overlays /var):
    // a copy, marked as ours. A kernel really installed here keeps its own modules.
    let installed = PathBuf::from("/lib/modules").join(&release);
    let mark = installed.join(".t1571-sensor-vmtest");
    if std::fs::symlink_metadata(&installed).is_ok_and(|m| m.file_type().is_symlink()) {
        std::fs::remove_file(&installed)?;
    }
    if !installed.exists() {
        std::fs::create_dir_all("/lib/modules")?;
        let partial = PathBuf::from("/lib/modules").join(format!(".{release}.partial"));
        let _ = std::fs::remove_dir_all(&partial);
        run(Command::new("cp").arg("-a").arg(&modules).arg(&partial))?;
        std::fs::write(
            partial.join(".t1571-sensor-vmtest"),
            format!("{}\n", k.package),
        )?;
        std::fs::rename(&partial, &installed)
            .with_context(|| format!("installing {}", installed.display()))?;
    } else if !mark.exists() {
        log(&format!(
            "{}: using the modules installed in {}",
            k.label,
            installed.display()
        ));
    }
    // virtme-ng takes the modules from the nearest `lib/modules` above the kernel image
    // (here the extracted tree, which the guest cannot see) unless there is none: boot a
    // copy kept where no parent has one, so the guest uses its /lib/modules.
    let boot_dir = dir.join("boot");
    std::fs::create_dir_all(&boot_dir)?;
    let image = boot_dir.join(format!("vmlinuz-{release}"));
    if !image.exists() {
        std::fs::copy(&vmlinuz, &image)
            .with_context(|| format!("copying {}", vmlinuz.display()))?;
    }
    let vmlinuz = image;
    Ok(Prepared {
        label: k.label.into(),
        users: k.users.into(),
        package: k.package.into(),
        release,
        vmlinuz,
    })
}

#[derive(Clone)]
enum Accel {
    Kvm,
    /// Emulation, and why not KVM.
    Tcg(String),
}

impl Accel {
    fn describe(&self) -> String {
        match self {
            Accel::Kvm => "KVM".into(),
            Accel::Tcg(why) => format!("TCG emulation ({why})"),
        }
    }

    fn label(&self) -> &'static str {
        match self {
            Accel::Kvm => "KVM",
            Accel::Tcg(_) => "TCG",
        }
    }
}

/// Boots `k` once with KVM for a trivial command, with a short timeout (nested KVM can
/// hang or fail); TCG when that does not work.
fn probe_kvm(k: &Prepared, dir: &Path) -> Accel {
    let usable = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !usable {
        return Accel::Tcg("/dev/kvm not usable".into());
    }
    let _ = std::fs::create_dir_all(dir);
    let marker = dir.join("kvm-ok");
    let cmd = format!("echo ok > {}", shell_quote(&marker.to_string_lossy()));
    let r = vng(k, &Accel::Kvm, 1, dir, &cmd, Duration::from_secs(45));
    match r {
        Ok(Booted::Finished) if marker.exists() => Accel::Kvm,
        Ok(Booted::TimedOut) => Accel::Tcg("KVM probe boot timed out after 45 s".into()),
        Ok(Booted::Finished) => {
            let console = std::fs::read_to_string(dir.join("console.log")).unwrap_or_default();
            let last = console.lines().rev().find(|l| !l.trim().is_empty());
            Accel::Tcg(format!(
                "KVM probe boot did not run its command: {}",
                last.unwrap_or("no console output").trim()
            ))
        }
        Err(e) => Accel::Tcg(format!("KVM probe failed: {e:#}")),
    }
}

enum Booted {
    Finished,
    TimedOut,
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Runs `command` in a VM booted from `k`, sharing this machine's filesystem read-only
/// (writable: `out`, and a throwaway overlay on /var/lib for the tests' scratch dirs).
/// No network device. Kills the whole VM at `timeout`. Console in `out/console.log`.
fn vng(
    k: &Prepared,
    accel: &Accel,
    cpus: usize,
    out: &Path,
    command: &str,
    timeout: Duration,
) -> Result<Booted> {
    let console = std::fs::File::create(out.join("console.log"))?;
    let path = format!(
        "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        venv().join("bin").display()
    );
    let mut cmd = Command::new(venv().join("bin/vng"));
    cmd.arg("--run")
        .arg(&k.vmlinuz)
        .args(["--force-9p", "--user", "root", "--memory", VM_MEMORY, "-v"])
        .args(["--overlay-rwdir", "/var/lib"])
        .arg(format!("--cpus={cpus}"))
        .arg(format!("--rwdir={}", out.display()));
    if matches!(accel, Accel::Tcg(_)) {
        cmd.arg("--disable-kvm");
    }
    cmd.arg("--")
        .arg(command)
        .env("PATH", path)
        .stdin(Stdio::null())
        .stdout(console.try_clone()?)
        .stderr(console)
        .process_group(0);
    let mut child = cmd.spawn().context("starting vng (virtme-ng)")?;
    let deadline = Instant::now() + timeout;
    loop {
        if child.try_wait()?.is_some() {
            // vng's own exit status reflects its console mode, not the command: the
            // command's results are the files it wrote.
            return Ok(Booted::Finished);
        }
        if Instant::now() > deadline {
            // SAFETY: kill(2) on the process group we created (vng and its qemu).
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            return Ok(Booted::TimedOut);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn boot(
    k: &Prepared,
    accel: &Accel,
    cpus: usize,
    out: &Path,
    xtask: &Path,
    plan: &Path,
    timeout: Duration,
) -> Result<Booted> {
    let cmd = format!(
        "{} vm-guest {}",
        shell_quote(&xtask.to_string_lossy()),
        shell_quote(&plan.to_string_lossy())
    );
    vng(k, accel, cpus, out, &cmd, timeout)
}

/// Test executables built by `cargo test --no-run`: name -> path.
fn test_binaries(root: &Path) -> Result<BTreeMap<String, PathBuf>> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = output(
        Command::new(cargo)
            // The flags of `cargo xtask test`'s own run, so its artifacts are reused
            // (building the test package alone unifies features differently: a rebuild).
            .args([
                "test",
                "--workspace",
                "--exclude",
                "sensor-ebpf",
                "--features",
                "sensor/test-hooks",
                "--no-run",
                "--message-format=json",
            ])
            .current_dir(root)
            .stderr(Stdio::inherit()),
    )?;
    let mut bins = BTreeMap::new();
    for line in out.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if v["reason"] != "compiler-artifact" || v["profile"]["test"] != true {
            continue;
        }
        let kinds = v["target"]["kind"].as_array().cloned().unwrap_or_default();
        // Integration test targets: only the tests package has them.
        if !kinds.iter().any(|k| k == "test") {
            continue;
        }
        if let (Some(name), Some(exe)) = (v["target"]["name"].as_str(), v["executable"].as_str()) {
            bins.insert(name.to_string(), PathBuf::from(exe));
        }
    }
    if bins.is_empty() {
        bail!("cargo test --no-run built no integration test executables");
    }
    Ok(bins)
}

/// The hooks (values of `--probe`) this sensor build offers, from `sensor run --help`.
fn sensor_probes(sensor: &Path) -> Result<Vec<String>> {
    let help = output(Command::new(sensor).args(["run", "--help"]))?;
    let at = help
        .find("--probe")
        .context("sensor run --help shows no --probe")?;
    let tail = &help[at..];
    let list = tail
        .find("[possible values: ")
        .map(|i| &tail[i + "[possible values: ".len()..])
        .and_then(|t| t.split(']').next())
        .context("sensor run --help lists no --probe values")?;
    Ok(list
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty() && s != "auto")
        .collect())
}

/// `--probe` of vmtest to the blocks to run: None is auto, Some(value) a forced hook in
/// the sensor's own spelling.
fn probes(sensor: &Path, want: &str) -> Result<Vec<Option<String>>> {
    let offered = sensor_probes(sensor)?;
    let norm = |s: &str| s.replace('-', "_");
    let mut out = Vec::new();
    for p in want.split(',').map(str::trim) {
        match p {
            "all" => {
                out.push(None);
                out.extend(offered.iter().cloned().map(Some));
            }
            "auto" => out.push(None),
            p => match offered.iter().find(|o| norm(o) == norm(p)) {
                Some(o) => out.push(Some(o.clone())),
                None => bail!(
                    "--probe {p}: this sensor build offers auto, {}",
                    offered.join(", ")
                ),
            },
        }
    }
    out.dedup();
    Ok(out)
}

/// Which tests run in each block.
fn suites(bins: &BTreeMap<String, PathBuf>, full: bool) -> Value {
    let set = |s: &[(&str, &[&str])]| -> Value {
        s.iter()
            .filter_map(|(bin, tests)| {
                let exe = bins.get(*bin)?;
                Some(json!({"name": bin, "exe": exe, "tests": tests}))
            })
            .collect()
    };
    if full {
        let all: Vec<Value> = bins
            .iter()
            .map(|(name, exe)| json!({"name": name, "exe": exe, "tests": []}))
            .collect();
        json!({"auto": all, "hook": all})
    } else {
        json!({"auto": set(AUTO_SET), "hook": set(HOOK_SET)})
    }
}

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

/// One kernel's line in the summary.
struct Row {
    kernel: String,
    release: String,
    accel: String,
    hooks: Vec<(String, String)>,
    auto: String,
    lifecycle: String,
    result: String,
    failed: bool,
    not_booted: bool,
    offsets: Option<Value>,
    elapsed: Duration,
}

fn report_kernel(
    label: &str,
    vm: Option<&Prepared>,
    accel: &Accel,
    out: &Path,
    outcome: Result<Booted>,
    elapsed: Duration,
) -> Row {
    let mut row = Row {
        kernel: label.into(),
        release: vm.map(|p| p.release.clone()).unwrap_or_default(),
        accel: if vm.is_some() {
            accel.label().into()
        } else {
            "none (host)".into()
        },
        hooks: Vec::new(),
        auto: "-".into(),
        lifecycle: "-".into(),
        result: String::new(),
        failed: true,
        not_booted: false,
        offsets: None,
        elapsed,
    };
    let result = std::fs::read_to_string(out.join("result.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok());
    let Some(r) = result else {
        let started = out.join("started").exists();
        row.not_booted = vm.is_some() && !started;
        row.result = match (&outcome, started) {
            (Err(e), _) => format!("FAILED: {e:#}"),
            (Ok(Booted::TimedOut), _) => format!("FAILED: timed out after {elapsed:.0?}"),
            (Ok(Booted::Finished), true) => "FAILED: the guest runner stopped early".into(),
            (Ok(Booted::Finished), false) => "FAILED: the guest never started".into(),
        };
        println!("\n==== kernel {label}: {}", row.result);
        if let Ok(c) = std::fs::read_to_string(out.join("console.log")) {
            let tail: Vec<&str> = c.lines().rev().take(40).collect();
            println!(
                "---- last console lines ({})",
                out.join("console.log").display()
            );
            for l in tail.into_iter().rev() {
                println!("{l}");
            }
        }
        return row;
    };
    row.release = r["release"].as_str().unwrap_or_default().to_string();
    row.auto = r["auto"].as_str().unwrap_or("none").to_string();
    row.lifecycle = r["lifecycle"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "none".into());
    row.offsets = Some(r["offsets"].clone());
    let mut failed = Vec::new();
    for b in r["blocks"].as_array().into_iter().flatten() {
        let probe = b["probe"].as_str().unwrap_or("auto").to_string();
        let status = b["status"].as_str().unwrap_or("?").to_string();
        println!(
            "\n==== kernel {label} ({}), hook {probe}: {status}",
            row.release
        );
        if let Some(text) = b["log"]
            .as_str()
            .and_then(|f| std::fs::read_to_string(out.join(f)).ok())
        {
            print!("{text}");
        }
        if status.starts_with("FAIL") {
            failed.push(probe.clone());
        }
        row.hooks.push((probe, status));
    }
    if let Some(m) = r["offset_mismatches"].as_array().filter(|m| !m.is_empty()) {
        println!("\n==== kernel {label}: sensor and bpftool disagree on BTF offsets: {m:?}");
        failed.push("offsets".into());
    }
    if let Some(e) = r["offsets_error"].as_str() {
        println!("\n==== kernel {label}: BTF offsets not cross-checked: {e}");
        failed.push("offsets".into());
    }
    if matches!(outcome, Ok(Booted::TimedOut)) {
        failed.push("timeout".into());
    }
    row.failed = !failed.is_empty();
    row.result = if failed.is_empty() {
        "pass".into()
    } else {
        format!("FAIL ({})", failed.join(", "))
    };
    row
}

/// Prints the summary and the offsets table; true when anything failed.
fn summary(rows: &[Row], host_offsets: Option<Value>, elapsed: Duration) -> bool {
    let mut s = String::new();
    let _ = writeln!(s, "\n==== vmtest summary ({elapsed:.0?})");
    let _ = writeln!(
        s,
        "| kernel | accel | hooks tried | auto chose | lifecycle hooks | result | time |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|");
    for r in rows {
        let hooks: Vec<String> = r.hooks.iter().map(|(h, st)| format!("{h}: {st}")).collect();
        let _ = writeln!(
            s,
            "| {} {} | {} | {} | {} | {} | {} | {:.0?} |",
            r.kernel,
            r.release,
            r.accel,
            if hooks.is_empty() {
                "-".into()
            } else {
                hooks.join("; ")
            },
            r.auto,
            r.lifecycle,
            r.result,
            r.elapsed
        );
    }
    // Offsets the sensor computed from each kernel's BTF, side by side.
    let mut cols: Vec<(String, Value)> = rows
        .iter()
        .filter_map(|r| {
            r.offsets
                .clone()
                .filter(Value::is_object)
                .map(|o| (format!("{} {}", r.kernel, r.release), o))
        })
        .collect();
    if let Some(h) = host_offsets.filter(|v| v["offsets"].is_object()) {
        cols.push((
            format!("host {}", h["release"].as_str().unwrap_or_default()),
            h["offsets"].clone(),
        ));
    }
    if let Some((_, first)) = cols.first() {
        let _ = writeln!(
            s,
            "\nBTF offsets read by the sensor (bytes; bpftool agreed on each unless reported above):"
        );
        let _ = writeln!(
            s,
            "| member | {} | differs |",
            cols.iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(" | ")
        );
        let _ = writeln!(s, "|---|{}---|", "---|".repeat(cols.len()));
        let names: Vec<String> = first
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        for name in names {
            let vals: Vec<String> = cols
                .iter()
                .map(|(_, o)| match &o[&name] {
                    Value::Null => "?".into(),
                    v => v.to_string(),
                })
                .collect();
            let differs = vals.windows(2).any(|w| w[0] != w[1]);
            let _ = writeln!(
                s,
                "| {name} | {} | {} |",
                vals.join(" | "),
                if differs { "yes" } else { "" }
            );
        }
    }
    println!("{s}");
    rows.iter().any(|r| r.failed)
}

// ---------------------------------------------------------------------------------------
// Guest side: runs inside the VM (or on this machine for `host`).

/// `sensor check` parsed: every connect hook with whether it loads here, auto's pick,
/// the lifecycle hooks that attach.
struct Check {
    text: String,
    hooks: Vec<(String, Result<(), String>)>,
    auto: Option<String>,
    lifecycle: Vec<String>,
}

fn parse_check(text: &str) -> Check {
    let mut hooks = Vec::new();
    let mut lifecycle = Vec::new();
    let mut auto = None;
    for line in text.lines() {
        let Some((name, status)) = line.split_once(char::is_whitespace) else {
            continue;
        };
        let status = status.trim();
        if name == "verdict" {
            auto = status.split("using ").nth(1).map(|h| h.trim().to_string());
        } else if (name.ends_with("/tcp_connect") || name.ends_with("/inet_sock_set_state"))
            // The state hook is listed again below the lifecycle hooks (listen records).
            && !hooks.iter().any(|(n, _)| n == name)
        {
            let r = if status.starts_with("ok") {
                Ok(())
            } else {
                Err(status.to_string())
            };
            hooks.push((name.to_string(), r));
        } else if name.contains("sched_process_") && status.starts_with("ok") {
            lifecycle.push(name.to_string());
        }
    }
    Check {
        text: text.to_string(),
        hooks,
        auto,
        lifecycle,
    }
}

/// The check's hook for `--probe value` (`tp_btf` names `tp_btf/...`).
fn hook_of<'a>(check: &'a Check, probe: &str) -> Option<&'a (String, Result<(), String>)> {
    let prefix = format!("{}/", probe.replace('-', "_"));
    check.hooks.iter().find(|(h, _)| h.starts_with(&prefix))
}

const GUEST_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The guest runner: reads the plan, writes `started`, block logs and `result.json` to
/// the plan's output directory.
pub fn guest(plan_path: &Path) -> Result<()> {
    let plan: Value = serde_json::from_str(
        &std::fs::read_to_string(plan_path)
            .with_context(|| format!("reading {}", plan_path.display()))?,
    )
    .context("parsing the plan")?;
    let out = PathBuf::from(plan["out"].as_str().context("plan: out")?);
    let sensor = PathBuf::from(plan["sensor"].as_str().context("plan: sensor")?);
    std::fs::write(out.join("started"), "")?;
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    eprintln!("vm-guest: kernel {release}");

    // The tests' veth pairs: a module on distribution kernels, and the guest's first
    // `ip link add type veth` does not load it by itself.
    let modprobe = Command::new("modprobe")
        .arg("veth")
        .env("PATH", GUEST_PATH)
        .output();
    match modprobe {
        Ok(o) if o.status.success() => {}
        Ok(o) => eprintln!(
            "vm-guest: modprobe veth: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => eprintln!("vm-guest: modprobe veth: {e}"),
    }
    let check_out = Command::new(&sensor)
        .arg("check")
        .env("PATH", GUEST_PATH)
        .output()
        .context("running sensor check")?;
    let check = parse_check(&String::from_utf8_lossy(&check_out.stdout));
    std::fs::write(out.join("check.txt"), &check.text)?;

    let (offsets, mismatches, offsets_error) = match offsets_here(&sensor, &out) {
        v if v["error"].is_string() => (Value::Null, Vec::new(), v["error"].clone()),
        v => (
            v["offsets"].clone(),
            v["mismatches"].as_array().cloned().unwrap_or_default(),
            Value::Null,
        ),
    };

    let every_hook_expected = plan["every_hook_expected"] == true;
    let mut blocks = Vec::new();
    for p in plan["probes"].as_array().context("plan: probes")? {
        let probe = p.as_str();
        let label = probe.unwrap_or("auto");
        let log_name = format!("{label}.log");
        let mut log = String::new();
        let _ = writeln!(log, "kernel {release}, SENSOR_PROBE={label}");
        let unavailable = match probe {
            None => check
                .auto
                .is_none()
                .then(|| "no hook can be attached".to_string()),
            Some(pv) => match hook_of(&check, pv) {
                None => Some(format!("sensor check does not list --probe {pv}")),
                Some((_, Err(e))) => Some(e.clone()),
                Some((_, Ok(()))) => None,
            },
        };
        let status = if let Some(why) = unavailable {
            let _ = writeln!(log, "hook unavailable on this kernel: {why}");
            let _ = writeln!(log, "sensor check:\n{}", check.text);
            if every_hook_expected {
                format!("FAIL: unavailable: {why}")
            } else {
                "unavailable".into()
            }
        } else {
            let set = if probe.is_none() { "auto" } else { "hook" };
            let mut passed = 0usize;
            let mut problems = Vec::new();
            for suite in plan["suites"][set].as_array().into_iter().flatten() {
                let name = suite["name"].as_str().unwrap_or("?");
                let exe = suite["exe"].as_str().unwrap_or_default();
                let tests: Vec<&str> = suite["tests"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                let mut cmd = Command::new(exe);
                // One at a time: under emulation, parallel tests starve each other's
                // sensors past the harness's start-up guard.
                cmd.arg("--test-threads=1");
                if !tests.is_empty() {
                    cmd.arg("--exact").args(&tests);
                }
                cmd.env("PATH", GUEST_PATH)
                    .env("SENSOR_BIN", &sensor)
                    .env("SENSOR_TEST_BURST", plan["burst"].to_string())
                    .env("RUST_BACKTRACE", "0")
                    .env("RUST_LIB_BACKTRACE", "0");
                match probe {
                    Some(pv) => cmd.env("SENSOR_PROBE", pv),
                    None => cmd.env_remove("SENSOR_PROBE"),
                };
                let t0 = Instant::now();
                let r = cmd.output();
                let _ = writeln!(
                    log,
                    "\n---- {name} {} ({:.1?})",
                    tests.join(" "),
                    t0.elapsed()
                );
                match r {
                    Err(e) => problems.push(format!("{name}: could not run: {e}")),
                    Ok(o) => {
                        let stdout = String::from_utf8_lossy(&o.stdout);
                        let stderr = String::from_utf8_lossy(&o.stderr);
                        log.push_str(&stdout);
                        log.push_str(&stderr);
                        let ran = count_after(&stdout, "running ", " test");
                        let ok = count_after(&stdout, "test result: ok. ", " passed");
                        passed += ok.unwrap_or(0);
                        if !o.status.success() {
                            problems.push(format!("{name}: {}", o.status));
                        } else if !tests.is_empty() && ran != Some(tests.len()) {
                            problems.push(format!(
                                "{name}: ran {ran:?} of {} named tests (renamed?)",
                                tests.len()
                            ));
                        }
                        if stdout.contains("SKIPPED") || stderr.contains("SKIPPED") {
                            problems.push(format!("{name}: a test SKIPPED"));
                        }
                    }
                }
            }
            if problems.is_empty() {
                format!("pass ({passed} tests)")
            } else {
                format!("FAIL: {}", problems.join("; "))
            }
        };
        std::fs::write(out.join(&log_name), &log)?;
        eprintln!("vm-guest: {label}: {status}");
        blocks.push(json!({"probe": label, "status": status, "log": log_name}));
    }
    let result = json!({
        "release": release,
        "auto": check.auto,
        "lifecycle": check.lifecycle,
        "hooks": check.hooks.iter().map(|(h, r)| json!({"hook": h, "ok": r.is_ok()})).collect::<Vec<_>>(),
        "offsets": offsets,
        "offset_mismatches": mismatches,
        "offsets_error": offsets_error,
        "blocks": blocks,
    });
    std::fs::write(out.join("result.json"), result.to_string())?;
    Ok(())
}

/// The number in `text` between `prefix` and `suffix` on the first line that has both.
fn count_after(text: &str, prefix: &str, suffix: &str) -> Option<usize> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(prefix)?;
        rest.split(suffix).next()?.trim().parse().ok()
    })
}

/// This kernel's offsets as the sensor computes them (`sensor check --layout`), each
/// compared with bpftool's reading of the same BTF:
/// `{"release", "offsets": {..}, "mismatches": [..]}` or `{"error"}`.
fn offsets_here(sensor: &Path, out: &Path) -> Value {
    let r = (|| -> Result<Value> {
        let layout: Value =
            serde_json::from_str(&output(Command::new(sensor).args(["check", "--layout"]))?)
                .context("parsing sensor check --layout")?;
        let dump = output(Command::new("bpftool").args([
            "btf",
            "dump",
            "file",
            "/sys/kernel/btf/vmlinux",
            "format",
            "raw",
        ]))?;
        let btf = RawBtf::parse(&dump);
        let mut mismatches = Vec::new();
        let mut compared = serde_json::Map::new();
        for (name, v) in layout["offsets"].as_object().context("no offsets")? {
            let (st, member) = name.split_once('.').context("offset name")?;
            let theirs = btf.member_offset(st, member);
            // start_boottime: kernels before 5.5 name it real_start_time.
            let theirs = theirs.or_else(|| {
                (name == "task_struct.start_boottime")
                    .then(|| btf.member_offset(st, "real_start_time"))
                    .flatten()
            });
            if v.as_u64().map(|x| x as u32) != theirs {
                mismatches.push(json!({"member": name, "sensor": v, "bpftool": theirs}));
            }
            compared.insert(name.clone(), json!({"sensor": v, "bpftool": theirs}));
        }
        let r = json!({
            "release": layout["kernel"],
            "offsets": layout["offsets"],
            "mismatches": mismatches,
        });
        std::fs::write(
            out.join("offsets.json"),
            json!({"release": layout["kernel"], "compared": compared}).to_string(),
        )?;
        Ok(r)
    })();
    r.unwrap_or_else(|e| json!({"error": format!("{e:#}")}))
}

/// `bpftool btf dump ... format raw`, structs and unions with their members: an
/// independent reading of the BTF the sensor parses itself.
struct RawBtf {
    /// id -> (kind, name, members).
    types: BTreeMap<u32, (String, String, Members)>,
}

/// A composite's members: (name, type id, bit offset).
type Members = Vec<(String, u32, u32)>;

impl RawBtf {
    fn parse(dump: &str) -> Self {
        let mut types = BTreeMap::new();
        let mut current: Option<u32> = None;
        for line in dump.lines() {
            if let Some(rest) = line.strip_prefix('[') {
                // [3777] STRUCT 'sock_common' size=136 vlen=25
                current = None;
                let Some((id, rest)) = rest.split_once("] ") else {
                    continue;
                };
                let mut parts = rest.splitn(2, ' ');
                let kind = parts.next().unwrap_or_default();
                if kind != "STRUCT" && kind != "UNION" {
                    continue;
                }
                let name = parts
                    .next()
                    .and_then(|r| r.split('\'').nth(1))
                    .unwrap_or_default();
                if let Ok(id) = id.parse() {
                    types.insert(id, (kind.to_string(), name.to_string(), Vec::new()));
                    current = Some(id);
                }
            } else if let (Some(id), Some(m)) = (current, line.strip_prefix('\t')) {
                // 'skc_family' type_id=19 bits_offset=128
                let name = m.split('\'').nth(1).unwrap_or_default().to_string();
                let field = |key: &str| -> Option<u32> {
                    m.split_whitespace()
                        .find_map(|w| w.strip_prefix(key))
                        .and_then(|v| v.parse().ok())
                };
                if let (Some(t), Some(off), Some(entry)) =
                    (field("type_id="), field("bits_offset="), types.get_mut(&id))
                {
                    entry.2.push((name, t, off));
                }
            }
        }
        Self { types }
    }

    fn member_offset(&self, st: &str, member: &str) -> Option<u32> {
        let (_, (_, _, members)) = self
            .types
            .iter()
            .find(|(_, (k, n, m))| k == "STRUCT" && n == st && !m.is_empty())?;
        self.find(members, member, 0).map(|bits| bits / 8)
    }

    fn find(&self, members: &Members, member: &str, base: u32) -> Option<u32> {
        for (name, ty, off) in members {
            if name == member {
                return Some(base + off);
            }
            if name == "(anon)"
                && let Some((_, _, inner)) = self.types.get(ty)
                && let Some(found) = self.find(inner, member, base + off)
            {
                return Some(found);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAW: &str = "[1] INT 'int' size=4 bits_offset=0 nr_bits=32 encoding=SIGNED
[2] STRUCT '(anon)' size=8 vlen=2
\t'skc_daddr' type_id=1 bits_offset=0
\t'skc_rcv_saddr' type_id=1 bits_offset=32
[3] UNION '(anon)' size=8 vlen=2
\t'skc_addrpair' type_id=1 bits_offset=0
\t'(anon)' type_id=2 bits_offset=0
[4] STRUCT 'sock_common' size=136 vlen=2
\t'(anon)' type_id=3 bits_offset=0
\t'skc_family' type_id=1 bits_offset=128
[5] STRUCT 'sock_common' size=0 vlen=0
";

    #[test]
    fn raw_btf_members_through_anonymous_unions() {
        let b = RawBtf::parse(RAW);
        assert_eq!(b.member_offset("sock_common", "skc_family"), Some(16));
        assert_eq!(b.member_offset("sock_common", "skc_rcv_saddr"), Some(4));
        assert_eq!(b.member_offset("sock_common", "skc_daddr"), Some(0));
        assert_eq!(b.member_offset("sock_common", "nope"), None);
        assert_eq!(b.member_offset("task_struct", "pid"), None);
    }

    const CHECK: &str = "kernel                                 6.1.0-50-amd64
fentry/tcp_connect                     ok: loads and attaches
kprobe/tcp_connect                     unavailable: attach: EPERM
tracepoint/sock/inet_sock_set_state    ok: loads and attaches
tracepoint/sched/sched_process_exec    ok: feeds the process table
raw_tracepoint/sched_process_fork      ok: feeds the process table
tracepoint/sched/sched_process_exit    unavailable: nope
verdict                                the sensor can run here, using fentry/tcp_connect
";

    #[test]
    fn check_output_parsed() {
        let c = parse_check(CHECK);
        assert_eq!(c.auto.as_deref(), Some("fentry/tcp_connect"));
        assert_eq!(c.hooks.len(), 3);
        assert!(hook_of(&c, "kprobe").unwrap().1.is_err());
        assert!(hook_of(&c, "tracepoint").unwrap().1.is_ok());
        assert!(hook_of(&c, "tp-btf").is_none());
        assert_eq!(
            c.lifecycle,
            [
                "tracepoint/sched/sched_process_exec",
                "raw_tracepoint/sched_process_fork"
            ]
        );
    }

    #[test]
    fn test_counts() {
        let out = "running 4 tests\ntest a ... ok\n\ntest result: ok. 4 passed; 0 failed;";
        assert_eq!(count_after(out, "running ", " test"), Some(4));
        assert_eq!(count_after(out, "test result: ok. ", " passed"), Some(4));
        assert_eq!(
            count_after("running 1 test\n", "running ", " test"),
            Some(1)
        );
    }
}

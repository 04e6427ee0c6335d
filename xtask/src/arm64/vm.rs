//! `cargo xtask vmtest --arch arm64`: Debian's arm64 kernels booted under
//! `qemu-system-aarch64` (TCG, `-M virt -cpu max`) from an initramfs holding busybox-static,
//! the static arm64 sensor (test hooks on), the tests' connector and a static arm64 build
//! of this xtask, whose `arm64-guest` runs the per-hook case (see guest.rs). The VM has no
//! network device; results come back on the serial console.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::{
    TARGET, build_static, build_std_program,
    cpio::{Archive, Entry},
    ensure_toolchain,
    guest::{CONNECTOR, RESULT_MARK, SENSOR},
    run, unpacked,
};

/// Debian's arm64 kernels, pinned like the x86_64 matrix's (same releases).
const KERNELS: [(&str, &str); 2] = [
    ("6.12", "linux-image-6.12.101+deb12-arm64"),
    ("6.1", "linux-image-6.1.0-50-arm64"),
];
/// Hooks forced in turn (`auto` is whatever selection picks).
const PROBES: &str = "auto,fentry,kprobe,tp-btf,tracepoint";
/// Hard limit per boot; `VMTEST_TIMEOUT` (seconds) overrides.
const VM_TIMEOUT: Duration = Duration::from_secs(40 * 60);
/// busybox applets the guest uses.
const APPLETS: &[&str] = &[
    "sh", "mount", "mkdir", "ip", "nc", "wget", "unshare", "sleep", "poweroff", "cat", "echo",
];

pub struct Args {
    pub kernel: String,
    pub probe: String,
}

impl Args {
    /// The row `cargo xtask test` runs after the x86_64 matrix: both arm64 kernels, every
    /// hook (about a minute a boot under TCG, after the arm64 builds).
    pub fn default_matrix() -> Self {
        Self::new("all", "all")
    }

    pub fn new(kernel: &str, probe: &str) -> Self {
        // `all` means the x86_64 matrix's kernels: both arm64 pins.
        let kernel = match kernel {
            "all" => KERNELS.map(|(l, _)| l).join(","),
            k => k.to_string(),
        };
        let probe = match probe {
            "all" => PROBES.to_string(),
            p => p.to_string(),
        };
        Self { kernel, probe }
    }
}

pub fn vmtest(root: &Path, args: &Args) -> Result<()> {
    let t0 = Instant::now();
    if !crate::toolchain::have("qemu-system-aarch64") {
        crate::siem::apt_install(&["qemu-system-arm"])?;
    }
    let sensor = build_static(root, true, true)?;
    let env = ensure_toolchain()?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    run(Command::new(cargo)
        .args(["build", "--release", "-p", "xtask", "--target", TARGET])
        .envs(env)
        .current_dir(root))?;
    let xtask = root.join("target").join(TARGET).join("release/xtask");
    let work = root.join("target/arm64-vmtest");
    std::fs::create_dir_all(&work)?;
    let connector = work.join("connector");
    build_std_program(root, "tests/src/bin/connector.rs", &connector)?;
    let busybox = unpacked("busybox-static", "busybox")?.join("bin/busybox");
    eprintln!("xtask: arm64 builds ready in {:.0?}", t0.elapsed());

    let mut rows = Vec::new();
    let mut failed = Vec::new();
    for label in args.kernel.split(',') {
        let package = KERNELS
            .iter()
            .find(|(l, _)| *l == label)
            .map(|(_, p)| *p)
            .with_context(|| format!("--kernel {label}: arm64 kernels are 6.12 and 6.1"))?;
        let kernel_dir = unpacked(package, &format!("kernel-{label}"))?;
        let vmlinuz = std::fs::read_dir(kernel_dir.join("boot"))?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("vmlinuz-"))
            })
            .context("no vmlinuz in the kernel package")?;
        let initrd = work.join(format!("initramfs-{label}.cpio.gz"));
        initramfs(&initrd, &busybox, &sensor, &xtask, &connector, &args.probe)?;
        let log = work.join(format!("console-{label}.log"));
        let t = Instant::now();
        let result = boot(&vmlinuz, &initrd, &log);
        let secs = t.elapsed().as_secs();
        match result {
            Ok(v) => {
                println!(
                    "arm64 {label} ({}): auto picks {}, {secs} s",
                    v["release"], v["auto"]
                );
                for b in v["blocks"].as_array().into_iter().flatten() {
                    let status = b["status"].as_str().unwrap_or_default();
                    println!(
                        "  {:<11} {status} ({} s)",
                        b["probe"].as_str().unwrap_or_default(),
                        b["seconds"]
                    );
                    if status.starts_with("FAIL") {
                        failed.push(format!("{label} {}", b["probe"]));
                    }
                }
                rows.push((label, secs));
            }
            Err(e) => {
                println!("arm64 {label}: FAIL: {e:#} (console: {})", log.display());
                failed.push(format!("{label}: {e:#}"));
            }
        }
    }
    println!(
        "arm64 matrix: {:.0?} in all (builds included); per boot: {rows:?}",
        t0.elapsed()
    );
    if !failed.is_empty() {
        bail!("arm64 matrix failed: {}", failed.join("; "));
    }
    Ok(())
}

fn initramfs(
    out: &Path,
    busybox: &Path,
    sensor: &Path,
    xtask: &Path,
    connector: &Path,
    probes: &str,
) -> Result<()> {
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    let mut a = Archive::new();
    for d in [
        "/bin",
        "/proc",
        "/sys",
        "/dev",
        "/run",
        "/tmp",
        "/etc",
        "/root",
        "/var/lib/t1571-sensor-tests",
        "/var/lib/dpkg/info",
    ] {
        a.dirs(d);
    }
    a.add("/bin/busybox", Entry::File(0o755, &read(busybox)?));
    for applet in APPLETS {
        a.add(&format!("/bin/{applet}"), Entry::Link("busybox"));
    }
    a.add(SENSOR, Entry::File(0o755, &read(sensor)?));
    a.add("/xtask", Entry::File(0o755, &read(xtask)?));
    a.add(CONNECTOR, Entry::File(0o755, &read(connector)?));
    a.add(
        "/etc/passwd",
        Entry::File(0o644, b"root:x:0:0:root:/root:/bin/sh\n"),
    );
    a.add("/etc/group", Entry::File(0o644, b"root:x:0:\n"));
    // busybox is the package's, as on a Debian host; the connector is in no package (the
    // unmanaged tier, as the x86_64 matrix asserts).
    a.add(
        "/var/lib/dpkg/info/busybox-static.list",
        Entry::File(0o644, b"/.\n/bin\n/bin/busybox\n"),
    );
    let init = format!(
        "#!/bin/sh\n\
         export PATH=/bin\n\
         mount -t proc proc /proc\n\
         mount -t sysfs sysfs /sys\n\
         mount -t devtmpfs devtmpfs /dev\n\
         mount -t tmpfs tmpfs /run\n\
         mount -t bpf bpf /sys/fs/bpf\n\
         mount -t tracefs tracefs /sys/kernel/tracing\n\
         mount -t debugfs debugfs /sys/kernel/debug\n\
         mount -t cgroup2 cgroup2 /sys/fs/cgroup\n\
         ip link set lo up\n\
         /xtask arm64-guest {probes}\n\
         echo T1571-ARM64-EXIT $?\n\
         poweroff -f\n"
    );
    a.add("/init", Entry::File(0o755, init.as_bytes()));
    a.write(out)
}

/// Boots one kernel; the guest's result line, the console kept in `log`.
fn boot(vmlinuz: &Path, initrd: &Path, log: &Path) -> Result<Value> {
    let timeout = std::env::var("VMTEST_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(VM_TIMEOUT, Duration::from_secs);
    let mut child = Command::new("timeout")
        .arg(timeout.as_secs().to_string())
        .args([
            "qemu-system-aarch64",
            "-M",
            "virt",
            "-cpu",
            "max",
            "-smp",
            "2",
        ])
        .args(["-m", "2G", "-nographic", "-no-reboot", "-nic", "none"])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args([
            "-append",
            "console=ttyAMA0 rdinit=/init panic=-1 quiet loglevel=3",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting qemu-system-aarch64")?;
    // Written as it comes, for watching a slow emulated run.
    let mut live = std::fs::File::create(log)?;
    let mut console = String::new();
    let mut result = None;
    for line in BufReader::new(child.stdout.take().context("qemu stdout")?)
        .lines()
        .map_while(Result::ok)
    {
        if line.contains("arm64-guest:") {
            eprintln!("{line}");
        }
        if let Some(r) = line.split(RESULT_MARK).nth(1) {
            result = Some(serde_json::from_str::<Value>(r.trim()).context("the result line")?);
        }
        std::io::Write::write_all(&mut live, format!("{line}\n").as_bytes())?;
        console.push_str(&line);
        console.push('\n');
    }
    let status = child.wait()?;
    match result {
        Some(v) => Ok(v),
        None => bail!(
            "no result from the guest (qemu {status}); console tail:\n{}",
            console
                .lines()
                .rev()
                .take(30)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        ),
    }
}

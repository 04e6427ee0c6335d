//! Host side: the tools, the kernels, the VM boots, the test executables and their plan.

use std::{
    collections::BTreeMap,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::{
    AUTO_SET, HOOK_SET, Kernel, Prepared, VIRTME_NG, VM_MEMORY, VM_PACKAGES, cache, log, output,
    run, venv,
};

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

pub(super) fn ensure_bpftool() -> Result<()> {
    if have_any(&["/usr/sbin/bpftool", "/usr/bin/bpftool"]) {
        return Ok(());
    }
    apt_install(&["bpftool"])
}

/// qemu, kmod, busybox, bpftool via apt (apt-get update only when something is missing);
/// virtme-ng in the project's venv.
pub(super) fn ensure_vm_tools() -> Result<()> {
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
pub(super) fn prepare_kernel(k: &Kernel) -> Result<Prepared> {
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
                        "downloading {} (no longer in the archive? pick a current one with apt-cache search and update KERNELS in xtask/src/vmtest/mod.rs)",
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
pub(super) enum Accel {
    Kvm,
    /// Emulation, and why not KVM.
    Tcg(String),
}

impl Accel {
    pub(super) fn describe(&self) -> String {
        match self {
            Accel::Kvm => "KVM".into(),
            Accel::Tcg(why) => format!("TCG emulation ({why})"),
        }
    }

    pub(super) fn label(&self) -> &'static str {
        match self {
            Accel::Kvm => "KVM",
            Accel::Tcg(_) => "TCG",
        }
    }
}

/// Boots `k` once with KVM for a trivial command, with a short timeout (nested KVM can
/// hang or fail); TCG when that does not work.
pub(super) fn probe_kvm(k: &Prepared, dir: &Path) -> Accel {
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

pub(super) enum Booted {
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

pub(super) fn boot(
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
pub(super) fn test_binaries(root: &Path) -> Result<BTreeMap<String, PathBuf>> {
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
pub(super) fn probes(sensor: &Path, want: &str) -> Result<Vec<Option<String>>> {
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
pub(super) fn suites(bins: &BTreeMap<String, PathBuf>, full: bool) -> Value {
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

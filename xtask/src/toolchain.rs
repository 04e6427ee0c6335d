//! Installing the eBPF toolchain pieces and the test programs when they are missing.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: {cmd:?}");
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

pub(crate) fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

/// The LLVM major version nightly rustc was built with, from `rustc +nightly -vV`.
fn nightly_llvm_major() -> Result<u32> {
    let v = output(Command::new("rustup").args(["run", "nightly", "rustc", "-vV"]))
        .context("a nightly toolchain is required to build the eBPF programs (rustup toolchain install nightly)")?;
    let line = v
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .context("rustc -vV printed no LLVM version")?;
    line.split('.')
        .next()
        .and_then(|m| m.trim().parse().ok())
        .with_context(|| format!("odd LLVM version {line:?}"))
}

/// nightly's `lib/libLLVM.so.*-rust-*`, which bpf-linker must link against.
fn nightly_libllvm() -> Result<PathBuf> {
    let sysroot =
        output(Command::new("rustup").args(["run", "nightly", "rustc", "--print", "sysroot"]))?;
    let lib = Path::new(sysroot.trim()).join("lib");
    let entries = std::fs::read_dir(&lib).with_context(|| format!("listing {}", lib.display()))?;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("libLLVM") && name.contains("-rust-") {
            return Ok(e.path());
        }
    }
    bail!("no libLLVM*-rust-* in {}", lib.display())
}

/// rust-src for nightly, and bpf-linker built for nightly's LLVM major version.
pub fn ensure(force: bool) -> Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]))
    .context("listing nightly components (is the nightly toolchain installed?)")?;
    if !installed.lines().any(|l| l.starts_with("rust-src")) {
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }

    let major = nightly_llvm_major()?;
    let prefix = cargo_home().join("bpf-linker-llvm");
    let stamp = prefix.join("llvm-major");
    let linker = cargo_home().join("bin/bpf-linker");
    let current = std::fs::read_to_string(&stamp)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok());
    if !force && linker.exists() && current == Some(major) {
        return Ok(());
    }
    // bpf-linker's llvm-sys looks for `$LLVM_PREFIX/lib/libLLVM.so`: point it at nightly's.
    let libllvm = nightly_libllvm()?;
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    let link = lib.join("libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&libllvm, &link)
        .with_context(|| format!("linking {}", link.display()))?;
    run(Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--force",
            "--no-default-features",
            "--features",
        ])
        .arg(format!("llvm-{major}"))
        .env("LLVM_PREFIX", &prefix)
        .env_remove("RUSTUP_TOOLCHAIN"))?;
    std::fs::write(&stamp, format!("{major}\n"))
        .with_context(|| format!("writing {}", stamp.display()))?;
    Ok(())
}

/// What the host tests run: (a command, or an absolute path where a test uses that path; the
/// Debian package that provides it). Installed before any host test starts; the other steps
/// of `cargo xtask test` that run first add rsyslog and rsyslog-elasticsearch (siem.rs),
/// python3-venv (python.rs), musl-tools and podman (image.rs). Only the VM step's own tools
/// (qemu, kmod, virtme-ng: vmtest/host.rs) come later, and no host test runs them.
const TEST_PROGRAMS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("nc", "netcat-openbsd"),
    ("curl", "curl"),
    ("python3", "python3"),
    ("gcc", "gcc"),
    // libFuzzer (C++) for the fuzz targets, built by libfuzzer-sys.
    ("c++", "g++"),
    ("setpriv", "util-linux"),
    ("/usr/include/stdio.h", "libc6-dev"),
    ("systemd-analyze", "systemd"),
    ("/lib/systemd/systemd-journald", "systemd"),
    ("journalctl", "systemd"),
    ("dpkg-deb", "dpkg"),
    ("tmux", "tmux"),
    // The listen test runs the real sshd on 2222 in a test namespace, with its own config.
    ("/usr/sbin/sshd", "openssh-server"),
    // The kill -9 test lists the kernel's programs and links with the kernel's own tool.
    ("bpftool", "bpftool"),
    // The evasion test runs a busybox applet through a symlink to this very path.
    ("/bin/busybox", "busybox-static"),
    // The sshd test makes its host key.
    ("ssh-keygen", "openssh-client"),
    // The image test checks the binary is static.
    ("file", "file"),
    // The cgroup v1 test mounts its own hierarchy.
    ("mount", "mount"),
    // The systemd test makes a bookworm userland and boots it with systemd as PID 1.
    ("debootstrap", "debootstrap"),
    ("systemd-nspawn", "systemd-container"),
    ("nsenter", "util-linux"),
    // The image test runs the image under runc, from a bundle with the DaemonSet's
    // security context and the containers' default seccomp profile (podman's package).
    ("runc", "runc"),
    (
        "/usr/share/containers/seccomp.json",
        "golang-github-containers-common",
    ),
    // Protocol on the port (tests/tests/protocol.rs): openssl s_server and its
    // certificate, the ssh client to sshd on 443; the benchmark's bulk throughput.
    ("/usr/bin/openssl", "openssl"),
    ("/usr/bin/ssh", "openssh-client"),
    ("iperf3", "iperf3"),
];

/// Packages whose maintainer scripts would start a system service: installed with
/// /usr/sbin/policy-rc.d forbidding starts, and the unit disabled, so the tests' own
/// instance is the only one.
const NO_SERVICE: &[(&str, &[&str])] = &[("openssh-server", &["ssh.service", "ssh.socket"])];

/// Another apt run on the machine (a second `cargo xtask test`, unattended upgrades) holds
/// the lock for a while: wait for it instead of failing.
pub(crate) const APT_LOCK_WAIT: &[&str] = &["-o", "DPkg::Lock::Timeout=600"];

pub(crate) fn have(what: &str) -> bool {
    if what.starts_with('/') {
        return Path::new(what).exists();
    }
    Command::new("sh")
        .args(["-c", &format!("command -v {what}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Installs what is missing; with nothing missing, the package registry is not touched.
pub fn ensure_test_programs() -> Result<()> {
    let missing: Vec<&str> = TEST_PROGRAMS
        .iter()
        .filter(|(c, _)| !have(c))
        .map(|&(_, p)| p)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !have("apt-get") {
        bail!(
            "the integration tests need {} and this is not a Debian-family system: install them first",
            missing.join(", ")
        );
    }
    run(Command::new("apt-get")
        .args(["update", "-q"])
        .args(APT_LOCK_WAIT))?;
    let services: Vec<&str> = NO_SERVICE
        .iter()
        .filter(|(p, _)| missing.contains(p))
        .flat_map(|(_, units)| units.iter().copied())
        .collect();
    let policy = Path::new("/usr/sbin/policy-rc.d");
    let guard = !services.is_empty() && !policy.exists();
    if guard {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(
            policy,
            "#!/bin/sh\n# cargo xtask: no service starts while installing\nexit 101\n",
        )
        .context("writing /usr/sbin/policy-rc.d")?;
        std::fs::set_permissions(policy, std::fs::Permissions::from_mode(0o755))?;
    }
    let installed = run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(APT_LOCK_WAIT)
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"));
    if guard {
        let _ = std::fs::remove_file(policy);
    }
    installed?;
    if !services.is_empty() && have("systemctl") {
        // Best effort: on a host without systemd running there is nothing to disable.
        let _ = Command::new("systemctl")
            .arg("disable")
            .arg("--now")
            .args(&services)
            .status();
    }
    Ok(())
}

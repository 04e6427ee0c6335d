//! arm64 (aarch64) as a target: the static build, its `.deb`, and the matrix row on
//! Debian's arm64 kernels under `qemu-system-aarch64` (TCG).
//!
//! The binary is `aarch64-unknown-linux-musl`, linked by rust-lld (.cargo/config.toml) with
//! the target's own musl crt objects; mimalloc's C is compiled by `gcc-aarch64-linux-gnu`
//! against Debian's arm64 musl headers (x86_64's static build uses musl-gcc the same way).
//! sensor/build.rs builds the eBPF object with AYA_BPF_TARGET_ARCH=aarch64, so the kprobe
//! reads arm64's `struct pt_regs`.
//!
//! Arm64 packages (kernels, busybox-static, musl-dev) come through apt with a private list
//! directory under [`CACHE`] (`APT::Architecture=arm64`): the host's dpkg gets no foreign
//! architecture and its own lists are untouched.

mod cpio;
pub mod guest;
mod manifest;
mod vm;

pub use manifest::manifest;
pub use vm::{Args, vmtest};

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::toolchain::run;

pub const TARGET: &str = "aarch64-unknown-linux-musl";
/// Downloads and unpacked packages: outside the repository, kept across runs.
const CACHE: &str = "/var/cache/t1571-sensor/arm64";
/// The arm64 musl headers mimalloc is compiled against.
const MUSL_DEV: &str = "musl-dev";

/// apt with arm64 as its only architecture and its own lists under [`CACHE`].
fn apt(tool: &str) -> Command {
    let mut cmd = Command::new(tool);
    for o in [
        "APT::Architecture=arm64".to_string(),
        "APT::Architectures::=arm64".to_string(),
        format!("Dir::State::Lists={CACHE}/lists"),
        format!("Dir::Cache::archives={CACHE}/archives"),
        "Dir::Cache::pkgcache=".to_string(),
        "Dir::Cache::srcpkgcache=".to_string(),
    ] {
        cmd.args(["-o", &o]);
    }
    cmd
}

/// The arm64 `.deb` of `package` in [`CACHE`]/debs, downloaded when missing.
fn arm64_deb(package: &str) -> Result<PathBuf> {
    let debs = Path::new(CACHE).join("debs");
    let find = || -> Result<Option<PathBuf>> {
        let prefix = format!("{}_", package.replace(':', "%3a"));
        Ok(std::fs::read_dir(&debs)?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&prefix) && n.ends_with("_arm64.deb"))
            }))
    };
    for d in ["lists/partial", "archives/partial", "debs"] {
        std::fs::create_dir_all(Path::new(CACHE).join(d))?;
    }
    if let Some(p) = find()? {
        return Ok(p);
    }
    if !Path::new(CACHE).join("lists/lock").exists()
        || std::fs::read_dir(Path::new(CACHE).join("lists"))?.count() < 4
    {
        run(apt("apt-get").arg("update"))?;
    }
    run(apt("apt-get")
        .arg("download")
        .arg(package)
        .current_dir(&debs))?;
    find()?.with_context(|| format!("apt-get download {package} left no arm64 .deb"))
}

/// `package`'s arm64 files unpacked under [`CACHE`]/`dir` (once).
fn unpacked(package: &str, dir: &str) -> Result<PathBuf> {
    let out = Path::new(CACHE).join(dir);
    let done = out.join(".unpacked");
    if !done.exists() {
        let deb = arm64_deb(package)?;
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(&out)?;
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&out))?;
        std::fs::write(&done, "")?;
    }
    Ok(out)
}

/// Everything the cross build needs: the Rust target, the cross C compiler, musl headers.
/// Returns the environment cargo needs for mimalloc's C.
pub fn ensure_toolchain() -> Result<Vec<(String, String)>> {
    crate::image::ensure_rust_target(TARGET)?;
    if !crate::toolchain::have("aarch64-linux-gnu-gcc") {
        crate::siem::apt_install(&["gcc-aarch64-linux-gnu"])?;
    }
    let sysroot = unpacked(MUSL_DEV, "musl-sysroot")?;
    let include = sysroot.join("usr/include/aarch64-linux-musl");
    if !include.join("stdlib.h").exists() {
        bail!("{} has no musl headers", include.display());
    }
    Ok(vec![
        (
            "CC_aarch64_unknown_linux_musl".into(),
            "aarch64-linux-gnu-gcc".into(),
        ),
        // gcc's own headers (stdatomic.h) stay; libc's are musl's, not glibc's.
        (
            "CFLAGS_aarch64_unknown_linux_musl".into(),
            format!("-isystem {}", include.display()),
        ),
    ])
}

/// The static arm64 sensor: `target/aarch64-unknown-linux-musl/<profile>/t1571-sensor`.
pub fn build_static(root: &Path, release: bool, test_hooks: bool) -> Result<PathBuf> {
    let env = ensure_toolchain()?;
    let features: &[&str] = if test_hooks { &["test-hooks"] } else { &[] };
    let bin = crate::image::cargo_static(root, TARGET, release, features, env)?;
    check_elf(&bin)?;
    Ok(bin)
}

/// Refuses a binary that is not a static aarch64 ELF (a wrong linker or target would
/// otherwise surface only in the VM).
fn check_elf(bin: &Path) -> Result<()> {
    let head = std::fs::read(bin).with_context(|| format!("reading {}", bin.display()))?;
    const EM_AARCH64: u16 = 183;
    let machine = head.get(18..20).map(|b| u16::from_le_bytes([b[0], b[1]]));
    if head.get(..4) != Some(b"\x7fELF") || machine != Some(EM_AARCH64) {
        bail!("{} is not an aarch64 ELF", bin.display());
    }
    if head.windows(19).any(|w| w == b"/lib/ld-linux-aarch") {
        bail!("{} is dynamically linked", bin.display());
    }
    Ok(())
}

/// A std-only program of this workspace (the tests' connector, static) for arm64.
fn build_std_program(root: &Path, source: &str, out: &Path) -> Result<()> {
    run(Command::new("rustc")
        .args(["--edition", "2024", "-O", "--target", TARGET])
        .args(["-C", "linker=rust-lld", "-o"])
        .arg(out)
        .arg(root.join(source)))?;
    check_elf(out)
}

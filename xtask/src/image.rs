//! `cargo xtask image`: the static musl build of the sensor (it embeds its eBPF object, so
//! the same file ships to systemd hosts), then the `FROM scratch` image of
//! deploy/container/Containerfile, built offline with podman (installed from apt when no
//! engine is present), or buildah or docker where one works. `--export DIR` also unpacks the
//! image's filesystem into DIR, which the tests run the binary from.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

pub const TARGET: &str = "x86_64-unknown-linux-musl";
use crate::toolchain::run;

pub const IMAGE: &str = "localhost/t1571-sensor";

fn ok(cmd: &mut Command) -> bool {
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The static binary: `target/x86_64-unknown-linux-musl/<profile>/t1571-sensor`. Releases ship
/// the release profile; the tests build the image from the dev profile, which compiles in
/// half the time and runs the same code.
pub fn build_static(root: &Path, release: bool) -> Result<PathBuf> {
    // mimalloc, the static build's allocator, is C: built with musl-gcc (.cargo/config.toml).
    if !crate::toolchain::have("musl-gcc") {
        crate::siem::apt_install(&["musl-tools"])?;
    }
    cargo_static(root, TARGET, release, &[], Vec::new())
}

/// rustup's standard library for `target`, added when missing.
pub fn ensure_rust_target(target: &str) -> Result<()> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .context("running rustup")?;
    if !String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|l| l == target)
    {
        run(Command::new("rustup").args(["target", "add", target]))?;
    }
    Ok(())
}

/// `cargo build -p sensor --target TARGET` (the Rust target added first), with `features`
/// and `env`; the binary's path.
pub fn cargo_static(
    root: &Path,
    target: &str,
    release: bool,
    features: &[&str],
    env: Vec<(String, String)>,
) -> Result<PathBuf> {
    ensure_rust_target(target)?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-p", "sensor", "--target", target])
        .envs(env)
        .current_dir(root);
    if release {
        cmd.arg("--release");
    }
    for f in features {
        cmd.args(["--features", f]);
    }
    run(&mut cmd)?;
    Ok(root
        .join("target")
        .join(target)
        .join(if release { "release" } else { "debug" })
        .join("t1571-sensor"))
}

/// An engine that can build: its command. podman is installed if none is found. The
/// docker client counts only when `docker info` reaches an engine.
fn engine() -> Result<&'static str> {
    for e in ["podman", "buildah"] {
        if ok(Command::new(e).arg("--version")) {
            return Ok(e);
        }
    }
    if ok(Command::new("docker").arg("info")) {
        return Ok("docker");
    }
    crate::siem::apt_install(&["podman"])?;
    Ok("podman")
}

/// The tag of an image: the version for a release build, `test` for the dev-profile build
/// the tests use (it must never pass for a release).
pub fn tag(release: bool) -> String {
    if release {
        env!("CARGO_PKG_VERSION").to_string()
    } else {
        "test".to_string()
    }
}

/// The commit the image is built from, when the tree is a git checkout.
fn revision(root: &Path) -> Option<String> {
    let out = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(root)
        .output()
        .ok()?;
    let rev = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && rev.len() == 40).then_some(rev)
}

/// Builds the image from `binary`, tagged [`tag`]; returns its reference. Labels with
/// values known here: the version (release builds only) and the git revision.
pub fn build_image(root: &Path, binary: &Path, release: bool) -> Result<String> {
    let engine = engine()?;
    let ctx = root.join("target/image-context");
    let _ = std::fs::remove_dir_all(&ctx);
    std::fs::create_dir_all(&ctx).context("creating the build context")?;
    std::fs::copy(binary, ctx.join("t1571-sensor")).context("copying the binary")?;
    std::fs::copy(
        root.join("deploy/container/Containerfile"),
        ctx.join("Containerfile"),
    )
    .context("copying the Containerfile")?;
    let reference = format!("{IMAGE}:{}", tag(release));
    let mut labels = Vec::new();
    if release {
        labels.push(format!(
            "org.opencontainers.image.version={}",
            env!("CARGO_PKG_VERSION")
        ));
    }
    if let Some(rev) = revision(root) {
        labels.push(format!("org.opencontainers.image.revision={rev}"));
    }
    let mut cmd = Command::new(engine);
    match engine {
        "buildah" => cmd.arg("bud"),
        _ => cmd.arg("build"),
    };
    for l in &labels {
        cmd.args(["--label", l]);
    }
    run(cmd
        .args(["-t", &reference, "-f"])
        .arg(ctx.join("Containerfile"))
        .arg(&ctx))?;
    eprintln!("xtask: built {reference} with {engine}");
    Ok(reference)
}

/// Unpacks the image's filesystem into `dir` (`podman create` + `export`).
pub fn export(reference: &str, dir: &Path) -> Result<()> {
    let engine = engine()?;
    let out = Command::new(engine)
        .args(["create", reference, "/t1571-sensor"])
        .output()
        .context("creating a container to export")?;
    if !out.status.success() {
        bail!(
            "{engine} create: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tar = dir.with_extension("tar");
    let exported = run(Command::new(engine)
        .args(["export", "-o"])
        .arg(&tar)
        .arg(&id));
    let _ = Command::new(engine).args(["rm", &id]).status();
    exported?;
    run(Command::new("tar").arg("-xf").arg(&tar).arg("-C").arg(dir))?;
    let _ = std::fs::remove_file(&tar);
    Ok(())
}

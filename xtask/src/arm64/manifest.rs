//! `cargo xtask image --multiarch`: one `FROM scratch` image per architecture from the two
//! static binaries (deploy/container/Containerfile has no RUN step, so building the arm64
//! image needs no emulation), joined in a manifest list with podman or buildah. Kept apart
//! from image.rs: only the per-arch tags and the list are made here.

use std::{path::Path, process::Command};

use anyhow::{Context, Result, bail};

use super::run;
use crate::image::IMAGE;

/// The manifest list's reference: `{IMAGE}:{version}-multiarch`, its images
/// `{IMAGE}:{version}-amd64` and `-arm64`. A release pushes the list under the version tag
/// (`podman manifest push --all LIST docker://REGISTRY/t1571-sensor:VERSION`).
pub fn manifest(root: &Path, binaries: &[(&str, &Path)]) -> Result<String> {
    let engine = if ok("podman") {
        "podman"
    } else if ok("buildah") {
        "buildah"
    } else {
        crate::siem::apt_install(&["podman"])?;
        "podman"
    };
    let version = env!("CARGO_PKG_VERSION");
    let list = format!("{IMAGE}:{version}-multiarch");
    // A list of the same name from an earlier run would collect stale entries.
    let _ = Command::new(engine)
        .args(["manifest", "rm", &list])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    run(Command::new(engine).args(["manifest", "create", &list]))?;
    for (arch, binary) in binaries {
        let ctx = root.join(format!("target/image-context-{arch}"));
        let _ = std::fs::remove_dir_all(&ctx);
        std::fs::create_dir_all(&ctx)?;
        std::fs::copy(binary, ctx.join("t1571-sensor"))
            .with_context(|| format!("copying {}", binary.display()))?;
        std::fs::copy(
            root.join("deploy/container/Containerfile"),
            ctx.join("Containerfile"),
        )
        .context("copying the Containerfile")?;
        let reference = format!("{IMAGE}:{version}-{arch}");
        let mut cmd = Command::new(engine);
        match engine {
            "buildah" => cmd.arg("bud"),
            _ => cmd.arg("build"),
        };
        run(cmd
            .args(["--platform", &format!("linux/{arch}")])
            .args([
                "--label",
                &format!("org.opencontainers.image.version={version}"),
                "-t",
                &reference,
            ])
            .arg("-f")
            .arg(ctx.join("Containerfile"))
            .arg(&ctx))?;
        run(Command::new(engine).args([
            "manifest",
            "add",
            &list,
            &format!("containers-storage:{reference}"),
        ]))?;
    }
    let out = Command::new(engine)
        .args(["manifest", "inspect", &list])
        .output()
        .context("inspecting the manifest list")?;
    let text = String::from_utf8_lossy(&out.stdout);
    for (arch, _) in binaries {
        if !text.contains(&format!("\"architecture\": \"{arch}\"")) {
            bail!("the manifest list {list} has no {arch} entry:\n{text}");
        }
    }
    Ok(list)
}

fn ok(engine: &str) -> bool {
    Command::new(engine)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

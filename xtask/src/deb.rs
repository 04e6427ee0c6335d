//! `cargo xtask deb`: a Debian package of the release binary, staged by hand and built with
//! `dpkg-deb` (always on a Debian host; cargo-deb would be one more tool to build): the
//! binary as /usr/bin/t1571-sensor, the systemd unit (its `ExecReload=` is procps's kill,
//! hence the dependency), a commented sample policy at /etc/t1571-sensor/policy.toml (a
//! conffile: upgrades keep local edits), and the man page the binary renders from its own
//! command line (clap_mangen).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

pub const PACKAGE: &str = "t1571-sensor";
/// Where the package installs the binary, the path the unit runs.
const INSTALLED_BIN: &str = "/usr/bin/t1571-sensor";

fn write(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn chmod(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

/// The Debian architecture name of this build.
fn arch() -> Result<&'static str> {
    Ok(match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => bail!("no Debian architecture name known for {other}"),
    })
}

/// Builds `target/debian/t1571-sensor_<version>_<arch>.deb` from `binary`.
pub fn build(root: &Path, binary: &Path) -> Result<PathBuf> {
    build_arch(root, binary, arch()?, binary)
}

/// [`build`] for Debian architecture `arch` (a cross-built `binary`); the man page comes
/// from `man_from`, a build of the same sources that runs here.
pub fn build_arch(root: &Path, binary: &Path, arch: &str, man_from: &Path) -> Result<PathBuf> {
    let version = env!("CARGO_PKG_VERSION");
    let stage = root.join("target/debian").join(PACKAGE);
    let _ = std::fs::remove_dir_all(&stage);

    let bin = stage.join(INSTALLED_BIN.trim_start_matches('/'));
    std::fs::create_dir_all(bin.parent().context("bin dir")?)?;
    std::fs::copy(binary, &bin).with_context(|| format!("copying {}", binary.display()))?;
    chmod(&bin, 0o755)?;

    let unit = std::fs::read_to_string(root.join("deploy/systemd/t1571-sensor.service"))
        .context("reading the unit")?;
    if !unit.contains(&format!("ExecStart={INSTALLED_BIN} run")) {
        bail!("deploy/systemd/t1571-sensor.service does not run {INSTALLED_BIN}");
    }
    write(
        &stage.join("lib/systemd/system/t1571-sensor.service"),
        &unit,
    )?;
    let policy = std::fs::read_to_string(root.join("deploy/systemd/policy.toml"))
        .context("reading the sample policy")?;
    write(&stage.join("etc/t1571-sensor/policy.toml"), &policy)?;

    let man = Command::new(man_from)
        .arg("man")
        .output()
        .with_context(|| format!("running {} man", man_from.display()))?;
    if !man.status.success() || man.stdout.is_empty() {
        bail!("`sensor man` printed no man page");
    }
    let man_dir = stage.join("usr/share/man/man8");
    std::fs::create_dir_all(&man_dir)?;
    let mut gz = Command::new("gzip")
        .args(["-9n"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::fs::File::create(man_dir.join("t1571-sensor.8.gz"))?)
        .spawn()
        .context("running gzip")?;
    std::io::Write::write_all(gz.stdin.as_mut().context("gzip stdin")?, &man.stdout)?;
    drop(gz.stdin.take());
    if !gz.wait()?.success() {
        bail!("gzip failed");
    }

    let size_kib = dir_size(&stage)? / 1024;
    write(
        &stage.join("DEBIAN/control"),
        &format!(
            "Package: {PACKAGE}\n\
             Version: {version}\n\
             Architecture: {arch}\n\
             Maintainer: t1571-sensor developers <security@example.org>\n\
             Installed-Size: {size_kib}\n\
             Section: admin\n\
             Priority: optional\n\
             Depends: libc6, procps\n\
             Description: eBPF sensor for command and control over non-standard ports\n \
             Scores outbound connections in the kernel (MITRE ATT&CK T1571) and writes\n \
             ECS JSON alerts to journald and stdout.\n"
        ),
    )?;
    write(
        &stage.join("DEBIAN/conffiles"),
        "/etc/t1571-sensor/policy.toml\n",
    )?;
    // systemd is not required (containers, minimal hosts): each step only where it runs.
    let postinst = "#!/bin/sh\nset -e\nif [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi\n";
    write(&stage.join("DEBIAN/postinst"), postinst)?;
    chmod(&stage.join("DEBIAN/postinst"), 0o755)?;
    let prerm = "#!/bin/sh\nset -e\nif [ -d /run/systemd/system ]; then systemctl stop t1571-sensor.service || true; fi\n";
    write(&stage.join("DEBIAN/prerm"), prerm)?;
    chmod(&stage.join("DEBIAN/prerm"), 0o755)?;
    let postrm = "#!/bin/sh\nset -e\nif [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi\n";
    write(&stage.join("DEBIAN/postrm"), postrm)?;
    chmod(&stage.join("DEBIAN/postrm"), 0o755)?;

    let deb = root
        .join("target/debian")
        .join(format!("{PACKAGE}_{version}_{arch}.deb"));
    let status = Command::new("dpkg-deb")
        .args(["--root-owner-group", "--build"])
        .arg(&stage)
        .arg(&deb)
        .status()
        .context("running dpkg-deb")?;
    if !status.success() {
        bail!("dpkg-deb failed ({status})");
    }
    Ok(deb)
}

fn dir_size(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for e in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let e = e?;
        let meta = e.metadata()?;
        total += if meta.is_dir() {
            dir_size(&e.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

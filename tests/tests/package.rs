//! The Debian package: installs, works, and removes cleanly (`dpkg -i`, `dpkg -r`).
//! `cargo xtask test` builds it (`cargo xtask deb`) and passes its path in SENSOR_DEB.

use std::{path::Path, process::Command};

use anyhow::{Context, Result, bail};
use sensor_tests::root_or_skip;

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn deb_installs_runs_and_removes() -> Result<()> {
    if !root_or_skip("deb") {
        return Ok(());
    }
    let Some(deb) = std::env::var_os("SENSOR_DEB") else {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("SENSOR_DEB is not set: run the tests through `cargo xtask test`");
        }
        eprintln!("SKIPPED deb: SENSOR_DEB not set (cargo xtask test builds the package)");
        return Ok(());
    };
    let info = run(Command::new("dpkg-deb").arg("--info").arg(&deb))?;
    assert!(info.contains("Package: t1571-sensor"), "{info}");
    // The unit's ExecReload= runs procps's /bin/kill, which a minimal Debian lacks.
    assert!(info.contains("Depends: libc6, procps"), "{info}");
    let files = run(Command::new("dpkg-deb").arg("--contents").arg(&deb))?;
    for f in [
        "./usr/bin/t1571-sensor",
        "./lib/systemd/system/t1571-sensor.service",
        "./etc/t1571-sensor/policy.toml",
        "./usr/share/man/man8/t1571-sensor.8.gz",
    ] {
        assert!(files.contains(f), "{f} missing from:\n{files}");
    }
    run(Command::new("dpkg").arg("-i").arg(&deb))?;
    let result = (|| -> Result<()> {
        let version = run(Command::new("/usr/bin/t1571-sensor").arg("--version"))?;
        assert!(version.starts_with("t1571-sensor "), "{version}");
        let unit = std::fs::read_to_string("/lib/systemd/system/t1571-sensor.service")?;
        assert!(
            unit.contains("ExecStart=/usr/bin/t1571-sensor run"),
            "{unit}"
        );
        // The shipped sample policy is valid and changes nothing from the defaults.
        let check = run(Command::new("/usr/bin/t1571-sensor").args([
            "policy",
            "check",
            "/etc/t1571-sensor/policy.toml",
        ]))?;
        assert!(check.contains("no changes from the defaults"), "{check}");
        let man =
            run(Command::new("sh").args(["-c", "zcat /usr/share/man/man8/t1571-sensor.8.gz"]))?;
        assert!(man.contains(".TH"), "not a man page");
        Ok(())
    })();
    run(Command::new("dpkg").args(["-r", "t1571-sensor"]))?;
    result?;
    assert!(!Path::new("/usr/bin/t1571-sensor").exists());
    assert!(!Path::new("/lib/systemd/system/t1571-sensor.service").exists());
    // A conffile outlives `dpkg -r` (local edits are kept) and goes with a purge.
    run(Command::new("dpkg").args(["--purge", "t1571-sensor"]))?;
    assert!(!Path::new("/etc/t1571-sensor/policy.toml").exists());
    Ok(())
}

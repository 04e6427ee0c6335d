//! The container image as shipped: `cargo xtask test` builds it (static musl binary,
//! `FROM scratch`) and unpacks its filesystem into SENSOR_IMAGE_ROOT. No container runtime
//! starts on these machines (crun is refused its rlimits), so the image's own binary is run
//! from that filesystem with chroot, with the host's /proc and /sys mounted in a mount
//! namespace of the test's own, as a privileged hostPID pod would see them.

use std::{path::PathBuf, process::Command};

use anyhow::{Context, Result, bail};
use sensor_tests::{Sensor, root_or_skip};

const PUBLIC: &str = "203.0.113.77";

fn image_root() -> Option<PathBuf> {
    match std::env::var_os("SENSOR_IMAGE_ROOT") {
        Some(p) => Some(PathBuf::from(p)),
        None => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("SENSOR_IMAGE_ROOT is not set: run the tests through `cargo xtask test`");
            }
            eprintln!(
                "SKIPPED image: SENSOR_IMAGE_ROOT not set (cargo xtask test builds the image)"
            );
            None
        }
    }
}

/// `/t1571-sensor ARGS` inside the image's root, /proc and /sys bind-mounted into it privately.
fn in_image(root: &std::path::Path, args: &[&str]) -> Result<Command> {
    std::fs::create_dir_all(root.join("etc")).context("creating /etc in the image root")?;
    let mut cmd = Command::new("/t1571-sensor");
    cmd.args(args);
    sensor_tests::contained(&mut cmd, root, &["proc", "sys"])?;
    Ok(cmd)
}

#[test]
fn image_binary_runs_checks_and_alerts() -> Result<()> {
    if !root_or_skip("image") {
        return Ok(());
    }
    let Some(root) = image_root() else {
        return Ok(());
    };
    // The image holds the binary and nothing else: no shell, no libc.
    let mut entries: Vec<String> = std::fs::read_dir(&root)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !matches!(n.as_str(), "proc" | "sys" | "etc" | "dev" | "run"))
        .collect();
    entries.sort();
    assert_eq!(entries, ["t1571-sensor"], "unexpected files in the image");
    let file = Command::new("file").arg(root.join("t1571-sensor")).output();
    if let Ok(f) = file {
        let text = String::from_utf8_lossy(&f.stdout);
        assert!(
            text.contains("statically linked") || text.contains("static-pie"),
            "{text}"
        );
    }
    let out = in_image(&root, &["--version"])?.output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("t1571-sensor "));
    let out = in_image(&root, &["check"])?.output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("the sensor can run here"), "{text}");
    // A short run that alerts.
    let net = sensor_tests::public_net(&[PUBLIC])?;
    let cmd = in_image(&root, &["run"])?;
    let mut sensor = Sensor::spawn(cmd)?;
    let pid = net.nc(PUBLIC, 4444)?;
    let v = sensor.connection(pid, 4444)?;
    if v["event"]["risk_score"] != 3 {
        bail!("expected a risk-3 alert from the image's binary: {v:#}");
    }
    Ok(())
}

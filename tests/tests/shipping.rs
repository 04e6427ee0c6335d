//! The shipping configs in deploy/shipping that can be checked on this machine: rsyslog's
//! (Debian packages it; `cargo xtask test` installs rsyslog and rsyslog-elasticsearch).
//! Vector, Fluent Bit and the OpenTelemetry Collector are not packaged here: their configs
//! are not validated (deploy/shipping/README.md says so).

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use anyhow::{Context, Result};
use sensor_tests::repo;

fn rsyslogd() -> Option<PathBuf> {
    let found = ["/usr/sbin/rsyslogd", "/sbin/rsyslogd"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    if found.is_none() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("rsyslogd is missing (cargo xtask test installs rsyslog)");
        }
        eprintln!(
            "SKIPPED rsyslog config check: rsyslogd is missing (cargo xtask test installs it)"
        );
    }
    found
}

/// `rsyslogd -N1 -f FILE`: a full config validation (modules loaded, parameters checked).
fn check(rsyslogd: &Path, file: &Path) -> Result<Output> {
    Command::new(rsyslogd)
        .args(["-N1", "-f"])
        .arg(file)
        .output()
        .with_context(|| format!("running {} -N1", rsyslogd.display()))
}

#[test]
fn shipping_rsyslog_config_passes_rsyslogd_validation() -> Result<()> {
    let Some(rsyslogd) = rsyslogd() else {
        return Ok(());
    };
    let conf = repo().join("deploy/shipping/rsyslog-t1571-sensor.conf");
    let out = check(&rsyslogd, &conf)?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{}: {text}", conf.display());
    assert!(!text.contains("error"), "{}: {text}", conf.display());

    // The check is real: the same file with a misspelt parameter fails it.
    let broken = std::env::temp_dir().join(format!("t1571-rsyslog-{}.conf", std::process::id()));
    let original = std::fs::read_to_string(&conf)?;
    std::fs::write(&broken, original.replace("bulkmode=", "bulkmoed="))?;
    let out = check(&rsyslogd, &broken)?;
    let _ = std::fs::remove_file(&broken);
    assert!(
        !out.status.success(),
        "a misspelt parameter passed rsyslogd -N1"
    );
    Ok(())
}

//! The shipped systemd unit: hardened (scored by `systemd-analyze security`), and not
//! hardened into uselessness: the sensor runs with exactly the unit's capability set and
//! every feature still works.

use std::{path::PathBuf, process::Command, time::Duration};

use anyhow::{Context, Result};
use sensor_tests::{
    ATTACH_LOCK, Journald, Scratch, Sensor, http_get, metric_counter, poll_until, public_net,
    root_or_skip, sensor_bin, wait_for_value,
};

const PUBLIC: &str = "192.0.2.7";
/// The exposure `systemd-analyze security` may give the unit at most.
const MAX_EXPOSURE: f64 = 3.0;

fn unit_path() -> PathBuf {
    sensor_tests::repo().join("deploy/systemd/t1571-sensor.service")
}

/// The unit's `CapabilityBoundingSet=`, as capability names (`CAP_BPF`, ...).
fn unit_capabilities() -> Result<Vec<String>> {
    let text = std::fs::read_to_string(unit_path()).context("reading the unit")?;
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .context("the unit sets no CapabilityBoundingSet")?;
    Ok(line.split_whitespace().map(str::to_string).collect())
}

#[test]
fn unit_exposure_is_at_most_3() -> Result<()> {
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes"])
        .arg(unit_path())
        .output()
        .context("running systemd-analyze (package systemd)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for t1571-sensor.service: "))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no exposure level in:\n{text}"))?;
    assert!(
        score <= MAX_EXPOSURE,
        "exposure {score} > {MAX_EXPOSURE}:\n{text}"
    );
    Ok(())
}

#[test]
fn sensor_works_with_exactly_the_units_capabilities() -> Result<()> {
    if !root_or_skip("unit_capabilities") {
        return Ok(());
    }
    let caps = unit_capabilities()?;
    let caps: Vec<&str> = caps.iter().map(String::as_str).collect();
    let scratch = Scratch::new("unit-caps")?;
    let policy = scratch.dir.join("policy.toml");
    std::fs::write(&policy, "c2_ports = [4444]\n")?;
    let net = public_net(&[PUBLIC])?;
    // As the unit runs it: root, the bounding set cut to the unit's, no new privileges,
    // with every feature the unit turns on, and metrics.
    let policy_arg = policy.to_string_lossy().into_owned();
    let mut sensor = Sensor::start_with_capabilities(
        &caps,
        &[
            "--config",
            &policy_arg,
            "--output",
            "both",
            "--metrics",
            "127.0.0.1:0",
        ],
    )?;
    let addr = sensor.metrics_address()?;
    assert_eq!(http_get(&format!("http://{addr}/healthz"))?.0, 200);
    // Alerts flow.
    let pid = net.nc(PUBLIC, 4444)?;
    let v = sensor.connection(pid, 4444)?;
    assert_eq!(v["event"]["risk_score"], 3, "{v:#}");
    let pid = net.nc(PUBLIC, 9001)?;
    let v = sensor.connection(pid, 9001)?;
    assert_eq!(v["event"]["risk_score"], 2, "{v:#}");
    // A reload (ExecReload sends SIGHUP) works: 9001 becomes a C2 port.
    std::fs::write(&policy, "c2_ports = [4444, 9001]\n")?;
    sensor.signal(libc::SIGHUP);
    sensor.policy_reloaded()?;
    let pid = net.nc(PUBLIC, 9001)?;
    let v = sensor.connection(pid, 9001)?;
    assert_eq!(v["event"]["risk_score"], 3, "{v:#}");
    Ok(())
}

#[test]
fn alerts_reach_journald_as_structured_entries() -> Result<()> {
    if !root_or_skip("journald") {
        return Ok(());
    }
    let journal = Journald::ensure()?;
    let net = public_net(&[PUBLIC])?;
    let mut sensor = Sensor::start(&["--output", "both"])?;
    // A padded command line: 100 KiB of arguments, more than journald takes in a line.
    let pad = "A".repeat(100 * 1024);
    let code = format!(
        "import socket; s=socket.socket(); s.settimeout(2); s.connect_ex(('{PUBLIC}', 4444))"
    );
    let pid = net.run("python3", &["-c", &code, &pad])?;
    let v = sensor.connection(pid, 4444)?;
    assert_eq!(v["event"]["risk_score"], 3, "{v:#}");
    let pid_match = format!("SENSOR_PROCESS_PID={pid}");
    let entries = journal.entries(
        &[
            "SYSLOG_IDENTIFIER=t1571-sensor",
            "SENSOR_DESTINATION_PORT=4444",
            &pid_match,
        ],
        1,
    )?;
    assert_eq!(entries.len(), 1, "one entry per alert: {entries:#?}");
    let e = &entries[0];
    assert_eq!(e["PRIORITY"], "3", "High alerts are err");
    assert_eq!(e["SENSOR_RISK_SCORE"], "3");
    let msg = e["MESSAGE"].as_str().unwrap_or_default();
    assert!(
        msg.starts_with("High: ")
            && msg.contains(&format!("(pid {pid}"))
            && msg.ends_with(&format!("-> {PUBLIC}:4444 [T1571]")),
        "{msg}"
    );
    let doc: serde_json::Value =
        serde_json::from_str(e["SENSOR_ECS_JSON"].as_str().context("SENSOR_ECS_JSON")?)?;
    assert_eq!(doc["process"]["pid"], pid);
    // The padding is cut at the documented bound and says so.
    let cmdline = doc["process"]["command_line"].as_str().unwrap_or_default();
    assert!(
        cmdline.len() <= 4096,
        "command line {} bytes",
        cmdline.len()
    );
    assert_eq!(doc["process"]["args_count"], 4, "python3 -c CODE PAD");
    assert_eq!(
        doc["sensor"]["truncated"],
        serde_json::json!(["process.command_line", "process.args"])
    );
    // Alerts only under the alert identifier: the sensor's log lines are apart.
    let logs = journal.entries(&["SYSLOG_IDENTIFIER=t1571-sensor-log"], 1)?;
    assert!(!logs.is_empty(), "no sensor log entries in the journal");
    assert!(logs.iter().all(|l| l.get("SENSOR_ECS_JSON").is_none()));
    drop(sensor);
    Ok(())
}

/// Datagrams the sensor sent to a NOTIFY_SOCKET the test owns, as received.
fn notifications(sock: &std::os::unix::net::UnixDatagram, within: Duration) -> Vec<String> {
    let deadline = std::time::Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while std::time::Instant::now() < deadline {
        let _ = sock.set_read_timeout(Some(Duration::from_millis(100)));
        if let Ok(n) = sock.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    got
}

#[test]
fn sd_notify_ready_after_attach_and_watchdog_only_while_the_loop_runs() -> Result<()> {
    if !root_or_skip("sd_notify") {
        return Ok(());
    }
    let scratch = Scratch::new("notify")?;
    let path = scratch.dir.join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&path)?;
    let mut cmd = Command::new(sensor_bin());
    cmd.arg("run")
        .env("NOTIFY_SOCKET", &path)
        // 1 s: the sensor pings every 0.5 s.
        .env("WATCHDOG_USEC", "1000000");
    let sensor = Sensor::spawn(cmd)?;
    let first = notifications(&sock, Duration::from_secs(2));
    // READY=1 comes once the hooks are attached (the started line is already out).
    assert!(
        first.iter().any(|m| m.lines().any(|l| l == "READY=1")),
        "{first:?}"
    );
    let pings = first.iter().filter(|m| m.contains("WATCHDOG=1")).count();
    assert!(pings >= 2, "watchdog pings in 2 s: {first:?}");
    // Stalled loop (stopped): no pings.
    sensor.signal(libc::SIGSTOP);
    let _ = notifications(&sock, Duration::from_millis(300));
    let stalled = notifications(&sock, Duration::from_secs(2));
    sensor.signal(libc::SIGCONT);
    assert!(
        !stalled.iter().any(|m| m.contains("WATCHDOG=1")),
        "pings while stopped: {stalled:?}"
    );
    let resumed = notifications(&sock, Duration::from_secs(2));
    assert!(
        resumed.iter().any(|m| m.contains("WATCHDOG=1")),
        "{resumed:?}"
    );
    let (status, _) = sensor.stop_with(libc::SIGTERM)?;
    assert_eq!(status.code(), Some(0));
    let last = notifications(&sock, Duration::from_millis(500));
    assert!(last.iter().any(|m| m.contains("STOPPING=1")), "{last:?}");
    Ok(())
}

#[test]
fn metrics_count_alerts_exactly_and_healthz_sees_a_stall() -> Result<()> {
    if !root_or_skip("metrics") {
        return Ok(());
    }
    // The counter is host-wide: no other test's sensor (and its alerts) may run meanwhile.
    let _only = ATTACH_LOCK.write().unwrap_or_else(|e| e.into_inner());
    let net = public_net(&[PUBLIC])?;
    // Port 0: the kernel picks a free one; the sensor says which in sensor-started.
    let mut sensor = Sensor::start_unlocked(&[
        "--metrics",
        "127.0.0.1:0",
        "--fold-period",
        "0",
        "--test-stall-on-usr1",
    ])?;
    let addr = sensor.metrics_address()?;
    let high = "t1571_sensor_alerts_by_severity_total{severity=\"high\"}";
    let (code, body) = http_get(&format!("http://{addr}/metrics"))?;
    assert_eq!(code, 200, "{body}");
    let before = metric_counter(&body, high)?;
    const N: u64 = 3;
    for _ in 0..N {
        let pid = net.nc(PUBLIC, 4444)?;
        sensor.connection(pid, 4444)?;
    }
    // Published on every stats tick: wait for the counter to settle, then compare exactly.
    let after = poll_until(
        Duration::from_secs(5),
        || metric_counter(&http_get(&format!("http://{addr}/metrics"))?.1, high),
        |v| *v >= before + N,
    )?;
    assert_eq!(after - before, N);
    assert_eq!(http_get(&format!("http://{addr}/healthz"))?.0, 200);
    // The reader stalls (a test switch blocks the event loop): healthz turns 503 while
    // the endpoint, on its own thread, still answers.
    sensor.signal(libc::SIGUSR1);
    wait_for_value(
        "/healthz to report the stall (503)",
        Duration::from_secs(15),
        || Ok(http_get(&format!("http://{addr}/healthz"))?.0),
        |code| *code == 503,
    )?;
    Ok(())
}

//! Scan summaries on the running kernel: a process connecting to 200 closed ports of a
//! documentation address is one scan (a `network-scan` alert at the threshold and one at
//! exit for the same window), not 200 lines; a known C2 connect in the middle of it, from
//! another process and from the scanner itself, keeps its own alert line; a shell loop
//! running one `nc` per port is one scan too (the group key). Documentation addresses
//! inside test namespaces only, connects to closed ports (RST).

use std::{io::Write, process::Stdio, time::Duration};

use anyhow::{Context, Result};
use rstest::rstest;
use sensor_tests::{Sensor, assert_tcp_alert, counter, is_connection, public_net, root_or_skip};
use serde_json::Value;

const PUBLIC: &str = "203.0.113.7";
/// Scanned ports: none standard, none a known C2 port.
const FIRST: u16 = 20_000;

static LOOPS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn scans(lines: &[Value]) -> Vec<&Value> {
    lines
        .iter()
        .filter(|v| v["event"]["action"] == "network-scan")
        .collect()
}

fn has_pid(v: &Value, pid: u32) -> bool {
    v["sensor"]["scan"]["pids"]
        .as_array()
        .is_some_and(|p| p.contains(&pid.into()))
}

/// The scan alert's own fields, at the highest risk seen (a high-risk program to a
/// non-standard port is Medium, to a known C2 port High).
fn assert_scan(v: &Value, risk: u64, severity: &str) {
    assert_eq!(v["event"]["kind"], "alert", "{v:#}");
    assert_eq!(v["rule"]["id"], "t1571-network-scan", "{v:#}");
    assert_eq!(v["event"]["risk_score"], risk, "{v:#}");
    assert_eq!(v["sensor"]["severity"], severity, "{v:#}");
    assert!(v["event"]["start"].is_string() && v["event"]["end"].is_string());
    let sample = v["sensor"]["scan"]["sample"].as_array().unwrap();
    assert!(!sample.is_empty() && sample.len() <= 16, "{v:#}");
    assert_eq!(sample[0]["ip"], PUBLIC);
}

#[test]
fn a_port_scan_is_one_alert_and_c2_connects_inside_it_keep_their_lines() -> Result<()> {
    if !root_or_skip("scan") {
        return Ok(());
    }
    let net = public_net(&[PUBLIC])?;
    let mut sensor = Sensor::start(&[])?;
    // 100 ports, a pause (a line on stdin), its own connect to 4444, 100 more ports.
    let code = format!(
        "import socket, sys\ndef c(p):\n    s = socket.socket()\n    s.settimeout(2)\n    s.connect_ex(({PUBLIC:?}, p))\n    s.close()\nfor p in range({FIRST}, {FIRST} + 100): c(p)\nsys.stdin.readline()\nc(4444)\nfor p in range({FIRST} + 100, {FIRST} + 200): c(p)\n"
    );
    let mut scanner = net
        .command("python3")
        .args(["-c", &code])
        .stdin(Stdio::piped())
        .spawn()
        .context("starting the scanner")?;
    let pid = scanner.id();
    let at = sensor.wait_for(Duration::from_secs(30), |v| {
        v["event"]["action"] == "network-scan" && has_pid(v, pid)
    })?;
    assert_scan(&at, 2, "Medium");
    assert_eq!(at["sensor"]["scan"]["reason"], "threshold", "{at:#}");
    assert_eq!(at["sensor"]["scan"]["distinct_ports"], 21, "{at:#}");
    // In the middle of the scan: 4444 from another python3 (the scanner's group), from
    // nc, then from the scanner itself. Each is its own alert line.
    // Lingering, so its executable (the group key) is still in /proc when looked up.
    let other = net.python_connect_lingering(PUBLIC, 4444)?;
    let nc = net.nc(PUBLIC, 4444)?;
    for p in [other, nc] {
        assert_tcp_alert(&sensor.connection(p, 4444)?, 3, "High");
    }
    scanner
        .stdin
        .take()
        .context("scanner stdin")?
        .write_all(b"\n")?;
    assert_tcp_alert(&sensor.connection(pid, 4444)?, 3, "High");
    assert!(scanner.wait()?.success());
    sensor.barrier(&net, PUBLIC)?;
    let (status, lines) = sensor.stop_with(libc::SIGTERM)?;
    assert!(status.success());
    let own: Vec<_> = lines
        .iter()
        .filter(|v| v["event"]["action"] == "network-connect" && v["process"]["pid"] == pid)
        .collect();
    assert_eq!(
        own.len(),
        21,
        "20 lines before the threshold and the C2 connect: {own:#?}"
    );
    assert!(own.iter().any(|v| is_connection(v, pid, 4444)));
    let mine: Vec<_> = scans(&lines)
        .into_iter()
        .filter(|v| has_pid(v, pid))
        .collect();
    let reasons: Vec<_> = mine
        .iter()
        .map(|v| &v["sensor"]["scan"]["reason"])
        .collect();
    assert_eq!(reasons, ["threshold", "exit"], "one window: {mine:#?}");
    let end = mine[1];
    assert_scan(end, 3, "High");
    let s = &end["sensor"]["scan"];
    assert!(
        has_pid(end, other),
        "the other python3 is in the group: {end:#}"
    );
    assert_eq!(counter(end, "sensor.scan.connections")?, 202, "{end:#}");
    assert_eq!(counter(end, "sensor.scan.distinct_ports")?, 201);
    assert_eq!(counter(end, "sensor.scan.distinct_hosts")?, 1);
    assert_eq!(counter(end, "sensor.scan.connections_folded")?, 202 - 22);
    assert_eq!(s["c2_ports"], serde_json::json!([4444]), "{end:#}");
    let stopped = lines
        .iter()
        .find(|v| v["event"]["action"] == "sensor-stopped")
        .context("no sensor-stopped")?;
    assert!(
        counter(stopped, "sensor.engine.scans_detected")? >= 1,
        "{stopped:#}"
    );
    assert!(counter(stopped, "sensor.engine.scan_connects_folded")? >= 180);
    Ok(())
}

/// A shell loop running one short-lived `nc` per port: many processes, one group (host,
/// executable, user, parent), one scan.
#[rstest]
#[case::past_the_threshold(30)]
#[case::past_the_listed_processes(60)]
fn a_shell_loop_of_nc_is_one_scan(#[case] ports: u16) -> Result<()> {
    if !root_or_skip("scan") {
        return Ok(());
    }
    // Every sensor sees every loop, and both cases' loops are one group: one at a time.
    let _one = LOOPS.lock().unwrap_or_else(|e| e.into_inner());
    let net = public_net(&[PUBLIC])?;
    let mut sensor = Sensor::start(&[])?;
    let script = format!(
        // nc to a closed port fails: the loop itself succeeds.
        "for p in $(seq {FIRST} {}); do nc -z -w1 {PUBLIC} $p; done; true",
        FIRST + ports - 1
    );
    assert!(
        net.command("sh")
            .args(["-c", &script])
            .status()
            .context("running the loop")?
            .success()
    );
    sensor.barrier(&net, PUBLIC)?;
    let (status, lines) = sensor.stop_with(libc::SIGTERM)?;
    assert!(status.success());
    let nc_lines = lines
        .iter()
        .filter(|v| {
            v["event"]["action"] == "network-connect"
                && v["process"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("nc"))
                && v["destination"]["port"]
                    .as_u64()
                    .is_some_and(|p| p >= u64::from(FIRST) && p < u64::from(FIRST + ports))
        })
        .count();
    let loop_scans: Vec<_> = scans(&lines)
        .into_iter()
        .filter(|v| {
            v["process"]["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("nc"))
                && v["sensor"]["scan"]["sample"][0]["port"] == FIRST
        })
        .collect();
    let end = loop_scans
        .iter()
        .find(|v| v["sensor"]["scan"]["reason"] == "exit")
        .with_context(|| format!("no scan for the loop: {lines:#?}"))?;
    assert_scan(end, 2, "Medium");
    let pids = end["sensor"]["scan"]["pids"].as_array().unwrap().len() as u64;
    let unlisted = counter(end, "sensor.scan.processes_not_listed")?;
    assert!(pids > 20, "one nc per port: {end:#}");
    assert_eq!(pids + unlisted, u64::from(ports), "{end:#}");
    assert_eq!(
        counter(end, "sensor.scan.distinct_ports")?,
        u64::from(ports)
    );
    assert_eq!(counter(end, "sensor.scan.connections")?, u64::from(ports));
    assert_eq!(
        nc_lines as u64 + counter(end, "sensor.scan.connections_folded")?,
        u64::from(ports),
        "every connect on a line or in the scan ({unlisted} processes not listed)"
    );
    assert_eq!(nc_lines, 20, "lines stop at the threshold");
    Ok(())
}

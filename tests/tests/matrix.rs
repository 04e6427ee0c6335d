//! The kernel matrix's tests (`cargo xtask vmtest`): each boots a kernel once and runs
//! these with every connect hook forced in turn (`SENSOR_PROBE`), where a sensor start
//! costs about a minute of emulated CPU. So each test checks, in one sensor's lifetime,
//! what the other test files check with a sensor each: everything that depends on the
//! hook's own reads (addresses, ports, pid, parent, user, the process key that joins a
//! connect to the kernel's exec record) and a clean exit; and, once per kernel, what
//! depends on the lifecycle hooks. On the host they run like any other test.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context, Result};
use sensor_tests::{
    ATTACH_LOCK, Net, Scratch, Sensor, assert_tcp_alert, bpf_programs_of, check_hook,
    is_connection, real_exe, root_or_skip,
};
use serde_json::Value;

const PUBLIC: &str = "192.0.2.7";
const PUBLIC6: &str = "2001:db8::7";
/// Room for the whole host's records while the sensor is frozen.
const FROZEN_RING: &str = "16777216";

fn public_net() -> Result<Net> {
    sensor_tests::public_net(&[PUBLIC, PUBLIC6])
}

/// Atomic tests 1 and 2, a process gone before userspace looks, and a clean exit, on
/// the hook `SENSOR_PROBE` forces (else the one auto selection picks).
#[test]
fn one_sensor_per_hook_atomic_cases_kernel_attribution_clean_exit() -> Result<()> {
    if !root_or_skip("matrix_hook") {
        return Ok(());
    }
    let scratch = Scratch::new("matrix")?;
    let connector = scratch.connector(env!("CARGO_BIN_EXE_connector"))?;
    let net = public_net()?;
    let mut sensor = Sensor::start(&["--ring-buffer-size", FROZEN_RING])?;
    let held = bpf_programs_of(sensor.pid());

    // Atomic 1: nc to 4444, IPv4.
    let pid = net.nc(PUBLIC, 4444)?;
    let v = sensor.connection(pid, 4444)?;
    assert_tcp_alert(&v, 3, "High");
    check_hook(v["sensor"]["probe"].as_str().unwrap_or_default())?;
    assert_eq!(v["process"]["executable"], real_exe("nc")?, "{v:#}");
    assert_eq!(
        v["process"]["command_line"],
        format!("nc -z -w2 {PUBLIC} 4444")
    );
    assert_eq!(v["destination"]["ip"], PUBLIC);
    assert_eq!(v["network"]["type"], "ipv4");
    assert_eq!(v["process"]["parent"]["pid"], std::process::id());
    assert_eq!(v["user"]["id"], "0");
    assert_eq!(v["user"]["name"], "root");

    // Atomic 2: curl to 8088 (IPv4), python3 to 8088 (IPv6).
    let curl = net.run(
        "curl",
        &["-s", "-m", "2", &format!("http://{PUBLIC}:8088/beacon")],
    )?;
    let v = sensor.connection(curl, 8088)?;
    assert_tcp_alert(&v, 3, "High");
    assert_eq!(v["process"]["executable"], real_exe("curl")?, "{v:#}");
    let py = net.python_connect(PUBLIC6, 8088)?;
    let v = sensor.connection(py, 8088)?;
    assert_tcp_alert(&v, 3, "High");
    assert_eq!(v["sensor"]["matched"]["high_risk_executable"], "python3");
    assert_eq!(v["destination"]["ip"], PUBLIC6, "{v:#}");
    assert_eq!(v["network"]["type"], "ipv6");

    // Gone before userspace looks: the sensor is frozen while the process execs,
    // connects and exits, so only the kernel's exec record, joined to the connect by
    // the process key this hook read, can attribute it.
    sensor.signal(libc::SIGSTOP);
    let pid = net.run(&connector, &[PUBLIC, "4444"]);
    sensor.signal(libc::SIGCONT);
    let pid = pid?;
    let v = sensor.connection(pid, 4444)?;
    assert_eq!(v["process"]["executable"], connector.as_str(), "{v:#}");
    assert_eq!(
        v["process"]["command_line"],
        format!("{connector} {PUBLIC} 4444")
    );
    assert_eq!(
        v["sensor"]["process"]["attribution"], "kernel-exec",
        "{v:#}"
    );
    assert_eq!(v["process"]["parent"]["pid"], std::process::id());
    // A test build no package installed: the unmanaged tier.
    assert_eq!(
        v["event"]["risk_score"], 2,
        "unlisted unmanaged program, C2 port: {v:#}"
    );

    // Clean exit: every program the sensor reported attaching goes with it.
    let started = sensor
        .lines()
        .into_iter()
        .find(|v| v["event"]["action"] == "sensor-started")
        .context("no sensor-started line")?;
    assert_eq!(
        held.len(),
        sensor_tests::expected_programs(&started),
        "programs held by the sensor: {held:?}"
    );
    assert!(
        held.len() >= 4,
        "connect and lifecycle hooks at least: {held:?}"
    );
    let (status, lines) = sensor.stop_with(libc::SIGTERM)?;
    assert_eq!(status.code(), Some(0));
    assert!(
        lines
            .iter()
            .any(|v| v["event"]["action"] == "sensor-stopped")
    );
    let still = sensor_tests::still_loaded(&held)?;
    assert!(still.is_empty(), "programs left loaded: {still:?}");
    Ok(())
}

/// The lifecycle hooks' records: a burst of short-lived processes (`SENSOR_TEST_BURST`,
/// default 200) all attributed with nothing lost, a memfd-executed (fileless) program,
/// and a connect from a worker thread.
#[test]
fn one_sensor_lifecycle_burst_fileless_and_thread() -> Result<()> {
    if !root_or_skip("matrix_lifecycle") {
        return Ok(());
    }
    let n = sensor_tests::burst_count(200)?;
    // Exclusive: the burst would flood the ring buffers of other tests' sensors.
    let _only = ATTACH_LOCK.write().unwrap_or_else(|e| e.into_inner());
    let scratch = Scratch::new("matrix-lifecycle")?;
    let connector = scratch.connector(env!("CARGO_BIN_EXE_connector"))?;
    let net = public_net()?;
    let mut sensor = Sensor::start_unlocked(&["--ring-buffer-size", FROZEN_RING])?;

    // Fileless: python3 loads the connector into a memfd and fexecve()s it, while the
    // sensor is frozen, so the name must come from the kernel's record (the dentry).
    let code = format!(
        "import os\nfd = os.memfd_create('payload', 0)\nos.write(fd, open({connector:?}, 'rb').read())\nos.execve(fd, ['payload', {PUBLIC:?}, '5555'], {{}})"
    );
    sensor.signal(libc::SIGSTOP);
    let pid = net.run("python3", &["-c", &code]);
    sensor.signal(libc::SIGCONT);
    let v = sensor.connection(pid?, 5555)?;
    assert_eq!(v["sensor"]["process"]["fileless"], true, "{v:#}");
    assert!(
        v["process"]["executable"]
            .as_str()
            .is_some_and(|e| e.starts_with("/memfd:payload")),
        "{v:#}"
    );
    assert_eq!(v["event"]["risk_score"], 2, "{v:#}");

    // A connect from a thread started well after its process: keyed by the leader.
    let code = format!(
        "import socket, threading, time\ntime.sleep(0.05)\ndef go():\n    s = socket.socket()\n    s.settimeout(2)\n    s.connect_ex(({PUBLIC:?}, 9001))\nt = threading.Thread(target=go)\nt.start()\nt.join()"
    );
    let pid = net.run("python3", &["-c", &code])?;
    let v = sensor.connection(pid, 9001)?;
    assert_ne!(v["process"]["thread"]["id"], pid, "{v:#}");
    assert_eq!(
        v["sensor"]["matched"]["high_risk_matched_by"], "executable",
        "{v:#}"
    );
    assert_eq!(v["process"]["parent"]["pid"], std::process::id());

    // The burst: one shell forks them all in the background as fast as it can.
    let script =
        format!("i=0; while [ $i -lt {n} ]; do {connector} {PUBLIC} 4444 & i=$((i+1)); done; wait");
    let shell = net.run("sh", &["-c", &script])?;
    let marker = net.nc(PUBLIC, 4444)?;
    sensor.wait_for(Duration::from_secs(300), |v| is_connection(v, marker, 4444))?;
    let (status, lines) = sensor.stop_with(libc::SIGTERM)?;
    assert_eq!(status.code(), Some(0));
    let burst: Vec<&Value> = lines
        .iter()
        .filter(|v| v["destination"]["port"] == 4444 && v["process"]["parent"]["pid"] == shell)
        .collect();
    let stopped = lines
        .iter()
        .find(|v| v["event"]["action"] == "sensor-stopped")
        .context("no sensor-stopped line")?;
    eprintln!(
        "burst: {} alerts for {n} connectors, lost {}",
        burst.len(),
        stopped["sensor"]["lost_events_total"]
    );
    assert_eq!(stopped["sensor"]["lost_events_total"], 0, "no records lost");
    assert_eq!(burst.len(), n, "one alert per connector");
    let exe = PathBuf::from(&connector);
    assert!(
        burst.iter().all(
            |v| v["process"]["executable"] == exe.to_str().unwrap_or_default()
                && v["sensor"]["process"]["attribution"] != "none"
        ),
        "every alert attributed"
    );
    Ok(())
}

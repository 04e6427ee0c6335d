//! The detection engine on the running kernel and on recordings: a python3 beacon every
//! second to 9001 becomes a beacon event, a recorded `--all` run replays under a new
//! policy, and SIGHUP swaps the policy (or keeps it when the new file is invalid).
//! Same network rule as end_to_end.rs: documentation addresses inside test namespaces.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context, Result};
use sensor_tests::{Net, Scratch, Sensor, counter, replay, root_or_skip};
use serde_json::Value;

const PUBLIC: &str = "203.0.113.7";

fn public_net() -> Result<Net> {
    sensor_tests::public_net(&[PUBLIC])
}

fn temp_file(name: &str, text: &str) -> Result<PathBuf> {
    let path = std::env::temp_dir().join(format!("t1571-engine-{}-{name}", std::process::id()));
    std::fs::write(&path, text)?;
    Ok(path)
}

fn action<'a>(lines: &'a [Value], a: &str) -> Vec<&'a Value> {
    lines.iter().filter(|v| v["event"]["action"] == a).collect()
}

#[test]
fn python3_beacon_every_second_to_9001_is_detected() -> Result<()> {
    if !root_or_skip("beacon") {
        return Ok(());
    }
    let net = public_net()?;
    let mut sensor = Sensor::start(&[])?;
    // Atomic test 4, at 1 s instead of 60 s: ten connects from one process, 1 s apart.
    let code = format!(
        "import socket, time\nfor i in range(10):\n    s = socket.socket()\n    s.settimeout(2)\n    s.connect_ex(({PUBLIC:?}, 9001))\n    s.close()\n    if i < 9: time.sleep(1)\n"
    );
    let pid = net.run("python3", &["-c", &code])?;
    let beacon = sensor.wait_for(Duration::from_secs(10), |v| {
        v["event"]["action"] == "beacon-detected" && v["process"]["pid"] == pid
    })?;
    assert_eq!(beacon["event"]["kind"], "alert");
    assert_eq!(beacon["rule"]["id"], "t1571-beacon");
    assert_eq!(beacon["destination"]["ip"], PUBLIC);
    assert_eq!(beacon["destination"]["port"], 9001);
    assert_eq!(beacon["event"]["risk_score"], 3);
    let b = &beacon["sensor"]["beacon"];
    assert_eq!(b["connections"], 10, "{beacon:#}");
    let interval = b["interval_seconds"].as_f64().unwrap();
    assert!((0.95..1.5).contains(&interval), "interval {interval}");
    assert!(b["jitter_seconds"].as_f64().unwrap() < 0.2, "{b}");
    let exe = beacon["process"]["executable"].as_str().unwrap_or("");
    assert!(exe.contains("python3"), "{beacon:#}");

    // Flood control: one process, same destination, within 10 s: folded, none uncounted.
    let (status, lines) = sensor.stop_with(libc::SIGTERM)?;
    assert!(status.success());
    let alerts: Vec<_> = lines
        .iter()
        .filter(|v| v["event"]["action"] == "network-connect" && v["process"]["pid"] == pid)
        .collect();
    let counted: u64 = alerts
        .iter()
        .map(|v| v["sensor"]["folded_count"].as_u64().unwrap())
        .sum();
    assert_eq!(counted, 10, "{alerts:#?}");
    assert!(
        alerts.len() < 10,
        "repeats were folded: {} lines",
        alerts.len()
    );
    let stopped = action(&lines, "sensor-stopped");
    assert!(
        stopped[0]["sensor"]["engine"]["beacons_detected"]
            .as_u64()
            .unwrap()
            >= 1
    );
    // Rollups: python3's group holds the ten (other tests' python3 runs share host,
    // executable, user and parent, hence >=); summed in case a window boundary fell
    // inside the test. The window still open at exit is printed, marked partial.
    let rollups: Vec<_> = action(&lines, "alert-rollup")
        .into_iter()
        .filter(|v| v["process"]["executable"].as_str() == Some(exe))
        .collect();
    let total: u64 = rollups
        .iter()
        .map(|v| counter(v, "sensor.rollup.connections"))
        .sum::<Result<u64>>()?;
    assert!(total >= 10, "{rollups:#?}");
    let last = rollups.last().context("no rollup for python3")?;
    assert_eq!(last["sensor"]["rollup"]["partial_window"], true);
    assert!(rollups.iter().any(|v| {
        v["sensor"]["rollup"]["ports"]
            .as_array()
            .is_some_and(|p| p.contains(&9001.into()))
    }));
    assert!(rollups.iter().all(|v| v["event"]["risk_score"] == 3));
    Ok(())
}

#[test]
fn recorded_run_replays_under_a_new_policy() -> Result<()> {
    if !root_or_skip("replay") {
        return Ok(());
    }
    let scratch = Scratch::new("connector")?;
    let connector = scratch.connector(env!("CARGO_BIN_EXE_connector"))?;
    let net = public_net()?;
    let mut sensor = Sensor::start(&["--all"])?;
    let nc = net.python_connect_lingering(PUBLIC, 4444)?;
    let curl = net.run(
        "curl",
        &["-s", "-m", "2", &format!("http://{PUBLIC}:8088/")],
    )?;
    let quiet = net.run(&connector, &[PUBLIC, "5555"])?;
    for (pid, port) in [(nc, 4444), (curl, 8088), (quiet, 5555)] {
        sensor.connection(pid, port)?;
    }
    let (_, lines) = sensor.stop_with(libc::SIGTERM)?;
    // Keep this test's connections (other tests run in parallel) and the state lines.
    let ours = |v: &&Value| {
        let pid = &v["process"]["pid"];
        v["event"]["kind"] == "state" || *pid == nc || *pid == curl || *pid == quiet
    };
    let mut recording: Vec<String> = lines.iter().filter(ours).map(|v| v.to_string()).collect();
    recording.insert(2, "{\"truncated".into());
    let recording = recording.join("\n") + "\n";

    // Same policy: the same verdicts as live.
    let (out, _) = replay(&["--all"], &recording)?;
    let conn = |lines: &[Value], pid: u32| -> Value {
        lines
            .iter()
            .find(|v| v["event"]["action"] == "network-connect" && v["process"]["pid"] == pid)
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(conn(&out, nc)["event"]["risk_score"], 3);
    assert_eq!(conn(&out, curl)["event"]["risk_score"], 3);
    assert_eq!(conn(&out, quiet)["event"]["risk_score"], 0);

    // A policy that allows python3 to 4444 and makes 5555 a C2 port.
    let policy = temp_file(
        "replay.toml",
        "[extend]\nc2_ports = [5555]\n\n[[allow]]\nname = \"pentest\"\nexecutables = [\"python3*\"]\ndestination_ports = [4444]\n",
    )?;
    let (out, err) = replay(
        &["--all", "--config", policy.to_str().unwrap(), "-"],
        &recording,
    )?;
    std::fs::remove_file(&policy).ok();
    let v = conn(&out, nc);
    assert_eq!(v["event"]["kind"], "event", "{v:#}");
    assert_eq!(v["sensor"]["allow_rule"], "pentest");
    assert_eq!(conn(&out, curl)["event"]["risk_score"], 3);
    // The connector is a program no package installed: on a C2 port, the unmanaged tier.
    let q = conn(&out, quiet);
    assert_eq!(q["event"]["risk_score"], 2, "5555 is now a C2 port: {q:#}");
    assert_eq!(
        q["sensor"]["matched"]["unmanaged_executable"], true,
        "{q:#}"
    );
    let summary = action(&out, "replay-summary");
    let s = &summary[0]["sensor"];
    assert_eq!(s["replay"]["connections"], 3);
    assert_eq!(s["replay"]["malformed_lines"], 1);
    assert!(
        s["replay"]["skipped_lines"].as_u64().unwrap() >= 2,
        "started + stopped"
    );
    assert_eq!(s["engine"]["suppressed_by_rule"]["pentest"], 1);
    assert!(err.contains("line 3: not JSON"), "{err}");
    Ok(())
}

#[test]
fn sighup_reloads_the_policy_and_keeps_it_when_invalid() -> Result<()> {
    if !root_or_skip("sighup") {
        return Ok(());
    }
    let net = public_net()?;
    let path = temp_file("hup.toml", "c2_ports = [4444, 8088]\n")?;
    let mut sensor = Sensor::start(&["--all", "--config", path.to_str().unwrap()])?;
    let py = |sensor: &mut Sensor| -> Result<Value> {
        let pid = net.python_connect_lingering(PUBLIC, 4444)?;
        sensor.connection(pid, 4444)
    };
    assert_eq!(py(&mut sensor)?["event"]["kind"], "alert");

    std::fs::write(
        &path,
        "c2_ports = [4444, 8088]\n[[allow]]\nname = \"authorised pentest\"\nexecutables = [\"python3*\"]\ndestination_ports = [4444]\n",
    )?;
    sensor.signal(libc::SIGHUP);
    sensor.policy_reloaded()?;
    let v = py(&mut sensor)?;
    assert_eq!(v["event"]["kind"], "event", "{v:#}");
    assert_eq!(v["sensor"]["allow_rule"], "authorised pentest");

    std::fs::write(
        &path,
        "c2_ports = [4444, 8088]\nexcluded_networks = [\"10.0.0.0/33\"]\n",
    )?;
    sensor.signal(libc::SIGHUP);
    let failed = sensor.wait_for(Duration::from_secs(10), |v| {
        v["event"]["action"] == "policy-reload-failed"
    })?;
    let why = failed["sensor"]["error"].as_str().unwrap_or("");
    assert!(
        why.contains("line 2, column 22") && why.contains("hup.toml"),
        "{why}"
    );
    // Still running, still on the previous policy.
    let v = py(&mut sensor)?;
    assert_eq!(v["sensor"]["allow_rule"], "authorised pentest", "{v:#}");
    assert!(
        sensor.stderr().contains("keeping the old policy"),
        "{}",
        sensor.stderr()
    );
    let curl = net.run(
        "curl",
        &["-s", "-m", "2", &format!("http://{PUBLIC}:8088/")],
    )?;
    assert_eq!(sensor.connection(curl, 8088)?["event"]["risk_score"], 3);

    let (status, lines) = sensor.stop_with(libc::SIGTERM)?;
    std::fs::remove_file(&path).ok();
    assert!(status.success());
    let stopped = action(&lines, "sensor-stopped");
    assert_eq!(
        stopped[0]["sensor"]["engine"]["suppressed_by_rule"]["authorised pentest"],
        2
    );
    Ok(())
}

/// A checked-in recording (tests/fixtures/atomic4-beacon.jsonl, in the `sensor run --all`
/// format): Atomic test 4 as recorded, ten connects from bash to 9001 about 60 s apart,
/// plus state lines and one corrupt line. No kernel needed.
#[test]
fn replay_fixture_finds_the_60_second_beacon() -> Result<()> {
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/atomic4-beacon.jsonl");
    let input = std::fs::read_to_string(&fixture)?;
    let (out, err) = replay(&[], &input)?;
    let beacons = action(&out, "beacon-detected");
    assert_eq!(beacons.len(), 1, "{out:#?}");
    let b = &beacons[0]["sensor"]["beacon"];
    let interval = b["interval_seconds"].as_f64().unwrap();
    assert!((55.0..65.0).contains(&interval), "{b}");
    assert_eq!(b["connections"], 10);
    // Every connection scored (risk 3: bash to a C2 port), each its own process: unfolded.
    let alerts = action(&out, "network-connect");
    assert_eq!(alerts.len(), 10);
    assert!(alerts.iter().all(|v| v["event"]["risk_score"] == 3));
    assert_eq!(alerts[9]["sensor"]["beacon"]["connections"], 10);
    assert!(alerts[8]["sensor"].get("beacon").is_none());
    // Recorded time drives rollups: 540 s of recording is two 300 s windows.
    let rollups = action(&out, "alert-rollup");
    let total: u64 = rollups
        .iter()
        .map(|v| v["sensor"]["rollup"]["connections"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 10);
    assert!(rollups.len() >= 2, "{rollups:#?}");
    let s = &action(&out, "replay-summary")[0]["sensor"]["replay"];
    assert_eq!(s["malformed_lines"], 1);
    assert_eq!(s["skipped_lines"], 2);
    assert!(err.contains("line 7:"), "{err}");
    Ok(())
}

//! Adversary: a process churning distinct destinations cannot push a beacon out of the
//! beacon tracker. A python3 beacon (10 connects, 1 s apart, to a closed port) is flagged
//! while `storm` (an ordinary program, on no list) connects to 200 distinct destinations a
//! second. The tracker is made small (`--beacon-max-keys 64`): with eviction of the least
//! recently seen key, 200 new keys a second would evict the beacon's key between any two
//! beats (the test fails that way against the detector before per-executable fairness).
//! Same network rule as end_to_end.rs: documentation addresses inside test namespaces.

use std::{
    io::Read,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use sensor_tests::{Running, Sensor, counter, public_net, root_or_skip};
use serde_json::Value;

const BEACON_DST: &str = "203.0.113.7";
const BEACON_PORT: u16 = 9001;
const CHURN_DST: &str = "198.51.100.7";
const MAX_KEYS: u64 = 64;
const CHURN_RATE: u64 = 200;
const CHURN_SECONDS: u64 = 18;

/// The engine counters of the newest `sensor-stats` line.
fn engine_stats(sensor: &Sensor) -> Option<Value> {
    sensor
        .lines()
        .into_iter()
        .rev()
        .find(|v| v["event"]["action"] == "sensor-stats")
        .map(|v| v["sensor"]["engine"].clone())
}

/// The event's place in the sensor's output (its id is RUN-SEQ, SEQ in hex).
fn seq(v: &Value) -> Option<u64> {
    v["event"]["id"]
        .as_str()
        .and_then(|id| id.rsplit_once('-'))
        .and_then(|(_, n)| u64::from_str_radix(n, 16).ok())
}

fn evicted(engine: &Value) -> Result<u64> {
    counter(engine, "beacon_keys_evicted")
}

#[test]
fn beacon_is_flagged_while_another_process_churns_200_destinations_a_second() -> Result<()> {
    if !root_or_skip("adversary_beacon") {
        return Ok(());
    }
    let net = public_net(&[BEACON_DST, CHURN_DST])?;
    let mut sensor = Sensor::start(&[
        "--beacon-max-keys",
        &MAX_KEYS.to_string(),
        "--metrics-interval",
        "1",
    ])?;
    let started = sensor.wait_for(Duration::from_secs(5), |v| {
        v["event"]["action"] == "sensor-started"
    })?;
    assert_eq!(
        started["sensor"]["engine"]["beacon_max_keys"], MAX_KEYS,
        "{started:#}"
    );

    // The churn: one process, a new (address, port) key every 5 ms, closed ports (RST).
    let mut storm = Running(
        std::process::Command::new(env!("CARGO_BIN_EXE_storm"))
            .args(["--netns", &net.client_path(), "--dst", CHURN_DST])
            .args(["--ports", "20000-59999"])
            .args(["--rate", &CHURN_RATE.to_string()])
            .args(["--seconds", &CHURN_SECONDS.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .context("starting storm")?,
    );
    // The churn has filled the tracker and evicts: it reaches the detector.
    sensor.wait_for(Duration::from_secs(10), |v| {
        v["event"]["action"] == "sensor-stats"
            && evicted(&v["sensor"]["engine"]).is_ok_and(|n| n >= 2 * CHURN_RATE)
    })?;
    let before = engine_stats(&sensor).context("a sensor-stats line")?;

    // Atomic test 4 at 1 s: ten connects from one process, 1 s apart.
    let code = format!(
        "import socket, time\nfor i in range(10):\n    s = socket.socket()\n    s.settimeout(2)\n    s.connect_ex(({BEACON_DST:?}, {BEACON_PORT}))\n    s.close()\n    if i < 9: time.sleep(1)\n"
    );
    let t0 = Instant::now();
    let mut beacon = Running(
        net.command("python3")
            .args(["-c", &code])
            .spawn()
            .context("starting the python3 beacon")?,
    );
    let pid = beacon.0.id();
    let found = sensor.wait_for(Duration::from_secs(20), |v| {
        v["event"]["action"] == "beacon-detected" && v["process"]["pid"] == pid
    })?;
    let took = t0.elapsed();
    assert!(
        storm.0.try_wait()?.is_none(),
        "the churn ran through the whole beacon"
    );
    assert_eq!(found["destination"]["ip"], BEACON_DST, "{found:#}");
    assert_eq!(found["destination"]["port"], BEACON_PORT, "{found:#}");
    assert_eq!(found["sensor"]["beacon"]["connections"], 10, "{found:#}");
    beacon.0.wait()?;

    // The churn kept evicting while the beacon beat: at least a full tracker's worth
    // between every two beats (64 new keys within a beat would have evicted it before).
    let found_seq = seq(&found).with_context(|| format!("no RUN-SEQ event.id: {found:#}"))?;
    let after = sensor.wait_for(Duration::from_secs(5), |v| {
        v["event"]["action"] == "sensor-stats" && seq(v).is_some_and(|n| n > found_seq)
    })?["sensor"]["engine"]
        .clone();
    let during = evicted(&after)? - evicted(&before)?;
    eprintln!("beacon flagged after {took:?}; {during} keys evicted meanwhile; engine: {after:#}");
    assert!(
        during >= 9 * MAX_KEYS,
        "the churn evicted only {during} keys while the beacon ran"
    );
    assert!(after["beacon_keys"].as_u64() <= Some(MAX_KEYS), "{after:#}");
    let by_reason = &after["beacon_keys_evicted_by_reason"];
    let total: u64 = ["executable_quota", "tracker_full", "memory_budget"]
        .iter()
        .map(|r| counter(by_reason, r))
        .sum::<Result<u64>>()?;
    assert_eq!(total, evicted(&after)?, "{after:#}");
    assert!(
        by_reason["executable_quota"].as_u64() >= Some(during),
        "the churner evicted its own keys: {after:#}"
    );
    assert!(
        after["beacon_tracker_bytes"].as_u64() > Some(0),
        "{after:#}"
    );

    // The churn's own report: it ran at the rate asked.
    storm.0.wait()?;
    let mut out = String::new();
    storm
        .0
        .stdout
        .take()
        .context("storm stdout")?
        .read_to_string(&mut out)?;
    let report: Value = serde_json::from_str(out.trim()).context("storm's report")?;
    let rate = report["per_second"].as_f64().unwrap_or(0.0);
    assert!(
        rate >= 0.9 * CHURN_RATE as f64,
        "storm ran at {rate}/s: {report}"
    );
    Ok(())
}

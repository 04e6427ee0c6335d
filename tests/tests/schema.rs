//! Every line of a real run validates against the published schema (deploy/schema/, the
//! file its `event.action` names in index.json) with a real validator (the `jsonschema`
//! crate): a live run with connect, listen, inbound and UDP alerts, a beacon, rollups,
//! metric and state lines (a SIGHUP without --config makes a `policy-reload-failed`); the
//! replay of that run (its `replay-summary`); and a `--format sysmon-json` run. Each run
//! must show the kinds it was made for, so no run passes on nothing.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use anyhow::{Context, Result, bail};
use jsonschema::Validator;
use sensor_tests::{Net, Running, Scratch, Sensor, replay, root_or_skip};
use serde_json::Value;

const SERVER: &str = "203.0.113.7";
const CLIENT: &str = "203.0.113.1";
const WAIT: Duration = Duration::from_secs(20);

/// The published schema: a validator per file and the index of which file holds which
/// `event.action` (a line without `event` is the sysmon view's: the file with none).
struct Published {
    by_action: BTreeMap<String, String>,
    sysmon: String,
    validators: BTreeMap<String, Validator>,
}

impl Published {
    fn load() -> Result<Self> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/schema");
        let read = |name: &str| -> Result<Value> {
            let path = dir.join(name);
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
        };
        let index = read("index.json")?;
        let (mut by_action, mut sysmon, mut validators) = (BTreeMap::new(), None, BTreeMap::new());
        for kind in index["kinds"].as_array().context("index.json: no kinds")? {
            let file = kind["file"]
                .as_str()
                .context("index.json: a kind without file")?;
            let actions = kind["event.action"]
                .as_array()
                .context("index.json: actions")?;
            if actions.is_empty() {
                sysmon = Some(file.to_string());
            }
            for a in actions {
                by_action.insert(a.as_str().context("an action")?.to_string(), file.into());
            }
            let validator = jsonschema::options()
                .should_validate_formats(true)
                .build(&read(file)?)
                .map_err(|e| anyhow::anyhow!("{file} is not a valid schema: {e}"))?;
            validators.insert(file.to_string(), validator);
        }
        Ok(Self {
            by_action,
            sysmon: sysmon.context("index.json: no file for the sysmon view")?,
            validators,
        })
    }

    /// Validates every line; fails naming each line that does not validate and why.
    fn check(&self, what: &str, lines: &[Value]) -> Result<()> {
        let mut bad = Vec::new();
        for line in lines {
            let file = match line.pointer("/event/action") {
                Some(Value::String(a)) => self.by_action.get(a),
                None if line.get("EventID").is_some() => Some(&self.sysmon),
                _ => None,
            };
            let Some(file) = file else {
                bad.push(format!("no schema for this line's kind: {line}"));
                continue;
            };
            let errors: Vec<String> = self.validators[file]
                .iter_errors(line)
                .map(|e| format!("{} at {}", e, e.instance_path()))
                .collect();
            if !errors.is_empty() {
                bad.push(format!("{file}: {}\n  {line}", errors.join("; ")));
            }
        }
        if !bad.is_empty() {
            bail!(
                "{what}: {} of {} lines do not validate:\n{}",
                bad.len(),
                lines.len(),
                bad.join("\n")
            );
        }
        Ok(())
    }
}

/// The smallest line a schema file takes: every required field, each the first value its
/// type allows (0, "", false, [], an enum's first). Made from the file, so a case that
/// changes one field tests that field's rule alone.
fn smallest(root: &Value, node: &Value) -> Value {
    if let Some(r) = node["$ref"].as_str() {
        let name = r.trim_start_matches("#/$defs/");
        return smallest(root, &root["$defs"][name]);
    }
    if let Some(first) = node["enum"].get(0) {
        return first.clone();
    }
    match node["type"].as_str() {
        Some("object") => {
            let mut o = serde_json::Map::new();
            for f in node["required"].as_array().into_iter().flatten() {
                let f = f.as_str().unwrap_or_default();
                o.insert(f.into(), smallest(root, &node["properties"][f]));
            }
            Value::Object(o)
        }
        Some("integer") | Some("number") => 0.into(),
        Some("boolean") => false.into(),
        Some("array") => Value::Array(Vec::new()),
        _ => "".into(),
    }
}

/// Fails unless `line` is refused with an error containing `says`.
fn refused(published: &Published, line: &Value, says: &str) -> Result<()> {
    let Err(e) = published.check("a bad line", std::slice::from_ref(line)) else {
        bail!("a bad line validated: {line}");
    };
    let e = e.to_string();
    if !e.contains(says) {
        bail!("refused, but not for {says:?}: {e}");
    }
    Ok(())
}

/// A status line's counters are in the schema field by field: a counter of the wrong type
/// or a missing one is refused, in a line that validates otherwise.
fn stats_counters_are_checked(published: &Published, good: &Value) -> Result<()> {
    published.check("a good stats line", std::slice::from_ref(good))?;
    let mut text = good.clone();
    text["sensor"]["lost_events_total"] = "7".into();
    refused(published, &text, "at /sensor/lost_events_total")?;
    let mut negative = good.clone();
    negative["sensor"]["kernel"]["records"]["connect"]["lost"] = (-1).into();
    refused(
        published,
        &negative,
        "at /sensor/kernel/records/connect/lost",
    )?;
    let mut missing = good.clone();
    (missing["sensor"]["engine"].as_object_mut())
        .context("sensor.engine")?
        .remove("beacons_detected");
    refused(
        published,
        &missing,
        "\"beacons_detected\" is a required property",
    )
}

fn action(v: &Value) -> &str {
    v["event"]["action"].as_str().unwrap_or("")
}

/// Fails unless some line is of `action` (and transport, for connects).
fn shows(lines: &[Value], action_: &str, transport: Option<&str>) -> Result<()> {
    let found = lines
        .iter()
        .any(|v| action(v) == action_ && transport.is_none_or(|t| v["network"]["transport"] == t));
    if !found {
        bail!("the run printed no {action_} {transport:?} line");
    }
    Ok(())
}

/// Waits for the `action` line of process `pid`.
fn seen(sensor: &mut Sensor, action_: &str, pid: u32) -> Result<()> {
    sensor
        .wait_for(WAIT, |v| action(v) == action_ && v["process"]["pid"] == pid)
        .with_context(|| format!("no {action_} line of pid {pid}"))
        .map(drop)
}

#[test]
fn every_line_of_a_real_run_and_its_replay_validates() -> Result<()> {
    if !root_or_skip("schema") {
        return Ok(());
    }
    let published = Published::load()?;
    let scratch = Scratch::new("schema")?;
    let net = Net::new()?;
    net.subnet(CLIENT, SERVER, 24)?;
    let mut sensor = Sensor::start(&[
        "--all",
        "--beacon-min-connections",
        "3",
        "--rollup-window",
        "1",
        "--metrics-interval",
        "0.5",
    ])?;
    // A beacon: python3 to a C2 port three times, 1 s apart (also the connect alerts).
    let code = format!(
        "import socket, time\nfor i in range(3):\n    s = socket.socket()\n    s.settimeout(2)\n    s.connect_ex(({SERVER:?}, 9001))\n    s.close()\n    if i < 2: time.sleep(1)\n"
    );
    let beacon = net.run("python3", &["-c", &code])?;
    seen(&mut sensor, "beacon-detected", beacon)?;
    // A bind shell's listen, and an inbound connection to it.
    let mut cmd = net.server_command("nc");
    cmd.args(["-l", "-p", "4444"]);
    let nc = Running::spawn(cmd, "the nc listener")?;
    seen(&mut sensor, "network-listen", nc.pid())?;
    net.run("nc", &["-z", "-w2", SERVER, "4444"])?;
    seen(&mut sensor, "network-accept", nc.pid())?;
    // A UDP datagram to a C2 port.
    let code = format!(
        "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.sendto(b'x', ('{SERVER}', 9001))"
    );
    seen(
        &mut sensor,
        "network-connect",
        net.run("python3", &["-c", &code])?,
    )?;
    sensor.signal(libc::SIGHUP);
    for a in ["alert-rollup", "sensor-stats", "policy-reload-failed"] {
        sensor.wait_for(WAIT, |v| action(v) == a)?;
    }
    let (_, lines) = sensor.stop_with(libc::SIGTERM)?;
    for (a, t) in [
        ("sensor-started", None),
        ("network-connect", Some("tcp")),
        ("network-connect", Some("udp")),
        ("network-listen", None),
        ("network-accept", None),
        ("beacon-detected", None),
        ("alert-rollup", None),
        ("sensor-stats", None),
        ("policy-reload-failed", None),
        ("sensor-stopped", None),
    ] {
        shows(&lines, a, t)?;
    }
    published.check("the live run", &lines)?;
    // A real sensor-stats line with a counter made wrong is refused.
    let stats = (lines.iter().find(|v| action(v) == "sensor-stats")).context("a stats line")?;
    stats_counters_are_checked(&published, stats)?;

    // Its replay: the re-scored lines and the replay's own summary.
    let file = scratch.dir.join("recording.jsonl");
    let text: String = lines.iter().map(|v| format!("{v}\n")).collect();
    std::fs::write(&file, text).with_context(|| format!("writing {}", file.display()))?;
    let (out, _) = replay(&["--all", file.to_str().context("scratch path")?], "")?;
    shows(&out, "network-connect", None)?;
    shows(&out, "replay-summary", None)?;
    published.check("the replay", &out)
}

#[test]
fn every_line_of_a_sysmon_view_run_validates() -> Result<()> {
    if !root_or_skip("schema_sysmon") {
        return Ok(());
    }
    let published = Published::load()?;
    let net = Net::new()?;
    net.subnet(CLIENT, SERVER, 24)?;
    let mut sensor = Sensor::start(&["--all", "--format", "sysmon-json"])?;
    let pid = net.python_connect(SERVER, 4444)?;
    sensor.wait_for(WAIT, |v| v["ProcessId"] == pid)?;
    let (_, lines) = sensor.stop_with(libc::SIGTERM)?;
    if !lines.iter().any(|v| v.get("EventID").is_some()) {
        bail!("no sysmon line: {lines:#?}");
    }
    published.check("the sysmon view", &lines)
}

/// The validator is not vacuous: a line with a field of the wrong type or `null` (unknown
/// is absent), an action no schema has, a line missing `sensor.*`, and a `sensor-stats`
/// line with a counter of the wrong type, negative or missing are refused, each named.
#[test]
fn a_wrong_line_is_refused() -> Result<()> {
    let published = Published::load()?;
    let good = serde_json::json!({
        "@timestamp": "2026-12-02T04:00:00.000000000Z",
        "event": {"action": "network-connect", "kind": "alert"},
        "destination": {"ip": SERVER, "port": 4444},
        "sensor": {"schema_version": "1"},
    });
    published.check("a good line", std::slice::from_ref(&good))?;
    let mut port = good.clone();
    port["destination"]["port"] = "4444".into();
    let mut unknown = good.clone();
    unknown["event"]["action"] = "network-teleport".into();
    let mut null = good.clone();
    null["destination"]["port"] = Value::Null;
    let mut bare = good.clone();
    bare.as_object_mut().context("a line")?.remove("sensor");
    for (line, says) in [
        (port, "at /destination"),
        (null, "at /destination"),
        (unknown, "no schema"),
        (bare, "\"sensor\" is a required property"),
    ] {
        refused(&published, &line, says)?;
    }
    // A sensor-stats line made from its schema file, then one counter made wrong.
    let file = &published.by_action["sensor-stats"];
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/schema")
        .join(file);
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    let mut stats = smallest(&schema, &schema);
    stats["event"]["action"] = "sensor-stats".into();
    stats_counters_are_checked(&published, &stats)
}

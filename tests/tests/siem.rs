//! The SIEM rules in deploy/siem run on the sensor's real output, as a SIEM would run them:
//! a real run with `--all` (the Atomic Red Team T1571 cases, benign traffic, private
//! destinations and an allow-listed connection) is recorded, and every Sigma rule is
//! converted by pySigma's SQLite backend and executed over a table of the flattened events
//! (deploy/siem/evaluate.py). Exactly the expected events must match: each Atomic case at
//! its level, nothing benign. Also: the checked-in converted queries are what the rules and
//! the pinned backends produce today.
//!
//! Same network rule as end_to_end.rs: documentation and private addresses assigned inside
//! the test's own namespaces; connects end in a RST there.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use sensor_tests::{Net, Scratch, Sensor, public_net, repo, root_or_skip};
use serde_json::Value;

// Not the 203.0.113.7 other tests use: a beacon is keyed by executable and destination, and
// another test's bash to the same place must not share (or break) this one's.
const PUBLIC: &str = "198.51.100.71";
const PRIVATE_10: &str = "10.71.0.7";
const PRIVATE_192: &str = "192.168.71.7";

// The rules' ids (deploy/siem/sigma/*.yml).
const TIER3: &str = "23393c11-49f0-44c5-b0b3-fadf57b83f5c";
const TIER2: &str = "c78045de-7632-4126-9e97-447c7303c291";
const TIER1: &str = "8e2009bd-8975-4310-92ed-65c83cbe829c";
const ALERT_HIGH: &str = "4dfff7fa-4b9a-4d0c-9c8e-75f0a3da0fb8";
const ALERT_MEDIUM: &str = "d5f11c84-50b0-4991-8bcd-18f67e16f9fd";
const ALERT_LOW: &str = "32ad40ce-7ca1-4519-97b2-fcbfbba82317";
const BEACON: &str = "e2dd14bb-406e-41ae-a1ea-d5a35af9e9a2";
const FILELESS: &str = "2c739783-7a0b-46be-bc2e-15c3f0c8972b";
// deploy/siem/sigma-sysmon/*.yml
const SYSMON_TIER3: &str = "a4da0a6b-0054-4dfc-b41d-520423780f4a";
const SYSMON_TIER2: &str = "ccede6fc-1dcf-41e0-b1de-0301432fabbe";
const SYSMON_TIER1: &str = "7c9bc3a8-bf5f-41f6-972e-92cbdf6f88db";
const SYSMON_FILELESS: &str = "d314527a-5896-47e9-a334-5b26af8cc4a1";

// The connector (a test build) is trusted here, so it stays the tier-1 case the rules
// are checked with (the unmanaged tier would make it Medium).
const POLICY: &str = r#"
[unmanaged]
trusted_paths = ["/var/lib/t1571-sensor-tests/*"]

[[allow]]
name = "siem-test-allowed"
reason = "a known service on 6667: suppressed by the host's policy"
executables = ["python3*"]
destination_ports = [6667]
"#;

/// The venv's python (`SIEM_PYTHON`, set by `cargo xtask test`; else the venv `cargo xtask
/// siem` made). Without it the test skips, and fails under CI.
fn siem_python(test: &str) -> Option<PathBuf> {
    let python = std::env::var_os("SIEM_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/siem-venv/bin/python"));
    if python.exists() {
        return Some(python);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "{test}: no pySigma venv at {} (cargo xtask test makes it)",
            python.display()
        );
    }
    eprintln!(
        "SKIPPED {test}: no pySigma venv at {} (run cargo xtask siem)",
        python.display()
    );
    None
}

/// One recorded case: what ran, its pid, the port it reached, and the rules its connection
/// lines must match (exactly).
struct Case {
    name: &'static str,
    pid: u32,
    port: u16,
    expected: Rules,
}

fn curl(net: &Net, ip: &str, port: u16) -> Result<u32> {
    net.run(
        "curl",
        &[
            "-s",
            "--connect-timeout",
            "2",
            &format!("http://{ip}:{port}/"),
        ],
    )
}

/// Runs every case under a sensor started with `sensor_args`; returns the sensor's lines and
/// the cases. `sysmon` picks the expectations of the Sysmon-style rules.
fn record(sensor_args: &[&str], sysmon: bool) -> Result<(Vec<Value>, Vec<Case>)> {
    // One recording at a time: every sensor sees every test's connections, and two bash
    // beacons to the same address would share one beacon key and break its regularity.
    static RECORDING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = RECORDING.lock().unwrap_or_else(|e| e.into_inner());
    let net = public_net(&[PUBLIC, PRIVATE_10, PRIVATE_192])?;
    let scratch = Scratch::new("siem")?;
    let connector = scratch.connector(env!("CARGO_BIN_EXE_connector"))?;
    let policy = scratch.dir.join("policy.toml");
    std::fs::write(&policy, POLICY)?;
    let mut args = vec!["--all", "--config", policy.to_str().context("policy path")?];
    args.extend_from_slice(sensor_args);
    let mut sensor = Sensor::start(&args)?;

    // Atomic test 4, at 1 s instead of 60 s: bash itself connects to 9001 ten times.
    let beacon_script = format!(
        "for i in 1 2 3 4 5 6 7 8 9 10; do : 2>/dev/null >/dev/tcp/{PUBLIC}/9001; sleep 1; done"
    );
    let mut beacon = net
        .command("bash")
        .args(["-c", &beacon_script])
        .spawn()
        .context("starting the bash beacon")?;

    let high = pick(sysmon, &[TIER3, ALERT_HIGH], &[SYSMON_TIER3]);
    let medium = pick(sysmon, &[TIER2, ALERT_MEDIUM], &[SYSMON_TIER2]);
    let low = pick(sysmon, &[TIER1, ALERT_LOW], &[SYSMON_TIER1]);
    let fileless = pick(sysmon, &[FILELESS, ALERT_MEDIUM], &[SYSMON_FILELESS]);
    // Sysmon-field rules cannot see the host's allow rules: python3 to 6667 is tier 3 there.
    let allowed = pick(sysmon, &[], &[SYSMON_TIER3]);

    let memfd = format!(
        "import os\nfd = os.memfd_create('payload', 0)\nos.write(fd, open({connector:?}, 'rb').read())\nos.execve(fd, ['payload', {PUBLIC:?}, '5555'], {{}})"
    );
    let mut cases = vec![
        // Atomic 1 and 2.
        Case {
            name: "nc -> 4444 (Atomic 1)",
            pid: net.nc(PUBLIC, 4444)?,
            port: 4444,
            expected: high,
        },
        Case {
            name: "curl -> 8088 (Atomic 2)",
            pid: curl(&net, PUBLIC, 8088)?,
            port: 8088,
            expected: high,
        },
        Case {
            name: "python3 -> 8088 (Atomic 2)",
            pid: net.python_connect_lingering(PUBLIC, 8088)?,
            port: 8088,
            expected: high,
        },
        // The other tiers and the fileless rule.
        Case {
            name: "python3 -> 5555 (tier 2)",
            pid: net.python_connect_lingering(PUBLIC, 5555)?,
            port: 5555,
            expected: medium,
        },
        Case {
            name: "connector -> 4444 (tier 1)",
            pid: net.run(&connector, &[PUBLIC, "4444"])?,
            port: 4444,
            expected: low,
        },
        Case {
            name: "memfd connector -> 5555",
            pid: net.run("python3", &["-c", &memfd])?,
            port: 5555,
            expected: fileless,
        },
        // Benign: standard ports, an ordinary program on an ordinary port.
        Case {
            name: "python3 -> 443",
            pid: net.python_connect_lingering(PUBLIC, 443)?,
            port: 443,
            expected: &[],
        },
        Case {
            name: "curl -> 443",
            pid: curl(&net, PUBLIC, 443)?,
            port: 443,
            expected: &[],
        },
        Case {
            name: "connector -> 8080",
            pid: net.run(&connector, &[PUBLIC, "8080"])?,
            port: 8080,
            expected: &[],
        },
        Case {
            name: "connector -> 5555",
            pid: net.run(&connector, &[PUBLIC, "5555"])?,
            port: 5555,
            expected: &[],
        },
        // Private destinations.
        Case {
            name: "nc -> 10.x:4444",
            pid: net.nc(PRIVATE_10, 4444)?,
            port: 4444,
            expected: &[],
        },
        Case {
            name: "curl -> 192.168.x:8088",
            pid: curl(&net, PRIVATE_192, 8088)?,
            port: 8088,
            expected: &[],
        },
        // Allowed by the host's policy.
        Case {
            name: "python3 -> 6667 (allow rule)",
            pid: net.python_connect_lingering(PUBLIC, 6667)?,
            port: 6667,
            expected: allowed,
        },
    ];
    let beacon_pid = beacon.id();
    let status = beacon.wait()?;
    assert!(status.success(), "beacon script: {status}");
    cases.push(Case {
        name: "bash -> 9001 x10 (Atomic 4)",
        pid: beacon_pid,
        port: 9001,
        expected: high,
    });

    // Every case reached the sensor before it stops (a missing line would match nothing).
    for c in &cases {
        sensor
            .wait_for(Duration::from_secs(10), |v| {
                connection_of(v, c.pid, c.port, sysmon)
            })
            .with_context(|| format!("no connection line for {}", c.name))?;
    }
    if !sysmon {
        sensor.wait_for(Duration::from_secs(10), |v| {
            v["event"]["action"] == "beacon-detected" && v["process"]["pid"] == beacon_pid
        })?;
    }
    let (status, lines) = sensor.stop_with(libc::SIGTERM)?;
    assert!(status.success(), "sensor exit: {status}");
    Ok((lines, cases))
}

type Rules = &'static [&'static str];

fn pick(sysmon: bool, ecs: Rules, sysmon_rules: Rules) -> Rules {
    if sysmon { sysmon_rules } else { ecs }
}

fn connection_of(v: &Value, pid: u32, port: u16, sysmon: bool) -> bool {
    if sysmon {
        // Sysmon's numbers may arrive as JSON numbers or strings.
        let is = |field: &str, n: u64| {
            v[field].as_u64() == Some(n) || v[field].as_str() == Some(n.to_string().as_str())
        };
        is("ProcessId", pid.into()) && is("DestinationPort", port.into())
    } else {
        sensor_tests::is_connection(v, pid, port)
    }
}

/// evaluate.py over `lines`: rule id -> 1-based line numbers it matched.
fn evaluate(
    python: &Path,
    rules: &str,
    lines: &[Value],
    dir: &Path,
) -> Result<BTreeMap<String, BTreeSet<usize>>> {
    let events = dir.join("events.jsonl");
    let mut text = String::new();
    for v in lines {
        text.push_str(&serde_json::to_string(v)?);
        text.push('\n');
    }
    std::fs::write(&events, text)?;
    let out = Command::new(python)
        .arg(repo().join("deploy/siem/evaluate.py"))
        .arg("--rules")
        .arg(repo().join(rules))
        .arg("--events")
        .arg(&events)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .context("running deploy/siem/evaluate.py")?;
    if !out.status.success() {
        bail!(
            "evaluate.py failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let report: Value = serde_json::from_slice(&out.stdout).context("evaluate.py output")?;
    assert_eq!(report["events"], lines.len(), "every line loaded");
    let mut matches = BTreeMap::new();
    for r in report["rules"].as_array().context("rules")? {
        let set = r["matches"]
            .as_array()
            .context("matches")?
            .iter()
            .map(|n| n.as_u64().map(|n| n as usize).context("line number"))
            .collect::<Result<BTreeSet<_>>>()?;
        matches.insert(r["id"].as_str().context("id")?.to_string(), set);
    }
    Ok(matches)
}

/// The rules each line matched (line index 0-based).
fn rules_per_line(matches: &BTreeMap<String, BTreeSet<usize>>, n: usize) -> Vec<BTreeSet<&str>> {
    let mut per = vec![BTreeSet::new(); n];
    for (id, lines) in matches {
        for &l in lines {
            per[l - 1].insert(id.as_str());
        }
    }
    per
}

/// Exactly the expected rules on each case's lines; the sensor's own state, metric and error
/// lines match nothing. Lines of processes the test did not start (the host's own traffic)
/// are not judged.
fn check(
    lines: &[Value],
    cases: &[Case],
    matches: &BTreeMap<String, BTreeSet<usize>>,
    sysmon: bool,
) {
    let per = rules_per_line(matches, lines.len());
    let mut failures = Vec::new();
    for c in cases {
        let want: BTreeSet<&str> = c.expected.iter().copied().collect();
        for (i, v) in lines.iter().enumerate() {
            if !connection_of(v, c.pid, c.port, sysmon) {
                continue;
            }
            if per[i] != want {
                failures.push(format!(
                    "{}: line {} matched {:?}, expected {:?}: {v}",
                    c.name,
                    i + 1,
                    per[i],
                    want
                ));
            }
        }
    }
    for (i, v) in lines.iter().enumerate() {
        let kind = v["event"]["kind"].as_str().unwrap_or("");
        if ["state", "metric", "pipeline_error"].contains(&kind) && !per[i].is_empty() {
            failures.push(format!(
                "sensor's own {kind} line {} matched {:?}",
                i + 1,
                per[i]
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn siem_sigma_rules_match_exactly_the_atomic_cases_in_a_real_run() -> Result<()> {
    if !root_or_skip("siem rules on a real run") {
        return Ok(());
    }
    let Some(python) = siem_python("siem rules on a real run") else {
        return Ok(());
    };
    let (lines, cases) = record(&[], false)?;
    ecs_fields_are_valid(&lines);
    let scratch = Scratch::new("siem-eval")?;
    let matches = evaluate(&python, "deploy/siem/sigma", &lines, &scratch.dir)?;
    check(&lines, &cases, &matches, false);

    // The beacon: its beacon-detected line matches the beacon rule and nothing else.
    let beacon_pid = cases.last().expect("beacon case").pid;
    let per = rules_per_line(&matches, lines.len());
    let beacon_lines: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, v)| {
            v["event"]["action"] == "beacon-detected" && v["process"]["pid"] == beacon_pid
        })
        .map(|(i, _)| i)
        .collect();
    assert_eq!(beacon_lines.len(), 1, "one beacon-detected line");
    assert_eq!(per[beacon_lines[0]], BTreeSet::from([BEACON]));
    // Every connection of the beacon is on some line (flood control folds repeats).
    let folded: u64 = lines
        .iter()
        .filter(|v| sensor_tests::is_connection(v, beacon_pid, 9001))
        .map(|v| v["sensor"]["folded_count"].as_u64().unwrap_or(1))
        .sum();
    assert_eq!(folded, 10);
    // Every rule fired on its case.
    for id in [
        TIER3,
        TIER2,
        TIER1,
        ALERT_HIGH,
        ALERT_MEDIUM,
        ALERT_LOW,
        BEACON,
        FILELESS,
    ] {
        assert!(!matches[id].is_empty(), "rule {id} matched nothing");
    }
    Ok(())
}

/// `sensor run --format sysmon-json`: the same cases, the Sysmon-style rules, over Sysmon
/// Event ID 3 records.
#[test]
fn siem_sysmon_style_rules_match_exactly_the_atomic_cases_in_a_real_run() -> Result<()> {
    if !root_or_skip("sysmon-style rules on a real run") {
        return Ok(());
    }
    let Some(python) = siem_python("sysmon-style rules on a real run") else {
        return Ok(());
    };
    let (lines, cases) = record(&["--format", "sysmon-json"], true)?;
    // Every case's connection is a Sysmon Event ID 3 record.
    for c in &cases {
        for v in lines
            .iter()
            .filter(|v| connection_of(v, c.pid, c.port, true))
        {
            assert_eq!(v["EventID"], 3, "{v}");
            assert_eq!(v["Initiated"], "true", "{v}");
            assert_eq!(v["Protocol"], "tcp", "{v}");
            for field in [
                "Image",
                "User",
                "DestinationIp",
                "SourceIp",
                "UtcTime",
                "ProcessGuid",
                "Computer",
            ] {
                assert!(v[field].is_string(), "{field} in {v}");
            }
        }
    }
    let scratch = Scratch::new("siem-sysmon-eval")?;
    let matches = evaluate(&python, "deploy/siem/sigma-sysmon", &lines, &scratch.dir)?;
    check(&lines, &cases, &matches, true);
    for id in [SYSMON_TIER3, SYSMON_TIER2, SYSMON_TIER1, SYSMON_FILELESS] {
        assert!(!matches[id].is_empty(), "rule {id} matched nothing");
    }
    Ok(())
}

#[test]
fn siem_converted_queries_are_what_the_rules_and_pinned_backends_produce() -> Result<()> {
    let Some(python) = siem_python("converted queries drift") else {
        return Ok(());
    };
    let out = Command::new(python)
        .arg(repo().join("deploy/siem/convert.py"))
        .arg("--check")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .context("running deploy/siem/convert.py --check")?;
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The queries the book's SIEM chapter (docs/siem.md) shows are the checked-in conversions.
#[test]
fn siem_chapter_shows_the_converted_queries() -> Result<()> {
    let section = std::fs::read_to_string(repo().join("docs/siem.md"))?;
    let mut converted = BTreeSet::new();
    for backend in ["splunk", "sumologic", "crowdstrike", "secops", "qradar"] {
        for entry in std::fs::read_dir(repo().join("deploy/siem").join(backend))? {
            let path = entry?.path();
            if !path.is_file() {
                continue;
            }
            let text = std::fs::read_to_string(&path)?;
            if backend == "sumologic" {
                let rule: Value = serde_json::from_str(&text)?;
                converted.insert(
                    rule["expression"]
                        .as_str()
                        .context("expression")?
                        .to_string(),
                );
            } else {
                converted.insert(text.trim().to_string());
            }
        }
    }
    let blocks: Vec<&str> = section
        .split("```")
        .skip(1)
        .step_by(2)
        .map(|b| b.split_once('\n').map_or("", |(_, body)| body).trim())
        .collect();
    let queries: Vec<&str> = blocks
        .into_iter()
        .filter(|b| !b.starts_with("cargo xtask"))
        .collect();
    assert_eq!(queries.len(), 10, "five backends, two rules");
    for q in queries {
        assert!(
            converted.contains(q),
            "docs/siem.md shows a query that is not a current conversion:\n{q}"
        );
    }
    Ok(())
}

/// Every line of the real run against tests/fixtures/ecs_fields.json: every field outside
/// `sensor.*` is an ECS field of the pinned version, of its ECS type, with an allowed value.
fn ecs_fields_are_valid(lines: &[Value]) {
    let table: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("tests/fixtures/ecs_fields.json"))
            .expect("tests/fixtures/ecs_fields.json"),
    )
    .expect("ecs_fields.json is JSON");
    let fields = table["fields"].as_object().expect("fields");
    let mut problems = BTreeSet::new();
    let mut seen = BTreeSet::new();
    for (i, v) in lines.iter().enumerate() {
        assert_eq!(
            v["ecs"]["version"],
            table["ecs_version"],
            "line {}: {v}",
            i + 1
        );
        assert!(
            v["event"]["id"].is_string(),
            "line {}: no event.id: {v}",
            i + 1
        );
        let mut flat = Vec::new();
        flatten(v, "", &mut flat);
        for (name, value) in flat {
            if name.starts_with("sensor.") {
                continue;
            }
            seen.insert(name.clone());
            let Some(spec) = fields.get(&name) else {
                problems.insert(format!("{name}: not in the table (line {})", i + 1));
                continue;
            };
            let array = spec["array"].as_bool().unwrap_or(false);
            let values: Vec<&Value> = match (&value, array) {
                (Value::Array(a), true) => a.iter().collect(),
                (v, false) if !v.is_array() => vec![v],
                _ => {
                    problems.insert(format!("{name}: array-ness wrong: {value}"));
                    continue;
                }
            };
            for x in values {
                let ok = match spec["type"].as_str().unwrap_or("") {
                    "keyword" | "wildcard" => x.is_string(),
                    "long" => x.is_i64() || x.is_u64(),
                    "float" => x.is_number(),
                    "ip" => x
                        .as_str()
                        .is_some_and(|s| s.parse::<std::net::IpAddr>().is_ok()),
                    "date" => x.as_str().is_some_and(|s| {
                        s.len() >= 20 && s.as_bytes()[10] == b'T' && s.ends_with('Z')
                    }),
                    other => panic!("{name}: unknown type {other} in the table"),
                };
                if !ok {
                    problems.insert(format!("{name}: {x} is not a {}", spec["type"]));
                }
                if let Some(allowed) = spec["allowed"].as_array()
                    && !allowed.contains(x)
                {
                    problems.insert(format!("{name}: {x} is not an allowed value"));
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{}",
        problems.into_iter().collect::<Vec<_>>().join("\n")
    );
    // The run shows the fields the issue asked for.
    for name in [
        "ecs.version",
        "agent.type",
        "agent.version",
        "host.hostname",
        "host.os.type",
        "process.entity_id",
        "process.parent.name",
        "process.parent.entity_id",
        "process.args_count",
        "related.ip",
        "rule.reference",
        "threat.technique.reference",
        "event.id",
    ] {
        assert!(seen.contains(name), "no line printed {name}");
    }
}

fn flatten(v: &Value, prefix: &str, out: &mut Vec<(String, Value)>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                flatten(x, &format!("{prefix}{k}."), out);
            }
        }
        other => out.push((prefix.trim_end_matches('.').to_string(), other.clone())),
    }
}

//! The README's sample alert is one the sensor really prints: Atomic test 1 (`nc` to 4444 on
//! a documentation address, inside test-made namespaces) run under the real sensor, and every
//! field the README shows checked against the live line.

use anyhow::{Context, Result};
use sensor_tests::{Sensor, assert_tcp_alert, public_net, real_exe, repo, root_or_skip};
use serde_json::Value;

const PUBLIC: &str = "203.0.113.7";

/// Fields whose value is the same on every host and run: compared exactly. The others the
/// README shows (times, pids, ids, host, ancestry, hook) only have to exist, with the same
/// JSON type.
const STABLE: &[&str] = &[
    "/destination/ip",
    "/destination/port",
    "/event/action",
    "/event/kind",
    "/event/risk_score",
    "/event/severity",
    "/event/reason",
    "/network/transport",
    "/network/direction",
    "/network/type",
    "/process/args",
    "/process/command_line",
    "/process/name",
    "/rule/id",
    "/rule/name",
    "/sensor/severity",
    "/sensor/matched/high_risk_executable",
    "/sensor/matched/high_risk_matched_by",
    "/sensor/matched/known_c2_port",
    "/threat/technique/id",
    "/threat/tactic/id",
    "/user/id",
    "/user/name",
];

/// The README's first ```json block, which must come within its first screen (50 lines).
fn readme_alert() -> Result<Value> {
    let readme = std::fs::read_to_string(repo().join("README.md"))?;
    let start = readme
        .find("```json\n")
        .context("README shows no ```json alert")?;
    let line = readme[..start].lines().count() + 1;
    assert!(
        line <= 50,
        "the README's alert starts at line {line}, past the first screen"
    );
    let body = &readme[start + "```json\n".len()..];
    let body = &body[..body.find("```").context("unclosed ```json block")?];
    serde_json::from_str(body).with_context(|| format!("the README's alert is not JSON:\n{body}"))
}

/// Every leaf of `v` as (JSON pointer, value).
fn leaves(v: &Value, at: String, out: &mut Vec<(String, Value)>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                leaves(x, format!("{at}/{k}"), out);
            }
        }
        _ => out.push((at, v.clone())),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[test]
fn readme_alert_is_what_atomic_test_1_prints() -> Result<()> {
    if !root_or_skip("readme_alert") {
        return Ok(());
    }
    let net = public_net(&[PUBLIC])?;
    let mut sensor = Sensor::start(&[])?;
    let pid = net.nc(PUBLIC, 4444)?;
    let live = sensor.connection(pid, 4444)?;
    assert_tcp_alert(&live, 3, "High");
    assert_eq!(live["process"]["executable"], real_exe("nc")?);
    // The live line, for whoever refreshes the README's copy.
    eprintln!("{}", serde_json::to_string_pretty(&live)?);
    let shown = readme_alert()?;
    let mut shown_leaves = Vec::new();
    leaves(&shown, String::new(), &mut shown_leaves);
    assert!(shown_leaves.len() >= 20, "{}", shown_leaves.len());
    for (path, value) in &shown_leaves {
        let got = live
            .pointer(path)
            .with_context(|| format!("the README shows {path}, which the live alert lacks"))?;
        assert_eq!(
            kind(got),
            kind(value),
            "{path}: {got} vs the README's {value}"
        );
        if STABLE.contains(&path.as_str()) {
            assert_eq!(
                got, value,
                "{path}: the README shows {value}, the sensor printed {got}"
            );
        }
    }
    for path in STABLE {
        assert!(
            shown.pointer(path).is_some(),
            "the README's alert should show {path}"
        );
    }
    Ok(())
}

//! Reading and asserting on the sensor's JSON lines: one copy of each check the tests share.

use anyhow::{Context, Result};
use serde_json::Value;

/// A T1571 alert at `risk` and `severity`, with the fields every alert carries.
pub fn assert_alert(v: &Value, risk: u64, severity: &str) {
    assert_eq!(v["event"]["kind"], "alert", "{v:#}");
    assert_eq!(v["event"]["risk_score"], risk, "{v:#}");
    assert_eq!(v["sensor"]["severity"], severity, "{v:#}");
    assert_eq!(v["threat"]["technique"]["id"][0], "T1571", "{v:#}");
    assert_eq!(v["threat"]["tactic"]["id"][0], "TA0011", "{v:#}");
    assert!(v["rule"]["name"].is_string(), "{v:#}");
    assert!(v["host"]["name"].is_string(), "{v:#}");
    assert!(
        v["@timestamp"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{v:#}"
    );
}

/// [`assert_alert`] on a TCP connection.
pub fn assert_tcp_alert(v: &Value, risk: u64, severity: &str) {
    assert_alert(v, risk, severity);
    assert_eq!(v["network"]["transport"], "tcp", "{v:#}");
}

/// A line of `action` about process `pid`.
pub fn is_action(v: &Value, action: &str, pid: u32) -> bool {
    v["event"]["action"] == action && v["process"]["pid"] == pid
}

/// The counter at dotted `path` (`sensor.kernel.folded`) of line `v`: an error naming the
/// field when it is absent or not a whole number, so a renamed counter fails the test
/// instead of reading as 0.
pub fn counter(v: &Value, path: &str) -> Result<u64> {
    let pointer = format!("/{}", path.replace('.', "/"));
    v.pointer(&pointer)
        .and_then(Value::as_u64)
        .with_context(|| {
            format!(
                "no counter {path} in the {} line: {}",
                v["event"]["action"],
                v.pointer(&pointer).unwrap_or(&Value::Null)
            )
        })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_missing_counter_is_an_error_naming_it() {
        let v = json!({"event": {"action": "sensor-stats"}, "sensor": {"kernel": {"folded": 4}}});
        assert_eq!(counter(&v, "sensor.kernel.folded").unwrap(), 4);
        let e = counter(&v, "sensor.kernel.fold").unwrap_err().to_string();
        assert!(
            e.contains("no counter sensor.kernel.fold in the \"sensor-stats\" line"),
            "{e}"
        );
        assert!(counter(&json!({"sensor": {"n": "4"}}), "sensor.n").is_err());
    }
}

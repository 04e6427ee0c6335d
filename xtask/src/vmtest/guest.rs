//! Guest side: runs inside the VM (or on this machine for `host`).

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context, Result};
use serde_json::{Value, json};

use super::bpftool::offsets_here;

/// `sensor check` parsed: every connect hook with whether it loads here, auto's pick,
/// the lifecycle hooks that attach.
struct Check {
    text: String,
    hooks: Vec<(String, Result<(), String>)>,
    auto: Option<String>,
    lifecycle: Vec<String>,
}

fn parse_check(text: &str) -> Check {
    let mut hooks = Vec::new();
    let mut lifecycle = Vec::new();
    let mut auto = None;
    for line in text.lines() {
        let Some((name, status)) = line.split_once(char::is_whitespace) else {
            continue;
        };
        let status = status.trim();
        if name == "verdict" {
            auto = status.split("using ").nth(1).map(|h| h.trim().to_string());
        } else if (name.ends_with("/tcp_connect") || name.ends_with("/inet_sock_set_state"))
            // The state hook is listed again below the lifecycle hooks (listen records).
            && !hooks.iter().any(|(n, _)| n == name)
        {
            let r = if status.starts_with("ok") {
                Ok(())
            } else {
                Err(status.to_string())
            };
            hooks.push((name.to_string(), r));
        } else if name.contains("sched_process_") && status.starts_with("ok") {
            lifecycle.push(name.to_string());
        }
    }
    Check {
        text: text.to_string(),
        hooks,
        auto,
        lifecycle,
    }
}

/// The check's hook for `--probe value` (`tp_btf` names `tp_btf/...`).
fn hook_of<'a>(check: &'a Check, probe: &str) -> Option<&'a (String, Result<(), String>)> {
    let prefix = format!("{}/", probe.replace('-', "_"));
    check.hooks.iter().find(|(h, _)| h.starts_with(&prefix))
}

const GUEST_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The guest runner: reads the plan, writes `started`, block logs and `result.json` to
/// the plan's output directory.
pub fn guest(plan_path: &Path) -> Result<()> {
    let plan: Value = serde_json::from_str(
        &std::fs::read_to_string(plan_path)
            .with_context(|| format!("reading {}", plan_path.display()))?,
    )
    .context("parsing the plan")?;
    let out = PathBuf::from(plan["out"].as_str().context("plan: out")?);
    let sensor = PathBuf::from(plan["sensor"].as_str().context("plan: sensor")?);
    std::fs::write(out.join("started"), "")?;
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    eprintln!("vm-guest: kernel {release}");

    // The tests' veth pairs: a module on distribution kernels, and the guest's first
    // `ip link add type veth` does not load it by itself.
    let modprobe = Command::new("modprobe")
        .arg("veth")
        .env("PATH", GUEST_PATH)
        .output();
    match modprobe {
        Ok(o) if o.status.success() => {}
        Ok(o) => eprintln!(
            "vm-guest: modprobe veth: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => eprintln!("vm-guest: modprobe veth: {e}"),
    }
    let check_out = Command::new(&sensor)
        .arg("check")
        .env("PATH", GUEST_PATH)
        .output()
        .context("running sensor check")?;
    let check = parse_check(&String::from_utf8_lossy(&check_out.stdout));
    std::fs::write(out.join("check.txt"), &check.text)?;

    let (offsets, mismatches, offsets_error) = match offsets_here(&sensor, &out) {
        v if v["error"].is_string() => (Value::Null, Vec::new(), v["error"].clone()),
        v => (
            v["offsets"].clone(),
            v["mismatches"].as_array().cloned().unwrap_or_default(),
            Value::Null,
        ),
    };

    let every_hook_expected = plan["every_hook_expected"] == true;
    let mut blocks = Vec::new();
    for p in plan["probes"].as_array().context("plan: probes")? {
        let probe = p.as_str();
        let label = probe.unwrap_or("auto");
        let log_name = format!("{label}.log");
        let mut log = String::new();
        let _ = writeln!(log, "kernel {release}, SENSOR_PROBE={label}");
        let unavailable = match probe {
            None => check
                .auto
                .is_none()
                .then(|| "no hook can be attached".to_string()),
            Some(pv) => match hook_of(&check, pv) {
                None => Some(format!("sensor check does not list --probe {pv}")),
                Some((_, Err(e))) => Some(e.clone()),
                Some((_, Ok(()))) => None,
            },
        };
        let status = if let Some(why) = unavailable {
            let _ = writeln!(log, "hook unavailable on this kernel: {why}");
            let _ = writeln!(log, "sensor check:\n{}", check.text);
            if every_hook_expected {
                format!("FAIL: unavailable: {why}")
            } else {
                "unavailable".into()
            }
        } else {
            let set = if probe.is_none() { "auto" } else { "hook" };
            let mut passed = 0usize;
            let mut problems = Vec::new();
            for suite in plan["suites"][set].as_array().into_iter().flatten() {
                let name = suite["name"].as_str().unwrap_or("?");
                let exe = suite["exe"].as_str().unwrap_or_default();
                let tests: Vec<&str> = suite["tests"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                let mut cmd = Command::new(exe);
                // One at a time: under emulation, parallel tests starve each other's
                // sensors past the harness's start-up guard.
                cmd.arg("--test-threads=1");
                if !tests.is_empty() {
                    cmd.arg("--exact").args(&tests);
                }
                cmd.env("PATH", GUEST_PATH)
                    .env("SENSOR_BIN", &sensor)
                    .env("SENSOR_TEST_BURST", plan["burst"].to_string())
                    .env("RUST_BACKTRACE", "0")
                    .env("RUST_LIB_BACKTRACE", "0");
                match probe {
                    Some(pv) => cmd.env("SENSOR_PROBE", pv),
                    None => cmd.env_remove("SENSOR_PROBE"),
                };
                let t0 = Instant::now();
                let r = cmd.output();
                let _ = writeln!(
                    log,
                    "\n---- {name} {} ({:.1?})",
                    tests.join(" "),
                    t0.elapsed()
                );
                match r {
                    Err(e) => problems.push(format!("{name}: could not run: {e}")),
                    Ok(o) => {
                        let stdout = String::from_utf8_lossy(&o.stdout);
                        let stderr = String::from_utf8_lossy(&o.stderr);
                        log.push_str(&stdout);
                        log.push_str(&stderr);
                        let ran = count_after(&stdout, "running ", " test");
                        let ok = count_after(&stdout, "test result: ok. ", " passed");
                        passed += ok.unwrap_or(0);
                        if !o.status.success() {
                            problems.push(format!("{name}: {}", o.status));
                        } else if !tests.is_empty() && ran != Some(tests.len()) {
                            problems.push(format!(
                                "{name}: ran {ran:?} of {} named tests (renamed?)",
                                tests.len()
                            ));
                        }
                        if stdout.contains("SKIPPED") || stderr.contains("SKIPPED") {
                            problems.push(format!("{name}: a test SKIPPED"));
                        }
                    }
                }
            }
            if problems.is_empty() {
                format!("pass ({passed} tests)")
            } else {
                format!("FAIL: {}", problems.join("; "))
            }
        };
        std::fs::write(out.join(&log_name), &log)?;
        eprintln!("vm-guest: {label}: {status}");
        blocks.push(json!({"probe": label, "status": status, "log": log_name}));
    }
    let result = json!({
        "release": release,
        "auto": check.auto,
        "lifecycle": check.lifecycle,
        "hooks": check.hooks.iter().map(|(h, r)| json!({"hook": h, "ok": r.is_ok()})).collect::<Vec<_>>(),
        "offsets": offsets,
        "offset_mismatches": mismatches,
        "offsets_error": offsets_error,
        "blocks": blocks,
    });
    std::fs::write(out.join("result.json"), result.to_string())?;
    Ok(())
}

/// The number in `text` between `prefix` and `suffix` on the first line that has both.
fn count_after(text: &str, prefix: &str, suffix: &str) -> Option<usize> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(prefix)?;
        rest.split(suffix).next()?.trim().parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHECK: &str = "kernel                                 6.1.0-50-amd64
fentry/tcp_connect                     ok: loads and attaches
kprobe/tcp_connect                     unavailable: attach: EPERM
tracepoint/sock/inet_sock_set_state    ok: loads and attaches
tracepoint/sched/sched_process_exec    ok: feeds the process table
raw_tracepoint/sched_process_fork      ok: feeds the process table
tracepoint/sched/sched_process_exit    unavailable: nope
verdict                                the sensor can run here, using fentry/tcp_connect
";

    #[test]
    fn check_output_parsed() {
        let c = parse_check(CHECK);
        assert_eq!(c.auto.as_deref(), Some("fentry/tcp_connect"));
        assert_eq!(c.hooks.len(), 3);
        assert!(hook_of(&c, "kprobe").unwrap().1.is_err());
        assert!(hook_of(&c, "tracepoint").unwrap().1.is_ok());
        assert!(hook_of(&c, "tp-btf").is_none());
        assert_eq!(
            c.lifecycle,
            [
                "tracepoint/sched/sched_process_exec",
                "raw_tracepoint/sched_process_fork"
            ]
        );
    }

    #[test]
    fn test_counts() {
        let out = "running 4 tests\ntest a ... ok\n\ntest result: ok. 4 passed; 0 failed;";
        assert_eq!(count_after(out, "running ", " test"), Some(4));
        assert_eq!(count_after(out, "test result: ok. ", " passed"), Some(4));
        assert_eq!(
            count_after("running 1 test\n", "running ", " test"),
            Some(1)
        );
    }
}

//! The sensor end to end on the running kernel: real programs connect inside test-made
//! namespaces, the real `sensor` binary reports them, and the JSON lines are checked.

use std::{process::Command, time::Duration};

use anyhow::{Context, Result};
use rstest::rstest;
use sensor_tests::{
    ATTACH_LOCK, Net, Scratch, Sensor, assert_tcp_alert, bpf_programs_of, is_connection,
    loaded_program_ids, real_exe, root_or_skip, sensor_bin, wait_until,
};
use serde_json::Value;

const PUBLIC: &str = "203.0.113.7";
const PUBLIC6: &str = "2001:db8::7";

/// A namespace pair with the documentation ranges on its link.
fn public_net() -> Result<Net> {
    sensor_tests::public_net(&[PUBLIC, PUBLIC6])
}

fn assert_unscored(v: &Value) {
    assert_eq!(v["event"]["kind"], "event", "{v:#}");
    assert_eq!(v["event"]["risk_score"], 0, "{v:#}");
    assert!(
        v.get("rule").is_none() && v.get("threat").is_none(),
        "{v:#}"
    );
}

#[test]
fn atomic_1_netcat_to_4444_is_one_high_alert() -> Result<()> {
    if !root_or_skip("atomic_1") {
        return Ok(());
    }
    let net = public_net()?;
    let mut sensor = Sensor::start(&[])?;
    let pid = net.nc(PUBLIC, 4444)?;
    let v = sensor.connection(pid, 4444)?;
    assert_tcp_alert(&v, 3, "High");
    assert_eq!(v["process"]["executable"], real_exe("nc")?);
    assert_eq!(v["destination"]["ip"], PUBLIC);
    assert_eq!(v["network"]["type"], "ipv4");
    assert_eq!(
        v["process"]["command_line"],
        format!("nc -z -w2 {PUBLIC} 4444")
    );
    assert_eq!(v["process"]["parent"]["pid"], std::process::id());
    assert_eq!(v["user"]["id"], "0");
    assert_eq!(v["user"]["name"], "root", "{v:#}");
    assert_eq!(v["sensor"]["matched"]["high_risk_matched_by"], "executable");
    // The forced hook (SENSOR_PROBE), else the one auto selection picks on this kernel.
    sensor_tests::check_hook(v["sensor"]["probe"].as_str().unwrap_or_default())?;
    sensor.barrier(&net, PUBLIC)?;
    assert_eq!(
        sensor.connections_of(pid).len(),
        1,
        "exactly one alert for one connect"
    );
    Ok(())
}

#[test]
fn atomic_2_curl_and_python3_to_8088_are_risk_3() -> Result<()> {
    if !root_or_skip("atomic_2") {
        return Ok(());
    }
    let net = public_net()?;
    let mut sensor = Sensor::start(&[])?;
    let curl = net.run(
        "curl",
        &["-s", "-m", "2", &format!("http://{PUBLIC}:8088/beacon")],
    )?;
    let v = sensor.connection(curl, 8088)?;
    assert_tcp_alert(&v, 3, "High");
    assert_eq!(v["process"]["executable"], real_exe("curl")?);
    assert_eq!(v["sensor"]["matched"]["high_risk_executable"], "curl");

    let py = net.python_connect(PUBLIC6, 8088)?;
    let v = sensor.connection(py, 8088)?;
    assert_tcp_alert(&v, 3, "High");
    let exe = v["process"]["executable"].as_str().unwrap();
    assert!(
        exe.rsplit('/').next().unwrap().starts_with("python3"),
        "{exe}"
    );
    assert_eq!(v["sensor"]["matched"]["high_risk_executable"], "python3");
    assert_eq!(v["destination"]["ip"], PUBLIC6);
    assert_eq!(v["network"]["type"], "ipv6");
    Ok(())
}

#[test]
fn tiers_and_standard_ports() -> Result<()> {
    if !root_or_skip("tiers") {
        return Ok(());
    }
    let scratch = Scratch::new("connector")?;
    let connector = scratch.connector(env!("CARGO_BIN_EXE_connector"))?;
    let net = public_net()?;
    let mut sensor = Sensor::start(&["--all"])?;

    // Tier 1: a package-managed program on no list, to a known C2 port.
    let pid = net.ssh_connect(PUBLIC, 4444)?;
    let v = sensor.connection(pid, 4444)?;
    assert_tcp_alert(&v, 1, "Low");
    assert_eq!(v["process"]["name"], "ssh");
    assert!(v["sensor"]["matched"].get("high_risk_executable").is_none());
    // The same for a program no package installed: the unmanaged tier, Medium.
    let pid = net.run(&connector, &[PUBLIC, "4444"])?;
    let v = sensor.connection(pid, 4444)?;
    assert_tcp_alert(&v, 2, "Medium");
    assert_eq!(v["process"]["name"], "connector");
    assert_eq!(
        v["sensor"]["matched"]["unmanaged_executable"], true,
        "{v:#}"
    );

    // Tier 2: high-risk process, non-standard port above 1024.
    let pid = net.python_connect(PUBLIC, 5555)?;
    let v = sensor.connection(pid, 5555)?;
    assert_tcp_alert(&v, 2, "Medium");
    assert!(
        v["event"]["reason"]
            .as_str()
            .unwrap()
            .contains("non-standard port")
    );

    // Not scored: a standard port, and a port that is not above 1024.
    for port in [8080, 1024] {
        let pid = net.python_connect(PUBLIC, port)?;
        assert_unscored(&sensor.connection(pid, port)?);
    }
    // An ordinary program on an ordinary port.
    let pid = net.run(&connector, &[PUBLIC, "5555"])?;
    assert_unscored(&sensor.connection(pid, 5555)?);
    Ok(())
}

/// A namespace pair with the private ranges the exclusions cover on its link, beside the
/// documentation ones (and 172.32.0.0/24, just outside 172.16.0.0/12).
fn private_net() -> Result<Net> {
    sensor_tests::public_net(&[
        PUBLIC,
        PUBLIC6,
        "10.0.0.7",
        "172.16.0.7",
        "172.31.0.7",
        "192.168.0.7",
        "172.32.0.7",
        "fd00::7",
    ])
}

/// The line of a python3 connect to `dst`:4444 under a sensor with `--all`.
fn connection_to(dst: &str) -> Result<Value> {
    let net = private_net()?;
    let mut sensor = Sensor::start(&["--all"])?;
    let pid = net.python_connect(dst, 4444)?;
    sensor.connection(pid, 4444)
}

#[rstest]
#[case::ten("10.0.0.7", "10.0.0.0/8")]
#[case::one_seventy_two("172.16.0.7", "172.16.0.0/12")]
#[case::one_seventy_two_top("172.31.0.7", "172.16.0.0/12")]
#[case::one_ninety_two("192.168.0.7", "192.168.0.0/16")]
#[case::loopback("127.0.0.1", "127.0.0.0/8")]
#[case::loopback6("::1", "::1/128")]
#[case::unique_local("fd00::7", "fc00::/7")]
#[case::mapped_private("::ffff:10.0.0.7", "10.0.0.0/8")]
fn private_destinations_are_excluded(#[case] dst: &str, #[case] excluded_by: &str) -> Result<()> {
    if !root_or_skip("exclusions") {
        return Ok(());
    }
    let v = connection_to(dst)?;
    assert_unscored(&v);
    assert_eq!(
        v["sensor"]["matched"]["excluded_network"], excluded_by,
        "{dst}: {v:#}"
    );
    Ok(())
}

#[rstest]
#[case::just_outside_172_16("172.32.0.7")]
#[case::documentation6(PUBLIC6)]
#[case::mapped_documentation("::ffff:203.0.113.7")]
fn public_destinations_are_not_excluded(#[case] dst: &str) -> Result<()> {
    if !root_or_skip("exclusions") {
        return Ok(());
    }
    let v = connection_to(dst)?;
    assert_tcp_alert(&v, 3, "High");
    // An IPv4-mapped address prints as IPv4, the original kept in sensor.*, and is judged,
    // and typed, as IPv4.
    let printed = dst.strip_prefix("::ffff:").unwrap_or(dst);
    assert_eq!(v["destination"]["ip"], printed, "{v:#}");
    if printed != dst {
        assert_eq!(v["sensor"]["destination"]["original_ip"], dst, "{v:#}");
        assert_eq!(v["network"]["type"], "ipv4", "{v:#}");
    }
    Ok(())
}

#[test]
fn without_all_only_alerts_are_printed() -> Result<()> {
    if !root_or_skip("without_all") {
        return Ok(());
    }
    let scratch = Scratch::new("connector")?;
    let connector = scratch.connector(env!("CARGO_BIN_EXE_connector"))?;
    let net = public_net()?;
    let mut sensor = Sensor::start(&[])?;
    let quiet = net.run(&connector, &[PUBLIC, "80"])?;
    let excluded = net.nc("127.0.0.1", 4444)?;
    sensor.barrier(&net, PUBLIC)?;
    assert!(sensor.connections_of(quiet).is_empty());
    assert!(sensor.connections_of(excluded).is_empty());
    assert!(sensor.lines().iter().all(|v| v["event"]["kind"] != "event"));
    Ok(())
}

#[test]
fn hostile_command_line_stays_one_json_line() -> Result<()> {
    if !root_or_skip("hostile_command_line") {
        return Ok(());
    }
    let net = public_net()?;
    let mut sensor = Sensor::start(&[])?;
    let evil = "x\n{\"event\":{\"kind\":\"alert\"}}\r\u{1b}[2J\"\\";
    let code = format!(
        "import socket,sys\ns=socket.socket()\ns.settimeout(2)\ns.connect_ex(({PUBLIC:?}, 9001))"
    );
    let pid = net.run("python3", &["-c", &code, evil])?;
    let v = sensor.connection(pid, 9001)?;
    assert_tcp_alert(&v, 3, "High");
    assert_eq!(v["process"]["args"][3], evil);
    assert!(
        v["process"]["command_line"]
            .as_str()
            .unwrap()
            .ends_with(evil)
    );
    // Sensor::lines() fails the test if any stdout line was not a whole JSON object.
    assert_eq!(
        sensor
            .lines()
            .iter()
            .filter(|l| is_connection(l, pid, 9001))
            .count(),
        1
    );
    Ok(())
}

#[test]
fn process_gone_before_userspace_looks_is_attributed_from_the_kernel() -> Result<()> {
    if !root_or_skip("vanished_process") {
        return Ok(());
    }
    let net = public_net()?;
    // A large ring: the whole host keeps producing records while the sensor is frozen.
    let mut sensor = Sensor::start(&["--ring-buffer-size", "16777216"])?;
    // Freeze the sensor so the process execs, connects, exits and is reaped before any
    // record is read: /proc cannot help, only the kernel's exec record can.
    sensor.signal(libc::SIGSTOP);
    let pid = net.nc(PUBLIC, 4444)?;
    sensor.signal(libc::SIGCONT);
    let v = sensor.connection(pid, 4444)?;
    assert_tcp_alert(&v, 3, "High");
    assert_eq!(v["process"]["executable"], real_exe("nc")?, "{v:#}");
    assert_eq!(
        v["process"]["command_line"],
        format!("nc -z -w2 {PUBLIC} 4444")
    );
    assert_eq!(v["sensor"]["matched"]["high_risk_matched_by"], "executable");
    assert_eq!(v["sensor"]["process"]["attribution"], "kernel-exec");
    assert_eq!(v["process"]["parent"]["pid"], std::process::id());
    assert_eq!(v["sensor"]["unknown_fields"], serde_json::json!([]));
    Ok(())
}

#[test]
fn ring_buffer_overflow_is_counted_and_reported() -> Result<()> {
    if !root_or_skip("losses") {
        return Ok(());
    }
    let scratch = Scratch::new("connector")?;
    let connector = scratch.connector(env!("CARGO_BIN_EXE_connector"))?;
    let net = public_net()?;
    // One page holds about 36 events; freeze the reader and send many more.
    let mut sensor = Sensor::start(&[
        "--all",
        "--ring-buffer-size",
        "4096",
        "--stats-interval",
        "0.1",
    ])?;
    sensor.signal(libc::SIGSTOP);
    const N: usize = 300;
    let pid = net.run(&connector, &[PUBLIC, "5555", &N.to_string()])?;
    sensor.signal(libc::SIGCONT);
    let lost = sensor.wait_for(Duration::from_secs(10), |v| {
        v["event"]["kind"] == "pipeline_error"
    })?;
    assert_eq!(lost["event"]["action"], "events-lost");
    assert!(lost["sensor"]["lost_events"].as_u64().unwrap() > 0);
    // Stop, so every record still in the ring has been handled before counting.
    let (status, lines) = sensor.stop_with(libc::SIGTERM)?;
    assert!(status.success());
    let seen = lines.iter().filter(|v| is_connection(v, pid, 5555)).count();
    let stopped = lines
        .iter()
        .find(|v| v["event"]["action"] == "sensor-stopped")
        .unwrap();
    let lost_total = stopped["sensor"]["lost_events_total"].as_u64().unwrap();
    assert!(seen < N, "a 4 KiB ring cannot have held {N} events");
    // Other processes' records may be lost too, so at least the missing ones.
    assert!(
        lost_total as usize >= N - seen,
        "seen {seen} + lost {lost_total} < {N}"
    );
    Ok(())
}

#[rstest]
#[case::sigterm(libc::SIGTERM)]
#[case::sigint(libc::SIGINT)]
fn signal_detaches_and_exits_zero(#[case] sig: i32) -> Result<()> {
    if !root_or_skip("detach") {
        return Ok(());
    }
    let sensor = Sensor::start(&[])?;
    // The connect hook, the lifecycle hooks, the state hook for listens (unless it is
    // the connect hook) and the four UDP programs, held by the sensor.
    let started = sensor
        .lines()
        .into_iter()
        .find(|v| v["event"]["action"] == "sensor-started")
        .unwrap();
    let expected = sensor_tests::expected_programs(&started);
    let ours = bpf_programs_of(sensor.pid());
    assert_eq!(
        ours.len(),
        expected,
        "programs held by the sensor: {ours:?}"
    );
    assert!(ours.iter().all(|id| loaded_program_ids().contains(id)));
    let (status, lines) = sensor.stop_with(sig)?;
    assert_eq!(status.code(), Some(0), "exit status after signal {sig}");
    assert!(
        lines
            .iter()
            .any(|v| v["event"]["action"] == "sensor-stopped")
    );
    let still = sensor_tests::still_loaded(&ours)?;
    assert!(
        still.is_empty(),
        "programs left loaded after signal {sig}: {still:?}"
    );
    Ok(())
}

#[test]
fn check_reports_the_hook_and_exits_zero() -> Result<()> {
    if !root_or_skip("check") {
        return Ok(());
    }
    let _shared = ATTACH_LOCK.read().unwrap_or_else(|e| e.into_inner());
    let out = Command::new(sensor_bin()).arg("check").output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    // Every connect hook is tried and reported, whether it works here or not.
    let hooks = [
        "fentry/tcp_connect",
        "kprobe/tcp_connect",
        "tp_btf/inet_sock_set_state",
        "tracepoint/sock/inet_sock_set_state",
    ];
    for hook in hooks {
        assert!(
            text.lines().any(|l| l.starts_with(hook)),
            "{hook} missing from:\n{text}"
        );
    }
    let verdict = text.lines().find(|l| l.starts_with("verdict")).unwrap();
    assert!(verdict.contains("can run"), "{verdict}");
    // The verdict names the first hook that the list shows working.
    let first_ok = hooks
        .iter()
        .find(|h| {
            text.lines()
                .any(|l| l.starts_with(**h) && l.contains("ok: loads and attaches"))
        })
        .unwrap();
    assert!(verdict.ends_with(first_ok), "{verdict}\n{text}");
    assert!(
        text.contains("tracefs (classic tracepoints only)"),
        "{text}"
    );
    // An impossible ring buffer size is a failed check, not a crash.
    let out = Command::new(sensor_bin())
        .args(["check", "--ring-buffer-size", "1000"])
        .output()?;
    assert_eq!(out.status.code(), Some(1));
    Ok(())
}

/// Bad input fails before anything is loaded, so these need no root.
fn sensor_fails(args: &[&str]) -> String {
    let out = Command::new(sensor_bin()).args(args).output().unwrap();
    assert!(!out.status.success(), "{args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_config_and_flags_are_clear_errors() {
    let dir = std::env::temp_dir().join(format!("sensor-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    let err = sensor_fails(&["run", "--config", "/nonexistent/policy.toml"]);
    assert!(
        err.contains("/nonexistent/policy.toml") && err.contains("No such file"),
        "{err}"
    );

    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "c2_ports = [4444]\nstandard_ports = [80, 99999]\n").unwrap();
    let err = sensor_fails(&["run", "--config", bad.to_str().unwrap()]);
    assert!(
        err.contains(bad.to_str().unwrap()) && err.contains("line 2"),
        "{err}"
    );

    std::fs::write(&bad, "c2_prots = [4444]\n").unwrap();
    let err = sensor_fails(&["run", "--config", bad.to_str().unwrap()]);
    assert!(
        err.contains("unknown field `c2_prots`") && err.contains("line 1"),
        "{err}"
    );

    let err = sensor_fails(&["run", "--ring-buffer-size", "5000"]);
    assert!(
        err.contains("--ring-buffer-size") && err.contains("power of two"),
        "{err}"
    );
    let err = sensor_fails(&["run", "--probe", "uprobe"]);
    assert!(err.contains("uprobe"), "{err}");
    let err = sensor_fails(&["run", "--host-root", "/nonexistent-root"]);
    assert!(err.contains("--host-root /nonexistent-root"), "{err}");
    let err = sensor_fails(&["run", "--max-processes", "0"]);
    assert!(err.contains("--max-processes"), "{err}");
    let err = sensor_fails(&["run", "--stats-interval", "0"]);
    assert!(err.contains("--stats-interval"), "{err}");

    // A valid file is accepted and shown back.
    let good = dir.join("good.toml");
    std::fs::write(&good, "c2_ports = [4444, 9001]\n").unwrap();
    let out = Command::new(sensor_bin())
        .args(["policy", "show", "--config", good.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("c2_ports = [\n    4444,\n    9001,\n]"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unprivileged_run_names_the_missing_privileges() -> Result<()> {
    if !root_or_skip("unprivileged") {
        return Ok(());
    }
    // Drop to nobody with no capabilities, as a sysadmin forgetting sudo would be. A copy
    // in the scratch dir, so nobody can reach it wherever the repository is checked out.
    let scratch = Scratch::new("unprivileged")?;
    let bin = scratch.dir.join("t1571-sensor");
    std::fs::copy(sensor_bin(), &bin)?;
    std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .arg(&bin)
        .arg("run")
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("needs root, or CAP_BPF and CAP_PERFMON") && err.contains("euid 65534"),
        "{err}"
    );
    Ok(())
}

#[test]
fn custom_policy_changes_the_verdict() -> Result<()> {
    if !root_or_skip("custom_policy") {
        return Ok(());
    }
    let scratch = Scratch::new("connector")?;
    let connector = scratch.connector(env!("CARGO_BIN_EXE_connector"))?;
    let net = public_net()?;
    let dir = std::env::temp_dir().join(format!("sensor-pol-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("policy.toml");
    // connector becomes high-risk; 4444 is no longer a C2 port but 12345 is.
    std::fs::write(
        &path,
        "c2_ports = [12345]\nhigh_risk_executables = [\"connector\"]\n",
    )?;
    let mut sensor = Sensor::start(&["--all", "--config", path.to_str().unwrap()])?;
    let pid = net.run(&connector, &[PUBLIC, "12345"])?;
    assert_tcp_alert(&sensor.connection(pid, 12345)?, 3, "High");
    let pid = net.nc(PUBLIC, 4444)?;
    assert_unscored(&sensor.connection(pid, 4444)?);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[test]
fn kernel_log_is_relayed_when_asked() -> Result<()> {
    if !root_or_skip("kernel_log") {
        return Ok(());
    }
    let net = public_net()?;
    let mut sensor = Sensor::start(&["--kernel-log", "debug"])?;
    let pid = net.nc(PUBLIC, 4444)?;
    sensor.connection(pid, 4444)?;
    let want = format!("connect tgid={pid} dport=4444");
    wait_until(
        &format!("kernel log line {want:?} on the sensor's stderr"),
        Duration::from_secs(10),
        || sensor.stderr().contains(&want),
    )
    .with_context(|| format!("stderr:\n{}", sensor.stderr()))?;
    Ok(())
}

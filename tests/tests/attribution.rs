//! Attribution that never misses (issue: kernel-fed process table): short-lived, renamed,
//! copied and fileless connectors, and a burst of processes, on the running kernel.

use std::{path::PathBuf, process::Command, time::Duration};

use anyhow::{Context, Result, bail};
use sensor_tests::{ATTACH_LOCK, Net, Scratch, Sensor, root_or_skip};
use serde_json::Value;

const PUBLIC: &str = "198.51.100.7";
/// Ring size for tests that freeze the sensor: room for the whole host's records meanwhile.
const FROZEN_RING: &str = "16777216";

fn net() -> Result<Net> {
    sensor_tests::public_net(&[PUBLIC])
}

/// Compiles a C program with the host's gcc.
fn compile(dir: &std::path::Path, name: &str, source: &str) -> Result<PathBuf> {
    let src = dir.join(format!("{name}.c"));
    std::fs::write(&src, source)?;
    let bin = dir.join(name);
    let out = Command::new("gcc")
        .arg("-O1")
        .arg("-o")
        .arg(&bin)
        .arg(&src)
        .output()
        .context("running gcc")?;
    if !out.status.success() {
        bail!("gcc: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(bin)
}

const CONNECT_AND_EXIT: &str = r#"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>
int main(int argc, char **argv) {
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons(atoi(argv[2]));
    inet_pton(AF_INET, argv[1], &a.sin_addr);
    int s = socket(AF_INET, SOCK_STREAM, 0);
    connect(s, (struct sockaddr *)&a, sizeof a);
    _exit(0);
}
"#;

#[test]
fn connect_then_exit_at_once_keeps_path_command_line_and_parent() -> Result<()> {
    if !root_or_skip("connect_then_exit") {
        return Ok(());
    }
    let scratch = Scratch::new("cexit")?;
    let dir = scratch.dir.clone();
    let bin = compile(&dir, "quick-exit", CONNECT_AND_EXIT)?;
    let net = net()?;
    let mut sensor = Sensor::start(&["--all", "--ring-buffer-size", FROZEN_RING])?;
    sensor.signal(libc::SIGSTOP); // the process is long gone when its records are read
    let pid = net.run(bin.to_str().unwrap(), &[PUBLIC, "4444", "extra-arg"])?;
    sensor.signal(libc::SIGCONT);
    let v = sensor.connection(pid, 4444)?;
    assert_eq!(v["process"]["executable"], bin.to_str().unwrap(), "{v:#}");
    assert_eq!(
        v["process"]["command_line"],
        format!("{} {PUBLIC} 4444 extra-arg", bin.display())
    );
    assert_eq!(v["process"]["parent"]["pid"], std::process::id());
    assert_eq!(
        v["process"]["parent"]["executable"],
        std::env::current_exe()?.to_str().unwrap()
    );
    assert_eq!(v["sensor"]["process"]["attribution"], "kernel-exec");
    // Built here, so no package installed it: the unmanaged tier (Medium), not the C2 port's 1.
    assert_eq!(
        v["event"]["risk_score"], 2,
        "an unlisted, unmanaged program to a C2 port: {v:#}"
    );
    assert_eq!(v["sensor"]["process"]["unmanaged"], true, "{v:#}");
    Ok(())
}

#[test]
fn prctl_renamed_process_is_scored_by_executable() -> Result<()> {
    if !root_or_skip("prctl_rename") {
        return Ok(());
    }
    let net = net()?;
    let mut sensor = Sensor::start(&[])?;
    let code = format!(
        "import ctypes, socket\nctypes.CDLL(None).prctl(15, b'kworker/0:1', 0, 0, 0)\ns = socket.socket()\ns.settimeout(2)\ns.connect_ex(({PUBLIC:?}, 4444))"
    );
    let pid = net.run("python3", &["-c", &code])?;
    let v = sensor.connection(pid, 4444)?;
    assert_eq!(v["process"]["thread"]["name"], "kworker/0:1", "{v:#}");
    assert_eq!(v["event"]["risk_score"], 3);
    assert_eq!(v["sensor"]["matched"]["high_risk_executable"], "python3");
    assert_eq!(v["sensor"]["matched"]["high_risk_matched_by"], "executable");
    Ok(())
}

#[test]
fn renamed_copy_of_curl_matches_by_content() -> Result<()> {
    if !root_or_skip("renamed_curl") {
        return Ok(());
    }
    let scratch = Scratch::new("renamed")?;
    let dir = scratch.dir.clone();
    let copy = dir.join("update-agent");
    std::fs::copy(std::fs::canonicalize("/usr/bin/curl")?, &copy)?;
    let net = net()?;
    let mut sensor = Sensor::start(&[])?;
    let pid = net.run(
        copy.to_str().unwrap(),
        &["-s", "-m", "2", &format!("http://{PUBLIC}:4444/")],
    )?;
    let v = sensor.connection(pid, 4444)?;
    assert_eq!(v["process"]["executable"], copy.to_str().unwrap(), "{v:#}");
    assert_eq!(v["event"]["risk_score"], 3, "{v:#}");
    assert_eq!(v["sensor"]["matched"]["high_risk_matched_by"], "content");
    assert_eq!(v["sensor"]["matched"]["high_risk_executable"], "curl");
    assert_eq!(v["sensor"]["process"]["content_match"], "curl");
    assert!(v["event"]["reason"].as_str().unwrap().contains("content"));
    Ok(())
}

#[test]
fn memfd_executed_connector_is_fileless_and_high_risk() -> Result<()> {
    if !root_or_skip("memfd") {
        return Ok(());
    }
    let net = net()?;
    let mut sensor = Sensor::start(&["--ring-buffer-size", FROZEN_RING])?;
    // python3 loads the connector into a memfd and fexecve()s it: no file on disk.
    let code = format!(
        "import os\nfd = os.memfd_create('payload', 0)\nos.write(fd, open({:?}, 'rb').read())\nos.execve(fd, ['payload', {PUBLIC:?}, '5555'], {{}})",
        env!("CARGO_BIN_EXE_connector")
    );
    // Frozen sensor: the payload has exited before its exec record is read, so the name
    // must come from the kernel (the memfd's dentry), not from /proc.
    sensor.signal(libc::SIGSTOP);
    let pid = net.run("python3", &["-c", &code])?;
    sensor.signal(libc::SIGCONT);
    let v = sensor.connection(pid, 5555)?;
    assert_eq!(v["sensor"]["process"]["fileless"], true, "{v:#}");
    assert!(
        v["process"]["executable"]
            .as_str()
            .unwrap()
            .starts_with("/memfd:payload"),
        "{v:#}"
    );
    assert_eq!(v["sensor"]["matched"]["high_risk_matched_by"], "location");
    assert_eq!(
        v["event"]["risk_score"], 2,
        "fileless = high-risk, on a non-standard port"
    );
    Ok(())
}

#[test]
fn burst_of_short_lived_processes_is_fully_attributed() -> Result<()> {
    if !root_or_skip("burst") {
        return Ok(());
    }
    // 2000 processes; `SENSOR_TEST_BURST` sets another count (smaller in emulated VMs).
    let n = sensor_tests::burst_count(2000)?;
    // Exclusive: the burst would flood the ring buffers of other tests' sensors.
    let _only = ATTACH_LOCK.write().unwrap_or_else(|e| e.into_inner());
    let net = net()?;
    let scratch = Scratch::new("burst")?;
    let connector = scratch.connector(env!("CARGO_BIN_EXE_connector"))?;
    let mut sensor = Sensor::start_unlocked(&[
        "--ring-buffer-size",
        "16777216",
        "--metrics-interval",
        "0.5",
    ])?;
    // One shell starts them all in the background, as fast as it can fork.
    let script =
        format!("i=0; while [ $i -lt {n} ]; do {connector} {PUBLIC} 4444 & i=$((i+1)); done; wait");
    let shell = net.run("sh", &["-c", &script])?;
    // A marker after the burst: once it is out, every earlier record has been handled.
    let marker = net.nc(PUBLIC, 4444)?;
    sensor.wait_for(Duration::from_secs(120), |v| {
        sensor_tests::is_connection(v, marker, 4444)
    })?;
    let (status, lines) = sensor.stop_with(libc::SIGTERM)?;
    assert!(status.success());
    let alerts: Vec<&Value> = lines
        .iter()
        .filter(|v| v["destination"]["port"] == 4444 && v["process"]["parent"]["pid"] == shell)
        .collect();
    let attributed = alerts
        .iter()
        .filter(|v| v["process"]["executable"].is_string())
        .count();
    let stopped = lines
        .iter()
        .find(|v| v["event"]["action"] == "sensor-stopped")
        .unwrap();
    eprintln!(
        "burst: {} alerts for {n} connectors, {attributed} attributed, lost {}",
        alerts.len(),
        stopped["sensor"]["lost_events_total"]
    );
    assert_eq!(stopped["sensor"]["lost_events_total"], 0, "no records lost");
    // The process table's size and the record counts are reported as metrics.
    let metric = lines
        .iter()
        .find(|v| v["event"]["kind"] == "metric")
        .expect("a sensor-stats metric event");
    assert!(
        metric["sensor"]["process_table"]["entries"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert!(
        stopped["sensor"]["process_records"]["exec"]
            .as_u64()
            .unwrap()
            >= n as u64
    );
    assert_eq!(alerts.len(), n, "one alert per connector");
    assert_eq!(attributed, n, "every alert attributed");
    assert!(
        alerts
            .iter()
            .all(|v| v["process"]["executable"] == connector.as_str())
    );
    Ok(())
}

#[test]
fn container_id_comes_from_the_kernels_cgroup_id_when_the_process_is_gone() -> Result<()> {
    if !root_or_skip("container_cgroup") {
        return Ok(());
    }
    let root = sensor_tests::cgroup2_root()?;
    // A cgroup named the way Docker names a container's scope.
    let id = format!(
        "{:064x}",
        u128::from(std::process::id()) * 0x9e37_79b9_7f4a_7c15
    );
    let parent = root.join(format!("t1571-test-{}", std::process::id()));
    let scope = parent.join(format!("docker-{id}.scope"));
    std::fs::create_dir_all(&scope).with_context(|| format!("creating {}", scope.display()))?;
    let net = net()?;
    let mut sensor = Sensor::start(&["--ring-buffer-size", FROZEN_RING])?;
    // Frozen: the process joins the cgroup, connects and exits before /proc can be read.
    sensor.signal(libc::SIGSTOP);
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec nc -z -w2 {PUBLIC} 4444",
        scope.display()
    );
    let pid = net.run("sh", &["-c", &script])?;
    sensor.signal(libc::SIGCONT);
    let v = sensor.connection(pid, 4444);
    // The cgroup can go once the process is reaped and the record handled.
    let _ = std::fs::remove_dir(&scope);
    let _ = std::fs::remove_dir(&parent);
    let v = v?;
    assert_eq!(v["container"]["id"], id, "{v:#}");
    assert_eq!(
        v["process"]["executable"],
        std::fs::canonicalize("/usr/bin/nc")?.to_str().unwrap()
    );
    Ok(())
}

#[test]
fn connect_from_a_worker_thread_is_attributed_to_its_process() -> Result<()> {
    if !root_or_skip("thread_connect") {
        return Ok(());
    }
    let net = net()?;
    let mut sensor = Sensor::start(&[])?;
    // The connect comes from a thread started well after the process: its own start
    // time differs from the process's, which is what the process table is keyed on.
    let code = format!(
        "import socket, threading, time\ntime.sleep(0.05)\ndef go():\n    s = socket.socket()\n    s.settimeout(2)\n    s.connect_ex(({PUBLIC:?}, 4444))\nt = threading.Thread(target=go)\nt.start()\nt.join()"
    );
    let pid = net.run("python3", &["-c", &code])?;
    let v = sensor.connection(pid, 4444)?;
    assert_ne!(
        v["process"]["thread"]["id"], pid,
        "the connect came from another thread"
    );
    assert!(
        v["process"]["executable"]
            .as_str()
            .is_some_and(|e| e.contains("python3")),
        "{v:#}"
    );
    assert_eq!(
        v["sensor"]["matched"]["high_risk_matched_by"], "executable",
        "{v:#}"
    );
    assert_eq!(v["process"]["parent"]["pid"], std::process::id());
    Ok(())
}

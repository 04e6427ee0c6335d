//! The sensor starts on hosts that differ from this one: no tracefs or debugfs mounted
//! (fresh machines, minimal images, pods that do not mount the host's tracefs), and any
//! cgroup layout. Each test makes the condition itself, in a mount namespace of the
//! sensor's own, so a machine where tracefs happens to be mounted cannot hide a failure.

use anyhow::{Context, Result};
use sensor_tests::{Net, Sensor, mounted_types, root_or_skip};
use serde_json::Value;

const PUBLIC: &str = "203.0.113.7";
/// What a fresh machine or a pod may lack: both places tracefs can be found.
const TRACING_MOUNTS: [&str; 3] = [
    "/sys/kernel/debug/tracing",
    "/sys/kernel/debug",
    "/sys/kernel/tracing",
];

fn public_net() -> Result<Net> {
    sensor_tests::public_net(&[PUBLIC])
}

fn started(sensor: &Sensor) -> Value {
    sensor
        .lines()
        .into_iter()
        .find(|v| v["event"]["action"] == "sensor-started")
        .expect("sensor-started line")
}

/// True when this kernel offers the BTF tracepoints: `sensor check` loads and attaches it.
fn tp_btf_works() -> Result<bool> {
    let out = std::process::Command::new(sensor_tests::sensor_bin())
        .arg("check")
        .output()
        .context("running sensor check")?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.starts_with("tp_btf/inet_sock_set_state") && l.contains("ok:")))
}

#[test]
fn alerts_without_tracefs_using_btf_hooks_only() -> Result<()> {
    if !root_or_skip("no_tracefs") {
        return Ok(());
    }
    let btf = tp_btf_works()?;
    let net = public_net()?;
    let mut sensor =
        Sensor::start_without_mounts(&["--ring-buffer-size", "16777216"], &TRACING_MOUNTS)?;
    let before = mounted_types(sensor.pid())?;
    // Frozen while nc execs, connects and exits: the alert's attribution can then only
    // come from the kernel's exec record, so the lifecycle hooks work without tracefs too.
    sensor.signal(libc::SIGSTOP);
    let pid = net.nc(PUBLIC, 4444)?;
    sensor.signal(libc::SIGCONT);
    let v = sensor.connection(pid, 4444)?;
    assert_eq!(v["event"]["risk_score"], 3, "{v:#}");
    let hook = v["sensor"]["probe"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let s = started(&sensor);
    assert_eq!(s["sensor"]["probe"], hook.as_str(), "{s:#}");
    if !btf {
        // Older kernels: the classic tracepoint, with tracefs mounted privately.
        assert_eq!(hook, "tracepoint/sock/inet_sock_set_state");
        return Ok(());
    }
    // fentry where it loads (it is preferred), else the BTF tracepoint; never the one
    // hook that needs tracefs.
    assert!(
        [
            "fentry/tcp_connect",
            "kprobe/tcp_connect",
            "tp_btf/inet_sock_set_state"
        ]
        .contains(&hook.as_str()),
        "{hook}"
    );
    for h in s["sensor"]["process_hooks"]
        .as_array()
        .context("process_hooks")?
    {
        // The UDP and protocol hooks are cgroup programs (`cgroup/...`,
        // `cgroup_skb/egress`): attached through the bpf syscall too.
        assert!(
            h["hook"]
                .as_str()
                .is_some_and(|n| n.starts_with("tp_btf/") || n.starts_with("cgroup")),
            "hook not on BTF or cgroup: {h}"
        );
    }
    assert_eq!(
        s["sensor"]["tracefs"], "not needed (no classic tracepoint in use)",
        "{s:#}"
    );
    assert_eq!(
        v["sensor"]["process"]["attribution"], "kernel-exec",
        "{v:#}"
    );
    assert_eq!(
        v["process"]["command_line"],
        format!("nc -z -w2 {PUBLIC} 4444")
    );
    // The test's unmounts held, and the sensor mounted nothing to get here.
    for types in [before, mounted_types(sensor.pid())?] {
        assert!(
            !types.iter().any(|t| t == "tracefs" || t == "debugfs"),
            "sensor's mounts: {types:?}"
        );
    }
    Ok(())
}

#[test]
fn classic_tracepoint_fallback_mounts_tracefs_privately() -> Result<()> {
    if !root_or_skip("tracefs_fallback") {
        return Ok(());
    }
    let net = public_net()?;
    let host_tracefs = mounted_types(std::process::id())?
        .iter()
        .filter(|t| *t == "tracefs")
        .count();
    let mut sensor = Sensor::start_without_mounts(
        &["--probe", "tracepoint", "--ring-buffer-size", "16777216"],
        &TRACING_MOUNTS,
    )?;
    let pid = net.nc(PUBLIC, 4444)?;
    let v = sensor.connection(pid, 4444)?;
    assert_eq!(v["event"]["risk_score"], 3, "{v:#}");
    assert_eq!(v["sensor"]["probe"], "tracepoint/sock/inet_sock_set_state");
    let s = started(&sensor);
    assert_eq!(
        s["sensor"]["tracefs"],
        "tracefs mounted by the sensor at /sys/kernel/tracing in its own mount namespace",
        "{s:#}"
    );
    assert!(mounted_types(sensor.pid())?.iter().any(|t| t == "tracefs"));
    // Ours (the test's namespace, the host's here) gained nothing.
    let after = mounted_types(std::process::id())?
        .iter()
        .filter(|t| *t == "tracefs")
        .count();
    assert_eq!(after, host_tracefs, "the sensor's mount leaked out");
    Ok(())
}

/// A cgroup v1 hierarchy of the test's own (named, no controllers: mountable on any
/// kernel with cgroup v1, whatever layout the host uses), unmounted and removed on drop.
struct V1Hierarchy {
    _scratch: sensor_tests::Scratch,
    mount: std::path::PathBuf,
}

impl V1Hierarchy {
    fn new() -> Result<Self> {
        let scratch = sensor_tests::Scratch::new("cgroup-v1")?;
        let mount = scratch.dir.join("hierarchy");
        std::fs::create_dir(&mount)?;
        let name = format!("none,name=t1571test{}", std::process::id());
        let out = std::process::Command::new("mount")
            .args(["-t", "cgroup", "-o", &name, "t1571test"])
            .arg(&mount)
            .output()
            .context("running mount")?;
        anyhow::ensure!(
            out.status.success(),
            "mounting a named cgroup v1 hierarchy: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(Self {
            _scratch: scratch,
            mount,
        })
    }
}

impl Drop for V1Hierarchy {
    fn drop(&mut self) {
        // Child cgroups first (empty once their processes exited), then the hierarchy.
        let _ = std::process::Command::new("sh")
            .arg("-c")
            .arg("find \"$1\" -mindepth 1 -depth -type d -exec rmdir {} \\;")
            .arg("sh")
            .arg(&self.mount)
            .status();
        let _ = std::process::Command::new("umount")
            .arg(&self.mount)
            .status();
    }
}

#[test]
fn container_id_from_a_cgroup_v1_path() -> Result<()> {
    if !root_or_skip("cgroup_v1_path") {
        return Ok(());
    }
    let v1 = V1Hierarchy::new()?;
    // Docker's cgroupfs-driver layout on v1: /docker/<id>.
    let id = format!(
        "{:064x}",
        u128::from(std::process::id()) * 0x517c_c1b7_2722_0a95
    );
    let cg = v1.mount.join("docker").join(&id);
    std::fs::create_dir_all(&cg)?;
    let net = public_net()?;
    let mut sensor = Sensor::start(&[])?;
    // Joins the v1 cgroup, then execs python3 (its /proc/PID/cgroup now names the
    // container), which connects and lingers long enough to be read.
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec python3 -c \"import socket,time; \
         s=socket.socket(); s.settimeout(2); s.connect_ex(('{PUBLIC}', 4444)); time.sleep(1)\"",
        cg.display()
    );
    let pid = net.run("sh", &["-c", &script])?;
    let v = sensor.connection(pid, 4444)?;
    assert_eq!(v["container"]["id"], id, "{v:#}");
    assert_eq!(v["event"]["risk_score"], 3, "{v:#}");
    Ok(())
}

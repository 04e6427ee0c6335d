//! Guest side of the arm64 matrix (`xtask arm64-guest`, a static aarch64 build of this very
//! program, PID 1's child in the initramfs). The guest has no distribution, so the cargo
//! test executables (iproute2 netns, curl, python3) cannot run there: this runs
//! `tests/tests/matrix.rs`'s per-hook case with busybox's applets instead. Atomic 1 is
//! busybox `nc` to 4444 over IPv4, Atomic 2 busybox `wget` to 8088 over IPv4 and `nc` to
//! 8088 over IPv6, then the static `connector` run while the sensor is frozen (only the
//! kernel's exec record can attribute it), then a clean exit with every program freed.
//! The clients run in a network namespace of their own with the documentation addresses
//! on its `lo` (the VM has no network device at all); each connect meets a closed port.

use std::{
    fs::File,
    io::{BufRead, BufReader},
    os::{fd::AsRawFd, unix::process::CommandExt},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};

pub const SENSOR: &str = "/t1571-sensor";
pub const CONNECTOR: &str = "/var/lib/t1571-sensor-tests/connector";
const PUBLIC: &str = "192.0.2.7";
const PUBLIC6: &str = "2001:db8::7";
/// Room for every record while the sensor is frozen (as the x86_64 matrix).
const FROZEN_RING: &str = "16777216";
/// What the host looks for on the serial console.
pub const RESULT_MARK: &str = "T1571-ARM64-RESULT ";

/// Runs `sensor check`, then the per-hook case with auto and each hook that loads.
pub fn guest(probes: &str) -> Result<()> {
    let check = Command::new(SENSOR)
        .arg("check")
        .output()
        .context("running sensor check")?;
    let text = String::from_utf8_lossy(&check.stdout).into_owned();
    println!("{text}{}", String::from_utf8_lossy(&check.stderr));
    let hooks = connect_hooks(&text);
    let auto = text
        .lines()
        .find_map(|l| l.strip_prefix("verdict"))
        .and_then(|v| v.split("using ").nth(1))
        .map(|h| h.trim().to_string());
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let ns = ClientNs::new()?;
    let mut blocks = Vec::new();
    for probe in probes.split(',') {
        let prefix = format!("{}/", probe.replace('-', "_"));
        // Why a hook does not load here, in `sensor check`'s words.
        let refused = hooks
            .iter()
            .find(|(h, _)| h.starts_with(&prefix))
            .and_then(|(_, r)| r.as_ref().err());
        let t0 = Instant::now();
        let status = if let (Some(why), false) = (refused, probe == "auto") {
            format!("does not load: {why}")
        } else {
            match per_hook(&ns, probe, auto.as_deref()) {
                Ok(()) => "pass".to_string(),
                Err(e) => format!("FAIL: {e:#}"),
            }
        };
        let secs = t0.elapsed().as_secs();
        eprintln!("arm64-guest: {probe}: {status} ({secs} s)");
        blocks.push(json!({"probe": probe, "status": status, "seconds": secs}));
    }
    let result = json!({
        "release": release,
        "auto": auto,
        "hooks": hooks.iter().map(|(h, r)| json!({"hook": h, "ok": r.is_ok()})).collect::<Vec<_>>(),
        "blocks": blocks,
    });
    println!("{RESULT_MARK}{result}");
    Ok(())
}

/// Connect hooks `sensor check` lists, with whether each loads here (else why not).
fn connect_hooks(text: &str) -> Vec<(String, Result<(), String>)> {
    let mut hooks: Vec<(String, Result<(), String>)> = Vec::new();
    for line in text.lines() {
        let Some((name, status)) = line.split_once(char::is_whitespace) else {
            continue;
        };
        if (name.ends_with("/tcp_connect") || name.ends_with("/inet_sock_set_state"))
            && !hooks.iter().any(|(n, _)| n == name)
        {
            let status = status.trim();
            let r = if status.starts_with("ok") {
                Ok(())
            } else {
                Err(status.to_string())
            };
            hooks.push((name.to_string(), r));
        }
    }
    hooks
}

/// `matrix.rs`'s `one_sensor_per_hook_atomic_cases_kernel_attribution_clean_exit`.
fn per_hook(ns: &ClientNs, probe: &str, auto: Option<&str>) -> Result<()> {
    let me = std::process::id();
    let mut args = vec!["run", "--ring-buffer-size", FROZEN_RING];
    if probe != "auto" {
        args.extend(["--probe", probe]);
    }
    let mut sensor = Sensor::start(&args)?;
    let started = sensor.wait_for(Duration::from_secs(600), |v| {
        v["event"]["action"] == "sensor-started"
    })?;
    let reported = started["sensor"]["probe"].as_str().unwrap_or_default();
    check_hook(reported, probe, auto)?;
    let held = bpf_programs_of(sensor.pid());

    // Atomic 1: nc to 4444, IPv4 (busybox's nc, which has no -z: stdin is empty; busybox
    // is on the high-risk list).
    let pid = ns.run("nc", &["-w2", PUBLIC, "4444"])?;
    let v = sensor.connection(pid, 4444)?;
    high_alert(&v)?;
    check_hook(
        v["sensor"]["probe"].as_str().unwrap_or_default(),
        probe,
        auto,
    )?;
    expect(&v, &["process", "executable"], "/bin/busybox")?;
    expect(
        &v,
        &["process", "command_line"],
        &format!("nc -w2 {PUBLIC} 4444"),
    )?;
    expect(&v, &["destination", "ip"], PUBLIC)?;
    expect(&v, &["network", "type"], "ipv4")?;
    ensure!(v["process"]["parent"]["pid"] == me, "parent pid: {v:#}");
    expect(&v, &["user", "id"], "0")?;
    expect(&v, &["user", "name"], "root")?;

    // Atomic 2: an HTTP client to 8088 over IPv4, and 8088 over IPv6. (busybox 1.35's
    // wget dies of SIGSEGV with -T on arm64; without it the connect is the same.)
    let url = format!("http://{PUBLIC}:8088/beacon");
    let pid = ns.run("wget", &["-O", "/dev/null", &url])?;
    let v = sensor.connection(pid, 8088)?;
    high_alert(&v)?;
    expect(&v, &["process", "executable"], "/bin/busybox")?;
    let pid = ns.run("nc", &["-w2", PUBLIC6, "8088"])?;
    let v = sensor.connection(pid, 8088)?;
    high_alert(&v)?;
    expect(&v, &["destination", "ip"], PUBLIC6)?;
    expect(&v, &["network", "type"], "ipv6")?;

    // Gone before userspace looks: only the kernel's exec record, joined to the connect
    // by the process key this hook read, can attribute it.
    sensor.signal(libc::SIGSTOP);
    let pid = ns.run(CONNECTOR, &[PUBLIC, "4444"]);
    sensor.signal(libc::SIGCONT);
    let v = sensor.connection(pid?, 4444)?;
    expect(&v, &["process", "executable"], CONNECTOR)?;
    expect(
        &v,
        &["process", "command_line"],
        &format!("{CONNECTOR} {PUBLIC} 4444"),
    )?;
    expect(&v, &["sensor", "process", "attribution"], "kernel-exec")?;
    ensure!(v["process"]["parent"]["pid"] == me, "parent pid: {v:#}");
    ensure!(v["event"]["risk_score"] == 2, "unmanaged, C2 port: {v:#}");

    // Clean exit: every program the sensor held goes with it.
    let expected = expected_programs(&started);
    ensure!(
        held.len() == expected && held.len() >= 4,
        "programs held {held:?}, expected {expected}"
    );
    let (code, lines) = sensor.stop()?;
    ensure!(code == Some(0), "sensor exit status {code:?}");
    ensure!(
        lines
            .iter()
            .any(|v| v["event"]["action"] == "sensor-stopped"),
        "no sensor-stopped line"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let still: Vec<u32> = loaded_programs()
            .into_iter()
            .filter(|id| held.contains(id))
            .collect();
        if still.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("programs left loaded: {still:?}");
        }
        thread::sleep(Duration::from_millis(200));
    }
}

fn check_hook(reported: &str, probe: &str, auto: Option<&str>) -> Result<()> {
    if probe == "auto" {
        ensure!(
            Some(reported) == auto,
            "sensor reports {reported:?}, check says auto picks {auto:?}"
        );
    } else {
        let prefix = format!("{}/", probe.replace('-', "_"));
        let connect =
            reported.ends_with("/tcp_connect") || reported.ends_with("/inet_sock_set_state");
        ensure!(
            reported.starts_with(&prefix) && connect,
            "sensor reports {reported:?}, started with --probe {probe}"
        );
    }
    Ok(())
}

/// tests/src/ecs.rs's `assert_tcp_alert(v, 3, "High")`.
fn high_alert(v: &Value) -> Result<()> {
    expect(v, &["event", "kind"], "alert")?;
    ensure!(v["event"]["risk_score"] == 3, "risk 3: {v:#}");
    expect(v, &["sensor", "severity"], "High")?;
    ensure!(v["threat"]["technique"]["id"][0] == "T1571", "{v:#}");
    ensure!(v["threat"]["tactic"]["id"][0] == "TA0011", "{v:#}");
    ensure!(
        v["rule"]["name"].is_string() && v["host"]["name"].is_string(),
        "{v:#}"
    );
    ensure!(
        v["@timestamp"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{v:#}"
    );
    expect(v, &["network", "transport"], "tcp")
}

fn expect(v: &Value, path: &[&str], want: &str) -> Result<()> {
    let got = path.iter().fold(v, |v, k| &v[*k]);
    ensure!(
        got == want,
        "{} is {got}, not {want:?}: {v:#}",
        path.join(".")
    );
    Ok(())
}

/// As tests/src/bpf.rs: the connect hook, each attached lifecycle and state hook (none
/// extra when the state hook is the connect hook), four UDP programs.
fn expected_programs(started: &Value) -> usize {
    let probe = &started["sensor"]["probe"];
    1 + started["sensor"]["process_hooks"]
        .as_array()
        .map(|hooks| {
            hooks
                .iter()
                .filter(|h| h["attached"] == true)
                .map(|h| match h["event"].as_str() {
                    Some("udp") => 4,
                    _ if &h["hook"] == probe => 0,
                    _ => 1,
                })
                .sum::<usize>()
        })
        .unwrap_or(0)
}

fn bpf_programs_of(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return Vec::new();
    };
    let mut ids: Vec<u32> = dir
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("prog_id:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Every loaded program's id (BPF_PROG_GET_NEXT_ID; no aya in xtask).
fn loaded_programs() -> Vec<u32> {
    const BPF_PROG_GET_NEXT_ID: libc::c_long = 11;
    let mut ids = Vec::new();
    let mut attr = [0u32; 4]; // start_id, next_id, open_flags, pad
    loop {
        // SAFETY: attr outlives the call and is as large as the kernel reads for this command.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_GET_NEXT_ID,
                attr.as_mut_ptr(),
                std::mem::size_of_val(&attr) as u32,
            )
        };
        if r != 0 {
            return ids;
        }
        ids.push(attr[1]);
        attr[0] = attr[1];
    }
}

/// The clients' network namespace: `lo` up with the documentation addresses on it, held
/// by a busybox `sleep`.
struct ClientNs {
    holder: Child,
    fd: File,
}

impl ClientNs {
    fn new() -> Result<Self> {
        let script = format!(
            "ip link set lo up && ip addr add {PUBLIC}/32 dev lo && ip -6 addr add {PUBLIC6}/128 dev lo && echo ready && exec sleep 100000"
        );
        let mut holder = Command::new("unshare")
            .args(["-n", "--", "sh", "-c", &script])
            .stdout(Stdio::piped())
            .spawn()
            .context("unshare -n")?;
        let mut ready = String::new();
        BufReader::new(holder.stdout.take().context("holder stdout")?).read_line(&mut ready)?;
        ensure!(
            ready.trim() == "ready",
            "the client namespace was not set up"
        );
        let fd = File::open(format!("/proc/{}/ns/net", holder.id()))?;
        Ok(Self { holder, fd })
    }

    /// Runs `program` in the namespace (setns between fork and exec: the pid is the
    /// program's own) to completion; returns its pid.
    fn run(&self, program: &str, args: &[&str]) -> Result<u32> {
        let fd = self.fd.as_raw_fd();
        let mut cmd = Command::new(program);
        // SAFETY: setns is async-signal-safe; the fd stays open while `self` lives.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {program}"))?;
        let pid = child.id();
        let status = child.wait()?;
        eprintln!(
            "arm64-guest: {program} {} (pid {pid}): {status}",
            args.join(" ")
        );
        Ok(pid)
    }
}

impl Drop for ClientNs {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// `sensor run` with its JSON lines collected.
struct Sensor {
    child: Child,
    lines: Arc<Mutex<Vec<Value>>>,
    reader: Option<thread::JoinHandle<()>>,
}

impl Sensor {
    fn start(args: &[&str]) -> Result<Self> {
        let mut child = Command::new(SENSOR)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the sensor")?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().context("sensor stdout")?;
        let l = lines.clone();
        let reader = thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    l.lock().unwrap_or_else(|e| e.into_inner()).push(v);
                }
            }
        });
        Ok(Self {
            child,
            lines,
            reader: Some(reader),
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn wait_for(&mut self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = self
                .lines
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .find(|v| pred(v))
            {
                return Ok(v.clone());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("the sensor exited ({status})");
            }
            if Instant::now() > deadline {
                bail!("timed out after {timeout:?}");
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn connection(&mut self, pid: u32, port: u16) -> Result<Value> {
        self.wait_for(Duration::from_secs(90), |v| {
            v["event"]["action"] == "network-connect"
                && v["process"]["pid"] == pid
                && v["destination"]["port"] == port
        })
        .with_context(|| {
            // What the sensor did print, to tell a missed connect from a folded one.
            let seen: Vec<String> = self
                .lines
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .filter(|v| v["event"]["action"] != "sensor-started")
                .map(|v| {
                    format!(
                        "{} pid {} {} -> {}:{}",
                        v["event"]["action"],
                        v["process"]["pid"],
                        v["process"]["executable"],
                        v["destination"]["ip"],
                        v["destination"]["port"]
                    )
                })
                .collect();
            format!("no alert for pid {pid} port {port}; lines: {seen:?}")
        })
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill has no memory preconditions; the child is ours and not yet reaped.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    fn stop(mut self) -> Result<(Option<i32>, Vec<Value>)> {
        self.signal(libc::SIGTERM);
        let status = self.child.wait()?;
        // The reader ends at the pipe's end: every line is in.
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let lines = self.lines.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Ok((status.code(), lines))
    }
}

impl Drop for Sensor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

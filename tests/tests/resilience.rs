//! The sensor under conditions an attacker or a broken host can create: a stdout nobody
//! reads during an alert storm, a `kill -9`, and its capabilities after start-up.

use std::{
    io::{BufRead, BufReader},
    process::{Child, ChildStdout, Command, Stdio},
    sync::{Arc, Condvar, Mutex, mpsc},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use sensor_tests::{
    ATTACH_LOCK, Net, Scratch, collect, forced_probe, http_get, metric_counter, poll_until,
    root_or_skip, sensor_bin, wait_for_value,
};
use serde_json::Value;

const PUBLIC: &str = "203.0.113.7";

fn public_net() -> Result<Net> {
    sensor_tests::public_net(&[PUBLIC])
}

/// Whether the reader of a [`Held`] sensor may read: it blocks on the gate while closed.
#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    changed: Condvar,
}

impl Gate {
    fn set(&self, open: bool) {
        *self.open.lock().unwrap() = open;
        self.changed.notify_all();
    }

    fn wait_open(&self) {
        let open = self.open.lock().unwrap();
        drop(self.changed.wait_while(open, |open| !*open).unwrap());
    }
}

/// A `sensor run` whose stdout the test reads only when it wants to: a reader thread
/// that stops reading while the gate is closed, leaving the pipe full.
struct Held {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reading: Arc<Gate>,
    stderr: Arc<Mutex<Vec<u8>>>,
}

impl Held {
    fn start(args: &[&str]) -> Result<(Self, Value)> {
        let mut cmd = Command::new(sensor_bin());
        cmd.arg("run").args(args);
        if let Some(p) = forced_probe() {
            cmd.args(["--probe", &p]);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting the sensor")?;
        let mut out = BufReader::new(child.stdout.take().context("stdout")?);
        let (stderr, _) = collect(child.stderr.take().context("stderr")?);
        let mut line = String::new();
        let started = loop {
            line.clear();
            if out.read_line(&mut line)? == 0 {
                bail!(
                    "sensor exited before starting: {}",
                    String::from_utf8_lossy(&stderr.lock().unwrap())
                );
            }
            let v: Value = serde_json::from_str(&line).context("a stdout line")?;
            if v["event"]["action"] == "sensor-started" {
                break v;
            }
        };
        let lines = Arc::new(Mutex::new(Vec::new()));
        // Paused from the start: nothing reads stdout until the test says so.
        let reading = Arc::new(Gate::default());
        let (l, p) = (lines.clone(), reading.clone());
        thread::spawn(move || read_when_allowed(out, &l, &p));
        Ok((
            Self {
                child,
                lines,
                reading,
                stderr,
            },
            started,
        ))
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }
}

fn read_when_allowed(mut out: BufReader<ChildStdout>, lines: &Mutex<Vec<String>>, reading: &Gate) {
    loop {
        reading.wait_open();
        let mut line = String::new();
        match out.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => lines.lock().unwrap().push(line),
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `n` connects to a C2 port (closed) from one process in the client namespace.
fn storm(net: &Net, connector: &str, n: u64) -> Result<u64> {
    net.run(connector, &[PUBLIC, "4444", &n.to_string()])?;
    Ok(n)
}

/// Alerts in the storm: each line is about 2 KiB, so this is several times what the pipe
/// (64 KiB) and the output queue (8 MiB) hold together, and few enough for a debug build
/// to drain from a 16 MiB ring without loss.
const STORM: u64 = 20_000;

#[test]
fn a_stdout_nobody_reads_never_blocks_the_ring_buffer_reader() -> Result<()> {
    if !root_or_skip("backpressure") {
        return Ok(());
    }
    // Exclusive: the storm would flood the ring buffers of other tests' sensors.
    let _only = ATTACH_LOCK.write().unwrap_or_else(|e| e.into_inner());
    let scratch = Scratch::new("backpressure")?;
    let connector = scratch.connector(env!("CARGO_BIN_EXE_connector"))?;
    let net = public_net()?;
    // Every connect alerts and is printed (no folding): far more than a pipe holds. A
    // large ring, so that any kernel loss would be the reader's fault, not a burst's.
    let (sensor, started) = Held::start(&[
        "--metrics",
        "127.0.0.1:0",
        "--fold-period",
        "0",
        "--ring-buffer-size",
        "16777216",
    ])?;
    let addr = started["sensor"]["metrics"]
        .as_str()
        .context("metrics address")?
        .to_string();
    let metrics = || -> Result<String> {
        let (code, body) = http_get(&format!("http://{addr}/metrics"))?;
        if code != 200 {
            bail!("/metrics answered {code}");
        }
        Ok(body)
    };
    let seen = |b: &str| metric_counter(b, "t1571_sensor_connections_total");
    let dropped = |b: &str| metric_counter(b, "t1571_sensor_output_dropped_total");
    let lost = |b: &str| metric_counter(b, "t1571_sensor_lost_events_total");

    // At least 10 s with nobody reading stdout, from the storm on.
    let unread = Instant::now();
    let made = storm(&net, &connector, STORM)?;
    // The reader drains every connect of the storm while stdout is full: the ring-buffer
    // reader is never blocked by the writer.
    let (body, seen_now) = poll_until(
        Duration::from_secs(120),
        || {
            let body = metrics()?;
            let n = seen(&body)?;
            Ok((body, n))
        },
        |(_, n)| *n >= made,
    )?;
    assert!(
        seen_now >= made,
        "the reader saw {seen_now} of {made} connects while stdout was unread; stderr:\n{}",
        sensor.stderr()
    );
    assert_eq!(lost(&body)?, 0, "kernel losses during the storm");
    let dropped_while_unread = dropped(&body)?;
    assert!(
        dropped_while_unread > 0,
        "{made} alerts cannot fit in a pipe and the queue"
    );
    assert_eq!(
        http_get(&format!("http://{addr}/healthz"))?.0,
        200,
        "the event loop stalled"
    );
    assert!(
        sensor.stderr().contains("output queue full"),
        "the drop was not said when it started"
    );
    eprintln!(
        "storm: {made} connects, all seen {:?} after it began, {dropped_while_unread} lines dropped, 0 lost",
        unread.elapsed()
    );
    thread::sleep(Duration::from_secs(10).saturating_sub(unread.elapsed()));

    // Read again: the next line out says what was dropped.
    sensor.reading.set(true);
    // A connect per try: the line comes with the next line out.
    let report = wait_for_value(
        "an output-dropped line once stdout was read again",
        Duration::from_secs(20),
        || {
            net.run(&connector, &[PUBLIC, "4444"])?;
            Ok(sensor.lines().iter().find_map(|l| {
                let v: Value = serde_json::from_str(l).ok()?;
                (v["event"]["action"] == "output-dropped").then_some(v)
            }))
        },
        Option::is_some,
    )?
    .context("no output-dropped line")?;
    assert_eq!(report["event"]["kind"], "pipeline_error");
    let total = report["sensor"]["output_dropped"].as_u64().unwrap();
    assert!(total >= dropped_while_unread, "{report:#}");
    assert_eq!(report["sensor"]["dropped_lines"], total, "one run of drops");
    // Every line that did come out is one JSON object.
    for l in sensor.lines() {
        let v: Value = serde_json::from_str(&l).with_context(|| format!("not JSON: {l:?}"))?;
        assert!(v.is_object());
    }

    // Block stdout again and storm again; in the middle of the storm, with the queue
    // full and the writer in write(2) on a full pipe, SIGTERM exits within a second.
    sensor.reading.set(false);
    let before = dropped(&metrics()?)?;
    let mut flood = net
        .command(&connector)
        .args([PUBLIC, "4444", "1000000"])
        .spawn()
        .context("starting the second storm")?;
    wait_for_value(
        "the output queue to fill again (output_dropped to grow)",
        Duration::from_secs(120),
        || dropped(&metrics()?),
        |now| *now != before,
    )?;
    assert!(flood.try_wait()?.is_none(), "the storm ended too soon");
    let mut sensor = sensor;
    let pid = sensor.child.id();
    let t = Instant::now();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    // Waited for by a blocking wait(2) (the exit is timed), bounded by a watchdog.
    let (exited, exit) = mpsc::channel();
    let (status, took) = thread::scope(|s| {
        let child = &mut sensor.child;
        s.spawn(move || {
            let _ = exited.send(child.wait());
        });
        match exit.recv_timeout(Duration::from_secs(5)) {
            Ok(status) => Ok((status?, t.elapsed())),
            Err(_) => {
                // SAFETY: kill(2) on our own child; the waiting thread then returns.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                bail!("no exit 5 s after SIGTERM with stdout blocked")
            }
        }
    })?;
    let _ = flood.kill();
    let _ = flood.wait();
    eprintln!("SIGTERM during a storm, stdout blocked: exited in {took:?}");
    assert!(took < Duration::from_secs(1), "exit took {took:?}");
    assert_eq!(status.code(), Some(0), "{}", sensor.stderr());
    Ok(())
}

/// `bpftool KIND show -j`: the kernel's programs or links, as bpftool lists them.
fn bpftool(kind: &str) -> Result<Vec<Value>> {
    let out = Command::new("bpftool")
        .args([kind, "show", "-j"])
        .output()
        .context("running bpftool (installed by cargo xtask test)")?;
    if !out.status.success() {
        bail!(
            "bpftool {kind} show: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: Value = serde_json::from_slice(&out.stdout).context("bpftool's JSON")?;
    Ok(v.as_array().cloned().unwrap_or_default())
}

/// Of `ids`, the programs bpftool still lists, and the links still attached to them.
fn still_loaded(ids: &[u32]) -> Result<(Vec<Value>, Vec<Value>)> {
    let has = |v: &Value, key: &str| v[key].as_u64().is_some_and(|id| ids.contains(&(id as u32)));
    let progs = bpftool("prog")?
        .into_iter()
        .filter(|p| has(p, "id"))
        .collect();
    let links = bpftool("link")?
        .into_iter()
        .filter(|l| has(l, "prog_id"))
        .collect();
    Ok((progs, links))
}

#[test]
fn kill_9_leaves_no_program_attached() -> Result<()> {
    if !root_or_skip("kill_9") {
        return Ok(());
    }
    let sensor = sensor_tests::Sensor::start(&[])?;
    let started = sensor
        .lines()
        .into_iter()
        .find(|v| v["event"]["action"] == "sensor-started")
        .context("sensor-started")?;
    let ours = sensor_tests::bpf_programs_of(sensor.pid());
    assert_eq!(
        ours.len(),
        sensor_tests::expected_programs(&started),
        "programs held by the sensor: {ours:?}"
    );
    let (progs, links) = still_loaded(&ours)?;
    assert_eq!(progs.len(), ours.len(), "bpftool lists: {progs:#?}");
    // Attached through links the process owns (none pinned). A hook attached through a
    // perf event on an older kernel has no bpf_link, so not one per program.
    assert!(!links.is_empty(), "no link to the sensor's programs");
    let (status, _) = sensor.stop_with(libc::SIGKILL)?;
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
    // The kernel releases the links and programs once the last fd is closed; the
    // release itself may be deferred (RCU), so poll briefly.
    wait_for_value(
        "the kernel to release the programs and links after kill -9 (still loaded, still attached)",
        Duration::from_secs(5),
        || still_loaded(&ours),
        |(progs, links)| progs.is_empty() && links.is_empty(),
    )?;
    Ok(())
}

#[test]
fn capabilities_are_dropped_after_attach_and_features_still_work() -> Result<()> {
    if !root_or_skip("dropped_capabilities") {
        return Ok(());
    }
    let scratch = Scratch::new("caps")?;
    let policy = scratch.dir.join("policy.toml");
    std::fs::write(&policy, "c2_ports = [4444]\n")?;
    let net = public_net()?;
    // The system's python3 (installed by cargo xtask test), which nobody can run; a
    // python3 first on root's PATH may live under /root.
    const PYTHON: &str = "/usr/bin/python3";
    // A process of another user that is already running when the sensor starts: its
    // executable can only come from /proc/PID/exe (no exec record), which needs
    // CAP_SYS_PTRACE; its user from the host's passwd.
    let go = scratch.dir.join("go");
    let code = format!(
        "import os,socket,time\nwhile not os.path.exists({go:?}): time.sleep(0.05)\ns=socket.socket()\ns.settimeout(2)\ns.connect_ex(({PUBLIC:?}, 4444))",
        go = go.to_str().unwrap()
    );
    let mut waiting = net
        .command("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            PYTHON,
            "-c",
            &code,
        ])
        .spawn()
        .context("starting python3 as nobody")?;
    let policy_arg = policy.to_str().unwrap();
    let mut sensor = sensor_tests::Sensor::start(&["--config", policy_arg])?;

    // Exactly the documented set, in all three sets, and no new privileges.
    let sets = sensor_tests::capability_sets(sensor.pid())?;
    let kept = sensor_tests::kept_capabilities()?;
    for set in ["CapEff", "CapPrm", "CapBnd"] {
        assert_eq!(
            sets[set], kept,
            "{set} {:#x}, expected {kept:#x}",
            sets[set]
        );
    }
    assert_eq!(sets["CapInh"], 0);
    assert_eq!(sets["CapAmb"], 0);
    let status = std::fs::read_to_string(format!("/proc/{}/status", sensor.pid()))?;
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    // Every thread, not only the main one, holds no more than that (the hashing worker,
    // which only reads files the loop opened, holds none).
    for task in std::fs::read_dir(format!("/proc/{}/task", sensor.pid()))? {
        let tid: u32 = task?.file_name().to_string_lossy().parse()?;
        let t = std::fs::read_to_string(format!("/proc/{}/task/{tid}/status", sensor.pid()))?;
        let eff = t
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .map(|v| u64::from_str_radix(v.trim(), 16))
            .context("CapEff")??;
        assert_eq!(
            eff & !kept,
            0,
            "thread {tid} holds {eff:#x}, beyond {kept:#x}"
        );
        let comm = std::fs::read_to_string(format!("/proc/{}/task/{tid}/comm", sensor.pid()))?;
        if comm.trim() == "hasher" {
            assert_eq!(eff, 0, "the hashing thread holds {eff:#x}");
        }
    }
    let started = sensor.wait_for(Duration::from_secs(1), |v| {
        v["event"]["action"] == "sensor-started"
    })?;
    eprintln!("capabilities: {}", started["sensor"]["capabilities"]);
    assert_eq!(started["sensor"]["capabilities"]["all_kept"], false);

    // Attribution after the drop: the executable through /proc, the user by name.
    std::fs::write(&go, "")?;
    let pid = waiting.id();
    waiting.wait()?;
    let v = sensor.connection(pid, 4444)?;
    let python = std::fs::canonicalize(PYTHON)?;
    assert_eq!(
        v["process"]["executable"],
        python.to_str().unwrap(),
        "{v:#}"
    );
    assert_eq!(v["user"]["name"], "nobody", "{v:#}");
    assert_eq!(v["event"]["kind"], "alert", "{v:#}");
    let before = v["event"]["risk_score"].as_u64().context("risk_score")?;

    // After the drop: a renamed copy of curl that only its owner, nobody, may execute
    // and nobody may read (mode 0100), started now. Matching it by content means reading
    // a file of another user through /proc: CAP_DAC_READ_SEARCH and CAP_SYS_PTRACE.
    let copy = scratch.dir.join("update-agent");
    std::fs::copy(std::fs::canonicalize("/usr/bin/curl")?, &copy)?;
    std::os::unix::fs::chown(&copy, Some(65534), Some(65534))?;
    std::fs::set_permissions(&copy, std::os::unix::fs::PermissionsExt::from_mode(0o100))?;
    let url = format!("http://{PUBLIC}:4444/");
    let args = [
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        copy.to_str().unwrap(),
    ];
    let pid = net.run("setpriv", &[&args[..], &["-s", "-m", "2", &url]].concat())?;
    let c = sensor.connection(pid, 4444)?;
    assert_eq!(c["process"]["executable"], copy.to_str().unwrap(), "{c:#}");
    assert_eq!(
        c["sensor"]["matched"]["high_risk_matched_by"], "content",
        "{c:#}"
    );
    assert_eq!(c["user"]["name"], "nobody", "{c:#}");

    // A reload that changes scoring: 4444 is no longer a C2 port.
    std::fs::write(&policy, "c2_ports = [9001]\n")?;
    sensor.signal(libc::SIGHUP);
    sensor.policy_reloaded()?;
    let pid = net.nc(PUBLIC, 4444)?;
    let after = sensor.connection(pid, 4444)?;
    let risk = after["event"]["risk_score"]
        .as_u64()
        .context("risk_score")?;
    let pid = net.nc(PUBLIC, 9001)?;
    let new_c2 = sensor.connection(pid, 9001)?;
    assert_eq!(
        new_c2["sensor"]["matched"]["known_c2_port"], true,
        "9001 not a C2 port after the reload: {new_c2:#}"
    );
    assert_ne!(
        after["sensor"]["matched"]["known_c2_port"], true,
        "4444 still a C2 port after the reload: {after:#}"
    );
    assert!(
        risk < before,
        "risk {risk} after the reload, {before} before"
    );
    let (status, _) = sensor.stop_with(libc::SIGTERM)?;
    assert_eq!(status.code(), Some(0));
    Ok(())
}

//! `sensor watch` in a real terminal: tmux runs it, send-keys types, capture-pane reads
//! the screen. An alert from a real connect appears, a filter hides it, q quits; without a
//! terminal it prints plain lines. From a real journald it shows the sensor's own alerts
//! and not an entry an unprivileged user forged with the sensor's identifier and fields,
//! and a hostile process name reaches neither the screen nor a pipe as control characters.

use std::{
    ffi::OsStr,
    os::unix::ffi::OsStrExt,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, Result, bail};
use rstest::rstest;
use sensor_tests::{
    ATTACH_LOCK, JOURNAL_SOCKET, Journald, Scratch, Sensor, UnitCgroup, collect, forced_probe,
    native_datagram, poll_until, public_net, root_or_skip, sensor_bin, wait_until,
};
use serde_json::Value;

const PUBLIC: &str = "198.51.100.44";

struct Tmux {
    name: String,
}

impl Tmux {
    fn start(cmd: &str) -> Result<Self> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "t1571-watch-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let ok = Command::new("tmux")
            .args([
                "new-session",
                "-d",
                "-s",
                &name,
                "-x",
                "200",
                "-y",
                "50",
                cmd,
            ])
            .status()
            .context("running tmux")?
            .success();
        if !ok {
            bail!("tmux new-session failed");
        }
        Ok(Self { name })
    }

    fn screen(&self) -> String {
        Command::new("tmux")
            .args(["capture-pane", "-p", "-t", &self.name])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    fn keys(&self, keys: &[&str]) -> Result<()> {
        let ok = Command::new("tmux")
            .args(["send-keys", "-t", &self.name])
            .args(keys)
            .status()?
            .success();
        if !ok {
            bail!("tmux send-keys failed");
        }
        Ok(())
    }

    fn alive(&self) -> bool {
        Command::new("tmux")
            .args(["has-session", "-t", &self.name])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Waits until the screen satisfies `pred`.
    fn wait(&self, what: &str, pred: impl Fn(&str) -> bool) -> Result<String> {
        let s = poll_until(Duration::from_secs(30), || Ok(self.screen()), |s| pred(s))?;
        if !pred(&s) {
            bail!("screen never showed {what}:\n{s}");
        }
        Ok(s)
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.name])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

#[test]
fn live_view_shows_an_alert_filters_it_and_quits() -> Result<()> {
    if !root_or_skip("watch") {
        return Ok(());
    }
    let _shared = ATTACH_LOCK.read().unwrap_or_else(|e| e.into_inner());
    let net = public_net(&[PUBLIC])?;
    let tmux = Tmux::start(&format!("{} watch --live", sensor_bin().display()))?;
    tmux.wait("the view", |s| s.contains("t1571-sensor watch"))?;
    // The sensor it started needs a moment to attach; connect until the alert shows.
    let target = format!("{PUBLIC}:4444");
    let screen = poll_until(
        Duration::from_secs(30),
        || {
            net.nc(PUBLIC, 4444)?;
            Ok(tmux.screen())
        },
        |s| s.contains(&target),
    )?;
    if !screen.contains(&target) {
        bail!("no alert on screen:\n{screen}");
    }
    let row = screen
        .lines()
        .find(|l| l.contains(&target))
        .context("alert row")?;
    assert!(row.contains("High") && row.contains("nc"), "{row}");
    // Filter on another process: the row goes.
    tmux.keys(&["/", "curl", "Enter"])?;
    tmux.wait("the filter hiding the alert", |s| {
        s.contains("process ~ curl") && !s.contains(&target)
    })?;
    // Clear it: back again.
    tmux.keys(&["c"])?;
    tmux.wait("the alert again", |s| s.contains(&target))?;
    tmux.keys(&["q"])?;
    wait_until("watch to quit on q", Duration::from_secs(10), || {
        !tmux.alive()
    })
    .with_context(|| format!("screen:\n{}", tmux.screen()))?;
    Ok(())
}

#[test]
fn without_a_terminal_it_prints_plain_lines() -> Result<()> {
    let alert = r#"{"@timestamp":"2026-11-25T12:00:00.000Z","event":{"kind":"alert","action":"network-connect","risk_score":2,"reason":"x"},"process":{"executable":"/usr/bin/python3.11","pid":7},"user":{"name":"alice"},"destination":{"ip":"192.0.2.9","port":5555}}"#;
    let input = format!("{alert}\nnot json\n");
    let mut child = Command::new(sensor_bin())
        .args(["watch", "--file", "-", "--severity", "medium"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    std::io::Write::write_all(child.stdin.as_mut().context("stdin")?, input.as_bytes())?;
    drop(child.stdin.take());
    let out = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.trim_end(),
        "Medium 2026-11-25T12:00:00.000Z /usr/bin/python3.11 (pid 7, user alice) -> 192.0.2.9:5555 x"
    );
    // A filter that excludes it prints nothing.
    let mut child = Command::new(sensor_bin())
        .args(["watch", "--file", "-", "--severity", "high"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    std::io::Write::write_all(child.stdin.as_mut().context("stdin")?, input.as_bytes())?;
    drop(child.stdin.take());
    assert_eq!(child.wait_with_output()?.stdout, b"");
    Ok(())
}

/// `sensor watch ARGS` with stdout a pipe; everything it writes, collected.
struct PipedWatch {
    child: Child,
    out: Arc<Mutex<Vec<u8>>>,
}

impl PipedWatch {
    fn start(args: &[&str]) -> Result<Self> {
        let mut child = Command::new(sensor_bin())
            .arg("watch")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting sensor watch")?;
        let (out, _) = collect(child.stdout.take().context("watch stdout")?);
        Ok(Self { child, out })
    }

    fn wait(&self, what: &str, pred: impl Fn(&str) -> bool) -> Result<Vec<u8>> {
        let shows = |out: &Vec<u8>| pred(&String::from_utf8_lossy(out));
        let out = poll_until(
            Duration::from_secs(30),
            || Ok(self.out.lock().unwrap().clone()),
            shows,
        )?;
        if !shows(&out) {
            bail!(
                "watch never printed {what}:\n{}",
                String::from_utf8_lossy(&out)
            );
        }
        Ok(out)
    }
}

impl Drop for PipedWatch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How the test's sensor is found in the journal.
enum Started {
    /// By hand: `--pid`.
    ByHand,
    /// In a unit's cgroup: `--unit`. The forger joins the same cgroup, so only `_UID`
    /// tells its entry from the sensor's.
    AsUnit,
}

/// The sensor's real alerts through `sensor watch --journal`, and not the forged one.
fn forged_entry_is(how: Started) -> Result<()> {
    let _shared = ATTACH_LOCK.read().unwrap_or_else(|e| e.into_inner());
    let journal = Journald::ensure()?;
    let scratch = Scratch::new("watch-journal")?;
    let net = public_net(&[PUBLIC])?;
    let cgroup = match how {
        Started::AsUnit => Some(UnitCgroup::new(&format!(
            "t1571-sensor-test-{}.service",
            std::process::id()
        ))?),
        Started::ByHand => None,
    };
    let mut cmd = Command::new(sensor_bin());
    cmd.args(["run", "--output", "both"]);
    if let Some(p) = forced_probe() {
        cmd.args(["--probe", &p]);
    }
    if let Some(cg) = &cgroup {
        cg.join(&mut cmd)?;
    }
    let mut sensor = Sensor::spawn(cmd)?;
    let sensor_pid = sensor.pid().to_string();
    let watch_args: Vec<String> = match &cgroup {
        Some(cg) => vec!["--unit".into(), cg.unit.clone()],
        None => vec!["--pid".into(), sensor_pid.clone()],
    };
    let from_sensor = format!("_PID={sensor_pid}");

    // 1. A real alert, and its journal entry: the forger copies it.
    let first = net.nc(PUBLIC, 4444)?;
    sensor.connection(first, 4444)?;
    let first_match = format!("SENSOR_PROCESS_PID={first}");
    let real = journal.entry(&[&from_sensor, &first_match])?;
    if let Some(cg) = &cgroup {
        assert_eq!(real["_SYSTEMD_UNIT"], cg.unit.as_str(), "{real:#}");
    }

    // 2. The forgery: every field the sensor wrote, the executable swapped for a marker,
    // and journald's own fields claimed too (journald drops those from a client).
    // Distinct per test: both run in this one process.
    let marker = format!(
        "/usr/bin/forged-{}-{}",
        std::process::id(),
        if cgroup.is_some() { "unit" } else { "pid" }
    );
    let real_exe = real["SENSOR_PROCESS_EXECUTABLE"]
        .as_str()
        .context("SENSOR_PROCESS_EXECUTABLE")?
        .to_string();
    let mut ecs: Value = serde_json::from_str(
        real["SENSOR_ECS_JSON"]
            .as_str()
            .context("SENSOR_ECS_JSON")?,
    )?;
    ecs["process"]["executable"] = marker.clone().into();
    let mut fields: Vec<(String, String)> = real
        .as_object()
        .context("entry")?
        .iter()
        .filter(|(k, _)| !k.starts_with('_'))
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.replace(&real_exe, &marker))))
        .collect();
    for (k, v) in &mut fields {
        if k == "SENSOR_ECS_JSON" {
            *v = ecs.to_string();
        }
    }
    fields.push(("_UID".into(), "0".into()));
    fields.push(("_PID".into(), sensor_pid.clone()));
    fields.push((
        "_SYSTEMD_UNIT".into(),
        cgroup
            .as_ref()
            .map_or("t1571-sensor.service".into(), |c| c.unit.clone()),
    ));
    fields.push(("_COMM".into(), "t1571-sensor".into()));
    let datagram = scratch.dir.join("forged.bin");
    std::fs::write(&datagram, native_datagram(&fields))?;
    // As nobody; it stays alive until its entry is in, so journald reads its cgroup.
    let code = format!(
        "import socket,sys\nd=open({:?},'rb').read()\ns=socket.socket(socket.AF_UNIX,socket.SOCK_DGRAM)\ns.sendto(d,{JOURNAL_SOCKET:?})\nsys.stdin.read()\n",
        datagram.to_str().context("scratch path")?
    );
    let mut forger = Command::new("setpriv");
    forger
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
            &code,
        ])
        .stdin(Stdio::piped());
    if let Some(cg) = &cgroup {
        cg.join(&mut forger)?;
    }
    let mut forger = forger.spawn().context("starting the forger")?;
    let forged_match = format!("SENSOR_PROCESS_EXECUTABLE={marker}");
    let forged = journal.entry(&[&forged_match]);
    drop(forger.stdin.take());
    forger.wait()?;
    let forged = forged?;
    // It is a forgery the old selection (`-t t1571-sensor`) would take for an alert.
    assert_eq!(forged["SYSLOG_IDENTIFIER"], "t1571-sensor", "{forged:#}");
    assert_eq!(forged["SENSOR_RISK_SCORE"], real["SENSOR_RISK_SCORE"]);
    assert_eq!(
        forged["_UID"], "65534",
        "journald kept a claimed _UID: {forged:#}"
    );
    if let Some(cg) = &cgroup {
        assert_eq!(forged["_SYSTEMD_UNIT"], cg.unit.as_str(), "{forged:#}");
    } else {
        assert_ne!(forged["_PID"], sensor_pid.as_str(), "{forged:#}");
    }

    // 3. A second real alert, after the forgery, from a process whose name is a terminal
    // attack: a screen clear and a carriage return.
    let hostile = scratch.dir.join(OsStr::from_bytes(b"upd\x1b[2J\rate"));
    std::fs::copy(env!("CARGO_BIN_EXE_connector"), &hostile)?;
    let second = net.run(hostile.to_str().context("hostile path")?, &[PUBLIC, "4444"])?;
    sensor.connection(second, 4444)?;
    let second_match = format!("SENSOR_PROCESS_PID={second}");
    journal.entry(&[&from_sensor, &second_match])?;
    let escaped = r"upd\x1b[2J\x0date";

    // 4. Through a pipe: both real alerts, the name escaped, no forgery.
    let args: Vec<&str> = ["--journal"]
        .into_iter()
        .chain(watch_args.iter().map(String::as_str))
        .collect();
    let piped = PipedWatch::start(&args)?;
    let (pid1, pid2) = (format!("(pid {first},"), format!("(pid {second},"));
    let out = piped.wait("both real alerts", |s| {
        s.contains(&pid1) && s.contains(&pid2)
    })?;
    drop(piped);
    let text = String::from_utf8_lossy(&out);
    assert!(
        !text.contains(&marker),
        "the forged entry was shown:\n{text}"
    );
    assert!(
        !out.contains(&0x1b) && !out.contains(&b'\r'),
        "control characters reached the pipe:\n{text:?}"
    );
    let row = text.lines().find(|l| l.contains(&pid2)).context("row")?;
    assert!(row.contains(escaped), "{row}");

    // 5. On a terminal (--unit/--pid mean the journal): the same.
    let tmux = Tmux::start(&format!(
        "{} watch {}",
        sensor_bin().display(),
        watch_args.join(" ")
    ))?;
    let screen = tmux.wait("both real alerts", |s| {
        s.contains(&first.to_string()) && s.contains(escaped)
    })?;
    assert!(
        !screen.contains(&marker),
        "the forged entry was shown:\n{screen}"
    );
    assert!(screen.contains("t1571-sensor watch"), "{screen}");
    drop(tmux);
    drop(sensor);
    drop(cgroup);
    Ok(())
}

#[rstest]
#[case::started_by_hand(Started::ByHand)]
#[case::as_the_sensor_unit(Started::AsUnit)]
fn forged_journal_entry_is_not_shown(#[case] how: Started) -> Result<()> {
    if !root_or_skip("watch_forged") {
        return Ok(());
    }
    forged_entry_is(how)
}

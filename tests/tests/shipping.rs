//! The shipping configs in deploy/shipping that can be run on this machine: rsyslog's
//! (Debian packages it; `cargo xtask test` installs rsyslog and rsyslog-elasticsearch).
//! It passes `rsyslogd -N1`, and rsyslogd running its input, templates and selection
//! against a real journald ships the real sensor's whole ECS documents to a TCP listener
//! and a file, and neither the sensor's log lines, another program's entries, nor an entry
//! another user forged with the sensor's identifier and fields, from inside its unit.
//! Vector, Fluent Bit and the OpenTelemetry Collector are not packaged here: their configs
//! are not run (deploy/shipping/README.md says so).

use std::{
    io::{BufRead, BufReader},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use sensor_tests::{
    ATTACH_LOCK, JOURNAL_SOCKET, Journald, Scratch, Sensor, UnitCgroup, forced_probe,
    native_datagram, poll_until, public_net, repo, root_or_skip, sensor_bin,
};
use serde_json::Value;

const PUBLIC: &str = "198.51.100.71";
/// The unit the shipped config selects (the Debian package's).
const UNIT: &str = "t1571-sensor.service";

fn rsyslogd() -> Option<PathBuf> {
    let found = ["/usr/sbin/rsyslogd", "/sbin/rsyslogd"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    if found.is_none() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("rsyslogd is missing (cargo xtask test installs rsyslog)");
        }
        eprintln!(
            "SKIPPED rsyslog config check: rsyslogd is missing (cargo xtask test installs it)"
        );
    }
    found
}

fn shipped() -> PathBuf {
    repo().join("deploy/shipping/rsyslog-t1571-sensor.conf")
}

/// `rsyslogd -N1 -f FILE`: a full config validation (modules loaded, parameters checked).
fn check(rsyslogd: &Path, file: &Path) -> Result<Output> {
    Command::new(rsyslogd)
        .args(["-N1", "-f"])
        .arg(file)
        .output()
        .with_context(|| format!("running {} -N1", rsyslogd.display()))
}

#[test]
fn shipping_rsyslog_config_passes_rsyslogd_validation() -> Result<()> {
    let Some(rsyslogd) = rsyslogd() else {
        return Ok(());
    };
    let conf = shipped();
    let out = check(&rsyslogd, &conf)?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{}: {text}", conf.display());
    assert!(!text.contains("error"), "{}: {text}", conf.display());

    // The check is real: the same file with a misspelt parameter fails it.
    let broken = std::env::temp_dir().join(format!("t1571-rsyslog-{}.conf", std::process::id()));
    let original = std::fs::read_to_string(&conf)?;
    std::fs::write(&broken, original.replace("bulkmode=", "bulkmoed="))?;
    let out = check(&rsyslogd, &broken)?;
    let _ = std::fs::remove_file(&broken);
    assert!(
        !out.status.success(),
        "a misspelt parameter passed rsyslogd -N1"
    );
    Ok(())
}

/// The shipped config with its outputs (placeholder hosts) swapped for the test's: a TCP
/// listener on loopback and a file, through the shipped templates. Input, templates and
/// selection are the shipped file's, byte for byte.
fn test_config(shipped: &str, work: &Path, port: u16, file: &Path) -> Result<String> {
    let head = "ruleset(name=\"t1571_sensor\") {";
    let start = shipped
        .find(head)
        .with_context(|| format!("no `{head}` in the shipped config"))?;
    // Its closing brace (no brace inside the ruleset's quoted strings).
    let mut depth = 0;
    let mut end = None;
    for (i, c) in shipped[start..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    end = Some(start + i + 1);
                    break;
                }
            }
            _ => {}
        }
    }
    let end = end.context("the t1571_sensor ruleset never closes")?;
    let ours = format!(
        "ruleset(name=\"t1571_sensor\") {{\n    action(type=\"omfwd\" target=\"127.0.0.1\" port=\"{port}\" protocol=\"tcp\" template=\"t1571_ecs_syslog\")\n    action(type=\"omfile\" file=\"{}\" template=\"t1571_ecs_line\")\n}}",
        file.display()
    );
    Ok(format!(
        "global(workDirectory=\"{}\")\n{}{ours}{}",
        work.display(),
        &shipped[..start],
        &shipped[end..]
    ))
}

#[test]
fn test_config_swaps_only_the_outputs() -> Result<()> {
    let shipped = std::fs::read_to_string(shipped())?;
    let conf = test_config(
        &shipped,
        Path::new("/w"),
        5514,
        Path::new("/w/shipped.json"),
    )?;
    assert!(!conf.contains("siem.internal"), "{conf}");
    assert!(conf.contains("port=\"5514\""), "{conf}");
    let selection = &shipped[shipped.find("\nif $!_SYSTEMD_UNIT").context("selection")?..];
    assert!(conf.ends_with(selection), "{conf}");
    Ok(())
}

/// rsyslogd in the foreground, stopped on drop.
struct Rsyslogd(Child);

impl Drop for Rsyslogd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What the TCP listener got: one syslog frame per line.
fn listen() -> Result<(u16, Arc<Mutex<Vec<String>>>)> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a loopback listener")?;
    let port = listener.local_addr()?.port();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let got = lines.clone();
    // Lives as long as the test process: rsyslogd may reconnect.
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let got = got.clone();
            thread::spawn(move || {
                for line in BufReader::new(conn).lines() {
                    let Ok(line) = line else { break };
                    got.lock().unwrap().push(line);
                }
            });
        }
    });
    Ok((port, lines))
}

/// The ECS document of one forwarded frame (`<PRI>1 TS HOST t1571-sensor PID ecs - DOC`),
/// and its PROCID.
fn frame(line: &str) -> Result<(String, Value)> {
    let parts: Vec<&str> = line.splitn(8, ' ').collect();
    let [pri, ts, _host, app, procid, msgid, sd, doc] = parts[..] else {
        bail!("not an RFC 5424 frame: {line:?}");
    };
    if !(pri.starts_with('<') && pri.ends_with(">1")) || ts.is_empty() {
        bail!("not an RFC 5424 header: {line:?}");
    }
    if (app, msgid, sd) != ("t1571-sensor", "ecs", "-") {
        bail!("not the sensor's frame: {line:?}");
    }
    let doc: Value =
        serde_json::from_str(doc).with_context(|| format!("MSG is not JSON: {line:?}"))?;
    if !doc.is_object() {
        bail!("MSG is not a JSON object: {line:?}");
    }
    Ok((procid.to_string(), doc))
}

/// Writes `fields` to journald's native socket as `uid`, from `cgroup` if given; returns
/// once the entry is in the journal (found by `marker`, a SENSOR_PROCESS_EXECUTABLE),
/// the writer alive until then so journald reads its cgroup.
fn forge(
    journal: &Journald,
    scratch: &Scratch,
    uid: u32,
    cgroup: Option<&UnitCgroup>,
    marker: &str,
) -> Result<Value> {
    let doc = serde_json::json!({
        "event": {"kind": "alert", "action": "network-connect", "risk_score": 3},
        "process": {"executable": marker, "pid": 1},
        "destination": {"ip": "192.0.2.1", "port": 4444},
    });
    let fields: Vec<(String, String)> = [
        (
            "MESSAGE",
            format!("High: {marker} (pid 1) -> 192.0.2.1:4444 [T1571]"),
        ),
        ("PRIORITY", "3".into()),
        ("SYSLOG_IDENTIFIER", "t1571-sensor".into()),
        ("SENSOR_EVENT_KIND", "alert".into()),
        ("SENSOR_PROCESS_EXECUTABLE", marker.into()),
        ("SENSOR_ECS_JSON", doc.to_string()),
        // journald's own fields, claimed: it drops them from a client.
        ("_UID", "0".into()),
        ("_SYSTEMD_UNIT", UNIT.into()),
        ("_TRANSPORT", "journal".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let datagram = scratch.dir.join(format!("forged-{uid}.bin"));
    std::fs::write(&datagram, native_datagram(&fields))?;
    let code = format!(
        "import socket,sys\nd=open({:?},'rb').read()\ns=socket.socket(socket.AF_UNIX,socket.SOCK_DGRAM)\ns.sendto(d,{JOURNAL_SOCKET:?})\nsys.stdin.read()\n",
        datagram.to_str().context("scratch path")?
    );
    let mut cmd = Command::new("setpriv");
    cmd.args([
        &format!("--reuid={uid}"),
        &format!("--regid={uid}"),
        "--clear-groups",
        "/usr/bin/python3",
        "-c",
        &code,
    ])
    .stdin(Stdio::piped());
    if let Some(cg) = cgroup {
        cg.join(&mut cmd)?;
    }
    let mut writer = cmd.spawn().context("starting the forger")?;
    let entry = journal.entry(&[&format!("SENSOR_PROCESS_EXECUTABLE={marker}")]);
    drop(writer.stdin.take());
    writer.wait()?;
    let entry = entry?;
    assert_eq!(entry["SYSLOG_IDENTIFIER"], "t1571-sensor", "{entry:#}");
    assert_eq!(entry["_UID"], uid.to_string(), "{entry:#}");
    Ok(entry)
}

#[test]
fn rsyslog_ships_the_sensors_documents_from_the_journal_and_nothing_else() -> Result<()> {
    if !root_or_skip("shipping_rsyslog_journal") {
        return Ok(());
    }
    let Some(rsyslogd) = rsyslogd() else {
        return Ok(());
    };
    let _shared = ATTACH_LOCK.read().unwrap_or_else(|e| e.into_inner());
    let journal = Journald::ensure()?;
    let scratch = Scratch::new("shipping-rsyslog")?;
    let net = public_net(&[PUBLIC])?;
    let cgroup = UnitCgroup::new(UNIT)?;
    let tag = std::process::id();

    // The sensor as the unit runs it (root, in t1571-sensor.service's cgroup), its lines
    // on stdout too, to compare.
    let mut cmd = Command::new(sensor_bin());
    cmd.args(["run", "--output", "both"]);
    if let Some(p) = forced_probe() {
        cmd.args(["--probe", &p]);
    }
    cgroup.join(&mut cmd)?;
    let mut sensor = Sensor::spawn(cmd)?;
    let sensor_pid = sensor.pid().to_string();
    // Its log lines are in the journal, from the unit, as root: only the identifier and
    // the missing document keep them out.
    let log = journal.entry(&[
        &format!("_PID={sensor_pid}"),
        "SYSLOG_IDENTIFIER=t1571-sensor-log",
    ])?;
    assert_eq!(log["_SYSTEMD_UNIT"], UNIT, "{log:#}");
    assert_eq!(log["_UID"], "0", "{log:#}");
    let log_message = log["MESSAGE"].as_str().context("MESSAGE")?.to_string();

    // Forged: by nobody from inside the unit (so only _UID tells it), and by root from
    // another program (so only _SYSTEMD_UNIT tells it).
    let by_nobody = format!("/usr/bin/forged-nobody-{tag}");
    let forged = forge(&journal, &scratch, 65534, Some(&cgroup), &by_nobody)?;
    assert_eq!(forged["_SYSTEMD_UNIT"], UNIT, "{forged:#}");
    let by_root = format!("/usr/bin/forged-root-{tag}");
    let forged = forge(&journal, &scratch, 0, None, &by_root)?;
    assert_ne!(forged["_SYSTEMD_UNIT"], UNIT, "{forged:#}");

    // rsyslogd: reads the journal from its start (no state file yet), so the entries
    // above are read before the alert below.
    let (port, received) = listen()?;
    let file = scratch.dir.join("shipped.json");
    let conf = scratch.dir.join("rsyslog.conf");
    let shipped_text = std::fs::read_to_string(shipped())?;
    std::fs::write(
        &conf,
        test_config(&shipped_text, &scratch.dir, port, &file)?,
    )?;
    let out = check(&rsyslogd, &conf)?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _rsyslogd = Rsyslogd(
        Command::new(&rsyslogd)
            .args(["-n", "-f"])
            .arg(&conf)
            .arg("-i")
            .arg(scratch.dir.join("rsyslogd.pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting rsyslogd")?,
    );

    // Atomic test 1: nc to 4444 on a documentation address, in the test's namespace; and a
    // program with a long command line, whose document (over 8 KiB, rsyslog's default
    // message size) must arrive whole too.
    let nc = net.nc(PUBLIC, 4444)?;
    let printed = sensor.connection(nc, 4444)?;
    assert_eq!(printed["event"]["kind"], "alert", "{printed:#}");
    let connector = scratch.connector(env!("CARGO_BIN_EXE_connector"))?;
    let filler = "x".repeat(3000);
    // The sensor takes the arguments from the kernel's exec record (cut short) or from
    // /proc (whole), whichever comes first: connect again until a document is that long.
    let mut long_one = None;
    for _ in 0..10 {
        let pid = net.run(
            &connector,
            &[PUBLIC, "4444", "1", &filler, &filler, &filler, &filler],
        )?;
        let printed = sensor.connection(pid, 4444)?;
        assert_eq!(printed["event"]["kind"], "alert", "{printed:#}");
        if printed.to_string().len() > 8192 {
            long_one = Some((pid, printed));
            break;
        }
    }
    let (long, printed_long) =
        long_one.context("no document over 8 KiB in 10 connects with a 12 KB command line")?;
    let of = |pid: u32| move |d: &Value| d["process"]["pid"] == pid;

    for (pid, printed) in [(nc, &printed), (long, &printed_long)] {
        let is_it = of(pid);
        // Over TCP: the whole document, as the sensor printed it, in a frame from its pid.
        let lines = poll_until(
            Duration::from_secs(60),
            || Ok(received.lock().unwrap().clone()),
            |ls| ls.iter().any(|l| frame(l).is_ok_and(|(_, d)| is_it(&d))),
        )?;
        let (procid, doc) = lines
            .iter()
            .filter_map(|l| frame(l).ok())
            .find(|(_, d)| is_it(d))
            .with_context(|| {
                format!("pid {pid}'s alert never arrived whole over TCP; got {lines:#?}")
            })?;
        assert_eq!(&doc, printed, "the document changed on the way");
        assert_eq!(procid, sensor_pid);

        // In the file: the same, one document per line.
        let text = poll_until(
            Duration::from_secs(30),
            || Ok(std::fs::read_to_string(&file).unwrap_or_default()),
            |t| {
                t.lines()
                    .any(|l| serde_json::from_str::<Value>(l).is_ok_and(|d| is_it(&d)))
            },
        )?;
        let in_file = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|d| is_it(d));
        assert_eq!(
            in_file.as_ref(),
            Some(printed),
            "the document changed on the way to the file"
        );
    }
    let file_lines = std::fs::read_to_string(&file)?;
    for l in file_lines.lines() {
        serde_json::from_str::<Value>(l).with_context(|| format!("not JSON in the file: {l:?}"))?;
    }

    // Nothing else: every frame is a sensor document (no log line, no summary), and no
    // forgery, though both were read before the alert.
    let lines = received.lock().unwrap().clone();
    for l in &lines {
        frame(l)?;
        assert!(!l.contains(&log_message), "a log line was shipped: {l}");
        assert!(
            !l.contains(&by_nobody) && !l.contains(&by_root),
            "a forged entry was shipped: {l}"
        );
    }
    assert!(
        !file_lines.contains(&by_nobody) && !file_lines.contains(&by_root),
        "a forged entry was shipped to the file"
    );
    drop(sensor);
    drop(cgroup);
    Ok(())
}

//! Live, record, replay: one live run makes a line of each kind (an outbound TCP connect,
//! a listen, an inbound connection, a UDP send) inside a test-made namespace pair; the
//! lines are written to a file as a recording would keep them, `sensor replay` re-scores
//! that file under the same (default) policy, and each kind must come back with the
//! verdict it had live: `event.kind`, `event.risk_score`, `event.severity`,
//! `sensor.severity` and `event.reason`. `sensor watch` reads the same recording and
//! shows each kind's ends the way round the kind has them.

use std::{process::Command, sync::OnceLock, time::Duration};

use anyhow::{Context, Result, bail};
use rstest::rstest;
use sensor_tests::{Net, Running, Scratch, Sensor, replay, root_or_skip, sensor_bin};
use serde_json::Value;

const SERVER: &str = "203.0.113.7";
const CLIENT: &str = "203.0.113.1";
const WAIT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Connect,
    Listen,
    Inbound,
    Udp,
}

impl Kind {
    fn action(self) -> &'static str {
        match self {
            Kind::Connect | Kind::Udp => "network-connect",
            Kind::Listen => "network-listen",
            Kind::Inbound => "network-accept",
        }
    }

    fn transport(self) -> &'static str {
        match self {
            Kind::Udp => "udp",
            _ => "tcp",
        }
    }

    /// Whether `v` is this kind's line of process `pid`.
    fn is(self, v: &Value, pid: u32) -> bool {
        v["event"]["action"] == self.action()
            && v["network"]["transport"] == self.transport()
            && v["process"]["pid"] == pid
    }
}

/// What one live run recorded and its replay printed.
struct Recorded {
    /// The process whose line each kind is.
    pids: Vec<(Kind, u32)>,
    live: Vec<Value>,
    replayed: Vec<Value>,
    /// What `sensor watch` printed for the recording (plain lines: not a terminal).
    watched: String,
}

impl Recorded {
    fn pid(&self, kind: Kind) -> u32 {
        self.pids
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, p)| *p)
            .expect("every kind has a process")
    }
}

/// Runs the sensor live once for all cases (None when the test cannot run here).
fn recorded() -> &'static Option<Recorded> {
    static RUN: OnceLock<Option<Recorded>> = OnceLock::new();
    RUN.get_or_init(|| {
        root_or_skip("roundtrip")
            .then(|| record().unwrap_or_else(|e| panic!("the live run: {e:#}")))
    })
}

fn record() -> Result<Recorded> {
    let scratch = Scratch::new("roundtrip")?;
    let net = Net::new()?;
    net.subnet(CLIENT, SERVER, 24)?;
    let mut sensor = Sensor::start(&["--all"])?;
    let mut wait = |kind: Kind, pid: u32| -> Result<()> {
        sensor
            .wait_for(WAIT, |v| kind.is(v, pid))
            .with_context(|| format!("no {kind:?} line of pid {pid}"))
            .map(drop)
    };

    // python3 to a known C2 port, closed (a RST from the server side): an alert.
    let connect = net.python_connect(SERVER, 4444)?;
    wait(Kind::Connect, connect)?;
    // nc listening on that port now (a bind shell), and a connect into it.
    let mut cmd = net.server_command("nc");
    cmd.args(["-l", "-p", "4444"]);
    let nc = Running::spawn(cmd, "the nc listener")?;
    wait(Kind::Listen, nc.pid())?;
    net.run("nc", &["-z", "-w2", SERVER, "4444"])?;
    wait(Kind::Inbound, nc.pid())?;
    // One datagram from python3 to a C2 port.
    let code = format!(
        "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.sendto(b'x', ('{SERVER}', 9001))"
    );
    let udp = net.run("python3", &["-c", &code])?;
    wait(Kind::Udp, udp)?;
    let (_, lines) = sensor.stop_with(libc::SIGTERM)?;

    let pids = vec![
        (Kind::Connect, connect),
        (Kind::Listen, nc.pid()),
        (Kind::Inbound, nc.pid()),
        (Kind::Udp, udp),
    ];
    // The recording: the state lines and this test's processes' lines (the host's other
    // processes connect too), as `sensor run --all > FILE` keeps them.
    let live: Vec<Value> = lines
        .into_iter()
        .filter(|v| {
            v["event"]["kind"] == "state" || pids.iter().any(|(_, p)| v["process"]["pid"] == *p)
        })
        .collect();
    let file = scratch.dir.join("recording.jsonl");
    let text: String = live.iter().map(|v| format!("{v}\n")).collect();
    std::fs::write(&file, text).with_context(|| format!("writing {}", file.display()))?;
    let path = file.to_str().context("scratch path")?;
    let (replayed, _) = replay(&["--all", path], "")?;
    let watched = watch(&file)?;
    Ok(Recorded {
        pids,
        live,
        replayed,
        watched,
    })
}

/// `sensor watch --file -` over the recording: its plain lines.
fn watch(recording: &std::path::Path) -> Result<String> {
    let input = std::fs::File::open(recording)
        .with_context(|| format!("opening {}", recording.display()))?;
    let out = Command::new(sensor_bin())
        .args(["watch", "--file", "-"])
        .stdin(input)
        .output()
        .context("running sensor watch")?;
    if !out.status.success() {
        bail!("sensor watch failed: {out:?}");
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// The verdict of one line.
fn verdict(v: &Value) -> [&Value; 5] {
    [
        &v["event"]["kind"],
        &v["event"]["risk_score"],
        &v["event"]["severity"],
        &v["sensor"]["severity"],
        &v["event"]["reason"],
    ]
}

#[rstest]
#[case::connect(Kind::Connect)]
#[case::listen(Kind::Listen)]
#[case::inbound(Kind::Inbound)]
#[case::udp(Kind::Udp)]
fn each_kind_replays_to_its_live_verdict(#[case] kind: Kind) -> Result<()> {
    let Some(r) = recorded() else {
        return Ok(());
    };
    let pid = r.pid(kind);
    let live = r
        .live
        .iter()
        .find(|v| kind.is(v, pid))
        .with_context(|| format!("no live {kind:?} line"))?;
    assert_eq!(live["event"]["kind"], "alert", "live: {live:#}");
    let again = r
        .replayed
        .iter()
        .find(|v| kind.is(v, pid))
        .with_context(|| format!("no replayed {kind:?} line in {:#?}", r.replayed))?;
    assert_eq!(
        verdict(again),
        verdict(live),
        "{kind:?} re-scored differently\nlive: {live:#}\nreplayed: {again:#}"
    );
    Ok(())
}

/// Each kind as `sensor watch` shows it: a listener's own port, an inbound peer before the
/// local end it reached, an outbound source (the address; the port when bound) before
/// its destination.
#[rstest]
#[case::connect(Kind::Connect, &[") 203.0.113.1", " -> 203.0.113.7:4444 "])]
#[case::listen(Kind::Listen, &["listening on ", ":4444 "])]
#[case::inbound(Kind::Inbound, &[") 203.0.113.1:", " -> 203.0.113.7:4444 "])]
#[case::udp(Kind::Udp, &[") -> 203.0.113.7:9001/udp "])]
fn watch_shows_each_kind_the_way_round_it_goes(#[case] kind: Kind, #[case] parts: &[&str]) {
    let Some(r) = recorded() else {
        return;
    };
    let pid = format!("(pid {}, ", r.pid(kind));
    let listen = kind == Kind::Listen;
    let line = r
        .watched
        .lines()
        .find(|l| l.contains(&pid) && l.contains("listening on ") == listen)
        .unwrap_or_else(|| panic!("no {kind:?} line in:\n{}", r.watched));
    for part in parts {
        assert!(line.contains(part), "{kind:?}: {part:?} not in {line:?}");
    }
}

//! Issue 18, the attacks that bend what the kernel's lifecycle and socket records mean
//! (in the VM matrix's once-per-kernel set: exit and exec semantics differ by kernel):
//! a process whose main thread leaves with the exit syscall while a renamed worker
//! connects later; a connect followed at once by an exec of something benign; and two
//! listeners on the same port in two network namespaces.

use std::{
    io::Write,
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::{Context, Result};
use sensor_tests::{Net, Running, Sensor, is_action, public_net, root_or_skip, wait_until};
use serde_json::Value;

const SERVER: &str = "203.0.113.7";
const CLIENT: &str = "203.0.113.1";
const SERVER2: &str = "198.51.100.7";
const CLIENT2: &str = "198.51.100.1";
const WAIT: Duration = Duration::from_secs(20);
/// Ring size for a test that freezes the sensor: room for the whole host's records.
const FROZEN_RING: &str = "16777216";
/// The sensor's `--exit-grace` and `--stats-interval` (when exited processes are
/// dropped) in these tests: short, so "after the grace" is soon.
const GRACE: &str = "0.2";
const TICK: &str = "0.1";

/// The real path of the python3 `PATH` finds (behind links and wrapper scripts such as
/// pyenv's shims), as the kernel maps it.
fn real_python() -> Result<String> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import os, sys; print(os.path.realpath(sys.executable))",
        ])
        .output()
        .context("running python3")?;
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

/// The main thread of `pid` has exited (a zombie leader) while the process lives on.
fn leader_is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
        s.lines()
            .any(|l| l.starts_with("State:") && l.contains('Z'))
    })
}

/// python3 whose main thread calls the exit syscall (not exit_group) while a worker
/// thread waits for a line on stdin, then renames itself and connects to `addr`:4444.
fn leaderless_python(net: &Net, addr: &str) -> Result<Running> {
    let code = format!(
        r#"import ctypes, os, platform, socket, sys, threading
libc = ctypes.CDLL(None, use_errno=True)
def worker():
    sys.stdin.readline()
    libc.prctl(15, b"kworker/u8:2", 0, 0, 0)  # PR_SET_NAME
    s = socket.socket()
    s.settimeout(2)
    s.connect_ex(({addr:?}, 4444))
    os._exit(0)
threading.Thread(target=worker).start()
# SYS_exit: only this thread ends; ctypes drops the GIL for the call.
libc.syscall(60 if platform.machine() == "x86_64" else 93, 0)
"#
    );
    let mut cmd = net.command("python3");
    cmd.args(["-c", &code]).stdin(Stdio::piped());
    let child = Running(cmd.spawn().context("starting python3")?);
    let pid = child.pid();
    wait_until("python3's main thread exited", WAIT, || {
        leader_is_zombie(pid)
    })?;
    Ok(child)
}

/// Lets the worker connect: one line on its stdin.
fn go(child: &mut Running) -> Result<()> {
    let stdin = child.0.stdin.as_mut().context("python3's stdin")?;
    stdin.write_all(b"go\n")?;
    stdin.flush()?;
    Ok(())
}

/// A High alert naming python3: its real path, or (where the sensor can only name the
/// exec'd path, /proc showing another image by then) a path that resolves to it.
fn assert_high_python(v: &Value, python: &str) {
    assert_eq!(v["event"]["kind"], "alert", "{v:#}");
    assert_eq!(v["event"]["risk_score"], 3, "{v:#}");
    let exe = v["process"]["executable"].as_str().unwrap_or_default();
    let resolved = std::fs::canonicalize(exe).map(|p| p.to_string_lossy().into_owned());
    assert!(
        exe == python || resolved.is_ok_and(|r| r == python),
        "{python} expected: {v:#}"
    );
}

/// The leader leaves with the exit syscall, a renamed worker connects after the exit
/// grace: an exit record means the group died, so the identity is still there.
#[test]
fn leader_exits_worker_renamed_connects_after_grace_is_high() -> Result<()> {
    if !root_or_skip("leader_exit") {
        return Ok(());
    }
    let python = real_python()?;
    let net = public_net(&[SERVER])?;
    let mut sensor = Sensor::start(&["--exit-grace", GRACE, "--stats-interval", TICK])?;
    let mut child = leaderless_python(&net, SERVER)?;
    // The attack waits past the grace: had the leader's exit ended the process, the table
    // would have dropped it by now (many expiry ticks later).
    thread::sleep(Duration::from_millis(1500));
    go(&mut child)?;
    let v = sensor.connection(child.pid(), 4444)?;
    assert_high_python(&v, &python);
    assert_eq!(v["process"]["thread"]["name"], "kworker/u8:2", "{v:#}");
    Ok(())
}

/// The same process, already leaderless when the sensor starts: seeded from /proc,
/// whose exe and cmdline of a zombie leader do not read; a live thread's do.
#[test]
fn leader_exited_before_the_sensor_started_is_high() -> Result<()> {
    if !root_or_skip("leader_exit_seed") {
        return Ok(());
    }
    let python = real_python()?;
    let net = public_net(&[SERVER])?;
    let mut child = leaderless_python(&net, SERVER)?;
    let mut sensor = Sensor::start(&["--exit-grace", GRACE, "--stats-interval", TICK])?;
    go(&mut child)?;
    let v = sensor.connection(child.pid(), 4444)?;
    assert_high_python(&v, &python);
    assert_eq!(v["sensor"]["process"]["attribution"], "procfs", "{v:#}");
    // The leader's /proc/PID/cmdline reads empty: this is a live thread's.
    assert!(
        v["process"]["command_line"]
            .as_str()
            .is_some_and(|c| c.contains(" -c import ctypes")),
        "{v:#}"
    );
    Ok(())
}

/// python3 connects to 4444 and at once execs sleep. The sensor is frozen meanwhile,
/// so when it reads python3's exec record /proc already shows sleep: the line still
/// describes python3, the program that made the connect.
#[test]
fn connect_then_exec_benign_is_described_by_the_connecting_image() -> Result<()> {
    if !root_or_skip("connect_then_exec") {
        return Ok(());
    }
    let python = real_python()?;
    let sleep = std::fs::canonicalize("/usr/bin/sleep")?;
    let net = public_net(&[SERVER])?;
    let mut sensor = Sensor::start(&["--ring-buffer-size", FROZEN_RING])?;
    sensor.signal(libc::SIGSTOP);
    let code = format!(
        "import os, socket\ns = socket.socket()\ns.settimeout(2)\ns.connect_ex(({SERVER:?}, 4444))\nos.execv('/usr/bin/sleep', ['sleep', '30'])"
    );
    let mut cmd = net.command("python3");
    cmd.args(["-c", &code]);
    let child = match cmd.spawn() {
        Ok(c) => Running(c),
        Err(e) => {
            sensor.signal(libc::SIGCONT);
            return Err(e).context("starting python3");
        }
    };
    let pid = child.pid();
    let exec_done = wait_until("python3 exec'd sleep", WAIT, || {
        std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|e| e == sleep)
    });
    sensor.signal(libc::SIGCONT);
    exec_done?;
    let v = sensor.connection(pid, 4444)?;
    assert_high_python(&v, &python);
    assert!(
        v["sensor"]["process"].get("image_mismatch").is_none(),
        "{v:#}"
    );
    Ok(())
}

/// The inode of a process's network namespace, as /proc/PID/ns/net shows it.
fn netns_of(pid: u32) -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let path = format!("/proc/{pid}/ns/net");
    Ok(std::fs::metadata(&path).context(path)?.ino())
}

/// Two listeners on port 4444 in two network namespaces (nc in one, python3 in the
/// other): each inbound connection is attributed to the listener of its own namespace.
#[test]
fn same_port_listeners_in_two_namespaces_are_told_apart() -> Result<()> {
    if !root_or_skip("listeners_per_netns") {
        return Ok(());
    }
    let (net1, net2) = (public_net(&[SERVER])?, public_net(&[SERVER2])?);
    let mut sensor = Sensor::start(&["--all"])?;
    let mut nc = net1.server_command("nc");
    nc.args(["-l", "-p", "4444"]);
    let nc = Running(nc.spawn().context("starting nc")?);
    let mut py = net2.server_command("python3");
    py.args([
        "-c",
        "import socket\ns = socket.socket()\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\ns.bind(('0.0.0.0', 4444))\ns.listen(1)\nc, _ = s.accept()\nc.close()",
    ]);
    let py = Running(py.spawn().context("starting python3")?);
    let mut netns = Vec::new();
    for l in [&nc, &py] {
        let pid = l.pid();
        let listen = sensor.wait_for(WAIT, |v| is_action(v, "network-listen", pid))?;
        // Read while it listens: each listener exits after its one connection.
        netns.push(netns_of(pid)?);
        assert_eq!(
            listen["sensor"]["netns"],
            netns[netns.len() - 1],
            "{listen:#}"
        );
    }
    assert_ne!(netns[0], netns[1]);
    // The second listener is the latest: a table keyed by port alone would give it both.
    net1.nc(SERVER, 4444)?;
    net2.nc(SERVER2, 4444)?;
    for ((l, server, client), ns) in [(&nc, SERVER, CLIENT), (&py, SERVER2, CLIENT2)]
        .into_iter()
        .zip(netns)
    {
        let v = sensor.wait_for(WAIT, |v| {
            v["event"]["action"] == "network-accept" && v["destination"]["ip"] == server
        })?;
        assert_eq!(v["process"]["pid"], l.pid(), "{v:#}");
        assert_eq!(v["source"]["ip"], client, "{v:#}");
        assert_eq!(v["sensor"]["netns"], ns, "{v:#}");
    }
    Ok(())
}

//! Coverage beyond outbound TCP (issue 14) on the real kernel: listening sockets (a bind
//! shell, the real sshd moved to 2222, a loopback-only listener), inbound connections to a
//! flagged listener, and outbound UDP with its flood bound in the kernel. Listeners run
//! in the server namespace of a test-made pair; clients connect from the client side.

use std::{process::Command, time::Duration};

use anyhow::{Context, Result};
use sensor_tests::{
    Net, Running, Scratch, Sensor, assert_alert, is_action, root_or_skip, sshd_config,
    wait_for_value,
};
use serde_json::Value;

const SERVER: &str = "203.0.113.7";
const CLIENT: &str = "203.0.113.1";
const WAIT: Duration = Duration::from_secs(20);

fn public_net() -> Result<Net> {
    sensor_tests::public_net(&[SERVER])
}

fn spawn(cmd: Command) -> Result<Running> {
    Running::spawn(cmd, "a listener")
}

fn listen_of(sensor: &mut Sensor, pid: u32, port: u16) -> Result<Value> {
    sensor.wait_for(WAIT, |v| {
        is_action(v, "network-listen", pid) && v["source"]["port"] == port
    })
}

#[test]
fn bind_shell_listen_is_high_and_a_connect_into_it_is_an_ingress_alert() -> Result<()> {
    if !root_or_skip("bind_shell") {
        return Ok(());
    }
    let net = public_net()?;
    let mut sensor = Sensor::start(&["--all"])?;

    // `nc -l -p 4444`: a network tool listening on a known C2 port.
    let mut cmd = net.server_command("nc");
    cmd.args(["-l", "-p", "4444"]);
    let nc = spawn(cmd)?;
    let listen = listen_of(&mut sensor, nc.pid(), 4444)?;
    assert_alert(&listen, 3, "High");
    assert_eq!(listen["event"]["type"], serde_json::json!(["start"]));
    assert_eq!(listen["rule"]["id"], "t1571-listen", "{listen:#}");
    assert!(
        listen["process"]["executable"]
            .as_str()
            .is_some_and(|e| e.ends_with("/nc.openbsd")),
        "{listen:#}"
    );
    assert!(listen.get("destination").is_none(), "{listen:#}");

    // The operator connects: SYN_RECV -> ESTABLISHED runs in softirq, yet the line names
    // nc, through its listen record.
    net.nc(SERVER, 4444)?;
    let inbound = sensor.wait_for(WAIT, |v| is_action(v, "network-accept", nc.pid()))?;
    assert_alert(&inbound, 3, "High");
    assert_eq!(inbound["network"]["direction"], "ingress", "{inbound:#}");
    assert_eq!(inbound["network"]["iana_number"], "6", "{inbound:#}");
    assert_eq!(inbound["source"]["ip"], CLIENT, "{inbound:#}");
    assert_eq!(inbound["destination"]["port"], 4444, "{inbound:#}");
    assert_eq!(inbound["destination"]["ip"], SERVER, "{inbound:#}");
    assert_eq!(inbound["rule"]["id"], "t1571-inbound", "{inbound:#}");
    assert_eq!(
        inbound["sensor"]["process"]["attribution"], "listen-record",
        "{inbound:#}"
    );

    // A loopback-only bind shell on a C2 port: one tier less (Medium), and said why.
    let mut cmd = net.server_command("nc");
    cmd.args(["-l", "-s", "127.0.0.1", "-p", "4445"]);
    let local = spawn(cmd)?;
    let l = listen_of(&mut sensor, local.pid(), 4445)?;
    assert_alert(&l, 2, "Medium");
    assert!(
        l["event"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("loopback-only")),
        "{l:#}"
    );
    Ok(())
}

#[test]
fn inbound_to_an_unflagged_listener_is_counted_not_emitted() -> Result<()> {
    if !root_or_skip("inbound_counted") {
        return Ok(());
    }
    let net = public_net()?;
    // Without --all: only alerts are printed.
    let mut sensor = Sensor::start(&[])?;
    // python3 on 8080, a standard port: not flagged, so neither its listen nor the
    // connection into it is printed.
    let mut cmd = net.server_command("python3");
    cmd.args([
        "-c",
        "import socket\ns = socket.socket()\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\ns.bind(('0.0.0.0', 8080))\ns.listen(1)\nc, _ = s.accept()\nc.close()",
    ]);
    let mut py = spawn(cmd)?;
    // Connect until the listener is up (it starts asynchronously).
    wait_for_value(
        "the python3 listener on 8080 to accept",
        Duration::from_secs(10),
        || {
            net.nc(SERVER, 8080)?;
            Ok(py.0.try_wait()?.is_some())
        },
        |accepted| *accepted,
    )?;
    let pid = py.pid();
    // A later alert as a barrier: everything before it has been handled.
    let mut cmd = net.server_command("nc");
    cmd.args(["-l", "-p", "31337"]);
    let nc = spawn(cmd)?;
    listen_of(&mut sensor, nc.pid(), 31337)?;
    let (_, lines) = sensor.stop_with(libc::SIGINT)?;
    assert!(
        !lines.iter().any(|v| v["process"]["pid"] == pid
            || (v["event"]["action"] == "network-accept" && v["destination"]["port"] == 8080)),
        "an unflagged listener or its inbound connection was printed"
    );
    let stopped = lines
        .iter()
        .find(|v| v["event"]["action"] == "sensor-stopped")
        .context("no sensor-stopped")?;
    let sockets = &stopped["sensor"]["sockets"];
    assert!(sockets["inbound"].as_u64() >= Some(1), "{stopped:#}");
    assert!(sockets["listens"].as_u64() >= Some(2), "{stopped:#}");
    Ok(())
}

#[test]
fn real_sshd_moved_to_2222_is_medium() -> Result<()> {
    if !root_or_skip("sshd_2222") {
        return Ok(());
    }
    let sshd = "/usr/sbin/sshd";
    if !std::path::Path::new(sshd).exists() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("sshd_2222: {sshd} missing (cargo xtask test installs openssh-server)");
        }
        eprintln!("SKIPPED sshd_2222: {sshd} missing; cargo xtask test installs openssh-server");
        return Ok(());
    }
    let scratch = Scratch::new("sshd")?;
    let cfg = sshd_config(&scratch.dir)?;
    let net = public_net()?;
    let mut sensor = Sensor::start(&[])?;
    let mut cmd = net.server_command(sshd);
    cmd.arg("-D")
        .arg("-e")
        .arg("-f")
        .arg(&cfg)
        .args(["-p", "2222"]);
    let d = spawn(cmd)?;
    let l = listen_of(&mut sensor, d.pid(), 2222)?;
    assert_alert(&l, 2, "Medium");
    assert_eq!(l["process"]["executable"], sshd, "{l:#}");
    assert!(
        l["event"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("service sshd listening away from its ports 22")),
        "{l:#}"
    );
    Ok(())
}

#[test]
fn python_udp_to_9001_is_an_alert_and_a_flood_is_one_record() -> Result<()> {
    if !root_or_skip("udp") {
        return Ok(());
    }
    let net = public_net()?;
    // Flood control off: any bound seen here is the kernel's.
    let mut sensor = Sensor::start(&["--fold-period", "0"])?;
    let started = sensor.wait_for(WAIT, |v| v["event"]["action"] == "sensor-started")?;
    let udp_hook = started["sensor"]["process_hooks"]
        .as_array()
        .and_then(|h| h.iter().find(|h| h["event"] == "udp"))
        .cloned()
        .context("no udp hook in sensor-started")?;
    assert_eq!(udp_hook["attached"], true, "{udp_hook:#}");
    // 2,000 datagrams on one socket to 9001, 100 to DNS, and a connected socket to 6666.
    let code = format!(
        "import socket\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         for i in range(2000):\n    s.sendto(b'x', ('{SERVER}', 9001))\n\
         for i in range(100):\n    s.sendto(b'x', ('{SERVER}', 53))\n\
         c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         c.connect(('{SERVER}', 6666))\n\
         for i in range(10):\n    c.send(b'x')\n"
    );
    let pid = net.run("python3", &["-c", &code])?;
    let v = sensor.wait_for(WAIT, |v| {
        is_action(v, "network-connect", pid) && v["destination"]["port"] == 9001
    })?;
    assert_alert(&v, 3, "High");
    assert_eq!(v["network"]["transport"], "udp", "{v:#}");
    assert_eq!(v["network"]["iana_number"], "17", "{v:#}");
    assert_eq!(v["network"]["direction"], "egress", "{v:#}");
    assert_eq!(v["destination"]["ip"], SERVER, "{v:#}");
    let c = sensor.wait_for(WAIT, |v| {
        is_action(v, "network-connect", pid) && v["destination"]["port"] == 6666
    })?;
    assert_alert(&c, 3, "High");
    let (_, lines) = sensor.stop_with(libc::SIGINT)?;
    let of_pid: Vec<_> = lines
        .iter()
        .filter(|v| v["process"]["pid"] == pid)
        .collect();
    let to = |port: u16| {
        of_pid
            .iter()
            .filter(|v| v["destination"]["port"] == port)
            .count()
    };
    assert_eq!(to(9001), 1, "the flood passed the kernel: {of_pid:#?}");
    assert_eq!(to(6666), 1, "{of_pid:#?}");
    assert_eq!(to(53), 0, "DNS reached userspace: {of_pid:#?}");
    let stopped = lines
        .iter()
        .find(|v| v["event"]["action"] == "sensor-stopped")
        .context("no sensor-stopped")?;
    let sockets = &stopped["sensor"]["sockets"];
    // send() on the connected socket names no address: no sendmsg hook runs for it.
    assert!(
        sockets["udp_repeats_dropped_in_kernel"].as_u64() >= Some(1999),
        "{sockets:#}"
    );
    assert!(
        sockets["udp_standard_port_dropped_in_kernel"].as_u64() >= Some(100),
        "{sockets:#}"
    );
    Ok(())
}

/// Identity under evasion: each way of hiding what runs, on the real kernel, connecting
/// to 203.0.113.7:4444 (closed: a RST inside the pair). Each must score as the real
/// program would: High, with the list entry it really is.
#[test]
fn evasions_of_identity_score_as_the_real_program() -> Result<()> {
    if !root_or_skip("evasions") {
        return Ok(());
    }
    use std::os::unix::{fs::PermissionsExt, process::CommandExt};
    let net = public_net()?;
    let scratch = Scratch::new("evasion")?;
    let mut sensor = Sensor::start(&[])?;
    let connect_py = format!(
        "import socket\ns = socket.socket()\ns.settimeout(2)\ns.connect_ex(('{SERVER}', 4444))\n"
    );
    // The distribution's interpreter (what the sensor fingerprints in the standard bin
    // directories), behind its alternatives link; not a wrapper such as a pyenv shim.
    let python = std::fs::canonicalize("/usr/bin/python3")
        .context("/usr/bin/python3 (apt's python3, installed by cargo xtask test)")?;
    let check = |sensor: &mut Sensor, pid: u32, what: &str, entry: &str| -> Result<Value> {
        let v = sensor
            .connection(pid, 4444)
            .with_context(|| format!("{what}: no line"))?;
        assert_alert(&v, 3, "High");
        assert_eq!(
            v["sensor"]["matched"]["high_risk_executable"], entry,
            "{what}: {v:#}"
        );
        Ok(v)
    };

    // A busybox applet through a symlink named as something harmless: the executable
    // is busybox, which is on the list (multi-call binaries are listed by their own name).
    let applet = scratch.dir.join("healthcheck");
    std::os::unix::fs::symlink("/bin/busybox", &applet)?;
    // busybox picks the applet from argv[0]: the symlink's own name is irrelevant.
    let mut cmd = net.command(&applet.to_string_lossy());
    cmd.arg0("nc").args(["-w", "2", SERVER, "4444"]);
    let mut child = cmd.spawn()?;
    let pid = child.id();
    child.wait()?;
    check(&mut sensor, pid, "busybox applet", "busybox")?;

    // A script run through its shebang: the kernel maps the interpreter.
    let script = scratch.dir.join("backup.sh");
    std::fs::write(&script, format!("#!{}\n{connect_py}", python.display()))?;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    let pid = net.run(&script.to_string_lossy(), &[])?;
    let v = check(&mut sensor, pid, "shebang script", "python3")?;
    assert_eq!(
        v["process"]["executable"],
        python.to_string_lossy().as_ref(),
        "{v:#}"
    );

    // The interpreter hard-linked under another name (same inode), else copied.
    let linked = scratch.dir.join("kworker-update");
    if std::fs::hard_link(&python, &linked).is_err() {
        std::fs::copy(&python, &linked)?;
    }
    let pid = net.run(&linked.to_string_lossy(), &["-c", &connect_py])?;
    let v = check(&mut sensor, pid, "hard-linked interpreter", "python3")?;
    assert_eq!(
        v["sensor"]["matched"]["high_risk_matched_by"], "content",
        "{v:#}"
    );

    // argv[0] set to anything: the executable, not argv[0], is judged.
    let mut cmd = net.command(&python.to_string_lossy());
    cmd.arg0("[kworker/0:1]").args(["-c", &connect_py]);
    let mut child = cmd.spawn()?;
    let pid = child.id();
    child.wait()?;
    let v = check(&mut sensor, pid, "argv[0]", "python3")?;
    assert_eq!(v["process"]["args"][0], "[kworker/0:1]", "{v:#}");

    // A static binary on no list dropped in $HOME/.cache: high-risk by location.
    let cache = std::path::PathBuf::from(format!("/root/.cache/t1571-test-{}", std::process::id()));
    std::fs::create_dir_all(&cache)?;
    struct Remove(std::path::PathBuf);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Remove(cache.clone());
    let implant = cache.join("updater");
    std::fs::copy(env!("CARGO_BIN_EXE_connector"), &implant)?;
    let pid = net.run(&implant.to_string_lossy(), &[SERVER, "4444"])?;
    let v = check(
        &mut sensor,
        pid,
        "binary in ~/.cache",
        "<writable /root/.cache/*>",
    )?;
    assert_eq!(
        v["sensor"]["matched"]["high_risk_matched_by"], "location",
        "{v:#}"
    );
    Ok(())
}

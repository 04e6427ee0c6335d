//! Protocol on the port, on the running kernel: real clients (curl, ssh, nc) send their
//! first bytes to real servers (openssl s_server, sshd, nc, python3 http.server) in the
//! test namespaces; the `cgroup_skb/egress` hook classifies them and the sensor's lines
//! (or, for an expected pair, its kernel counter alone) say what went over which port.

use std::{
    io::Write,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use sensor_tests::{
    Net, Running, Scratch, Sensor, counter, is_action, public_net, root_or_skip, sshd_config,
    wait_until,
};
use serde_json::Value;

const SERVER: &str = "203.0.113.7";
const WAIT: Duration = Duration::from_secs(30);

/// SKIPPED, or a failure under CI, when `path` is missing.
fn have(test: &str, path: &str, package: &str) -> bool {
    if Path::new(path).exists() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: {path} missing (cargo xtask test installs {package})");
    }
    eprintln!("SKIPPED {test}: {path} missing; cargo xtask test installs {package}");
    false
}

/// The sensor's `sensor-started` line says whether the egress hook is attached. Where it
/// is not (a kernel without it), the line must say why and the sensor runs without it:
/// that is what is checked there, and the test ends (`SENSOR_TEST_PROTOCOL_REQUIRED=1`
/// makes it a failure, for kernels known to have the hook).
fn hook_attached(sensor: &mut Sensor, test: &str) -> Result<bool> {
    let started = sensor.wait_for(WAIT, |v| v["event"]["action"] == "sensor-started")?;
    let hook = started["sensor"]["process_hooks"]
        .as_array()
        .and_then(|h| h.iter().find(|h| h["event"] == "protocol"))
        .cloned()
        .with_context(|| format!("no protocol hook in sensor-started: {started:#}"))?;
    if hook["attached"] == true {
        return Ok(true);
    }
    if std::env::var("SENSOR_TEST_PROTOCOL_REQUIRED").is_ok_and(|v| v == "1") {
        bail!("{test}: the protocol hook is required here but did not attach: {hook:#}");
    }
    let why = hook["passed_over"][0]["error"]
        .as_str()
        .filter(|e| !e.is_empty())
        .with_context(|| format!("hook not attached and no reason given: {hook:#}"))?;
    assert!(
        sensor
            .stderr()
            .contains("runs without protocol on the port"),
        "{}",
        sensor.stderr()
    );
    eprintln!(
        "{test}: protocol hook not attached on this kernel ({why}); the sensor runs without it"
    );
    Ok(false)
}

/// Waits until something listens on TCP `port` in the server namespace.
fn listening(net: &Net, port: u16) -> Result<()> {
    wait_until(&format!("a listener on {port}"), WAIT, || {
        net.server_command("ss")
            .args(["-Hltn", &format!("sport = :{port}")])
            .stdout(Stdio::piped())
            .output()
            .is_ok_and(|o| !o.stdout.is_empty())
    })
}

/// The protocol line (a connection line carrying `network.protocol`) of `pid` to `port`.
/// python3's http.server on `port` in the server namespace, and the pid of a curl that
/// fetched `/` from it.
fn curl_to_http_server(net: &Net, scratch: &Scratch, port: u16) -> Result<(Running, u32)> {
    let mut cmd = net.server_command("python3");
    cmd.args(["-m", "http.server", &port.to_string(), "--bind", SERVER])
        .current_dir(&scratch.dir);
    let server = Running::spawn(cmd, &format!("python3 http.server on {port}"))?;
    listening(net, port)?;
    let url = format!("http://{SERVER}:{port}/");
    let pid = net.run("curl", &["-s", "-m", "5", "-o", "/dev/null", &url])?;
    Ok((server, pid))
}

fn protocol_line(sensor: &mut Sensor, pid: u32, port: u16) -> Result<Value> {
    sensor
        .wait_for(WAIT, |v| {
            is_action(v, "network-connect", pid)
                && v["destination"]["port"] == port
                && v["network"]["protocol"].is_string()
        })
        .with_context(|| format!("no protocol line for pid {pid} to port {port}"))
}

fn matched_protocol(v: &Value) -> Vec<String> {
    v["sensor"]["matched"]["protocol"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn sha256(path: &Path) -> Result<String> {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .context("sha256sum")?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .split_whitespace()
        .next()
        .context("sha256sum printed nothing")?
        .to_string())
}

#[test]
fn curl_to_openssl_s_server_on_8443_is_tls_with_sni_and_ja4_and_bulk_arrives_intact() -> Result<()>
{
    let test = "tls_8443";
    if !root_or_skip(test) || !have(test, "/usr/bin/openssl", "openssl") {
        return Ok(());
    }
    let scratch = Scratch::new("tls")?;
    let (key, cert) = (scratch.dir.join("key.pem"), scratch.dir.join("cert.pem"));
    let st = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=c2.example", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("openssl req")?;
    assert!(st.success(), "openssl req failed");
    // A few MB through the hook: it only observes, so the bytes must arrive unchanged.
    let www = scratch.dir.join("www");
    std::fs::create_dir_all(&www)?;
    let bulk = www.join("bulk.bin");
    let st = Command::new("openssl")
        .args(["rand", "-out"])
        .arg(&bulk)
        .arg((4 << 20).to_string())
        .status()
        .context("openssl rand")?;
    assert!(st.success(), "openssl rand failed");
    let net = public_net(&[SERVER])?;
    // Every connect reported (8443 is a standard port, dropped in the kernel otherwise):
    // the flow's first bytes then go up with it and the line is printed unscored.
    let mut sensor = Sensor::start(&["--all"])?;
    if !hook_attached(&mut sensor, test)? {
        return Ok(());
    }
    let curl = || {
        let mut c = net.command("curl");
        c.args(["-sk", "-m", "30", "--resolve"])
            .arg(format!("c2.example:8443:{SERVER}"))
            .arg("https://c2.example:8443/bulk.bin");
        c
    };
    let reference = reference_ja4(&net, &curl)?;
    let mut cmd = net.server_command("openssl");
    cmd.args(["s_server", "-quiet", "-accept", "8443", "-WWW", "-cert"])
        .arg(&cert)
        .arg("-key")
        .arg(&key)
        .current_dir(&www);
    let _server = Running::spawn(cmd, "openssl s_server")?;
    listening(&net, 8443)?;
    let got = scratch.dir.join("got.bin");
    let mut child = curl()
        .arg("-o")
        .arg(&got)
        .spawn()
        .context("starting curl")?;
    let pid = child.id();
    let st = child.wait()?;
    assert!(st.success(), "curl failed: {st}");
    assert_eq!(
        sha256(&got)?,
        sha256(&bulk)?,
        "bulk data changed in transit"
    );
    let v = protocol_line(&mut sensor, pid, 8443)?;
    assert_eq!(v["network"]["protocol"], "tls", "{v:#}");
    assert_eq!(v["tls"]["client"]["server_name"], "c2.example", "{v:#}");
    let ja4 = v["tls"]["client"]["ja4"]
        .as_str()
        .context("no tls.client.ja4")?;
    // JA4_a: t (TCP), the version, d (SNI is a domain), counts, the ALPN's ends.
    assert!(
        ja4.starts_with("t1") && ja4.as_bytes().get(3) == Some(&b'd'),
        "{ja4}"
    );
    assert_eq!(ja4.split('_').count(), 3, "{ja4}");
    if let Some(expected) = reference {
        assert_eq!(
            ja4, expected,
            "JA4 differs from ja4plus's for the same client"
        );
    }
    Ok(())
}

/// The JA4 the independent implementation (ja4plus, deploy/siem/ja4_reference.py in
/// SIEM_PYTHON's venv) computes for the ClientHello `client()` sends: it listens on
/// 8443 in the server namespace for one connection. None (SKIPPED, a failure under CI)
/// without SIEM_PYTHON.
fn reference_ja4(net: &Net, client: &dyn Fn() -> Command) -> Result<Option<String>> {
    let Some(python) = std::env::var_os("SIEM_PYTHON") else {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            bail!("SIEM_PYTHON is not set under CI (cargo xtask test sets it)");
        }
        eprintln!("SKIPPED the JA4 cross-check: SIEM_PYTHON not set (run cargo xtask test)");
        return Ok(None);
    };
    let script = sensor_tests::repo().join("deploy/siem/ja4_reference.py");
    let mut cmd = net.server_command(&python.to_string_lossy());
    cmd.arg(&script)
        .args(["--listen", &format!("{SERVER}:8443")])
        .stdout(Stdio::piped());
    let reference = cmd.spawn().context("starting ja4_reference.py --listen")?;
    listening(net, 8443)?;
    // The listener closes after the first flight: curl fails, as expected.
    let _ = client()
        .status()
        .context("curl to the reference listener")?;
    let out = reference.wait_with_output()?;
    let v: Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "ja4_reference.py printed {:?}",
            String::from_utf8_lossy(&out.stdout)
        )
    })?;
    let ja4 = v[format!("{SERVER}:8443")]
        .as_str()
        .with_context(|| format!("no reference JA4: {v}"))?;
    Ok(Some(ja4.to_string()))
}

#[test]
fn ssh_to_sshd_on_443_is_ssh_on_a_tls_port_and_alerts() -> Result<()> {
    let test = "ssh_443";
    if !root_or_skip(test)
        || !have(test, "/usr/sbin/sshd", "openssh-server")
        || !have(test, "/usr/bin/ssh", "openssh-client")
    {
        return Ok(());
    }
    let scratch = Scratch::new("sshd443")?;
    let cfg = sshd_config(&scratch.dir)?;
    let net = public_net(&[SERVER])?;
    let mut sensor = Sensor::start(&[])?;
    if !hook_attached(&mut sensor, test)? {
        return Ok(());
    }
    let mut cmd = net.server_command("/usr/sbin/sshd");
    cmd.args(["-D", "-e", "-f"]).arg(&cfg).args(["-p", "443"]);
    let _sshd = Running::spawn(cmd, "sshd on 443")?;
    listening(&net, 443)?;
    let pid = net.ssh_connect(SERVER, 443)?;
    let v = protocol_line(&mut sensor, pid, 443)?;
    assert_eq!(v["network"]["protocol"], "ssh", "{v:#}");
    assert_eq!(v["event"]["kind"], "alert", "{v:#}");
    assert!(v["event"]["risk_score"].as_u64() >= Some(2), "{v:#}");
    assert!(
        matched_protocol(&v)
            .iter()
            .any(|c| c == "protocol_mismatch"),
        "{v:#}"
    );
    Ok(())
}

#[test]
fn nc_sending_a_shell_banner_to_80_is_not_http_and_alerts() -> Result<()> {
    let test = "shell_80";
    if !root_or_skip(test) {
        return Ok(());
    }
    let net = public_net(&[SERVER])?;
    let mut sensor = Sensor::start(&[])?;
    if !hook_attached(&mut sensor, test)? {
        return Ok(());
    }
    let mut listener = net.server_command("nc");
    listener.args(["-l", "80"]);
    let _server = Running::spawn(listener, "nc -l 80")?;
    listening(&net, 80)?;
    let mut nc = net.command("nc");
    nc.args(["-N", "-w", "2", SERVER, "80"])
        .stdin(Stdio::piped());
    let mut child = nc.spawn().context("starting nc")?;
    let pid = child.id();
    child
        .stdin
        .take()
        .context("nc stdin")?
        .write_all(b"uid=0(root) gid=0(root) groups=0(root)\n# ")?;
    child.wait()?;
    let v = protocol_line(&mut sensor, pid, 80)?;
    assert_eq!(v["network"]["protocol"], "unknown", "{v:#}");
    assert_eq!(v["event"]["kind"], "alert", "{v:#}");
    assert!(
        matched_protocol(&v)
            .iter()
            .any(|c| c == "protocol_mismatch"),
        "{v:#}"
    );
    // Nothing of the bytes is printed beyond the parsed fields.
    assert!(!v.to_string().contains("uid=0(root)"), "{v:#}");
    Ok(())
}

#[test]
fn curl_http_to_80_is_an_expected_pair_kept_in_the_kernel() -> Result<()> {
    let test = "http_80";
    if !root_or_skip(test) {
        return Ok(());
    }
    let scratch = Scratch::new("http80")?;
    let net = public_net(&[SERVER])?;
    let mut sensor = Sensor::start(&["--metrics-interval", "1", "--stats-interval", "1"])?;
    if !hook_attached(&mut sensor, test)? {
        return Ok(());
    }
    let (_server, pid) = curl_to_http_server(&net, &scratch, 80)?;
    // Once the barrier's line is out, every earlier record has been handled.
    sensor.barrier(&net, SERVER)?;
    let stats = sensor.wait_for(WAIT, |v| {
        v["event"]["action"] == "sensor-stats"
            && counter(v, "sensor.kernel.protocol.expected_in_kernel").is_ok_and(|n| n >= 1)
    })?;
    assert_eq!(
        counter(&stats, "sensor.kernel.protocol.received")?,
        counter(&stats, "sensor.kernel.protocol.sent")?,
        "{stats:#}"
    );
    let of_curl: Vec<Value> = sensor
        .lines()
        .into_iter()
        .filter(|v| v["process"]["pid"] == pid)
        .collect();
    assert!(
        of_curl.is_empty(),
        "lines for the expected pair: {of_curl:#?}"
    );
    Ok(())
}

#[test]
fn curl_to_python_http_server_on_8088_is_http_on_a_non_standard_port() -> Result<()> {
    let test = "http_8088";
    if !root_or_skip(test) {
        return Ok(());
    }
    let scratch = Scratch::new("http8088")?;
    let net = public_net(&[SERVER])?;
    let mut sensor = Sensor::start(&[])?;
    if !hook_attached(&mut sensor, test)? {
        return Ok(());
    }
    let (_server, pid) = curl_to_http_server(&net, &scratch, 8088)?;
    let v = protocol_line(&mut sensor, pid, 8088)?;
    assert_eq!(v["network"]["protocol"], "http", "{v:#}");
    assert_eq!(v["http"]["request"]["method"], "GET", "{v:#}");
    assert_eq!(v["url"]["domain"], SERVER, "{v:#}");
    assert!(
        v["user_agent"]["original"]
            .as_str()
            .is_some_and(|u| u.starts_with("curl/")),
        "{v:#}"
    );
    assert!(
        matched_protocol(&v)
            .iter()
            .any(|c| c == "protocol_non_standard_port"),
        "{v:#}"
    );
    // The existing tier: the connect's own line, with the protocol line at least as high.
    let connect = sensor.wait_for(WAIT, |c| {
        is_action(c, "network-connect", pid)
            && c["destination"]["port"] == 8088
            && c["network"]["protocol"].is_null()
    })?;
    assert!(
        v["event"]["risk_score"].as_u64() >= connect["event"]["risk_score"].as_u64(),
        "{v:#}\n{connect:#}"
    );
    Ok(())
}

//! The real `sensor` binary: `sensor run` started and its JSON lines collected and waited
//! on, the hook it must use here, and `sensor replay`.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, RwLock, RwLockReadGuard},
    thread,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::{
    Net, cap_number, capability_sets, collect, kept_capabilities, poll_until, sensor_bin,
    wait_until, without_mounts,
};

/// Tests that flood the host with records (bursts), or count what the whole host does,
/// take this exclusively, so they cannot overflow the ring buffers of other tests' sensors
/// nor count their connects; every sensor holds it shared.
pub static ATTACH_LOCK: RwLock<()> = RwLock::new(());

/// A running `sensor run`, its stdout parsed line by line.
pub struct Sensor {
    child: Child,
    lines: Arc<Mutex<Vec<Value>>>,
    bad_lines: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    /// The threads reading stdout and stderr.
    readers: Vec<thread::JoinHandle<()>>,
    _shared: Option<RwLockReadGuard<'static, ()>>,
}

impl Sensor {
    /// Starts `sensor run ARGS` and waits for its `sensor-started` line.
    pub fn start(args: &[&str]) -> Result<Self> {
        let shared = ATTACH_LOCK.read().unwrap_or_else(|e| e.into_inner());
        let mut s = Self::start_unlocked(args)?;
        s._shared = Some(shared);
        Ok(s)
    }

    pub fn start_unlocked(args: &[&str]) -> Result<Self> {
        let mut cmd = Command::new(sensor_bin());
        cmd.arg("run").args(args).args(probe_args(args));
        Self::spawn(cmd)
    }

    /// Starts `sensor run ARGS` in a mount namespace of its own where `unmount` (and
    /// everything below) is unmounted: the host's mounts are untouched.
    pub fn start_without_mounts(args: &[&str], unmount: &[&str]) -> Result<Self> {
        let shared = ATTACH_LOCK.read().unwrap_or_else(|e| e.into_inner());
        let mut cmd = Command::new(sensor_bin());
        cmd.arg("run").args(args).args(probe_args(args));
        without_mounts(&mut cmd, unmount)?;
        let mut s = Self::spawn(cmd)?;
        s._shared = Some(shared);
        Ok(s)
    }

    /// Starts `sensor run ARGS` after `prepare` has set up its command (a namespace to
    /// enter, say).
    pub fn start_prepared(
        args: &[&str],
        prepare: impl FnOnce(&mut Command) -> Result<()>,
    ) -> Result<Self> {
        let shared = ATTACH_LOCK.read().unwrap_or_else(|e| e.into_inner());
        let mut cmd = Command::new(sensor_bin());
        cmd.arg("run").args(args).args(probe_args(args));
        prepare(&mut cmd)?;
        let mut s = Self::spawn(cmd)?;
        s._shared = Some(shared);
        Ok(s)
    }

    /// Starts `sensor run ARGS` as root with exactly `caps` (`CAP_BPF`, ...) as its
    /// bounding, permitted and effective sets and no new privileges, as a systemd unit's
    /// `CapabilityBoundingSet=` or a pod's `capabilities.add` over `drop: [ALL]` runs it.
    /// Checks the sets in its /proc status before returning: once attached, the sensor
    /// keeps only what it still needs ([`kept_capabilities`]) of what it was given; the
    /// bounding set stays as given (cutting it needs CAP_SETPCAP, not given here).
    pub fn start_with_capabilities(caps: &[&str], args: &[&str]) -> Result<Self> {
        let shared = ATTACH_LOCK.read().unwrap_or_else(|e| e.into_inner());
        let mut mask = 0u64;
        let mut names = Vec::new();
        for c in caps {
            mask |= 1 << cap_number(c)?;
            names.push(format!(
                "+{}",
                c.trim_start_matches("CAP_").to_ascii_lowercase()
            ));
        }
        let mut cmd = Command::new("setpriv");
        cmd.args([
            "--bounding-set",
            &format!("-all,{}", names.join(",")),
            "--no-new-privs",
            "--",
        ])
        .arg(sensor_bin())
        .arg("run")
        .args(args);
        let mut s = Self::spawn(cmd)?;
        s._shared = Some(shared);
        let kept = mask & kept_capabilities()?;
        let sets = capability_sets(s.pid())?;
        for (field, want) in [("CapBnd", mask), ("CapPrm", kept), ("CapEff", kept)] {
            let got = sets[field];
            if got != want {
                bail!("{field} {got:#x}, expected exactly {want:#x} (given {caps:?})");
            }
        }
        Ok(s)
    }

    /// Starts `cmd` (a `sensor run`) and waits for its `sensor-started` line.
    pub fn spawn(mut cmd: Command) -> Result<Self> {
        // The hook forced on this sensor: its own `--probe` (a test's, or SENSOR_PROBE's).
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let forced = args
            .iter()
            .position(|a| a == "--probe")
            .and_then(|i| args.get(i + 1))
            .filter(|p| *p != "auto")
            .cloned();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", sensor_bin().display()))?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let bad_lines = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().context("sensor stdout")?;
        let (l, b) = (lines.clone(), bad_lines.clone());
        let out_reader = thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<Value>(&line) {
                    Ok(v) if v.is_object() => l.lock().unwrap().push(v),
                    _ => b.lock().unwrap().push(line),
                }
            }
        });
        let (stderr, err_reader) = collect(child.stderr.take().context("sensor stderr")?);
        let mut s = Self {
            child,
            lines,
            bad_lines,
            stderr,
            readers: vec![out_reader, err_reader],
            _shared: None,
        };
        // A guard against a hung start, generous: under emulation (the VM matrix) a start
        // takes a minute.
        let started = s
            .wait_for(Duration::from_secs(300), |v| {
                v["event"]["action"] == "sensor-started"
            })
            .context("sensor did not start")?;
        check_hook_for(
            started["sensor"]["probe"].as_str().unwrap_or_default(),
            forced,
        )?;
        Ok(s)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// Every line so far; panics if any stdout line was not one JSON object.
    pub fn lines(&self) -> Vec<Value> {
        let bad = self.bad_lines.lock().unwrap();
        assert!(
            bad.is_empty(),
            "sensor printed lines that are not JSON objects: {bad:?}"
        );
        self.lines.lock().unwrap().clone()
    }

    /// Waits for the first line matching `pred`; fails at once if the sensor exits.
    pub fn wait_for(&mut self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Result<Value> {
        let found = poll_until(
            timeout,
            || {
                if let Some(v) = self.lines().into_iter().find(&pred) {
                    return Ok(Some(v));
                }
                if let Some(status) = self.child.try_wait()? {
                    bail!(
                        "sensor exited ({status}) while waited on; stderr:\n{}",
                        self.stderr()
                    );
                }
                Ok(None)
            },
            Option::is_some,
        )?;
        found.with_context(|| {
            format!(
                "timed out after {timeout:?}; lines: {:#?}\nstderr:\n{}",
                self.lines(),
                self.stderr()
            )
        })
    }

    /// The connection line (alert or event) for process `pid`, waiting for it.
    pub fn connection(&mut self, pid: u32, port: u16) -> Result<Value> {
        self.wait_for(Duration::from_secs(10), |v| is_connection(v, pid, port))
            .with_context(|| format!("no connection line for pid {pid} port {port}"))
    }

    /// A marker connect (`nc` to `dst`:4444 from the client side of `net`) and its line:
    /// once it is seen every earlier record has been handled (the ring buffer delivers in
    /// reservation order and the sensor handles it in order).
    pub fn barrier(&mut self, net: &Net, dst: &str) -> Result<()> {
        let pid = net.nc(dst, 4444)?;
        self.wait_for(Duration::from_secs(60), |v| is_connection(v, pid, 4444))
            .with_context(|| {
                format!("no line for the barrier connect (pid {pid}) to {dst}:4444")
            })?;
        Ok(())
    }

    /// Waits for the `policy-reloaded` line (the first one).
    pub fn policy_reloaded(&mut self) -> Result<Value> {
        self.wait_for(Duration::from_secs(60), |v| {
            v["event"]["action"] == "policy-reloaded"
        })
        .context("no policy-reloaded line")
    }

    /// Every connection line of process `pid`.
    pub fn connections_of(&self, pid: u32) -> Vec<Value> {
        self.lines()
            .into_iter()
            .filter(|v| v["process"]["pid"] == pid && v["event"]["action"] == "network-connect")
            .collect()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Sends `sig`, waits (up to 10 s) for exit, and joins the threads that read its
    /// stdout and stderr, so the lines returned are all it printed.
    pub fn stop_with(mut self, sig: i32) -> Result<(ExitStatus, Vec<Value>)> {
        self.signal(sig);
        let status = poll_until(
            Duration::from_secs(10),
            || Ok(self.child.try_wait()?),
            Option::is_some,
        )?;
        let Some(status) = status else {
            let _ = self.child.kill();
            bail!("sensor did not exit within 10 s of signal {sig}");
        };
        // The pipes close when the last holder exits: a child the sensor started could keep
        // them open, so the wait is bounded rather than a bare join.
        wait_until(
            "the sensor's stdout and stderr readers to reach EOF",
            Duration::from_secs(10),
            || self.readers.iter().all(|r| r.is_finished()),
        )?;
        for r in self.readers.drain(..) {
            r.join()
                .map_err(|_| anyhow::anyhow!("a sensor output reader panicked"))?;
        }
        Ok((status, self.lines()))
    }
}

impl Drop for Sensor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn is_connection(v: &Value, pid: u32, port: u16) -> bool {
    v["event"]["action"] == "network-connect"
        && v["process"]["pid"] == pid
        && v["destination"]["port"] == port
}

/// The hook the tests force, from `SENSOR_PROBE` (`cargo xtask vmtest` sets it): a
/// `--probe` value such as `fentry` or `tp-btf`. Unset, empty or `auto`: none forced.
pub fn forced_probe() -> Option<String> {
    std::env::var("SENSOR_PROBE")
        .ok()
        .filter(|p| !p.is_empty() && p != "auto")
}

/// `--probe VALUE` for `sensor run` when a hook is forced and `args` does not choose one.
fn probe_args(args: &[&str]) -> Vec<String> {
    match forced_probe() {
        Some(p) if !args.contains(&"--probe") => vec!["--probe".into(), p],
        _ => Vec::new(),
    }
}

/// Checks `reported` (a `sensor.probe`) is the hook the tests expect here: with a hook
/// forced, that hook (`tp-btf` names `tp_btf/...`), so a silent fallback fails; otherwise
/// the one auto selection picks on this kernel, as `sensor check`'s verdict names it
/// (asked once per test binary).
pub fn check_hook(reported: &str) -> Result<()> {
    check_hook_for(reported, forced_probe())
}

/// [`check_hook`] for a sensor started with `--probe forced` (None: auto).
fn check_hook_for(reported: &str, forced: Option<String>) -> Result<()> {
    if let Some(p) = forced {
        let prefix = format!("{}/", p.replace('-', "_"));
        // A connect hook, not a lifecycle hook of the same kind.
        let connect =
            reported.ends_with("/tcp_connect") || reported.ends_with("/inet_sock_set_state");
        if !reported.starts_with(&prefix) || !connect {
            bail!("sensor reports hook {reported:?}, but it was started with --probe {p}");
        }
        return Ok(());
    }
    static AUTO: std::sync::OnceLock<Result<String, String>> = std::sync::OnceLock::new();
    let auto = AUTO
        .get_or_init(|| auto_hook().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if reported != auto {
        bail!("sensor reports hook {reported:?}, but sensor check says auto picks {auto:?}");
    }
    Ok(())
}

/// The connect hook `sensor check` says auto selection picks here (its verdict line).
pub fn auto_hook() -> Result<String> {
    let out = Command::new(sensor_bin())
        .arg("check")
        .output()
        .context("running sensor check")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("verdict"))
        .and_then(|v| v.split("using ").nth(1))
        .map(|h| h.trim().to_string())
        .with_context(|| format!("sensor check named no hook:\n{text}"))
}

impl Sensor {
    /// The address `--metrics HOST:0` bound, from the `sensor-started` line.
    pub fn metrics_address(&mut self) -> Result<String> {
        let started = self.wait_for(Duration::from_secs(5), |v| {
            v["event"]["action"] == "sensor-started"
        })?;
        started["sensor"]["metrics"]
            .as_str()
            .map(str::to_string)
            .context("sensor-started names no metrics address")
    }
}

/// `sensor replay ARGS` with `input` on stdin: (stdout JSON lines, stderr). Fails when
/// replay fails or prints a line that is not JSON.
pub fn replay(args: &[&str], input: &str) -> Result<(Vec<Value>, String)> {
    use std::io::Write;
    let mut child = Command::new(sensor_bin())
        .arg("replay")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting sensor replay")?;
    child
        .stdin
        .take()
        .context("replay's stdin")?
        .write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("replay failed: {out:?}");
    }
    let lines = String::from_utf8(out.stdout)?
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).context("replay printed a non-JSON line"))
        .collect::<Result<Vec<_>>>()?;
    Ok((lines, String::from_utf8(out.stderr)?))
}

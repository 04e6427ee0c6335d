//! Harness for the real-kernel tests: network namespaces the test creates and deletes,
//! programs started inside them, and the real `sensor` binary whose JSON lines are
//! collected and checked.
//!
//! Network rule: every address lives inside a namespace pair made here, the client side
//! has no default route, and destinations are documentation or private ranges assigned
//! to the server side. A connect to a closed port there is answered with a RST.

use std::{
    fs::File,
    io::{BufRead, BufReader, Read},
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Arc, Mutex, RwLock, RwLockReadGuard,
        atomic::{AtomicU32, Ordering},
    },
    thread,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

pub mod ecs;
pub mod wait;

pub use ecs::{assert_alert, assert_tcp_alert, counter, is_action};
pub use wait::{poll_until, wait_for_value, wait_until};

/// A directory for test programs, outside every location the sensor treats as suspicious
/// (`/tmp`, `/var/tmp`, `/dev/shm`), so verdicts do not depend on where the repository is
/// checked out. Removed on drop.
pub struct Scratch {
    pub dir: PathBuf,
}

impl Scratch {
    pub fn new(name: &str) -> Result<Self> {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let dir = PathBuf::from("/var/lib/t1571-sensor-tests")
            .join(format!("{name}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        // Readable by every user whatever the umask: one test runs a program as nobody.
        use std::os::unix::fs::PermissionsExt;
        for d in [dir.parent(), Some(dir.as_path())].into_iter().flatten() {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))
                .with_context(|| format!("chmod {}", d.display()))?;
        }
        Ok(Self { dir })
    }

    /// A copy of the `connector` test program (pass `env!("CARGO_BIN_EXE_connector")`)
    /// here: an ordinary program on no list.
    pub fn connector(&self, built: &str) -> Result<String> {
        let dst = self.dir.join("connector");
        if !dst.exists() {
            std::fs::copy(built, &dst).with_context(|| format!("copying {built}"))?;
        }
        Ok(dst.to_string_lossy().into_owned())
    }

    /// A container's root here, `rootfs/` with an empty `etc/`; returns its path.
    pub fn rootfs(&self) -> Result<PathBuf> {
        let root = self.dir.join("rootfs");
        std::fs::create_dir_all(root.join("etc"))
            .with_context(|| format!("creating {}/etc", root.display()))?;
        Ok(root)
    }
}

/// How many processes a burst test starts: `SENSOR_TEST_BURST` (smaller in emulated VMs),
/// else `default`.
pub fn burst_count(default: usize) -> Result<usize> {
    std::env::var("SENSOR_TEST_BURST").map_or(Ok(default), |v| {
        v.parse::<usize>()
            .ok()
            .filter(|&n| n > 0)
            .with_context(|| format!("SENSOR_TEST_BURST={v:?} is not a positive count"))
    })
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Real-kernel tests need root. Outside CI they skip with a reason; under CI=true they fail.
pub fn root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: real-kernel tests must run as root under CI");
    }
    eprintln!("SKIPPED {test}: needs root to load eBPF programs and create network namespaces");
    false
}

/// The sensor binary: $SENSOR_BIN (set by `cargo xtask test`) or the workspace's debug build.
pub fn sensor_bin() -> PathBuf {
    std::env::var_os("SENSOR_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/sensor"))
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A client namespace and a server namespace joined by one veth pair.
pub struct Net {
    client: String,
    server: String,
    client_fd: File,
    server_fd: File,
}

impl Net {
    pub fn new() -> Result<Self> {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let tag = format!("{}-{n}", std::process::id());
        let client = format!("t1571c-{tag}");
        let server = format!("t1571s-{tag}");
        ip(&["netns", "add", &client])?;
        // From here on, Drop deletes whatever was created if a later step fails.
        let mut net = Self {
            client_fd: File::open("/dev/null")?,
            server_fd: File::open("/dev/null")?,
            client: client.clone(),
            server: server.clone(),
        };
        ip(&["netns", "add", &server])?;
        ip(&[
            "link", "add", "v0", "netns", &client, "type", "veth", "peer", "name", "v1", "netns",
            &server,
        ])?;
        for (ns, dev) in [(&client, "v0"), (&server, "v1")] {
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        net.client_fd =
            File::open(format!("/run/netns/{client}")).context("opening the client netns")?;
        net.server_fd =
            File::open(format!("/run/netns/{server}")).context("opening the server netns")?;
        Ok(net)
    }

    /// The client namespace's handle, for code that joins it itself (benchmarks).
    pub fn client_path(&self) -> String {
        format!("/run/netns/{}", self.client)
    }

    /// Puts `client_ip/prefix` on the client side and `server_ip/prefix` on the server side.
    /// Only the connected route exists: nothing is routed anywhere else.
    pub fn subnet(&self, client_ip: &str, server_ip: &str, prefix: u8) -> Result<()> {
        let v6 = server_ip.contains(':');
        for (ns, dev, addr) in [
            (&self.client, "v0", client_ip),
            (&self.server, "v1", server_ip),
        ] {
            let cidr = format!("{addr}/{prefix}");
            let mut args = vec!["-n", ns.as_str(), "addr", "add", cidr.as_str(), "dev", dev];
            if v6 {
                args.push("nodad");
            }
            ip(&args)?;
        }
        Ok(())
    }

    /// A command that runs in the client namespace: its pid is the program's own (setns
    /// happens between fork and exec, no wrapper process).
    pub fn command(&self, program: &str) -> Command {
        Self::command_in(&self.client_fd, program.as_ref())
    }

    /// [`Net::command`] for a program whose path need not be UTF-8.
    pub fn command_os(&self, program: &std::ffi::OsStr) -> Command {
        Self::command_in(&self.client_fd, program)
    }

    /// The same in the server namespace: listeners the client connects to run here.
    pub fn server_command(&self, program: &str) -> Command {
        Self::command_in(&self.server_fd, program.as_ref())
    }

    fn command_in(ns: &File, program: &std::ffi::OsStr) -> Command {
        let mut cmd = Command::new(program);
        let fd = ns.as_raw_fd();
        // SAFETY: setns is async-signal-safe; the fd stays open while `self` lives.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd
    }

    /// Runs `program args` in the client namespace to completion; returns its pid.
    pub fn run(&self, program: &str, args: &[&str]) -> Result<u32> {
        let mut child = self
            .command(program)
            .args(args)
            .spawn()
            .with_context(|| format!("starting {program}"))?;
        let pid = child.id();
        child.wait()?;
        Ok(pid)
    }

    /// One TCP connect from python3 in the client namespace to `addr`:`port` (IPv6 when
    /// `addr` has a colon), to completion; returns its pid.
    pub fn python_connect(&self, addr: &str, port: u16) -> Result<u32> {
        let family = if addr.contains(':') {
            "AF_INET6"
        } else {
            "AF_INET"
        };
        let code = format!(
            "import socket\ns = socket.socket(socket.{family}, socket.SOCK_STREAM)\ns.settimeout(2)\ns.connect_ex(({addr:?}, {port}))"
        );
        self.run("python3", &["-c", &code])
    }

    /// One IPv4 TCP connect from python3 to `addr`:`port` that then lingers 0.3 s, so
    /// /proc still shows its executable when the sensor looks (allow rules match on the
    /// executable, never comm); returns its pid.
    /// ssh (package-managed, on no list) to `dst`:`port`, non-interactive, to completion;
    /// returns its pid.
    pub fn ssh_connect(&self, dst: &str, port: u16) -> Result<u32> {
        let port = port.to_string();
        self.run(
            "/usr/bin/ssh",
            &[
                "-o",
                "BatchMode=yes",
                "-o",
                "ConnectTimeout=2",
                "-F",
                "/dev/null",
                "-p",
                &port,
                dst,
            ],
        )
    }

    pub fn python_connect_lingering(&self, addr: &str, port: u16) -> Result<u32> {
        let code = format!(
            "import socket, time\ns = socket.socket()\ns.settimeout(2)\ns.connect_ex(({addr:?}, {port}))\ntime.sleep(0.3)"
        );
        self.run("python3", &["-c", &code])
    }
}

/// Reads `from` to its end on a thread of its own, everything appended to the buffer
/// returned; join the thread to know the buffer is whole.
pub fn collect(
    mut from: impl Read + Send + 'static,
) -> (Arc<Mutex<Vec<u8>>>, thread::JoinHandle<()>) {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let b = buf.clone();
    let reader = thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = from.read(&mut chunk) {
            if n == 0 {
                break;
            }
            b.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    });
    (buf, reader)
}

/// A test-made network whose server side holds every address of `servers`
/// (documentation ranges, or private ones a test excludes), each on a subnet shared with
/// the client, whose address there is the subnet's first (`.1`, `::1`): a /24 for IPv4, a
/// /64 for IPv6.
pub fn public_net(servers: &[&str]) -> Result<Net> {
    let net = Net::new()?;
    for server in servers {
        let (client, prefix) = match server
            .parse::<std::net::IpAddr>()
            .with_context(|| format!("server address {server:?}"))?
        {
            std::net::IpAddr::V4(a) => {
                let [a, b, c, _] = a.octets();
                (std::net::Ipv4Addr::new(a, b, c, 1).to_string(), 24)
            }
            std::net::IpAddr::V6(a) => {
                let s = a.segments();
                let first = std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 1);
                (first.to_string(), 64)
            }
        };
        if client == *server {
            bail!("server address {server} is the subnet's first, the client's");
        }
        net.subnet(&client, server, prefix)?;
    }
    Ok(net)
}

/// The workspace's root directory.
pub fn repo() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests sit in the workspace")
        .to_path_buf()
}

/// `cmd`'s executable as found on PATH, links resolved: the path the sensor reports.
pub fn real_exe(cmd: &str) -> Result<String> {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .with_context(|| format!("looking up {cmd}"))?;
    let path = String::from_utf8(out.stdout).with_context(|| format!("the path of {cmd}"))?;
    let real = std::fs::canonicalize(path.trim())
        .with_context(|| format!("resolving {cmd} ({path:?})"))?;
    Ok(real.to_string_lossy().into_owned())
}

/// The mount point of the cgroup2 hierarchy, from /proc/self/mountinfo.
pub fn cgroup2_root() -> Result<PathBuf> {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").context("reading mountinfo")?;
    mi.lines()
        .find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            (post.split_whitespace().next()? == "cgroup2").then_some(())?;
            pre.split_whitespace().nth(4).map(PathBuf::from)
        })
        .context("no cgroup2 hierarchy mounted")
}

/// A `kB` field of /proc/PID/status (`VmRSS`, `VmHWM`, ...).
pub fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in {path}"))
}

/// (VmRSS, VmHWM) of `pid`, KiB.
pub fn memory_kib(pid: u32) -> Result<(u64, u64)> {
    Ok((status_kib(pid, "VmRSS")?, status_kib(pid, "VmHWM")?))
}

/// One HTTP GET with a real client (curl), returning (status, body).
pub fn http_get(url: &str) -> Result<(u16, String)> {
    let out = Command::new("curl")
        .args(["-s", "-m", "5", "-w", "\n%{http_code}", url])
        .output()
        .context("running curl")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').context("curl printed no status")?;
    Ok((
        code.trim().parse().context("status code")?,
        body.to_string(),
    ))
}

/// The value of Prometheus sample `name` (no labels) in a `/metrics` body.
pub fn metric(body: &str, name: &str) -> Option<u64> {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// [`metric`] for a counter the sensor always exports: absent is an error naming it, not 0.
pub fn metric_counter(body: &str, name: &str) -> Result<u64> {
    metric(body, name).with_context(|| format!("no sample {name} in /metrics"))
}

impl Drop for Net {
    fn drop(&mut self) {
        // Deleting the namespaces deletes the veth pair with them.
        let _ = ip(&["netns", "del", &self.client]);
        let _ = ip(&["netns", "del", &self.server]);
    }
}

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
        let pid = net.run("nc", &["-z", "-w2", dst, "4444"])?;
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

/// The capabilities a running sensor keeps once its programs are attached, as a mask:
/// CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH (/proc of every process, files whatever their
/// modes), and CAP_BPF on kernels before 6.5, whose bpf() syscall entry refuses every
/// command, map access on an open fd included, without it when
/// kernel.unprivileged_bpf_disabled is set (6.5 moved that check to map and program
/// creation).
pub fn kept_capabilities() -> Result<u64> {
    let mut mask = (1 << cap_number("CAP_SYS_PTRACE")?) | (1 << cap_number("CAP_DAC_READ_SEARCH")?);
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")?;
    let mut parts = release.trim().split(['.', '-']);
    let major: u32 = parts
        .next()
        .and_then(|p| p.parse().ok())
        .context("kernel release")?;
    let minor: u32 = parts
        .next()
        .and_then(|p| p.parse().ok())
        .context("kernel release")?;
    let unpriv_disabled = std::fs::read_to_string("/proc/sys/kernel/unprivileged_bpf_disabled")
        .map(|v| v.trim() != "0")
        .unwrap_or(true);
    if (major, minor) < (6, 5) && unpriv_disabled {
        mask |= 1 << cap_number("CAP_BPF")?;
    }
    Ok(mask)
}

/// CapInh, CapPrm, CapEff, CapBnd and CapAmb of process `pid`, from its /proc status.
pub fn capability_sets(pid: u32) -> Result<std::collections::HashMap<String, u64>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .filter(|l| l.starts_with("Cap"))
        .map(|l| {
            let (k, v) = l.split_once(':').context("a Cap line")?;
            let v = u64::from_str_radix(v.trim(), 16).context("capability mask")?;
            Ok((k.to_string(), v))
        })
        .collect()
}

/// A capability's number (linux/capability.h), for the names the shipped manifests use.
pub fn cap_number(name: &str) -> Result<u32> {
    Ok(match name {
        "CAP_DAC_READ_SEARCH" => 2,
        "CAP_SYS_PTRACE" => 19,
        "CAP_SYS_ADMIN" => 21,
        "CAP_SYS_RESOURCE" => 24,
        "CAP_PERFMON" => 38,
        "CAP_BPF" => 39,
        other => bail!("capability {other} is new to the tests: add its number"),
    })
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

/// Makes `cmd` run in a new mount namespace (private propagation) where each path of
/// `unmount` is lazily unmounted first, if it is mounted. The pid stays the program's own.
pub fn without_mounts(cmd: &mut Command, unmount: &[&str]) -> Result<()> {
    let paths: Vec<std::ffi::CString> = unmount
        .iter()
        .map(|p| std::ffi::CString::new(*p).context("path with NUL"))
        .collect::<Result<_>>()?;
    // SAFETY: only async-signal-safe syscalls between fork and exec, on strings built
    // before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let root = c"/";
            if libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            for p in &paths {
                // Not mounted (EINVAL) is the state wanted anyway.
                libc::umount2(p.as_ptr(), libc::MNT_DETACH);
            }
            Ok(())
        });
    }
    Ok(())
}

/// The host's program directories (those that exist here) a contained process needs
/// bind-mounted to run the host's programs: the `binds` of [`contained`].
pub fn program_dirs() -> Vec<&'static str> {
    ["usr", "bin", "lib", "lib64"]
        .into_iter()
        .filter(|d| std::path::Path::new("/").join(d).exists())
        .collect()
}

/// Makes `cmd` run as in a container: in a private mount namespace, with each directory of
/// `binds` (`/usr`, `/proc`, ...) bind-mounted from the host into `root`, chrooted there.
/// The pid stays the program's own.
pub fn contained(cmd: &mut Command, root: &std::path::Path, binds: &[&str]) -> Result<()> {
    let root_c = std::ffi::CString::new(root.as_os_str().as_encoded_bytes())
        .context("root path with NUL")?;
    let mut pairs = Vec::new();
    for d in binds {
        std::fs::create_dir_all(root.join(d))
            .with_context(|| format!("creating /{d} in {}", root.display()))?;
        pairs.push((
            std::ffi::CString::new(format!("/{d}")).context("path with NUL")?,
            std::ffi::CString::new(format!("{}/{d}", root.display())).context("path with NUL")?,
        ));
    }
    // SAFETY: only async-signal-safe syscalls between fork and exec, on strings made before.
    unsafe {
        cmd.pre_exec(move || {
            if libc::unshare(libc::CLONE_NEWNS) != 0
                || libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            for (src, dst) in &pairs {
                if libc::mount(
                    src.as_ptr(),
                    dst.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REC,
                    std::ptr::null(),
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if libc::chroot(root_c.as_ptr()) != 0 || libc::chdir(c"/".as_ptr()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}

/// The filesystem types mounted in process `pid`'s mount namespace.
pub fn mounted_types(pid: u32) -> Result<Vec<String>> {
    let mi = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .with_context(|| format!("reading /proc/{pid}/mountinfo"))?;
    Ok(mi
        .lines()
        .filter_map(|l| l.split_once(" - "))
        .filter_map(|(_, post)| post.split_whitespace().next().map(str::to_string))
        .collect())
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

/// How many BPF programs a sensor holds, from its `sensor-started` line: the connect hook,
/// each attached lifecycle and state hook (the state hook is the connect hook itself when
/// that is a tracepoint), and the four UDP programs.
pub fn expected_programs(started: &Value) -> usize {
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

/// Ids of the BPF programs process `pid` holds open (from /proc/PID/fdinfo).
pub fn bpf_programs_of(pid: u32) -> Vec<u32> {
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

/// Ids of every BPF program loaded in the kernel.
pub fn loaded_program_ids() -> Vec<u32> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|p| p.id())
        .collect()
}

/// Which of `ids` are still loaded after the kernel has had up to 10 s to free them: it
/// frees a program once its last reference is gone, asynchronously (RCU), so a check at
/// the instant the holder exits can see it still.
pub fn still_loaded(ids: &[u32]) -> Result<Vec<u32>> {
    poll_until(
        Duration::from_secs(10),
        || {
            Ok(loaded_program_ids()
                .into_iter()
                .filter(|id| ids.contains(id))
                .collect::<Vec<u32>>())
        },
        Vec::is_empty,
    )
}

/// The cgroup2 hierarchy for a test: the host's mount (unified, or hybrid under
/// `/sys/fs/cgroup/unified`) or, where there is none (or when asked), one mounted in a
/// private mount namespace that a helper process holds, so the host's mounts stay as they
/// are. `root` reaches it from the test (through the holder's `/proc/PID/root`);
/// [`Cgroup2::enter`] puts a command (the sensor) where it is mounted.
pub struct Cgroup2 {
    pub root: PathBuf,
    holder: Option<Child>,
    ns: Option<File>,
    _dir: Option<Scratch>,
}

impl Cgroup2 {
    /// The host's cgroup2 mount, else a private one.
    pub fn find_or_mount() -> Result<Self> {
        let mi = std::fs::read_to_string("/proc/self/mountinfo")?;
        let host = mi.lines().find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            (post.split_whitespace().next()? == "cgroup2").then_some(())?;
            pre.split_whitespace().nth(4).map(PathBuf::from)
        });
        match host {
            Some(root) => Ok(Self {
                root,
                holder: None,
                ns: None,
                _dir: None,
            }),
            None => Self::mount_privately(),
        }
    }

    /// A cgroup2 mount of its own, in a private mount namespace.
    pub fn mount_privately() -> Result<Self> {
        let dir = Scratch::new("cgroup2")?;
        let mut holder = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg("mount -t cgroup2 cgroup2 \"$1\" && echo mounted && exec sleep 3600")
            .arg("sh")
            .arg(&dir.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting unshare (util-linux)")?;
        let mut line = String::new();
        BufReader::new(holder.stdout.take().context("holder stdout")?).read_line(&mut line)?;
        let pid = holder.id();
        let mut me = Self {
            root: PathBuf::from(format!("/proc/{pid}/root")).join(
                dir.dir
                    .strip_prefix("/")
                    .context("scratch directory is not absolute")?,
            ),
            ns: None,
            holder: Some(holder),
            _dir: Some(dir),
        };
        if line.trim() != "mounted" {
            bail!("mounting cgroup2 in a private mount namespace failed");
        }
        me.ns = Some(
            File::open(format!("/proc/{pid}/ns/mnt")).context("opening the holder's mount ns")?,
        );
        Ok(me)
    }

    /// `path` (under `root`) as a process in the hierarchy's mount namespace names it.
    pub fn inside(&self, path: &std::path::Path) -> PathBuf {
        match &self.holder {
            Some(h) => {
                let prefix = PathBuf::from(format!("/proc/{}/root", h.id()));
                path.strip_prefix(&prefix)
                    .map_or_else(|_| path.to_path_buf(), |p| PathBuf::from("/").join(p))
            }
            None => path.to_path_buf(),
        }
    }

    /// Makes `cmd` run in the mount namespace where this hierarchy is mounted (nothing
    /// to do for the host's own).
    pub fn enter(&self, cmd: &mut Command) -> Result<()> {
        let Some(ns) = &self.ns else { return Ok(()) };
        let fd = ns.try_clone()?;
        // SAFETY: setns is async-signal-safe; `fd` moves into the closure and stays open.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNS) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(())
    }
}

impl Drop for Cgroup2 {
    fn drop(&mut self) {
        if let Some(h) = &mut self.holder {
            let _ = h.kill();
            let _ = h.wait();
        }
    }
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

pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// A systemd-journald for the test: the running one, else one started here (and stopped
/// when dropped). Entries are read back with journalctl.
pub struct Journald {
    child: Option<Child>,
}

fn journal_socket_answers() -> bool {
    std::os::unix::net::UnixDatagram::unbound()
        .and_then(|s| s.connect(JOURNAL_SOCKET))
        .is_ok()
}

impl Journald {
    pub fn ensure() -> Result<Self> {
        if journal_socket_answers() {
            return Ok(Self { child: None });
        }
        let child = Command::new("/lib/systemd/systemd-journald")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting systemd-journald (package systemd)")?;
        let journald = Self { child: Some(child) };
        wait_until(
            &format!("systemd-journald to answer on {JOURNAL_SOCKET}"),
            Duration::from_secs(10),
            journal_socket_answers,
        )?;
        Ok(journald)
    }

    /// Entries matching `matches` (FIELD=value; journalctl ANDs different fields), as JSON
    /// objects, waiting up to 15 s for at least `want`.
    pub fn entries(&self, matches: &[&str], want: usize) -> Result<Vec<Value>> {
        poll_until(
            Duration::from_secs(15),
            || {
                let out = Command::new("journalctl")
                    .args(["-o", "json", "--all", "--no-pager"])
                    .args(matches)
                    .output()
                    .context("running journalctl")?;
                Ok(String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .filter_map(|l| serde_json::from_str(l).ok())
                    .collect::<Vec<Value>>())
            },
            |v| v.len() >= want,
        )
    }

    /// The first entry matching `matches`, waiting for it.
    pub fn entry(&self, matches: &[&str]) -> Result<Value> {
        self.entries(matches, 1)?
            .into_iter()
            .next()
            .with_context(|| format!("no journal entry for {matches:?}"))
    }
}

impl Drop for Journald {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A process the test started, killed and reaped on drop, so a failing test leaves no
/// listener, storm or holder behind.
pub struct Running(pub Child);

impl Running {
    /// Starts `cmd`; `what` names it in the error.
    pub fn spawn(mut cmd: Command, what: &str) -> Result<Self> {
        Ok(Self(
            cmd.spawn().with_context(|| format!("starting {what}"))?,
        ))
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

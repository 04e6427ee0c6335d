//! The Debian package under a real systemd as PID 1: a bookworm userland this test makes
//! with debootstrap (cached under target/), booted with `systemd-nspawn --boot` (the host's
//! PID 1 is not systemd). Inside it: `dpkg -i`, `systemctl enable --now`, Atomic test 1 and
//! its High alert in `journalctl`, reload with a bad and a good policy, the watchdog
//! restarting a stopped sensor, the unit's whole sandbox (seccomp included), and no BPF
//! program left after `systemctl stop`.
//!
//! Why nspawn and not a qemu guest: it boots in seconds on the host's kernel (the one the
//! other host tests prove), where a TCG guest takes minutes. Bookworm's systemd 252 still
//! runs on a cgroup v1 hybrid host; 256 and later refuse. nspawn filters bpf(2) and
//! perf_event_open(2) and drops CAP_BPF and CAP_PERFMON by default: the flags give them back.
//! The container has its own network namespace with only `lo` (`--private-network`): the
//! booted system can send nothing anywhere; the Atomic test's nc runs in the container's
//! other namespaces but in the test-made client namespace.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use sensor_tests::{bpf_programs_of, public_net, root_or_skip, wait_for_value, wait_until};
use serde_json::Value;

/// The Atomic test's destination: a documentation address on the test's server side.
const PUBLIC: &str = "203.0.113.71";
const UNIT: &str = "t1571-sensor";
/// What the booted userland needs besides minbase: systemd as init, the bus systemctl
/// talks over, procps (the unit's ExecReload= kill; the package depends on it) and nc.
/// Part of the cache's name: a new list makes a new cache.
const PACKAGES: &str = "systemd,systemd-sysv,dbus,procps,netcat-openbsd";
const CACHE: &str = "bookworm-1";
const MAX_EXPOSURE: f64 = 3.0;

/// Not runnable here: SKIPPED, or a failure under CI=true.
fn skip(why: &str) -> Result<()> {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("systemd: {why}");
    }
    eprintln!("SKIPPED systemd: {why}");
    Ok(())
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The host's Debian mirror, the only place debootstrap may reach: the first `URIs:` of
/// /etc/apt/sources.list.d/debian.sources (else the first `deb` line of sources.list)
/// that is not the security archive.
fn mirror() -> Option<String> {
    let sources = std::fs::read_to_string("/etc/apt/sources.list.d/debian.sources")
        .ok()
        .and_then(|s| {
            s.lines()
                .filter_map(|l| l.strip_prefix("URIs:"))
                .flat_map(str::split_whitespace)
                .find(|u| !u.contains("security"))
                .map(str::to_string)
        });
    sources.or_else(|| {
        std::fs::read_to_string("/etc/apt/sources.list")
            .ok()?
            .lines()
            .filter_map(|l| l.strip_prefix("deb "))
            .flat_map(str::split_whitespace)
            .find(|w| w.starts_with("http") && !w.contains("security"))
            .map(str::to_string)
    })
}

/// The cached bookworm root, made on first use (about a minute) and never written after:
/// every boot puts a tmpfs overlay on it (`--volatile=overlay`).
fn rootfs(mirror: &str) -> Result<PathBuf> {
    // This test's own checkout (the harness's repo() may be a build shared with another).
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/systemd-test");
    let root = dir.join(CACHE);
    if root.join("usr/lib/systemd/systemd").exists() {
        eprintln!("systemd: cached rootfs {}", root.display());
        return Ok(root);
    }
    let partial = dir.join(format!("{CACHE}.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&dir)?;
    let started = Instant::now();
    let made = run(Command::new("debootstrap")
        .args([
            "--variant=minbase",
            &format!("--include={PACKAGES}"),
            "bookworm",
        ])
        .arg(&partial)
        .arg(mirror));
    if let Err(e) = made {
        let _ = std::fs::remove_dir_all(&partial);
        return Err(e.context("debootstrap of bookworm"));
    }
    // Another run may have finished first: keep its copy.
    if std::fs::rename(&partial, &root).is_err() {
        let _ = std::fs::remove_dir_all(&partial);
    }
    eprintln!(
        "systemd: debootstrap took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(root)
}

/// A booted container; powered off (nspawn's SIGTERM) and reaped on drop.
struct Container {
    nspawn: Child,
    pid1: u32,
    log: PathBuf,
}

impl Container {
    fn boot(root: &Path, deb: &Path) -> Result<Self> {
        let name = format!("t1571-{}", std::process::id());
        let log = root.with_file_name(format!("{name}.log"));
        let nspawn = Command::new("systemd-nspawn")
            .args([
                "--register=no",
                "--keep-unit",
                "--volatile=overlay",
                "--boot",
            ])
            .args(["--console=pipe", "--private-network"])
            .arg(format!("--machine={name}"))
            .arg("-D")
            .arg(root)
            // What a BPF sensor needs and nspawn leaves out by default.
            .arg(
                "--capability=CAP_BPF,CAP_PERFMON,CAP_SYS_ADMIN,CAP_SYS_PTRACE,CAP_DAC_READ_SEARCH",
            )
            .arg("--system-call-filter=bpf perf_event_open")
            .arg("--bind-ro=/sys/kernel/btf")
            .arg(format!("--bind-ro={}:/root/{UNIT}.deb", deb.display()))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::create(&log)?.try_clone()?)
            .spawn()
            .context("starting systemd-nspawn")?;
        let mut c = Self {
            pid1: 0,
            nspawn,
            log,
        };
        let parent = c.nspawn.id();
        c.pid1 = wait_for_value(
            "the container's systemd",
            Duration::from_secs(30),
            || Ok(child_named(parent, "systemd")),
            Option::is_some,
        )
        .with_context(|| c.log_text())?
        .context("no pid")?;
        let state = wait_for_value(
            "systemctl is-system-running",
            Duration::from_secs(120),
            || {
                Ok(c.output(&["systemctl", "is-system-running"])
                    .unwrap_or_default())
            },
            |s| matches!(s.trim(), "running" | "degraded"),
        )
        .with_context(|| c.log_text())?;
        if state.trim() != "running" {
            eprintln!(
                "systemd: booted degraded: {}",
                c.output(&["systemctl", "--failed", "--no-legend"])?
            );
        }
        Ok(c)
    }

    fn log_text(&self) -> String {
        format!(
            "nspawn's output:\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        )
    }

    /// A command in every namespace of the container.
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", &self.pid1.to_string(), "-a", "--"])
            .args(args);
        cmd
    }

    fn output(&self, args: &[&str]) -> Result<String> {
        run(&mut self.command(args))
    }

    /// The container's file `path`, seen from the host.
    fn path(&self, path: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root", self.pid1)).join(path.trim_start_matches('/'))
    }

    fn show(&self, property: &str) -> Result<String> {
        Ok(self
            .output(&["systemctl", "show", "-p", property, "--value", UNIT])?
            .trim()
            .to_string())
    }

    /// Journal entries matching `args` (journalctl's), newer than `mark`.
    fn entries(&self, mark: u64, args: &[&str]) -> Result<Vec<Value>> {
        let mut all = vec!["journalctl", "-o", "json", "--no-pager", "-q"];
        all.extend(args);
        Ok(self
            .output(&all)?
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|e| seqnum(e).is_some_and(|n| n > mark))
            .collect())
    }

    /// The unit's journal entries (trusted fields only: this unit, uid 0) newer than `mark`.
    fn journal(&self, mark: u64, extra: &[&str]) -> Result<Vec<Value>> {
        let mut args = vec!["-u", UNIT];
        args.extend(extra);
        Ok(self
            .entries(mark, &args)?
            .into_iter()
            .filter(|e| e["_SYSTEMD_UNIT"] == "t1571-sensor.service" && e["_UID"] == "0")
            .collect())
    }

    /// Where the journal ends now: entries with a higher sequence number are new.
    /// (Not --after-cursor: with -u and -p, journalctl 252 found nothing after a cursor
    /// its filter excludes.)
    fn mark(&self) -> Result<u64> {
        Ok(self
            .entries(0, &["-n", "1"])?
            .iter()
            .filter_map(seqnum)
            .max()
            .unwrap_or(0))
    }

    /// Waits for an entry newer than `mark` that `want` accepts.
    fn wait_entry(
        &self,
        what: &str,
        mark: u64,
        extra: &[&str],
        want: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let found = wait_for_value(
            what,
            Duration::from_secs(30),
            || Ok(self.journal(mark, extra)?.into_iter().find(&want)),
            Option::is_some,
        )
        .with_context(|| {
            let all = self.output(&["journalctl", "-u", UNIT, "--no-pager", "-o", "cat"]);
            let seen = self.journal(mark, extra).map(|v| v.len());
            format!(
                "{seen:?} entries after {mark} ({extra:?}); the unit's journal:\n{}",
                all.unwrap_or_else(|e| format!("{e:#}"))
            )
        })?;
        found.context("no entry")
    }

    /// The host's pid of the container's process `pid`.
    fn host_pid(&self, pid: u32) -> Result<u32> {
        let ns = std::fs::read_link(format!("/proc/{}/ns/pid", self.pid1))?;
        for e in std::fs::read_dir("/proc")?.flatten() {
            let Some(host) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            if std::fs::read_link(e.path().join("ns/pid")).ok().as_ref() != Some(&ns) {
                continue;
            }
            let status = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
            let inner = status
                .lines()
                .find_map(|l| l.strip_prefix("NSpid:"))
                .and_then(|v| v.split_whitespace().last())
                .and_then(|v| v.parse::<u32>().ok());
            if inner == Some(pid) {
                return Ok(host);
            }
        }
        bail!("no host pid for the container's pid {pid}")
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child; nspawn powers the container off on SIGTERM.
        unsafe { libc::kill(self.nspawn.id() as i32, libc::SIGTERM) };
        let gone = wait_until("nspawn to exit", Duration::from_secs(30), || {
            self.nspawn.try_wait().is_ok_and(|s| s.is_some())
        });
        if gone.is_err() {
            let _ = self.nspawn.kill();
            let _ = self.nspawn.wait();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// An entry's sequence number, from its cursor's `i=` (hex).
fn seqnum(e: &Value) -> Option<u64> {
    e["__CURSOR"]
        .as_str()?
        .split(';')
        .find_map(|f| f.strip_prefix("i="))
        .and_then(|i| u64::from_str_radix(i, 16).ok())
}

/// A child of `parent` whose comm is `comm`.
fn child_named(parent: u32, comm: &str) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid = e.file_name().to_str()?.parse::<u32>().ok()?;
        let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
        // comm is in parentheses and may hold spaces: the fields after the last ')'.
        let (head, rest) = stat.rsplit_once(')')?;
        let ppid = rest.split_whitespace().nth(1)?.parse::<u32>().ok()?;
        (ppid == parent && head.ends_with(&format!("({comm}"))).then_some(pid)
    })
}

/// systemd's time spans as `systemctl show` prints them ("30s", "1min 30s", "500ms").
fn span(text: &str) -> Result<Duration> {
    let mut total = Duration::ZERO;
    for part in text.split_whitespace() {
        let digits = part.trim_end_matches(|c: char| c.is_ascii_alphabetic());
        let n: u64 = digits
            .parse()
            .with_context(|| format!("time span {text:?}"))?;
        total += match &part[digits.len()..] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "min" => Duration::from_secs(60 * n),
            other => bail!("unit {other:?} in time span {text:?}"),
        };
    }
    Ok(total)
}

fn status_field(pid: u32, field: &str) -> Result<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .map(|v| v.trim().to_string())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

#[test]
fn packaged_unit_under_systemd_as_pid_1() -> Result<()> {
    if !root_or_skip("systemd") {
        return Ok(());
    }
    let Some(deb) = std::env::var_os("SENSOR_DEB").map(PathBuf::from) else {
        return skip("SENSOR_DEB not set (cargo xtask test builds the package)");
    };
    for tool in ["debootstrap", "systemd-nspawn", "nsenter", "bpftool", "ip"] {
        if !have(tool) {
            return skip(&format!("{tool} is missing (cargo xtask test installs it)"));
        }
    }
    let Some(mirror) = mirror() else {
        return skip("no Debian mirror in /etc/apt/sources.list.d/debian.sources or sources.list");
    };
    let started = Instant::now();
    let root = rootfs(&mirror)?;
    let booting = Instant::now();
    let c = Container::boot(&root, &deb)?;
    eprintln!(
        "systemd: booted in {:.1} s",
        booting.elapsed().as_secs_f64()
    );
    let version = c.output(&["systemctl", "--version"])?;
    eprintln!("systemd: {}", version.lines().next().unwrap_or_default());

    // Installed as an operator does, started as the unit says.
    c.output(&["dpkg", "-i", &format!("/root/{UNIT}.deb")])?;
    c.output(&["systemctl", "enable", "--now", UNIT])?;
    assert_eq!(c.show("ActiveState")?, "active", "{}", c.log_text());
    let main = c.show("MainPID")?.parse::<u32>()?;

    // Atomic test 1: nc to 4444 from the test's client namespace.
    let net = public_net(&[PUBLIC])?;
    let nc = |port: u16| -> Result<()> {
        let pid1 = c.pid1.to_string();
        // nc exits 1 on the RST from the closed port: only its connect matters.
        Command::new("nsenter")
            .args(["-t", &pid1, "-a", &format!("--net={}", net.client_path())])
            .args(["--", "nc", "-z", "-w2", PUBLIC, &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("running nc in the container")?;
        Ok(())
    };
    let alert = |mark: u64, port: u16| -> Result<Value> {
        let port = port.to_string();
        c.wait_entry(
            &format!("an alert for {PUBLIC}:{port}"),
            mark,
            &["-p", "warning"],
            |e| {
                e["SENSOR_EVENT_KIND"] == "alert"
                    && e["SENSOR_DESTINATION_IP"] == PUBLIC
                    && e["SENSOR_DESTINATION_PORT"] == port.as_str()
            },
        )
    };
    let mark = c.mark()?;
    nc(4444)?;
    let e = alert(mark, 4444)?;
    assert_eq!(e["PRIORITY"], "3", "a High alert is err: {e:#}");
    assert_eq!(e["SENSOR_RISK_SCORE"], "3", "{e:#}");
    assert!(
        e["SENSOR_PROCESS_EXECUTABLE"]
            .as_str()
            .is_some_and(|x| x.ends_with("/nc") || x.contains("nc.openbsd")),
        "{e:#}"
    );
    let doc: Value = serde_json::from_str(e["SENSOR_ECS_JSON"].as_str().context("ECS")?)?;
    assert_eq!(doc["event"]["risk_score"], 3, "{doc:#}");
    eprintln!("systemd: High alert in journalctl -p warning: ok");

    // 9002 is on no list by default: nc there is Medium.
    let mark = c.mark()?;
    nc(9002)?;
    assert_eq!(alert(mark, 9002)?["SENSOR_RISK_SCORE"], "2");

    // A bad policy: the reload keeps the old one and says why.
    let policy = c.path("/etc/t1571-sensor/policy.toml");
    let mark = c.mark()?;
    std::fs::write(&policy, "c2_ports = [4444, 9002\n")?;
    c.output(&["systemctl", "reload", UNIT])?;
    let e = c.wait_entry("the reload's refusal", mark, &[], |e| {
        e["MESSAGE"]
            .as_str()
            .is_some_and(|m| m.contains("keeping the old policy") && m.contains("policy.toml"))
    })?;
    eprintln!("systemd: bad policy: {}", e["MESSAGE"]);
    assert_eq!(c.show("ActiveState")?, "active");
    assert_eq!(
        c.show("MainPID")?,
        main.to_string(),
        "a reload restarted it"
    );
    let mark = c.mark()?;
    nc(9002)?;
    assert_eq!(alert(mark, 9002)?["SENSOR_RISK_SCORE"], "2", "old policy");

    // A good one changes the scoring: 9002 becomes a C2 port.
    let mark = c.mark()?;
    std::fs::write(&policy, "c2_ports = [4444, 9002]\n")?;
    c.output(&["systemctl", "reload", UNIT])?;
    c.wait_entry("policy-reloaded", mark, &[], |e| {
        e["SENSOR_EVENT_ACTION"] == "policy-reloaded"
    })?;
    let mark = c.mark()?;
    nc(9002)?;
    assert_eq!(alert(mark, 9002)?["SENSOR_RISK_SCORE"], "3", "new policy");
    let failed = c.output(&["journalctl", "-u", UNIT, "--no-pager", "-q", "-o", "cat"])?;
    assert!(!failed.contains("Reload failed"), "{failed}");
    eprintln!("systemd: reload (bad kept, good applied): ok");

    // The whole sandbox holds, seccomp included, and the sensor still works under it.
    let host_main = c.host_pid(main)?;
    assert_eq!(
        status_field(host_main, "Seccomp:")?,
        "2",
        "no syscall filter"
    );
    assert_eq!(status_field(host_main, "NoNewPrivs:")?, "1");
    let security = c.output(&["systemd-analyze", "security", UNIT, "--no-pager"])?;
    let score: f64 = security
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for t1571-sensor.service: "))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no exposure level in:\n{security}"))?;
    eprintln!("systemd: systemd-analyze security on the running unit: {score}");
    assert!(score <= MAX_EXPOSURE, "{score}:\n{security}");
    // Files under the host root are read with openat2 (RESOLVE_IN_ROOT): a sandbox
    // option that fails it (RestrictSUIDSGID=) loses the package database and more.
    let logs = c.journal(0, &["SYSLOG_IDENTIFIER=t1571-sensor-log"])?;
    let said = |needle: &str| {
        logs.iter()
            .any(|e| e["MESSAGE"].as_str().is_some_and(|m| m.contains(needle)))
    };
    assert!(
        said("package database: ") && !said("package database unknown"),
        "the sandbox hid the package database: {logs:#?}"
    );

    // The watchdog restarts a stopped sensor within WatchdogSec + TimeoutStopSec + RestartSec.
    let bound = span(&c.show("WatchdogUSec")?)?
        + span(&c.show("TimeoutStopUSec")?)?
        + span(&c.show("RestartUSec")?)?;
    let mark = c.mark()?;
    let stopped = Instant::now();
    c.output(&["kill", "-STOP", &main.to_string()])?;
    let restarted = wait_for_value(
        "the watchdog's restart",
        bound + Duration::from_secs(10),
        || {
            Ok((
                c.show("NRestarts")?,
                c.show("ActiveState")?,
                c.show("MainPID")?,
            ))
        },
        |(n, state, pid)| n == "1" && state == "active" && pid != "0" && *pid != main.to_string(),
    )?;
    let took = stopped.elapsed();
    eprintln!(
        "systemd: watchdog restart after {:.1} s (bound {} s)",
        took.as_secs_f64(),
        bound.as_secs()
    );
    // systemd says why, as itself (_PID=1) about the unit.
    let said: Vec<Value> = c
        .entries(mark, &["_PID=1", "UNIT=t1571-sensor.service"])?
        .into_iter()
        .filter(|e| e["_UID"] == "0")
        .collect();
    let said = said
        .iter()
        .filter_map(|e| e["MESSAGE"].as_str())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(said.contains("Watchdog timeout"), "{said}");
    let main = restarted.2.parse::<u32>()?;
    // The restarted sensor alerts again.
    let mark = c.mark()?;
    nc(4444)?;
    assert_eq!(alert(mark, 4444)?["SENSOR_RISK_SCORE"], "3");

    // `systemctl stop` leaves no BPF program behind (bpftool, from the host).
    let programs = bpf_programs_of(c.host_pid(main)?);
    assert!(!programs.is_empty(), "the sensor holds no BPF program");
    c.output(&["systemctl", "stop", UNIT])?;
    assert_eq!(c.show("ActiveState")?, "inactive");
    let left = wait_for_value(
        "the sensor's programs to be freed",
        Duration::from_secs(10),
        || {
            let listed: Value =
                serde_json::from_str(&run(Command::new("bpftool").args(["-j", "prog", "list"]))?)?;
            Ok(listed
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p["id"].as_u64())
                .filter(|id| programs.contains(&(*id as u32)))
                .collect::<Vec<u64>>())
        },
        Vec::is_empty,
    )?;
    assert!(left.is_empty());
    eprintln!(
        "systemd: all steps ok in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

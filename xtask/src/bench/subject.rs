//! What runs beside the storm (a sensor, an empty program, bpftrace), its stdout read on a
//! thread of its own, and what /proc says about its CPU time and memory.

use std::{
    io::Read,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// The peer a sysadmin would reach for: the same tuple per connect, printed by bpftrace
/// (CLOSE -> SYN_SENT is the connect, as the sensor's hook sees it). `nsecs` (CLOCK_MONOTONIC)
/// lets the harness measure its latency as it does the sensor's `@timestamp`.
const BPFTRACE_PROGRAM: &str = r#"tracepoint:sock:inet_sock_set_state /args->protocol == 6 && args->oldstate == 7 && args->newstate == 2/ { printf("%d %s %s %d %llu\n", pid, comm, ntop(args->daddr), args->dport, nsecs); }"#;

#[derive(Clone, Debug)]
pub enum Kind {
    /// `sensor bench-baseline [--btf]`: an empty program on the connect tracepoint.
    Baseline {
        btf: bool,
    },
    /// `sensor run ARGS`.
    Sensor {
        bin: PathBuf,
        args: Vec<String>,
    },
    Bpftrace,
}

/// How a line's event time is read, for the latency figures.
#[derive(Clone, Copy, PartialEq)]
enum Clock {
    /// The sensor's `@timestamp` (kernel time, converted to CLOCK_REALTIME).
    Realtime,
    /// bpftrace's last field, `nsecs` (CLOCK_MONOTONIC).
    Monotonic,
}

/// What the reader thread saw on the subject's stdout.
#[derive(Default)]
pub struct Output {
    pub lines: u64,
    pub bytes: u64,
    /// Connect lines with an event time, and their delay (ns) from event to read.
    pub latencies_ns: Vec<i64>,
    /// The last `sensor-stopped` line.
    pub stopped: Option<Value>,
    /// bpftrace's own loss reports ("Lost N events"), summed.
    pub bpftrace_lost: u64,
}

pub struct Running {
    child: Child,
    reader: Option<JoinHandle<Output>>,
}

fn now_ns(clock: libc::clockid_t) -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

/// Offsets of the newlines in `buf`. glibc's memchr and memmem (below) because the
/// harness runs unoptimised (dev profile), where a byte loop would not keep up with the
/// sensor's stdout at full speed.
fn newlines(buf: &[u8]) -> impl Iterator<Item = usize> + '_ {
    let mut at = 0;
    std::iter::from_fn(move || {
        let rest = buf.get(at..)?;
        // SAFETY: memchr reads at most rest.len() bytes of a live slice.
        let p = unsafe { libc::memchr(rest.as_ptr().cast(), i32::from(b'\n'), rest.len()) };
        if p.is_null() {
            return None;
        }
        let i = at + (p as usize - rest.as_ptr() as usize);
        at = i + 1;
        Some(i)
    })
}

/// Where `needle` starts in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    // SAFETY: memmem reads at most the given lengths of two live slices.
    let p = unsafe {
        libc::memmem(
            hay.as_ptr().cast(),
            hay.len(),
            needle.as_ptr().cast(),
            needle.len(),
        )
    };
    (!p.is_null()).then(|| p as usize - hay.as_ptr() as usize)
}

/// The event time of one line, on `clock`; None for lines that are not connects.
fn event_time(line: &[u8], clock: Clock) -> Option<i64> {
    match clock {
        Clock::Realtime => {
            find(line, b"\"network-connect\"")?;
            const KEY: &[u8] = b"\"@timestamp\":\"";
            let at = &line[find(line, KEY)? + KEY.len()..];
            let at = &at[..at.iter().position(|&b| b == b'"')?];
            let ts: jiff::Timestamp = std::str::from_utf8(at).ok()?.parse().ok()?;
            i64::try_from(ts.as_nanosecond()).ok()
        }
        Clock::Monotonic => {
            let text = std::str::from_utf8(line).ok()?;
            text.rsplit(' ').next()?.trim().parse().ok()
        }
    }
}

/// Reads `out` to EOF. Until `ready` is seen, lines are searched for it (and the sender
/// told); after that, only newlines and bytes are counted (no JSON, no per-line work: the
/// reader must keep up with the sensor at full speed), unless `latency` asks for each
/// connect's delay. The last 256 KiB are kept for the `sensor-stopped` line.
fn read(
    mut out: impl Read,
    ready: &'static str,
    tx: mpsc::Sender<()>,
    latency: Option<Clock>,
    bpftrace: bool,
) -> Output {
    let mut o = Output::default();
    let mut buf = vec![0u8; 4 << 20];
    let mut pending: Vec<u8> = Vec::new();
    let mut tail: Vec<u8> = Vec::new();
    let mut started = false;
    loop {
        let n = match out.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &buf[..n];
        let read_at = latency.map(|c| {
            now_ns(match c {
                Clock::Realtime => libc::CLOCK_REALTIME,
                Clock::Monotonic => libc::CLOCK_MONOTONIC,
            })
        });
        o.lines += newlines(chunk).count() as u64;
        o.bytes += n as u64;
        if !started || latency.is_some() || bpftrace {
            pending.extend_from_slice(chunk);
            let mut start = 0;
            for end in newlines(&pending) {
                let line = &pending[start..end];
                start = end + 1;
                if !started && find(line, ready.as_bytes()).is_some() {
                    started = true;
                    let _ = tx.send(());
                }
                if bpftrace && line.starts_with(b"Lost ") {
                    o.bpftrace_lost += bpftrace_lost(&String::from_utf8_lossy(line));
                }
                if let (Some(c), Some(at)) = (latency, read_at)
                    && let Some(t) = event_time(line, c)
                {
                    o.latencies_ns.push(at - t);
                }
            }
            pending.drain(..start);
        }
        tail.extend_from_slice(chunk);
        if tail.len() > 512 << 10 {
            tail.drain(..tail.len() - (256 << 10));
        }
    }
    for line in String::from_utf8_lossy(&tail).lines() {
        if line.contains("\"sensor-stopped\"")
            && let Ok(v) = serde_json::from_str::<Value>(line)
        {
            o.stopped = Some(v);
        }
    }
    o
}

impl Running {
    /// Starts `kind` and waits (up to 120 s) until it says it is attached.
    pub fn start(kind: &Kind, sensor: &Path, log: &Path, latency: bool) -> Result<Self> {
        let (mut cmd, ready, clock) = match kind {
            Kind::Baseline { btf } => {
                let mut c = Command::new(sensor);
                c.arg("bench-baseline");
                if *btf {
                    c.arg("--btf");
                }
                (c, "baseline-started", Clock::Realtime)
            }
            Kind::Sensor { bin, args } => {
                let mut c = Command::new(bin);
                c.arg("run").args(args);
                (c, "\"sensor-started\"", Clock::Realtime)
            }
            Kind::Bpftrace => {
                // bpftrace needs tracefs, which a fresh host may not have mounted: mount it
                // in a private mount namespace, never on the host. `exec` keeps the pid
                // bpftrace's own, for /proc.
                let mut c = Command::new("unshare");
                c.args(["-m", "--propagation", "private", "sh", "-c"]).arg(
                    "mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing || exit 1; exec bpftrace -e \"$0\"",
                );
                c.arg(BPFTRACE_PROGRAM);
                (c, "Attaching", Clock::Monotonic)
            }
        };
        let err =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {cmd:?}"))?;
        let out = child.stdout.take().context("stdout")?;
        // A pipe of 1 MiB (the default maximum) instead of 64 KiB: the sensor's writer
        // thread does not block on a reader that was off the CPU for a moment.
        // SAFETY: fcntl on a pipe fd we own; failure only leaves the default size.
        unsafe {
            use std::os::fd::AsRawFd;
            libc::fcntl(out.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20);
        }
        let (tx, rx) = mpsc::channel();
        let clock = latency.then_some(clock);
        let bpftrace = matches!(kind, Kind::Bpftrace);
        let reader = thread::spawn(move || read(out, ready, tx, clock, bpftrace));
        let mut r = Self {
            child,
            reader: Some(reader),
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if rx.recv_timeout(Duration::from_millis(50)).is_ok() {
                break;
            }
            // bpftrace says "Attaching" on stderr in some versions.
            if matches!(kind, Kind::Bpftrace)
                && std::fs::read_to_string(log).is_ok_and(|s| s.contains("Attaching"))
            {
                break;
            }
            if let Some(status) = r.child.try_wait()? {
                bail!(
                    "{cmd:?} exited ({status}) before it was ready; stderr in {}:\n{}",
                    log.display(),
                    tail_of(log)
                );
            }
            if Instant::now() > deadline {
                bail!("{cmd:?} not ready after 120 s; stderr in {}", log.display());
            }
        }
        if matches!(kind, Kind::Bpftrace) {
            // "Attaching" comes just before the attach itself.
            thread::sleep(Duration::from_millis(500));
        }
        Ok(r)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM (SIGINT for bpftrace, its Ctrl-C), then its stdout to EOF. One that has not
    /// exited after 15 s is killed, and says so on stderr: its figures still count.
    pub fn stop(mut self, bpftrace: bool) -> Result<Output> {
        let sig = if bpftrace {
            libc::SIGINT
        } else {
            libc::SIGTERM
        };
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                eprintln!(
                    "xtask bench: warning: pid {} did not exit within 15 s of signal {sig}: killed",
                    self.child.id()
                );
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let reader = self.reader.take().context("reader")?;
        reader
            .join()
            .map_err(|_| anyhow::anyhow!("the stdout reader panicked"))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.reader.is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn tail_of(path: &Path) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// bpftrace's "Lost N events" reports in `text`, summed.
pub fn bpftrace_lost(text: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Lost "))
        .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// utime + stime of `pid`, in seconds (/proc/PID/stat).
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the command name, which may hold spaces and ')'.
    let rest = stat.rsplit_once(')').context("no ')' in /proc/PID/stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<u64> {
        f.get(i)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("field {} of /proc/{pid}/stat", i + 3))
    };
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    let total = ticks(11)? + ticks(12)?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(total as f64 / hz)
}

/// VmHWM (peak) and VmRSS (now) of `pid`, in KiB.
pub fn memory_kib(pid: u32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let field = |name: &str| -> Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no {name} in /proc/{pid}/status"))
    };
    Ok((field("VmHWM:")?, field("VmRSS:")?))
}

/// Waits until `pid` has used no CPU for 300 ms (it has caught up with the storm), at most
/// `limit`; returns how long that took.
pub fn settle(pid: u32, limit: Duration) -> Result<Duration> {
    let start = Instant::now();
    let mut last = cpu_seconds(pid)?;
    let mut quiet = 0;
    while quiet < 3 && start.elapsed() < limit {
        thread::sleep(Duration::from_millis(100));
        let now = cpu_seconds(pid)?;
        quiet = if now == last { quiet + 1 } else { 0 };
        last = now;
    }
    Ok(start.elapsed().saturating_sub(Duration::from_millis(300)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_time_of_a_sensor_connect_line() {
        let line = br#"{"@timestamp":"2026-11-22T20:31:02.123456789Z","event":{"action":"network-connect"}}"#;
        assert_eq!(
            event_time(line, Clock::Realtime),
            Some(1_795_379_462_123_456_789)
        );
        let status =
            br#"{"@timestamp":"2026-11-22T20:31:02.123456789Z","event":{"action":"sensor-stats"}}"#;
        assert_eq!(event_time(status, Clock::Realtime), None);
    }

    #[test]
    fn event_time_of_a_bpftrace_line() {
        assert_eq!(
            event_time(b"4242 curl 203.0.113.7 4444 123456789", Clock::Monotonic),
            Some(123_456_789)
        );
        assert_eq!(event_time(b"Attaching 1 probe...", Clock::Monotonic), None);
    }

    #[test]
    fn newlines_and_needles_are_found() {
        assert_eq!(newlines(b"a\nbc\n\nd").collect::<Vec<_>>(), [1, 4, 5]);
        assert_eq!(newlines(b"").count(), 0);
        assert_eq!(
            find(b"xx\"sensor-started\"y", b"\"sensor-started\""),
            Some(2)
        );
        assert_eq!(find(b"sensor", b"sensor-started"), None);
    }

    #[test]
    fn bpftrace_losses_are_summed() {
        assert_eq!(
            bpftrace_lost("1 a b 2 3\nLost 12 events\nx\nLost 30 events\n"),
            42
        );
    }
}

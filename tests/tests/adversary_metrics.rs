//! Adversary: the metrics listener holds its bounds against whoever can reach it. Many
//! idle connections (a slowloris) cannot hold `/healthz` and `/metrics` out nor grow the
//! sensor's fds past the connection bound; a sensor out of fds (EMFILE on accept) backs
//! off instead of spinning, and counts each failed accept. A real sensor, a real HTTP
//! client (curl), connections on loopback to the sensor's own listener.

use std::{
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use sensor_tests::{Sensor, http_get, metric_counter, root_or_skip, wait_until};

/// The sensor's bound on open metrics connections (output::metrics::MAX_CONNECTIONS).
const MAX_CONNECTIONS: usize = 32;
/// Idle connections the test holds: many times the bound.
const IDLE: usize = 400;

/// A sensor serving metrics on a loopback port the kernel picks: (sensor, address).
fn metrics_sensor() -> Result<(Sensor, SocketAddr)> {
    let mut sensor = Sensor::start(&["--metrics", "127.0.0.1:0"])?;
    let addr = sensor.metrics_address()?.parse()?;
    Ok((sensor, addr))
}

fn fds(pid: u32) -> Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

/// The sensor's counter `t1571_sensor_{name}_total`, read from its `/metrics`.
fn sensor_counter(addr: SocketAddr, name: &str) -> Result<u64> {
    let (code, body) = http_get(&format!("http://{addr}/metrics"))?;
    assert_eq!(code, 200, "{body}");
    metric_counter(&body, &format!("t1571_sensor_{name}_total"))
}

fn nofile(pid: u32, soft: Option<u64>) -> Result<libc::rlimit> {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: reading the limit into a valid struct.
    if unsafe { libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, std::ptr::null(), &mut old) } != 0 {
        bail!("prlimit {pid}: {}", std::io::Error::last_os_error());
    }
    if let Some(cur) = soft {
        let new = libc::rlimit {
            rlim_cur: cur,
            rlim_max: old.rlim_max,
        };
        // SAFETY: a valid struct; only the soft limit changes.
        if unsafe { libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, &new, std::ptr::null_mut()) }
            != 0
        {
            bail!("prlimit {pid}: {}", std::io::Error::last_os_error());
        }
    }
    Ok(old)
}

/// CPU ticks (user + system) of the sensor's thread named `name`.
fn thread_ticks(pid: u32, name: &str) -> Result<u64> {
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let dir = task?.path();
        if std::fs::read_to_string(dir.join("comm"))?.trim() != name {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("stat"))?;
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .context("stat")?
            .1
            .split_whitespace()
            .collect();
        // After the command: state is field 3, utime 14, stime 15.
        let tick = |i: usize| -> Result<u64> { Ok(fields.get(i).context("stat field")?.parse()?) };
        return Ok(tick(11)? + tick(12)?);
    }
    bail!("no thread {name} in {pid}")
}

#[test]
fn idle_connections_cannot_hold_the_metrics_endpoint_nor_its_fds() -> Result<()> {
    if !root_or_skip("metrics_slowloris") {
        return Ok(());
    }
    let (sensor, addr) = metrics_sensor()?;
    let pid = sensor.pid();
    assert_eq!(http_get(&format!("http://{addr}/healthz"))?.0, 200);
    let base = fds(pid)?;
    // This test's own fds: IDLE connections need more than a default soft limit may give.
    let own = nofile(std::process::id(), None)?;
    nofile(std::process::id(), Some(own.rlim_max))?;
    let mut idle = Vec::with_capacity(IDLE);
    let mut peak = base;
    for i in 0..IDLE {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .with_context(|| format!("idle connection {i}"))?;
        // Half say nothing; half start a request they never finish.
        if i % 2 == 1 {
            s.write_all(b"GET /metr")?;
        }
        idle.push(s);
        if i % 20 == 0 {
            peak = peak.max(fds(pid)?);
        }
    }
    // Every idle connection still held by the test: the endpoint answers a real client.
    let t0 = Instant::now();
    let (health, _) = http_get(&format!("http://{addr}/healthz"))?;
    let (code, body) = http_get(&format!("http://{addr}/metrics"))?;
    let answered_in = t0.elapsed();
    assert_eq!(health, 200);
    assert_eq!(code, 200, "{body}");
    peak = peak.max(fds(pid)?);
    // Bounded: the open connections, plus a few files the event loop may have open.
    assert!(
        peak <= base + MAX_CONNECTIONS + 8,
        "sensor fds {base} -> {peak} with {IDLE} idle connections"
    );
    // The sensor closed every idle connection (cut for a newer one, or out of time).
    for (i, s) in idle.iter_mut().enumerate() {
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut buf = [0u8; 512];
        match s.read(&mut buf) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            Err(e) => bail!("idle connection {i} not closed by the sensor: {e}"),
        }
    }
    let cut = sensor_counter(addr, "metrics_connections_cut")?;
    let timed_out = sensor_counter(addr, "metrics_connections_timed_out")?;
    eprintln!(
        "{IDLE} idle connections: sensor fds {base} -> at most {peak}; healthz and metrics answered in {answered_in:?}; {cut} cut, {timed_out} timed out"
    );
    assert!(
        cut + timed_out >= IDLE as u64,
        "{cut} cut + {timed_out} timed out < {IDLE}"
    );
    assert!(cut > 0, "the bound was reached: older connections were cut");
    Ok(())
}

#[test]
fn accept_out_of_fds_backs_off_instead_of_spinning() -> Result<()> {
    if !root_or_skip("metrics_emfile") {
        return Ok(());
    }
    let (sensor, addr) = metrics_sensor()?;
    let pid = sensor.pid();
    assert_eq!(sensor_counter(addr, "metrics_accept_errors")?, 0);
    // Out of fds: a soft limit of 3 is below every fd the sensor could get (0-2 are its
    // standard streams), so each accept fails with EMFILE until it is raised again.
    let ticks0 = thread_ticks(pid, "metrics")?;
    let old = nofile(pid, Some(3))?;
    let t0 = Instant::now();
    let mut pending = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    pending.write_all(b"GET /healthz HTTP/1.0\r\n\r\n")?;
    // The sensor met EMFILE (it says so once), then the condition is held for a measured
    // window: the rate of retries over it is what is checked.
    let reported = wait_until(
        "the sensor to report a failed accept",
        Duration::from_secs(5),
        || sensor.stderr().contains("metrics endpoint: accept failed"),
    );
    if let Err(e) = reported {
        nofile(pid, Some(old.rlim_cur))?;
        return Err(e.context(format!("stderr: {}", sensor.stderr())));
    }
    // The measured window.
    std::thread::sleep(Duration::from_secs(3));
    nofile(pid, Some(old.rlim_cur))?;
    let held = t0.elapsed();
    let ticks = thread_ticks(pid, "metrics")? - ticks0;
    // Once fds are back the queued client is served (after at most one back-off).
    pending.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut answer = String::new();
    pending.read_to_string(&mut answer)?;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    let errors = sensor_counter(addr, "metrics_accept_errors")?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let secs = held.as_secs_f64();
    eprintln!(
        "out of fds for {held:?}: {errors} failed accepts ({:.1}/s), metrics thread {ticks} CPU ticks ({:.1} % of the wall time)",
        errors as f64 / secs,
        100.0 * ticks as f64 / hz / secs
    );
    // Back-off 10 ms doubling to 1 s: about 9 retries in 3 s; a spin makes 10^5 a second.
    assert!(errors >= 3, "EMFILE was met and counted: {errors}");
    assert!(
        (errors as f64) <= 10.0 + 2.0 * secs,
        "{errors} failed accepts in {secs:.1} s: not backing off"
    );
    assert!(
        (ticks as f64) <= 0.1 * hz * secs,
        "the metrics thread used {ticks} ticks in {secs:.1} s"
    );
    Ok(())
}

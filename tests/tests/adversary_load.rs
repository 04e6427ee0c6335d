//! What a user on the node can do to the sensor's resources (issue "Adversary, part 2"):
//! grow its memory with huge argvs and container passwd files, stall its loop with files
//! that must be hashed, and push a connect out of the ring buffer with a flood of another
//! record kind. Each test floods the host, so each holds `ATTACH_LOCK` exclusively.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Write},
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result, bail};
use rstest::rstest;
use sensor_tests::{
    ATTACH_LOCK, Net, Scratch, Sensor, contained, counter, http_get, is_connection, memory_kib,
    poll_until, root_or_skip, wait_for_value,
};
use serde_json::Value;

const PUBLIC: &str = "203.0.113.7";
/// The DaemonSet's memory request: the sensor must stay under it whatever users do.
const RSS_LIMIT_KIB: u64 = 64 * 1024;

fn public_net() -> Result<Net> {
    sensor_tests::public_net(&[PUBLIC])
}

/// Children killed and reaped on drop, whatever the test's outcome.
#[derive(Default)]
struct Fleet(Vec<Child>);

impl Drop for Fleet {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
        }
        for c in &mut self.0 {
            let _ = c.wait();
        }
    }
}

/// Waits until every pid of `pids` has a connection line to `port`; returns those found
/// (all of them, or what had come when `timeout` ran out).
fn connections(
    sensor: &mut Sensor,
    pids: &[u32],
    port: u16,
    timeout: Duration,
) -> Result<HashMap<u32, Value>> {
    poll_until(
        timeout,
        || {
            let mut found = HashMap::new();
            for v in sensor.lines() {
                for &pid in pids {
                    if is_connection(&v, pid, port) {
                        found.entry(pid).or_insert_with(|| v.clone());
                    }
                }
            }
            // Fails fast if the sensor died (the OOM this test is about, for one).
            if found.len() < pids.len()
                && let Some(e) = sensor.stderr().lines().find(|l| l.contains("error:"))
            {
                bail!("sensor failed: {e}");
            }
            Ok(found)
        },
        |found| found.len() == pids.len(),
    )
}

/// The kernel's record counters from `/metrics` (seen, emitted, lost per kind), those
/// not zero.
fn lost_by_kind(body: &str) -> String {
    body.lines()
        .filter(|l| l.starts_with("t1571_sensor_kernel_records_total"))
        .filter(|l| !l.ends_with(" 0"))
        .map(|l| l.trim_start_matches("t1571_sensor_kernel_records_total"))
        .collect::<Vec<_>>()
        .join(" ")
}

// ---------------------------------------------------------------------------------------
// (a) Hostile load: huge argvs and container passwd files.

/// Processes with a 30,000-argument argv.
const ARGV_PROCESSES: usize = 200;
const ARGV_ARGS: usize = 30_000;
/// Mount namespaces with a 1 MiB passwd each.
const PASSWD_NAMESPACES: usize = 100;
const PASSWD_BYTES: usize = 1 << 20;
/// The uid the contained processes run as, present in each passwd (so it is read).
const CONTAINED_UID: u32 = 4321;

/// A passwd of exactly [`PASSWD_BYTES`]: as many short, distinct entries as fit (what
/// costs a parser the most per byte), `appuser` among them.
fn big_passwd() -> Vec<u8> {
    let mut out =
        format!("root:x:0:0::/:/bin/sh\nappuser:x:{CONTAINED_UID}:{CONTAINED_UID}::/:/bin/sh\n")
            .into_bytes();
    let mut uid = 100_000u32;
    loop {
        let line = format!("u{uid}:x:{uid}:{uid}::/:\n");
        if out.len() + line.len() > PASSWD_BYTES {
            break;
        }
        out.extend_from_slice(line.as_bytes());
        uid += 1;
    }
    // Pad the last entry's shell to reach the size exactly.
    out.truncate(out.len() - 1);
    out.resize(PASSWD_BYTES - 1, b'x');
    out.push(b'\n');
    out
}

/// Starts the hostile fleet: [`ARGV_PROCESSES`] holders with a huge argv, and
/// [`PASSWD_NAMESPACES`] holders each in a mount namespace of its own whose root has a
/// 1 MiB passwd, running as uid [`CONTAINED_UID`]. Each connects once to PUBLIC:4444
/// and again per line on its stdin.
fn hostile_fleet(net: &Net, scratch: &Scratch, fleet: &mut Fleet) -> Result<Vec<u32>> {
    let holder = scratch.dir.join("holder");
    std::fs::copy(env!("CARGO_BIN_EXE_holder"), &holder).context("copying holder")?;
    let holder = holder.to_string_lossy().into_owned();
    let load: Vec<&str> = vec!["x"; ARGV_ARGS];
    let mut pids = Vec::new();
    for _ in 0..ARGV_PROCESSES {
        let child = net
            .command(&holder)
            .args([PUBLIC, "4444"])
            .args(&load)
            .stdin(Stdio::piped())
            .spawn()
            .context("starting a holder")?;
        pids.push(child.id());
        fleet.0.push(child);
    }
    let passwd = big_passwd();
    let binds = sensor_tests::program_dirs();
    for i in 0..PASSWD_NAMESPACES {
        let root = scratch.dir.join(format!("root{i}"));
        std::fs::create_dir_all(root.join("etc"))?;
        std::fs::write(root.join("etc/passwd"), &passwd)?;
        // The same inode in every root: no copy per container.
        std::fs::hard_link(&holder, root.join("holder")).context("linking holder")?;
        let mut cmd = net.command("/holder");
        cmd.args([PUBLIC, "4444"]).stdin(Stdio::piped());
        contained(&mut cmd, &root, &binds)?;
        // After the chroot (closures run in order): the container's user.
        // SAFETY: async-signal-safe syscalls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(CONTAINED_UID) != 0
                    || libc::setuid(CONTAINED_UID) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().context("starting a contained holder")?;
        pids.push(child.id());
        fleet.0.push(child);
    }
    Ok(pids)
}

/// Every pid's connection line is an alert; the contained ones name their user from the
/// container's passwd.
fn check_alerts(found: &HashMap<u32, Value>, pids: &[u32], phase: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let missing = pids.iter().filter(|p| !found.contains_key(p)).count();
    if missing > 0 {
        problems.push(format!(
            "{phase}: {missing} of {} connects not reported",
            pids.len()
        ));
    }
    let not_alerts = found
        .values()
        .filter(|v| v["event"]["kind"] != "alert")
        .count();
    if not_alerts > 0 {
        problems.push(format!(
            "{phase}: {not_alerts} connects reported but not as alerts"
        ));
    }
    problems
}

#[test]
fn hostile_argv_and_passwd_load_keeps_the_sensor_under_64_mib() -> Result<()> {
    if !root_or_skip("hostile_load") {
        return Ok(());
    }
    let _only = ATTACH_LOCK.write().unwrap_or_else(|e| e.into_inner());
    let scratch = Scratch::new("hostile-load")?;
    let net = public_net()?;
    let mut sensor = Sensor::start_unlocked(&[])?;
    let (rss_idle, _) = memory_kib(sensor.pid())?;
    let mut fleet = Fleet::default();
    let spawned = Instant::now();
    let pids = hostile_fleet(&net, &scratch, &mut fleet)?;
    eprintln!(
        "{} hostile processes started in {:?}",
        pids.len(),
        spawned.elapsed()
    );
    let found = connections(&mut sensor, &pids, 4444, Duration::from_secs(180))?;
    let (rss1, hwm1) = memory_kib(sensor.pid())?;
    let mut problems = check_alerts(&found, &pids, "running sensor");

    // A sensor (re)started while they all live seeds its table from /proc.
    sensor.stop_with(libc::SIGTERM)?;
    let mut sensor = Sensor::start_unlocked(&[])?;
    let (rss2_seeded, hwm2_seeded) = memory_kib(sensor.pid())?;
    for c in &mut fleet.0 {
        c.stdin
            .as_mut()
            .context("holder stdin")?
            .write_all(b"\n")
            .context("asking a holder to connect again")?;
    }
    let found = connections(&mut sensor, &pids, 4444, Duration::from_secs(180))?;
    let (rss2, hwm2) = memory_kib(sensor.pid())?;
    problems.extend(check_alerts(&found, &pids, "restarted sensor"));
    eprintln!(
        "MEASURED hostile load (KiB): idle RSS {rss_idle}; running sensor RSS {rss1} peak {hwm1}; \
         restarted sensor after seeding RSS {rss2_seeded} peak {hwm2_seeded}, after the connects RSS {rss2} peak {hwm2}"
    );
    for (what, kib) in [("running sensor", hwm1), ("restarted sensor", hwm2)] {
        if kib >= RSS_LIMIT_KIB {
            problems.push(format!(
                "{what}: peak RSS {} MiB, over the {} MiB limit",
                kib / 1024,
                RSS_LIMIT_KIB / 1024
            ));
        }
    }
    // Closing stdin ends every holder; the fleet reaps them.
    for c in &mut fleet.0 {
        drop(c.stdin.take());
    }
    assert!(problems.is_empty(), "{problems:#?}");
    Ok(())
}

// ---------------------------------------------------------------------------------------
// (b) The hashing attack.

/// The fingerprinted binary's size: the sensor hashes any executable of exactly this size
/// (up to 256 MiB are hashed; a node's `node` binary is about 100 MiB).
const KNOWN_SIZE: u64 = 128 << 20;
/// Execs of the re-touched file during the attack, one a second.
const ATTACK_EXECS: u32 = 5;
/// `nc` connects from another process during the attack, one every 200 ms.
const NC_COUNT: usize = 25;
const NC_EVERY: Duration = Duration::from_millis(200);

/// A host root (`--host-root`) whose only high-risk binary, `usr/bin/node`, is
/// [`KNOWN_SIZE`] bytes and no ELF (so it is known by its hash alone).
fn host_root_with_known_binary(scratch: &Scratch) -> Result<std::path::PathBuf> {
    let root = scratch.dir.join("host");
    std::fs::create_dir_all(root.join("etc"))?;
    std::fs::create_dir_all(root.join("usr/bin"))?;
    std::fs::copy("/etc/passwd", root.join("etc/passwd"))?;
    let f = std::fs::File::create(root.join("usr/bin/node"))?;
    f.set_len(KNOWN_SIZE)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o755))?;
    Ok(root)
}

/// A real program (a copy of `true`, whose build-id is known to nobody) padded to
/// [`KNOWN_SIZE`]: it runs, and the sensor must hash it to know it is not `node`.
fn padded_true(scratch: &Scratch) -> Result<std::path::PathBuf> {
    let path = scratch.dir.join("sized-like-node");
    let bytes = std::fs::read(std::fs::canonicalize("/bin/true")?)?;
    let mut f = std::fs::File::create(&path)?;
    f.write_all(&bytes)?;
    f.set_len(KNOWN_SIZE)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

/// `nc -z` to PUBLIC:4444 every [`NC_EVERY`] from the client namespace, [`NC_COUNT`]
/// times, on an absolute schedule; returns the pids.
fn nc_series(net: &Net) -> Result<Vec<u32>> {
    let start = Instant::now();
    let mut pids = Vec::new();
    for i in 0..NC_COUNT {
        let due = start + NC_EVERY * i as u32;
        thread::sleep(due.saturating_duration_since(Instant::now()));
        pids.push(net.nc(PUBLIC, 4444)?);
    }
    Ok(pids)
}

/// The `sensor.loop.max_stall_ms` of the first `sensor-stats` line printed after
/// `after_stats` of them, waiting for it.
fn max_stall_after(sensor: &Sensor, after_stats: usize, timeout: Duration) -> Result<u64> {
    let stats = |s: &Sensor| -> Vec<Value> {
        s.lines()
            .into_iter()
            .filter(|v| v["event"]["action"] == "sensor-stats")
            .collect()
    };
    let v = wait_for_value(
        &format!("sensor-stats line {}", after_stats + 1),
        timeout,
        || Ok(stats(sensor).get(after_stats).cloned()),
        Option::is_some,
    )?
    .context("no sensor-stats line")?;
    counter(&v, "sensor.loop.max_stall_ms")
}

#[test]
fn hashing_attack_does_not_stall_the_event_loop() -> Result<()> {
    if !root_or_skip("hashing_attack") {
        return Ok(());
    }
    let _only = ATTACH_LOCK.write().unwrap_or_else(|e| e.into_inner());
    let scratch = Scratch::new("hashing-attack")?;
    let net = public_net()?;
    let host = host_root_with_known_binary(&scratch)?;
    let attack = padded_true(&scratch)?;
    let mut sensor = Sensor::start_unlocked(&[
        "--host-root",
        &host.to_string_lossy(),
        "--metrics",
        "127.0.0.1:0",
        "--metrics-interval",
        "1",
    ])?;
    let started = sensor.wait_for(Duration::from_secs(1), |v| {
        v["event"]["action"] == "sensor-started"
    })?;
    assert_eq!(
        started["sensor"]["process_table"]["fingerprinted_executables"], 1,
        "the test's host root has one high-risk binary: {started:#}"
    );
    let addr = started["sensor"]["metrics"]
        .as_str()
        .context("metrics address")?
        .to_string();
    // The loop's stall before the attack (start-up fingerprinting happens before it runs).
    let stats_before = sensor
        .lines()
        .iter()
        .filter(|v| v["event"]["action"] == "sensor-stats")
        .count();
    let before = max_stall_after(&sensor, stats_before, Duration::from_secs(10))?;

    let done = Arc::new(AtomicBool::new(false));
    let attacker = {
        let (done, attack) = (done.clone(), attack.clone());
        thread::spawn(move || -> Result<u32> {
            let mut execs = 0;
            let start = Instant::now();
            while execs < ATTACK_EXECS && !done.load(Ordering::SeqCst) {
                thread::sleep(
                    (start + Duration::from_secs(execs.into()))
                        .saturating_duration_since(Instant::now()),
                );
                // A new mtime: a new (dev, inode, mtime, size), so nothing cached helps.
                std::fs::File::options()
                    .write(true)
                    .open(&attack)?
                    .set_modified(SystemTime::now())?;
                Command::new(&attack)
                    .status()
                    .context("running the attack file")?;
                execs += 1;
            }
            Ok(execs)
        })
    };
    // /healthz polled through the attack.
    let health = {
        let (done, addr) = (done.clone(), addr.clone());
        thread::spawn(move || {
            let mut bad = Vec::new();
            let mut polls = 0;
            while !done.load(Ordering::SeqCst) {
                polls += 1;
                match http_get(&format!("http://{addr}/healthz")) {
                    Ok((200, _)) => {}
                    Ok((code, _)) => bad.push(code.to_string()),
                    Err(e) => bad.push(format!("{e:#}")),
                }
                thread::sleep(Duration::from_millis(250));
            }
            (polls, bad)
        })
    };
    let attack_start = Instant::now();
    let nc = nc_series(&net);
    let nc_done = attack_start.elapsed();
    let execs = attacker.join().expect("attacker thread")?;
    let attack_done = attack_start.elapsed();
    let nc = nc?;
    // What had come out by the end of the attack, then everything.
    let on_time = connections(&mut sensor, &nc, 4444, Duration::ZERO)?.len();
    let found = connections(&mut sensor, &nc, 4444, Duration::from_secs(240))?;
    let reported_at = attack_start.elapsed();
    done.store(true, Ordering::SeqCst);
    let (polls, unhealthy) = health.join().expect("health thread");
    let stats_now = sensor
        .lines()
        .iter()
        .filter(|v| v["event"]["action"] == "sensor-stats")
        .count();
    let stall = max_stall_after(&sensor, stats_now, Duration::from_secs(240))?;
    eprintln!(
        "MEASURED hashing attack: {execs} execs of a {} MiB file sized like a known binary; \
         loop max stall {before} ms before, {stall} ms after; {}/{} nc reported by the end of the attack \
         ({attack_done:?}, nc done at {nc_done:?}), {} after {reported_at:?}; /healthz not 200 in {} of {polls} polls: {unhealthy:?}",
        KNOWN_SIZE >> 20,
        on_time,
        nc.len(),
        found.len(),
        unhealthy.len(),
    );
    assert_eq!(found.len(), nc.len(), "nc connects not reported");
    assert!(
        stall < 100,
        "the event loop stalled {stall} ms under the hashing attack"
    );
    assert!(unhealthy.is_empty(), "/healthz failed: {unhealthy:?}");
    Ok(())
}

// ---------------------------------------------------------------------------------------
// (c) Floods of one record kind with C2 connects in the middle.

#[derive(Clone, Copy, Debug)]
enum Flood {
    UdpSweep,
    AcceptLoop,
    ExecStorm,
}

/// Floods at full speed (one flooder per CPU) with [`NC_COUNT`] `nc` connects to 4444
/// every [`NC_EVERY`] in the middle: every one must be reported, and named nc.
fn flood_case(kind: Flood) -> Result<()> {
    let name = format!("{kind:?}");
    if !root_or_skip(&name) {
        return Ok(());
    }
    let _only = ATTACH_LOCK.write().unwrap_or_else(|e| e.into_inner());
    let scratch = Scratch::new("flood")?;
    let flood = scratch.dir.join("flood");
    std::fs::copy(env!("CARGO_BIN_EXE_flood"), &flood)?;
    let flood = flood.to_string_lossy().into_owned();
    let net = public_net()?;
    let mut sensor = Sensor::start_unlocked(&["--metrics", "127.0.0.1:0"])?;
    let addr = sensor.wait_for(Duration::from_secs(1), |v| {
        v["event"]["action"] == "sensor-started"
    })?["sensor"]["metrics"]
        .as_str()
        .context("metrics address")?
        .to_string();
    let args: Vec<&str> = match kind {
        Flood::UdpSweep => vec!["udp", PUBLIC],
        Flood::AcceptLoop => vec!["accept"],
        Flood::ExecStorm => vec!["exec", "/bin/true"],
    };
    let cpus = thread::available_parallelism().map_or(2, |n| n.get());
    let mut fleet = Fleet::default();
    for _ in 0..cpus {
        let mut child = net
            .command(&flood)
            .args(&args)
            .args(["--seconds", "60"])
            .stdout(Stdio::piped())
            .spawn()
            .context("starting a flooder")?;
        let out = child.stdout.take().context("flooder stdout")?;
        fleet.0.push(child);
        // Waits for its `ready`: the flood is on.
        let mut line = String::new();
        BufReader::new(out).read_line(&mut line)?;
        if line.trim() != "ready" {
            bail!("flooder did not start: {line:?}");
        }
    }
    let pids = nc_series(&net)?;
    let flooding = fleet.0.iter_mut().all(|c| matches!(c.try_wait(), Ok(None)));
    drop(fleet);
    let found = connections(&mut sensor, &pids, 4444, Duration::from_secs(60))?;
    let (_, body) = http_get(&format!("http://{addr}/metrics"))?;
    let alerts = found
        .values()
        .filter(|v| v["event"]["kind"] == "alert")
        .count();
    // The attack is hiding who made the C2 connect: each must name nc (its executable,
    // not comm) and score as nc does.
    let as_nc = |v: &Value| {
        v["process"]["executable"]
            .as_str()
            .is_some_and(|e| e.ends_with("/nc.openbsd"))
            && v["event"]["kind"] == "alert"
            && v["sensor"]["severity"] == "High"
            && v["event"]["risk_score"] == 3
    };
    let named = found.values().filter(|v| as_nc(v)).count();
    let mut by_attribution: HashMap<String, usize> = HashMap::new();
    for v in found.values().filter(|v| as_nc(v)) {
        let a = v["sensor"]["process"]["attribution"]
            .as_str()
            .unwrap_or("?");
        *by_attribution.entry(a.to_string()).or_default() += 1;
    }
    let others: Vec<String> = found
        .values()
        .filter(|v| !as_nc(v))
        .map(|v| {
            format!(
                "{} {} risk {} mismatch {} attribution {}",
                v["process"]["executable"],
                v["sensor"]["severity"],
                v["event"]["risk_score"],
                v["sensor"]["process"]["image_mismatch"],
                v["sensor"]["process"]["attribution"]
            )
        })
        .collect();
    eprintln!(
        "MEASURED flood {name}: {}/{} nc connects reported ({alerts} alerts, {named} attributed to nc {by_attribution:?}, others {others:?}); kernel records {}",
        found.len(),
        pids.len(),
        lost_by_kind(&body)
    );
    assert!(flooding, "a flooder ended before the nc series did");
    assert_eq!(
        found.len(),
        pids.len(),
        "nc connects lost in the {name} flood"
    );
    assert_eq!(
        named,
        pids.len(),
        "nc connects not attributed to nc (High, risk 3) in the {name} flood: {others:?}"
    );
    Ok(())
}

#[rstest]
#[case::udp_port_sweep(Flood::UdpSweep)]
#[case::loopback_accept_loop(Flood::AcceptLoop)]
#[case::exec_storm(Flood::ExecStorm)]
fn a_flood_does_not_push_out_a_connect(#[case] kind: Flood) -> Result<()> {
    flood_case(kind)
}

// ---------------------------------------------------------------------------------------
// (d) Long paths and a deep ancestry: what flood control and rollups hold per key.

/// Distinct ports one process connects to, twice each (the second is held by flood
/// control, with the process's whole description).
const DEEP_PORTS: u16 = 2500;
const DEEP_FIRST_PORT: u16 = 20_000;
/// Parents between the test and the connecting process, each a copy of `sh`.
const DEEP_PARENTS: usize = 8;

/// `dir/tag/` then directories of 255-byte names until the path is about 4,000 bytes,
/// created; returns the directory.
fn deep_dir(dir: &Path, tag: usize) -> Result<std::path::PathBuf> {
    let mut p = dir.join(format!("c{tag}"));
    while p.as_os_str().len() + 256 + 8 < 4000 {
        p.push(format!("{tag}{}", "d".repeat(254)));
    }
    std::fs::create_dir_all(&p)
        .with_context(|| format!("creating a {}-byte path", p.as_os_str().len()))?;
    Ok(p)
}

/// The sum of `sensor.folded_count` (1 when absent) over `pid`'s connection lines, and
/// how many lines that took.
fn counted(sensor: &Sensor, pid: u32) -> (u64, usize) {
    let lines = sensor.connections_of(pid);
    let n = lines
        .iter()
        .map(|v| v["sensor"]["folded_count"].as_u64().unwrap_or(1))
        .sum();
    (n, lines.len())
}

#[test]
fn long_paths_and_deep_ancestry_keep_flood_control_and_rollups_in_budget() -> Result<()> {
    if !root_or_skip("deep_paths") {
        return Ok(());
    }
    let _only = ATTACH_LOCK.write().unwrap_or_else(|e| e.into_inner());
    let scratch = Scratch::new("deep-paths")?;
    let net = public_net()?;
    // Parents: copies of sh under ~4,000-byte paths; the connecting program: bash (on the
    // high-risk list: every non-standard port alerts), under one as long.
    let mut parents = Vec::new();
    for i in 0..DEEP_PARENTS {
        let sh = deep_dir(&scratch.dir, i)?.join("sh");
        std::fs::copy("/bin/sh", &sh).context("copying sh")?;
        parents.push(sh.to_string_lossy().into_owned());
    }
    let bash = deep_dir(&scratch.dir, DEEP_PARENTS)?.join("bash");
    std::fs::copy("/bin/bash", &bash).context("copying bash")?;
    let bash = bash.to_string_lossy().into_owned();
    eprintln!("paths of {} bytes", bash.len());
    let last = DEEP_FIRST_PORT + DEEP_PORTS - 1;
    let sweep = format!(
        "for ((p={DEEP_FIRST_PORT}; p<={last}; p++)); do for i in 1 2; do \
         : 3<>/dev/tcp/{PUBLIC}/$p; done; done 2>/dev/null; echo $$"
    );
    // Each parent runs the next as a child (the trailing `:` keeps sh from exec'ing it).
    let step =
        r#"n=$1; shift; if [ "$n" = END ]; then "$1" -c "$2"; else "$n" -c "$0" "$0" "$@"; fi; :"#;
    // This is flood control's and the rollups' test: the sweep must not be summarised as
    // a scan (no more than 65,535 distinct ports can pass).
    let policy = scratch.dir.join("no-scan.toml");
    std::fs::write(&policy, "[scan]\nports = 65535\n").context("writing the policy")?;
    let policy = policy.to_string_lossy().into_owned();
    let mut sensor =
        Sensor::start_unlocked(&["--metrics-interval", "1", "--config", policy.as_str()])?;
    let (rss_idle, _) = memory_kib(sensor.pid())?;
    let started = Instant::now();
    let out = net
        .command(&parents[0])
        .args(["-c", step, step])
        .args(&parents[1..])
        .args(["END", &bash, &sweep])
        .stdout(Stdio::piped())
        .output()
        .context("running the chain")?;
    let pid: u32 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .with_context(|| format!("the sweeper's pid: {out:?}"))?;
    let swept = started.elapsed();
    let want = 2 * u64::from(DEEP_PORTS);
    // Held repeats come at the fold period's end (10 s) or when evicted for memory.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut peak_rss = 0;
    let (got, lines) = loop {
        let (rss, _) = memory_kib(sensor.pid())?;
        peak_rss = peak_rss.max(rss);
        let (got, lines) = counted(&sensor, pid);
        if got >= want || Instant::now() > deadline {
            break (got, lines);
        }
        thread::sleep(Duration::from_secs(1));
    };
    let stats = sensor.wait_for(Duration::from_secs(10), |v| {
        v["event"]["action"] == "sensor-stats"
            && v["sensor"]["engine"]["alerts"].as_u64() >= Some(want)
    })?;
    let (rss, hwm) = memory_kib(sensor.pid())?;
    let engine = &stats["sensor"]["engine"];
    let sample = sensor.connections_of(pid).into_iter().next();
    let exe_len = sample
        .as_ref()
        .and_then(|v| v["process"]["executable"].as_str())
        .map_or(0, str::len);
    let parent_len = sample
        .as_ref()
        .and_then(|v| v["process"]["parent"]["executable"].as_str())
        .map_or(0, str::len);
    eprintln!(
        "MEASURED deep paths: {want} connects from pid {pid} in {swept:?}, {got} counted on {lines} lines; \
         executable {exe_len} B, parent {parent_len} B; RSS idle {rss_idle} KiB, peak sampled {peak_rss}, \
         end {rss}, VmHWM {hwm}; fold keys {} bytes {} of {} evictions {}; rollup groups {} bytes {} no group {}; lost {} output lost {} kernel {}",
        engine["fold_keys"],
        engine["fold_bytes"],
        engine["fold_max_bytes"],
        engine["fold_evictions"],
        engine["rollup_groups"],
        engine["rollup_bytes"],
        engine["rollup_no_group_by_reason"],
        stats["sensor"]["lost_events_total"],
        stats["sensor"]["output_lost"],
        stats["sensor"]["kernel"],
    );
    let mut problems = Vec::new();
    if exe_len < 3800 || parent_len < 3800 {
        problems.push(format!(
            "paths not attributed in full: executable {exe_len} B, parent {parent_len} B"
        ));
    }
    if hwm >= RSS_LIMIT_KIB {
        problems.push(format!("peak RSS {} MiB, over the limit", hwm / 1024));
    }
    for (what, used, max) in [
        ("fold", "fold_bytes", "fold_max_bytes"),
        ("rollup", "rollup_bytes", "rollup_max_bytes"),
    ] {
        if engine[used].as_u64() > engine[max].as_u64() {
            problems.push(format!("{what}: {} over {}", engine[used], engine[max]));
        }
    }
    if engine["fold_evictions"]["memory_budget"].as_u64() == Some(0) {
        problems.push("flood control's byte budget never bound".into());
    }
    // The rollup, printed at exit, counts every one of them in its group.
    let (_, last) = sensor.stop_with(libc::SIGTERM)?;
    let rolled: u64 = last
        .iter()
        .filter(|v| v["event"]["action"] == "alert-rollup")
        .filter(|v| v["process"]["executable"] == bash.as_str())
        .map(|v| v["sensor"]["rollup"]["connections"].as_u64().unwrap_or(0))
        .sum();
    if rolled != want {
        problems.push(format!("the rollup counts {rolled} of {want}"));
    }
    // 5,000 lines of ~10 KiB outrun a loaded test reader: the output queue may then drop
    // lines, which must be counted (the engine's rollup above still counts every connect).
    let stopped = last
        .iter()
        .find(|v| v["event"]["action"] == "sensor-stopped")
        .context("no sensor-stopped line")?;
    let dropped = stopped["sensor"]["output_dropped"]
        .as_u64()
        .context("sensor-stopped has no output_dropped")?;
    eprintln!("output queue dropped {dropped} lines");
    if got != want && dropped == 0 {
        problems.push(format!(
            "{got} of {want} connects counted on the lines, none dropped by the output queue"
        ));
    }
    assert!(problems.is_empty(), "{problems:#?}");
    Ok(())
}

//! `cargo xtask bench`: the connect-storm harness. A single-threaded storm (socket, connect
//! to a closed port in a test namespace, close: tests/src/bin/storm.rs) runs beside nothing,
//! an empty program on the connect hook, the sensor on benign and hostile traffic, the
//! sensor with `--all`, and bpftrace printing the same tuple; rows interleaved, several
//! rounds, medians and spread. Then paced runs for alert latency, and a sustained run for
//! ring-buffer loss. Prints a table; `--json FILE` writes every figure for comparison
//! between commits.

mod criterion;
mod net;
mod report;
mod subject;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::{cargo, cargo_env, image, toolchain};
use net::Net;
use subject::{Kind, Running};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A short run (2 rounds of 2 s, short latency runs), without the loss run and the
    /// static musl build's rows.
    #[arg(long)]
    quick: bool,
    /// Rounds of interleaved rows (default 4; 2 with --quick).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=50))]
    rounds: Option<u32>,
    /// Seconds of storm per row and round (default 3; 2 with --quick).
    #[arg(long, value_name = "SECONDS")]
    seconds: Option<f64>,
    /// Write every figure as JSON to FILE (`-` or no value: stdout, after the table).
    #[arg(long, value_name = "FILE", num_args = 0..=1, default_missing_value = "-")]
    json: Option<PathBuf>,
    /// Leave out the loss run (60 s at 50,000 connects/s).
    #[arg(long)]
    no_loss: bool,
    /// Leave out the static musl build's rows.
    #[arg(long)]
    no_musl: bool,
    /// Leave out bpftrace (and do not install it).
    #[arg(long)]
    no_bpftrace: bool,
    /// Also rows for another sensor binary, as LABEL=PATH (e.g. a build of another commit
    /// or allocator). Repeatable.
    #[arg(long, value_name = "LABEL=PATH")]
    compare: Vec<String>,
    /// Only the rows whose name contains one of these (comma-separated; e.g.
    /// `scan,bpftrace`); the no-sensor rows always run.
    #[arg(long, value_name = "NAMES", value_delimiter = ',')]
    only: Vec<String>,
    /// Run the criterion connect-cost bench (tests/benches/connect_cost.rs) instead.
    #[arg(long)]
    criterion: bool,
}

/// The storm's shape.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Traffic {
    /// One process to one C2 port (4444): every connect scores, one key.
    Flood,
    /// A high-risk process (`curl`) to 60,000 ports on each of 8 hosts: every connect
    /// scores, every key distinct.
    Scan,
    /// Port 443 on a documentation address and a private (excluded) one: nothing scores.
    Benign,
}

impl Traffic {
    fn name(self) -> &'static str {
        match self {
            Traffic::Flood => "flood",
            Traffic::Scan => "scan",
            Traffic::Benign => "benign",
        }
    }

    fn storm_args(self) -> Vec<String> {
        let mut a = Vec::new();
        let dsts: &[&str] = match self {
            Traffic::Flood => &[net::SERVER],
            Traffic::Scan => &net::SCAN_HOSTS,
            Traffic::Benign => &[net::SERVER, net::PRIVATE],
        };
        for d in dsts {
            a.extend(["--dst".to_string(), d.to_string()]);
        }
        a.push("--ports".into());
        a.push(
            match self {
                Traffic::Flood => "4444",
                Traffic::Scan => "1025-61024",
                Traffic::Benign => "443",
            }
            .into(),
        );
        a
    }
}

#[derive(Clone, Debug)]
pub struct Row {
    pub name: String,
    pub label: String,
    pub subject: Option<Kind>,
    pub traffic: Traffic,
}

/// One row in one round.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Sample {
    pub round: u32,
    pub connects: u64,
    pub per_second: f64,
    /// Against no sensor on the same traffic in the same round.
    pub ratio: Option<f64>,
    /// The subject's utime + stime over the storm and its catch-up afterwards.
    pub cpu_seconds: Option<f64>,
    /// Its CPU use (% of one CPU) in the quiet second before the storm.
    pub idle_cpu_percent: Option<f64>,
    pub peak_rss_kib: Option<u64>,
    /// VmRSS once the subject has caught up after the storm.
    pub steady_rss_kib: Option<u64>,
    /// Seconds the subject kept working after the storm ended.
    pub catch_up_seconds: Option<f64>,
    /// Lines the subject printed (connect alerts or events, and a few status lines).
    pub lines: Option<u64>,
    /// Connects userspace handled (`sensor.connections` of `sensor-stopped`).
    pub handled: Option<u64>,
    /// Ring-buffer events lost (`sensor.lost_events_total`, or bpftrace's "Lost N events").
    pub lost: Option<u64>,
    /// Every counter of `sensor-stopped` whose name says "lost" or "dropped".
    pub loss_counters: Value,
    /// Alert latency, connect to line read, in ms (paced runs only).
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub latency_max_ms: Option<f64>,
    pub latency_samples: Option<usize>,
}

struct Bench {
    storm: PathBuf,
    curl: PathBuf,
    sensor: PathBuf,
    logs: PathBuf,
    net: Net,
}

pub fn run(root: &Path, args: &Args) -> Result<()> {
    if args.criterion {
        toolchain::ensure(false)?;
        cargo(
            root,
            &[
                "build",
                "--release",
                "-p",
                "sensor",
                "--features",
                "test-hooks",
            ],
        )?;
        cargo_env(
            root,
            &["bench", "-p", "sensor-tests", "--bench", "connect_cost"],
            &[("SENSOR_BIN", root.join("target/release/sensor"))],
        )?;
        return criterion::report(&root.join("target/criterion/connect"));
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmark loads eBPF programs and makes network namespaces: run it as root");
    }
    let rounds = args.rounds.unwrap_or(if args.quick { 2 } else { 4 });
    let seconds = args.seconds.unwrap_or(if args.quick { 2.0 } else { 3.0 });
    if !(0.2..=600.0).contains(&seconds) {
        bail!("--seconds {seconds}: give 0.2 to 600");
    }
    let latency_seconds = if args.quick { 2.0 } else { 3.0 };

    toolchain::ensure(false)?;
    // `bench-baseline` (the empty programs) is a test hook.
    cargo(
        root,
        &[
            "build",
            "--release",
            "-p",
            "sensor",
            "--features",
            "test-hooks",
        ],
    )?;
    cargo(
        root,
        &["build", "--release", "-p", "sensor-tests", "--bin", "storm"],
    )?;
    let bpftrace = !args.no_bpftrace;
    if bpftrace {
        ensure_bpftrace()?;
    }
    let mut others: Vec<(String, PathBuf)> = Vec::new();
    if !args.quick && !args.no_musl {
        others.push(("musl".into(), image::build_static(root, true)?));
    }
    for c in &args.compare {
        let (label, path) = c
            .split_once('=')
            .with_context(|| format!("--compare {c}: expected LABEL=PATH"))?;
        let path = std::fs::canonicalize(path).with_context(|| format!("--compare {c}"))?;
        others.push((label.into(), path));
    }

    // The storm runs from target/, never from a location the sensor flags (/tmp ...). A
    // copy named `curl` is the high-risk process of the scan.
    let dir = root.join("target/bench");
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let built = root.join("target/release/storm");
    let storm = dir.join("storm");
    let curl = dir.join("curl");
    for dst in [&storm, &curl] {
        // Replaced, not overwritten: a running copy would make the write fail (ETXTBSY).
        let _ = std::fs::remove_file(dst);
        std::fs::copy(&built, dst).with_context(|| format!("copying {}", built.display()))?;
    }
    let b = Bench {
        storm,
        curl,
        sensor: root.join("target/release/sensor"),
        logs,
        net: Net::new().context("making the test namespaces")?,
    };

    let wanted = |r: &Row| {
        r.subject.is_none()
            || args.only.is_empty()
            || args.only.iter().any(|o| r.name.contains(o.as_str()))
    };
    let rows: Vec<Row> = rows(&b.sensor, bpftrace, &others)
        .into_iter()
        .filter(wanted)
        .collect();
    let latency_rows: Vec<Row> = latency_rows(&b.sensor, bpftrace)
        .into_iter()
        .filter(wanted)
        .collect();
    let started = Instant::now();
    let load_before = loadavg();
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); rows.len()];
    let mut latency: Vec<Vec<Sample>> = vec![Vec::new(); latency_rows.len()];
    for round in 0..rounds {
        // Each round starts at another row, so no row always follows the same one.
        let n = rows.len();
        for k in 0..n {
            let i = (k + round as usize * 3) % n;
            let row = &rows[i];
            eprintln!(
                "xtask bench: round {}/{rounds}, {} ({:.0} s so far)",
                round + 1,
                row.label,
                started.elapsed().as_secs_f64()
            );
            let mut s = b
                .measure(row, round, seconds, None)
                .with_context(|| format!("row {} (round {})", row.name, round + 1))?;
            s.round = round + 1;
            samples[i].push(s);
        }
        for (i, row) in latency_rows.iter().enumerate() {
            eprintln!(
                "xtask bench: round {}/{rounds}, latency at 10,000/s: {}",
                round + 1,
                row.label
            );
            let mut s = b
                .measure(row, round, latency_seconds, Some(10_000))
                .with_context(|| format!("latency row {} (round {})", row.name, round + 1))?;
            s.round = round + 1;
            latency[i].push(s);
        }
    }
    // Ratios against no sensor on the same traffic, in the same round.
    let none: Vec<(Traffic, u32, f64)> = rows
        .iter()
        .zip(&samples)
        .filter(|(r, _)| r.subject.is_none())
        .flat_map(|(r, ss)| ss.iter().map(move |s| (r.traffic, s.round, s.per_second)))
        .collect();
    for (row, ss) in rows.iter().zip(samples.iter_mut()) {
        for s in ss {
            s.ratio = none
                .iter()
                .find(|(t, r, _)| *t == row.traffic && *r == s.round)
                .map(|(_, _, base)| s.per_second / base);
        }
    }
    let loss = if args.quick || args.no_loss {
        None
    } else {
        eprintln!("xtask bench: loss run, 60 s at 50,000 connects/s (scan, --fold-period 0)");
        let row = Row {
            name: "loss-scan-50k".into(),
            label: "sensor, scan, fold off, 50,000/s for 60 s".into(),
            subject: Some(sensor(&b.sensor, &["--fold-period", "0"])),
            traffic: Traffic::Scan,
        };
        Some((row.clone(), b.measure(&row, 0, 60.0, Some(50_000))?))
    };

    let doc = json!({
        "commit": git(root, &["rev-parse", "HEAD"]),
        "dirty": git(root, &["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty()),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "load_before": load_before,
        "load_after": loadavg(),
        "seconds_total": started.elapsed().as_secs_f64(),
        "rounds": rounds,
        "storm_seconds": seconds,
        "rows": report::rows_json(&rows, &samples),
        "latency": report::rows_json(&latency_rows, &latency),
        "loss": loss.as_ref().map(|(r, s)| report::rows_json(std::slice::from_ref(r), &[vec![s.clone()]])),
    });
    report::print_table(
        &rows,
        &samples,
        &latency_rows,
        &latency,
        loss.as_ref(),
        &doc,
    );
    match args.json.as_deref() {
        Some(p) if p == Path::new("-") => println!("{}", serde_json::to_string_pretty(&doc)?),
        Some(p) => {
            std::fs::write(p, serde_json::to_string_pretty(&doc)? + "\n")
                .with_context(|| format!("writing {}", p.display()))?;
            eprintln!("xtask bench: figures written to {}", p.display());
        }
        None => {}
    }
    Ok(())
}

fn sensor(bin: &Path, args: &[&str]) -> Kind {
    Kind::Sensor {
        bin: bin.to_path_buf(),
        args: args.iter().map(|a| a.to_string()).collect(),
    }
}

fn rows(bin: &Path, bpftrace: bool, others: &[(String, PathBuf)]) -> Vec<Row> {
    let row = |name: &str, label: &str, subject: Option<Kind>, traffic| Row {
        name: name.into(),
        label: label.into(),
        subject,
        traffic,
    };
    let mut rows = vec![
        row("none", "no sensor (flood)", None, Traffic::Flood),
        row("none-benign", "no sensor (benign)", None, Traffic::Benign),
        row("none-scan", "no sensor (scan)", None, Traffic::Scan),
        row(
            "empty-tp_btf",
            "empty program, tp_btf",
            Some(Kind::Baseline { btf: true }),
            Traffic::Benign,
        ),
        row(
            "empty-tracepoint",
            "empty program, tracepoint",
            Some(Kind::Baseline { btf: false }),
            Traffic::Benign,
        ),
        row(
            "benign",
            "sensor, benign",
            Some(sensor(bin, &[])),
            Traffic::Benign,
        ),
        row(
            "flood",
            "sensor, flood, fold on",
            Some(sensor(bin, &[])),
            Traffic::Flood,
        ),
        row(
            "flood-nofold",
            "sensor, flood, fold off",
            Some(sensor(bin, &["--fold-period", "0"])),
            Traffic::Flood,
        ),
        row(
            "scan",
            "sensor, scan, fold on",
            Some(sensor(bin, &[])),
            Traffic::Scan,
        ),
        row(
            "scan-nofold",
            "sensor, scan, fold off",
            Some(sensor(bin, &["--fold-period", "0"])),
            Traffic::Scan,
        ),
        row(
            "all",
            "sensor --all, benign",
            Some(sensor(bin, &["--all"])),
            Traffic::Benign,
        ),
    ];
    if bpftrace {
        rows.push(row(
            "bpftrace",
            "bpftrace printf, flood",
            Some(Kind::Bpftrace),
            Traffic::Flood,
        ));
    }
    for (label, path) in others {
        for (name, what, args, traffic) in [
            ("benign", "benign", &[][..], Traffic::Benign),
            (
                "scan-nofold",
                "scan, fold off",
                &["--fold-period", "0"][..],
                Traffic::Scan,
            ),
            ("all", "--all, benign", &["--all"][..], Traffic::Benign),
        ] {
            rows.push(row(
                &format!("{label}-{name}"),
                &format!("{label}: sensor, {what}"),
                Some(sensor(path, args)),
                traffic,
            ));
        }
    }
    rows
}

/// Paced at 10,000 connects/s, flood control off: each connect's line is timed.
fn latency_rows(bin: &Path, bpftrace: bool) -> Vec<Row> {
    let mut rows = vec![
        Row {
            name: "latency-flood-nofold".into(),
            label: "sensor, flood, fold off".into(),
            subject: Some(sensor(bin, &["--fold-period", "0"])),
            traffic: Traffic::Flood,
        },
        Row {
            name: "latency-scan-nofold".into(),
            label: "sensor, scan, fold off".into(),
            subject: Some(sensor(bin, &["--fold-period", "0"])),
            traffic: Traffic::Scan,
        },
        Row {
            name: "latency-all".into(),
            label: "sensor --all, benign".into(),
            subject: Some(sensor(bin, &["--all"])),
            traffic: Traffic::Benign,
        },
    ];
    if bpftrace {
        rows.push(Row {
            name: "latency-bpftrace".into(),
            label: "bpftrace printf, flood".into(),
            subject: Some(Kind::Bpftrace),
            traffic: Traffic::Flood,
        });
    }
    rows
}

impl Bench {
    /// Starts the row's subject, runs the storm for `seconds` (paced at `rate` connects/s
    /// if given: then each connect line's latency is measured), waits for the subject to
    /// catch up, and stops it.
    fn measure(&self, row: &Row, round: u32, seconds: f64, rate: Option<u32>) -> Result<Sample> {
        let log = self.logs.join(format!("{}-{}.stderr", row.name, round + 1));
        let running = match &row.subject {
            Some(kind) => Some(Running::start(kind, &self.sensor, &log, rate.is_some())?),
            None => None,
        };
        // Its CPU over a quiet second first: what it spends on the rest of the host (other
        // processes' lifecycle records, timers), to tell apart from what the storm costs.
        let (idle, before) = match &running {
            Some(r) => {
                let a = subject::cpu_seconds(r.pid())?;
                std::thread::sleep(Duration::from_secs(1));
                let b = subject::cpu_seconds(r.pid())?;
                (Some(b - a), Some(b))
            }
            None => (None, None),
        };
        let exe = match row.traffic {
            Traffic::Scan => &self.curl,
            _ => &self.storm,
        };
        let mut cmd = Command::new(exe);
        cmd.args(["--netns", &self.net.client_path()])
            .args(row.traffic.storm_args())
            .args(["--seconds", &seconds.to_string()]);
        if let Some(r) = rate {
            cmd.args(["--rate", &r.to_string()]);
        }
        let out = cmd
            .output()
            .with_context(|| format!("running {}", exe.display()))?;
        if !out.status.success() {
            bail!(
                "{cmd:?} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let storm: Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("storm printed {:?}", String::from_utf8_lossy(&out.stdout)))?;
        let connects = storm["connects"].as_u64().context("storm: no connects")?;
        if storm["errors"].as_u64() != Some(0) {
            eprintln!(
                "xtask bench: warning: the storm had {} errors besides RSTs (first: {})",
                storm["errors"], storm["first_error"]
            );
        }
        let mut s = Sample {
            connects,
            per_second: storm["per_second"].as_f64().unwrap_or(0.0),
            loss_counters: Value::Null,
            ..Default::default()
        };
        let Some(running) = running else {
            return Ok(s);
        };
        let pid = running.pid();
        let caught_up = subject::settle(pid, Duration::from_secs(30))?;
        let cpu = subject::cpu_seconds(pid)? - before.unwrap_or(0.0);
        let (peak, steady) = subject::memory_kib(pid)?;
        let o = running.stop(matches!(row.subject, Some(Kind::Bpftrace)))?;
        s.cpu_seconds = Some(cpu);
        s.idle_cpu_percent = idle.map(|i| i * 100.0);
        s.peak_rss_kib = Some(peak);
        s.steady_rss_kib = Some(steady);
        s.catch_up_seconds = Some(caught_up.as_secs_f64());
        s.lines = Some(o.lines);
        if let Some(stopped) = &o.stopped {
            let sensor = &stopped["sensor"];
            s.handled = sensor["connections"].as_u64();
            s.lost = sensor["lost_events_total"].as_u64();
            let mut counters = serde_json::Map::new();
            loss_counters(sensor, "", &mut counters);
            s.loss_counters = Value::Object(counters);
        } else if matches!(row.subject, Some(Kind::Bpftrace)) {
            let stderr = std::fs::read_to_string(&log).unwrap_or_default();
            s.lost = Some(o.bpftrace_lost + subject::bpftrace_lost(&stderr));
        } else if matches!(row.subject, Some(Kind::Sensor { .. })) {
            eprintln!(
                "xtask bench: warning: {} printed no sensor-stopped line; stderr:\n{}",
                row.label,
                subject::tail_of(&log)
            );
        }
        if rate.is_some() {
            let mut l = o.latencies_ns;
            l.sort_unstable();
            if !l.is_empty() {
                let at = |q: f64| l[((l.len() - 1) as f64 * q).round() as usize] as f64 / 1e6;
                s.latency_p50_ms = Some(at(0.5));
                s.latency_p99_ms = Some(at(0.99));
                s.latency_max_ms = Some(at(1.0));
            }
            s.latency_samples = Some(l.len());
        }
        Ok(s)
    }
}

/// Counters named "...lost..." or "...dropped..." anywhere in `v`, by dotted path.
fn loss_counters(v: &Value, path: &str, out: &mut serde_json::Map<String, Value>) {
    if let Value::Object(m) = v {
        for (k, v) in m {
            let p = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            if v.is_number() && (k.contains("lost") || k.contains("dropped")) {
                out.insert(p, v.clone());
            } else {
                loss_counters(v, &p, out);
            }
        }
    }
}

fn git(root: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(root)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// bpftrace, the peer row, comes from apt like every program the project drives.
fn ensure_bpftrace() -> Result<()> {
    if toolchain::have("bpftrace") {
        return Ok(());
    }
    if !toolchain::have("apt-get") {
        bail!("the bpftrace row needs bpftrace: install it, or pass --no-bpftrace");
    }
    // apt's progress goes to stderr: stdout carries the table (and `--json -`).
    let to_stderr = || -> Result<std::process::Stdio> {
        use std::os::fd::AsFd;
        Ok(std::io::stderr().as_fd().try_clone_to_owned()?.into())
    };
    toolchain::run(
        Command::new("apt-get")
            .args(["update", "-q"])
            .stdout(to_stderr()?),
    )?;
    toolchain::run(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends", "bpftrace"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(to_stderr()?),
    )
}

//! `cargo xtask bench`: the connect-storm harness. A single-threaded storm (socket, connect
//! to a closed port in a test namespace, close: tests/src/bin/storm.rs) runs beside nothing,
//! an empty program on the connect hook, the sensor on benign and hostile traffic, the
//! sensor with `--all`, and bpftrace printing the same tuple; rows interleaved, several
//! rounds, medians and spread. Then paced runs for alert latency, and a sustained run for
//! ring-buffer loss at full speed. Prints a table, the same as markdown for docs/benchmarks.md
//! (with the commit), and each figure read against issue 21's targets; `--json FILE`
//! writes every figure for comparison between commits.

mod criterion;
mod measure;
mod net;
mod report;
mod rows;
mod subject;
mod targets;
mod throughput;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context, Result, bail};
use serde_json::json;

use crate::{cargo, cargo_env, image, toolchain};
use measure::Sample;
use net::Net;
use rows::{Row, Traffic, latency_rows, rows, sensor};

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
    /// Leave out the loss run (60 s of scan at the storm's full speed).
    #[arg(long)]
    no_loss: bool,
    /// Leave out the static musl build's rows.
    #[arg(long)]
    no_musl: bool,
    /// Leave out the bulk throughput rows (iperf3, protocol on the port on and off).
    #[arg(long)]
    no_throughput: bool,
    /// Only the throughput rows (and the storm rows --only names).
    #[arg(long)]
    throughput_only: bool,
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
        crate::build_sensor_with_test_hooks(root)?;
        cargo_env(
            root,
            &["bench", "-p", "sensor-tests", "--bench", "connect_cost"],
            &[("SENSOR_BIN", root.join("target/release/t1571-sensor"))],
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
    crate::build_sensor_with_test_hooks(root)?;
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
        sensor: root.join("target/release/t1571-sensor"),
        logs,
        net: Net::new().context("making the test namespaces")?,
    };

    let wanted = |r: &Row| {
        if args.throughput_only {
            return !args.only.is_empty() && args.only.iter().any(|o| r.name.contains(o.as_str()));
        }
        r.subject.is_none()
            || args.only.is_empty()
            || args.only.iter().any(|o| r.name.contains(o.as_str()))
    };
    let off_config = dir.join("protocol-off.toml");
    std::fs::write(&off_config, "[protocol]\nenabled = false\n")
        .with_context(|| format!("writing {}", off_config.display()))?;
    let rows: Vec<Row> = rows(&b.sensor, bpftrace, &others, &off_config)
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
        eprintln!(
            "xtask bench: loss run, 60 s of scan at the storm's full speed (--fold-period 0)"
        );
        let row = Row {
            name: "loss-scan-full".into(),
            label: "sensor, scan, fold off, full speed for 60 s".into(),
            subject: Some(sensor(&b.sensor, &["--fold-period", "0"])),
            traffic: Traffic::Scan,
        };
        Some((row.clone(), b.measure(&row, 0, 60.0, None)?))
    };

    let throughput = if args.no_throughput {
        None
    } else {
        Some(throughput::run(
            &b.net,
            &b.sensor,
            &dir,
            rounds.max(3),
            seconds.max(3.0),
        )?)
    };

    let doc = json!({
        "throughput": throughput,
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
    // The same run as markdown, for the book's benchmark chapter (docs/benchmarks.md), read
    // against the targets; kept in target/bench/last-run.md too.
    let md = targets::markdown(
        &targets::Run {
            rows: &rows,
            samples: &samples,
            latency_rows: &latency_rows,
            latency: &latency,
            loss: loss.as_ref(),
        },
        &doc,
    );
    println!("\n{md}");
    let md_path = dir.join("last-run.md");
    std::fs::write(&md_path, &md).with_context(|| format!("writing {}", md_path.display()))?;
    eprintln!("xtask bench: markdown written to {}", md_path.display());
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

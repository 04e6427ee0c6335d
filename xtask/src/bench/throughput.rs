//! Bulk TCP throughput (iperf3, from apt) in the bench's namespaces, with no sensor, the
//! sensor with protocol on the port on (the default) and off (`[protocol] enabled =
//! false`): the egress hook sees every outbound segment, so this is its cost. Rows
//! interleaved per round; the ratio is against no sensor in the same round.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::{
    net::{Net, SERVER},
    subject::{Kind, Running},
};
use crate::toolchain;

const PORT: &str = "5201";

/// (name, label, sensor args; None: no sensor).
fn rows(off_config: &Path) -> Vec<(&'static str, &'static str, Option<Vec<String>>)> {
    vec![
        ("none", "no sensor", None),
        ("protocol-on", "sensor, protocol on", Some(Vec::new())),
        (
            "protocol-off",
            "sensor, protocol off",
            Some(vec![
                "--config".into(),
                off_config.to_string_lossy().into_owned(),
            ]),
        ),
    ]
}

/// One iperf3 run of `seconds` from the client namespace; bits per second received.
fn iperf(net: &Net, seconds: f64) -> Result<f64> {
    let mut server = Command::new("ip")
        .args([
            "netns",
            "exec",
            &net.server_name(),
            "iperf3",
            "-s",
            "-1",
            "-p",
            PORT,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting iperf3 -s")?;
    // The server is ready when its port answers; the client retries briefly.
    let mut out = None;
    for _ in 0..50 {
        let o = Command::new("ip")
            .args([
                "netns",
                "exec",
                &net.client_name(),
                "iperf3",
                "-J",
                "-c",
                SERVER,
            ])
            .args(["-p", PORT, "-t", &format!("{seconds}")])
            .output()
            .context("running iperf3 -c")?;
        if o.status.success() {
            out = Some(o);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = server.kill();
    let _ = server.wait();
    let out = out.context("iperf3 -c never connected")?;
    let v: Value = serde_json::from_slice(&out.stdout).context("iperf3 -J output")?;
    v.pointer("/end/sum_received/bits_per_second")
        .and_then(Value::as_f64)
        .with_context(|| {
            let text = String::from_utf8_lossy(&out.stdout);
            format!(
                "iperf3: no end.sum_received.bits_per_second (error: {}; {} bytes of output)",
                v["error"],
                text.len()
            )
        })
}

/// [`iperf`], tried up to three times (a run can fail to start while the server binds).
fn iperf_retried(net: &Net, seconds: f64) -> Result<f64> {
    let mut last = None;
    for _ in 0..3 {
        match iperf(net, seconds) {
            Ok(v) => return Ok(v),
            Err(e) => {
                eprintln!("xtask bench: warning: {e:#}; running iperf3 again");
                last = Some(e);
            }
        }
    }
    Err(last.context("iperf3 never ran")?)
}

/// Runs the rows; prints a table to stderr and returns the figures.
pub fn run(net: &Net, sensor: &Path, dir: &Path, rounds: u32, seconds: f64) -> Result<Value> {
    if !toolchain::have("iperf3") {
        bail!(
            "the throughput rows need iperf3 (cargo xtask test installs it), or pass --no-throughput"
        );
    }
    let off = dir.join("protocol-off.toml");
    std::fs::write(&off, "[protocol]\nenabled = false\n")
        .with_context(|| format!("writing {}", off.display()))?;
    let rows = rows(&off);
    let mut bps: Vec<Vec<f64>> = vec![Vec::new(); rows.len()];
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); rows.len()];
    for round in 0..rounds {
        let mut this = vec![0.0; rows.len()];
        for (i, (name, label, args)) in rows.iter().enumerate() {
            eprintln!(
                "xtask bench: throughput round {}/{rounds}, {label}",
                round + 1
            );
            let running = match args {
                Some(args) => {
                    let log = dir.join(format!("logs/throughput-{name}-{}.stderr", round + 1));
                    let kind = Kind::Sensor {
                        bin: sensor.to_path_buf(),
                        args: args.clone(),
                    };
                    Some(Running::start(&kind, sensor, &log, false)?)
                }
                None => None,
            };
            this[i] = iperf_retried(net, seconds)?;
            if let Some(r) = running {
                r.stop(false)?;
            }
            bps[i].push(this[i]);
        }
        for i in 0..rows.len() {
            ratios[i].push(this[i] / this[0]);
        }
    }
    let median = |v: &[f64]| {
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        s.get(s.len() / 2).copied().unwrap_or(0.0)
    };
    eprintln!("\nBulk TCP throughput (iperf3, {seconds} s x {rounds} rounds)");
    eprintln!("{:<24} {:>12} {:>10}", "row", "Gbit/s", "vs none");
    let mut out = Vec::new();
    for (i, (name, label, _)) in rows.iter().enumerate() {
        let (g, r) = (median(&bps[i]) / 1e9, median(&ratios[i]));
        eprintln!("{label:<24} {g:>12.3} {r:>10.3}");
        out.push(json!({
            "name": name, "label": label,
            "bits_per_second": bps[i], "ratio_vs_none": ratios[i],
            "median_gbit_s": g, "median_ratio": r,
        }));
    }
    Ok(json!({ "seconds": seconds, "rounds": rounds, "rows": out }))
}

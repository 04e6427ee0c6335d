//! `cargo xtask bench --criterion`: ratios from one criterion run of
//! tests/benches/connect_cost.rs, the connect cost against no hook and an empty BPF program
//! on each form of the connect tracepoint.

use std::path::Path;

use anyhow::{Context, Result};

/// Mean time in nanoseconds from criterion's `new/estimates.json` for one benchmark.
fn mean_ns(group: &Path, name: &str) -> Result<f64> {
    let path = group.join(name).join("new/estimates.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    v["mean"]["point_estimate"]
        .as_f64()
        .with_context(|| format!("no mean.point_estimate in {}", path.display()))
}

pub fn report(group: &Path) -> Result<()> {
    let none = mean_ns(group, "none")?;
    let empty = mean_ns(group, "empty_program")?;
    let empty_btf = mean_ns(group, "empty_program_btf")?;
    println!("connect() cost, means from this run:");
    println!(
        "  {:<26} {:>10} {:>10} {:>14} {:>18}",
        "", "per call", "vs none", "vs empty (tp)", "vs empty (tp_btf)"
    );
    let row = |name: &str, ns: f64| {
        println!(
            "  {name:<26} {:>7.2} µs {:>9.3}x {:>13.3}x {:>17.3}x",
            ns / 1e3,
            ns / none,
            ns / empty,
            ns / empty_btf
        );
    };
    row("no hook", none);
    row("empty program, tracepoint", empty);
    row("empty program, tp_btf", empty_btf);
    let mut sensor = 0.0;
    for (label, name) in [
        ("sensor (auto)", "sensor"),
        ("sensor, tp_btf", "sensor_tp_btf"),
        ("sensor, tracepoint", "sensor_tracepoint"),
        ("sensor, alerting", "sensor_alerting"),
    ] {
        let ns = mean_ns(group, name)?;
        if name == "sensor" {
            sensor = ns;
        }
        row(label, ns);
    }
    println!(
        "  tp_btf floor over no hook: {:.2} µs per connect; classic tracepoint floor: {:.2} µs",
        (empty_btf - none) / 1e3,
        (empty - none) / 1e3
    );
    println!(
        "  sensor (auto) over the tp_btf floor: {:.2} µs per connect",
        (sensor - empty_btf) / 1e3
    );
    Ok(())
}

//! Ratios from one criterion run: the sensor's connect cost against no hook and against an
//! empty BPF program on the same tracepoint.

use std::path::Path;

use anyhow::{Context, Result};

/// Mean time in nanoseconds from criterion's `new/estimates.json` for one benchmark.
fn mean_ns(group: &Path, name: &str) -> Result<f64> {
    let path = group.join(name).join("new/estimates.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    // {"mean":{"confidence_interval":{...},"point_estimate":12345.6,...},...}
    let mean = text.find("\"mean\"").context("no mean in estimates")?;
    let key = "\"point_estimate\":";
    let at = text[mean..]
        .find(key)
        .context("no point_estimate for mean")?
        + mean
        + key.len();
    let end = text[at..].find([',', '}']).context("unterminated number")? + at;
    text[at..end]
        .trim()
        .parse()
        .with_context(|| format!("bad number in {}", path.display()))
}

pub fn report(group: &Path) -> Result<()> {
    let none = mean_ns(group, "none")?;
    let empty = mean_ns(group, "empty_program")?;
    let sensor = mean_ns(group, "sensor")?;
    let alerting = mean_ns(group, "sensor_alerting")?;
    println!("connect() cost, means from this run:");
    let row = |name: &str, ns: f64| {
        println!(
            "  {name:<18} {:>8.2} µs  {:.3}x no hook  {:.3}x empty program",
            ns / 1e3,
            ns / none,
            ns / empty
        );
    };
    row("no hook", none);
    row("empty program", empty);
    row("sensor", sensor);
    row("sensor, alerting", alerting);
    println!(
        "  sensor overhead over the empty-program floor: {:.2} µs per connect ({:.2} µs when every connect alerts)",
        (sensor - empty) / 1e3,
        (alerting - empty) / 1e3
    );
    Ok(())
}

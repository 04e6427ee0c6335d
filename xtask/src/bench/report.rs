//! The benchmark's figures: medians and spread per row, printed as a table and as JSON.

use serde_json::{Value, json};

use super::{Row, Sample, subject::Kind};

pub(super) fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Median, min and max of one figure over a row's rounds.
pub(super) fn spread(ss: &[Sample], f: impl Fn(&Sample) -> Option<f64>) -> Option<(f64, f64, f64)> {
    let v: Vec<f64> = ss.iter().filter_map(f).collect();
    let min = v.iter().copied().reduce(f64::min)?;
    let max = v.iter().copied().reduce(f64::max)?;
    Some((median(v)?, min, max))
}

/// The figures derived per sample: CPU per 10,000 connects (ms), per connect and per
/// connect userspace handled (µs).
fn cpu_ms_per_10k(s: &Sample) -> Option<f64> {
    Some(s.cpu_seconds? * 1e3 / s.connects.max(1) as f64 * 1e4)
}
pub(super) fn cpu_us_per_connect(s: &Sample) -> Option<f64> {
    Some(s.cpu_seconds? * 1e6 / s.connects.max(1) as f64)
}
/// Per line the sensor wrote (`output_written`): with `--all`, the live cost of a printed
/// line (its connect's handling included). Only where it wrote at least one line per 10
/// connects: below that it is the cost of the connects, not of lines.
pub(super) fn cpu_us_per_printed(s: &Sample) -> Option<f64> {
    let w = s.written.filter(|w| *w > 0 && *w * 10 >= s.connects)?;
    Some(s.cpu_seconds? * 1e6 / w as f64)
}
pub(super) fn cpu_us_per_handled(s: &Sample) -> Option<f64> {
    let h = s.handled.filter(|h| *h > 0)?;
    Some(s.cpu_seconds? * 1e6 / h as f64)
}
pub(super) fn mib(kib: Option<u64>) -> Option<f64> {
    kib.map(|k| k as f64 / 1024.0)
}

fn subject_name(k: &Option<Kind>) -> Value {
    match k {
        None => json!("none"),
        Some(Kind::Baseline { btf }) => {
            json!(format!(
                "sensor bench-baseline{}",
                if *btf { " --btf" } else { "" }
            ))
        }
        Some(Kind::Sensor { bin, args }) => {
            json!(
                format!("{} run {}", bin.display(), args.join(" "))
                    .trim_end()
                    .to_string()
            )
        }
        Some(Kind::Bpftrace) => json!("bpftrace"),
    }
}

pub fn rows_json(rows: &[Row], samples: &[Vec<Sample>]) -> Value {
    let stat = |ss: &[Sample], f: &dyn Fn(&Sample) -> Option<f64>| {
        spread(ss, f).map(|(m, lo, hi)| json!({"median": m, "min": lo, "max": hi}))
    };
    rows.iter()
        .zip(samples)
        .map(|(r, ss)| {
            json!({
                "name": r.name,
                "label": r.label,
                "traffic": r.traffic.name(),
                "subject": subject_name(&r.subject),
                "summary": {
                    "connects_per_second": stat(ss, &|s| Some(s.per_second)),
                    "ratio_to_no_sensor": stat(ss, &|s| s.ratio),
                    "cpu_ms_per_10k_connects": stat(ss, &cpu_ms_per_10k),
                    "cpu_us_per_connect": stat(ss, &cpu_us_per_connect),
                    "cpu_us_per_handled": stat(ss, &cpu_us_per_handled),
                    "cpu_us_per_printed_line": stat(ss, &cpu_us_per_printed),
                    "lines_written": stat(ss, &|s| s.written.map(|l| l as f64)),
                    "connections_printed": stat(ss, &|s| s.printed.map(|l| l as f64)),
                    "kernel_connect_lost": stat(ss, &|s| s.kernel_connect_lost.map(|l| l as f64)),
                    "output_dropped": stat(ss, &|s| s.output_dropped.map(|l| l as f64)),
                    "idle_cpu_percent": stat(ss, &|s| s.idle_cpu_percent),
                    "peak_rss_mib": stat(ss, &|s| mib(s.peak_rss_kib)),
                    "steady_rss_mib": stat(ss, &|s| mib(s.steady_rss_kib)),
                    "lost": stat(ss, &|s| s.lost.map(|l| l as f64)),
                    "catch_up_seconds": stat(ss, &|s| s.catch_up_seconds),
                    "latency_p50_ms": stat(ss, &|s| s.latency_p50_ms),
                    "latency_p99_ms": stat(ss, &|s| s.latency_p99_ms),
                },
                "samples": ss,
            })
        })
        .collect()
}

fn cell(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.digits$}"))
}

fn range(v: Option<(f64, f64, f64)>, digits: usize) -> String {
    v.map_or("-".into(), |(m, lo, hi)| {
        format!("{m:.digits$} [{lo:.digits$}-{hi:.digits$}]")
    })
}

pub fn print_table(
    rows: &[Row],
    samples: &[Vec<Sample>],
    latency_rows: &[Row],
    latency: &[Vec<Sample>],
    loss: Option<&(Row, Sample)>,
    doc: &Value,
) {
    println!(
        "connect storm: {} rounds of {} s per row, interleaved; kernel {}, {} CPUs, load {} -> {}",
        doc["rounds"],
        doc["storm_seconds"],
        doc["kernel"].as_str().unwrap_or("?"),
        doc["cpus"],
        doc["load_before"].as_str().unwrap_or("?"),
        doc["load_after"].as_str().unwrap_or("?"),
    );
    for legend in [
        "median [min-max] over rounds; ratio: connects/s against no sensor on the same traffic, same round;",
        "CPU: the subject's utime+stime (/proc/PID/stat) over the storm and its catch-up, per 10,000 connects",
        "and per connect; µs/handled: per connect its userspace handled (sensor.connections); µs/line: per",
        "line it wrote (sensor.output_written); idle%: its CPU in the quiet second before; peak: VmHWM (max",
        "over rounds); RSS: VmRSS after catch-up; lost: sensor.lost_events_total or bpftrace's Lost (max);",
        "dropped: sensor.output_dropped (max; the harness's reader not keeping up); lines/c: stdout lines",
        "per connect; catch-up: how long it kept working after the storm",
    ] {
        println!("{legend}");
    }
    println!(
        "{:<30} {:>9} {:>20} {:>10} {:>8} {:>9} {:>8} {:>6} {:>8} {:>8} {:>9} {:>8} {:>8} {:>8}",
        "row",
        "conn/s",
        "ratio",
        "CPU ms/10k",
        "µs/conn",
        "µs/handled",
        "µs/line",
        "idle%",
        "peak MiB",
        "RSS MiB",
        "lost",
        "dropped",
        "lines/c",
        "catch-up"
    );
    for (r, ss) in rows.iter().zip(samples) {
        let lost: Option<f64> = ss
            .iter()
            .filter_map(|s| s.lost)
            .map(|l| l as f64)
            .reduce(f64::max);
        let dropped = ss
            .iter()
            .filter_map(|s| s.output_dropped)
            .map(|l| l as f64)
            .reduce(f64::max);
        println!(
            "{:<30} {:>9} {:>20} {:>10} {:>8} {:>10} {:>8} {:>6} {:>8} {:>8} {:>9} {:>8} {:>8} {:>7}s",
            r.label,
            cell(spread(ss, |s| Some(s.per_second)).map(|t| t.0), 0),
            range(spread(ss, |s| s.ratio), 3),
            cell(spread(ss, cpu_ms_per_10k).map(|t| t.0), 1),
            cell(spread(ss, cpu_us_per_connect).map(|t| t.0), 2),
            cell(spread(ss, cpu_us_per_handled).map(|t| t.0), 2),
            cell(spread(ss, cpu_us_per_printed).map(|t| t.0), 2),
            cell(spread(ss, |s| s.idle_cpu_percent).map(|t| t.0), 1),
            cell(spread(ss, |s| mib(s.peak_rss_kib)).map(|t| t.2), 1),
            cell(spread(ss, |s| mib(s.steady_rss_kib)).map(|t| t.0), 1),
            cell(lost, 0),
            cell(dropped, 0),
            cell(
                spread(ss, |s| Some(s.lines? as f64 / s.connects.max(1) as f64)).map(|t| t.0),
                3
            ),
            cell(spread(ss, |s| s.catch_up_seconds).map(|t| t.0), 1),
        );
    }
    if !latency_rows.is_empty() {
        println!();
        println!(
            "alert latency, connect to line read, paced at 10,000 connects/s (ms, median [min-max] over rounds)"
        );
        println!(
            "{:<30} {:>9} {:>22} {:>22} {:>9} {:>9} {:>9}",
            "row", "conn/s", "p50", "p99", "max", "lines", "lost"
        );
        for (r, ss) in latency_rows.iter().zip(latency) {
            let max = ss.iter().filter_map(|s| s.latency_max_ms).reduce(f64::max);
            let lines: u64 = ss.iter().filter_map(|s| s.latency_samples).sum::<usize>() as u64;
            let lost = ss.iter().filter_map(|s| s.lost).reduce(u64::max);
            println!(
                "{:<30} {:>9} {:>22} {:>22} {:>9} {:>9} {:>9}",
                r.label,
                cell(spread(ss, |s| Some(s.per_second)).map(|t| t.0), 0),
                range(spread(ss, |s| s.latency_p50_ms), 2),
                range(spread(ss, |s| s.latency_p99_ms), 2),
                cell(max, 1),
                lines,
                lost.map_or("-".into(), |l| l.to_string()),
            );
        }
    }
    if let Some((r, s)) = loss {
        println!();
        let n = |v: Option<u64>| v.map_or("?".into(), |v| v.to_string());
        println!(
            "loss run, {}: {} connects at {:.0}/s; userspace handled {}; kernel: connect records lost {}, lost_events_total {}; output: {} lines written, {} dropped (reader read {} lines, {:.0} MiB); catch-up {:.1} s; peak RSS {:.1} MiB",
            r.label,
            s.connects,
            s.per_second,
            n(s.handled),
            n(s.kernel_connect_lost),
            n(s.lost),
            n(s.written),
            n(s.output_dropped),
            n(s.lines),
            s.bytes.unwrap_or(0) as f64 / (1 << 20) as f64,
            s.catch_up_seconds.unwrap_or(0.0),
            mib(s.peak_rss_kib).unwrap_or(0.0),
        );
        println!("loss counters: {}", s.loss_counters);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
    }

    #[test]
    fn spread_skips_missing_figures() {
        let s = |r: Option<f64>| Sample {
            ratio: r,
            ..Default::default()
        };
        let ss = [s(Some(0.9)), s(None), s(Some(0.5)), s(Some(0.7))];
        assert_eq!(spread(&ss, |s| s.ratio), Some((0.7, 0.5, 0.9)));
    }
}

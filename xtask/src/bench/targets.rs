//! The run as markdown the book's benchmark chapter (docs/benchmarks.md) holds verbatim (with its commit),
//! and each figure read against issue 21's targets: met / NOT met.

use serde_json::Value;

use super::{
    Row, Sample,
    report::{cpu_us_per_connect, cpu_us_per_printed, mib, spread},
    subject::Kind,
};

/// The figures of one run, by row name.
pub struct Run<'a> {
    pub rows: &'a [Row],
    pub samples: &'a [Vec<Sample>],
    pub latency_rows: &'a [Row],
    pub latency: &'a [Vec<Sample>],
    pub loss: Option<&'a (Row, Sample)>,
}

impl Run<'_> {
    fn row(&self, name: &str) -> Option<&[Sample]> {
        let i = self.rows.iter().position(|r| r.name == name)?;
        Some(&self.samples[i])
    }
    fn ratio(&self, name: &str) -> Option<f64> {
        spread(self.row(name)?, |s| s.ratio).map(|t| t.0)
    }
}

/// One target's verdict: what it asks, what was measured, and met or not (None: the run
/// did not measure it).
#[derive(Debug, PartialEq)]
pub struct Verdict {
    pub target: String,
    pub measured: String,
    pub met: Option<bool>,
}

fn verdict(target: impl Into<String>, measured: Option<(String, bool)>) -> Verdict {
    let (measured, met) = match measured {
        Some((m, ok)) => (m, Some(ok)),
        None => ("not measured in this run".into(), None),
    };
    Verdict {
        target: target.into(),
        measured,
        met,
    }
}

fn max_of(ss: &[Sample], f: impl Fn(&Sample) -> Option<u64>) -> Option<u64> {
    ss.iter().filter_map(f).max()
}

/// Issue 21's targets, read against this run.
pub fn verdicts(run: &Run) -> Vec<Verdict> {
    let mut v = Vec::new();
    let floor = run.ratio("empty-tp_btf");
    for name in ["benign", "flood", "scan"] {
        let m = floor.zip(run.ratio(name)).map(|(f, r)| {
            let behind = (f - r) * 100.0;
            (
                format!("{r:.3} vs floor {f:.3}: {:+.1} points", -behind),
                behind <= 3.0,
            )
        });
        v.push(verdict(
            format!("`{name}` within 3 points of the empty-program floor"),
            m,
        ));
    }
    let all = run.ratio("all");
    v.push(verdict(
        "`--all` ratio ≥ 0.85",
        all.map(|a| (format!("{a:.3}"), a >= 0.85)),
    ));
    v.push(verdict(
        "`--all` ≥ 35 points ahead of bpftrace",
        all.zip(run.ratio("bpftrace")).map(|(a, b)| {
            let ahead = (a - b) * 100.0;
            (
                format!("{a:.3} vs {b:.3}: {ahead:.1} points"),
                ahead >= 35.0,
            )
        }),
    ));
    v.push(verdict(
        "printed line < 5 µs live (`--all`: CPU / lines written)",
        run.row("all")
            .and_then(|ss| spread(ss, cpu_us_per_printed))
            .map(|t| (format!("{:.2} µs", t.0), t.0 < 5.0)),
    ));
    for (r, ss) in run.rows.iter().zip(run.samples) {
        if !matches!(r.subject, Some(Kind::Sensor { .. } | Kind::Baseline { .. })) {
            continue;
        }
        let steady = spread(ss, |s| mib(s.steady_rss_kib)).map(|t| t.0);
        let peak = spread(ss, |s| mib(s.peak_rss_kib)).map(|t| t.2);
        v.push(verdict(
            format!("RSS < 20 MiB steady, < 40 MiB peak: {}", r.label),
            steady
                .zip(peak)
                .map(|(s, p)| (format!("{s:.1} / {p:.1} MiB"), s < 20.0 && p < 40.0)),
        ));
    }
    let loss = run.loss.map(|(_, s)| s);
    v.push(verdict(
        "0 kernel loss for 60 s at the storm's full speed (scan)",
        loss.and_then(|s| {
            let (c, t) = (s.kernel_connect_lost?, s.lost?);
            Some((
                format!(
                    "{:.0}/s: connect records lost {c}, lost_events_total {t}",
                    s.per_second
                ),
                c == 0 && t == 0,
            ))
        }),
    ));
    v.push(verdict(
        "the harness's reader keeps up in the loss run (output_dropped 0)",
        loss.and_then(|s| {
            let d = s.output_dropped?;
            Some((format!("{d} dropped"), d == 0))
        }),
    ));
    for (r, ss) in run.latency_rows.iter().zip(run.latency) {
        if !matches!(r.subject, Some(Kind::Sensor { .. })) {
            continue;
        }
        let worst = ss.iter().filter_map(|s| s.latency_p99_ms).reduce(f64::max);
        v.push(verdict(
            format!("alert latency p99 < 5 ms at 10,000/s: {}", r.label),
            worst.map(|w| (format!("{w:.2} ms (worst round)"), w < 5.0)),
        ));
    }
    v
}

fn cell(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.digits$}"))
}

fn count(v: Option<u64>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}

/// The run as markdown: rows, latency, loss run, and the targets.
pub fn markdown(run: &Run, doc: &Value) -> String {
    let mut m = String::new();
    let commit = doc["commit"].as_str().unwrap_or("?");
    let dirty = if doc["dirty"].as_bool() == Some(true) {
        " (with uncommitted changes)"
    } else {
        ""
    };
    m += &format!(
        "`cargo xtask bench` at commit `{}`{dirty}: kernel {}, {} CPUs, {} rounds of {} s per row, load {} -> {}, {:.0} s.\n\n",
        commit.get(..12).unwrap_or(commit),
        doc["kernel"].as_str().unwrap_or("?"),
        doc["cpus"],
        doc["rounds"],
        doc["storm_seconds"],
        doc["load_before"].as_str().unwrap_or("?"),
        doc["load_after"].as_str().unwrap_or("?"),
        doc["seconds_total"].as_f64().unwrap_or(0.0),
    );
    m += "| row | connects/s | ratio to no sensor | CPU µs / connect | CPU µs / printed line | RSS steady / peak MiB | kernel lost | output dropped |\n";
    m += "|---|---:|---:|---:|---:|---:|---:|---:|\n";
    for (r, ss) in run.rows.iter().zip(run.samples) {
        let rss = match (
            spread(ss, |s| mib(s.steady_rss_kib)),
            spread(ss, |s| mib(s.peak_rss_kib)),
        ) {
            (Some(s), Some(p)) => format!("{:.1} / {:.1}", s.0, p.2),
            _ => "-".into(),
        };
        m += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.label,
            cell(spread(ss, |s| Some(s.per_second)).map(|t| t.0), 0),
            cell(spread(ss, |s| s.ratio).map(|t| t.0), 3),
            cell(spread(ss, cpu_us_per_connect).map(|t| t.0), 2),
            cell(spread(ss, cpu_us_per_printed).map(|t| t.0), 2),
            rss,
            count(max_of(ss, |s| s.kernel_connect_lost.max(s.lost))),
            count(max_of(ss, |s| s.output_dropped)),
        );
    }
    if !run.latency_rows.is_empty() {
        m += "\n| alert latency at 10,000/s | p50 ms | p99 ms (median / worst round) | max ms |\n";
        m += "|---|---:|---:|---:|\n";
        for (r, ss) in run.latency_rows.iter().zip(run.latency) {
            let p99 = spread(ss, |s| s.latency_p99_ms);
            m += &format!(
                "| {} | {} | {} / {} | {} |\n",
                r.label,
                cell(spread(ss, |s| s.latency_p50_ms).map(|t| t.0), 2),
                cell(p99.map(|t| t.0), 2),
                cell(p99.map(|t| t.2), 2),
                cell(
                    ss.iter().filter_map(|s| s.latency_max_ms).reduce(f64::max),
                    1
                ),
            );
        }
    }
    if let Some((r, s)) = run.loss {
        m += &format!(
            "\nLoss run, {}: {} connects at {:.0}/s; kernel: connect records lost {}, lost_events_total {}; output: {} lines written, {} dropped.\n",
            r.label,
            s.connects,
            s.per_second,
            count(s.kernel_connect_lost),
            count(s.lost),
            count(s.written),
            count(s.output_dropped),
        );
    }
    m += "\n| target | measured | |\n|---|---|---|\n";
    for v in verdicts(run) {
        let met = match v.met {
            Some(true) => "met",
            Some(false) => "**NOT met**",
            None => "-",
        };
        m += &format!("| {} | {} | {met} |\n", v.target, v.measured);
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::rows::Traffic;

    fn row(name: &str, subject: Option<Kind>) -> Row {
        Row {
            name: name.into(),
            label: name.into(),
            subject,
            traffic: Traffic::Benign,
        }
    }

    fn sensor() -> Option<Kind> {
        Some(Kind::Sensor {
            bin: "t1571-sensor".into(),
            args: vec![],
        })
    }

    fn sample(ratio: f64, steady_mib: u64, peak_mib: u64) -> Sample {
        Sample {
            ratio: Some(ratio),
            steady_rss_kib: Some(steady_mib << 10),
            peak_rss_kib: Some(peak_mib << 10),
            cpu_seconds: Some(1.0),
            connects: 250_000,
            written: Some(250_000),
            ..Default::default()
        }
    }

    #[test]
    fn rows_are_read_against_the_floor_bpftrace_and_memory() {
        let rows = [
            row("empty-tp_btf", Some(Kind::Baseline { btf: true })),
            row("benign", sensor()),
            row("flood", sensor()),
            row("all", sensor()),
            row("bpftrace", Some(Kind::Bpftrace)),
        ];
        let samples = vec![
            vec![sample(0.94, 10, 30)],
            vec![sample(0.92, 10, 30)],
            vec![sample(0.90, 10, 30)],
            vec![sample(0.86, 25, 30)],
            vec![sample(0.50, 100, 100)],
        ];
        let run = Run {
            rows: &rows,
            samples: &samples,
            latency_rows: &[],
            latency: &[],
            loss: None,
        };
        let v = verdicts(&run);
        let met = |t: &str| v.iter().find(|v| v.target.contains(t)).unwrap().met;
        assert_eq!(met("`benign` within"), Some(true));
        assert_eq!(met("`flood` within"), Some(false));
        assert_eq!(met("`scan` within"), None);
        assert_eq!(met("`--all` ratio"), Some(true));
        assert_eq!(met("ahead of bpftrace"), Some(true));
        // 1 s of CPU over 250,000 lines: 4 µs.
        assert_eq!(met("printed line"), Some(true));
        assert_eq!(met("40 MiB peak: all"), Some(false));
        assert_eq!(met("40 MiB peak: benign"), Some(true));
        // bpftrace's memory is not the sensor's target.
        assert!(!v.iter().any(|v| v.target.ends_with(": bpftrace")));
        assert_eq!(met("0 kernel loss"), None);
        let md = markdown(&run, &serde_json::json!({"commit": "0123456789abcdef"}));
        assert!(md.contains("at commit `0123456789ab`"), "{md}");
        assert!(md.contains("| flood | 0 | 0.900 |"), "{md}");
        assert!(md.contains("**NOT met**"), "{md}");
    }
}

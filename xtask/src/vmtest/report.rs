//! Each kernel's block of test output and the summary table.

use std::{fmt::Write as _, path::Path, time::Duration};

use anyhow::Result;
use serde_json::Value;

use super::{
    Prepared,
    host::{Accel, Booted},
};

/// One kernel's line in the summary.
pub(super) struct Row {
    kernel: String,
    release: String,
    accel: String,
    hooks: Vec<(String, String)>,
    auto: String,
    lifecycle: String,
    result: String,
    failed: bool,
    pub(super) not_booted: bool,
    offsets: Option<Value>,
    elapsed: Duration,
}

pub(super) fn report_kernel(
    label: &str,
    vm: Option<&Prepared>,
    accel: &Accel,
    out: &Path,
    outcome: Result<Booted>,
    elapsed: Duration,
) -> Row {
    let mut row = Row {
        kernel: label.into(),
        release: vm.map(|p| p.release.clone()).unwrap_or_default(),
        accel: if vm.is_some() {
            accel.label().into()
        } else {
            "none (host)".into()
        },
        hooks: Vec::new(),
        auto: "-".into(),
        lifecycle: "-".into(),
        result: String::new(),
        failed: true,
        not_booted: false,
        offsets: None,
        elapsed,
    };
    let result = std::fs::read_to_string(out.join("result.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok());
    let Some(r) = result else {
        let started = out.join("started").exists();
        row.not_booted = vm.is_some() && !started;
        row.result = match (&outcome, started) {
            (Err(e), _) => format!("FAILED: {e:#}"),
            (Ok(Booted::TimedOut), _) => format!("FAILED: timed out after {elapsed:.0?}"),
            (Ok(Booted::Finished), true) => "FAILED: the guest runner stopped early".into(),
            (Ok(Booted::Finished), false) => "FAILED: the guest never started".into(),
        };
        println!("\n==== kernel {label}: {}", row.result);
        if let Ok(c) = std::fs::read_to_string(out.join("console.log")) {
            let tail: Vec<&str> = c.lines().rev().take(40).collect();
            println!(
                "---- last console lines ({})",
                out.join("console.log").display()
            );
            for l in tail.into_iter().rev() {
                println!("{l}");
            }
        }
        return row;
    };
    row.release = r["release"].as_str().unwrap_or_default().to_string();
    row.auto = r["auto"].as_str().unwrap_or("none").to_string();
    row.lifecycle = r["lifecycle"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "none".into());
    row.offsets = Some(r["offsets"].clone());
    let mut failed = Vec::new();
    for b in r["blocks"].as_array().into_iter().flatten() {
        let probe = b["probe"].as_str().unwrap_or("auto").to_string();
        let status = b["status"].as_str().unwrap_or("?").to_string();
        println!(
            "\n==== kernel {label} ({}), hook {probe}: {status}",
            row.release
        );
        if let Some(text) = b["log"]
            .as_str()
            .and_then(|f| std::fs::read_to_string(out.join(f)).ok())
        {
            print!("{text}");
        }
        if status.starts_with("FAIL") {
            failed.push(probe.clone());
        }
        row.hooks.push((probe, status));
    }
    if let Some(m) = r["offset_mismatches"].as_array().filter(|m| !m.is_empty()) {
        println!("\n==== kernel {label}: sensor and bpftool disagree on BTF offsets: {m:?}");
        failed.push("offsets".into());
    }
    if let Some(e) = r["offsets_error"].as_str() {
        println!("\n==== kernel {label}: BTF offsets not cross-checked: {e}");
        failed.push("offsets".into());
    }
    if matches!(outcome, Ok(Booted::TimedOut)) {
        failed.push("timeout".into());
    }
    row.failed = !failed.is_empty();
    row.result = if failed.is_empty() {
        "pass".into()
    } else {
        format!("FAIL ({})", failed.join(", "))
    };
    row
}

/// Prints the summary and the offsets table; true when anything failed.
pub(super) fn summary(rows: &[Row], host_offsets: Option<Value>, elapsed: Duration) -> bool {
    let mut s = String::new();
    let _ = writeln!(s, "\n==== vmtest summary ({elapsed:.0?})");
    let _ = writeln!(
        s,
        "| kernel | accel | hooks tried | auto chose | lifecycle hooks | result | time |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|");
    for r in rows {
        let hooks: Vec<String> = r.hooks.iter().map(|(h, st)| format!("{h}: {st}")).collect();
        let _ = writeln!(
            s,
            "| {} {} | {} | {} | {} | {} | {} | {:.0?} |",
            r.kernel,
            r.release,
            r.accel,
            if hooks.is_empty() {
                "-".into()
            } else {
                hooks.join("; ")
            },
            r.auto,
            r.lifecycle,
            r.result,
            r.elapsed
        );
    }
    // Offsets the sensor computed from each kernel's BTF, side by side.
    let mut cols: Vec<(String, Value)> = rows
        .iter()
        .filter_map(|r| {
            r.offsets
                .clone()
                .filter(Value::is_object)
                .map(|o| (format!("{} {}", r.kernel, r.release), o))
        })
        .collect();
    if let Some(h) = host_offsets.filter(|v| v["offsets"].is_object()) {
        cols.push((
            format!("host {}", h["release"].as_str().unwrap_or_default()),
            h["offsets"].clone(),
        ));
    }
    if let Some((_, first)) = cols.first() {
        let _ = writeln!(
            s,
            "\nBTF offsets read by the sensor (bytes; bpftool agreed on each unless reported above):"
        );
        let _ = writeln!(
            s,
            "| member | {} | differs |",
            cols.iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(" | ")
        );
        let _ = writeln!(s, "|---|{}---|", "---|".repeat(cols.len()));
        let names: Vec<String> = first
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        for name in names {
            let vals: Vec<String> = cols
                .iter()
                .map(|(_, o)| match &o[&name] {
                    Value::Null => "?".into(),
                    v => v.to_string(),
                })
                .collect();
            let differs = vals.windows(2).any(|w| w[0] != w[1]);
            let _ = writeln!(
                s,
                "| {name} | {} | {} |",
                vals.join(" | "),
                if differs { "yes" } else { "" }
            );
        }
    }
    println!("{s}");
    rows.iter().any(|r| r.failed)
}

//! Hostile process names, paths and command lines (newlines, quotes, backslashes,
//! terminal escapes, invalid UTF-8, a 64 KiB argv) from real processes: every stdout line
//! stays one JSON object, within the documented bounds (each string at most 4 KiB, named
//! in `sensor.truncated`; `process.args_count` keeps the real count). The Python-argv
//! case is in end_to_end.rs (`hostile_command_line_stays_one_json_line`).

use std::{
    ffi::{OsStr, OsString},
    os::unix::ffi::{OsStrExt, OsStringExt},
};

use anyhow::{Context, Result};
use sensor_tests::{Scratch, Sensor, root_or_skip};
use serde_json::Value;

const PUBLIC: &str = "203.0.113.7";
const MAX_FIELD: usize = 4096;

/// Every process string in a line is within the bound, and what was cut is named.
fn assert_bounded(v: &Value) {
    let truncated = v["sensor"]["truncated"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let named = |f: &str| truncated.iter().any(|t| t == f);
    for (field, s) in [
        ("process.executable", &v["process"]["executable"]),
        ("process.command_line", &v["process"]["command_line"]),
        (
            "process.parent.executable",
            &v["process"]["parent"]["executable"],
        ),
    ] {
        if let Some(s) = s.as_str() {
            assert!(s.len() <= MAX_FIELD, "{field}: {} bytes", s.len());
            if s.len() == MAX_FIELD {
                assert!(named(field), "{field} cut but not named: {truncated:?}");
            }
        }
    }
    for a in v["process"]["args"].as_array().into_iter().flatten() {
        let a = a.as_str().expect("args are strings");
        assert!(a.len() <= MAX_FIELD, "an argument of {} bytes", a.len());
    }
}

#[test]
fn hostile_names_paths_and_argv_stay_single_line_json_within_bounds() -> Result<()> {
    if !root_or_skip("hostile_names") {
        return Ok(());
    }
    let scratch = Scratch::new("hostile")?;
    // A copy of the connector under a name no shell would type: newline, quotes,
    // backslash, a terminal escape, a bell, and bytes that are not UTF-8.
    let name: &[u8] = b"evil\n\"{\\\"kind\\\":\\\"x\\\"}\\\x1b[2J\x07\xff\xfe.bin";
    let dir = scratch.dir.join(OsStr::from_bytes(b"dir\n\"\\\xff"));
    std::fs::create_dir_all(&dir)?;
    let exe = dir.join(OsStr::from_bytes(name));
    std::fs::copy(env!("CARGO_BIN_EXE_connector"), &exe).context("copying the connector")?;
    let net = sensor_tests::public_net(&[PUBLIC])?;
    let mut sensor = Sensor::start(&[])?;

    // 1. The hostile path, with hostile arguments after the connector's own three.
    let hostile_args: Vec<OsString> = vec![
        OsString::from("line1\nline2\r\n{\"event\":{\"kind\":\"alert\"}}"),
        OsString::from("quote\" backslash\\ tab\t nul-free \u{1b}]0;title\u{7}"),
        OsString::from_vec(b"\xff\xfe\xc3\x28 not utf-8".to_vec()),
        OsString::from("\u{202e}rtl override, DEL \u{7f}, C1 \u{85}"),
    ];
    let exe_str = exe.to_str().map(str::to_string);
    assert!(exe_str.is_none(), "the path is meant to be invalid UTF-8");
    let mut cmd = net.command_os(exe.as_os_str());
    cmd.args([PUBLIC, "4444", "1"])
        .args(&hostile_args)
        .env("CONNECTOR_LINGER_MS", "3000");
    let mut child = cmd.spawn().context("starting the hostile connector")?;
    let pid = child.id();
    child.wait()?;
    let v = sensor.connection(pid, 4444)?;
    assert_eq!(v["event"]["kind"], "alert", "{v:#}");
    let printed = v["process"]["executable"].as_str().context("executable")?;
    // Invalid bytes become U+FFFD; everything else is kept, escaped by JSON.
    assert_eq!(printed, exe.to_string_lossy(), "{v:#}");
    assert!(printed.contains('\n') && printed.contains('"') && printed.contains('\\'));
    let args = v["process"]["args"].as_array().context("process.args")?;
    assert_eq!(v["process"]["args_count"], 4 + hostile_args.len(), "{v:#}");
    for (i, a) in hostile_args.iter().enumerate() {
        assert_eq!(args[4 + i], *a.to_string_lossy(), "argument {i}: {v:#}");
    }
    assert_bounded(&v);

    // 2. A 64 KiB argv: one argument of 48 KiB and 16 of 1 KiB.
    let mut big: Vec<String> = vec!["A".repeat(48 << 10)];
    big.extend((0..16).map(|i| format!("{i:x}").repeat(1024)));
    let mut cmd = net.command_os(exe.as_os_str());
    // Alive while the sensor looks: the whole argv is in /proc (the kernel's exec record
    // holds only its first 512 bytes).
    cmd.args([PUBLIC, "4444", "1"])
        .args(&big)
        .env("CONNECTOR_LINGER_MS", "3000");
    let mut child = cmd.spawn()?;
    let pid = child.id();
    child.wait()?;
    let v = sensor.connection(pid, 4444)?;
    assert_bounded(&v);
    let line = serde_json::to_string(&v)?;
    eprintln!(
        "64 KiB argv: line of {} bytes, args_count {}, truncated {}",
        line.len(),
        v["process"]["args_count"],
        v["sensor"]["truncated"]
    );
    assert_eq!(v["process"]["args_count"], 4 + big.len(), "{v:#}");
    let cmdline = v["process"]["command_line"]
        .as_str()
        .context("command_line")?;
    assert_eq!(
        cmdline.len(),
        MAX_FIELD,
        "the command line is cut at the bound"
    );
    let truncated = v["sensor"]["truncated"].to_string();
    assert!(truncated.contains("process.command_line"), "{v:#}");
    assert!(truncated.contains("process.args"), "{v:#}");

    // Sensor::lines() fails the test if any stdout line was not one whole JSON object;
    // each connection is one line, never split by what it carries.
    let lines = sensor.lines();
    assert_eq!(
        lines
            .iter()
            .filter(|l| sensor_tests::is_connection(l, pid, 4444))
            .count(),
        1
    );
    Ok(())
}

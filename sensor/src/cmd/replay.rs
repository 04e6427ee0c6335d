//! `sensor replay`: JSON lines recorded by `sensor run --all`, re-scored with the current
//! policy through the same engine as live capture (allow rules, beacons, rollups, flood
//! control, on recorded time). The tuning loop without a kernel. Bad input never stops it:
//! malformed lines are reported on stderr with their line number and counted; lines that
//! are not connections (state, rollup, beacon events) are skipped and counted.

use std::{
    io::{BufRead, Write},
    path::PathBuf,
    sync::Arc,
};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::{
    cmd::args::EngineArgs,
    detect::{decision::StatsReport, engine::Engine, policy::Policy},
    output::{
        self, clock,
        ecs::{Action, Kind},
        recorded::{self, Recorded},
    },
};

/// `sensor replay` arguments.
#[derive(clap::Parser)]
pub struct ReplayArgs {
    /// Recorded JSON lines; `-` or nothing reads stdin.
    pub file: Option<PathBuf>,
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Also print connections that do not alert.
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// `sensor replay`: FILE, or stdin for `-` or no FILE.
pub fn run(a: ReplayArgs) -> Result<()> {
    let policy = Policy::load_or_default(a.config.as_deref())?;
    let mut engine = Engine::new(Arc::new(policy), a.engine.config(a.all));
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut err = std::io::stderr();
    match a.file.as_deref() {
        None => replay(&mut engine, std::io::stdin().lock(), &mut out, &mut err),
        Some(p) if p.as_os_str() == "-" => {
            replay(&mut engine, std::io::stdin().lock(), &mut out, &mut err)
        }
        Some(p) => {
            let f =
                std::fs::File::open(p).with_context(|| format!("cannot open {}", p.display()))?;
            replay(&mut engine, std::io::BufReader::new(f), &mut out, &mut err)
        }
    }
    .map(|_| ())
}

/// A recorded line is a few KiB at most (command lines included); anything far longer is
/// not a record, and holding it whole would let one line exhaust memory.
const MAX_LINE: usize = 1 << 20;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Summary {
    pub lines: u64,
    pub connections: u64,
    #[serde(rename = "malformed_lines")]
    pub malformed: u64,
    #[serde(rename = "skipped_lines")]
    pub skipped: u64,
    #[serde(rename = "blank_lines")]
    pub blank: u64,
}

/// `sensor.*` of the `replay-summary` line.
#[derive(Serialize, schemars::JsonSchema)]
pub struct SummaryFields<'a> {
    replay: &'a Summary,
    engine: StatsReport,
}

/// The host name replayed engine events carry.
const HOST: &str = "replay";

/// Replays `input` into `out`; problems with single lines go to `err`.
pub fn replay(
    engine: &mut Engine<Recorded>,
    mut input: impl BufRead,
    out: &mut impl Write,
    err: &mut impl Write,
) -> Result<Summary> {
    let mut s = Summary::default();
    let cx = output::Context::named(HOST);
    let mut last_ts: Option<i128> = None;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        // Bytes, not lines of String: one line of invalid UTF-8 is a malformed line, not
        // the end of the replay.
        // At most MAX_LINE bytes are held; the rest of a longer line is read and dropped.
        let n = std::io::Read::take(&mut input, MAX_LINE as u64)
            .read_until(b'\n', &mut buf)
            .context("reading the replay input")?;
        if n == 0 {
            break;
        }
        s.lines += 1;
        let lineno = s.lines;
        if buf.len() >= MAX_LINE && buf.last() != Some(&b'\n') {
            let mut skipped = 0usize;
            loop {
                let chunk = input.fill_buf().context("reading the replay input")?;
                if chunk.is_empty() {
                    break;
                }
                match chunk.iter().position(|&b| b == b'\n') {
                    Some(i) => {
                        input.consume(i + 1);
                        skipped += i + 1;
                        break;
                    }
                    None => {
                        let len = chunk.len();
                        input.consume(len);
                        skipped += len;
                    }
                }
            }
            s.malformed += 1;
            writeln!(
                err,
                "replay: line {lineno}: longer than {MAX_LINE} bytes ({} bytes), skipped",
                buf.len() + skipped
            )?;
            continue;
        }
        let text = match std::str::from_utf8(&buf) {
            Ok(t) => t.trim(),
            Err(e) => {
                s.malformed += 1;
                writeln!(err, "replay: line {lineno}: not UTF-8 ({e})")?;
                continue;
            }
        };
        if text.is_empty() {
            s.blank += 1;
            continue;
        }
        let rec = match recorded::read(text).and_then(|k| match k {
            recorded::Read::Connection(r) => Ok(Some(r.subject().map(|s| (s, r))?)),
            recorded::Read::Other => Ok(None),
        }) {
            Ok(Some(r)) => r,
            Ok(None) => {
                s.skipped += 1;
                continue;
            }
            Err(e) => {
                s.malformed += 1;
                writeln!(err, "replay: line {lineno}: {e:#}")?;
                continue;
            }
        };
        let (subject, rec) = rec;
        let o = engine.decide(&subject, move || *rec);
        s.connections += 1;
        if let Some(t) = o.lines.iter().map(|l| l.ts_ns()).max() {
            last_ts = Some(last_ts.map_or(t, |l: i128| l.max(t)));
        }
        for line in &o.lines {
            write(out, line, &cx)?;
        }
    }
    let end = last_ts.unwrap_or_else(clock::BootClock::now_unix_ns);
    for line in engine.finish(end) {
        write(out, &line, &cx)?;
    }
    let mut doc = output::status(
        Kind::State,
        Action::ReplaySummary,
        HOST,
        SummaryFields {
            replay: &s,
            engine: engine.report(),
        },
    );
    doc.host = None;
    output::write_line(out, &doc)?;
    writeln!(
        err,
        "replay: {} lines: {} connections re-scored, {} alerts, {} suppressed, {} malformed, {} skipped (not connections)",
        s.lines,
        s.connections,
        engine.stats.alerts,
        engine.stats.suppressed.values().sum::<u64>(),
        s.malformed,
        s.skipped
    )?;
    out.flush().context("writing to stdout")?;
    Ok(s)
}

/// One engine line, as the live sensor writes it.
fn write(
    out: &mut impl Write,
    line: &crate::detect::decision::Line<Recorded>,
    cx: &output::Context,
) -> Result<()> {
    let mut buf = Vec::with_capacity(4096);
    output::write(line, cx, &mut buf)?;
    buf.push(b'\n');
    out.write_all(&buf).context("writing to stdout")
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::detect::engine::Config;

    const S: i128 = 1_000_000_000;

    fn line(exe: &str, pid: u32, port: u16, ts: i128) -> String {
        json!({
            "@timestamp": clock::rfc3339(ts),
            "event": {"kind": "event", "action": "network-connect", "risk_score": 0},
            "process": {"pid": pid, "executable": exe, "thread": {"name": "x"}},
            "destination": {"ip": "203.0.113.7", "port": port},
            "host": {"name": "h"},
            "user": {"id": "0", "name": "root"},
        })
        .to_string()
    }

    fn run(policy: &str, input: &str) -> (Summary, Vec<Value>, String) {
        let mut e = Engine::new(Arc::new(Policy::parse(policy).unwrap()), Config::default());
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let s = replay(&mut e, input.as_bytes(), &mut out, &mut err).unwrap();
        let lines = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        (s, lines, String::from_utf8(err).unwrap())
    }

    #[test]
    fn malformed_lines_are_numbered_counted_and_survived() {
        let t0 = 1_800_000_000 * S;
        let input = [
            line("/usr/bin/nc", 1, 4444, t0),
            "{not json".into(),
            "[1,2]".into(),
            String::new(),
            r#"{"event":{"action":"sensor-started","kind":"state"}}"#.into(),
            r#"{"event":{"action":"network-connect"},"@timestamp":"yesterday"}"#.into(),
            r#"{"event":{"action":"network-connect"},"@timestamp":"2026-11-22T20:31:02Z","destination":{"ip":"203.0.113.7","port":99999},"process":{"name":"a"}}"#.into(),
            line("/usr/bin/nginx", 2, 80, t0 + S),
        ]
        .join("\n");
        let mut bytes = input.into_bytes();
        bytes.extend_from_slice(b"\n\xff\xfe\n");
        let mut e = Engine::new(Arc::new(Policy::default()), Config::default());
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let s = replay(&mut e, &bytes[..], &mut out, &mut err).unwrap();
        let err = String::from_utf8(err).unwrap();
        assert_eq!(
            s,
            Summary {
                lines: 9,
                connections: 2,
                malformed: 5,
                skipped: 1,
                blank: 1
            }
        );
        for n in [2, 3, 6, 7, 9] {
            assert!(err.contains(&format!("line {n}:")), "line {n}: {err}");
        }
        assert!(
            err.contains("bad @timestamp") && err.contains("bad destination.port"),
            "{err}"
        );
        let out: Vec<Value> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(out[0]["event"]["risk_score"], 3, "nc to 4444");
        let summary = out.last().unwrap();
        assert_eq!(summary["event"]["action"], "replay-summary");
        assert_eq!(summary["sensor"]["replay"]["malformed_lines"], 5);
    }

    #[test]
    fn rescoring_uses_the_current_policy() {
        let t0 = 1_800_000_000 * S;
        let input = format!(
            "{}\n{}\n",
            line("/usr/bin/curl", 1, 8088, t0),
            line("/usr/bin/node", 2, 8088, t0)
        );
        let alerts = |policy: &str| -> Vec<u64> {
            run(policy, &input)
                .1
                .iter()
                .filter(|v| v["event"]["action"] == "network-connect")
                .map(|v| v["event"]["risk_score"].as_u64().unwrap())
                .collect()
        };
        assert_eq!(alerts(""), [3, 3]);
        let allow_node = "[[allow]]\nname = \"dev\"\nexecutables = [\"node\"]\n";
        assert_eq!(alerts(allow_node), [3], "node suppressed by the new policy");
        let (_, lines, _) = run(allow_node, &input);
        let summary = lines.last().unwrap();
        assert_eq!(summary["sensor"]["engine"]["suppressed_by_rule"]["dev"], 1);
        // Recorded time drives the windows: the rollup covers the recorded instant.
        let rollup = lines
            .iter()
            .find(|v| v["event"]["action"] == "alert-rollup")
            .unwrap();
        assert_eq!(rollup["event"]["start"], clock::rfc3339(t0));
    }
    #[test]
    fn an_enormous_line_is_skipped_not_held() {
        let t0 = 1_800_000_000 * S;
        let mut input = "x".repeat(3 * MAX_LINE).into_bytes();
        input.push(b'\n');
        input.extend_from_slice(line("/usr/bin/nc", 1, 4444, t0).as_bytes());
        input.push(b'\n');
        let mut e = Engine::new(Arc::new(Policy::default()), Config::default());
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let s = replay(&mut e, &input[..], &mut out, &mut err).unwrap();
        assert_eq!((s.lines, s.malformed, s.connections), (2, 1, 1));
        let err = String::from_utf8(err).unwrap();
        assert!(err.contains("line 1: longer than"), "{err}");
    }

    /// Lines the current release wrote (the replay fixture and the fuzz corpus) still
    /// replay: every connection re-scored, nothing malformed but the cut lines they
    /// carry on purpose, and each
    /// re-scored line keeps what it had (here the recorded `sensor.probe`).
    #[rstest::rstest]
    #[case::fixture(include_str!("../../../tests/fixtures/atomic4-beacon.jsonl"), 10, 1, 2)]
    #[case::corpus_beacon(include_str!("../../fuzz/corpus/replay_line/atomic4-beacon.jsonl"), 10, 1, 2)]
    #[case::corpus_connect(include_str!("../../fuzz/corpus/replay_line/network-connect.jsonl"), 1, 0, 0)]
    #[case::corpus_started(include_str!("../../fuzz/corpus/replay_line/sensor-started.jsonl"), 0, 0, 1)]
    #[case::corpus_stopped(include_str!("../../fuzz/corpus/replay_line/sensor-stopped.jsonl"), 0, 0, 1)]
    #[case::corpus_malformed(include_str!("../../fuzz/corpus/replay_line/malformed.jsonl"), 0, 1, 0)]
    fn recorded_lines_of_this_release_replay(
        #[case] input: &str,
        #[case] connections: u64,
        #[case] malformed: u64,
        #[case] skipped: u64,
    ) {
        let (s, out, err) = run("", input);
        assert_eq!(
            (s.connections, s.malformed, s.skipped),
            (connections, malformed, skipped),
            "{err}"
        );
        for v in out
            .iter()
            .filter(|v| v["event"]["action"] == "network-connect")
        {
            assert_eq!(
                v["sensor"]["probe"], "tracepoint/sock/inet_sock_set_state",
                "{v}"
            );
            assert_eq!(
                v["sensor"]["schema_version"],
                crate::output::ecs::SCHEMA_VERSION
            );
        }
    }
}

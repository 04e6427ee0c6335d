//! The rows: what runs beside the storm, on which traffic.

use std::path::{Path, PathBuf};

use super::{net, subject::Kind};

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
    pub(super) fn name(self) -> &'static str {
        match self {
            Traffic::Flood => "flood",
            Traffic::Scan => "scan",
            Traffic::Benign => "benign",
        }
    }

    pub(super) fn storm_args(self) -> Vec<String> {
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

pub(super) fn sensor(bin: &Path, args: &[&str]) -> Kind {
    Kind::Sensor {
        bin: bin.to_path_buf(),
        args: args.iter().map(|a| a.to_string()).collect(),
    }
}

pub(super) fn rows(
    bin: &Path,
    bpftrace: bool,
    others: &[(String, PathBuf)],
    protocol_off: &Path,
) -> Vec<Row> {
    let off = protocol_off.to_string_lossy();
    let off: &str = &off;
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
        // Protocol on the port off: the rows above have it on (the default).
        row(
            "benign-protocol-off",
            "sensor, benign, protocol off",
            Some(sensor(bin, &["--config", off])),
            Traffic::Benign,
        ),
        row(
            "flood-protocol-off",
            "sensor, flood, fold on, protocol off",
            Some(sensor(bin, &["--config", off])),
            Traffic::Flood,
        ),
        row(
            "scan-nofold-protocol-off",
            "sensor, scan, fold off, protocol off",
            Some(sensor(bin, &["--fold-period", "0", "--config", off])),
            Traffic::Scan,
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
pub(super) fn latency_rows(bin: &Path, bpftrace: bool) -> Vec<Row> {
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

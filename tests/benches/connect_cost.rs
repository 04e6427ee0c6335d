//! What the sensor costs the workload it watches: the time of one outbound TCP connect
//! (socket, connect answered by a RST, close) inside a test namespace, measured side by side
//! in one run with
//! - no program on the hook (`none`),
//! - an empty BPF program on the classic tracepoint (`empty_program`) and on its BTF form
//!   (`empty_program_btf`): the floor any eBPF sensor on each hook pays,
//! - the sensor running, on ordinary traffic (port 443: seen, scored, not printed) with the
//!   hook auto selection picks (`sensor`) and forced onto each tracepoint form
//!   (`sensor_tp_btf`, `sensor_tracepoint`), and on traffic that alerts on every connect
//!   (`sensor_alerting`, port 4444, flood control off so each alert is formatted and written).
//!
//! The classic tracepoint needs tracefs: the sensor mounts it privately when it is missing,
//! and the baseline does the same.
//!
//! `cargo xtask bench --criterion` runs it (as root) and prints the ratios; the connect-storm
//! harness (`cargo xtask bench`) is the main benchmark.

use std::{
    net::{SocketAddr, TcpStream},
    os::fd::AsRawFd,
    process::{Child, Command, Stdio},
    time::Duration,
};

use criterion::{Criterion, criterion_group, criterion_main};
use sensor_tests::{Net, sensor_bin};

const SERVER: &str = "203.0.113.7";

/// Starts `sensor ARGS` and waits for its first stdout line (its "started" event).
fn start(args: &[&str]) -> Child {
    let mut child = Command::new(sensor_bin())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting the sensor");
    let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).expect("sensor start-up line");
    assert!(line.contains("started"), "unexpected first line: {line}");
    // Keep draining stdout so the sensor never blocks on a full pipe.
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    child
}

fn stop(mut child: Child) {
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
}

fn connect_cost(c: &mut Criterion) {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED connect_cost: needs root (BPF programs, network namespaces)");
        return;
    }
    let net = Net::new().expect("test namespaces");
    net.subnet("203.0.113.1", SERVER, 24)
        .expect("documentation subnet");
    // This thread moves into the client namespace: every connect below stays in the pair.
    let ns = std::fs::File::open(net.client_path()).expect("client netns");
    // SAFETY: setns on this thread with a namespace fd we hold.
    assert_eq!(
        unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) },
        0,
        "setns"
    );
    let quiet: SocketAddr = format!("{SERVER}:443").parse().expect("address");
    let alerting: SocketAddr = format!("{SERVER}:4444").parse().expect("address");
    let connect = |dst: SocketAddr| {
        let _ = TcpStream::connect_timeout(&dst, Duration::from_secs(1));
    };
    let one = || connect(quiet);

    let mut g = c.benchmark_group("connect");
    g.bench_function("none", |b| b.iter(one));
    let baseline = start(&["bench-baseline"]);
    g.bench_function("empty_program", |b| b.iter(one));
    stop(baseline);
    let baseline = start(&["bench-baseline", "--btf"]);
    g.bench_function("empty_program_btf", |b| b.iter(one));
    stop(baseline);
    for (name, probe) in [
        ("sensor", "auto"),
        ("sensor_tp_btf", "tp_btf"),
        ("sensor_tracepoint", "tracepoint"),
    ] {
        let sensor = start(&["run", "--ring-buffer-size", "16777216", "--probe", probe]);
        g.bench_function(name, |b| b.iter(one));
        stop(sensor);
    }
    // Flood control would fold these identical alerts; switch it off so every one is printed.
    let sensor = start(&[
        "run",
        "--ring-buffer-size",
        "16777216",
        "--fold-period",
        "0",
    ]);
    g.bench_function("sensor_alerting", |b| b.iter(|| connect(alerting)));
    stop(sensor);
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5)).sample_size(50);
    targets = connect_cost
}
criterion_main!(benches);

//! What one connect costs in userspace, stage by stage, and the whole path: decode a raw
//! connect record, enrich it from a warm process table (built from synthetic exec and fork
//! records, so no /proc read is in the measured loop), score and decide, render the ECS
//! line and write it to a buffer (`output::write`, as the pipeline does: the typed line
//! serialised straight into the buffer). `cargo bench -p sensor --bench userspace`; each result
//! is time per event (criterion also prints events/s).
//!
//! Two traffic shapes: hostile (a high-risk process to a known C2 port, flood control
//! off: every connect is an alert line) and benign (port 443: scored, not printed).
//! The enrichment is the pipeline's own step (`enrich::attribute`: table, image, cgroup,
//! pods, users), so the bench runs without a ring buffer or stdout and copies nothing.

use std::{hint::black_box, path::Path, sync::Arc, time::Duration};

use criterion::{Criterion, Throughput, criterion_group};
use sensor::{
    detect::{
        engine::{Config, Engine},
        policy::Policy,
        subject::Subject,
    },
    enrich::{
        Enriched,
        attribute::attribute,
        host::{HostInfo, OsInfo},
        identity::Identities,
        kubelet::Pods,
        procfs::Procfs,
        proctable::ProcTable,
        users::UserNames,
    },
    kernel::records::{self, Connection, Exec, Record, Task},
    output::{self, Context, Format, clock::BootClock},
};
use sensor_common::{AF_INET, Connect, ConnectEvent, Header, Probe, RecordKind, TASK_COMM_LEN};

const S: u64 = 1_000_000_000;

/// This process's pid: the user lookup reads its mount namespace as the live sensor does.
fn me() -> u32 {
    std::process::id()
}

fn comm(name: &str) -> [u8; TASK_COMM_LEN] {
    let mut c = [0u8; TASK_COMM_LEN];
    c[..name.len()].copy_from_slice(name.as_bytes());
    c
}

fn task(tgid: u32, start: u64, ppid: u32, pstart: u64, name: &str) -> Task {
    Task {
        tgid,
        ppid,
        uid: 0,
        gid: 0,
        boot_ns: start,
        start_time_ns: start,
        parent_start_time_ns: pstart,
        cgroup_id: 0,
        comm: name.into(),
    }
}

fn exec(t: Task, file: &str, args: &[&str]) -> Exec {
    Exec {
        task: t,
        filename: file.into(),
        args: Some(args.iter().map(|a| a.to_string()).collect()),
        exe_ino: 0,
        exe_dev: 0,
        exe_nlink: Some(1),
        exe_name: String::new(),
    }
}

/// sshd (100) > bash (200) > python3.11 (this pid), and a thousand other processes.
fn warm_table() -> ProcTable {
    let mut t = ProcTable::new(
        Procfs::new("/nonexistent-proc"),
        Identities::scan(|_| None, Path::new("/nonexistent")),
        65_536,
        Duration::from_secs(5),
    );
    t.on_exec(&exec(
        task(100, S, 1, 0, "sshd"),
        "/usr/sbin/sshd",
        &["sshd: alice"],
    ));
    t.on_fork(&task(200, 2 * S, 100, S, "sshd"));
    t.on_exec(&exec(
        task(200, 2 * S, 100, S, "bash"),
        "/usr/bin/bash",
        &["-bash"],
    ));
    for pid in 1000..2000 {
        let start = 3 * S + u64::from(pid);
        t.on_fork(&task(pid, start, 200, 2 * S, "bash"));
        t.on_exec(&exec(
            task(pid, start, 200, 2 * S, "sleep"),
            "/usr/bin/sleep",
            &["sleep", "60"],
        ));
    }
    t.on_fork(&task(me(), 9 * S, 200, 2 * S, "bash"));
    t.on_exec(&exec(
        task(me(), 9 * S, 200, 2 * S, "python3"),
        "/usr/bin/python3.11",
        &[
            "python3",
            "-c",
            "import socket; s=socket.socket(); s.connect(('203.0.113.7', 4444))",
        ],
    ));
    t
}

/// A connect record as the kernel writes it, from this pid to 203.0.113.7:`port`.
fn raw_connect(port: u16) -> Vec<u8> {
    let mut daddr = [0u8; 16];
    daddr[..4].copy_from_slice(&[203, 0, 113, 7]);
    let mut saddr = [0u8; 16];
    saddr[..4].copy_from_slice(&[203, 0, 113, 1]);
    let ev = ConnectEvent {
        header: Header {
            kind: RecordKind::Connect as u32,
            tgid: me(),
            tid: me(),
            ppid: 200,
            uid: 0,
            gid: 0,
            ktime_ns: 10 * S,
            start_time_ns: 9 * S,
            parent_start_time_ns: 2 * S,
            cgroup_id: 1,
            comm: comm("python3"),
        },
        data: Connect {
            family: AF_INET,
            dport: port,
            sport: 40_000,
            probe: Probe::TpBtf as u8,
            _pad: 0,
            daddr,
            saddr,
            exe_ino: 0,
            exe_dev: 0,
            netns: 0,
        },
    };
    // SAFETY: a view of a plain-data ABI struct (repr(C), no padding holes read back).
    unsafe {
        std::slice::from_raw_parts(
            (&ev as *const ConnectEvent).cast::<u8>(),
            std::mem::size_of::<ConnectEvent>(),
        )
    }
    .to_vec()
}

/// What enrichment needs besides the table, as `Pipeline` holds it.
struct Enricher {
    table: ProcTable,
    pods: Pods,
    users: UserNames,
    host_name: String,
    clock: BootClock,
}

impl Enricher {
    fn new() -> Self {
        Self {
            table: warm_table(),
            pods: Pods::new("/nonexistent"),
            users: UserNames::new("/etc/passwd", "/proc"),
            host_name: "bench-host".into(),
            clock: BootClock::sync(),
        }
    }

    /// The pipeline's enrich step (`enrich::attribute`), up to the engine.
    fn enrich(&mut self, conn: &Connection) -> Enriched {
        attribute(
            &mut self.table,
            &mut self.pods,
            &mut self.users,
            conn,
            self.host_name.clone(),
            self.clock.to_unix_ns(conn.boot_ns),
        )
    }
}

fn context() -> Context {
    Context::new(
        HostInfo {
            hostname: "bench-host".into(),
            id: Some("0123456789abcdef0123456789abcdef".into()),
            os: OsInfo {
                name: Some("Debian GNU/Linux".into()),
                version: Some("13".into()),
                platform: Some("debian".into()),
                family: Some("debian".into()),
                full: Some("Debian GNU/Linux 13 (trixie)".into()),
                kernel: Some("6.18.0".into()),
            },
        },
        Format::Ecs,
    )
}

fn engine() -> Engine<Enriched> {
    // Flood control off: every hostile connect is an alert line (`--fold-period 0`).
    Engine::new(
        Arc::new(Policy::default()),
        Config {
            fold_ns: 0,
            ..Config::default()
        },
    )
}

fn decode(bytes: &[u8]) -> Connection {
    match records::decode(bytes) {
        Ok(Record::Connect(c)) => c,
        other => panic!("not a connect: {other:?}"),
    }
}

/// Every stage, handed to `each` by name as a closure doing one event.
fn stages(each: &mut dyn FnMut(&str, &mut dyn FnMut())) {
    let hostile = raw_connect(4444);
    let benign = raw_connect(443);
    let cx = context();

    each("decode", &mut || {
        black_box(records::decode(black_box(&hostile)).unwrap());
    });

    let conn = decode(&hostile);
    let mut en = Enricher::new();
    each("enrich", &mut || {
        black_box(en.enrich(black_box(&conn)));
    });

    let enriched = en.enrich(&conn);
    let mut eng = engine();
    each("decide_hostile", &mut || {
        let subject = Subject::from_enriched(black_box(&enriched));
        black_box(eng.decide(&subject, || enriched.clone()));
    });
    let quiet = en.enrich(&decode(&benign));
    let mut eng = engine();
    each("decide_benign", &mut || {
        let subject = Subject::from_enriched(black_box(&quiet));
        black_box(eng.decide(&subject, || quiet.clone()));
    });

    let mut eng = engine();
    let lines = eng
        .decide(&Subject::from_enriched(&enriched), || enriched.clone())
        .lines;
    assert_eq!(lines.len(), 1, "one alert line");
    let mut buf = Vec::with_capacity(1 << 16);
    each("render_write", &mut || {
        buf.clear();
        output::write(black_box(&lines[0]), &cx, &mut buf).unwrap();
        buf.push(b'\n');
    });

    // The same line with the printed-strings cache emptied first: what every line paid
    // before the cache (redaction, argv join and bounds per line).
    each("render_write_uncached", &mut || {
        buf.clear();
        cx.clear_printed();
        output::write(black_box(&lines[0]), &cx, &mut buf).unwrap();
        buf.push(b'\n');
    });

    for (name, bytes) in [("whole_hostile", &hostile), ("whole_benign", &benign)] {
        let mut en = Enricher::new();
        let mut eng = engine();
        let mut out = Vec::with_capacity(1 << 20);
        each(name, &mut || {
            if out.len() > 1 << 20 {
                out.clear();
            }
            let conn = decode(black_box(bytes));
            let e = en.enrich(&conn);
            let subject = Subject::from_enriched(&e);
            let outcome = eng.decide(&subject, move || e);
            for line in &outcome.lines {
                output::write(line, &cx, &mut out).unwrap();
                out.push(b'\n');
            }
        });
    }
}

fn criterion_stages(c: &mut Criterion) {
    let mut g = c.benchmark_group("userspace");
    g.throughput(Throughput::Elements(1));
    stages(&mut |name, f| {
        g.bench_function(name, |b| b.iter(&mut *f));
    });
    g.finish();
}

/// This thread's CPU time, nanoseconds.
fn thread_cpu_ns() -> u128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec pointer; the clock exists on every Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u128 * 1_000_000_000 + ts.tv_nsec as u128
}

/// `SENSOR_BENCH_CPU=N`: each stage N times, timed by this thread's CPU clock rather than
/// the wall clock, so a busy machine (other jobs on the cores) does not inflate it.
/// `SENSOR_BENCH_ONLY=STAGE` runs one stage (e.g. under `perf stat -e instructions:u`).
fn cpu_table(n: u32) {
    println!("{:<16} {:>12} {:>14}", "stage", "ns/event", "events/s");
    let only = std::env::var("SENSOR_BENCH_ONLY").ok();
    stages(&mut |name, f| {
        if only.as_deref().is_some_and(|o| o != name) {
            return;
        }
        for _ in 0..n / 10 {
            f();
        }
        // The best of ten rounds: a busy machine only ever adds time.
        let round = (n / 10).max(1);
        let mut best = u128::MAX;
        for _ in 0..10 {
            let t0 = thread_cpu_ns();
            for _ in 0..round {
                f();
            }
            best = best.min(thread_cpu_ns() - t0);
        }
        let per = best as f64 / f64::from(round);
        println!("{name:<16} {per:>12.0} {:>14.0}", 1e9 / per);
    });
}

criterion_group!(benches, criterion_stages);

fn main() {
    if let Some(n) = std::env::var("SENSOR_BENCH_CPU")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        cpu_table(n);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}

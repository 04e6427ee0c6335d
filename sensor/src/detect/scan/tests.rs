//! Counting, thresholds, window end, C2 lines inside a scan, and the byte budget.

use std::net::{IpAddr, Ipv4Addr};

use rstest::rstest;

use super::*;

const S: i128 = 1_000_000_000;
const T0: i128 = 1_800_000_000 * S;

fn key(exe: &str) -> GroupKey {
    GroupKey {
        host: "h".into(),
        executable: exe.into(),
        user: "root".into(),
        parent: "/usr/bin/bash".into(),
    }
}

fn host(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(203, 0, 113, (i % 250) as u8 + 1))
}

struct Run {
    scans: Scans,
    policy: ScanPolicy,
    printed: Vec<u16>,
    summaries: Vec<Summary>,
}

impl Run {
    fn new(cfg: Config) -> Self {
        Self {
            scans: Scans::new(cfg),
            policy: ScanPolicy::default(),
            printed: Vec::new(),
            summaries: Vec::new(),
        }
    }

    fn connect(&mut self, k: &GroupKey, pid: u64, dst: IpAddr, port: u16, ts: i128) {
        let c = Connect {
            key: k,
            process: (pid, 77),
            dst,
            port,
            risk: if port == 4444 { 3 } else { 1 },
            c2: port == 4444,
            ts_ns: ts,
            n: 1,
        };
        let o = self.scans.observe(&c, &self.policy);
        if o.print {
            self.printed.push(port);
        }
        self.summaries.extend(o.summaries);
    }
}

/// More than `ports` distinct ports (or `hosts` distinct hosts) in a window is a scan: the
/// lines stop at the threshold, one summary then and one at window end count everything.
#[rstest]
#[case::ports(200, 1, 20)]
#[case::hosts(1, 200, 20)]
#[case::exactly_the_threshold_is_no_scan(20, 1, 0)]
fn a_scan_is_one_summary_with_the_counts(
    #[case] ports: u16,
    #[case] hosts: u32,
    #[case] printed: usize,
) {
    let mut r = Run::new(Config::default());
    let k = key("/usr/bin/nc");
    let mut n: u32 = 0;
    for p in 0..ports {
        for h in 0..hosts {
            r.connect(&k, 10, host(h), 10_000 + p, T0 + i128::from(n) * S / 100);
            n += 1;
        }
    }
    let scan = ports > 20 || hosts > 20;
    assert_eq!(r.printed.len(), if scan { printed } else { n as usize });
    assert_eq!(r.summaries.len(), usize::from(scan), "one at the threshold");
    r.summaries.extend(r.scans.advance(T0 + 59 * S));
    assert_eq!(r.summaries.len(), usize::from(scan), "window still open");
    r.summaries.extend(r.scans.advance(T0 + 60 * S));
    if !scan {
        assert!(r.summaries.is_empty());
        return;
    }
    let (at, end) = (&r.summaries[0], &r.summaries[1]);
    assert_eq!(at.reason, Reason::Threshold);
    assert_eq!(at.window.connections, 21);
    assert_eq!(end.reason, Reason::WindowEnd);
    assert_eq!(end.window.connections, u64::from(n));
    assert_eq!(end.window.folded, u64::from(n) - 20);
    assert_eq!(end.window.distinct_ports(), usize::from(ports));
    assert_eq!(end.window.distinct_hosts(), hosts.min(250) as usize);
    assert_eq!(end.window.sample.len(), 16);
    assert_eq!(end.risk, 2, "at least Medium");
    assert_eq!(end.window.first_ns, T0);
    assert_eq!(r.scans.windows(), 0);
    assert_eq!(r.scans.bytes(), 0);
    assert_eq!(r.scans.scans_detected, 1);
}

/// A known C2 port inside a scan: its own line the first time from each process (the
/// scanner itself, another process of the group), folded after; listed in full.
#[test]
fn a_c2_port_new_for_its_process_is_never_folded() {
    let mut r = Run::new(Config::default());
    let k = key("/usr/bin/nc");
    for p in 0..100 {
        r.connect(&k, 10, host(0), 20_000 + p, T0 + i128::from(p) * S / 10);
    }
    let before = r.printed.len();
    r.connect(&k, 10, host(0), 4444, T0 + 11 * S);
    r.connect(&k, 10, host(0), 4444, T0 + 12 * S);
    r.connect(&k, 11, host(1), 4444, T0 + 13 * S);
    assert_eq!(
        &r.printed[before..],
        [4444, 4444],
        "scanner once, the other once"
    );
    let end = r.scans.flush(T0 + 20 * S);
    assert_eq!(end[0].reason, Reason::Exit);
    assert_eq!(end[0].risk, 3, "the highest seen");
    assert_eq!(end[0].window.c2_ports, BTreeSet::from([4444]));
    assert_eq!(end[0].window.pids().collect::<Vec<_>>(), [10, 11]);
}

/// Windows are per group: two executables each under the threshold are no scan; a new
/// window after the end starts counting again.
#[test]
fn groups_and_windows_count_apart() {
    let mut r = Run::new(Config::default());
    for p in 0..20 {
        r.connect(&key("/a"), 1, host(0), 30_000 + p, T0);
        r.connect(&key("/b"), 2, host(0), 31_000 + p, T0);
    }
    for p in 20..40 {
        r.connect(&key("/a"), 1, host(0), 30_000 + p, T0 + 61 * S);
    }
    assert!(r.summaries.is_empty());
    assert_eq!(r.printed.len(), 60);
}

/// Thousands of groups of 4 KiB keys, each scanning: the table stays within its budget,
/// the oldest windows end early (counted, their summaries printed), nothing is hidden.
#[test]
fn the_byte_budget_holds_and_evictions_are_counted() {
    let cfg = Config {
        max_bytes: 256 << 10,
        ..Config::default()
    };
    let mut r = Run::new(cfg);
    let mut n = 0u64;
    for g in 0..300u32 {
        let k = key(&format!("/{g:05}{}", "x".repeat(4000)));
        for p in 0..100u16 {
            r.connect(
                &k,
                u64::from(g),
                host(g),
                1024 + p,
                T0 + i128::from(g) * S / 10,
            );
            n += 1;
            assert!(
                r.scans.bytes() <= cfg.max_bytes,
                "{} bytes",
                r.scans.bytes()
            );
        }
    }
    let ev = r.scans.evictions;
    assert!(ev.memory_budget > 0, "{ev:?}");
    r.summaries.extend(r.scans.flush(T0 + 60 * S));
    let early = r
        .summaries
        .iter()
        .filter(|s| s.reason == Reason::MemoryBudget)
        .count() as u64;
    assert_eq!(early, ev.memory_budget);
    // Every connect is on a printed line or in a final summary's fold.
    let folded: u64 = r
        .summaries
        .iter()
        .filter(|s| s.reason != Reason::Threshold)
        .map(|s| s.window.folded)
        .sum();
    assert_eq!(r.printed.len() as u64 + folded, n);
    assert_eq!(r.scans.bytes(), 0);
}

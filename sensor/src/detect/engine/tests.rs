//! The engine's memory budgets and counts under hostile sizes.

use rstest::rstest;

use super::*;
use crate::{
    enrich::{Enriched, kubelet::Pod, procfs::ProcessInfo},
    kernel::records::tests::{bytes, connect, raw},
};

const MS: i128 = 1_000_000;

/// A path of about `len` bytes: directories of 255-byte names, then `name`.
fn long_path(len: usize, tag: usize, name: &str) -> String {
    let mut p = String::new();
    while p.len() + 256 + name.len() < len {
        p.push('/');
        p.push_str(&format!("{tag:05}{}", "d".repeat(250)));
    }
    format!("{p}/{name}")
}

/// `nc` (high-risk: every non-standard port alerts) with `path_len`-byte paths; when
/// `deep`, 8 ancestors as long and an 8 KiB argv (else 2 and 3 short arguments), and a
/// pod; pid `pid`, executable variant `exe`.
fn hostile(path_len: usize, deep: bool, pid: u32, exe: usize, port: u16, ts: i128) -> Enriched {
    let mut r = raw(sensor_common::AF_INET, [0; 16], port);
    r.data.daddr[..4].copy_from_slice(&[203, 0, 113, 7]);
    r.header.tgid = pid;
    let args = if deep {
        (0..32).map(|i| format!("{i:0>255}")).collect()
    } else {
        ["nc", "203.0.113.7", "4444"]
            .map(String::from)
            .into_iter()
            .collect()
    };
    Enriched {
        conn: connect(&bytes(&r)),
        proc: ProcessInfo {
            executable: Some(long_path(path_len, exe, "nc")),
            args: Some(args),
            ppid: Some(1),
            parent_executable: Some(long_path(path_len, 1_000_000, "sh")),
            container_id: Some("c".repeat(64)),
            ancestors: (0..if deep { 8 } else { 2 })
                .map(|i| long_path(path_len, 2_000_000 + i, "sh"))
                .collect(),
            pod: Some(Pod {
                namespace: "n".repeat(63),
                name: "p".repeat(253),
                container: "k".repeat(63),
                uid: Some("u".repeat(36)),
            }),
            ..Default::default()
        },
        user_name: Some("u".repeat(32)),
        provenance: Default::default(),
        host_name: "h".repeat(64),
        attribution: None,
        unix_ns: ts,
        protocol: None,
    }
}

/// `keys` distinct (pid, port) alerts, each `repeats` times in a row within one fold period and
/// one rollup window, from one executable or one each: flood control and the rollup
/// stay within their byte budgets, and every connection is counted by the lines
/// (folded counts) and by the rollup (groups and connections in no group).
#[rstest]
#[case::short_paths(40, 1000, 3, false, false)]
#[case::hostile_one_executable(4000, 5000, 2, false, true)]
#[case::hostile_executable_per_key(4000, 5000, 2, true, true)]
fn memory_stays_in_budget_and_every_connection_is_counted(
    #[case] path_len: usize,
    #[case] keys: usize,
    #[case] repeats: usize,
    #[case] exe_per_key: bool,
    #[case] hostile_sizes: bool,
) {
    // Scans folded away would print fewer lines: these budgets are flood control's and
    // the rollup's (scans have their own tests).
    let mut policy = Policy::default();
    policy.scan.ports = 65_535;
    let policy = Arc::new(policy);
    // Non-standard ports above 1024: `nc` alerts on each.
    let ports: Vec<u16> = (20_000..)
        .filter(|p| !policy.standard_ports.contains(p))
        .take(keys)
        .collect();
    let mut e: Engine<Enriched> = Engine::new(policy, Config::default());
    let t0 = 1_800_000_000_000 * MS;
    let mut lines = Vec::new();
    let mut n = 0u64;
    for (k, &port) in ports.iter().enumerate() {
        for r in 0..repeats {
            let ts = t0 + (n as i128) * MS;
            let exe = if exe_per_key { k } else { 0 };
            let c = hostile(path_len, hostile_sizes, 1000 + k as u32, exe, port, ts);
            if hostile_sizes && n == 0 {
                assert!(c.heap_bytes() > 40 << 10, "{} bytes", c.heap_bytes());
            }
            let out = e.decide(&Subject::from_enriched(&c), || c.clone());
            assert!(out.alert, "key {k} repeat {r}");
            lines.extend(out.lines);
            n += 1;
            let s = e.report();
            assert!(s.fold_bytes <= s.fold_max_bytes, "{} bytes", s.fold_bytes);
            assert!(
                s.rollup_bytes <= s.rollup_max_bytes,
                "{} bytes",
                s.rollup_bytes
            );
        }
    }
    let before = e.report();
    lines.extend(e.finish(t0 + (n as i128) * MS));
    let printed: u64 = lines
        .iter()
        .filter_map(|l| match l {
            Line::Connection(d) => Some(d.decision.fold.map_or(1, |f| f.count)),
            _ => None,
        })
        .sum();
    assert_eq!(printed, n, "every connection is on a line");
    let rollups: Vec<_> = lines
        .iter()
        .filter_map(|l| match l {
            Line::Rollup(s) => Some(s),
            _ => None,
        })
        .collect();
    let in_groups: u64 = rollups.iter().map(|s| s.group.connections).sum();
    let no_group = rollups.first().map_or(0, |s| s.connections_in_no_group);
    assert_eq!(in_groups + no_group, n, "every connection is rolled up");
    let ev = before.fold_evictions;
    eprintln!(
        "{path_len}-byte paths, {keys} keys x {repeats}: fold {} keys {} bytes {ev:?}, \
         table full {}; rollup {} groups {} bytes, no group {:?}",
        before.fold_keys,
        before.fold_bytes,
        before.fold_table_full,
        before.rollup_groups,
        before.rollup_bytes,
        before.rollup_no_group_by_reason,
    );
    assert_eq!(ev.memory_budget > 0, hostile_sizes, "{ev:?}");
    if hostile_sizes {
        assert!(ev.held_lines_printed_early > 0, "{ev:?}");
    }
    let no = before.rollup_no_group_by_reason;
    assert_eq!(no.groups_full + no.memory_budget, no_group);
    assert_eq!(no.memory_budget > 0, exe_per_key && hostile_sizes, "{no:?}");
}

/// A flow's first bytes, decided after its connect: their own line (not folded into the
/// connect's), not a second connection, not rolled up; repeats fold among themselves.
#[test]
fn first_bytes_are_an_observation_not_a_second_connection() {
    use crate::{detect::score::protocol::tests::facts, enrich::protocol::Protocol};
    let mut e: Engine<Enriched> = Engine::new(Arc::new(Policy::default()), Config::default());
    let t0 = 1_800_000_000_000 * MS;
    let conn = hostile(40, false, 1000, 0, 8088, t0);
    let mut seen = conn.clone();
    seen.unix_ns = t0 + MS;
    seen.protocol = Some(Arc::new(facts(Protocol::Http)));
    let mut again = seen.clone();
    again.unix_ns = t0 + 2 * MS;
    let mut lines = Vec::new();
    for c in [&conn, &seen, &again] {
        let out = e.decide(&Subject::from_enriched(c), || c.clone());
        assert!(out.alert);
        lines.extend(out.lines);
    }
    let printed: Vec<bool> = lines
        .iter()
        .filter_map(|l| match l {
            Line::Connection(d) => Some(d.conn.protocol.is_some()),
            _ => None,
        })
        .collect();
    assert_eq!(
        printed,
        [false, true],
        "the connect and the first observation print"
    );
    let report = e.report();
    assert_eq!((report.connections, report.protocol_observations), (1, 2));
    let end = e.finish(t0 + 60_000 * MS);
    let folded: Vec<u64> = end
        .iter()
        .filter_map(|l| match l {
            Line::Connection(d) if d.conn.protocol.is_some() => d.decision.fold.map(|f| f.count),
            _ => None,
        })
        .collect();
    assert_eq!(
        folded,
        [1],
        "the repeat folds with the observation: {folded:?}"
    );
    let rolled: u64 = end
        .iter()
        .filter_map(|l| match l {
            Line::Rollup(s) => Some(s.group.connections),
            _ => None,
        })
        .sum();
    assert_eq!(rolled, 1, "only the connect is rolled up");
}

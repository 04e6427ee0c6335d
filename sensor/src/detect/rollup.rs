//! Rollups: the SIEM queries' `stats ... by host, process, user, parent` over a window
//! (default 300 s, Chronicle's). One summary per group with alerts, emitted when the window
//! ends, highest risk first, then most connections. Memory is bounded whatever the traffic:
//! at most `max_groups` groups and `max_distinct` destinations and ports per group, and at
//! most `max_bytes` in all (a group's key holds two paths of up to 4 KiB each); what did
//! not fit is counted and reported in the summaries, never silently dropped.

use std::{
    collections::{BTreeSet, HashMap},
    mem::size_of,
};

use serde::Serialize;

#[derive(Debug, Clone, Copy)]
pub struct Config {
    pub window_ns: i128,
    pub max_groups: usize,
    pub max_distinct: usize,
    /// Estimated bytes the open window's groups hold at most.
    pub max_bytes: usize,
}

/// Why alerts were counted in no group (`connections_in_no_group`), in connections.
#[derive(
    Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, schemars::JsonSchema,
)]
pub struct NoGroup {
    /// `max_groups` groups were open.
    pub groups_full: u64,
    /// A new group would have taken the window over `max_bytes`.
    pub memory_budget: u64,
}

/// What a group costs besides its key's strings: its slot (doubled for the map's spare room).
const GROUP_BYTES: usize = 2 * (size_of::<GroupKey>() + size_of::<Group>());
/// What one listed destination costs: its string's allocation and a B-tree slot.
const DESTINATION_BYTES: usize = 2 * size_of::<String>() + 16;
/// What one listed port costs in its B-tree.
const PORT_BYTES: usize = 2 * size_of::<u16>();

impl Default for Config {
    fn default() -> Self {
        Self {
            window_ns: 300 * 1_000_000_000,
            max_groups: 10_000,
            max_distinct: 256,
            max_bytes: 2 << 20,
        }
    }
}

/// host, executable (or name), user (name or id), parent executable; "" when unknown.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupKey {
    pub host: String,
    pub executable: String,
    pub user: String,
    pub parent: String,
}

impl GroupKey {
    fn bytes(&self) -> usize {
        self.host.len() + self.executable.len() + self.user.len() + self.parent.len()
    }
}

#[derive(Debug, Default, Clone)]
pub struct Group {
    pub connections: u64,
    pub destinations: BTreeSet<String>,
    /// Connections whose destination was new but not stored (set full).
    pub destinations_capped: u64,
    pub ports: BTreeSet<u16>,
    pub ports_capped: u64,
    pub max_risk: u8,
    /// Connections per risk 1..=3.
    pub by_risk: [u64; 3],
    pub first_ns: i128,
    pub last_ns: i128,
}

pub struct Rollup {
    cfg: Config,
    window_start: Option<i128>,
    groups: HashMap<GroupKey, Group>,
    /// Alerts that arrived when `max_groups` was reached and fit no existing group.
    capped_connections: u64,
    /// Estimated bytes the open window's groups hold.
    bytes: usize,
    pub windows_emitted: u64,
    pub capped_total: u64,
    pub no_group: NoGroup,
}

impl Rollup {
    pub fn new(cfg: Config) -> Self {
        Self {
            cfg,
            window_start: None,
            groups: HashMap::new(),
            capped_connections: 0,
            bytes: 0,
            windows_emitted: 0,
            capped_total: 0,
            no_group: NoGroup::default(),
        }
    }

    /// The open window's groups.
    pub fn groups(&self) -> usize {
        self.groups.len()
    }

    /// Estimated bytes the open window's groups hold.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn max_bytes(&self) -> usize {
        self.cfg.max_bytes
    }

    fn align(&self, ts: i128) -> i128 {
        let w = self.cfg.window_ns.max(1);
        ts.div_euclid(w) * w
    }

    /// Summaries of every window that ended at or before `now_ns`.
    pub fn advance(&mut self, now_ns: i128) -> Vec<Summary> {
        match self.window_start {
            Some(start) if now_ns >= start + self.cfg.window_ns => {
                let out = self.emit(start, start + self.cfg.window_ns, false);
                self.window_start = None;
                out
            }
            _ => Vec::new(),
        }
    }

    /// Adds one alert; returns the summaries of a window this alert closed.
    pub fn add(&mut self, key: GroupKey, dst: &str, port: u16, risk: u8, ts: i128) -> Vec<Summary> {
        self.add_n(key, dst, port, risk, ts, 1)
    }

    /// Adds `n` identical alerts (repeats the kernel folded) at `ts`.
    pub fn add_n(
        &mut self,
        key: GroupKey,
        dst: &str,
        port: u16,
        risk: u8,
        ts: i128,
        n: u64,
    ) -> Vec<Summary> {
        let out = self.advance(ts);
        if self.window_start.is_none() {
            self.window_start = Some(self.align(ts));
        }
        let full = self.groups.len() >= self.cfg.max_groups;
        // A new group's cost, with its first destination and port.
        let cost = GROUP_BYTES + key.bytes() + DESTINATION_BYTES + dst.len() + PORT_BYTES;
        let over = self.bytes + cost > self.cfg.max_bytes;
        let group = match self.groups.get_mut(&key) {
            Some(g) => g,
            None if full || over => {
                self.capped_connections += n;
                self.capped_total += n;
                if full {
                    self.no_group.groups_full += n;
                } else {
                    self.no_group.memory_budget += n;
                }
                return out;
            }
            None => {
                self.bytes += GROUP_BYTES + key.bytes();
                self.groups.entry(key).or_insert_with(|| Group {
                    first_ns: ts,
                    last_ns: ts,
                    ..Default::default()
                })
            }
        };
        group.connections += n;
        group.first_ns = group.first_ns.min(ts);
        group.last_ns = group.last_ns.max(ts);
        group.max_risk = group.max_risk.max(risk);
        if let Some(by) = usize::from(risk)
            .checked_sub(1)
            .and_then(|i| group.by_risk.get_mut(i))
        {
            *by += n;
        }
        // Past the byte budget a group still counts every connection; what it cannot
        // list is counted as not listed.
        if !group.destinations.contains(dst) {
            let cost = DESTINATION_BYTES + dst.len();
            if group.destinations.len() < self.cfg.max_distinct
                && self.bytes + cost <= self.cfg.max_bytes
            {
                group.destinations.insert(dst.to_string());
                self.bytes += cost;
            } else {
                group.destinations_capped += 1;
            }
        }
        if !group.ports.contains(&port) {
            if group.ports.len() < self.cfg.max_distinct
                && self.bytes + PORT_BYTES <= self.cfg.max_bytes
            {
                group.ports.insert(port);
                self.bytes += PORT_BYTES;
            } else {
                group.ports_capped += 1;
            }
        }
        out
    }

    /// Everything still open (at exit, or the end of a replay), marked partial.
    pub fn flush(&mut self, now_ns: i128) -> Vec<Summary> {
        match self.window_start.take() {
            Some(start) => self.emit(start, now_ns.max(start), true),
            None => Vec::new(),
        }
    }

    fn emit(&mut self, start: i128, end: i128, partial: bool) -> Vec<Summary> {
        let capped = std::mem::take(&mut self.capped_connections);
        self.bytes = 0;
        let mut groups: Vec<(GroupKey, Group)> = self.groups.drain().collect();
        groups.sort_by(|(ka, a), (kb, b)| {
            b.max_risk
                .cmp(&a.max_risk)
                .then(b.connections.cmp(&a.connections))
                .then(ka.cmp(kb))
        });
        if !groups.is_empty() || capped > 0 {
            self.windows_emitted += 1;
        }
        let n = groups.len();
        groups
            .into_iter()
            .map(|(key, group)| Summary {
                key,
                group,
                window_start_ns: start,
                window_end_ns: end,
                partial,
                groups_in_window: n,
                connections_in_no_group: capped,
            })
            .collect()
    }
}

/// One group's summary of one window (`alert-rollup`).
#[derive(Debug, Clone)]
pub struct Summary {
    pub key: GroupKey,
    pub group: Group,
    pub window_start_ns: i128,
    pub window_end_ns: i128,
    /// The window was cut short (exit, end of a replay).
    pub partial: bool,
    pub groups_in_window: usize,
    pub connections_in_no_group: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i128 = 1_000_000_000;

    fn key(exe: &str) -> GroupKey {
        GroupKey {
            host: "h".into(),
            executable: exe.into(),
            user: "root".into(),
            parent: "/usr/bin/bash".into(),
        }
    }

    #[test]
    fn property_memory_is_bounded_and_every_alert_counted() {
        // A million-destination flood from many executables: groups and sets stay capped,
        // and connections in groups plus connections in no group equal connections added.
        let cfg = Config {
            window_ns: 300 * S,
            max_groups: 50,
            max_distinct: 16,
            max_bytes: usize::MAX,
        };
        let mut r = Rollup::new(cfg);
        let mut rng = crate::testrng::Rng::new(3);
        let t0 = 1_800_000_000 * S;
        let n = 200_000u64;
        for i in 0..n {
            let exe = format!("/x/{}", rng.range(0, 99));
            let dst = format!("203.0.{}.{}", rng.range(0, 255), rng.range(0, 255));
            r.add(
                key(&exe),
                &dst,
                rng.range(1, 65535) as u16,
                1,
                t0 + i128::from(i % 299) * S,
            );
        }
        assert!(r.groups.len() <= 50);
        assert!(
            r.groups
                .values()
                .all(|g| g.destinations.len() <= 16 && g.ports.len() <= 16)
        );
        let out = r.flush(t0 + 300 * S);
        assert_eq!(out.len(), 50);
        let in_groups: u64 = out.iter().map(|v| v.group.connections).sum();
        let no_group = out[0].connections_in_no_group;
        assert!(no_group > 0);
        assert_eq!(in_groups + no_group, n);
        let g = &out[0].group;
        assert_eq!(g.destinations.len(), 16);
        assert!(g.destinations_capped > 0);
    }

    /// Groups keyed by 4 KiB executable and parent paths, 256 destinations each: the open
    /// window stays within `max_bytes`, and every alert is in a group or counted in none
    /// (by reason).
    #[rstest::rstest]
    #[case::short(20, 10, 300, 0)]
    #[case::hostile_paths(4000, 2000, 5, 1)]
    #[case::hostile_destinations(20, 200, 300, 1)]
    fn byte_budget_holds_and_every_alert_is_counted(
        #[case] path_len: usize,
        #[case] executables: u64,
        #[case] destinations: u64,
        #[case] expect_budget_cut: u64,
    ) {
        let cfg = Config {
            max_bytes: 1 << 20,
            ..Config::default()
        };
        let mut r = Rollup::new(cfg);
        let t0 = 1_800_000_000 * S;
        let mut n = 0u64;
        for e in 0..executables {
            let mut k = key(&format!("/{e:06}{}", "x".repeat(path_len)));
            k.parent = format!("/{}", "p".repeat(path_len));
            for d in 0..destinations {
                r.add(
                    k.clone(),
                    &format!("2001:db8::{:x}:{:x}", e, d),
                    (1025 + d) as u16,
                    2,
                    t0 + S,
                );
                n += 1;
                assert!(r.bytes() <= cfg.max_bytes, "{} bytes", r.bytes());
            }
        }
        let no = r.no_group;
        let out = r.flush(t0 + 300 * S);
        let in_groups: u64 = out.iter().map(|s| s.group.connections).sum();
        let no_group = out[0].connections_in_no_group;
        assert_eq!(in_groups + no_group, n);
        assert_eq!(no.groups_full + no.memory_budget, no_group);
        assert_eq!(u64::from(no.memory_budget > 0), expect_budget_cut, "{no:?}");
        let not_listed: u64 = out.iter().map(|s| s.group.destinations_capped).sum();
        assert_eq!(not_listed > 0, destinations > 256, "256 listed at most");
        assert_eq!(r.bytes(), 0);
    }
}

//! Rollups: the SIEM queries' `stats ... by host, process, user, parent` over a window
//! (default 300 s, Chronicle's). One summary per group with alerts, emitted when the window
//! ends, highest risk first, then most connections. Memory is bounded whatever the traffic:
//! at most `max_groups` groups and `max_distinct` destinations and ports per group; what did
//! not fit is counted and reported in the summaries, never silently dropped.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::{Value, json};

use crate::output::clock;

#[derive(Debug, Clone, Copy)]
pub struct Config {
    pub window_ns: i128,
    pub max_groups: usize,
    pub max_distinct: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            window_ns: 300 * 1_000_000_000,
            max_groups: 10_000,
            max_distinct: 256,
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

#[derive(Debug, Default)]
struct Group {
    connections: u64,
    destinations: BTreeSet<String>,
    /// Connections whose destination was new but not stored (set full).
    destinations_capped: u64,
    ports: BTreeSet<u16>,
    ports_capped: u64,
    max_risk: u8,
    /// Connections per risk 1..=3.
    by_risk: [u64; 3],
    first_ns: i128,
    last_ns: i128,
}

pub struct Rollup {
    cfg: Config,
    window_start: Option<i128>,
    groups: HashMap<GroupKey, Group>,
    /// Alerts that arrived when `max_groups` was reached and fit no existing group.
    capped_connections: u64,
    pub windows_emitted: u64,
    pub capped_total: u64,
}

impl Rollup {
    pub fn new(cfg: Config) -> Self {
        Self {
            cfg,
            window_start: None,
            groups: HashMap::new(),
            capped_connections: 0,
            windows_emitted: 0,
            capped_total: 0,
        }
    }

    fn align(&self, ts: i128) -> i128 {
        let w = self.cfg.window_ns.max(1);
        ts.div_euclid(w) * w
    }

    /// Summaries of every window that ended at or before `now_ns`.
    pub fn advance(&mut self, now_ns: i128) -> Vec<Value> {
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
    pub fn add(&mut self, key: GroupKey, dst: &str, port: u16, risk: u8, ts: i128) -> Vec<Value> {
        let out = self.advance(ts);
        if self.window_start.is_none() {
            self.window_start = Some(self.align(ts));
        }
        let full = self.groups.len() >= self.cfg.max_groups;
        let group = match self.groups.get_mut(&key) {
            Some(g) => g,
            None if full => {
                self.capped_connections += 1;
                self.capped_total += 1;
                return out;
            }
            None => self.groups.entry(key).or_insert_with(|| Group {
                first_ns: ts,
                last_ns: ts,
                ..Default::default()
            }),
        };
        group.connections += 1;
        group.first_ns = group.first_ns.min(ts);
        group.last_ns = group.last_ns.max(ts);
        group.max_risk = group.max_risk.max(risk);
        if let Some(n) = usize::from(risk)
            .checked_sub(1)
            .and_then(|i| group.by_risk.get_mut(i))
        {
            *n += 1;
        }
        if !group.destinations.contains(dst) {
            if group.destinations.len() < self.cfg.max_distinct {
                group.destinations.insert(dst.to_string());
            } else {
                group.destinations_capped += 1;
            }
        }
        if !group.ports.contains(&port) {
            if group.ports.len() < self.cfg.max_distinct {
                group.ports.insert(port);
            } else {
                group.ports_capped += 1;
            }
        }
        out
    }

    /// Everything still open (at exit, or the end of a replay), marked partial.
    pub fn flush(&mut self, now_ns: i128) -> Vec<Value> {
        match self.window_start.take() {
            Some(start) => self.emit(start, now_ns.max(start), true),
            None => Vec::new(),
        }
    }

    fn emit(&mut self, start: i128, end: i128, partial: bool) -> Vec<Value> {
        let capped = std::mem::take(&mut self.capped_connections);
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
            .map(|(k, g)| summary(&k, &g, start, end, partial, n, capped))
            .collect()
    }
}

fn summary(
    k: &GroupKey,
    g: &Group,
    start: i128,
    end: i128,
    partial: bool,
    groups: usize,
    capped: u64,
) -> Value {
    let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
    let name = opt(&k.executable).map(|e| crate::enrich::procfs::exe_name(&e).to_string());
    let severities: BTreeMap<&str, u64> = [("Low", 0usize), ("Medium", 1), ("High", 2)]
        .into_iter()
        .filter_map(|(n, i)| g.by_risk.get(i).filter(|&&c| c > 0).map(|&c| (n, c)))
        .collect();
    let mut doc = json!({
        "@timestamp": clock::rfc3339(end),
        "event": {
            "kind": "event",
            "category": ["network"],
            "type": ["info"],
            "action": "alert-rollup",
            "module": "sensor",
            "dataset": "sensor.rollup",
            "risk_score": g.max_risk,
            "severity": g.max_risk,
            "start": clock::rfc3339(g.first_ns),
            "end": clock::rfc3339(g.last_ns),
        },
        "host": {"name": opt(&k.host)},
        "process": {
            "executable": opt(&k.executable).filter(|e| e.contains('/')),
            "name": name,
            "parent": {"executable": opt(&k.parent)},
        },
        "user": {"name": opt(&k.user)},
        "sensor": {
            "severity": crate::output::severity(g.max_risk),
            "rollup": {
                "window_start": clock::rfc3339(start),
                "window_end": clock::rfc3339(end),
                "window_seconds": (end - start) as f64 / 1e9,
                "partial_window": partial,
                "connections": g.connections,
                "distinct_destinations": g.destinations.len(),
                "destinations": g.destinations,
                "destinations_not_listed": g.destinations_capped,
                "ports": g.ports,
                "ports_not_listed": g.ports_capped,
                "severities": severities,
                "groups_in_window": groups,
                "connections_in_no_group": capped,
            },
        },
    });
    crate::output::prune(&mut doc);
    doc
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
    fn one_summary_per_group_sorted_by_risk_then_count() {
        let mut r = Rollup::new(Config::default());
        let t0 = 1_800_000_000 * S; // aligned to 300 s
        for i in 0..5 {
            assert!(
                r.add(key("/usr/bin/systemd"), "203.0.113.1", 4444, 1, t0 + i * S)
                    .is_empty()
            );
        }
        r.add(key("/usr/bin/nc"), "203.0.113.7", 4444, 3, t0 + 10 * S);
        r.add(key("/usr/bin/nc"), "203.0.113.8", 9001, 3, t0 + 20 * S);
        r.add(key("/usr/bin/nc"), "203.0.113.8", 5555, 2, t0 + 30 * S);
        for i in 0..2 {
            r.add(key("/usr/bin/curl"), "203.0.113.9", 8088, 3, t0 + i * S);
        }
        assert!(r.advance(t0 + 299 * S).is_empty(), "window still open");
        let out = r.advance(t0 + 300 * S);
        let exes: Vec<_> = out
            .iter()
            .map(|v| v["process"]["executable"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(exes, ["/usr/bin/nc", "/usr/bin/curl", "/usr/bin/systemd"]);
        let nc = &out[0];
        assert_eq!(nc["event"]["action"], "alert-rollup");
        assert_eq!(nc["event"]["risk_score"], 3);
        assert_eq!(nc["sensor"]["severity"], "High");
        let ru = &nc["sensor"]["rollup"];
        assert_eq!(ru["connections"], 3);
        assert_eq!(ru["distinct_destinations"], 2);
        assert_eq!(ru["ports"], json!([4444, 5555, 9001]));
        assert_eq!(ru["severities"], json!({"High": 2, "Medium": 1}));
        assert_eq!(nc["event"]["start"], clock::rfc3339(t0 + 10 * S));
        assert_eq!(nc["event"]["end"], clock::rfc3339(t0 + 30 * S));
        assert_eq!(ru["window_seconds"], 300.0);
        assert_eq!(nc["user"]["name"], "root");
        assert_eq!(nc["process"]["parent"]["executable"], "/usr/bin/bash");
        assert!(r.advance(t0 + 900 * S).is_empty(), "emitted once");
    }

    #[test]
    fn an_alert_in_a_later_window_closes_the_earlier_one() {
        let mut r = Rollup::new(Config::default());
        let t0 = 1_800_000_000 * S;
        r.add(key("/a"), "203.0.113.1", 4444, 1, t0);
        let out = r.add(key("/a"), "203.0.113.1", 4444, 1, t0 + 301 * S);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0]["sensor"]["rollup"]["connections"], 1);
        let rest = r.flush(t0 + 400 * S);
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0]["sensor"]["rollup"]["partial_window"], true);
    }

    #[test]
    fn property_memory_is_bounded_and_every_alert_counted() {
        // A million-destination flood from many executables: groups and sets stay capped,
        // and connections in groups plus connections in no group equal connections added.
        let cfg = Config {
            window_ns: 300 * S,
            max_groups: 50,
            max_distinct: 16,
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
        let in_groups: u64 = out
            .iter()
            .map(|v| v["sensor"]["rollup"]["connections"].as_u64().unwrap())
            .sum();
        let no_group = out[0]["sensor"]["rollup"]["connections_in_no_group"]
            .as_u64()
            .unwrap();
        assert!(no_group > 0);
        assert_eq!(in_groups + no_group, n);
        let ru = &out[0]["sensor"]["rollup"];
        assert_eq!(ru["distinct_destinations"], 16);
        assert!(ru["destinations_not_listed"].as_u64().unwrap() > 0);
    }
}

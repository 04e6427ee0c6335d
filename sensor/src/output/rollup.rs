//! The `alert-rollup` line: one group's summary of one window.

use std::borrow::Cow;

use crate::{
    detect::{rollup::Summary, severity::Severity},
    enrich::procfs::exe_name,
    output::{
        clock,
        ecs::{
            Action, EcsLine, Event, Host, Kind, Parent, Process, Rollup, RollupLine, RollupSensor,
            User,
        },
        flow::NETWORK,
    },
};

const INFO: &[Cow<'static, str>] = &[Cow::Borrowed("info")];

pub fn line(s: &Summary) -> RollupLine<'_> {
    let (k, g) = (&s.key, &s.group);
    let (start, end) = (s.window_start_ns, s.window_end_ns);
    let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
    let severities = Severity::ALL
        .into_iter()
        .filter_map(|sev| {
            g.by_risk
                .get(sev.index())
                .filter(|&&c| c > 0)
                .map(|&c| (sev, c))
        })
        .collect();
    let mut event = Event::new(Kind::Event, Action::AlertRollup);
    event.category = Cow::Borrowed(NETWORK);
    event.types = Cow::Borrowed(INFO);
    event.dataset = Some(Cow::Borrowed("sensor.rollup"));
    event.risk_score = Some(g.max_risk);
    event.severity = Some(g.max_risk);
    event.start = Some(Cow::Owned(clock::rfc3339(g.first_ns)));
    event.end = Some(Cow::Owned(clock::rfc3339(g.last_ns)));
    let mut line = EcsLine::new(
        Cow::Owned(clock::rfc3339(end)),
        event,
        RollupSensor {
            severity: Severity::of(g.max_risk),
            rollup: Some(Rollup {
                window_start: Cow::Owned(clock::rfc3339(start)),
                window_end: Cow::Owned(clock::rfc3339(end)),
                window_seconds: (end - start) as f64 / 1e9,
                partial_window: s.partial,
                connections: g.connections,
                distinct_destinations: g.destinations.len(),
                destinations: g
                    .destinations
                    .iter()
                    .map(|d| Cow::Borrowed(d.as_str()))
                    .collect(),
                destinations_not_listed: g.destinations_capped,
                ports: g.ports.iter().copied().collect(),
                ports_not_listed: g.ports_capped,
                severities,
                groups_in_window: s.groups_in_window,
                connections_in_no_group: s.connections_in_no_group,
            }),
            extra: Default::default(),
        },
    );
    line.host = Some(Host {
        name: opt(&k.host).map(Cow::Owned),
        ..Default::default()
    });
    let parent = opt(&k.parent).map(|p| Parent {
        executable: Some(Cow::Owned(p)),
        ..Default::default()
    });
    let executable = opt(&k.executable);
    line.process = Some(Process {
        name: executable
            .as_deref()
            .map(|e| Cow::Owned(exe_name(e).to_string())),
        executable: executable.filter(|e| e.contains('/')).map(Cow::Owned),
        parent,
        ..Default::default()
    })
    .filter(|p| *p != Process::default());
    line.user = opt(&k.user).map(group_user);
    line
}

/// A group's user: the uid when the kernel gave one (`user.id`), else the name recorded.
pub(crate) fn group_user(u: String) -> User<'static> {
    match u.parse::<u32>() {
        Ok(_) => User {
            id: Some(Cow::Owned(u)),
            ..Default::default()
        },
        Err(_) => User {
            name: Some(Cow::Owned(u)),
            ..Default::default()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::rollup::{Config, GroupKey, Rollup};

    use serde_json::{Value, json};

    /// The rollup's summaries as printed.
    fn printed(s: Vec<Summary>) -> Vec<Value> {
        s.iter()
            .map(|s| serde_json::to_value(line(s)).unwrap())
            .collect()
    }

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
        let out = printed(r.advance(t0 + 300 * S));
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
        let out = printed(r.add(key("/a"), "203.0.113.1", 4444, 1, t0 + 301 * S));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0]["sensor"]["rollup"]["connections"], 1);
        let rest = printed(r.flush(t0 + 400 * S));
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0]["sensor"]["rollup"]["partial_window"], true);
    }
}

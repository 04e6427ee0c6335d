//! The detection engine after scoring, shared by `sensor run` and `sensor replay`. Per
//! connection it scores the subject with the policy in force, applies allow rules (counted
//! per rule), beacon detection (which raises risk), rollups and flood control, and returns
//! typed lines to print. Time is the connection's own timestamp, so replays window by
//! recorded time. The connection itself (`C`: the enriched connection live, the recorded
//! line in a replay) is carried through untouched for output to render.

use std::{collections::BTreeMap, sync::Arc};

use serde::Serialize;

use crate::{
    detect::{
        beacon,
        decision::{BeaconAlert, Decided, Decision, EngineSummary, HeapBytes, Line, StatsReport},
        fold,
        policy::Policy,
        rollup::{self, GroupKey},
        scan, score,
        subject::Subject,
    },
    kernel::records::Flow,
};

#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// Also return connections that did not alert (`--all`), as `event.kind: "event"`.
    pub all: bool,
    pub rollup: rollup::Config,
    pub beacon: beacon::Config,
    /// Flood-control period; 0 disables folding.
    pub fold_ns: i128,
    pub fold_max_keys: usize,
    /// Estimated bytes flood control holds at most (keys and held repeats).
    pub fold_max_bytes: usize,
    pub scan: scan::Config,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            all: false,
            rollup: rollup::Config::default(),
            beacon: beacon::Config::default(),
            fold_ns: 10 * 1_000_000_000,
            fold_max_keys: 4096,
            fold_max_bytes: 4 << 20,
            scan: scan::Config::default(),
        }
    }
}

/// A beacon raises risk by one, to at least Low and at most High.
pub fn beacon_risk(base: u8) -> u8 {
    base.saturating_add(1).clamp(1, 3)
}

#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub connections: u64,
    /// First-bytes observations of connections (not counted in `connections`).
    pub protocol_observations: u64,
    pub alerts: u64,
    pub suppressed: BTreeMap<String, u64>,
    pub beaconing_connections: u64,
}

/// The settings in force, for the `sensor-started` event.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct ConfigReport {
    pub rollup_window_seconds: f64,
    pub fold_period_seconds: f64,
    pub beacon_min_connections: usize,
    pub beacon_max_keys: usize,
    pub allow_rules: usize,
    pub all_connections: bool,
}

pub struct Engine<C> {
    /// The one policy in force; a reload swaps the whole `Arc` at once.
    policy: Arc<Policy>,
    cfg: Config,
    rollup: rollup::Rollup,
    beacons: beacon::Detector,
    fold: fold::Fold<Decided<C>>,
    scans: scan::Scans,
    pub stats: Stats,
    /// Suppressions since the last periodic summary, and that summary window's start.
    window_suppressed: BTreeMap<String, u64>,
    window_connections: u64,
    summary_start: Option<i128>,
}

/// What one connection produced.
pub struct Outcome<C> {
    pub lines: Vec<Line<C>>,
    pub alert: bool,
}

impl<C: Clone + HeapBytes> Engine<C> {
    pub fn new(policy: Arc<Policy>, cfg: Config) -> Self {
        Self {
            policy,
            rollup: rollup::Rollup::new(cfg.rollup),
            beacons: beacon::Detector::new(cfg.beacon),
            fold: fold::Fold::new(
                cfg.fold_ns,
                cfg.fold_max_keys,
                cfg.fold_max_bytes,
                Decided::<C>::bytes,
            ),
            scans: scan::Scans::new(cfg.scan),
            cfg,
            stats: Stats::default(),
            window_suppressed: BTreeMap::new(),
            window_connections: 0,
            summary_start: None,
        }
    }

    /// The settings in force.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The policy in force.
    pub fn policy(&self) -> &Arc<Policy> {
        &self.policy
    }

    /// Swaps the policy (SIGHUP). Counters, rollups and beacon history carry over.
    pub fn set_policy(&mut self, policy: Arc<Policy>) {
        self.policy = policy;
    }

    /// Beacon keys tracked now.
    pub fn beacon_keys(&self) -> usize {
        self.beacons.keys()
    }

    /// Decides one connection; `make_conn` (what output renders) is only called when a
    /// line will be printed, so the many connections that print nothing cost nothing more.
    pub fn decide(&mut self, subject: &Subject, make_conn: impl FnOnce() -> C) -> Outcome<C> {
        self.decide_n(subject, 1, make_conn)
    }

    /// Decides `n` identical connections at once. `n > 1`: repeats the kernel folded
    /// (collected from its fold table), `subject` standing for the last of them. They are
    /// counted, rolled up and folded like `n` connections, but not fed to beacon
    /// detection: the kernel folds a connect only within a burst of the key's previous
    /// one, which the beacon detector counts as the same beat anyway.
    pub fn decide_n(
        &mut self,
        subject: &Subject,
        n: u64,
        make_conn: impl FnOnce() -> C,
    ) -> Outcome<C> {
        let verdict = score::score(&self.policy, subject);
        let mut lines = self.tick(subject.ts_ns);
        // A flow's first bytes (protocol on the port) come after its connect: an
        // observation of that connection, not a second one. Not counted, not fed to beacon,
        // scan or rollup; folded only with observations like it, never into the connect.
        let observation = subject.protocol.as_ref().map(|p| p.protocol);
        if observation.is_some() {
            self.stats.protocol_observations += n;
        } else {
            self.stats.connections += n;
            self.window_connections += n;
        }
        if self.summary_start.is_none() {
            self.summary_start = Some(subject.ts_ns);
        }
        let allow_name = self.policy.allow_rule(subject).map(|r| r.name.clone());
        // Beacons are looked for where T1571 lives: non-standard ports, destinations that
        // are not excluded, traffic no allow rule vouches for.
        // Listens and inbound connections are not the process's own beaconing.
        let beacon = if n == 1
            && observation.is_none()
            && verdict.excluded_by.is_none()
            && matches!(subject.flow, Flow::Connect | Flow::Udp)
            && allow_name.is_none()
            && !self.policy.standard_ports.contains(&subject.port)
        {
            self.beacons
                .observe((subject.who(), subject.dst, subject.port), subject.ts_ns)
        } else {
            None
        };
        let mut risk = verdict.risk;
        if beacon.is_some() {
            risk = beacon_risk(risk);
            self.stats.beaconing_connections += 1;
        }
        let suppressed = match (&allow_name, risk > 0) {
            (Some(name), true) => {
                *self.stats.suppressed.entry(name.clone()).or_default() += n;
                *self.window_suppressed.entry(name.clone()).or_default() += n;
                true
            }
            _ => false,
        };
        let final_risk = if suppressed { 0 } else { risk };
        let alert = final_risk > 0;
        if !alert && !self.cfg.all {
            return Outcome { lines, alert };
        }
        let decision = Decision {
            verdict,
            risk: final_risk,
            allow_rule: allow_name.filter(|_| suppressed),
            beacon,
            fold: None,
        };
        if !alert {
            let conn = make_conn();
            let decided = Decided {
                conn,
                ts_ns: subject.ts_ns,
                decision,
            };
            lines.push(Line::Connection(Box::new(decided)));
            return Outcome { lines, alert };
        }
        self.stats.alerts += n;
        let key = GroupKey {
            host: subject.host_name.clone().unwrap_or_default(),
            executable: subject.who(),
            // The uid the kernel gave, not the name: a short-lived process's name may be
            // unresolvable (its mount namespace gone), which must not split its group.
            user: subject
                .user_id
                .map(|u| u.to_string())
                .or_else(|| subject.user_name.clone())
                .unwrap_or_default(),
            parent: subject.parent_executable.clone().unwrap_or_default(),
        };
        let dst = subject.dst.to_string();
        // Scan counting needs the key before the rollup takes it.
        let print = observation.is_some() || self.scan(subject, &key, &decision, n, &mut lines);
        if observation.is_none() {
            lines.extend(
                self.rollup
                    .add_n(key, &dst, subject.port, final_risk, subject.ts_ns, n)
                    .into_iter()
                    .map(|s| Line::Rollup(Box::new(s))),
            );
        }
        if !print {
            return Outcome { lines, alert };
        }
        let decided = Decided {
            conn: make_conn(),
            ts_ns: subject.ts_ns,
            decision,
        };
        let beacon_alert = decided.decision.beacon.as_ref().filter(|b| b.new).map(|b| {
            Line::Beacon(Box::new(BeaconAlert {
                conn: decided.conn.clone(),
                ts_ns: subject.ts_ns,
                beacon: b.clone(),
                risk: final_risk,
            }))
        });
        // NUL never occurs in a path or a comm: an observation's key is never a connect's.
        let who = match observation {
            Some(p) => format!("{}\0{}", subject.who(), p.as_str()),
            None => subject.who(),
        };
        let fold_key = (subject.pid, who, subject.dst, subject.port);
        let folded = self.fold.offer_n(fold_key, decided, subject.ts_ns, n);
        lines.extend(folded.into_iter().map(folded_line));
        lines.extend(beacon_alert);
        Outcome { lines, alert }
    }

    /// Counts an alerting connect towards a scan (connects only); whether it still gets
    /// its own line. A new beacon is never folded away.
    fn scan(
        &mut self,
        subject: &Subject,
        key: &GroupKey,
        d: &Decision,
        n: u64,
        lines: &mut Vec<Line<C>>,
    ) -> bool {
        if !matches!(subject.flow, Flow::Connect | Flow::Udp) {
            return true;
        }
        let c = scan::Connect {
            key,
            process: (subject.pid.unwrap_or(0), subject.process_start.unwrap_or(0)),
            dst: subject.dst,
            port: subject.port,
            risk: d.risk,
            c2: self.policy.c2_ports.contains(&subject.port),
            ts_ns: subject.ts_ns,
            n,
        };
        let seen = self.scans.observe(&c, &self.policy.scan);
        lines.extend(seen.summaries.into_iter().map(|s| Line::Scan(Box::new(s))));
        seen.print || d.beacon.as_ref().is_some_and(|b| b.new)
    }

    /// Lines due by `now_ns`: ended flood-control periods, ended rollup windows, and the
    /// periodic engine summary.
    pub fn tick(&mut self, now_ns: i128) -> Vec<Line<C>> {
        let mut out: Vec<Line<C>> = self
            .fold
            .advance(now_ns)
            .into_iter()
            .map(folded_line)
            .collect();
        out.extend(
            self.rollup
                .advance(now_ns)
                .into_iter()
                .map(|s| Line::Rollup(Box::new(s))),
        );
        out.extend(
            self.scans
                .advance(now_ns)
                .into_iter()
                .map(|s| Line::Scan(Box::new(s))),
        );
        if let Some(start) = self.summary_start
            && now_ns >= start + self.cfg.rollup.window_ns
        {
            out.push(self.summary(now_ns));
            self.summary_start = None;
        }
        out
    }

    /// Everything held, at exit or the end of a replay.
    pub fn finish(&mut self, now_ns: i128) -> Vec<Line<C>> {
        let mut out: Vec<Line<C>> = self.fold.flush().into_iter().map(folded_line).collect();
        out.extend(
            self.rollup
                .flush(now_ns)
                .into_iter()
                .map(|s| Line::Rollup(Box::new(s))),
        );
        out.extend(
            self.scans
                .flush(now_ns)
                .into_iter()
                .map(|s| Line::Scan(Box::new(s))),
        );
        out.push(self.summary(now_ns));
        self.summary_start = None;
        out
    }

    fn summary(&mut self, now_ns: i128) -> Line<C> {
        Line::Summary(Box::new(EngineSummary {
            at_ns: now_ns,
            stats: self.report(),
            window_connections: std::mem::take(&mut self.window_connections),
            window_suppressed: std::mem::take(&mut self.window_suppressed),
        }))
    }

    /// The settings in force, for the `sensor-started` event.
    pub fn config_report(&self) -> ConfigReport {
        ConfigReport {
            rollup_window_seconds: self.cfg.rollup.window_ns as f64 / 1e9,
            fold_period_seconds: self.cfg.fold_ns as f64 / 1e9,
            beacon_min_connections: self.cfg.beacon.min_connections,
            beacon_max_keys: self.cfg.beacon.max_keys,
            allow_rules: self.policy.allow.len(),
            all_connections: self.cfg.all,
        }
    }

    /// Cumulative counters.
    pub fn report(&self) -> StatsReport {
        StatsReport {
            connections: self.stats.connections,
            protocol_observations: self.stats.protocol_observations,
            alerts: self.stats.alerts,
            suppressed_total: self.stats.suppressed.values().sum::<u64>(),
            suppressed_by_rule: self.stats.suppressed.clone(),
            allow_rules: self.policy.allow.len(),
            beacons_detected: self.beacons.detected,
            beaconing_connections: self.stats.beaconing_connections,
            beacon_keys: self.beacons.keys(),
            beacon_keys_evicted: self.beacons.evicted(),
            beacon_keys_evicted_by_reason: self.beacons.evictions(),
            beacon_tracker_bytes: self.beacons.bytes(),
            folded_connections: self.fold.folded,
            fold_table_full: self.fold.table_full,
            fold_keys: self.fold.keys(),
            fold_bytes: self.fold.bytes(),
            fold_max_bytes: self.cfg.fold_max_bytes,
            fold_evictions: self.fold.evictions,
            rollup_windows: self.rollup.windows_emitted,
            rollup_connections_in_no_group: self.rollup.capped_total,
            rollup_groups: self.rollup.groups(),
            rollup_bytes: self.rollup.bytes(),
            rollup_max_bytes: self.rollup.max_bytes(),
            rollup_no_group_by_reason: self.rollup.no_group,
            scans_detected: self.scans.scans_detected,
            scan_connects_folded: self.scans.connects_folded,
            scan_windows: self.scans.windows(),
            scan_bytes: self.scans.bytes(),
            scan_max_bytes: self.scans.max_bytes(),
            scan_evictions: self.scans.evictions,
        }
    }
}

/// An alert leaving flood control, with its fold count.
fn folded_line<C>(f: fold::Folded<Decided<C>>) -> Line<C> {
    let mut d = f.item;
    d.decision.fold = Some(f.state);
    Line::Connection(Box::new(d))
}

#[cfg(test)]
mod tests;

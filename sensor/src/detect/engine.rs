//! The detection engine between scoring and output, shared by `sensor run` and
//! `sensor replay`. Per connection it applies allow rules (counted per rule), beacon
//! detection (which raises risk), rollups and flood control, and returns the lines to print.
//! Live, `pipeline` hands it the enriched record and its verdict, and the ECS document is
//! built only for lines that are printed; a replayed line is read back into the same `Obs`
//! and re-scored by name with the current policy. Time is the connection's own timestamp,
//! so replays window by recorded time.

use std::{collections::BTreeMap, net::IpAddr};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::{
    detect::beacon::{self, Beacon},
    detect::fold,
    detect::policy::{Policy, Subject},
    detect::rollup::{self, GroupKey},
    detect::score::{self, Verdict},
    enrich::procfs::exe_name,
    output,
    output::clock,
};

pub const BEACON_RULE_NAME: &str = "Regular-interval beaconing on a non-standard port";
pub const BEACON_RULE_ID: &str = "t1571-beacon";

#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// Also return connections that did not alert (`--all`), as `event.kind: "event"`.
    pub all: bool,
    pub rollup: rollup::Config,
    pub beacon: beacon::Config,
    /// Flood-control period; 0 disables folding.
    pub fold_ns: i128,
    pub fold_max_keys: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            all: false,
            rollup: rollup::Config::default(),
            beacon: beacon::Config::default(),
            fold_ns: 10 * 1_000_000_000,
            fold_max_keys: 4096,
        }
    }
}

/// One connection as far as it is known, read back from its ECS document.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Obs {
    pub ts_ns: i128,
    pub executable: Option<String>,
    /// `comm` (process.thread.name) or process.name: for scoring only when the executable
    /// is unknown.
    pub comm: Option<String>,
    pub pid: Option<u64>,
    pub parent_executable: Option<String>,
    pub user_id: Option<u32>,
    pub user_name: Option<String>,
    pub dst: Option<IpAddr>,
    pub port: u16,
    pub host_name: Option<String>,
    pub container_id: Option<String>,
    pub kubernetes_namespace: Option<String>,
    /// The high-risk entry the executable is a copy of (`sensor.process.content_match`).
    pub content_match: Option<String>,
    /// A suspicious executable location (`sensor.process.location`).
    pub location: Option<String>,
}

fn text(doc: &Value, path: &[&str]) -> Option<String> {
    let mut v = doc;
    for p in path {
        v = v.get(p)?;
    }
    v.as_str().map(str::to_string)
}

/// Whether a document is a connection (as opposed to state, rollup or beacon lines).
pub fn is_connection(doc: &Value) -> bool {
    doc.pointer("/event/action").and_then(Value::as_str) == Some("network-connect")
}

impl Obs {
    pub fn from_doc(doc: &Value) -> Result<Self> {
        let ts = doc
            .get("@timestamp")
            .and_then(Value::as_str)
            .context("no @timestamp")?;
        let ts_ns = clock::parse_rfc3339(ts).with_context(|| format!("bad @timestamp {ts:?}"))?;
        let ip = doc
            .pointer("/destination/ip")
            .and_then(Value::as_str)
            .context("no destination.ip")?;
        let dst: IpAddr = ip
            .parse()
            .with_context(|| format!("bad destination.ip {ip:?}"))?;
        let port = doc
            .pointer("/destination/port")
            .and_then(Value::as_u64)
            .context("no destination.port")?;
        let port = u16::try_from(port).with_context(|| format!("bad destination.port {port}"))?;
        // user.id is a string in ECS; a number is accepted too.
        let user_id = match doc.pointer("/user/id") {
            Some(Value::String(s)) => s.parse().ok(),
            Some(Value::Number(n)) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
            _ => None,
        };
        let executable = text(doc, &["process", "executable"]);
        let comm =
            text(doc, &["process", "thread", "name"]).or_else(|| text(doc, &["process", "name"]));
        if executable.is_none() && comm.is_none() {
            bail!("neither process.executable nor process.name");
        }
        Ok(Self {
            ts_ns,
            executable,
            comm,
            pid: doc.pointer("/process/pid").and_then(Value::as_u64),
            parent_executable: text(doc, &["process", "parent", "executable"]),
            user_id,
            user_name: text(doc, &["user", "name"]),
            dst: Some(dst),
            port,
            host_name: text(doc, &["host", "name"]),
            content_match: text(doc, &["sensor", "process", "content_match"]),
            location: text(doc, &["sensor", "process", "location"]),
            container_id: text(doc, &["container", "id"]),
            kubernetes_namespace: text(doc, &["orchestrator", "namespace"]),
        })
    }

    /// The live path: straight from the enriched record, no JSON round trip. Must agree
    /// with `from_doc(record.to_json())` (tested).
    pub fn from_record(r: &output::Record) -> Self {
        Self {
            ts_ns: r.unix_ns,
            executable: r.proc.executable.clone(),
            comm: Some(r.conn.comm.clone()),
            pid: Some(u64::from(r.conn.tgid)),
            parent_executable: r.proc.parent_executable.clone(),
            user_id: Some(r.conn.uid),
            user_name: r.user_name.map(str::to_string),
            dst: Some(r.conn.dst),
            port: r.conn.dport,
            host_name: Some(r.host_name.to_string()),
            container_id: r.proc.container_id.clone(),
            kubernetes_namespace: None,
            content_match: r.proc.content_match.clone(),
            location: r.proc.location.map(str::to_string),
        }
    }

    pub fn subject(&self) -> Subject<'_> {
        Subject {
            executable: self.executable.as_deref(),
            parent_executable: self.parent_executable.as_deref(),
            user_id: self.user_id,
            user_name: self.user_name.as_deref(),
            dst: self.dst,
            port: self.port,
            container_id: self.container_id.as_deref(),
            kubernetes_namespace: self.kubernetes_namespace.as_deref(),
            host_name: self.host_name.as_deref(),
            unix_s: i64::try_from(self.ts_ns.div_euclid(1_000_000_000)).ok(),
        }
    }

    /// The executable, else `comm`: what beacons and flood control key on.
    fn who(&self) -> String {
        self.executable
            .clone()
            .or_else(|| self.comm.clone())
            .unwrap_or_default()
    }
}

/// The list verdict for a connection known only from its document (replay, explain).
/// Live connections come with the pipeline's verdict instead, which may know more.
pub fn list_verdict(policy: &Policy, obs: &Obs) -> Verdict {
    let comm = obs.comm.as_deref().unwrap_or("");
    let dst = obs
        .dst
        .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    let subject = score::Subject {
        exe_name: obs.executable.as_deref().map(exe_name),
        comm,
        content_match: obs.content_match.as_deref(),
        location: obs.location.as_deref(),
    };
    score::score(policy, &subject, dst, obs.port)
}

/// A beacon raises risk by one, to at least Low and at most High.
pub fn beacon_risk(base: u8) -> u8 {
    base.saturating_add(1).clamp(1, 3)
}

#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub connections: u64,
    pub alerts: u64,
    pub suppressed: BTreeMap<String, u64>,
    pub beaconing_connections: u64,
}

pub struct Engine {
    policy: Policy,
    cfg: Config,
    rollup: rollup::Rollup,
    beacons: beacon::Detector,
    fold: fold::Fold,
    pub stats: Stats,
    /// Suppressions since the last periodic summary, and that summary window's start.
    window_suppressed: BTreeMap<String, u64>,
    window_connections: u64,
    summary_start: Option<i128>,
    host_name: String,
}

/// What one connection produced.
pub struct Outcome {
    pub lines: Vec<Value>,
    pub alert: bool,
}

impl Engine {
    pub fn new(policy: Policy, cfg: Config, host_name: String) -> Self {
        Self {
            policy,
            rollup: rollup::Rollup::new(cfg.rollup),
            beacons: beacon::Detector::new(cfg.beacon),
            fold: fold::Fold::new(cfg.fold_ns, cfg.fold_max_keys),
            cfg,
            stats: Stats::default(),
            window_suppressed: BTreeMap::new(),
            window_connections: 0,
            summary_start: None,
            host_name,
        }
    }

    /// Swaps the policy (SIGHUP). Counters, rollups and beacon history carry over.
    pub fn set_policy(&mut self, policy: Policy) {
        self.policy = policy;
    }

    /// Scores one connection document and returns what to print.
    pub fn connection(&mut self, doc: Value) -> Result<Outcome> {
        let obs = Obs::from_doc(&doc)?;
        let verdict = list_verdict(&self.policy, &obs);
        Ok(self.process(&obs, &verdict, move || doc))
    }

    /// Decides one connection; `make_doc` (its ECS document) is only called when a line
    /// will be printed, so the many connections that print nothing cost no JSON.
    pub fn process(
        &mut self,
        obs: &Obs,
        verdict: &Verdict,
        make_doc: impl FnOnce() -> Value,
    ) -> Outcome {
        let mut lines = self.tick(obs.ts_ns);
        self.stats.connections += 1;
        self.window_connections += 1;
        if self.summary_start.is_none() {
            self.summary_start = Some(obs.ts_ns);
        }
        let allow_name = self
            .policy
            .allow_rule(&obs.subject())
            .map(|r| r.name.clone());
        let dst = obs.dst.map(|d| d.to_string()).unwrap_or_default();
        // Beacons are looked for where T1571 lives: non-standard ports, destinations that
        // are not excluded, traffic no allow rule vouches for.
        let beacon = if verdict.excluded_by.is_none()
            && allow_name.is_none()
            && !self.policy.standard_ports.contains(&obs.port)
        {
            self.beacons
                .observe((obs.who(), dst.clone(), obs.port), obs.ts_ns)
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
                *self.stats.suppressed.entry(name.clone()).or_default() += 1;
                *self.window_suppressed.entry(name.clone()).or_default() += 1;
                true
            }
            _ => false,
        };
        let final_risk = if suppressed { 0 } else { risk };
        let alert = final_risk > 0;
        if !alert && !self.cfg.all {
            return Outcome { lines, alert };
        }
        let mut doc = make_doc();
        output::set_verdict(
            &mut doc,
            verdict,
            final_risk,
            suppressed.then_some(allow_name.as_deref()).flatten(),
            beacon.as_ref().map(beacon_fields),
        );
        if alert {
            self.stats.alerts += 1;
            let key = GroupKey {
                host: obs.host_name.clone().unwrap_or_default(),
                executable: obs.who(),
                user: obs
                    .user_name
                    .clone()
                    .or_else(|| obs.user_id.map(|u| u.to_string()))
                    .unwrap_or_default(),
                parent: obs.parent_executable.clone().unwrap_or_default(),
            };
            lines.extend(self.rollup.add(key, &dst, obs.port, final_risk, obs.ts_ns));
            let beacon_doc = beacon
                .as_ref()
                .filter(|b| b.new)
                .map(|b| beacon_event(&doc, b, final_risk));
            lines.extend(
                self.fold
                    .offer((obs.pid, obs.who(), dst, obs.port), doc, obs.ts_ns),
            );
            lines.extend(beacon_doc);
        } else {
            lines.push(doc);
        }
        Outcome { lines, alert }
    }

    /// Lines due by `now_ns`: ended flood-control periods, ended rollup windows, and the
    /// periodic engine summary.
    pub fn tick(&mut self, now_ns: i128) -> Vec<Value> {
        let mut out = self.fold.advance(now_ns);
        out.extend(self.rollup.advance(now_ns));
        if let Some(start) = self.summary_start
            && now_ns >= start + self.cfg.rollup.window_ns
        {
            out.push(self.summary("engine-summary", now_ns));
            self.summary_start = None;
        }
        out
    }

    /// Everything held, at exit or the end of a replay.
    pub fn finish(&mut self, now_ns: i128) -> Vec<Value> {
        let mut out = self.fold.flush();
        out.extend(self.rollup.flush(now_ns));
        out.push(self.summary("engine-summary", now_ns));
        self.summary_start = None;
        out
    }

    fn summary(&mut self, action: &str, now_ns: i128) -> Value {
        let window = json!({
            "connections": std::mem::take(&mut self.window_connections),
            "suppressed_by_rule": std::mem::take(&mut self.window_suppressed),
        });
        let mut doc = output::status(
            "state",
            action,
            &self.host_name,
            json!({"engine": self.stats_json(), "window": window}),
        );
        if let Some(o) = doc.as_object_mut() {
            o.insert("@timestamp".into(), json!(clock::rfc3339(now_ns)));
        }
        doc
    }

    /// The settings in force, for the `sensor-started` event.
    pub fn config_json(&self) -> Value {
        json!({
            "rollup_window_seconds": self.cfg.rollup.window_ns as f64 / 1e9,
            "fold_period_seconds": self.cfg.fold_ns as f64 / 1e9,
            "beacon_min_connections": self.cfg.beacon.min_connections,
            "allow_rules": self.policy.allow.len(),
            "all_connections": self.cfg.all,
        })
    }

    /// Cumulative counters: the `sensor-stopped` event and summaries carry them.
    pub fn stats_json(&self) -> Value {
        json!({
            "connections": self.stats.connections,
            "alerts": self.stats.alerts,
            "suppressed_total": self.stats.suppressed.values().sum::<u64>(),
            "suppressed_by_rule": self.stats.suppressed,
            "allow_rules": self.policy.allow.len(),
            "beacons_detected": self.beacons.detected,
            "beaconing_connections": self.stats.beaconing_connections,
            "beacon_keys": self.beacons.keys(),
            "beacon_keys_evicted": self.beacons.evicted,
            "folded_connections": self.fold.folded,
            "fold_table_full": self.fold.table_full,
            "rollup_windows": self.rollup.windows_emitted,
            "rollup_connections_in_no_group": self.rollup.capped_total,
        })
    }
}

fn beacon_fields(b: &Beacon) -> Value {
    let round = |x: f64| (x * 1000.0).round() / 1000.0;
    json!({
        "interval_seconds": round(b.stats.interval_s),
        "jitter_seconds": round(b.stats.jitter_s),
        "dispersion": round(b.stats.dispersion),
        "skew": round(b.stats.skew),
        "gaps_analysed": b.stats.gaps,
        "connections": b.connections,
        "first_seen": clock::rfc3339(b.first_seen_ns),
        "last_seen": clock::rfc3339(b.last_seen_ns),
    })
}

/// The `beacon-detected` alert: who, where, and the interval statistics.
fn beacon_event(conn: &Value, b: &Beacon, risk: u8) -> Value {
    let pick = |k: &str| conn.get(k).cloned().unwrap_or(Value::Null);
    let mut doc = json!({
        "@timestamp": pick("@timestamp"),
        "event": {
            "kind": "alert",
            "category": ["network"],
            "type": ["connection", "info"],
            "action": "beacon-detected",
            "module": "sensor",
            "dataset": "sensor.beacon",
            "risk_score": risk,
            "severity": risk,
            "start": clock::rfc3339(b.first_seen_ns),
            "end": clock::rfc3339(b.last_seen_ns),
            "reason": format!(
                "{} connections at a regular {:.1} s interval (jitter {:.2} s)",
                b.connections, b.stats.interval_s, b.stats.jitter_s
            ),
        },
        "rule": {"name": BEACON_RULE_NAME, "id": BEACON_RULE_ID},
        "threat": output::threat(),
        "host": pick("host"),
        "process": pick("process"),
        "user": pick("user"),
        "destination": pick("destination"),
        "network": pick("network"),
        "container": pick("container"),
        "sensor": {"severity": output::severity(risk), "beacon": beacon_fields(b)},
    });
    output::prune(&mut doc);
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i128 = 1_000_000_000;
    const T0: i128 = 1_800_000_000 * S;

    fn conn(exe: &str, pid: u64, port: u16, ts: i128) -> Value {
        json!({
            "@timestamp": clock::rfc3339(ts),
            "event": {"kind": "event", "action": "network-connect", "risk_score": 0},
            "process": {"pid": pid, "executable": exe, "name": exe_name(exe),
                        "thread": {"name": exe_name(exe)},
                        "parent": {"executable": "/usr/bin/bash"}},
            "user": {"id": "1000", "name": "alice"},
            "destination": {"ip": "203.0.113.7", "port": port},
            "host": {"name": "h"},
            "sensor": {},
        })
    }

    fn engine(policy: &str, cfg: Config) -> Engine {
        Engine::new(Policy::parse(policy).unwrap(), cfg, "h".into())
    }

    fn actions(lines: &[Value]) -> Vec<String> {
        lines
            .iter()
            .map(|v| v["event"]["action"].as_str().unwrap_or("").to_string())
            .collect()
    }

    #[test]
    fn allow_rule_suppresses_and_counts() {
        let mut e = engine(
            "[[allow]]\nname = \"dev\"\nexecutables = [\"node\"]\ndestination_ports = [8088]\n",
            Config {
                all: true,
                ..Config::default()
            },
        );
        let o = e.connection(conn("/usr/bin/node", 1, 8088, T0)).unwrap();
        assert!(!o.alert);
        assert_eq!(o.lines[0]["event"]["kind"], "event");
        assert_eq!(o.lines[0]["sensor"]["allow_rule"], "dev");
        assert!(
            o.lines[0]["event"]["reason"]
                .as_str()
                .unwrap()
                .contains("allow rule dev")
        );
        let o = e.connection(conn("/usr/bin/curl", 2, 8088, T0)).unwrap();
        assert!(o.alert);
        assert_eq!(o.lines[0]["event"]["risk_score"], 3);
        // A connection a rule matches but that would not alert is not "suppressed".
        e.connection(conn("/usr/bin/node", 1, 8089, T0)).unwrap();
        assert_eq!(e.stats.suppressed.get("dev"), Some(&1));
        let fin = e.finish(T0 + S);
        let summary = fin.last().unwrap();
        assert_eq!(summary["event"]["action"], "engine-summary");
        assert_eq!(summary["sensor"]["engine"]["suppressed_by_rule"]["dev"], 1);
        assert_eq!(summary["sensor"]["window"]["suppressed_by_rule"]["dev"], 1);
    }

    #[test]
    fn beacon_event_and_raised_risk() {
        // nginx on a non-standard, non-C2 port scores 0; ten regular connects make it Low.
        let mut e = engine("", Config::default());
        let mut all = Vec::new();
        for i in 0..10 {
            let o = e
                .connection(conn(
                    "/usr/sbin/nginx",
                    100 + i as u64,
                    5555,
                    T0 + i * 60 * S,
                ))
                .unwrap();
            assert_eq!(o.alert, i == 9, "connection {i}");
            all.extend(o.lines);
        }
        // The periodic summary after 300 s of recorded time comes first.
        assert_eq!(
            actions(&all),
            ["engine-summary", "network-connect", "beacon-detected"]
        );
        all.remove(0);
        let (c, b) = (&all[0], &all[1]);
        assert_eq!(c["event"]["risk_score"], 1);
        assert_eq!(c["sensor"]["beacon"]["interval_seconds"], 60.0);
        assert!(c["event"]["reason"].as_str().unwrap().contains("beacon"));
        assert_eq!(b["rule"]["id"], BEACON_RULE_ID);
        assert_eq!(b["sensor"]["beacon"]["connections"], 10);
        assert_eq!(b["destination"]["port"], 5555);
        assert_eq!(b["process"]["executable"], "/usr/sbin/nginx");
        // A shell beaconing on a C2 port stays High (capped at 3).
        assert_eq!(beacon_risk(3), 3);
        assert_eq!(beacon_risk(2), 3);
        assert_eq!(beacon_risk(0), 1);
    }

    #[test]
    fn standard_ports_and_excluded_networks_are_not_beacon_tracked() {
        let mut e = engine("", Config::default());
        for i in 0..20 {
            let mut d = conn("/usr/bin/curl", 1, 443, T0 + i * 60 * S);
            e.connection(d.clone()).unwrap();
            d["destination"]["ip"] = json!("10.0.0.1");
            d["destination"]["port"] = json!(5555);
            e.connection(d).unwrap();
        }
        assert_eq!(e.beacons.keys(), 0);
        assert_eq!(e.stats.alerts, 0);
    }

    #[test]
    fn flood_is_folded_and_rollup_summarises() {
        let mut e = engine("", Config::default());
        let mut lines = Vec::new();
        for i in 0..100 {
            // One nc process looping connects every 50 ms.
            lines.extend(
                e.connection(conn("/usr/bin/nc", 7, 4444, T0 + i * S / 20))
                    .unwrap()
                    .lines,
            );
        }
        assert_eq!(lines.len(), 1, "one line at once, the rest held");
        lines.extend(e.tick(T0 + 11 * S));
        let folded: u64 = lines
            .iter()
            .filter(|v| v["event"]["action"] == "network-connect")
            .map(|v| v["sensor"]["folded_count"].as_u64().unwrap())
            .sum();
        assert_eq!(folded, 100);
        lines.extend(e.tick(T0 + 300 * S));
        let rollup: Vec<_> = lines
            .iter()
            .filter(|v| v["event"]["action"] == "alert-rollup")
            .collect();
        assert_eq!(rollup.len(), 1);
        assert_eq!(rollup[0]["sensor"]["rollup"]["connections"], 100);
        assert_eq!(rollup[0]["user"]["name"], "alice");
        assert!(actions(&lines).contains(&"engine-summary".to_string()));
    }

    #[test]
    fn bad_documents_are_errors_not_panics() {
        let mut e = engine("", Config::default());
        for bad in [
            json!({}),
            json!({"@timestamp": "x", "destination": {"ip": "203.0.113.7", "port": 1}}),
            json!({"@timestamp": clock::rfc3339(T0), "destination": {"ip": "nope", "port": 1}, "process": {"name": "a"}}),
            json!({"@timestamp": clock::rfc3339(T0), "destination": {"ip": "203.0.113.7", "port": 70000}, "process": {"name": "a"}}),
            json!({"@timestamp": clock::rfc3339(T0), "destination": {"ip": "203.0.113.7", "port": 1}}),
            json!([1, 2]),
            json!("string"),
        ] {
            assert!(e.connection(bad.clone()).is_err(), "{bad}");
        }
        assert_eq!(e.stats.connections, 0);
    }
    #[test]
    fn quiet_connections_build_no_json_and_are_counted() {
        let mut e = engine("", Config::default());
        let obs = |exe: &str, port: u16| Obs::from_doc(&conn(exe, 1, port, T0)).unwrap();
        for (exe, port, prints) in [
            ("/usr/bin/curl", 443, false),
            ("/usr/sbin/nginx", 5555, false),
            ("/usr/bin/curl", 5555, true),
        ] {
            let mut built = false;
            let ob = obs(exe, port);
            let v = list_verdict(&Policy::default(), &ob);
            let o = e.process(&ob, &v, || {
                built = true;
                conn(exe, 1, port, T0)
            });
            assert_eq!((built, o.alert), (prints, prints), "{exe} {port}");
        }
        assert_eq!(e.stats.connections, 3);
        assert_eq!(
            e.beacons.keys(),
            2,
            "nginx:5555 is tracked for beacons without JSON"
        );
    }

    #[test]
    fn live_record_and_its_document_read_the_same() {
        let mut raw = crate::kernel::records::tests::raw(sensor_common::AF_INET, [0; 16], 4444);
        raw.daddr[..4].copy_from_slice(&[203, 0, 113, 7]);
        let c = crate::kernel::records::tests::connect(&crate::kernel::records::tests::bytes(&raw));
        let proc = crate::enrich::procfs::ProcessInfo {
            executable: Some("/usr/bin/nc.openbsd".into()),
            args: Some(vec!["nc".into()]),
            ppid: Some(1),
            parent_executable: Some("/usr/bin/bash".into()),
            container_id: Some("abc".into()),
            content_match: Some("nc".into()),
            location: Some("tmp"),
            ..Default::default()
        };
        let v = score::score(
            &Policy::default(),
            &score::Subject::named(Some("nc.openbsd"), &c.comm),
            c.dst,
            c.dport,
        );
        let r = output::Record {
            conn: &c,
            proc: &proc,
            user_name: Some("alice"),
            verdict: &v,
            host_name: "h",
            attribution: None,
            unix_ns: T0 + 123,
        };
        let obs = Obs::from_record(&r);
        assert_eq!(obs, Obs::from_doc(&r.to_json()).unwrap());
        // Content and location identity survive a record-and-replay round trip.
        assert_eq!(
            (obs.content_match.as_deref(), obs.location.as_deref()),
            (Some("nc"), Some("tmp"))
        );
        let gone = crate::enrich::procfs::ProcessInfo::default();
        let r = output::Record {
            proc: &gone,
            user_name: None,
            ..r
        };
        assert_eq!(Obs::from_record(&r), Obs::from_doc(&r.to_json()).unwrap());
    }
}

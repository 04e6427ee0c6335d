//! The detection policy: the lists the T1571 model scores with and the allow rules that
//! suppress known false positives. Built-in defaults are the reference model's Linux
//! translation; `--config PATH` replaces (top-level keys) or extends (`[extend]`) the lists
//! and adds `[[allow]]` rules. Every error names the line and column it comes from.

use std::{collections::BTreeSet, ops::Range, path::Path};

use anyhow::{Context, Result, anyhow};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use toml::Spanned;

pub mod glob;

use crate::{detect::subject::Subject, enrich::procfs::exe_name, kernel::records::canonical};

/// Ports seen with known C2 families (WIRTE, PingPull, Contagious Interview, ...).
pub const DEFAULT_C2_PORTS: &[u16] = &[
    444, 587, 1224, 1337, 2083, 2087, 4443, 4444, 4445, 6666, 6667, 6668, 7777, 8008, 8088, 8888,
    9001, 9090, 31337,
];

/// Ports never called non-standard.
pub const DEFAULT_STANDARD_PORTS: &[u16] = &[80, 443, 8080, 8443, 53, 25, 3000, 5000, 9000];

/// Shells, interpreters and network tools, by executable basename. Versioned names
/// (python3.11, ruby3.1) match their base through [`crate::detect::score`]'s normalisation;
/// the distribution-specific names are listed as installed (`nc.openbsd`).
pub const DEFAULT_HIGH_RISK: &[&str] = &[
    // shells
    "sh",
    "bash",
    "dash",
    "zsh",
    "ksh",
    "fish",
    "busybox",
    // interpreters
    "python",
    "python2",
    "python3",
    "perl",
    "ruby",
    "php",
    "node",
    "lua",
    "pwsh",
    // network tools
    "curl",
    "wget",
    "nc",
    "ncat",
    "netcat",
    "nc.openbsd",
    "nc.traditional",
    "socat",
    "openssl",
    "telnet",
];

/// Private, loopback, link-local and unspecified space, IPv4 and IPv6.
pub const DEFAULT_EXCLUDED: &[&str] = &[
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "0.0.0.0/8",
    "::1/128",
    "::/128",
    "fe80::/10",
    "fc00::/7",
];

/// The effective policy: the four lists after defaults, replacement and `[extend]`, and
/// the allow rules in file order. This is what `sensor policy show` prints, and printing
/// it and parsing the result gives the same policy back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Policy {
    pub c2_ports: BTreeSet<u16>,
    pub standard_ports: BTreeSet<u16>,
    pub high_risk_executables: BTreeSet<String>,
    pub excluded_networks: Vec<IpNet>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<AllowRule>,
}

/// One `[[allow]]` rule: every condition given must hold (AND); within a condition any
/// listed value may match (OR). A condition on a field whose value is unknown for the
/// connection (vanished process, no container) does not hold: unknown never suppresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AllowRule {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub executables: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub parent_executables: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub destination_networks: Vec<IpNet>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub destination_ports: Vec<PortRange>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub container_ids: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kubernetes_namespaces: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub host_names: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Schedule>,
}

/// An inclusive port range; a single port is `lo == hi`. Written as `8088` or `"8000-8999"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl PortRange {
    pub fn contains(self, port: u16) -> bool {
        (self.lo..=self.hi).contains(&port)
    }
}

impl Serialize for PortRange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        if self.lo == self.hi {
            s.serialize_u16(self.lo)
        } else {
            s.serialize_str(&format!("{}-{}", self.lo, self.hi))
        }
    }
}

/// A weekly time window. `days` empty means every day; the window is
/// `[start, end)` in minutes of the day at `utc_offset_min`; `start > end` crosses
/// midnight and the part after midnight belongs to the day it started on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// 0 = Monday .. 6 = Sunday.
    pub days: BTreeSet<u8>,
    pub start_min: u16,
    pub end_min: u16,
    pub utc_offset_min: i32,
}

const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

impl Serialize for Schedule {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Out {
            #[serde(skip_serializing_if = "Vec::is_empty")]
            days: Vec<&'static str>,
            hours: String,
            utc_offset: String,
        }
        let hm = |m: u16| format!("{:02}:{:02}", m / 60, m % 60);
        let off = self.utc_offset_min;
        Out {
            days: self
                .days
                .iter()
                .filter_map(|&d| DAY_NAMES.get(usize::from(d)).copied())
                .collect(),
            hours: format!("{}-{}", hm(self.start_min), hm(self.end_min)),
            utc_offset: format!(
                "{}{:02}:{:02}",
                if off < 0 { '-' } else { '+' },
                off.abs() / 60,
                off.abs() % 60
            ),
        }
        .serialize(s)
    }
}

impl Schedule {
    /// Whether the Unix time `unix_s` falls in the window.
    pub fn contains(&self, unix_s: i64) -> bool {
        let local = unix_s + i64::from(self.utc_offset_min) * 60;
        let days = local.div_euclid(86_400);
        let minute = u16::try_from(local.rem_euclid(86_400) / 60).unwrap_or(0);
        // 1970-01-01 was a Thursday (3 with Monday = 0).
        let dow = |d: i64| u8::try_from((d + 3).rem_euclid(7)).unwrap_or(0);
        let day_ok = |d: i64| self.days.is_empty() || self.days.contains(&dow(d));
        if self.start_min < self.end_min {
            day_ok(days) && (self.start_min..self.end_min).contains(&minute)
        } else {
            (minute >= self.start_min && day_ok(days))
                || (minute < self.end_min && day_ok(days - 1))
        }
    }
}

/// An executable pattern with a `/` is matched against the full path, otherwise against
/// the basename; either way against the executable, never `comm`, which any process sets.
fn exe_matches(patterns: &[String], exe: Option<&str>) -> bool {
    let Some(exe) = exe else { return false };
    patterns.iter().any(|p| {
        if p.contains('/') {
            glob::matches(p, exe)
        } else {
            glob::matches(p, exe_name(exe))
        }
    })
}

fn any_glob(patterns: &[String], value: Option<&str>) -> bool {
    value.is_some_and(|v| patterns.iter().any(|p| glob::matches(p, v)))
}

impl AllowRule {
    pub fn matches(&self, s: &Subject) -> bool {
        (self.executables.is_empty() || exe_matches(&self.executables, s.executable.as_deref()))
            && (self.parent_executables.is_empty()
                || exe_matches(&self.parent_executables, s.parent_executable.as_deref()))
            && (self.users.is_empty()
                || self.users.iter().any(|u| match u.parse::<u32>() {
                    Ok(uid) => s.user_id == Some(uid),
                    Err(_) => s.user_name.as_deref().is_some_and(|n| glob::matches(u, n)),
                }))
            && (self.destination_networks.is_empty() || {
                let d = canonical(s.dst);
                self.destination_networks.iter().any(|n| n.contains(&d))
            })
            && (self.destination_ports.is_empty()
                || self.destination_ports.iter().any(|r| r.contains(s.port)))
            && (self.container_ids.is_empty()
                || any_glob(&self.container_ids, s.container_id.as_deref()))
            && (self.kubernetes_namespaces.is_empty()
                || any_glob(
                    &self.kubernetes_namespaces,
                    s.kubernetes_namespace.as_deref(),
                ))
            && (self.host_names.is_empty() || any_glob(&self.host_names, s.host_name.as_deref()))
            && self
                .schedule
                .as_ref()
                .is_none_or(|w| s.unix_s().is_some_and(|t| w.contains(t)))
    }

    /// The conditions in words, for `sensor score`'s reason chain.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        let mut list = |key: &str, v: Vec<String>| {
            if !v.is_empty() {
                parts.push(format!("{key} {}", v.join("|")));
            }
        };
        list("executable", self.executables.clone());
        list("parent", self.parent_executables.clone());
        list("user", self.users.clone());
        list(
            "network",
            self.destination_networks
                .iter()
                .map(ToString::to_string)
                .collect(),
        );
        list(
            "port",
            self.destination_ports
                .iter()
                .map(|r| {
                    if r.lo == r.hi {
                        r.lo.to_string()
                    } else {
                        format!("{}-{}", r.lo, r.hi)
                    }
                })
                .collect(),
        );
        list("container", self.container_ids.clone());
        list("k8s namespace", self.kubernetes_namespaces.clone());
        list("host", self.host_names.clone());
        if let Some(w) = &self.schedule {
            let json = serde_json::to_value(w).unwrap_or_default();
            parts.push(format!("schedule {json}"));
        }
        parts.join(" and ")
    }

    /// Everything but the name and reason: two rules with equal keys match the same set.
    fn condition_key(&self) -> AllowRule {
        AllowRule {
            name: String::new(),
            reason: None,
            ..self.clone()
        }
    }
}

// ---- the file as written, with spans so semantic errors can name line and column ----

type SVec<T> = Spanned<Vec<Spanned<T>>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    c2_ports: Option<SVec<u16>>,
    standard_ports: Option<SVec<u16>>,
    high_risk_executables: Option<SVec<String>>,
    excluded_networks: Option<SVec<String>>,
    /// Same lists, added to (not replacing) the defaults or the replaced lists above.
    extend: Option<ExtendFile>,
    #[serde(default)]
    allow: Vec<Spanned<AllowFile>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExtendFile {
    c2_ports: Option<SVec<u16>>,
    standard_ports: Option<SVec<u16>>,
    high_risk_executables: Option<SVec<String>>,
    excluded_networks: Option<SVec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AllowFile {
    name: Spanned<String>,
    reason: Option<String>,
    executables: Option<SVec<String>>,
    parent_executables: Option<SVec<String>>,
    users: Option<SVec<String>>,
    destination_networks: Option<SVec<String>>,
    destination_ports: Option<SVec<PortItem>>,
    container_ids: Option<SVec<String>>,
    kubernetes_namespaces: Option<SVec<String>>,
    host_names: Option<SVec<String>>,
    schedule: Option<Spanned<ScheduleFile>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum PortItem {
    Number(i64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScheduleFile {
    days: Option<Vec<String>>,
    hours: Option<String>,
    utc_offset: Option<String>,
}

/// Turns byte offsets into "line L, column C" (1-based, columns in characters).
struct Source<'a> {
    text: &'a str,
}

impl Source<'_> {
    fn err(&self, span: Range<usize>, msg: impl std::fmt::Display) -> anyhow::Error {
        let before = self.text.get(..span.start).unwrap_or(self.text);
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
        anyhow!("line {line}, column {col}: {msg}")
    }
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            c2_ports: DEFAULT_C2_PORTS.iter().copied().collect(),
            standard_ports: DEFAULT_STANDARD_PORTS.iter().copied().collect(),
            high_risk_executables: DEFAULT_HIGH_RISK.iter().map(|s| s.to_string()).collect(),
            excluded_networks: DEFAULT_EXCLUDED
                .iter()
                .filter_map(|s| s.parse().ok())
                .collect(),
            allow: Vec::new(),
        }
    }
}

impl Policy {
    /// Reads and validates a policy file; every error names the path, line and column.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read policy file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("invalid policy file {}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Self> {
        let file: PolicyFile = toml::from_str(text).map_err(|e| anyhow!("{e}"))?;
        let src = Source { text };
        let mut p = Policy::default();
        let ext = file.extend;

        // Ports: replace, then extend; remember spans for the cross-list check below.
        let mut port_spans: Vec<(u16, Range<usize>)> = Vec::new();
        for (list, replace, extend) in [
            (
                &mut p.c2_ports,
                file.c2_ports,
                ext.as_ref().and_then(|e| e.c2_ports.clone()),
            ),
            (
                &mut p.standard_ports,
                file.standard_ports,
                ext.as_ref().and_then(|e| e.standard_ports.clone()),
            ),
        ] {
            if let Some(r) = &replace {
                list.clear();
                for port in r.get_ref() {
                    list.insert(*port.get_ref());
                }
            }
            for port in replace
                .iter()
                .chain(extend.iter())
                .flat_map(|v| v.get_ref())
            {
                if *port.get_ref() == 0 {
                    return Err(src.err(port.span(), "port 0 is not a destination port"));
                }
                list.insert(*port.get_ref());
                port_spans.push((*port.get_ref(), port.span()));
            }
        }
        if let Some(port) = p.c2_ports.intersection(&p.standard_ports).next() {
            let span = port_spans
                .iter()
                .rev()
                .find(|(q, _)| q == port)
                .map_or(0..0, |(_, s)| s.clone());
            return Err(src.err(
                span,
                format!("port {port} is in both c2_ports and standard_ports"),
            ));
        }

        let names = file.high_risk_executables;
        let names_ext = ext.as_ref().and_then(|e| e.high_risk_executables.clone());
        if names.is_some() {
            p.high_risk_executables.clear();
        }
        for name in names
            .iter()
            .chain(names_ext.iter())
            .flat_map(|v| v.get_ref())
        {
            let n = name.get_ref();
            if n.is_empty() || n.contains('/') {
                return Err(src.err(
                    name.span(),
                    format!("high_risk_executables entry {n:?} must be a bare executable name"),
                ));
            }
            p.high_risk_executables.insert(n.clone());
        }

        let nets = file.excluded_networks;
        let nets_ext = ext.as_ref().and_then(|e| e.excluded_networks.clone());
        if nets.is_some() {
            p.excluded_networks.clear();
        }
        for net in nets.iter().chain(nets_ext.iter()).flat_map(|v| v.get_ref()) {
            let n = parse_net(&src, net)?;
            if !p.excluded_networks.contains(&n) {
                p.excluded_networks.push(n);
            }
        }

        for rule in &file.allow {
            let parsed = parse_rule(&src, rule)?;
            let name_span = rule.get_ref().name.span();
            if p.allow.iter().any(|r| r.name == parsed.name) {
                return Err(src.err(
                    name_span,
                    format!("duplicate allow rule name {:?}", parsed.name),
                ));
            }
            if let Some(same) = p
                .allow
                .iter()
                .find(|r| r.condition_key() == parsed.condition_key())
            {
                return Err(src.err(
                    name_span,
                    format!(
                        "allow rule {:?} has the same conditions as rule {:?}: merge or remove one",
                        parsed.name, same.name
                    ),
                ));
            }
            // A rule only for destinations that never alert can never suppress anything:
            // almost certainly a mistake in the networks.
            if !parsed.destination_networks.is_empty()
                && parsed.destination_networks.iter().all(|n| {
                    p.excluded_networks
                        .iter()
                        .any(|x| x.contains(&n.network()) && x.prefix_len() <= n.prefix_len())
                })
            {
                return Err(src.err(
                    name_span,
                    format!(
                        "allow rule {:?} conflicts with excluded_networks: all its destination networks are excluded already, so it can never apply",
                        parsed.name
                    ),
                ));
            }
            p.allow.push(parsed);
        }
        Ok(p)
    }

    /// The first allow rule (in file order) that matches.
    pub fn allow_rule(&self, s: &Subject) -> Option<&AllowRule> {
        self.allow.iter().find(|r| r.matches(s))
    }

    pub fn to_toml(&self) -> Result<String> {
        toml::to_string_pretty(self).context("writing the policy as TOML")
    }

    /// The file at `path`, or the built-in defaults when there is none.
    pub fn load_or_default(path: Option<&Path>) -> Result<Self> {
        path.map_or_else(|| Ok(Self::default()), Self::load)
    }
}

fn parse_net(src: &Source, s: &Spanned<String>) -> Result<IpNet> {
    s.get_ref().parse::<IpNet>().map_err(|e| {
        src.err(
            s.span(),
            format!("{:?} is not a CIDR network ({e})", s.get_ref()),
        )
    })
}

/// A list condition: absent is "any", present must not be empty (an empty list would
/// match nothing, which is never what was meant).
fn list<T>(
    src: &Source,
    key: &str,
    v: &Option<SVec<T>>,
    mut f: impl FnMut(&Spanned<T>) -> Result<()>,
) -> Result<()> {
    if let Some(v) = v {
        if v.get_ref().is_empty() {
            return Err(src.err(
                v.span(),
                format!("{key} is empty; leave the key out to match any"),
            ));
        }
        for item in v.get_ref() {
            f(item)?;
        }
    }
    Ok(())
}

fn strings(src: &Source, key: &str, v: &Option<SVec<String>>) -> Result<Vec<String>> {
    let mut out = Vec::new();
    list(src, key, v, |s| {
        if s.get_ref().is_empty() {
            return Err(src.err(s.span(), format!("empty pattern in {key}")));
        }
        out.push(s.get_ref().clone());
        Ok(())
    })?;
    Ok(out)
}

fn parse_rule(src: &Source, rule: &Spanned<AllowFile>) -> Result<AllowRule> {
    let f = rule.get_ref();
    let name = f.name.get_ref().trim().to_string();
    if name.is_empty() {
        return Err(src.err(f.name.span(), "allow rule name is empty"));
    }
    let mut destination_networks = Vec::new();
    list(src, "destination_networks", &f.destination_networks, |n| {
        destination_networks.push(parse_net(src, n)?);
        Ok(())
    })?;
    let mut destination_ports = Vec::new();
    list(src, "destination_ports", &f.destination_ports, |p| {
        destination_ports.push(parse_port_item(p.get_ref()).map_err(|e| src.err(p.span(), e))?);
        Ok(())
    })?;
    let schedule = match &f.schedule {
        None => None,
        Some(s) => Some(parse_schedule(s.get_ref()).map_err(|e| src.err(s.span(), e))?),
    };
    let r = AllowRule {
        name,
        reason: f.reason.clone(),
        executables: strings(src, "executables", &f.executables)?,
        parent_executables: strings(src, "parent_executables", &f.parent_executables)?,
        users: strings(src, "users", &f.users)?,
        destination_networks,
        destination_ports,
        container_ids: strings(src, "container_ids", &f.container_ids)?,
        kubernetes_namespaces: strings(src, "kubernetes_namespaces", &f.kubernetes_namespaces)?,
        host_names: strings(src, "host_names", &f.host_names)?,
        schedule,
    };
    let only_schedule = AllowRule {
        schedule: None,
        ..r.condition_key()
    } == AllowRule::empty();
    if r.schedule.is_some() && only_schedule {
        // "Never by turning the rule off": a time window alone would do just that.
        return Err(src.err(
            rule.span(),
            format!(
                "allow rule {:?} has only a schedule and would suppress every alert in that window; add who or where",
                r.name
            ),
        ));
    }
    if r.condition_key() == AllowRule::empty() {
        // A rule without conditions would silence the detection: refused on purpose.
        return Err(src.err(
            rule.span(),
            format!(
                "allow rule {:?} has no conditions and would suppress every alert",
                r.name
            ),
        ));
    }
    Ok(r)
}

impl AllowRule {
    fn empty() -> Self {
        AllowRule {
            name: String::new(),
            reason: None,
            executables: vec![],
            parent_executables: vec![],
            users: vec![],
            destination_networks: vec![],
            destination_ports: vec![],
            container_ids: vec![],
            kubernetes_namespaces: vec![],
            host_names: vec![],
            schedule: None,
        }
    }
}

fn parse_port(s: &str) -> std::result::Result<u16, String> {
    match s.trim().parse::<u32>() {
        Ok(p) if (1..=65535).contains(&p) => u16::try_from(p).map_err(|e| e.to_string()),
        Ok(p) => Err(format!("port {p} is out of range 1..65535")),
        Err(_) => Err(format!("{s:?} is not a port number")),
    }
}

fn parse_port_item(item: &PortItem) -> std::result::Result<PortRange, String> {
    match item {
        PortItem::Number(n) => {
            let p = parse_port(&n.to_string())?;
            Ok(PortRange { lo: p, hi: p })
        }
        PortItem::Text(t) => {
            let (lo, hi) = match t.split_once('-') {
                Some((a, b)) => (parse_port(a)?, parse_port(b)?),
                None => {
                    let p = parse_port(t)?;
                    (p, p)
                }
            };
            if lo > hi {
                return Err(format!("port range {t:?} is reversed"));
            }
            Ok(PortRange { lo, hi })
        }
    }
}

fn parse_hhmm(s: &str) -> std::result::Result<u16, String> {
    let bad = || format!("{s:?} is not a time HH:MM (00:00..24:00)");
    let (h, m) = s.trim().split_once(':').ok_or_else(bad)?;
    let (h, m): (u16, u16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if m >= 60 || h > 24 || (h == 24 && m != 0) {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

fn parse_schedule(f: &ScheduleFile) -> std::result::Result<Schedule, String> {
    let mut days = BTreeSet::new();
    if let Some(list) = &f.days {
        if list.is_empty() {
            return Err("schedule.days is empty; leave it out for every day".into());
        }
        for d in list {
            let low = d.trim().to_ascii_lowercase();
            let i = DAY_NAMES
                .iter()
                .position(|n| low.starts_with(n) && low.len() >= 3)
                .ok_or_else(|| format!("{d:?} is not a day (mon..sun)"))?;
            days.insert(u8::try_from(i).unwrap_or(0));
        }
    }
    let (start_min, end_min) = match &f.hours {
        None => (0, 24 * 60),
        Some(h) => {
            let (a, b) = h
                .split_once('-')
                .ok_or_else(|| format!("hours {h:?} must be HH:MM-HH:MM"))?;
            (parse_hhmm(a)?, parse_hhmm(b)?)
        }
    };
    if start_min == end_min {
        return Err("schedule.hours starts and ends at the same minute (an empty window)".into());
    }
    if f.days.is_none() && f.hours.is_none() {
        return Err("schedule has neither days nor hours".into());
    }
    let utc_offset_min = match &f.utc_offset {
        None => 0,
        Some(o) => {
            let t = o.trim();
            let bad = || format!("utc_offset {o:?} must be +HH:MM or -HH:MM");
            let (sign, rest) = match t.strip_prefix('-') {
                Some(r) => (-1, r),
                None => (1, t.strip_prefix('+').unwrap_or(t)),
            };
            let m = i32::from(parse_hhmm(rest).map_err(|_| bad())?);
            if m > 14 * 60 {
                return Err(bad());
            }
            sign * m
        }
    };
    Ok(Schedule {
        days,
        start_min,
        end_min,
        utc_offset_min,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_reference_lists() {
        let p = Policy::default();
        assert_eq!(p.c2_ports.len(), 19);
        assert_eq!(p.standard_ports.len(), 9);
        assert!(p.high_risk_executables.contains("nc.openbsd"));
        assert_eq!(p.excluded_networks.len(), DEFAULT_EXCLUDED.len());
        assert!(p.allow.is_empty());
    }

    #[test]
    fn partial_file_keeps_other_defaults() {
        let p = Policy::parse("c2_ports = [4444]\n").unwrap();
        assert_eq!(p.c2_ports, BTreeSet::from([4444]));
        assert_eq!(p.standard_ports, Policy::default().standard_ports);
    }

    #[test]
    fn round_trips_through_toml() {
        let p = Policy::default();
        assert_eq!(Policy::parse(&p.to_toml().unwrap()).unwrap(), p);
    }

    #[test]
    fn errors_name_the_line() {
        let err = Policy::parse("c2_ports = [4444]\nstandard_ports = [70000]\n").unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("line 2"), "{msg}");
        let err = Policy::parse("c2_port = [1]\n").unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("unknown field `c2_port`") && msg.contains("line 1"),
            "{msg}"
        );
        let err = Policy::parse("excluded_networks = [\"10.0.0.0/33\"]\n").unwrap_err();
        assert!(format!("{err:#}").contains("line 1"), "{err:#}");
    }

    #[test]
    fn semantic_errors() {
        for (text, want) in [
            ("c2_ports = [0]", "port 0"),
            (
                "high_risk_executables = [\"/bin/sh\"]",
                "bare executable name",
            ),
            ("high_risk_executables = [\"\"]", "bare executable name"),
            ("c2_ports = [443]", "both c2_ports and standard_ports"),
        ] {
            let err = Policy::parse(text).unwrap_err();
            assert!(format!("{err:#}").contains(want), "{text}: {err:#}");
        }
    }

    #[test]
    fn load_names_the_path() {
        let err = Policy::load(Path::new("/nonexistent/policy.toml")).unwrap_err();
        assert!(format!("{err:#}").contains("/nonexistent/policy.toml"));
    }

    const RULES: &str = r#"
[extend]
c2_ports = [5555]
high_risk_executables = ["gawk"]
excluded_networks = ["100.64.0.0/10"]

[[allow]]
name = "dev servers"
reason = "local dev servers on 8088/8888"
executables = ["node", "/opt/dev/*"]
destination_ports = [8088, 8888]
destination_networks = ["203.0.113.0/24", "2001:db8::/32"]

[[allow]]
name = "pentest"
users = ["pentester", "1001"]
destination_ports = ["4444", "1337-1338"]
schedule = { days = ["mon", "tue", "wed", "thu", "fri"], hours = "09:00-17:30", utc_offset = "+02:00" }

[[allow]]
name = "k8s agent"
kubernetes_namespaces = ["monitoring"]

[[allow]]
name = "ci hosts"
host_names = ["ci-*"]
parent_executables = ["make"]
container_ids = ["abc*"]
"#;

    fn subject(exe: &str, port: u16) -> Subject {
        Subject {
            host_name: Some("h".into()),
            ..Subject::named(Some(exe), exe_name(exe)).to("203.0.113.7".parse().unwrap(), port)
        }
    }

    #[test]
    fn extend_adds_to_defaults() {
        let p = Policy::parse(RULES).unwrap();
        assert!(p.c2_ports.contains(&5555) && p.c2_ports.contains(&4444));
        assert!(p.high_risk_executables.contains("gawk") && p.high_risk_executables.contains("nc"));
        assert_eq!(p.excluded_networks.len(), DEFAULT_EXCLUDED.len() + 1);
        // Replace and extend together: the replacement plus the extension.
        let p = Policy::parse("c2_ports = [1]\n[extend]\nc2_ports = [2]\n").unwrap();
        assert_eq!(p.c2_ports, BTreeSet::from([1, 2]));
        assert_eq!(p.allow.len(), 0);
    }

    #[test]
    fn allow_rules_match_every_condition() {
        let p = Policy::parse(RULES).unwrap();
        let hit = |s: &Subject| p.allow_rule(s).map(|r| r.name.clone());
        assert_eq!(
            hit(&subject("/usr/bin/node", 8088)).as_deref(),
            Some("dev servers")
        );
        assert_eq!(
            hit(&subject("/opt/dev/bin/srv", 8888)).as_deref(),
            Some("dev servers")
        );
        assert_eq!(
            hit(&subject("/usr/bin/node", 4444)),
            None,
            "port not in rule"
        );
        assert_eq!(
            hit(&subject("/usr/bin/nodejs", 8088)),
            None,
            "anchored name"
        );
        let mut s = subject("/usr/bin/node", 8088);
        s.dst = "198.51.100.1".parse().unwrap();
        assert_eq!(hit(&s), None, "network not in rule");
        s.dst = "::ffff:203.0.113.9".parse().unwrap();
        assert_eq!(
            hit(&s).as_deref(),
            Some("dev servers"),
            "v4-mapped judged as v4"
        );
        let mut s = subject("/usr/bin/node", 8088);
        s.executable = None;
        assert_eq!(hit(&s), None, "unknown executable never suppresses");

        // Pentest window: Mon-Fri 09:00-17:30 at +02:00.
        // 2026-11-23 is a Monday; 08:00Z = 10:00 local.
        let monday_0800z = 1_795_392_000 + 8 * 3600;
        let mut s = subject("/usr/bin/nc", 4444);
        s.user_name = Some("pentester".into());
        s.ts_ns = i128::from(monday_0800z) * 1_000_000_000;
        assert_eq!(hit(&s).as_deref(), Some("pentest"));
        s.ts_ns = i128::from(monday_0800z + 8 * 3600) * 1_000_000_000; // 18:00 local
        assert_eq!(hit(&s), None, "after hours");
        s.ts_ns = i128::from(monday_0800z - 2 * 86_400) * 1_000_000_000; // Saturday
        assert_eq!(hit(&s), None, "weekend");
        s.ts_ns = i128::MAX; // beyond any calendar: no time known
        assert_eq!(hit(&s), None, "unknown time never suppresses");
        s.ts_ns = i128::from(monday_0800z) * 1_000_000_000;
        s.port = 1338;
        assert_eq!(hit(&s).as_deref(), Some("pentest"), "range");
        s.port = 1339;
        assert_eq!(hit(&s), None);
        let mut s = subject("/usr/bin/nc", 1337);
        s.user_id = Some(1001);
        s.ts_ns = i128::from(monday_0800z) * 1_000_000_000;
        assert_eq!(hit(&s).as_deref(), Some("pentest"), "numeric user is a uid");
        s.user_id = Some(1002);
        assert_eq!(hit(&s), None);

        let mut s = subject("/usr/bin/curl", 9001);
        assert_eq!(hit(&s), None, "namespace unknown: no match");
        s.kubernetes_namespace = Some("monitoring".into());
        assert_eq!(hit(&s).as_deref(), Some("k8s agent"));

        let mut s = subject("/usr/bin/curl", 9001);
        s.host_name = Some("ci-7".into());
        s.parent_executable = Some("/usr/bin/make".into());
        assert_eq!(hit(&s), None, "container unknown");
        s.container_id = Some("abcdef".into());
        assert_eq!(hit(&s).as_deref(), Some("ci hosts"));
        s.host_name = Some("prod-1".into());
        assert_eq!(hit(&s), None);
    }

    #[test]
    fn schedule_crossing_midnight_belongs_to_its_start_day() {
        let w = parse_schedule(&ScheduleFile {
            days: Some(vec!["fri".into()]),
            hours: Some("22:00-06:00".into()),
            utc_offset: None,
        })
        .unwrap();
        let fri = 1_795_392_000 - 3 * 86_400; // 2026-11-20, a Friday, 00:00Z
        assert!(w.contains(fri + 23 * 3600), "Fri 23:00");
        assert!(w.contains(fri + 86_400 + 3600), "Sat 01:00, Friday's night");
        assert!(!w.contains(fri + 3600), "Fri 01:00 is Thursday's night");
        assert!(!w.contains(fri + 12 * 3600), "Fri noon");
    }

    #[test]
    fn semantic_errors_name_line_and_column() {
        for (text, want) in [
            ("c2_ports = [1]\n\n   c2_ports = [0]", "line 3"),
            ("standard_ports = [80, 0]", "line 1, column 23: port 0"),
            (
                "excluded_networks = [\"10.0.0.0/8\",\n  \"10.0.0.0/33\"]",
                "line 2, column 3",
            ),
            (
                "[extend]\nhigh_risk_executables = [\"/bin/x\"]",
                "line 2, column 26",
            ),
            (
                "[extend]\nc2_ports = [443]",
                "line 2, column 13: port 443 is in both",
            ),
            (
                "[[allow]]\nname = \"a\"\ndestination_ports = [70000]",
                "line 3, column 22: port 70000 is out of range",
            ),
            (
                "[[allow]]\nname = \"a\"\ndestination_ports = [\"9000-8000\"]",
                "line 3, column 22: port range \"9000-8000\" is reversed",
            ),
            (
                "[[allow]]\nname = \"a\"\ndestination_ports = [0]",
                "line 3, column 22: port 0 is out of range",
            ),
            (
                "[[allow]]\nname = \"a\"\ndestination_networks = [\"203.0.113.0/24x\"]",
                "line 3, column 25",
            ),
            (
                "[[allow]]\nname = \"a\"\nexecutables = [\"x\"]\n[[allow]]\nname = \"a\"\nexecutables = [\"y\"]",
                "line 5, column 8: duplicate allow rule name \"a\"",
            ),
            (
                "[[allow]]\nname = \"a\"\nexecutables = [\"x\"]\n[[allow]]\nname = \"b\"\nexecutables = [\"x\"]",
                "line 5, column 8: allow rule \"b\" has the same conditions as rule \"a\"",
            ),
            ("[[allow]]\nname = \"a\"\n", "has no conditions"),
            (
                "[[allow]]\nname = \"a\"\nschedule = { hours = \"00:00-06:00\" }",
                "line 1, column 1: allow rule \"a\" has only a schedule",
            ),
            (
                "[[allow]]\nname = \"a\"\nusers = []",
                "line 3, column 9: users is empty",
            ),
            (
                "[[allow]]\nname = \"a\"\ndestination_networks = [\"10.1.0.0/16\"]",
                "conflicts with excluded_networks",
            ),
            (
                "[[allow]]\nname = \"a\"\nschedule = { hours = \"09:00-09:00\" }",
                "line 3, column 12: schedule.hours starts and ends",
            ),
            (
                "[[allow]]\nname = \"a\"\nschedule = { days = [\"xyz\"] }",
                "not a day",
            ),
            (
                "[[allow]]\nname = \"a\"\nschedule = { hours = \"25:00-26:00\" }",
                "not a time",
            ),
            (
                "[[allow]]\nname = \" \"\nusers = [\"x\"]",
                "line 2, column 8: allow rule name is empty",
            ),
            ("[[allow]]\nusers = [\"x\"]", "missing field `name`"),
            (
                "[[allow]]\nname = \"a\"\nexecutable = [\"x\"]",
                "unknown field `executable`",
            ),
            ("[extend]\nc2_port = [1]", "unknown field `c2_port`"),
        ] {
            let err = Policy::parse(text).map(|_| ()).unwrap_err();
            let msg = format!("{err:#}");
            assert!(msg.contains(want), "{text:?}: want {want:?}, got: {msg}");
        }
    }

    #[test]
    fn rules_round_trip_through_show() {
        let p = Policy::parse(RULES).unwrap();
        let shown = p.to_toml().unwrap();
        assert!(
            shown.contains("[[allow]]") && shown.contains("1337-1338"),
            "{shown}"
        );
        assert_eq!(Policy::parse(&shown).unwrap(), p, "{shown}");
    }

    #[test]
    fn load_names_path_line_and_column() {
        let dir = std::env::temp_dir().join(format!("policy-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("p.toml");
        std::fs::write(&path, "c2_ports = [4444]\nexcluded_networks = [\"x\"]\n").unwrap();
        let msg = format!("{:#}", Policy::load(&path).unwrap_err());
        std::fs::remove_dir_all(&dir).ok();
        assert!(
            msg.contains(path.to_str().unwrap()) && msg.contains("line 2, column 22"),
            "{msg}"
        );
    }

    /// Property: for random rules built from a seeded generator, a subject built to satisfy
    /// every condition matches, and changing any one conditioned field breaks the match.
    #[test]
    fn property_each_condition_is_necessary() {
        let mut rng = crate::testrng::Rng::new(7);
        for _ in 0..300 {
            let port = rng.range(1025, 65535) as u16;
            let mut rule = AllowRule::empty();
            rule.name = "r".into();
            let use_exe = rng.chance(0.5);
            let use_user = rng.chance(0.5);
            let use_net = rng.chance(0.5);
            let use_port = rng.chance(0.5) || !(use_exe || use_user || use_net);
            if use_exe {
                rule.executables = vec![format!("tool{}", rng.range(0, 9))];
            }
            if use_user {
                rule.users = vec![format!("u{}", rng.range(0, 9))];
            }
            if use_net {
                rule.destination_networks = vec!["198.51.100.0/24".parse().unwrap()];
            }
            if use_port {
                rule.destination_ports = vec![PortRange { lo: port, hi: port }];
            }
            let exe = format!(
                "/usr/bin/{}",
                rule.executables.first().map_or("other", |s| s)
            );
            let user = rule.users.first().cloned().unwrap_or("nobody".into());
            let good = Subject {
                executable: Some(exe.clone()),
                user_name: Some(user.clone()),
                dst: "198.51.100.9".parse().unwrap(),
                port,
                ..Subject::named(None, "")
            };
            assert!(rule.matches(&good), "{rule:?}");
            if use_exe {
                let s = Subject {
                    executable: Some("/usr/bin/zzz".into()),
                    ..good.clone()
                };
                assert!(!rule.matches(&s));
            }
            if use_user {
                let s = Subject {
                    user_name: Some("zzz".into()),
                    ..good.clone()
                };
                assert!(!rule.matches(&s));
            }
            if use_net {
                let s = Subject {
                    dst: "192.0.2.1".parse().unwrap(),
                    ..good.clone()
                };
                assert!(!rule.matches(&s));
            }
            if use_port {
                let s = Subject {
                    port: port.wrapping_add(1).max(1),
                    ..good.clone()
                };
                assert!(!rule.matches(&s));
            }
        }
    }
    #[test]
    fn every_toml_block_in_the_readme_parses() {
        let readme = include_str!("../../../../README.md");
        let mut blocks = 0;
        for part in readme.split("```toml\n").skip(1) {
            let block = part.split("```").next().unwrap_or("");
            if let Err(e) = Policy::parse(block) {
                panic!("README policy block does not parse: {e:#}\n{block}");
            }
            blocks += 1;
        }
        assert!(blocks >= 2, "{blocks}");
        // The false-positive examples: one rule per class, all distinct.
        let all: String = readme
            .split("```toml\n")
            .skip(1)
            .filter_map(|p| p.split("```").next())
            .filter(|b| b.contains("[[allow]]"))
            .collect();
        assert_eq!(Policy::parse(&all).unwrap().allow.len(), 8);
    }
}

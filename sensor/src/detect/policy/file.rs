//! The policy file as written, with spans so semantic errors can name line and column.

use std::{collections::BTreeMap, ops::Range};

use anyhow::{Result, anyhow};
use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

use crate::{
    detect::policy::{
        Policy,
        allow::{AllowRule, PortRange},
        glob::Pattern,
        schedule::{ScheduleFile, parse_schedule},
    },
    kernel::records::Flow,
};

pub(super) type SVec<T> = Spanned<Vec<Spanned<T>>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    c2_ports: Option<SVec<u16>>,
    standard_ports: Option<SVec<u16>>,
    high_risk_executables: Option<SVec<String>>,
    excluded_networks: Option<SVec<String>>,
    /// Replaces the built-in services table.
    service_ports: Option<BTreeMap<String, SVec<u16>>>,
    writable_locations: Option<SVec<String>>,
    /// The unmanaged-executable tier: its risk and trusted paths (each replacing the default).
    unmanaged: Option<Spanned<UnmanagedFile>>,
    /// When connects become a scan (`[scan]`).
    scan: Option<super::scan::ScanFile>,
    /// First bytes expected on standard ports, JA4 blocklist (`[protocol]`).
    protocol: Option<super::protocol::ProtocolFile>,
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
    /// Services added, or their port lists extended.
    service_ports: Option<BTreeMap<String, SVec<u16>>>,
    writable_locations: Option<SVec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UnmanagedFile {
    risk: Option<Spanned<i64>>,
    trusted_paths: Option<SVec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AllowFile {
    name: Spanned<String>,
    reason: Option<String>,
    actions: Option<SVec<String>>,
    executables: Option<SVec<String>>,
    parent_executables: Option<SVec<String>>,
    users: Option<SVec<String>>,
    destination_networks: Option<SVec<String>>,
    destination_ports: Option<SVec<PortItem>>,
    container_ids: Option<SVec<String>>,
    kubernetes_namespaces: Option<SVec<String>>,
    pod_names: Option<SVec<String>>,
    host_names: Option<SVec<String>>,
    schedule: Option<Spanned<ScheduleFile>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum PortItem {
    Number(i64),
    Text(String),
}

/// Turns byte offsets into "line L, column C" (1-based, columns in characters).
pub(super) struct Source<'a> {
    text: &'a str,
}

impl Source<'_> {
    pub(super) fn err(&self, span: Range<usize>, msg: impl std::fmt::Display) -> anyhow::Error {
        let before = self.text.get(..span.start).unwrap_or(self.text);
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
        anyhow!("line {line}, column {col}: {msg}")
    }
}

/// Parses and validates a policy file's text.
pub(super) fn parse(text: &str) -> Result<Policy> {
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

    let services_ext = ext.as_ref().and_then(|e| e.service_ports.clone());
    if file.service_ports.is_some() {
        p.service_ports.clear();
    }
    for (name, ports) in file
        .service_ports
        .iter()
        .chain(services_ext.iter())
        .flatten()
    {
        if name.is_empty() || name.contains('/') {
            return Err(src.err(
                ports.span(),
                format!("service_ports key {name:?} must be a bare executable name"),
            ));
        }
        let set = p.service_ports.entry(name.clone()).or_default();
        for port in ports.get_ref() {
            if *port.get_ref() == 0 {
                return Err(src.err(port.span(), "port 0 is not a listening port"));
            }
            set.insert(*port.get_ref());
        }
    }

    let locs_ext = ext.as_ref().and_then(|e| e.writable_locations.clone());
    if file.writable_locations.is_some() {
        p.writable_locations.clear();
    }
    for loc in file
        .writable_locations
        .iter()
        .chain(locs_ext.iter())
        .flat_map(|v| v.get_ref())
    {
        if !loc.get_ref().starts_with('/') {
            return Err(src.err(
                loc.span(),
                format!(
                    "writable_locations entry {:?} must be an absolute path pattern",
                    loc.get_ref()
                ),
            ));
        }
        let pat = Pattern::new(loc.get_ref()).map_err(|e| src.err(loc.span(), e))?;
        if !p.writable_locations.contains(&pat) {
            p.writable_locations.push(pat);
        }
    }

    if let Some(f) = &file.scan {
        p.scan = super::scan::parse(&src, f)?;
    }
    if let Some(f) = &file.protocol {
        p.protocol = super::protocol::parse(&src, f)?;
    }
    if let Some(u) = &file.unmanaged {
        let u = u.get_ref();
        if let Some(r) = &u.risk {
            p.unmanaged.risk = u8::try_from(*r.get_ref())
                .ok()
                .filter(|r| (1..=3).contains(r))
                .ok_or_else(|| {
                    src.err(
                        r.span(),
                        format!(
                            "unmanaged risk {} is not 1 (no tier of its own), 2 (Medium) or 3 (High)",
                            r.get_ref()
                        ),
                    )
                })?;
        }
        if let Some(paths) = &u.trusted_paths {
            p.unmanaged.trusted_paths.clear();
            for t in paths.get_ref() {
                if !t.get_ref().starts_with('/') {
                    return Err(src.err(
                        t.span(),
                        format!(
                            "unmanaged trusted_paths entry {:?} must be an absolute path pattern",
                            t.get_ref()
                        ),
                    ));
                }
                let pat = Pattern::new(t.get_ref()).map_err(|e| src.err(t.span(), e))?;
                if !p.unmanaged.trusted_paths.contains(&pat) {
                    p.unmanaged.trusted_paths.push(pat);
                }
            }
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

/// A list of patterns, each compiled here, once.
fn patterns(src: &Source, key: &str, v: &Option<SVec<String>>) -> Result<Vec<Pattern>> {
    let mut out = Vec::new();
    list(src, key, v, |s| {
        if s.get_ref().is_empty() {
            return Err(src.err(s.span(), format!("empty pattern in {key}")));
        }
        out.push(Pattern::new(s.get_ref()).map_err(|e| src.err(s.span(), e))?);
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
    let mut actions = Vec::new();
    list(src, "actions", &f.actions, |a| {
        if Flow::from_action(a.get_ref()).is_none() {
            return Err(src.err(
                a.span(),
                format!(
                    "action {:?} is not one of network-connect, network-listen, network-accept",
                    a.get_ref()
                ),
            ));
        }
        actions.push(a.get_ref().clone());
        Ok(())
    })?;
    let schedule = match &f.schedule {
        None => None,
        Some(s) => Some(parse_schedule(s.get_ref()).map_err(|e| src.err(s.span(), e))?),
    };
    let r = AllowRule {
        name,
        reason: f.reason.clone(),
        actions,
        executables: patterns(src, "executables", &f.executables)?,
        parent_executables: patterns(src, "parent_executables", &f.parent_executables)?,
        users: patterns(src, "users", &f.users)?,
        destination_networks,
        destination_ports,
        container_ids: patterns(src, "container_ids", &f.container_ids)?,
        kubernetes_namespaces: patterns(src, "kubernetes_namespaces", &f.kubernetes_namespaces)?,
        pod_names: patterns(src, "pod_names", &f.pod_names)?,
        host_names: patterns(src, "host_names", &f.host_names)?,
        schedule,
    };
    // `actions` only narrows what a rule applies to: alone it names no who or where.
    let only_schedule = AllowRule {
        schedule: None,
        actions: vec![],
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
    let no_conditions = AllowRule {
        actions: vec![],
        ..r.condition_key()
    } == AllowRule::empty();
    if no_conditions {
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

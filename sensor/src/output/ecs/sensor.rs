//! `sensor.*`: the sensor's own fields, per line kind.

use std::{borrow::Cow, collections::BTreeMap, net::IpAddr};

use serde::{Deserialize, Serialize};

use super::{Extra, SCHEMA_VERSION, Severity};

/// `sensor.*` of every line: `schema_version`, then the kind's own fields.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SensorFields<'a, S> {
    /// Which version of the `sensor.*` fields the line follows; empty in lines written
    /// before it was added.
    #[serde(default)]
    pub schema_version: Cow<'a, str>,
    #[serde(flatten)]
    pub fields: S,
}

impl<S> SensorFields<'_, S> {
    pub fn new(fields: S) -> Self {
        Self {
            schema_version: Cow::Borrowed(SCHEMA_VERSION),
            fields,
        }
    }
}

/// `sensor.*` of a connection line.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ConnectionSensor<'a> {
    /// The allow rule that suppressed the alert.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_rule: Option<Cow<'a, str>>,
    /// The beacon this connection is part of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beacon: Option<BeaconStats<'a>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_id: Option<u64>,
    /// Whether the container id (and the pod found from it) is the runtime's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<ContainerTrust<'a>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<Original>,
    /// Flood control: how many connections the line stands for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folded_count: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matched: Option<Matched<'a>>,
    /// Listens and inbound connections: the socket's network namespace inode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<u32>,
    /// The kernel hook that saw the connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<SensorProcess<'a>>,
    /// What the flow's first bytes said that ECS has no field for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<super::SensorProtocol<'a>>,
    /// The redaction patterns that fired on the command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redacted: Option<Vec<Cow<'a, str>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<Severity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Original>,
    /// The fields cut at their bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncated: Option<Vec<Cow<'a, str>>>,
    /// The ECS fields the sensor could not learn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unknown_fields: Option<Vec<Cow<'a, str>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<UserSource<'a>>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `sensor.destination` / `sensor.source`: the address as the kernel had it, where the
/// line prints another form (IPv4-mapped IPv6 as IPv4).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Original {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_ip: Option<IpAddr>,
}

/// `sensor.container`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ContainerTrust<'a> {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trusted: Option<bool>,
}

/// `sensor.user`: whose account database named the user.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct UserSource<'a> {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name_source: Option<Cow<'a, str>>,
}

/// `sensor.matched`: which lists matched.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Matched<'a> {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub excluded_network: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub high_risk_executable: Option<Cow<'a, str>>,
    /// `executable`, `content`, `location` or `comm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub high_risk_matched_by: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub known_c2_port: Option<bool>,
    /// Listens: bound to loopback only (scored one tier less).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loopback_only: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub non_standard_port: Option<bool>,
    /// What the first bytes added: `protocol_mismatch`, `protocol_non_standard_port`,
    /// `bare_ip_name`, `ja4_blocklisted`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Vec<Cow<'a, str>>>,
    /// Listens: a known service away from its standard ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_away: Option<ServiceAway<'a>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unmanaged_executable: Option<bool>,
}

/// `sensor.matched.service_away`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ServiceAway<'a> {
    pub service: Cow<'a, str>,
    #[serde(default)]
    pub standard: Vec<u16>,
}

/// `sensor.process`: what the sensor learnt of the process.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SensorProcess<'a> {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ancestors: Option<Vec<Cow<'a, str>>>,
    /// How the connection was tied to its process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attribution: Option<Cow<'a, str>>,
    /// The high-risk entry the executable is a copy of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_match: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fileless: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_mismatch: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lineage: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loader: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loader_check: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loader_claim: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<Cow<'a, str>>,
    /// Not in the host's package database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unmanaged: Option<bool>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `sensor.beacon`: a beacon's interval statistics.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct BeaconStats<'a> {
    pub connections: u64,
    pub dispersion: f64,
    pub first_seen: Cow<'a, str>,
    pub gaps_analysed: usize,
    pub interval_seconds: f64,
    pub jitter_seconds: f64,
    pub last_seen: Cow<'a, str>,
    pub skew: f64,
}

/// `sensor.*` of a `beacon-detected` alert.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct BeaconSensor<'a> {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beacon: Option<BeaconStats<'a>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<Original>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redacted: Option<Vec<Cow<'a, str>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<Severity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Original>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncated: Option<Vec<Cow<'a, str>>>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `sensor.*` of an `alert-rollup` line.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RollupSensor<'a> {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollup: Option<Rollup<'a>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<Severity>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `sensor.rollup`: one group's summary of one window.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Rollup<'a> {
    pub connections: u64,
    pub connections_in_no_group: u64,
    pub destinations: Vec<Cow<'a, str>>,
    pub destinations_not_listed: u64,
    pub distinct_destinations: usize,
    pub groups_in_window: usize,
    pub partial_window: bool,
    pub ports: Vec<u16>,
    pub ports_not_listed: u64,
    /// Alerts per severity (severities without alerts left out).
    pub severities: BTreeMap<Severity, u64>,
    pub window_end: Cow<'a, str>,
    pub window_seconds: f64,
    pub window_start: Cow<'a, str>,
}

/// `sensor.*` of a `network-scan` alert.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ScanSensor<'a> {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scan: Option<Scan<'a>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<Severity>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `sensor.scan`: one group's connects in one window, past the threshold.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Scan<'a> {
    /// `threshold` (just passed), `window-end`, `memory-budget` (ended early), `exit`.
    pub reason: Cow<'a, str>,
    pub connections: u64,
    /// Connects with no line of their own (the rest were printed: before the threshold,
    /// and each known C2 port new for its process).
    pub connections_folded: u64,
    pub distinct_ports: usize,
    pub distinct_hosts: usize,
    /// Connects to hosts past the counted ones (`distinct_hosts` is then a lower bound).
    pub hosts_not_counted: u64,
    /// The first distinct (host, port) pairs.
    pub sample: Vec<ScanTarget>,
    /// Every known C2 port hit, in full.
    pub c2_ports: Vec<u16>,
    pub pids: Vec<u64>,
    pub processes_not_listed: u64,
    pub threshold_ports: u32,
    pub threshold_hosts: u32,
    pub window_seconds: u32,
    pub window_start: Cow<'a, str>,
}

/// One sampled destination of a scan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ScanTarget {
    pub ip: std::net::IpAddr,
    pub port: u16,
}

//! The ECS line every kind shares: `@timestamp`, `ecs`, `agent`, `event`, `host`, the
//! connection's sections where it has them, and `sensor.*` (`S`, the kind's own fields).

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use super::{
    Action, Extra, Kind, Strs,
    fields::*,
    is_empty,
    protocol::{Http, Tls, Url, UserAgent},
    sensor::SensorFields,
};

/// One line: the sections a kind does not have are `None` and left out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[schemars(bound = "S: schemars::JsonSchema")]
pub struct EcsLine<'a, S> {
    /// RFC 3339, nanoseconds, UTC.
    #[serde(rename = "@timestamp", default)]
    pub timestamp: Cow<'a, str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<Cow<'a, Agent<'static>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<Container<'a>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<Endpoint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ecs: Option<EcsVersion<'a>>,
    pub event: Event<'a>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<Group<'a>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<Host<'a>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<Http<'a>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<Network<'a>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orchestrator: Option<Orchestrator<'a>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<Process<'a>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub related: Option<Related<'a>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<Rule<'a>>,
    /// Absent in lines of other tools: read as empty.
    #[serde(default)]
    #[schemars(default = "no_schema_default")]
    pub sensor: SensorFields<'a, S>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Endpoint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threat: Option<Cow<'a, Threat<'static>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls<'a>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<Url<'a>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<User<'a>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<UserAgent<'a>>,
    /// Top-level fields this type does not know (replay keeps them).
    #[serde(flatten)]
    pub extra: Extra,
}

/// The schema has no default for `sensor` (the writer always sets it, and a status
/// payload need not be `Default`): schemars leaves out a default it cannot serialise.
struct NoSchemaDefault;

fn no_schema_default() -> NoSchemaDefault {
    NoSchemaDefault
}

/// `ecs.version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct EcsVersion<'a> {
    pub version: Cow<'a, str>,
}

/// `agent.*`: who wrote the line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Agent<'a> {
    /// Stable per host and agent type (a hash of `host.id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Cow<'a, str>>,
    #[serde(rename = "type", default)]
    pub kind: Cow<'a, str>,
    #[serde(default)]
    pub version: Cow<'a, str>,
}

/// `event.*`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Event<'a> {
    pub action: Action,
    #[serde(default, skip_serializing_if = "is_empty")]
    pub category: Strs<'a>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<Cow<'a, str>>,
    /// A span's end: a folded line's last repeat, a beacon's last connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<Cow<'a, str>>,
    /// Unique per line: this run's random id and a counter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Cow<'a, str>>,
    #[serde(default)]
    pub kind: Kind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Cow<'a, str>>,
    /// The lists that matched, the beacon and the allow rule, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Cow<'a, str>>,
    /// 0 (not scored) to 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub risk_score: Option<u8>,
    /// The same number (ECS's numeric severity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<Cow<'a, str>>,
    #[serde(rename = "type", default, skip_serializing_if = "is_empty")]
    pub types: Strs<'a>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `host.*`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Host<'a> {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<Cow<'a, str>>,
    /// The machine id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<Cow<'a, Os<'static>>>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `host.os.*`, from the host's os-release and kernel.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Os<'a> {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "type")]
    pub kind: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<Cow<'a, str>>,
}

impl<'a> Event<'a> {
    /// An event of `kind` and `action` with nothing else set.
    pub fn new(kind: Kind, action: Action) -> Self {
        Self {
            action,
            category: Cow::Borrowed(&[]),
            dataset: None,
            end: None,
            id: None,
            kind,
            module: Some(Cow::Borrowed("sensor")),
            outcome: None,
            reason: None,
            risk_score: None,
            severity: None,
            start: None,
            types: Cow::Borrowed(&[]),
            extra: Extra::new(),
        }
    }
}

impl<'a, S> EcsLine<'a, S> {
    /// A line at `timestamp` with `event` and `sensor` and nothing else yet.
    pub fn new(timestamp: Cow<'a, str>, event: Event<'a>, sensor: S) -> Self {
        Self {
            timestamp,
            agent: None,
            container: None,
            destination: None,
            ecs: None,
            event,
            group: None,
            host: None,
            http: None,
            network: None,
            orchestrator: None,
            process: None,
            related: None,
            rule: None,
            sensor: SensorFields::new(sensor),
            source: None,
            threat: None,
            tls: None,
            url: None,
            user: None,
            user_agent: None,
            extra: Extra::new(),
        }
    }
}

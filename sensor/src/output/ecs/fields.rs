//! The ECS sections of a connection: process, user, the two ends, network, container,
//! orchestrator, rule and threat.

use std::{borrow::Cow, net::IpAddr};

use serde::{Deserialize, Serialize};

use super::{Extra, Strs, is_empty};

/// `process.*`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Process<'a> {
    /// The arguments the line shows (redacted, each bounded); `args_count` counts all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<Cow<'a, str>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args_count: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_line: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity_id: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executable: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Parent<'a>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread: Option<Thread<'a>>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `process.parent.*`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Parent<'a> {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity_id: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executable: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
}

/// `process.thread.*`: the task that made the connection (`name` is its comm).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Thread<'a> {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<Cow<'a, str>>,
}

/// `user.*` (`id` is the uid as a string, as ECS has it).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct User<'a> {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<Cow<'a, str>>,
}

/// `group.*`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Group<'a> {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Cow<'a, str>>,
}

/// `source.*` or `destination.*`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Endpoint {
    /// IPv4-mapped IPv6 addresses are printed in their IPv4 form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpAddr>,
    /// Absent when unknown (a local port not yet bound).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `network.*`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Network<'a> {
    /// The Community ID flow hash (v1), over the transport's IANA number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub community_id: Option<Cow<'a, str>>,
    /// `egress` (connects), `ingress` (inbound connections); none for listens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<Cow<'a, str>>,
    /// "6" (TCP) or "17" (UDP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iana_number: Option<Cow<'a, str>>,
    /// What the first bytes speak: `tls`, `http`, `ssh` or `unknown`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Cow<'a, str>>,
    /// `tcp` or `udp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<Cow<'a, str>>,
    /// `ipv4` or `ipv6`.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "type")]
    pub kind: Option<Cow<'a, str>>,
}

/// `related.*`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Related<'a> {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip: Vec<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<Vec<Cow<'a, str>>>,
}

/// `container.*`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Container<'a> {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<Cow<'a, str>>,
}

/// `orchestrator.*`: the Kubernetes pod.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Orchestrator<'a> {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<Resource<'a>>,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "type")]
    pub kind: Option<Cow<'a, str>>,
}

/// `orchestrator.resource.*`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Resource<'a> {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "type")]
    pub kind: Option<Cow<'a, str>>,
}

/// `rule.*`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Rule<'a> {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<Cow<'a, str>>,
}

/// `threat.*`: MITRE ATT&CK T1571 under TA0011.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Threat<'a> {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub framework: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tactic: Option<Tactic<'a>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub technique: Option<Tactic<'a>>,
}

/// `threat.tactic.*` or `threat.technique.*`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Tactic<'a> {
    #[serde(default, skip_serializing_if = "is_empty")]
    pub id: Strs<'a>,
    #[serde(default, skip_serializing_if = "is_empty")]
    pub name: Strs<'a>,
    #[serde(default, skip_serializing_if = "is_empty")]
    pub reference: Strs<'a>,
}

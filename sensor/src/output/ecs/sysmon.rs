//! `--format sysmon-json`: a connection as Sysmon Event ID 3 (NetworkConnect), with
//! Sysmon's field names. Sysmon prints `Initiated` and the `*IsIpv6` flags as the strings
//! "true" and "false"; so does this.

use std::{borrow::Cow, net::IpAddr};

use serde::{Deserialize, Serialize};

use super::{Extra, Severity};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "PascalCase")]
pub struct SysmonLine<'a> {
    #[serde(rename = "EventID")]
    pub event_id: u32,
    pub channel: Cow<'a, str>,
    pub computer: Cow<'a, str>,
    pub rule_name: Cow<'a, str>,
    pub utc_time: Cow<'a, str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_guid: Option<Cow<'a, str>>,
    pub process_id: u32,
    pub image: Cow<'a, str>,
    pub user: Cow<'a, str>,
    /// `tcp` or `udp`.
    pub protocol: Cow<'a, str>,
    /// "true" when this host opened the connection.
    pub initiated: Cow<'a, str>,
    pub source_is_ipv6: Cow<'a, str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_port: Option<u16>,
    pub destination_is_ipv6: Cow<'a, str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_ip: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_port: Option<u16>,
    /// The name the client asked for in its first bytes (TLS SNI, HTTP Host without port),
    /// not a DNS lookup as Sysmon's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_hostname: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_image: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_process_id: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_process_guid: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_line: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_file_name: Option<Cow<'a, str>>,
    #[serde(rename = "sensor")]
    pub sensor: SysmonSensor<'a>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// The sensor's verdict riding along under `sensor`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SysmonSensor<'a> {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_rule: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_match: Option<Cow<'a, str>>,
    /// The line's `event.id` in the ECS form.
    pub event_id: Cow<'a, str>,
    /// The JA4 of the flow's TLS ClientHello.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ja4: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<Cow<'a, str>>,
    /// What the first bytes added (`sensor.matched.protocol` of the ECS line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matched_protocol: Option<Vec<Cow<'a, str>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_destination_ip: Option<IpAddr>,
    /// What the first bytes speak (`network.protocol` of the ECS line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redacted: Option<Vec<Cow<'a, str>>>,
    pub risk_score: u8,
    #[serde(default)]
    pub schema_version: Cow<'a, str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<Severity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncated: Option<Vec<Cow<'a, str>>>,
}

//! The sections a flow's first bytes fill: `tls.*`, `http.*`, `url.*`, `user_agent.*` (ECS),
//! and `sensor.protocol` for what ECS has no field for (the SSH banner, the ALPN list
//! offered, how much was looked at).

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

/// `tls.*`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Tls<'a> {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<TlsClient<'a>>,
    /// The highest version the client offered (`1.3`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<Cow<'a, str>>,
    /// `tls` (or `ssl` for SSL 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_protocol: Option<Cow<'a, str>>,
}

/// `tls.client.*`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TlsClient<'a> {
    /// The JA4 client fingerprint. ECS has `ja3` only; `ja4` is this sensor's, named alike.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ja4: Option<Cow<'a, str>>,
    /// The SNI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<Cow<'a, str>>,
}

/// `http.*`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Http<'a> {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<HttpRequest<'a>>,
}

/// `http.request.*`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct HttpRequest<'a> {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<Cow<'a, str>>,
}

/// `url.*`: only the domain (the Host header without its port); never the path.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Url<'a> {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<Cow<'a, str>>,
}

/// `user_agent.*`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct UserAgent<'a> {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original: Option<Cow<'a, str>>,
}

/// `sensor.protocol`: what the first bytes said that ECS has no field for.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SensorProtocol<'a> {
    /// The ALPN protocols the client offered, in its order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpn: Option<Vec<Cow<'a, str>>>,
    /// Bytes of the flow's start looked at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub captured_bytes: Option<usize>,
    /// The SSH identification line (`SSH-2.0-OpenSSH_9.6`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_banner: Option<Cow<'a, str>>,
    /// The message did not end within the bytes looked at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncated: Option<bool>,
}

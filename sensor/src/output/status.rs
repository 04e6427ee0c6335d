//! The sensor's own lines (`event.kind` state, metric or pipeline_error): the ECS envelope
//! around a `sensor.*` payload of any serialisable type.

use std::{borrow::Cow, collections::BTreeMap};

use serde::Serialize;

use crate::{
    detect::decision::{EngineSummary, StatsReport},
    output::{
        clock,
        context::{self, Context},
        ecs::{Action, Agent, EcsVersion, Event, Host, Kind, StatusLine},
    },
};

const HOST: &[Cow<'static, str>] = &[Cow::Borrowed("host")];
const INFO: &[Cow<'static, str>] = &[Cow::Borrowed("info")];

/// A sensor health line, now, with `sensor` as its `sensor.*` fields.
pub fn status<'a, T: Serialize>(
    kind: Kind,
    action: Action,
    host_name: impl Into<Cow<'a, str>>,
    sensor: T,
) -> StatusLine<'a, T> {
    let mut event = Event::new(kind, action);
    event.id = Some(Cow::Owned(context::next_event_id()));
    event.category = Cow::Borrowed(HOST);
    event.types = Cow::Borrowed(INFO);
    event.dataset = Some(Cow::Borrowed("sensor.status"));
    let mut line = StatusLine::new(
        Cow::Owned(clock::rfc3339(clock::BootClock::now_unix_ns())),
        event,
        sensor,
    );
    line.ecs = Some(EcsVersion {
        version: Cow::Borrowed(context::ECS_VERSION),
    });
    line.agent = Some(Cow::Owned(Agent {
        id: None,
        kind: Cow::Borrowed(context::AGENT_TYPE),
        version: Cow::Borrowed(context::AGENT_VERSION),
    }));
    line.host = Some(Host {
        name: Some(host_name.into()),
        ..Default::default()
    });
    line
}

/// `sensor.*` of the engine's `engine-summary` line.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct EngineFields<'a> {
    pub engine: &'a StatsReport,
    pub window: Window<'a>,
}

/// The summary window's connections and suppressions.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct Window<'a> {
    pub connections: u64,
    pub suppressed_by_rule: &'a BTreeMap<String, u64>,
}

/// The engine's `engine-summary` state line, at the summary's time.
pub fn engine_summary<'a>(
    s: &'a EngineSummary,
    cx: &'a Context,
) -> StatusLine<'a, EngineFields<'a>> {
    let mut line = status(
        Kind::State,
        Action::EngineSummary,
        cx.host.hostname.as_str(),
        EngineFields {
            engine: &s.stats,
            window: Window {
                connections: s.window_connections,
                suppressed_by_rule: &s.window_suppressed,
            },
        },
    );
    line.timestamp = Cow::Owned(clock::rfc3339(s.at_ns));
    // Stamped like the engine's other lines (agent id, host fields).
    line.agent = None;
    cx.stamp(&mut line);
    line
}

/// `sensor.*` of `policy-reloaded` and `policy-reload-failed`.
#[derive(Debug, Default, Serialize, schemars::JsonSchema)]
pub struct PolicyReload {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_rules: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `sensor.*` of `events-lost`: the kernel's ring buffer was full.
#[derive(Debug, Default, Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct EventsLost {
    pub lost_events: u64,
    pub lost_events_total: u64,
    pub cause: Cow<'static, str>,
}

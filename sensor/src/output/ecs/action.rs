//! `event.action` and `event.kind`: the closed sets of values the sensor writes.

use serde::{Deserialize, Serialize};

use crate::kernel::records::Flow;

/// `event.action` of every line the sensor writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    NetworkConnect,
    NetworkListen,
    NetworkAccept,
    BeaconDetected,
    NetworkScan,
    AlertRollup,
    EngineSummary,
    SensorStarted,
    SensorStats,
    SensorStopped,
    EventsLost,
    OutputDropped,
    PolicyReloaded,
    PolicyReloadFailed,
    ReplaySummary,
}

impl Action {
    pub const ALL: [Action; 15] = [
        Action::NetworkConnect,
        Action::NetworkListen,
        Action::NetworkAccept,
        Action::BeaconDetected,
        Action::NetworkScan,
        Action::AlertRollup,
        Action::EngineSummary,
        Action::SensorStarted,
        Action::SensorStats,
        Action::SensorStopped,
        Action::EventsLost,
        Action::OutputDropped,
        Action::PolicyReloaded,
        Action::PolicyReloadFailed,
        Action::ReplaySummary,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::NetworkConnect => "network-connect",
            Action::NetworkListen => "network-listen",
            Action::NetworkAccept => "network-accept",
            Action::BeaconDetected => "beacon-detected",
            Action::NetworkScan => "network-scan",
            Action::AlertRollup => "alert-rollup",
            Action::EngineSummary => "engine-summary",
            Action::SensorStarted => "sensor-started",
            Action::SensorStats => "sensor-stats",
            Action::SensorStopped => "sensor-stopped",
            Action::EventsLost => "events-lost",
            Action::OutputDropped => "output-dropped",
            Action::PolicyReloaded => "policy-reloaded",
            Action::PolicyReloadFailed => "policy-reload-failed",
            Action::ReplaySummary => "replay-summary",
        }
    }

    /// The action an `event.action` string names.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }

    /// The action of a connection line of this flow (UDP connects are `network-connect`).
    pub fn of_flow(flow: Flow) -> Self {
        match flow {
            Flow::Connect | Flow::Udp => Action::NetworkConnect,
            Flow::Listen => Action::NetworkListen,
            Flow::Inbound => Action::NetworkAccept,
        }
    }

    /// The flow a connection line's action names (TCP unless `network.transport` says UDP).
    pub fn flow(self) -> Option<Flow> {
        match self {
            Action::NetworkConnect => Some(Flow::Connect),
            Action::NetworkListen => Some(Flow::Listen),
            Action::NetworkAccept => Some(Flow::Inbound),
            _ => None,
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `event.kind`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Alert,
    #[default]
    Event,
    State,
    Metric,
    PipelineError,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Alert => "alert",
            Kind::Event => "event",
            Kind::State => "state",
            Kind::Metric => "metric",
            Kind::PipelineError => "pipeline_error",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_serialise_as_their_names() {
        for a in Action::ALL {
            assert_eq!(serde_json::to_string(&a).unwrap(), format!("\"{a}\""));
            assert_eq!(Action::parse(a.as_str()), Some(a));
        }
        for f in [Flow::Connect, Flow::Listen, Flow::Inbound, Flow::Udp] {
            assert_eq!(Action::of_flow(f).as_str(), f.action());
        }
        assert_eq!(
            serde_json::to_string(&Kind::PipelineError).unwrap(),
            "\"pipeline_error\""
        );
    }
}

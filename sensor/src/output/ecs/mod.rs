//! The typed event model: every line the sensor prints is one of these types, serialised
//! with serde; every reader (replay, `Subject` from a recorded line, watch) deserialises the
//! same types. Strings borrow from the enriched connection where that saves a copy
//! (`Cow`); absent fields are left out (`skip_serializing_if`); fields a type does not know
//! are kept in its `extra` map, so a replayed line is printed with everything it had.
//!
//! The line kinds: [`ConnectionLine`] (`network-connect`, `network-listen`,
//! `network-accept`, UDP connects), [`BeaconLine`], [`RollupLine`], [`ScanLine`], [`StatusLine`] (the
//! sensor's own state, metric and error lines) and [`SysmonLine`] (`--format sysmon-json`).

pub mod action;
pub mod envelope;
pub mod fields;
pub mod protocol;
pub mod sensor;
pub mod sysmon;

use std::{borrow::Cow, collections::BTreeMap};

pub use crate::detect::severity::Severity;
pub use action::{Action, Kind};
pub use envelope::{Agent, EcsLine, EcsVersion, Event, Host, Os};
pub use fields::{
    Container, Endpoint, Group, Network, Orchestrator, Parent, Process, Related, Resource, Rule,
    Tactic, Thread, Threat, User,
};
pub use protocol::{Http, HttpRequest, SensorProtocol, Tls, TlsClient, Url, UserAgent};
pub use sensor::{
    BeaconSensor, BeaconStats, ConnectionSensor, ContainerTrust, Matched, Original, Rollup,
    RollupSensor, Scan, ScanSensor, ScanTarget, SensorFields, SensorProcess, ServiceAway,
    UserSource,
};
pub use sysmon::{SysmonLine, SysmonSensor};

/// Which version of the `sensor.*` fields a line follows (`ecs.version` covers ECS's own).
pub const SCHEMA_VERSION: &str = "1";

/// Fields a type does not know, kept as they were read.
pub type Extra = BTreeMap<String, serde_json::Value>;

/// A list of strings, borrowed where it is a constant. (The items are `'static`, owned
/// when read: a `Cow` of borrowed items would make every line type invariant in `'a`.)
pub type Strs<'a> = Cow<'a, [Cow<'static, str>]>;

/// A connection line (`network-connect`, `network-listen`, `network-accept`).
pub type ConnectionLine<'a> = EcsLine<'a, ConnectionSensor<'a>>;
/// A `beacon-detected` alert.
pub type BeaconLine<'a> = EcsLine<'a, BeaconSensor<'a>>;
/// An `alert-rollup` line.
pub type RollupLine<'a> = EcsLine<'a, RollupSensor<'a>>;
/// A `network-scan` alert.
pub type ScanLine<'a> = EcsLine<'a, ScanSensor<'a>>;
/// A line of the sensor's own (`sensor-started`, `sensor-stats`, `events-lost`, ...):
/// `T` is its `sensor.*` payload.
pub type StatusLine<'a, T> = EcsLine<'a, T>;

/// Whether a `Cow` string list is empty (for `skip_serializing_if`).
#[allow(clippy::ptr_arg)] // serde passes the field as it is: a `&Cow`.
pub(crate) fn is_empty<T: Clone>(v: &Cow<'_, [T]>) -> bool {
    v.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    /// A line of the current release (the replay fixture) reads into the type and writes
    /// back the same, unknown fields included; only `sensor.schema_version` is added.
    #[test]
    fn a_recorded_line_round_trips_with_its_unknown_fields() {
        let text = include_str!("../../../fuzz/corpus/replay_line/network-connect.jsonl");
        let mut recorded: Value = serde_json::from_str(text.trim()).unwrap();
        recorded["x_tool"] = json!({"kept": [1, 2]});
        recorded["process"]["x_more"] = json!("kept too");
        recorded["sensor"]["x_new"] = json!(7);
        let line: ConnectionLine<'static> = serde_json::from_value(recorded.clone()).unwrap();
        assert_eq!(line.event.action, Action::NetworkConnect);
        assert_eq!(line.sensor.fields.severity, Some(Severity::High));
        assert_eq!(line.sensor.schema_version, "");
        let mut back = serde_json::to_value(&line).unwrap();
        back["sensor"]
            .as_object_mut()
            .unwrap()
            .remove("schema_version");
        assert_eq!(back, recorded);
    }

    #[test]
    fn every_line_kind_has_a_schema() {
        for schema in [
            schemars::schema_for!(ConnectionLine<'static>),
            schemars::schema_for!(BeaconLine<'static>),
            schemars::schema_for!(RollupLine<'static>),
            schemars::schema_for!(ScanLine<'static>),
            schemars::schema_for!(StatusLine<'static, Extra>),
            schemars::schema_for!(SysmonLine<'static>),
        ] {
            let v = serde_json::to_value(&schema).unwrap();
            assert!(v["properties"].is_object(), "{v}");
        }
    }
}

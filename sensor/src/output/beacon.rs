//! The `beacon-detected` alert: who and where (the connection's time, host, process,
//! user, ends, network and container) and the interval statistics.

use std::borrow::Cow;

use crate::{
    detect::{beacon::Beacon, severity::Severity},
    output::{
        BEACON_RULE_ID, BEACON_RULE_NAME, TECHNIQUE_URL, clock,
        connection::{beacon_stats, threat},
        ecs::{Action, BeaconLine, BeaconSensor, ConnectionLine, EcsLine, Event, Kind, Rule},
        flow::NETWORK,
    },
};

const CONNECTION_INFO: &[Cow<'static, str>] = &[Cow::Borrowed("connection"), Cow::Borrowed("info")];

/// The alert for the connection `conn` (its line, live or recorded) that made a beacon.
pub fn line<'a>(conn: ConnectionLine<'a>, b: &Beacon, risk: u8) -> BeaconLine<'a> {
    let mut event = Event::new(Kind::Alert, Action::BeaconDetected);
    event.category = Cow::Borrowed(NETWORK);
    event.types = Cow::Borrowed(CONNECTION_INFO);
    event.dataset = Some(Cow::Borrowed("sensor.beacon"));
    event.risk_score = Some(risk);
    event.severity = Some(risk);
    event.start = Some(Cow::Owned(clock::rfc3339(b.first_seen_ns)));
    event.end = Some(Cow::Owned(clock::rfc3339(b.last_seen_ns)));
    event.reason = Some(Cow::Owned(format!(
        "{} connections at a regular {:.1} s interval (jitter {:.2} s)",
        b.connections, b.stats.interval_s, b.stats.jitter_s
    )));
    // The connection's own sensor fields: redacted, truncated, original addresses.
    let own = conn.sensor.fields;
    let mut line = EcsLine::new(
        conn.timestamp,
        event,
        BeaconSensor {
            beacon: Some(beacon_stats(b)),
            destination: own.destination,
            redacted: own.redacted,
            severity: Severity::of(risk),
            source: own.source,
            truncated: own.truncated,
            extra: Default::default(),
        },
    );
    line.agent = conn.agent;
    line.ecs = conn.ecs;
    line.host = conn.host;
    line.process = conn.process;
    line.user = conn.user;
    line.destination = conn.destination;
    line.network = conn.network;
    line.container = conn.container;
    line.related = conn.related;
    line.rule = Some(Rule {
        id: Some(Cow::Borrowed(BEACON_RULE_ID)),
        name: Some(Cow::Borrowed(BEACON_RULE_NAME)),
        reference: Some(Cow::Borrowed(TECHNIQUE_URL)),
    });
    line.threat = Some(Cow::Borrowed(threat()));
    line
}

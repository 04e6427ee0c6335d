//! A replayed line: the recorded document, its scoring fields rewritten for the decision
//! the current policy made. Everything else in it is printed as recorded.

use serde_json::{Map, Value, json};

use crate::{
    detect::decision::{BeaconAlert, Decision},
    output::{self, Render, clock, context::Context},
};

impl Render for Value {
    fn connection(&self, d: &Decision, _cx: &Context) -> Value {
        let mut doc = self.clone();
        let Some(obj) = doc.as_object_mut() else {
            return doc;
        };
        let alert = d.alert();
        let reasons = d.reasons();
        let event = obj.entry("event").or_insert_with(|| json!({}));
        if !event.is_object() {
            *event = json!({});
        }
        if let Some(e) = event.as_object_mut() {
            e.insert("kind".into(), json!(if alert { "alert" } else { "event" }));
            e.insert("risk_score".into(), json!(d.risk));
            e.insert("severity".into(), json!(d.risk));
            match reasons.is_empty() {
                true => e.remove("reason"),
                false => e.insert("reason".into(), json!(reasons.join("; "))),
            };
            // A folded line spans its connections: event.start is the first repeat,
            // event.end (like @timestamp) the last.
            if let Some(first) = d.fold.and_then(|f| f.first_ns) {
                e.insert("start".into(), json!(clock::rfc3339(first)));
                if let Some(ts) = self.get("@timestamp") {
                    e.insert("end".into(), ts.clone());
                }
            }
        }
        if alert {
            obj.insert("rule".into(), output::connect_rule());
            obj.insert("threat".into(), output::threat());
        } else {
            obj.remove("rule");
            obj.remove("threat");
        }
        let sensor = obj.entry("sensor").or_insert_with(|| json!({}));
        if !sensor.is_object() {
            *sensor = json!({});
        }
        if let Some(s) = sensor.as_object_mut() {
            s.insert("severity".into(), json!(d.severity()));
            s.insert("matched".into(), output::matched(&d.verdict));
            s.insert("allow_rule".into(), json!(d.allow_rule));
            s.insert(
                "beacon".into(),
                d.beacon.as_ref().map_or(Value::Null, output::beacon_fields),
            );
            match d.fold {
                Some(f) => s.insert("folded_count".into(), json!(f.count)),
                None => s.remove("folded_count"),
            };
        }
        output::prune(&mut doc);
        doc
    }

    fn beacon(&self, b: &BeaconAlert<Self>, _cx: &Context) -> Value {
        // The recorded line is the input here: its parts are taken as recorded.
        let parts: Map<String, Value> = self.as_object().cloned().unwrap_or_default();
        output::beacon_event(parts, &b.beacon, b.risk)
    }
}

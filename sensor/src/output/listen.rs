//! Lines for the flows beyond outbound TCP: `network-listen` (a listening socket: its
//! local end in `source.*`), `network-accept` (an inbound connection to a listener:
//! `network.direction: ingress`, the remote peer in `source.*`, the local end in
//! `destination.*`, the listener's process) and UDP connects (`network.transport: udp`).
//! Each starts from the connection line of the same record, so every field the
//! connection line carries (process, user, container, sensor.*) is rendered in one place,
//! and changes only what differs.

use serde_json::{Value, json};

use crate::{
    detect::decision::Decision,
    enrich::Enriched,
    kernel::{records::Flow, sockets::UDP_HOOK},
    output::{Context, Render, prune},
};

pub const LISTEN_RULE_NAME: &str = "Listener on a non-standard port (bind shell or moved service)";
pub const LISTEN_RULE_ID: &str = "t1571-listen";
pub const INBOUND_RULE_NAME: &str = "Inbound connection to a flagged listener";
pub const INBOUND_RULE_ID: &str = "t1571-inbound";

/// What output needs beyond [`Render`] for these flows.
pub trait Flowed: Render {
    fn flow(&self) -> Flow;
    /// The line for a listen, an inbound connection or a UDP connect.
    fn flow_line(&self, d: &Decision, cx: &Context) -> Value;
}

impl Flowed for Enriched {
    fn flow(&self) -> Flow {
        self.conn.flow
    }

    fn flow_line(&self, d: &Decision, cx: &Context) -> Value {
        let c = &self.conn;
        let mut doc = self.connection(d, cx);
        let Some(o) = doc.as_object_mut() else {
            return doc;
        };
        let local = json!({"ip": c.src.to_string(), "port": c.sport});
        let peer = json!({"ip": c.dst.to_string(), "port": c.dport});
        let alert = d.alert();
        if matches!(c.flow, Flow::Listen | Flow::Inbound)
            && let Some(m) = o
                .get_mut("sensor")
                .and_then(|x| x.get_mut("matched"))
                .and_then(Value::as_object_mut)
        {
            let v = &d.verdict;
            m.insert("service_away".into(), json!(v.service_away));
            m.insert("loopback_only".into(), json!(v.loopback_only));
        }
        // The listener's network namespace (inode, as /proc/PID/ns/net): the same port
        // in two namespaces is two listeners.
        if matches!(c.flow, Flow::Listen | Flow::Inbound) && c.netns != 0 {
            set(o, "sensor", "netns", json!(c.netns));
        }
        match c.flow {
            Flow::Connect => {}
            Flow::Listen => {
                o.remove("destination");
                o.insert("source".into(), local);
                set(o, "event", "action", json!(c.flow.action()));
                set(o, "event", "type", json!(["start"]));
                if let Some(n) = o.get_mut("network").and_then(Value::as_object_mut) {
                    n.remove("direction");
                }
                if alert {
                    o.insert(
                        "rule".into(),
                        json!({"name": LISTEN_RULE_NAME, "id": LISTEN_RULE_ID}),
                    );
                }
            }
            Flow::Inbound => {
                o.insert("source".into(), peer);
                o.insert("destination".into(), local);
                set(o, "event", "action", json!(c.flow.action()));
                set(o, "network", "direction", json!("ingress"));
                if alert {
                    o.insert(
                        "rule".into(),
                        json!({"name": INBOUND_RULE_NAME, "id": INBOUND_RULE_ID}),
                    );
                }
            }
            Flow::Udp => {
                // The cgroup hooks run before the route is chosen: no source address yet.
                o.remove("source");
                set(o, "network", "transport", json!("udp"));
                set(o, "sensor", "probe", json!(UDP_HOOK));
            }
        }
        prune(&mut doc);
        doc
    }
}

/// A replayed line keeps its own action and fields; only the scoring is rewritten.
impl Flowed for Value {
    fn flow(&self) -> Flow {
        self.pointer("/event/action")
            .and_then(Value::as_str)
            .and_then(Flow::from_action)
            .unwrap_or_default()
    }

    fn flow_line(&self, d: &Decision, cx: &Context) -> Value {
        self.connection(d, cx)
    }
}

fn set(o: &mut serde_json::Map<String, Value>, obj: &str, key: &str, v: Value) {
    let entry = o.entry(obj).or_insert_with(|| json!({}));
    if let Some(m) = entry.as_object_mut() {
        m.insert(key.into(), v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        detect::{policy::Policy, score::score, subject::Subject},
        enrich::procfs::ProcessInfo,
        kernel::records::tests::{bytes, connect, raw},
    };

    fn line(flow: Flow, exe: &str) -> Value {
        let mut raw = raw(sensor_common::AF_INET, [0; 16], 0);
        raw.data.sport = 4444;
        if flow == Flow::Inbound {
            raw.data.daddr[..4].copy_from_slice(&[192, 0, 2, 9]);
            raw.data.dport = 51000;
        }
        let mut conn = connect(&bytes(&raw));
        conn.flow = flow;
        let e = Enriched {
            conn,
            proc: ProcessInfo {
                executable: Some(exe.into()),
                ..Default::default()
            },
            user_name: None,
            provenance: Default::default(),
            host_name: "h".into(),
            attribution: None,
            unix_ns: 0,
        };
        let verdict = score(&Policy::default(), &Subject::from_enriched(&e));
        e.flow_line(
            &Decision {
                risk: verdict.risk,
                verdict,
                allow_rule: None,
                beacon: None,
                fold: None,
            },
            &Context::named("h"),
        )
    }

    #[test]
    fn a_bind_shell_listen_is_a_high_listen_alert() {
        let j = line(Flow::Listen, "/usr/bin/nc.openbsd");
        assert_eq!(j["event"]["action"], "network-listen");
        assert_eq!(j["event"]["type"], json!(["start"]));
        assert_eq!(j["event"]["kind"], "alert");
        assert_eq!(j["sensor"]["severity"], "High");
        assert_eq!(j["source"], json!({"ip": "0.0.0.0", "port": 4444}));
        assert!(j.get("destination").is_none());
        assert_eq!(j["rule"]["id"], LISTEN_RULE_ID);
        assert!(j["network"].get("direction").is_none());
        assert_eq!(j["sensor"]["matched"]["loopback_only"], false);
        let sshd = line(Flow::Listen, "/usr/sbin/sshd");
        assert_eq!(sshd["sensor"]["severity"], "Medium");
        assert_eq!(
            sshd["sensor"]["matched"]["service_away"],
            json!({"service": "sshd", "standard": [22]})
        );
    }

    #[test]
    fn an_inbound_connection_is_ingress_from_the_peer() {
        let j = line(Flow::Inbound, "/usr/bin/nc.openbsd");
        assert_eq!(j["event"]["action"], "network-accept");
        assert_eq!(j["network"]["direction"], "ingress");
        assert_eq!(j["source"], json!({"ip": "192.0.2.9", "port": 51000}));
        assert_eq!(j["destination"]["port"], 4444);
        assert_eq!(j["sensor"]["severity"], "High");
        assert_eq!(j["rule"]["id"], INBOUND_RULE_ID);
    }
}

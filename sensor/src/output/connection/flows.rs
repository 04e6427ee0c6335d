//! Each flow kind's line: its ends, transport and IANA number, its rule, and the line
//! read back into the subject live scoring had.

use rstest::rstest;
use serde_json::json;

use super::{
    tests::{flow_conn, line_json, replayed},
    *,
};
use crate::{
    detect::{policy::Policy, score::score, subject::Subject},
    output::{community_id::community_id, flow::TCP},
};

/// Every flow kind, IPv4 and IPv4-mapped: the line read back gives the subject live
/// scoring had (an inbound line's subject is the peer's address and the local
/// port, not the local address and the peer's ephemeral port), and to the same
/// verdict.
#[rstest]
#[case::connect(Flow::Connect, ("192.0.2.10", 40000), ("203.0.113.7", 4444))]
#[case::udp(Flow::Udp, ("0.0.0.0", 0), ("203.0.113.7", 4444))]
#[case::listen(Flow::Listen, ("0.0.0.0", 4444), ("0.0.0.0", 0))]
#[case::inbound(Flow::Inbound, ("192.0.2.1", 4444), ("192.0.2.9", 51000))]
#[case::inbound_mapped(Flow::Inbound, ("::ffff:192.0.2.1", 4444), ("::ffff:192.0.2.9", 51000))]
#[case::listen_v6(Flow::Listen, ("::", 4444), ("::", 0))]
fn every_flow_replays_to_the_live_subject(
    #[case] flow: Flow,
    #[case] local: (&str, u16),
    #[case] peer: (&str, u16),
) {
    let e = flow_conn(flow, "/usr/bin/nc.openbsd", local, peer);
    let live = Subject::from_enriched(&e);
    let back = replayed(&e);
    assert_eq!(back.flow, flow);
    let subject = back.subject().unwrap();
    assert_eq!(crate::kernel::records::canonical(live.dst), subject.dst);
    assert_eq!(
        Subject {
            dst: subject.dst,
            // One process either way: its start time live, its entity id's hash replayed.
            process_start: subject
                .process_start
                .filter(|_| live.process_start.is_some()),
            ..live.clone()
        },
        subject
    );
    let policy = Policy::default();
    assert_eq!(score(&policy, &live), score(&policy, &subject));
    if flow == Flow::Inbound {
        assert_eq!(
            (subject.dst.to_string(), subject.port),
            ("192.0.2.9".into(), 4444)
        );
    }
}

#[test]
fn a_bind_shell_listen_is_a_high_listen_alert() {
    let line = |exe| {
        line_json(
            &flow_conn(Flow::Listen, exe, ("0.0.0.0", 4444), ("0.0.0.0", 0)),
            &Context::named("h"),
        )
    };
    let j = line("/usr/bin/nc.openbsd");
    assert_eq!(j["event"]["action"], "network-listen");
    assert_eq!(j["event"]["type"], json!(["start"]));
    assert_eq!(j["event"]["kind"], "alert");
    assert_eq!(j["sensor"]["severity"], "High");
    assert_eq!(j["source"], json!({"ip": "0.0.0.0", "port": 4444}));
    assert!(j.get("destination").is_none());
    assert_eq!(j["rule"]["id"], LISTEN_RULE_ID);
    assert!(j["network"].get("direction").is_none());
    assert_eq!(j["sensor"]["matched"]["loopback_only"], false);
    let sshd = line("/usr/sbin/sshd");
    assert_eq!(sshd["sensor"]["severity"], "Medium");
    assert_eq!(
        sshd["sensor"]["matched"]["service_away"],
        json!({"service": "sshd", "standard": [22]})
    );
}

#[test]
fn an_inbound_connection_is_ingress_from_the_peer() {
    let e = flow_conn(
        Flow::Inbound,
        "/usr/bin/nc.openbsd",
        ("192.0.2.1", 4444),
        ("192.0.2.9", 51000),
    );
    let j = line_json(&e, &Context::named("h"));
    assert_eq!(j["event"]["action"], "network-accept");
    assert_eq!(j["network"]["direction"], "ingress");
    assert_eq!(j["source"], json!({"ip": "192.0.2.9", "port": 51000}));
    assert_eq!(j["destination"], json!({"ip": "192.0.2.1", "port": 4444}));
    assert_eq!(j["sensor"]["severity"], "High");
    assert_eq!(j["rule"]["id"], INBOUND_RULE_ID);
}

/// Listen and inbound lines print IPv4-mapped addresses as IPv4, as connects do, and
/// keep the kernel's form in `sensor.*.original_ip`.
#[rstest]
#[case::listen(Flow::Listen, ("::ffff:192.0.2.1", 4444), ("::", 0))]
#[case::inbound(Flow::Inbound, ("::ffff:192.0.2.1", 4444), ("::ffff:192.0.2.9", 51000))]
#[case::connect(Flow::Connect, ("::ffff:192.0.2.9", 51000), ("::ffff:192.0.2.1", 4444))]
fn mapped_addresses_print_as_ipv4(
    #[case] flow: Flow,
    #[case] local: (&str, u16),
    #[case] peer: (&str, u16),
) {
    let j = line_json(
        &flow_conn(flow, "/usr/bin/nc.openbsd", local, peer),
        &Context::named("h"),
    );
    let text = j.to_string();
    let mut ends = 0;
    for side in ["source", "destination"] {
        if let Some(ip) = j[side]["ip"].as_str() {
            assert!(ip.starts_with("192.0.2."), "{side}: {text}");
            assert!(
                j["sensor"][side]["original_ip"]
                    .as_str()
                    .unwrap()
                    .starts_with("::ffff:192.0.2."),
                "{text}"
            );
            ends += 1;
        }
    }
    assert!(ends >= 1, "{text}");
    assert_eq!(j["network"]["type"], "ipv4", "{text}");
}

/// UDP lines say UDP: transport, IANA number 17, and a Community ID over 17.
#[test]
fn a_udp_line_is_udp_throughout() {
    let e = flow_conn(
        Flow::Udp,
        "/usr/bin/nc.openbsd",
        ("192.0.2.10", 40000),
        ("203.0.113.7", 4444),
    );
    let j = line_json(&e, &Context::named("h"));
    assert_eq!(j["network"]["transport"], "udp");
    assert_eq!(j["network"]["iana_number"], "17");
    let udp = |proto| {
        community_id(
            0,
            "192.0.2.10".parse().unwrap(),
            40000,
            "203.0.113.7".parse().unwrap(),
            4444,
            proto,
        )
    };
    assert_eq!(j["network"]["community_id"], json!(udp(UDP)));
    assert_ne!(udp(UDP), udp(TCP));
    assert_eq!(j["sensor"]["probe"], UDP_HOOK);
    // A datagram before routing has no source: no source end, no Community ID.
    let e = flow_conn(
        Flow::Udp,
        "/usr/bin/nc.openbsd",
        ("0.0.0.0", 0),
        ("203.0.113.7", 4444),
    );
    let j = line_json(&e, &Context::named("h"));
    assert!(j.get("source").is_none() && j["network"].get("community_id").is_none());
    assert_eq!(j["network"]["iana_number"], "17");
    // TCP stays 6.
    let e = flow_conn(
        Flow::Connect,
        "/usr/bin/nc.openbsd",
        ("192.0.2.10", 40000),
        ("203.0.113.7", 4444),
    );
    let j = line_json(&e, &Context::named("h"));
    assert_eq!(
        (
            j["network"]["transport"].as_str(),
            j["network"]["iana_number"].as_str()
        ),
        (Some("tcp"), Some("6"))
    );
    assert_eq!(j["network"]["community_id"], json!(udp(TCP)));
}

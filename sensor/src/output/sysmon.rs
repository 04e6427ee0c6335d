//! `--format sysmon-json`: a connection as Sysmon Event ID 3 (NetworkConnect) with Sysmon's
//! field names, so the seeds' queries and SigmaHQ's `network_connection` rules apply
//! unchanged. Sysmon prints `Initiated` and the `*IsIpv6` flags as the strings "true" and
//! "false"; so does this. The sensor's verdict rides along under `sensor`. Sysmon has no
//! listen event: a listen stays an ECS line.

use std::borrow::Cow;

use crate::{
    detect::{decision::Decision, severity::Severity},
    enrich::{Enriched, procfs::exe_name},
    kernel::records::{Flow, canonical},
    output::{
        clock,
        connection::protocol::domain,
        context::Context,
        ecs::{SCHEMA_VERSION, SysmonLine, SysmonSensor},
        flow::{Shape, Side},
    },
};

fn flag(yes: bool) -> Cow<'static, str> {
    Cow::Borrowed(if yes { "true" } else { "false" })
}

pub fn network_connect<'a>(
    e: &'a Enriched,
    d: &'a Decision,
    cx: &'a Context,
) -> Option<SysmonLine<'a>> {
    let c = &e.conn;
    let p = &e.proc;
    if c.flow == Flow::Listen {
        return None;
    }
    let shape = Shape::of(c.flow);
    let pr = cx.printed(e);
    // Sysmon's Source is the end that opened the connection, as the ECS line's source.
    let ((src, sport), (dst, dport)) = match shape.local {
        Side::Destination => ((c.dst, c.dport), (c.src, c.sport)),
        _ => ((c.src, c.sport), (c.dst, c.dport)),
    };
    let (src_c, dst_c) = (canonical(src), canonical(dst));
    let guid = |pid: u32, start: u64| cx.entity_id(pid, start).map(|h| Cow::Owned(as_guid(&h)));
    let names =
        |v: Vec<&'static str>| (!v.is_empty()).then(|| v.into_iter().map(Cow::Borrowed).collect());
    Some(SysmonLine {
        event_id: 3,
        channel: Cow::Borrowed("t1571-sensor"),
        computer: Cow::Borrowed(&cx.host.hostname),
        rule_name: Cow::Borrowed(if d.alert() {
            crate::output::RULE_ID
        } else {
            "-"
        }),
        utc_time: Cow::Owned(clock::sysmon_utc(e.unix_ns)),
        process_guid: guid(c.tgid, c.start_time_ns),
        process_id: c.tgid,
        image: pr
            .executable
            .clone()
            .map_or(Cow::Borrowed(c.comm.as_str()), Cow::Owned),
        user: e
            .user_name
            .as_deref()
            .map_or_else(|| Cow::Owned(c.uid.to_string()), Cow::Borrowed),
        protocol: Cow::Borrowed(shape.transport),
        initiated: flag(c.flow != Flow::Inbound),
        source_is_ipv6: flag(src_c.is_ipv6()),
        // No source address yet (a UDP datagram before routing): left out, not 0.0.0.0.
        source_ip: (!src_c.is_unspecified() || sport != 0).then_some(src_c),
        // The local port is bound after SYN_SENT on the tracepoint path: unknown then.
        source_port: (sport != 0).then_some(sport),
        destination_is_ipv6: flag(dst_c.is_ipv6()),
        destination_ip: Some(dst_c),
        destination_port: Some(dport),
        destination_hostname: e.protocol.as_deref().and_then(|f| {
            let sni = f.tls.as_ref().and_then(|t| t.sni.as_deref());
            let host = f.http.as_ref().and_then(|h| h.host.as_deref()).map(domain);
            sni.or(host).map(Cow::Borrowed)
        }),
        parent_image: pr.parent_executable.clone().map(Cow::Owned),
        parent_process_id: p.ppid,
        parent_process_guid: (c.ppid != 0)
            .then(|| guid(c.ppid, c.parent_start_time_ns))
            .flatten(),
        command_line: pr.command_line.clone().map(Cow::Owned),
        original_file_name: p.executable.as_deref().map(exe_name).map(Cow::Borrowed),
        sensor: SysmonSensor {
            allow_rule: d.allow_rule.as_deref().map(Cow::Borrowed),
            content_match: p.content_match.as_deref().map(Cow::Borrowed),
            event_id: Cow::Owned(cx.event_id()),
            ja4: e
                .protocol
                .as_deref()
                .and_then(|f| f.tls.as_ref()?.ja4.as_deref())
                .map(Cow::Borrowed),
            location: p.location.map(Cow::Borrowed),
            matched_protocol: d
                .verdict
                .protocol
                .as_ref()
                .filter(|p| !p.reasons.is_empty())
                .map(|p| p.reasons.iter().map(|r| Cow::Borrowed(r.code())).collect()),
            original_destination_ip: (dst_c != dst).then_some(dst),
            protocol: e
                .protocol
                .as_deref()
                .map(|f| Cow::Borrowed(f.protocol.as_str())),

            redacted: names(pr.redacted.clone()),
            risk_score: d.risk,
            schema_version: Cow::Borrowed(SCHEMA_VERSION),
            severity: Severity::of(d.risk),
            truncated: names(pr.truncated.clone()),
        },
        extra: Default::default(),
    })
}

/// 32 hex digits as Sysmon's `{xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx}`.
fn as_guid(hex: &str) -> String {
    let h = |r: std::ops::Range<usize>| hex.get(r).unwrap_or("");
    format!(
        "{{{}-{}-{}-{}-{}}}",
        h(0..8),
        h(8..12),
        h(12..16),
        h(16..20),
        h(20..32)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        detect::{policy::Policy, score::score, subject::Subject},
        enrich::procfs::ProcessInfo,
        kernel::records::tests::{bytes, connect, raw},
    };

    /// The Sysmon view of a `flow` between 192.0.2.1:`sport` (local) and 192.0.2.9:`dport`.
    fn view(flow: Flow, sport: u16, dport: u16) -> Option<serde_json::Value> {
        view_with(flow, sport, dport, None)
    }

    fn view_with(
        flow: Flow,
        sport: u16,
        dport: u16,
        first: Option<&[u8]>,
    ) -> Option<serde_json::Value> {
        let mut raw = raw(sensor_common::AF_INET, [0; 16], dport);
        raw.data.daddr[..4].copy_from_slice(&[192, 0, 2, 9]);
        raw.data.saddr[..4].copy_from_slice(&[192, 0, 2, 1]);
        raw.data.sport = sport;
        let mut conn = connect(&bytes(&raw));
        conn.flow = flow;
        let e = Enriched {
            conn,
            proc: ProcessInfo {
                executable: Some("/usr/bin/nc.openbsd".into()),
                ..Default::default()
            },
            user_name: None,
            provenance: Default::default(),
            host_name: "h".into(),
            attribution: None,
            unix_ns: 0,
            protocol: first.map(|b| std::sync::Arc::new(crate::enrich::protocol::inspect(b))),
        };
        let verdict = score(&Policy::default(), &Subject::from_enriched(&e));
        let d = Decision {
            risk: verdict.risk,
            verdict,
            allow_rule: None,
            beacon: None,
            fold: None,
        };
        let cx = Context::named("h");
        network_connect(&e, &d, &cx).map(|l| serde_json::to_value(l).unwrap())
    }

    /// The view follows the flow: UDP says udp, an inbound connection was not initiated
    /// here and its source is the peer, a listen (no Sysmon event) stays an ECS line.
    #[test]
    fn the_view_follows_the_flow() {
        let udp = view(Flow::Udp, 40000, 4444).unwrap();
        assert_eq!(
            (udp["Protocol"].as_str(), udp["Initiated"].as_str()),
            (Some("udp"), Some("true"))
        );
        assert_eq!(udp["DestinationIp"], "192.0.2.9");
        assert_eq!(
            udp["sensor"]["schema_version"],
            crate::output::ecs::SCHEMA_VERSION
        );
        let inbound = view(Flow::Inbound, 4444, 51000).unwrap();
        assert_eq!(inbound["Initiated"], "false");
        assert_eq!(
            (inbound["SourceIp"].as_str(), inbound["SourcePort"].as_u64()),
            (Some("192.0.2.9"), Some(51000))
        );
        assert_eq!(
            (
                inbound["DestinationIp"].as_str(),
                inbound["DestinationPort"].as_u64()
            ),
            (Some("192.0.2.1"), Some(4444))
        );
        assert_eq!(inbound["Protocol"], "tcp");
        assert!(view(Flow::Listen, 4444, 0).is_none());
    }

    #[test]
    fn guid_form() {
        assert_eq!(
            as_guid("0123456789abcdef0123456789abcdef"),
            "{01234567-89ab-cdef-0123-456789abcdef}"
        );
    }

    /// The first bytes' protocol, name and JA4 ride along; the reasons as codes.
    #[test]
    fn the_view_carries_the_protocol() {
        let hello = include_bytes!("../../tests/fixtures/protocol/tls-curl-sni.bin");
        let v = view_with(Flow::Connect, 40000, 8088, Some(hello)).unwrap();
        assert_eq!(v["DestinationHostname"], "c2.example");
        assert_eq!(v["sensor"]["protocol"], "tls");
        assert_eq!(v["sensor"]["ja4"], "t13d3112h2_e8f1e7e78f70_b26ce05bbdd6");
        assert_eq!(
            v["sensor"]["matched_protocol"],
            serde_json::json!(["protocol_non_standard_port"])
        );
        let v = view_with(Flow::Connect, 40000, 443, Some(b"SSH-2.0-x\r\n")).unwrap();
        assert_eq!(
            v["sensor"]["matched_protocol"],
            serde_json::json!(["protocol_mismatch"])
        );
        assert_eq!(v["sensor"]["risk_score"], 3);
        let v = view(Flow::Connect, 40000, 4444).unwrap();
        assert!(v.get("DestinationHostname").is_none() && v["sensor"].get("protocol").is_none());
    }
}

//! `--format sysmon-json`: a connection as Sysmon Event ID 3 (NetworkConnect) with Sysmon's
//! field names, so the seeds' queries and SigmaHQ's `network_connection` rules apply
//! unchanged. Sysmon prints `Initiated` and the `*IsIpv6` flags as the strings "true" and
//! "false"; so does this. The sensor's verdict rides along under `sensor`.

use serde_json::{Value, json};

use crate::{
    detect::decision::Decision,
    enrich::{Enriched, procfs::exe_name},
    kernel::records::canonical,
    output::{clock, connection::Printed, context::Context, prune},
};

pub fn network_connect(e: &Enriched, d: &Decision, cx: &Context) -> Value {
    let c = &e.conn;
    let p = &e.proc;
    let pr = Printed::of(e);
    let (dst, src) = (canonical(c.dst), canonical(c.src));
    let guid = |pid: u32, start: u64| cx.entity_id(pid, start).map(|h| as_guid(&h));
    let image = pr.executable.clone().unwrap_or_else(|| c.comm.clone());
    let mut doc = json!({
        "EventID": 3,
        "Channel": "t1571-sensor",
        "Computer": cx.host.hostname,
        "RuleName": if d.alert() { crate::output::RULE_ID } else { "-" },
        "UtcTime": clock::sysmon_utc(e.unix_ns),
        "ProcessGuid": guid(c.tgid, c.start_time_ns),
        "ProcessId": c.tgid,
        "Image": image,
        "User": e.user_name.clone().unwrap_or_else(|| c.uid.to_string()),
        "Protocol": "tcp",
        "Initiated": "true",
        "SourceIsIpv6": if src.is_ipv6() { "true" } else { "false" },
        "SourceIp": src.to_string(),
        // The local port is bound after SYN_SENT on the tracepoint path: unknown then.
        "SourcePort": (c.sport != 0).then_some(c.sport),
        "DestinationIsIpv6": if dst.is_ipv6() { "true" } else { "false" },
        "DestinationIp": dst.to_string(),
        "DestinationPort": c.dport,
        "ParentImage": pr.parent_executable,
        "ParentProcessId": p.ppid,
        "ParentProcessGuid": (c.ppid != 0).then(|| guid(c.ppid, c.parent_start_time_ns)).flatten(),
        "CommandLine": pr.command_line,
        "OriginalFileName": p.executable.as_deref().map(exe_name),
        "sensor": {
            "event_id": cx.event_id(),
            "risk_score": d.risk,
            "severity": d.severity(),
            "allow_rule": d.allow_rule,
            "location": p.location,
            "content_match": p.content_match,
            "redacted": (!pr.redacted.is_empty()).then_some(&pr.redacted),
            "truncated": (!pr.truncated.is_empty()).then_some(&pr.truncated),
            "original_destination_ip": (dst != c.dst).then(|| c.dst.to_string()),
        },
    });
    prune(&mut doc);
    doc
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

    #[test]
    fn guid_form() {
        assert_eq!(
            as_guid("0123456789abcdef0123456789abcdef"),
            "{01234567-89ab-cdef-0123-456789abcdef}"
        );
    }
}

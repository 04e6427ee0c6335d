//! A connection line's protocol sections, from the flow's first bytes: ECS `network.protocol`,
//! `tls.*`, `http.request.method`, `url.domain`, `user_agent.original`, and
//! `sensor.protocol`. Only parsed fields are printed, never the bytes.

use std::borrow::Cow;

use crate::{
    enrich::protocol::ProtocolFacts,
    output::ecs::{
        ConnectionLine, Http, HttpRequest, SensorProtocol, Tls, TlsClient, Url, UserAgent,
    },
};

fn b(s: &str) -> Cow<'_, str> {
    Cow::Borrowed(s)
}

/// Sets the protocol sections of `line` from `facts`.
pub fn protocol_fields<'a>(line: &mut ConnectionLine<'a>, facts: &'a ProtocolFacts) {
    if let Some(n) = line.network.as_mut() {
        n.protocol = Some(b(facts.protocol.as_str()));
    }
    let mut sp = SensorProtocol {
        captured_bytes: Some(facts.captured),
        truncated: facts.truncated.then_some(true),
        ..Default::default()
    };
    if let Some(t) = &facts.tls {
        line.tls = Some(Tls {
            client: Some(TlsClient {
                ja4: t.ja4.as_deref().map(b),
                server_name: t.sni.as_deref().map(b),
            }),
            version_protocol: t
                .version
                .as_deref()
                .map(|v| b(if v.starts_with('3') { "ssl" } else { "tls" })),
            version: t.version.as_deref().map(b),
        });
        sp.alpn = (!t.alpn.is_empty()).then(|| t.alpn.iter().map(|a| b(a)).collect());
    }
    if let Some(h) = &facts.http {
        line.http = Some(Http {
            request: Some(HttpRequest {
                method: Some(b(&h.method)),
            }),
        });
        line.url = h.host.as_deref().map(|host| Url {
            domain: Some(b(domain(host))),
        });
        line.user_agent = h.user_agent.as_deref().map(|ua| UserAgent {
            original: Some(b(ua)),
        });
    }
    if let Some(s) = &facts.ssh {
        sp.ssh_banner = Some(b(&s.banner));
    }
    line.sensor.fields.protocol = Some(sp);
}

/// A Host header's name without its port (`[2001:db8::1]:8080` gives `2001:db8::1`).
pub fn domain(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if !h.contains(':') && port.bytes().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::{
        detect::{policy::Policy, score::score, subject::Subject},
        enrich::protocol::inspect,
        kernel::records::Flow,
        output::{connection::tests::flow_conn, context::Context, ecs::ConnectionLine},
    };

    fn line(first: &[u8], exe: &str, port: u16) -> serde_json::Value {
        let mut e = flow_conn(
            Flow::Connect,
            exe,
            ("192.0.2.10", 40000),
            ("203.0.113.7", port),
        );
        e.protocol = Some(Arc::new(inspect(first)));
        let verdict = score(&Policy::default(), &Subject::from_enriched(&e));
        let d = crate::detect::decision::Decision {
            risk: verdict.risk,
            verdict,
            allow_rule: None,
            beacon: None,
            fold: None,
        };
        let v = serde_json::to_value(crate::output::connection_line(&e, &d, &Context::named("h")))
            .unwrap();
        // It reads back into the typed line and writes the same, and replay scores it as
        // live did.
        let back: ConnectionLine<'_> = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(serde_json::to_value(&back).unwrap(), v);
        let replayed = crate::output::recorded::Recorded::parse(&v.to_string())
            .unwrap()
            .subject()
            .unwrap();
        assert_eq!(
            score(&Policy::default(), &replayed),
            score(&Policy::default(), &Subject::from_enriched(&e)),
            "{v}"
        );
        v
    }

    #[test]
    fn tls_on_a_c2_port() {
        let hello = include_bytes!("../../../tests/fixtures/protocol/tls-curl-sni.bin");
        let v = line(hello, "/usr/bin/curl", 8088);
        assert_eq!(v["network"]["protocol"], "tls");
        assert_eq!(
            v["tls"],
            json!({"client": {"ja4": "t13d3112h2_e8f1e7e78f70_b26ce05bbdd6",
                   "server_name": "c2.example"},
                   "version": "1.3", "version_protocol": "tls"})
        );
        assert_eq!(
            v["sensor"]["protocol"],
            json!({"alpn": ["h2", "http/1.1"], "captured_bytes": 517})
        );
        assert_eq!(
            v["sensor"]["matched"]["protocol"],
            json!(["protocol_non_standard_port"])
        );
        assert_eq!(v["event"]["risk_score"], 3);
        assert!(
            v["event"]["reason"]
                .as_str()
                .unwrap()
                .contains("TLS on non-standard port 8088"),
            "{v}"
        );
        assert!(v.get("http").is_none() && v.get("url").is_none());
    }

    #[test]
    fn ssh_on_443_and_a_shell_on_80_alert() {
        let ssh = include_bytes!("../../../tests/fixtures/protocol/ssh-openssh.bin");
        let v = line(ssh, "/usr/bin/ssh", 443);
        assert_eq!(v["network"]["protocol"], "ssh");
        assert!(
            v["sensor"]["protocol"]["ssh_banner"]
                .as_str()
                .unwrap()
                .starts_with("SSH-2.0-OpenSSH_")
        );
        assert_eq!(v["event"]["kind"], "alert");
        assert_eq!(
            v["sensor"]["matched"]["protocol"],
            json!(["protocol_mismatch"])
        );
        let v = line(
            b"uid=0(root) gid=0(root) groups=0(root)\n",
            "/usr/bin/nc.openbsd",
            80,
        );
        assert_eq!(v["network"]["protocol"], "unknown");
        assert_eq!(
            (
                v["event"]["risk_score"].as_u64(),
                v["event"]["severity"].as_u64()
            ),
            (Some(3), Some(3))
        );
        assert!(v["event"]["reason"].as_str().unwrap().contains(
            "protocol does not belong on a standard port: an unknown protocol on 80, expected HTTP"
        ));
        // Nothing of the bytes is printed.
        assert!(!v.to_string().contains("uid=0"), "{v}");
    }

    #[test]
    fn http_fields() {
        let req = include_bytes!("../../../tests/fixtures/protocol/http-curl-name.bin");
        let v = line(req, "/usr/bin/curl", 8088);
        assert_eq!(v["network"]["protocol"], "http");
        assert_eq!(v["http"], json!({"request": {"method": "GET"}}));
        assert_eq!(v["url"], json!({"domain": "c2.example"}));
        assert_eq!(v["user_agent"], json!({"original": "t1571-test/1.0"}));
        // The path (/beacon) is never printed.
        assert!(!v.to_string().contains("/beacon"), "{v}");
    }

    #[rstest::rstest]
    #[case("c2.example:8080", "c2.example")]
    #[case("c2.example", "c2.example")]
    #[case("[2001:db8::1]:80", "2001:db8::1")]
    #[case("2001:db8::1", "2001:db8::1")]
    #[case("c2.example:x", "c2.example:x")]
    fn domains(#[case] host: &str, #[case] want: &str) {
        assert_eq!(domain(host), want);
    }
}

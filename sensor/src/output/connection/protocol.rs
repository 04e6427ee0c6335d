//! A connection line's protocol sections, from the flow's first bytes: ECS `network.protocol`,
//! `tls.*`, `http.request.method`, `url.domain`, `user_agent.original`, and
//! `sensor.protocol`. Only parsed fields are printed, never the bytes.

use std::borrow::Cow;

use crate::{
    enrich::protocol::{Protocol, ProtocolFacts},
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
    debug_assert!(facts.protocol != Protocol::Tls || facts.http.is_none());
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

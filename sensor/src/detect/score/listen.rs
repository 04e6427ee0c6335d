//! Listening sockets, and inbound connections to them, scored on the local port.

use crate::{
    detect::{
        policy::Policy,
        score::{ServiceAway, Verdict, c2_port_tier, high_risk::high_risk},
        subject::Subject,
        unmanaged::unmanaged,
    },
    kernel::records::canonical,
};

/// A listening socket, on its local port and address; an inbound connection to it on the
/// same port, with the listener's process (its `dst` is the peer, so a connection from
/// loopback counts one tier less as a loopback listener does).
pub(super) fn score_listen(policy: &Policy, subject: &Subject) -> Verdict {
    let port = subject.port;
    let high_risk = high_risk(policy, subject);
    let known_c2_port = policy.c2_ports.contains(&port);
    let non_standard_port = !policy.standard_ports.contains(&port) && port > 1024;
    let unmanaged = unmanaged(policy, subject);
    let service_away = subject.exe_name().and_then(|name| {
        let ports = policy.service_ports.get(name)?;
        (!ports.contains(&port)).then(|| ServiceAway {
            service: name.to_string(),
            standard: ports.iter().copied().collect(),
        })
    });
    let tier: u8 = match (high_risk.is_some(), known_c2_port, non_standard_port) {
        (true, true, _) => 3,
        (true, false, true) => 2,
        _ if service_away.is_some() => 2.max(c2_port_tier(policy, unmanaged && known_c2_port)),
        (_, true, _) => c2_port_tier(policy, unmanaged),
        _ => 0,
    };
    let loopback_only = canonical(subject.dst).is_loopback();
    let unmanaged = unmanaged && known_c2_port && high_risk.is_none();
    Verdict {
        risk: if loopback_only {
            tier.saturating_sub(1)
        } else {
            tier
        },
        known_c2_port,
        non_standard_port,
        high_risk,
        excluded_by: None,
        service_away,
        loopback_only,
        unmanaged,
        protocol: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{detect::score::score, kernel::records::Flow};

    fn listen(exe: &str, local: &str, port: u16) -> Verdict {
        let p = Policy::default();
        let s = Subject::named(Some(exe), "comm")
            .to(local.parse().unwrap(), port)
            .as_flow(Flow::Listen);
        score(&p, &s)
    }

    #[test]
    fn listens_score_on_the_local_port() {
        // A bind shell: High, on the wildcard or a public address (no exclusions apply).
        assert_eq!(listen("/usr/bin/nc.openbsd", "0.0.0.0", 4444).risk, 3);
        assert_eq!(listen("/usr/bin/nc.openbsd", "::", 4444).risk, 3);
        assert_eq!(listen("/usr/bin/python3.11", "192.168.1.5", 9001).risk, 3);
        // High-risk on a non-standard port above 1024: Medium; standard or low: nothing.
        assert_eq!(listen("/usr/bin/python3", "0.0.0.0", 5555).risk, 2);
        assert_eq!(listen("/usr/bin/python3", "0.0.0.0", 8080).risk, 0);
        assert_eq!(listen("/usr/bin/python3", "0.0.0.0", 1024).risk, 0);
        // A known service away from its ports: Medium; on them: nothing.
        let v = listen("/usr/sbin/sshd", "0.0.0.0", 2222);
        assert_eq!(v.risk, 2);
        assert_eq!(v.service_away.as_ref().unwrap().standard, [22]);
        assert!(v.reasons().iter().any(|r| r.contains("service sshd")));
        assert_eq!(listen("/usr/sbin/sshd", "0.0.0.0", 22).risk, 0);
        assert_eq!(listen("/usr/sbin/nginx", "0.0.0.0", 443).risk, 0);
        assert_eq!(listen("/usr/sbin/nginx", "0.0.0.0", 8081).risk, 2);
        // Neither: a C2 port alone is Low, anything else nothing.
        assert_eq!(listen("/usr/sbin/unknownd", "0.0.0.0", 4444).risk, 1);
        assert_eq!(listen("/usr/sbin/unknownd", "0.0.0.0", 5555).risk, 0);
        // Loopback-only: one tier less.
        let v = listen("/usr/bin/nc", "127.0.0.1", 4444);
        assert_eq!((v.risk, v.loopback_only), (2, true));
        assert_eq!(listen("/usr/bin/nc", "::1", 5555).risk, 1);
        assert_eq!(listen("/usr/sbin/sshd", "127.0.0.1", 2222).risk, 1);
    }
}

//! Community ID v1 flow hashes (https://github.com/corelight/community-id-spec), for
//! `network.community_id`. Hand-written: no maintained Rust crate implements it, and it is
//! one SHA-1 over a fixed byte layout.

use std::net::IpAddr;

use base64::{Engine, engine::general_purpose::STANDARD};
use sha1::{Digest, Sha1};

pub const TCP: u8 = 6;

/// `1:<base64 SHA-1>` of the flow, the same from either end. None when a port is 0 (not
/// yet bound: the tracepoint path at SYN_SENT) or the two addresses are of different
/// families: a hash over a made-up tuple would correlate with nothing.
pub fn community_id(
    seed: u16,
    src: IpAddr,
    sport: u16,
    dst: IpAddr,
    dport: u16,
    proto: u8,
) -> Option<String> {
    if sport == 0 || dport == 0 {
        return None;
    }
    let bytes = |ip: IpAddr| match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    let (s, d) = (bytes(src), bytes(dst));
    if s.len() != d.len() {
        return None;
    }
    // The spec orders the endpoints so both directions hash alike.
    let ((a, ap), (b, bp)) = if (&s, sport) <= (&d, dport) {
        ((s, sport), (d, dport))
    } else {
        ((d, dport), (s, sport))
    };
    let mut h = Sha1::new();
    h.update(seed.to_be_bytes());
    h.update(&a);
    h.update(&b);
    h.update([proto, 0]);
    h.update(ap.to_be_bytes());
    h.update(bp.to_be_bytes());
    Some(format!("1:{}", STANDARD.encode(h.finalize())))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The spec's own baseline (community-id-spec, baseline/baseline_deflt.json).
    #[test]
    fn matches_the_specs_baseline() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            community_id(
                0,
                ip("128.232.110.120"),
                34855,
                ip("66.35.250.204"),
                80,
                TCP
            )
            .as_deref(),
            Some("1:LQU9qZlK+B5F3KDmev6m5PMibrg=")
        );
        // Either direction, the same id.
        assert_eq!(
            community_id(
                0,
                ip("66.35.250.204"),
                80,
                ip("128.232.110.120"),
                34855,
                TCP
            ),
            community_id(
                0,
                ip("128.232.110.120"),
                34855,
                ip("66.35.250.204"),
                80,
                TCP
            )
        );
    }

    #[test]
    fn no_id_without_a_source_port() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            community_id(0, ip("10.0.0.1"), 0, ip("203.0.113.7"), 4444, TCP),
            None
        );
        assert_eq!(
            community_id(0, ip("10.0.0.1"), 5, ip("2001:db8::1"), 4444, TCP),
            None
        );
    }
}

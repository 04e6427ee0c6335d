//! Protocol on the port: the first payload of an outbound TCP flow, classified in the
//! kernel (`cgroup_skb/egress`), and what userspace pushes down for it.

use crate::Header;

/// What the first bytes a client sent look like (`Payload::class`).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayloadClass {
    /// A TLS record header: 0x16 (handshake) 0x03 0x00..=0x04.
    Tls = 1,
    /// An HTTP/1.x request line: a method and a space.
    Http = 2,
    /// An SSH identification string: `SSH-`.
    Ssh = 3,
    /// Anything else.
    Other = 4,
}

impl PayloadClass {
    pub const ALL: [Self; 4] = [Self::Tls, Self::Http, Self::Ssh, Self::Other];

    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Tls),
            2 => Some(Self::Http),
            3 => Some(Self::Ssh),
            4 => Some(Self::Other),
            _ => None,
        }
    }

    /// This class's bit in a [`PROTOCOL_PORTS_MAP`] value.
    pub const fn bit(self) -> u8 {
        1 << (self as u8)
    }

    /// As `network.protocol` names it (ECS: lowercase).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Tls => "tls",
            Self::Http => "http",
            Self::Ssh => "ssh",
            Self::Other => "other",
        }
    }
}

/// Bytes of the first payload kept: a ClientHello with post-quantum key shares is about
/// 1.8 KB, and JA4 needs every extension.
pub const PAYLOAD_CAPTURE: usize = 2048;

/// Name of the hash map `u16` port (host order) -> `u8` mask of the classes the policy
/// expects on the port ([`PayloadClass::bit`]; a port may expect more than one). A flow whose class matches and whose connect stayed in
/// the kernel never reaches userspace.
pub const PROTOCOL_PORTS_MAP: &str = "PROTOCOL_PORTS";
pub const PROTOCOL_PORTS_MAX: u32 = 1024;

/// Name of the one-slot array of [`ProtocolSettings`].
pub const PROTOCOL_SETTINGS_MAP: &str = "PROTOCOL_SETTINGS";

/// The feature's switches, written by userspace from the policy.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ProtocolSettings {
    /// 1: connects remember their process and the egress hook looks at first payloads.
    pub enabled: u32,
    /// 1: the policy has a JA4 list, so TLS on its expected port goes up too.
    pub ja4: u32,
}

/// Name of the LRU hash socket cookie (`u64`) -> [`FlowIdentity`]: written at connect
/// (the connecting task's context), read and deleted at the flow's first payload
/// (egress may run in softirq, where the current task is not the flow's).
pub const PROTOCOL_FLOWS_MAP: &str = "PROTOCOL_FLOWS";
pub const PROTOCOL_FLOWS_MAX: u32 = 65536;

/// Who made a flow, as its connect record's header says, and whether that record went to
/// userspace (the filter or the fold may have kept it in the kernel).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowIdentity {
    pub header: Header,
    /// 1: the connect record was submitted to userspace.
    pub reported: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<FlowIdentity>() == 80);

/// Name of the per-CPU `u64` array of the feature's counters (the `PROTO_*` slots).
pub const PROTOCOL_COUNTERS_MAP: &str = "PROTOCOL_COUNTERS";
/// First payloads looked at.
pub const PROTO_SEEN: u32 = 0;
/// Expected class on its port, connect kept in the kernel: counted only, nothing sent.
pub const PROTO_EXPECTED: u32 = 1;
/// A class the port's expectation does not name.
pub const PROTO_MISMATCH: u32 = 2;
/// Records written to the ring.
pub const PROTO_SENT: u32 = 3;
/// Records whose payload was longer than [`PAYLOAD_CAPTURE`].
pub const PROTO_TRUNCATED: u32 = 4;
/// Records lost: the ring reserve (or the byte copy) failed.
pub const PROTO_LOST: u32 = 5;
/// No expectation on the port and the connect kept in the kernel: nothing sent.
pub const PROTO_UNEXPECTED_QUIET: u32 = 6;
/// Connects whose identity could not be remembered (the flow table insert failed).
pub const PROTO_UNTRACKED: u32 = 7;
pub const PROTO_SLOTS: u32 = 8;

/// `Payload::flags` bits.
pub const PAYLOAD_REPORTED: u8 = 1;
pub const PAYLOAD_TRUNCATED: u8 = 2;
pub const PAYLOAD_MISMATCH: u8 = 4;

/// [`crate::RecordKind::Payload`]: the first payload of an outbound TCP flow. The header is
/// the connect's (from [`FlowIdentity`]) with this record's kind and time.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(
    feature = "user",
    derive(zerocopy::FromBytes, zerocopy::Immutable, zerocopy::KnownLayout)
)]
pub struct Payload {
    /// AF_INET or AF_INET6, from the packet.
    pub family: u16,
    /// Destination and local port, host order, from the packet.
    pub dport: u16,
    pub sport: u16,
    /// [`PayloadClass`] as `u8`.
    pub class: u8,
    /// The port's expectation ([`PayloadClass::bit`] mask), 0 for none.
    pub expected: u8,
    /// `PAYLOAD_*` bits.
    pub flags: u8,
    pub _pad: [u8; 3],
    /// Payload bytes in the segment, and how many of them are in `bytes`.
    pub payload_len: u32,
    pub captured: u32,
    pub _pad2: u32,
    /// As in [`crate::Connect`]: IPv4 in the first 4 bytes. Network order.
    pub daddr: [u8; 16],
    pub saddr: [u8; 16],
    pub bytes: [u8; PAYLOAD_CAPTURE],
}

pub type PayloadEvent = crate::Event<Payload>;
pub const PAYLOAD_EVENT_SIZE: usize = core::mem::size_of::<PayloadEvent>();
const _: () = assert!(PAYLOAD_EVENT_SIZE == 72 + 56 + PAYLOAD_CAPTURE);

/// HTTP/1.x methods with their space, as (bytes, length) compared to the first 8 bytes.
const METHODS: [(&[u8; 8], usize); 9] = [
    (b"GET     ", 4),
    (b"POST    ", 5),
    (b"PUT     ", 4),
    (b"HEAD    ", 5),
    (b"DELETE  ", 7),
    (b"OPTIONS ", 8),
    (b"PATCH   ", 6),
    (b"CONNECT ", 8),
    (b"TRACE   ", 6),
];

/// The class of a flow's first bytes: `b` holds the first `n` (at most 8), the rest zero.
/// In the kernel's egress hook, so plain loops and compares only.
#[inline(always)]
pub fn classify(b: &[u8; 8], n: u32) -> PayloadClass {
    if n >= 3 && b[0] == 0x16 && b[1] == 0x03 && b[2] <= 0x04 {
        return PayloadClass::Tls;
    }
    // `SSH-` and a protocol version digit, as userspace's parser requires: a looser rule
    // here would keep in the kernel, as expected on 22, first bytes userspace calls other.
    if n >= 5
        && b[0] == b'S'
        && b[1] == b'S'
        && b[2] == b'H'
        && b[3] == b'-'
        && b[4].is_ascii_digit()
    {
        return PayloadClass::Ssh;
    }
    let word = u64::from_ne_bytes(*b);
    for (m, len) in METHODS {
        let mask = if len == 8 {
            u64::MAX
        } else {
            // The first `len` bytes in memory order (little and big endian alike).
            u64::from_ne_bytes(prefix_mask(len))
        };
        if n as usize >= len && word & mask == u64::from_ne_bytes(*m) & mask {
            return PayloadClass::Http;
        }
    }
    PayloadClass::Other
}

const fn prefix_mask(len: usize) -> [u8; 8] {
    let mut m = [0u8; 8];
    let mut i = 0;
    while i < len {
        m[i] = 0xff;
        i += 1;
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(bytes: &[u8]) -> PayloadClass {
        let mut b = [0u8; 8];
        let n = bytes.len().min(8);
        b[..n].copy_from_slice(&bytes[..n]);
        classify(&b, n as u32)
    }

    #[test]
    fn first_bytes_classify() {
        assert_eq!(class(&[0x16, 0x03, 0x01, 0x02, 0x00]), PayloadClass::Tls);
        assert_eq!(class(&[0x16, 0x03, 0x04]), PayloadClass::Tls);
        assert_eq!(class(&[0x16, 0x03, 0x05, 0, 0]), PayloadClass::Other);
        assert_eq!(class(&[0x17, 0x03, 0x03, 0, 0]), PayloadClass::Other);
        assert_eq!(class(b"SSH-2.0-OpenSSH_9.6"), PayloadClass::Ssh);
        for m in [
            "GET / HTTP/1.1",
            "POST /x",
            "PUT /",
            "HEAD /",
            "DELETE /",
            "OPTIONS *",
            "PATCH /",
            "CONNECT a:443",
            "TRACE /",
        ] {
            assert_eq!(class(m.as_bytes()), PayloadClass::Http, "{m}");
        }
        for other in [
            "GETX /",
            "GET",
            "get / HTTP/1.1",
            "uid=0(root)",
            "OPTIONSX",
            "SSH-x",
            "SSH-",
            "",
            "P",
        ] {
            assert_eq!(class(other.as_bytes()), PayloadClass::Other, "{other:?}");
        }
    }

    #[test]
    fn classes_round_trip_and_have_distinct_bits() {
        let mut mask = 0u8;
        for c in PayloadClass::ALL {
            assert_eq!(PayloadClass::from_u8(c as u8), Some(c));
            assert_eq!(mask & c.bit(), 0);
            mask |= c.bit();
        }
        assert_eq!(PayloadClass::from_u8(0), None);
    }
}

//! The kernel fold table's key, built from a connect record and back: userspace keeps one
//! record per key and, when none was kept, reports a key's repeats from the key alone.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use sensor_common::{AF_INET, AF_INET6, FoldKey};

use crate::kernel::records::{Connection, Flow};

/// The kernel fold table's key for a connect record.
pub fn fold_key(c: &Connection) -> FoldKey {
    let (family, daddr) = match c.dst {
        IpAddr::V4(a) => {
            let mut d = [0u8; 16];
            d[..4].copy_from_slice(&a.octets());
            (AF_INET, d)
        }
        IpAddr::V6(a) => (AF_INET6, a.octets()),
    };
    FoldKey {
        tgid: c.tgid,
        family,
        dport: c.dport,
        start_time_ns: c.start_time_ns,
        daddr,
    }
}

/// A connect record standing for repeats no record was kept for: what the key says.
pub fn from_key(k: &FoldKey) -> Connection {
    let dst = if k.family == AF_INET {
        IpAddr::V4(Ipv4Addr::new(
            k.daddr[0], k.daddr[1], k.daddr[2], k.daddr[3],
        ))
    } else {
        IpAddr::V6(Ipv6Addr::from(k.daddr))
    };
    let unspecified = match dst {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    Connection {
        flow: Flow::Connect,
        tgid: k.tgid,
        tid: k.tgid,
        ppid: 0,
        // Unknown: the kernel's invalid uid/gid, never mistaken for root.
        uid: u32::MAX,
        gid: u32::MAX,
        boot_ns: 0,
        start_time_ns: k.start_time_ns,
        parent_start_time_ns: 0,
        cgroup_id: 0,
        dst,
        dport: k.dport,
        src: unspecified,
        sport: 0,
        probe: None,
        comm: String::new(),
        image: None,
        netns: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::records::tests::{bytes, connect, raw};

    /// The key userspace builds from a record is the one the kernel built from the same
    /// record, for both families, and a key turns back into the same destination.
    #[test]
    fn fold_key_matches_the_kernels() {
        let mut d = [0u8; 16];
        d[..4].copy_from_slice(&[203, 0, 113, 7]);
        let ev = raw(AF_INET, d, 4444);
        let c = connect(&bytes(&ev));
        let k = fold_key(&c);
        assert_eq!(
            k,
            FoldKey {
                tgid: ev.header.tgid,
                family: AF_INET,
                dport: 4444,
                start_time_ns: ev.header.start_time_ns,
                daddr: d,
            }
        );
        assert_eq!((from_key(&k).dst, from_key(&k).dport), (c.dst, 4444));
        let v6: Ipv6Addr = "::ffff:198.51.100.7".parse().unwrap();
        let c = connect(&bytes(&raw(AF_INET6, v6.octets(), 8088)));
        let k = fold_key(&c);
        assert_eq!((k.family, k.daddr), (AF_INET6, v6.octets()));
        assert_eq!(from_key(&k).dst, IpAddr::V6(v6));
    }
}

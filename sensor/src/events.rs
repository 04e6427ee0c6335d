//! Decoding ring-buffer records into typed connections. The bytes come from the kernel,
//! so length and kind are checked before anything is read.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Result, bail};
use sensor_common::{AF_INET, AF_INET6, CONNECT_EVENT_SIZE, ConnectEvent, EVENT_CONNECT};

use crate::attach::Probe;

/// One outbound TCP connect, as the kernel saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    pub tgid: u32,
    pub tid: u32,
    /// Parent tgid from the kernel; 0 when the layout did not allow reading it.
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    /// CLOSE_BOOTTIME nanoseconds of the connect.
    pub boot_ns: u64,
    /// Task start, boot-based nanoseconds; 0 when unknown.
    pub start_time_ns: u64,
    pub cgroup_id: u64,
    pub dst: IpAddr,
    pub dport: u16,
    pub src: IpAddr,
    pub sport: u16,
    pub probe: Option<Probe>,
    /// The task's comm (lossy UTF-8). Renameable by the process: informational only.
    pub comm: String,
}

pub fn decode(bytes: &[u8]) -> Result<Connection> {
    if bytes.len() < CONNECT_EVENT_SIZE {
        bail!(
            "record of {} bytes, shorter than a connect event ({CONNECT_EVENT_SIZE})",
            bytes.len()
        );
    }
    // SAFETY: length checked above; ConnectEvent is plain integers and arrays, valid for any
    // bit pattern; read_unaligned because the ring buffer only guarantees 8-byte alignment.
    let ev: ConnectEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    if ev.kind != EVENT_CONNECT {
        bail!("unknown record kind {}", ev.kind);
    }
    let (dst, src) = match ev.family {
        AF_INET => {
            let v4 = |a: &[u8; 16]| IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]));
            (v4(&ev.daddr), v4(&ev.saddr))
        }
        AF_INET6 => (
            IpAddr::V6(Ipv6Addr::from(ev.daddr)),
            IpAddr::V6(Ipv6Addr::from(ev.saddr)),
        ),
        other => bail!("unknown address family {other}"),
    };
    let comm_len = ev
        .comm
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(ev.comm.len());
    Ok(Connection {
        tgid: ev.tgid,
        tid: ev.tid,
        ppid: ev.ppid,
        uid: ev.uid,
        gid: ev.gid,
        boot_ns: ev.ktime_ns,
        start_time_ns: ev.start_time_ns,
        cgroup_id: ev.cgroup_id,
        dst,
        dport: ev.dport,
        src,
        sport: ev.sport,
        probe: Probe::from_abi(ev.probe),
        comm: String::from_utf8_lossy(&ev.comm[..comm_len]).into_owned(),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use sensor_common::PROBE_TRACEPOINT;

    pub fn raw(family: u16, daddr: [u8; 16], dport: u16) -> ConnectEvent {
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"curl");
        ConnectEvent {
            kind: EVENT_CONNECT,
            tgid: 10,
            tid: 11,
            ppid: 1,
            uid: 1000,
            gid: 1000,
            ktime_ns: 5,
            start_time_ns: 4,
            cgroup_id: 9,
            family,
            dport,
            sport: 40000,
            probe: PROBE_TRACEPOINT,
            _pad: 0,
            daddr,
            saddr: [0; 16],
            comm,
        }
    }

    pub fn bytes(ev: &ConnectEvent) -> Vec<u8> {
        // SAFETY: repr(C) plain data without padding (size asserted in sensor-common).
        unsafe {
            std::slice::from_raw_parts((ev as *const ConnectEvent).cast::<u8>(), CONNECT_EVENT_SIZE)
        }
        .to_vec()
    }

    #[test]
    fn decodes_v4_and_v6() {
        let mut d = [0u8; 16];
        d[..4].copy_from_slice(&[203, 0, 113, 7]);
        let c = decode(&bytes(&raw(AF_INET, d, 4444))).unwrap();
        assert_eq!(c.dst, "203.0.113.7".parse::<IpAddr>().unwrap());
        assert_eq!(
            (c.dport, c.comm.as_str(), c.probe),
            (4444, "curl", Some(Probe::Tracepoint))
        );
        let v6: Ipv6Addr = "2001:db8::7".parse().unwrap();
        let c = decode(&bytes(&raw(AF_INET6, v6.octets(), 8088))).unwrap();
        assert_eq!(c.dst, IpAddr::V6(v6));
    }

    #[test]
    fn rejects_bad_records() {
        let good = bytes(&raw(AF_INET, [0; 16], 1));
        assert!(decode(&good[..50]).is_err());
        assert!(decode(&[]).is_err());
        assert!(
            decode(&bytes(&raw(99, [0; 16], 1)))
                .unwrap_err()
                .to_string()
                .contains("family 99")
        );
        let mut bad = raw(AF_INET, [0; 16], 1);
        bad.kind = 7;
        assert!(decode(&bytes(&bad)).is_err());
        // comm without a NUL terminator and with invalid UTF-8 is still decoded.
        let mut odd = raw(AF_INET, [0; 16], 1);
        odd.comm = [0xff; 16];
        assert_eq!(decode(&bytes(&odd)).unwrap().comm.chars().count(), 16);
    }
}

//! Listeners seen, for inbound attribution: an inbound connection, seen in softirq, gets
//! the process of the listen record of its local port. And what the socket hooks counted.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use crate::{
    enrich::{Provenance, procfs::ProcessInfo},
    kernel::records::{Connection, canonical},
    output::metrics::stats,
};

/// Listeners seen, by network namespace, local address and port, for inbound
/// attribution, and what the socket hooks counted.
#[derive(Debug, Default)]
pub struct Sockets {
    listeners: HashMap<(u32, IpAddr, u16), Listener>,
    pub listens: u64,
    pub inbound: u64,
    /// Inbound connections to a port no listen record was seen for (listening since
    /// before the sensor started): counted, scored as unknown.
    pub inbound_unattributed: u64,
    pub udp: u64,
    /// Listeners forgotten to keep the table bounded.
    pub listeners_evicted: u64,
    /// Bytes the listeners hold (see [`Listener::bytes`]).
    listener_bytes: usize,
    /// UDP datagrams the kernel dropped and counted: to standard ports, and repeats.
    pub kernel_udp_dropped: (u64, u64),
}

/// What a listen record said about its process: an inbound connection, seen in softirq,
/// gets it.
#[derive(Debug, Clone)]
pub(super) struct Listener {
    pub conn: Connection,
    pub proc: ProcessInfo,
    pub user_name: Option<String>,
    pub provenance: Provenance,
    pub attribution: Option<&'static str>,
}

/// Listeners kept: one per listening (namespace, address, port); more are evicted, counted.
const MAX_LISTENERS: usize = 4096;
/// Bytes the listeners may hold: a process with long paths and a deep ancestry listening
/// on thousands of ports would otherwise keep a copy of them per port.
const MAX_LISTENER_BYTES: usize = 4 << 20;

impl Listener {
    fn bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + 64
            + crate::enrich::parts_heap_bytes(&self.conn, &self.proc, self.user_name.as_deref())
    }
}

impl Sockets {
    /// For `sensor-stats` and `sensor-stopped`.
    pub fn report(&self) -> stats::Sockets {
        stats::Sockets {
            listens: self.listens,
            listeners: self.listeners.len(),
            listeners_evicted: self.listeners_evicted,
            listener_bytes: self.listener_bytes,
            inbound: self.inbound,
            inbound_unattributed: self.inbound_unattributed,
            udp: self.udp,
            udp_standard_port_dropped_in_kernel: self.kernel_udp_dropped.0,
            udp_repeats_dropped_in_kernel: self.kernel_udp_dropped.1,
        }
    }

    pub(super) fn remember(&mut self, l: Listener) {
        let key = (l.conn.netns, canonical(l.conn.src), l.conn.sport);
        let bytes = l.bytes();
        if let Some(old) = self.listeners.insert(key, l) {
            self.listener_bytes -= old.bytes();
        }
        self.listener_bytes += bytes;
        while (self.listeners.len() > MAX_LISTENERS || self.listener_bytes > MAX_LISTENER_BYTES)
            && self.listeners.len() > 1
            && let Some(k) = self.listeners.keys().find(|k| **k != key).copied()
        {
            if let Some(old) = self.listeners.remove(&k) {
                self.listener_bytes -= old.bytes();
            }
            self.listeners_evicted += 1;
        }
    }

    /// The listener an inbound connection reached, in its own network namespace: on its
    /// exact local address, else on the IPv4 or IPv6 wildcard. (A kernel without the
    /// namespace offsets gives 0 to both records, and then keeps one namespace.)
    pub(super) fn listener(&self, c: &Connection) -> Option<&Listener> {
        [
            canonical(c.src),
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        ]
        .iter()
        .find_map(|a| self.listeners.get(&(c.netns, *a, c.sport)))
    }
}

#[cfg(test)]
mod tests {
    use sensor_common::AF_INET;

    use super::*;
    use crate::kernel::records::tests::{bytes, connect, raw};

    /// The same port listened on in two network namespaces: an inbound connection goes
    /// to the listener of its own namespace, whichever listened last.
    #[test]
    fn listeners_are_per_network_namespace() {
        let mut sockets = Sockets::default();
        let listen = |netns: u32, tgid: u32| {
            let mut ev = raw(AF_INET, [0; 16], 0);
            ev.header.kind = sensor_common::RecordKind::Listen as u32;
            (ev.header.tgid, ev.data.sport, ev.data.netns) = (tgid, 4444, netns);
            Listener {
                conn: connect(&bytes(&ev)),
                proc: ProcessInfo::default(),
                user_name: None,
                provenance: Default::default(),
                attribution: None,
            }
        };
        sockets.remember(listen(111, 10));
        sockets.remember(listen(222, 20));
        let inbound = |netns: u32| {
            let mut ev = raw(AF_INET, [0; 16], 5000);
            ev.header.kind = sensor_common::RecordKind::Inbound as u32;
            ev.data.daddr[..4].copy_from_slice(&[198, 51, 100, 1]);
            ev.data.saddr[..4].copy_from_slice(&[192, 0, 2, 7]);
            (ev.data.sport, ev.data.netns) = (4444, netns);
            connect(&bytes(&ev))
        };
        let who = |netns| sockets.listener(&inbound(netns)).map(|l| l.conn.tgid);
        assert_eq!(who(111), Some(10));
        assert_eq!(who(222), Some(20));
        assert_eq!(who(333), None);
    }
}

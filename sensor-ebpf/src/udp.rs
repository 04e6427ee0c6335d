//! Outbound UDP from the cgroup sock_addr hooks on the cgroup2 root: `connect4/6` (a UDP
//! socket connected to its peer) and `sendmsg4/6` (a datagram with an address). They run
//! in the sending task and always allow: they only observe. Standard ports and repeats
//! per (socket, destination) are dropped here and counted, so a flood cannot fill the ring.

use aya_ebpf::{
    helpers::generated::{bpf_get_current_task, bpf_get_socket_cookie},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use sensor_common::{
    AF_INET, AF_INET6, IPPROTO_UDP, Probe, RecordKind, UDP_REPEAT_DROPPED, UDP_STANDARD_DROPPED,
};

use crate::{
    connect::{connect_event_for, set_image, submit},
    filter::{active, filtered, port_bit},
    maps::{LAYOUT, UDP_SEEN, UdpKey, count, count_seen},
};

#[cgroup_sock_addr(connect4)]
pub fn udp_connect4(ctx: SockAddrContext) -> i32 {
    observe(&ctx, AF_INET);
    1
}

#[cgroup_sock_addr(connect6)]
pub fn udp_connect6(ctx: SockAddrContext) -> i32 {
    observe(&ctx, AF_INET6);
    1
}

#[cgroup_sock_addr(sendmsg4)]
pub fn udp_sendmsg4(ctx: SockAddrContext) -> i32 {
    observe(&ctx, AF_INET);
    1
}

#[cgroup_sock_addr(sendmsg6)]
pub fn udp_sendmsg6(ctx: SockAddrContext) -> i32 {
    observe(&ctx, AF_INET6);
    1
}

#[inline(always)]
fn observe(ctx: &SockAddrContext, family: u16) {
    // SAFETY: the context pointer is the kernel's bpf_sock_addr; these are direct context
    // field loads the verifier checks.
    let (protocol, port_be, ip4, ip6) = unsafe {
        let a = &*ctx.sock_addr;
        (a.protocol, a.user_port, a.user_ip4, a.user_ip6)
    };
    // TCP connects are seen by the connect hooks; only UDP here.
    if protocol != IPPROTO_UDP {
        return;
    }
    // user_port holds the port in network order in its low 16 bits.
    let port = u16::from_be(port_be as u16);
    let kind = RecordKind::Udp as u32;
    count_seen(kind);
    let (generation, settings) = active();
    if settings.filter != 0 && port_bit(generation, port) {
        count(UDP_STANDARD_DROPPED);
    }
    let mut addr = [0u8; 16];
    if family == AF_INET {
        addr[..4].copy_from_slice(&ip4.to_ne_bytes());
    } else {
        for (i, w) in ip6.iter().enumerate() {
            addr[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
        }
    }
    if filtered(generation, &settings, kind, family, &addr, port) {
        return;
    }
    let key = UdpKey {
        // SAFETY: the helper takes this program type's context.
        cookie: unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) },
        addr,
        port,
        family,
        _pad: 0,
    };
    if UDP_SEEN.get_ptr(&key).is_some() {
        count(UDP_REPEAT_DROPPED);
        return;
    }
    let _ = UDP_SEEN.insert(&key, &1, 0);
    let l = LAYOUT.load();
    // SAFETY: helper without arguments; the task is only read through probe_read.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let mut ev = connect_event_for(Probe::CgroupSockAddr, RecordKind::Udp, task, &l);
    ev.data.family = family;
    ev.data.dport = port;
    ev.data.daddr = addr;
    // SAFETY: the task is only read through probe_read. (No namespace: no socket pointer
    // is readable from this context, and the task's would cost stack this hook lacks.)
    unsafe { set_image(&mut ev, task, &l) };
    let _ = submit(ctx, &ev);
}

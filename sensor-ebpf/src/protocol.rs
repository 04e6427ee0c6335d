//! Protocol on the port: `cgroup_skb/egress` on the cgroup2 root looks at the first
//! payload-carrying segment of each outbound TCP flow whose connect the connect hook
//! remembered (socket cookie -> identity), classifies it (TLS record header, HTTP/1.x
//! request line, SSH identification, other) and forgets the flow, so the rest of the flow
//! costs one failed hash lookup per packet. Expected pairs whose connect stayed in the
//! kernel are only counted; a mismatch, or a flow userspace already knows, goes up with
//! its first bytes. Always allows the packet. Runs in softirq too: the identity is the
//! connect's, never the current task's.

use aya_ebpf::{
    helpers::generated::{bpf_get_socket_cookie, bpf_ktime_get_boot_ns, bpf_skb_load_bytes},
    macros::cgroup_skb,
    programs::SkBuffContext,
};
use sensor_common::{
    AF_INET, AF_INET6, FlowIdentity, Header, PAYLOAD_CAPTURE, PAYLOAD_MISMATCH, PAYLOAD_REPORTED,
    PAYLOAD_TRUNCATED, PROTO_EXPECTED, PROTO_LOST, PROTO_MISMATCH, PROTO_SEEN, PROTO_SENT,
    PROTO_TRUNCATED, PROTO_UNEXPECTED_QUIET, PROTO_UNTRACKED, PayloadClass, PayloadEvent,
    RecordKind, classify,
};

use crate::filter::excluded;
use crate::maps::{
    FLOW_SCRATCH, PROTOCOL_FLOWS, PROTOCOL_PORTS, SOCKETS, count_protocol, protocol_settings,
    socket_submit_flags,
};

const IPPROTO_TCP: u8 = 6;

#[cgroup_skb(egress)]
pub fn protocol_egress(ctx: SkBuffContext) -> i32 {
    inspect(&ctx);
    // Observe only: the packet always passes.
    1
}

/// Remembers who made the connect on `cookie`'s socket (0: the feature is off or the
/// cookie unknown), and whether its record went to userspace.
#[inline(always)]
pub(crate) fn remember(cookie: u64, header: &Header, reported: bool) {
    if cookie == 0 {
        return;
    }
    let Some(s) = FLOW_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: `s` is this CPU's scratch slot; nothing else writes it meanwhile.
    unsafe {
        core::ptr::copy_nonoverlapping(header, &mut (*s).header, 1);
        (*s).reported = u32::from(reported);
        if PROTOCOL_FLOWS.insert(&cookie, &*s, 0).is_err() {
            count_protocol(PROTO_UNTRACKED);
        }
    }
}

/// Whether a connect kept in the kernel (filtered or folded) is worth remembering: its
/// port expects a protocol (a mismatch would go up) and its destination is not excluded
/// (excluded destinations never score). Otherwise its first bytes could only be counted.
#[inline(always)]
pub(crate) fn wants_flow(generation: u32, family: u16, daddr: &[u8; 16], dport: u16) -> bool {
    // SAFETY: hash lookup of a plain key.
    unsafe { PROTOCOL_PORTS.get(&dport) }.is_some() && !excluded(generation, family, daddr)
}

/// The packet's flow: family, the TCP header's offset and the payload's.
struct Segment {
    family: u16,
    tcp: u32,
    payload: u32,
}

#[inline(always)]
fn segment(ctx: &SkBuffContext) -> Option<Segment> {
    let v: u8 = ctx.load(0).ok()?;
    let (family, tcp) = match v >> 4 {
        4 => {
            if ctx.load::<u8>(9).ok()? != IPPROTO_TCP {
                return None;
            }
            (AF_INET, u32::from(v & 0xf) * 4)
        }
        // Extension headers before TCP are not followed: a client's first segment has none.
        6 => {
            if ctx.load::<u8>(6).ok()? != IPPROTO_TCP {
                return None;
            }
            (AF_INET6, 40)
        }
        _ => return None,
    };
    let doff: u8 = ctx.load(tcp as usize + 12).ok()?;
    Some(Segment {
        family,
        tcp,
        payload: tcp + u32::from(doff >> 4) * 4,
    })
}

#[inline(always)]
fn inspect(ctx: &SkBuffContext) {
    let settings = protocol_settings();
    if settings.enabled == 0 {
        return;
    }
    // SAFETY: the helper takes this program type's context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.skb.skb.cast()) };
    if cookie == 0 {
        return;
    }
    // The one cost every packet of a flow pays: a lookup that misses once the flow was seen.
    let Some(id) = PROTOCOL_FLOWS.get_ptr(&cookie) else {
        return;
    };
    let Some(seg) = segment(ctx) else {
        return;
    };
    let len = ctx.len();
    if len <= seg.payload {
        // SYN, pure ACK: no payload yet.
        return;
    }
    let payload_len = len - seg.payload;
    count_protocol(PROTO_SEEN);
    let mut first = [0u8; 8];
    let n = if payload_len >= 8 { 8 } else { payload_len };
    // SAFETY: `first` is 8 bytes; `n` is 1..=8.
    let r = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb as *const _,
            seg.payload,
            first.as_mut_ptr().cast(),
            ((n - 1) & 7) + 1,
        )
    };
    if r != 0 {
        let _ = PROTOCOL_FLOWS.remove(&cookie);
        return;
    }
    let class = classify(&first, n);
    let Ok(dport_be) = ctx.load::<u16>(seg.tcp as usize + 2) else {
        return;
    };
    let dport = u16::from_be(dport_be);
    // SAFETY: hash lookup of a plain key.
    let expected = unsafe { PROTOCOL_PORTS.get(&dport) }.copied().unwrap_or(0);
    let bit = 1u8 << (class as u8);
    // SAFETY: `id` points into the flow table; read before the entry is deleted below.
    let reported = unsafe { (*id).reported } != 0;
    let mismatch = expected != 0 && expected & bit == 0;
    if mismatch {
        count_protocol(PROTO_MISMATCH);
    }
    let send =
        reported || mismatch || (expected != 0 && settings.ja4 != 0 && class == PayloadClass::Tls);
    if !send {
        count_protocol(if expected == 0 {
            PROTO_UNEXPECTED_QUIET
        } else {
            PROTO_EXPECTED
        });
        let _ = PROTOCOL_FLOWS.remove(&cookie);
        return;
    }
    let mut flags = 0u8;
    if reported {
        flags |= PAYLOAD_REPORTED;
    }
    if mismatch {
        flags |= PAYLOAD_MISMATCH;
    }
    send_up(ctx, id, &seg, payload_len, class, expected, flags, dport);
    let _ = PROTOCOL_FLOWS.remove(&cookie);
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn send_up(
    ctx: &SkBuffContext,
    id: *const FlowIdentity,
    seg: &Segment,
    payload_len: u32,
    class: PayloadClass,
    expected: u8,
    mut flags: u8,
    dport: u16,
) {
    let Some(mut slot) = SOCKETS.reserve::<PayloadEvent>(0) else {
        count_protocol(PROTO_LOST);
        return;
    };
    let ev = slot.as_mut_ptr();
    let cap = if payload_len >= PAYLOAD_CAPTURE as u32 {
        PAYLOAD_CAPTURE as u32
    } else {
        payload_len
    };
    // SAFETY: `ev` is our reserved slot, sized for a PayloadEvent; `id` points into the
    // flow table (not yet deleted); the copy length is 1..=PAYLOAD_CAPTURE.
    let ok = unsafe {
        core::ptr::copy_nonoverlapping(&(*id).header, &mut (*ev).header, 1);
        (*ev).header.kind = RecordKind::Payload as u32;
        (*ev).header.ktime_ns = bpf_ktime_get_boot_ns();
        let d = &mut (*ev).data;
        d.family = seg.family;
        d.dport = dport;
        d.sport = u16::from_be(ctx.load::<u16>(seg.tcp as usize).unwrap_or(0));
        d.class = class as u8;
        d.expected = expected;
        d._pad = [0; 3];
        d.payload_len = payload_len;
        d.captured = cap;
        d._pad2 = 0;
        d.daddr = [0; 16];
        d.saddr = [0; 16];
        let addrs = if seg.family == AF_INET {
            let s = ctx.load::<[u8; 4]>(12).unwrap_or([0; 4]);
            let t = ctx.load::<[u8; 4]>(16).unwrap_or([0; 4]);
            d.saddr[..4].copy_from_slice(&s);
            d.daddr[..4].copy_from_slice(&t);
            true
        } else {
            let r1 =
                bpf_skb_load_bytes(ctx.skb.skb as *const _, 8, d.saddr.as_mut_ptr().cast(), 16);
            let r2 =
                bpf_skb_load_bytes(ctx.skb.skb as *const _, 24, d.daddr.as_mut_ptr().cast(), 16);
            r1 == 0 && r2 == 0
        };
        if payload_len > PAYLOAD_CAPTURE as u32 {
            flags |= PAYLOAD_TRUNCATED;
        }
        d.flags = flags;
        let r = bpf_skb_load_bytes(
            ctx.skb.skb as *const _,
            seg.payload,
            d.bytes.as_mut_ptr().cast(),
            ((cap - 1) & (PAYLOAD_CAPTURE as u32 - 1)) + 1,
        );
        addrs && r == 0
    };
    if !ok {
        slot.discard(0);
        count_protocol(PROTO_LOST);
        return;
    }
    slot.submit(socket_submit_flags());
    count_protocol(PROTO_SENT);
    if flags & PAYLOAD_TRUNCATED != 0 {
        count_protocol(PROTO_TRUNCATED);
    }
}

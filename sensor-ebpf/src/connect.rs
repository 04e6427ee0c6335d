//! Connect hooks: fentry and kprobe on `tcp_connect`, and the `inet_sock_set_state`
//! tracepoint (BTF-typed, else classic) at CLOSE -> SYN_SENT. Userspace attaches one for
//! connects. The state hook is attached on every kernel anyway, because only it sees
//! CLOSE -> LISTEN (a listen record) and SYN_RECV -> ESTABLISHED (an inbound record);
//! `STATE_CONNECTS` says whether it emits connects too.

use aya_ebpf::{
    helpers::generated::{bpf_get_current_task, bpf_get_socket_cookie},
    macros::{btf_tracepoint, fentry, kprobe, tracepoint},
    programs::{BtfTracePointContext, FEntryContext, ProbeContext, TracePointContext},
};
use aya_log_ebpf::debug;
use sensor_common::{
    AF_INET, AF_INET6, Connect, ConnectEvent, Header, IPPROTO_TCP, KernelLayout, OFFSET_UNKNOWN,
    Probe, RecordKind, TCP_CLOSE, TCP_ESTABLISHED, TCP_LISTEN, TCP_SYN_RECV, TCP_SYN_SENT,
};

use crate::{
    filter::{active, filtered, folded, would_filter},
    maps::{
        CONNECTS, LAYOUT, SOCKETS, STATE_CONNECTS, connect_submit_flags, count_emitted, count_loss,
        count_seen, protocol_settings, socket_submit_flags, tp_layout,
    },
    protocol::{remember, wants_flow},
    task::{exe_file, file_id, fill_header, read, sock_netns},
};

#[fentry(function = "tcp_connect")]
pub fn tcp_connect_fentry(ctx: FEntryContext) -> u32 {
    let sk: *const u8 = ctx.arg(0);
    from_sock(&ctx, sk, Probe::Fentry, RecordKind::Connect, 0);
    0
}

#[kprobe]
pub fn tcp_connect_kprobe(ctx: ProbeContext) -> u32 {
    if let Some(sk) = ctx.arg::<*const u8>(0) {
        from_sock(&ctx, sk, Probe::Kprobe, RecordKind::Connect, 0);
    }
    0
}

/// BTF-typed raw tracepoint: TP_PROTO(const struct sock *sk, int oldstate, int newstate).
/// Attached through the bpf syscall by name (no tracefs) and, unlike the classic
/// tracepoint, no trace record is built before the program runs.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state_btf(ctx: BtfTracePointContext) -> u32 {
    let sk: *const u8 = ctx.arg(0);
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    if sk.is_null() {
        return 0;
    }
    let Some(kind) = transition(old, new) else {
        // fentry or kprobe reports connects: only remember the flow for the egress hook.
        if (old, new) == (TCP_CLOSE, TCP_SYN_SENT) && protocol_settings().enabled != 0 {
            remember_only(sk);
        }
        return 0;
    };
    let l = LAYOUT.load();
    // SAFETY: `sk` is the tracepoint's socket pointer, read only through probe_read.
    // MPTCP sockets pass through this tracepoint too; only TCP ones are connects.
    if unsafe { read::<u16>(sk, l.sk_protocol) } != Some(IPPROTO_TCP) {
        return 0;
    }
    // Protocol on the port: the flow's identity is remembered by socket cookie, which only
    // a BTF-typed socket pointer can be asked for (so only this hook does it).
    let cookie = if kind == RecordKind::Connect && protocol_settings().enabled != 0 {
        // SAFETY: `sk` is the tracepoint's BTF-typed socket argument.
        unsafe { bpf_get_socket_cookie(sk as *mut _) }
    } else {
        0
    };
    from_sock(&ctx, sk, Probe::TpBtf, kind, cookie);
    0
}

/// Protocol on the port where another hook reports connects: the flow's identity is
/// remembered here, with whether the filter passed its connect (a fold is not known
/// here: a folded connect counts as reported, so its first bytes go up).
#[inline(always)]
fn remember_only(sk: *const u8) {
    let l = LAYOUT.load();
    // SAFETY: `sk` is the tracepoint's socket pointer, read only through probe_read.
    if unsafe { read::<u16>(sk, l.sk_protocol) } != Some(IPPROTO_TCP) {
        return;
    }
    // SAFETY: `sk` is the tracepoint's BTF-typed socket argument.
    let cookie = unsafe { bpf_get_socket_cookie(sk as *mut _) };
    let mut ev = empty_event(Probe::TpBtf);
    // SAFETY: as in from_sock.
    unsafe {
        ev.data.family = read::<u16>(sk, l.sk_family).unwrap_or(0);
        ev.data.dport = u16::from_be(read::<u16>(sk, l.sk_dport).unwrap_or(0));
        if ev.data.family == AF_INET {
            let d = read::<[u8; 4]>(sk, l.sk_daddr).unwrap_or([0; 4]);
            ev.data.daddr[..4].copy_from_slice(&d);
        } else {
            ev.data.daddr = read::<[u8; 16]>(sk, l.sk_v6_daddr).unwrap_or([0; 16]);
        }
    }
    let (generation, settings) = active();
    let dropped = would_filter(
        generation,
        &settings,
        ev.data.family,
        &ev.data.daddr,
        ev.data.dport,
    );
    if dropped && !wants_flow(generation, ev.data.family, &ev.data.daddr, ev.data.dport) {
        return;
    }
    // SAFETY: helper without arguments; the task is only read through probe_read.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    // SAFETY: the task is only read through probe_read.
    unsafe { fill_header(&mut ev.header, RecordKind::Connect, task, &l) };
    remember(cookie, &ev.header, !dropped);
}

/// The record a state transition makes, if any. CLOSE -> SYN_SENT is tcp_connect() in
/// the connecting task (only when this hook serves connects); CLOSE -> LISTEN is listen()
/// in the listening task; SYN_RECV -> ESTABLISHED is a passive open completing, in
/// softirq.
#[inline(always)]
fn transition(old: i32, new: i32) -> Option<RecordKind> {
    match (old, new) {
        (TCP_CLOSE, TCP_SYN_SENT) => {
            let on = STATE_CONNECTS.get(0).is_some_and(|v| *v != 0);
            on.then_some(RecordKind::Connect)
        }
        (TCP_CLOSE, TCP_LISTEN) => Some(RecordKind::Listen),
        (TCP_SYN_RECV, TCP_ESTABLISHED) => Some(RecordKind::Inbound),
        _ => None,
    }
}

#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    let Some(t) = tp_layout() else {
        return 0;
    };
    // SAFETY: offsets come from this kernel's format file; reads go through probe_read.
    let fields = unsafe {
        (
            ctx.read_at::<i32>(t.oldstate as usize),
            ctx.read_at::<i32>(t.newstate as usize),
            ctx.read_at::<u16>(t.protocol as usize),
        )
    };
    let (Ok(old), Ok(new), Ok(proto)) = fields else {
        return 0;
    };
    let Some(kind) = transition(old, new) else {
        return 0;
    };
    if proto != IPPROTO_TCP {
        return 0;
    }
    let l = LAYOUT.load();
    let mut ev = empty_event(Probe::Tracepoint);
    // SAFETY: as above.
    unsafe {
        ev.data.family = ctx.read_at::<u16>(t.family as usize).unwrap_or(0);
        ev.data.dport = ctx.read_at::<u16>(t.dport as usize).unwrap_or(0);
        ev.data.sport = ctx.read_at::<u16>(t.sport as usize).unwrap_or(0);
        if ev.data.family == AF_INET {
            let d = ctx.read_at::<[u8; 4]>(t.daddr as usize).unwrap_or([0; 4]);
            let s = ctx.read_at::<[u8; 4]>(t.saddr as usize).unwrap_or([0; 4]);
            ev.data.daddr[..4].copy_from_slice(&d);
            ev.data.saddr[..4].copy_from_slice(&s);
        } else if ev.data.family == AF_INET6 {
            ev.data.daddr = ctx
                .read_at::<[u8; 16]>(t.daddr_v6 as usize)
                .unwrap_or([0; 16]);
            ev.data.saddr = ctx
                .read_at::<[u8; 16]>(t.saddr_v6 as usize)
                .unwrap_or([0; 16]);
        } else {
            return 0;
        }
    }
    let sk = if t.skaddr == OFFSET_UNKNOWN {
        core::ptr::null()
    } else {
        // SAFETY: as above; the pointer is only followed through probe_read.
        unsafe { ctx.read_at::<*const u8>(t.skaddr as usize) }.unwrap_or(core::ptr::null())
    };
    emit(&ctx, &mut ev, kind, sk, &l, 0);
    0
}

/// fentry and kprobe see `struct sock *` as tcp_connect's first argument, tp_btf as the
/// state hook's.
#[inline(always)]
fn from_sock<C: aya_ebpf::EbpfContext>(
    ctx: &C,
    sk: *const u8,
    probe: Probe,
    kind: RecordKind,
    cookie: u64,
) {
    let l = LAYOUT.load();
    if sk.is_null() || l.sk_family == OFFSET_UNKNOWN {
        return;
    }
    let mut ev = empty_event(probe);
    // SAFETY: `sk` is the kernel's socket pointer; every read is a checked probe_read.
    unsafe {
        ev.data.family = read::<u16>(sk, l.sk_family).unwrap_or(0);
        // skc_dport is network order; skc_num (local port) is host order.
        ev.data.dport = u16::from_be(read::<u16>(sk, l.sk_dport).unwrap_or(0));
        ev.data.sport = read::<u16>(sk, l.sk_num).unwrap_or(0);
        if ev.data.family == AF_INET {
            let d = read::<[u8; 4]>(sk, l.sk_daddr).unwrap_or([0; 4]);
            let s = read::<[u8; 4]>(sk, l.sk_rcv_saddr).unwrap_or([0; 4]);
            ev.data.daddr[..4].copy_from_slice(&d);
            ev.data.saddr[..4].copy_from_slice(&s);
        } else if ev.data.family == AF_INET6 {
            ev.data.daddr = read::<[u8; 16]>(sk, l.sk_v6_daddr).unwrap_or([0; 16]);
            ev.data.saddr = read::<[u8; 16]>(sk, l.sk_v6_rcv_saddr).unwrap_or([0; 16]);
        } else {
            return;
        }
    }
    emit(ctx, &mut ev, kind, sk, &l, cookie);
}

/// A connect-layout record with only its probe set: the socket's fields are read and
/// the filter consulted before the (costlier) header is filled in.
#[inline(always)]
fn empty_event(probe: Probe) -> ConnectEvent {
    ConnectEvent {
        header: Header::EMPTY,
        data: Connect {
            family: 0,
            dport: 0,
            sport: 0,
            probe: probe as u8,
            _pad: 0,
            daddr: [0; 16],
            saddr: [0; 16],
            exe_ino: 0,
            exe_dev: 0,
            netns: 0,
        },
    }
}

/// Counts the record, drops a connect the filter rules out, fills the header for the
/// current task, folds a repeat, and submits the rest with the socket's namespace and
/// (but for inbound opens, which run in softirq) the task's executable. Listens and
/// inbound opens are never filtered or folded.
#[inline(always)]
fn emit<C: aya_ebpf::EbpfContext>(
    ctx: &C,
    ev: &mut ConnectEvent,
    kind: RecordKind,
    sk: *const u8,
    l: &KernelLayout,
    cookie: u64,
) {
    let k = kind as u32;
    count_seen(k);
    let connect = kind == RecordKind::Connect;
    let (generation, settings) = active();
    let dropped = connect
        && filtered(
            generation,
            &settings,
            k,
            ev.data.family,
            &ev.data.daddr,
            ev.data.dport,
        );
    // A connect kept in the kernel is remembered only where its first bytes could matter:
    // a port with an expectation, a destination not excluded. The rest cost nothing more.
    let quiet_cookie = if cookie != 0
        && connect
        && wants_flow(generation, ev.data.family, &ev.data.daddr, ev.data.dport)
    {
        cookie
    } else {
        0
    };
    if dropped && quiet_cookie == 0 {
        return;
    }
    // SAFETY: helper without arguments; the task is only read through probe_read.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    // SAFETY: the task is only read through probe_read.
    unsafe { fill_header(&mut ev.header, kind, task, l) };
    if dropped || (connect && folded(&settings, ev)) {
        remember(quiet_cookie, &ev.header, false);
        return;
    }
    // SAFETY: kernel pointers, only read through probe_read.
    unsafe {
        ev.data.netns = sock_netns(sk, l);
        if kind != RecordKind::Inbound {
            set_image(ev, task, l);
        }
    }
    let sent = submit(ctx, ev);
    remember(cookie, &ev.header, sent);
}

/// The current task's executable (inode, device) into a record: what made the connect,
/// whatever it execs next.
///
/// # Safety
/// `task` is a kernel `task_struct` pointer; it is only read via probe_read.
#[inline(always)]
pub(crate) unsafe fn set_image(ev: &mut ConnectEvent, task: *const u8, l: &KernelLayout) {
    unsafe {
        let id = file_id(exe_file(task, l), l);
        ev.data.exe_ino = id.ino;
        ev.data.exe_dev = id.dev;
    }
}

/// A connect-layout record with its header filled in for `task` (the current task).
#[inline(always)]
pub(crate) fn connect_event_for(
    probe: Probe,
    kind: RecordKind,
    task: *const u8,
    l: &KernelLayout,
) -> ConnectEvent {
    let mut ev = empty_event(probe);
    // SAFETY: the task is only read through probe_read.
    unsafe { fill_header(&mut ev.header, kind, task, l) };
    ev
}

/// TCP connects go to their own ring; listens, inbound opens and UDP to the sockets ring
/// (a flood of them can push out neither a connect nor an exec record).
#[inline(always)]
pub(crate) fn submit<C: aya_ebpf::EbpfContext>(ctx: &C, ev: &ConnectEvent) -> bool {
    let connect = ev.header.kind == RecordKind::Connect as u32;
    // One reserve call per map: each call site sees a constant map.
    let reserved = if connect {
        CONNECTS.reserve::<ConnectEvent>(0)
    } else {
        SOCKETS.reserve::<ConnectEvent>(0)
    };
    match reserved {
        Some(mut slot) => {
            // SAFETY: the reserved slot is ours and sized for a ConnectEvent; copied in
            // place, with no temporary copy on the stack (the hooks are near its limit).
            unsafe { core::ptr::copy_nonoverlapping(ev, slot.as_mut_ptr(), 1) };
            slot.submit(if connect {
                connect_submit_flags()
            } else {
                socket_submit_flags()
            });
            count_emitted(ev.header.kind);
            if ev.header.kind == RecordKind::Connect as u32 {
                debug!(
                    ctx,
                    "connect tgid={} dport={}", ev.header.tgid, ev.data.dport
                );
            } else {
                debug!(
                    ctx,
                    "record kind={} tgid={} sport={} dport={}",
                    ev.header.kind,
                    ev.header.tgid,
                    ev.data.sport,
                    ev.data.dport
                );
            }
            true
        }
        None => {
            count_loss(ev.header.kind);
            false
        }
    }
}

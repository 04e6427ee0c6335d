use aya_ebpf::{
    Global,
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        bpf_probe_read_kernel,
        generated::{
            bpf_get_current_cgroup_id, bpf_get_current_task, bpf_ktime_get_boot_ns,
            bpf_ktime_get_ns,
        },
    },
    macros::{btf_tracepoint, fentry, kprobe, map, tracepoint},
    maps::{Array, PerCpuArray, RingBuf},
    programs::{BtfTracePointContext, FEntryContext, ProbeContext, TracePointContext},
};
use aya_log_ebpf::debug;
use sensor_common::{
    AF_INET, AF_INET6, ConnectEvent, EVENT_CONNECT, IPPROTO_TCP, KernelLayout, LOSS_SLOTS,
    LOST_RESERVE, OFFSET_UNKNOWN, PROBE_FENTRY, PROBE_KPROBE, PROBE_TP_BTF, PROBE_TRACEPOINT,
    TCP_CLOSE, TCP_SYN_SENT, TracepointLayout,
};

/// Resized by userspace at load time (`--ring-buffer-size`).
#[map]
pub(crate) static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Per-CPU loss counters; userspace sums and reports them.
#[map]
pub(crate) static LOSSES: PerCpuArray<u64> = PerCpuArray::with_max_entries(LOSS_SLOTS, 0);

/// Batching threshold, set by userspace before load (see sensor_common::WAKEUP_GLOBAL).
#[unsafe(no_mangle)]
static WAKEUP_BYTES: Global<u64> = Global::new(0);

/// Longest a record may wait for a reader wakeup, nanoseconds (set with WAKEUP_BYTES).
#[unsafe(no_mangle)]
static MAX_DELAY_NS: Global<u64> = Global::new(0);

/// When the last forced wakeup was sent (CLOCK_MONOTONIC ns). Shared by all CPUs; a race
/// only costs an extra wakeup.
#[map]
static LAST_WAKEUP: Array<u64> = Array::with_max_entries(1, 0);

/// Submit flags. A wakeup is forced when a quarter ring is pending or none was sent for
/// MAX_DELAY_NS (so the first record after a quiet spell wakes the reader at once);
/// otherwise none, and the reader's timer, armed after every drain that found records,
/// picks the batch up within MAX_DELAY_NS. Idle hosts cost no wakeups at all.
#[inline(always)]
pub(crate) fn submit_flags() -> u64 {
    let threshold = WAKEUP_BYTES.load();
    if threshold == 0 {
        return 0;
    }
    let Some(last) = LAST_WAKEUP.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: helper without arguments; `last` points into our own one-slot array.
    let now = unsafe { bpf_ktime_get_ns() };
    let stale = unsafe { now.wrapping_sub(*last) } >= MAX_DELAY_NS.load();
    if stale || EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= threshold {
        unsafe { *last = now };
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

/// Field offsets, filled in by userspace before load.
#[unsafe(no_mangle)]
pub(crate) static LAYOUT: Global<KernelLayout> = Global::new(KernelLayout::UNKNOWN);

/// Classic tracepoint record offsets, written by userspace before it attaches a classic
/// tracepoint (the fallback). Until then the slot is zeroed and nothing reads it.
#[map]
pub(crate) static TP_LAYOUT: Array<TracepointLayout> = Array::with_max_entries(1, 0);

/// The classic tracepoints' offsets, or None before userspace wrote them.
#[inline(always)]
pub(crate) fn tp_layout() -> Option<TracepointLayout> {
    let l = *TP_LAYOUT.get(0)?;
    // An all-zero slot was never written: offset 0 is common_type, never a field we read.
    (l.newstate != 0).then_some(l)
}

#[fentry(function = "tcp_connect")]
pub fn tcp_connect_fentry(ctx: FEntryContext) -> u32 {
    let sk: *const u8 = ctx.arg(0);
    from_sock(&ctx, sk, PROBE_FENTRY);
    0
}

#[kprobe]
pub fn tcp_connect_kprobe(ctx: ProbeContext) -> u32 {
    if let Some(sk) = ctx.arg::<*const u8>(0) {
        from_sock(&ctx, sk, PROBE_KPROBE);
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
    // CLOSE -> SYN_SENT is tcp_connect(), running in the connecting task.
    if old != TCP_CLOSE || new != TCP_SYN_SENT || sk.is_null() {
        return 0;
    }
    let l = LAYOUT.load();
    // SAFETY: `sk` is the tracepoint's socket pointer, read only through probe_read.
    // MPTCP sockets pass through this tracepoint too; only TCP ones are connects.
    if unsafe { read::<u16>(sk, l.sk_protocol) } != Some(IPPROTO_TCP) {
        return 0;
    }
    from_sock(&ctx, sk, PROBE_TP_BTF);
    0
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
    // CLOSE -> SYN_SENT is tcp_connect(), running in the connecting task.
    if old != TCP_CLOSE || new != TCP_SYN_SENT || proto != IPPROTO_TCP {
        return 0;
    }
    let l = LAYOUT.load();
    let Some(mut ev) = event_header(PROBE_TRACEPOINT, &l) else {
        return 0;
    };
    // SAFETY: as above.
    unsafe {
        ev.family = ctx.read_at::<u16>(t.family as usize).unwrap_or(0);
        ev.dport = ctx.read_at::<u16>(t.dport as usize).unwrap_or(0);
        ev.sport = ctx.read_at::<u16>(t.sport as usize).unwrap_or(0);
        if ev.family == AF_INET {
            let d = ctx.read_at::<[u8; 4]>(t.daddr as usize).unwrap_or([0; 4]);
            let s = ctx.read_at::<[u8; 4]>(t.saddr as usize).unwrap_or([0; 4]);
            ev.daddr[..4].copy_from_slice(&d);
            ev.saddr[..4].copy_from_slice(&s);
        } else if ev.family == AF_INET6 {
            ev.daddr = ctx
                .read_at::<[u8; 16]>(t.daddr_v6 as usize)
                .unwrap_or([0; 16]);
            ev.saddr = ctx
                .read_at::<[u8; 16]>(t.saddr_v6 as usize)
                .unwrap_or([0; 16]);
        } else {
            return 0;
        }
    }
    submit(&ctx, &ev);
    0
}

/// fentry and kprobe see `struct sock *` as tcp_connect's first argument, tp_btf as the
/// state hook's.
#[inline(always)]
fn from_sock<C: aya_ebpf::EbpfContext>(ctx: &C, sk: *const u8, probe: u8) {
    let l = LAYOUT.load();
    if sk.is_null() || l.sk_family == OFFSET_UNKNOWN {
        return;
    }
    let Some(mut ev) = event_header(probe, &l) else {
        return;
    };
    // SAFETY: `sk` is the kernel's socket pointer; every read is a checked probe_read.
    unsafe {
        ev.family = read::<u16>(sk, l.sk_family).unwrap_or(0);
        // skc_dport is network order; skc_num (local port) is host order.
        ev.dport = u16::from_be(read::<u16>(sk, l.sk_dport).unwrap_or(0));
        ev.sport = read::<u16>(sk, l.sk_num).unwrap_or(0);
        if ev.family == AF_INET {
            let d = read::<[u8; 4]>(sk, l.sk_daddr).unwrap_or([0; 4]);
            let s = read::<[u8; 4]>(sk, l.sk_rcv_saddr).unwrap_or([0; 4]);
            ev.daddr[..4].copy_from_slice(&d);
            ev.saddr[..4].copy_from_slice(&s);
        } else if ev.family == AF_INET6 {
            ev.daddr = read::<[u8; 16]>(sk, l.sk_v6_daddr).unwrap_or([0; 16]);
            ev.saddr = read::<[u8; 16]>(sk, l.sk_v6_rcv_saddr).unwrap_or([0; 16]);
        } else {
            return;
        }
    }
    submit(ctx, &ev);
}

/// The task-side fields every connect event carries.
#[inline(always)]
fn event_header(probe: u8, l: &KernelLayout) -> Option<ConnectEvent> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    let mut ev = ConnectEvent {
        kind: EVENT_CONNECT,
        tgid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        ppid: 0,
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
        // SAFETY: helpers without arguments.
        ktime_ns: unsafe { bpf_ktime_get_boot_ns() },
        start_time_ns: 0,
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        family: 0,
        dport: 0,
        sport: 0,
        probe,
        _pad: 0,
        daddr: [0; 16],
        saddr: [0; 16],
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    };
    // SAFETY: helper without arguments; the pointer is only dereferenced via probe_read.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    // SAFETY: the current task, read only through probe_read.
    let lineage = unsafe { task_lineage(task, l) };
    ev.start_time_ns = lineage.start_time_ns;
    ev.ppid = lineage.ppid;
    Some(ev)
}

/// A task's start time and its parent's identity; zeros where unreadable.
pub(crate) struct Lineage {
    pub start_time_ns: u64,
    pub ppid: u32,
    pub parent_start_time_ns: u64,
}

/// # Safety
/// `task` is a kernel `task_struct` pointer (or null); it is only read via probe_read.
#[inline(always)]
pub(crate) unsafe fn task_lineage(task: *const u8, l: &KernelLayout) -> Lineage {
    let mut out = Lineage {
        start_time_ns: 0,
        ppid: 0,
        parent_start_time_ns: 0,
    };
    if task.is_null() {
        return out;
    }
    unsafe {
        // A process's identity is its leader's start time: any thread may be the one
        // connecting or forking, and /proc/PID/stat shows the leader's.
        out.start_time_ns = process_start(task, l);
        if let Some(parent) = read::<*const u8>(task, l.task_real_parent)
            && !parent.is_null()
        {
            out.ppid = read::<u32>(parent, l.task_tgid).unwrap_or(0);
            out.parent_start_time_ns = process_start(parent, l);
        }
    }
    out
}

/// `task->group_leader->start_boottime`: the start time of the process `task` belongs to.
///
/// # Safety
/// `task` is a kernel `task_struct` pointer; it is only read via probe_read.
#[inline(always)]
pub(crate) unsafe fn process_start(task: *const u8, l: &KernelLayout) -> u64 {
    unsafe {
        let leader = match read::<*const u8>(task, l.task_group_leader) {
            Some(p) if !p.is_null() => p,
            _ => task,
        };
        read::<u64>(leader, l.task_start_boottime).unwrap_or(0)
    }
}

/// probe_read of a `T` at `base + off`, or None when the offset is unknown or the read faults.
#[inline(always)]
pub(crate) unsafe fn read<T>(base: *const u8, off: u32) -> Option<T> {
    if off == OFFSET_UNKNOWN {
        return None;
    }
    unsafe { bpf_probe_read_kernel(base.add(off as usize) as *const T).ok() }
}

#[inline(always)]
fn submit<C: aya_ebpf::EbpfContext>(ctx: &C, ev: &ConnectEvent) {
    match EVENTS.reserve::<ConnectEvent>(0) {
        Some(mut slot) => {
            slot.write(*ev);
            slot.submit(submit_flags());
            debug!(ctx, "connect tgid={} dport={}", ev.tgid, ev.dport);
        }
        None => count_loss(),
    }
}

/// A record that could not be reserved: counted, never silently dropped.
#[inline(always)]
pub(crate) fn count_loss() {
    if let Some(n) = LOSSES.get_ptr_mut(LOST_RESERVE) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *n += 1 };
    }
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// Does nothing, on the classic connect tracepoint: the benchmark's baseline for what any
/// BPF program on this hook costs, against which the sensor's own cost is measured.
#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn baseline_empty(_ctx: TracePointContext) -> u32 {
    0
}

/// The same floor on the BTF tracepoint.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn baseline_empty_btf(_ctx: BtfTracePointContext) -> u32 {
    0
}

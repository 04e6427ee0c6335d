//! Maps and globals shared by every program: the three ring buffers and their loss counter, the
//! wakeup batching settings, and the field offsets userspace writes before load.

use aya_ebpf::{
    Global,
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::generated::bpf_ktime_get_ns,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use sensor_common::{
    COUNTER_SLOTS, EXCLUDED_MAX, FOLD_MAX, FilterSettings, FlowIdentity, FoldKey, FoldValue,
    KernelLayout, LOSS_SLOTS, LOST_RESERVE, PORT_WORDS, PROTO_SLOTS, PROTOCOL_FLOWS_MAX,
    PROTOCOL_PORTS_MAX, ProtocolSettings, STAT_EMITTED, STAT_LOST, STAT_SEEN, TracepointLayout,
    counter_slot,
};

/// Process lifecycle records (exec, fork, exit): a socket flood cannot push out the exec
/// record that attributes a connect. Resized by userspace at load time (`--ring-buffer-size`).
#[map]
pub(crate) static PROCESSES: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// TCP connects only, so no flood of another kind can push one out. Resized likewise.
#[map]
pub(crate) static CONNECTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// UDP, listen and inbound records: the kinds a user can flood cheaply. Resized likewise.
#[map]
pub(crate) static SOCKETS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Per-CPU loss counters; userspace sums and reports them.
#[map]
pub(crate) static LOSSES: PerCpuArray<u64> = PerCpuArray::with_max_entries(LOSS_SLOTS, 0);

/// 1 when the state tracepoint also serves connects (see sensor_common::STATE_CONNECTS_MAP).
#[map]
pub(crate) static STATE_CONNECTS: Array<u32> = Array::with_max_entries(1, 0);

/// Per-CPU record counters (sensor_common::COUNTERS_MAP); userspace sums them.
#[map]
pub(crate) static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

/// The filter generation in force (sensor_common::FILTER_ACTIVE_MAP).
#[map]
pub(crate) static FILTER_ACTIVE: Array<u32> = Array::with_max_entries(1, 0);

/// Per generation: filter and fold switches. Zeroed (everything passes) until written.
#[map]
pub(crate) static FILTER_SETTINGS: Array<FilterSettings> = Array::with_max_entries(2, 0);

/// Per generation, 65,536 port bits (sensor_common::PORT_BITS_MAP).
#[map]
pub(crate) static PORT_BITS: Array<u64> = Array::with_max_entries(2 * PORT_WORDS, 0);

/// Excluded networks, per generation and family; the value is unused.
#[map]
pub(crate) static EXCLUDED_V4_0: LpmTrie<[u8; 4], u8> = LpmTrie::with_max_entries(EXCLUDED_MAX, 0);
#[map]
pub(crate) static EXCLUDED_V4_1: LpmTrie<[u8; 4], u8> = LpmTrie::with_max_entries(EXCLUDED_MAX, 0);
#[map]
pub(crate) static EXCLUDED_V6_0: LpmTrie<[u8; 16], u8> = LpmTrie::with_max_entries(EXCLUDED_MAX, 0);
#[map]
pub(crate) static EXCLUDED_V6_1: LpmTrie<[u8; 16], u8> = LpmTrie::with_max_entries(EXCLUDED_MAX, 0);

/// Fold table: a plain hash, never an LRU (it would evict counts silently). Full: the
/// connect passes up unfolded, counted.
#[map]
pub(crate) static FOLD: HashMap<FoldKey, FoldValue> = HashMap::with_max_entries(FOLD_MAX, 0);

/// (socket cookie, destination) pairs already reported: a UDP flood on one socket to one
/// destination is one record. LRU, so the table never fills.
#[map]
pub(crate) static UDP_SEEN: LruHashMap<UdpKey, u8> = LruHashMap::with_max_entries(16384, 0);

/// Key of [`UDP_SEEN`].
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct UdpKey {
    pub cookie: u64,
    pub addr: [u8; 16],
    pub port: u16,
    pub family: u16,
    pub _pad: u32,
}

/// Batching threshold, set by userspace before load (see sensor_common::WAKEUP_GLOBAL).
#[unsafe(no_mangle)]
static WAKEUP_BYTES: Global<u64> = Global::new(0);

/// Longest a record may wait for a reader wakeup, nanoseconds (set with WAKEUP_BYTES).
#[unsafe(no_mangle)]
static MAX_DELAY_NS: Global<u64> = Global::new(0);

/// When the last forced wakeup was sent (CLOCK_MONOTONIC ns), per ring (PROCESSES,
/// CONNECTS, SOCKETS). Shared by all CPUs; a race only costs an extra wakeup.
#[map]
static LAST_WAKEUP: Array<u64> = Array::with_max_entries(3, 0);

/// Submit flags. A wakeup is forced when a quarter ring is pending or none was sent for
/// MAX_DELAY_NS (so the first record after a quiet spell wakes the reader at once);
/// otherwise none, and the reader's timer, armed after every drain that found records,
/// picks the batch up within MAX_DELAY_NS. Idle hosts cost no wakeups at all.
#[inline(always)]
pub(crate) fn process_submit_flags() -> u64 {
    ring_submit_flags(&PROCESSES, 0)
}

/// [`process_submit_flags`] for the [`CONNECTS`] ring.
#[inline(always)]
pub(crate) fn connect_submit_flags() -> u64 {
    ring_submit_flags(&CONNECTS, 1)
}

/// [`process_submit_flags`] for the [`SOCKETS`] ring.
#[inline(always)]
pub(crate) fn socket_submit_flags() -> u64 {
    ring_submit_flags(&SOCKETS, 2)
}

#[inline(always)]
fn ring_submit_flags(ring: &RingBuf, slot: u32) -> u64 {
    let threshold = WAKEUP_BYTES.load();
    if threshold == 0 {
        return 0;
    }
    let Some(last) = LAST_WAKEUP.get_ptr_mut(slot) else {
        return 0;
    };
    // SAFETY: helper without arguments; `last` points into our own array.
    let now = unsafe { bpf_ktime_get_ns() };
    let stale = unsafe { now.wrapping_sub(*last) } >= MAX_DELAY_NS.load();
    if stale || ring.query(BPF_RB_AVAIL_DATA as u64) >= threshold {
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

/// The classic tracepoints' offsets, or None before userspace wrote them. A reference
/// into the map, not a copy: the classic state hook's stack is near the 512-byte limit.
#[inline(always)]
pub(crate) fn tp_layout() -> Option<&'static TracepointLayout> {
    let l = TP_LAYOUT.get(0)?;
    // An all-zero slot was never written: offset 0 is common_type, never a field we read.
    (l.newstate != 0).then_some(l)
}

/// A record of `kind` that could not be reserved: counted, never silently dropped.
#[inline(always)]
pub(crate) fn count_loss(kind: u32) {
    count(LOST_RESERVE);
    count_stat(kind, STAT_LOST);
}

/// A record of `kind` made and written to the ring buffer.
#[inline(always)]
pub(crate) fn count_emitted(kind: u32) {
    count_stat(kind, STAT_EMITTED);
}

/// A record of `kind` made (before any filter).
#[inline(always)]
pub(crate) fn count_seen(kind: u32) {
    count_stat(kind, STAT_SEEN);
}

/// Adds one to the per-CPU counter of `stat` for record kind `kind`.
#[inline(always)]
pub(crate) fn count_stat(kind: u32, stat: u32) {
    bump(counter_slot(kind, stat));
}

/// Adds one to a per-CPU slot of COUNTERS.
#[inline(always)]
pub(crate) fn bump(slot: u32) {
    if let Some(n) = COUNTERS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *n += 1 };
    }
}

/// Adds one to a per-CPU counter slot of LOSSES.
#[inline(always)]
pub(crate) fn count(slot: u32) {
    if let Some(n) = LOSSES.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *n += 1 };
    }
}

/// The port's expected protocol (sensor_common::PROTOCOL_PORTS_MAP).
#[map]
pub(crate) static PROTOCOL_PORTS: HashMap<u16, u8> =
    HashMap::with_max_entries(PROTOCOL_PORTS_MAX, 0);

/// The protocol feature's switches; zeroed (off) until userspace writes them.
#[map]
pub(crate) static PROTOCOL_SETTINGS: Array<ProtocolSettings> = Array::with_max_entries(1, 0);

/// Socket cookie -> who connected (sensor_common::PROTOCOL_FLOWS_MAP). LRU: a flow that
/// never sends (a refused connect) ages out instead of filling the table.
#[map]
pub(crate) static PROTOCOL_FLOWS: LruHashMap<u64, FlowIdentity> =
    LruHashMap::with_max_entries(PROTOCOL_FLOWS_MAX, 0);

/// Per-CPU scratch where a [`FlowIdentity`] is built: the connect hook's stack is near
/// its limit.
#[map]
pub(crate) static FLOW_SCRATCH: PerCpuArray<FlowIdentity> = PerCpuArray::with_max_entries(1, 0);

/// The feature's per-CPU counters (`PROTO_*` slots).
#[map]
pub(crate) static PROTOCOL_COUNTERS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(PROTO_SLOTS, 0);

/// Adds one to a per-CPU slot of PROTOCOL_COUNTERS.
#[inline(always)]
pub(crate) fn count_protocol(slot: u32) {
    if let Some(n) = PROTOCOL_COUNTERS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *n += 1 };
    }
}

/// Whether the protocol feature is on (userspace wrote its settings).
#[inline(always)]
pub(crate) fn protocol_settings() -> ProtocolSettings {
    PROTOCOL_SETTINGS
        .get(0)
        .copied()
        .unwrap_or(ProtocolSettings { enabled: 0, ja4: 0 })
}

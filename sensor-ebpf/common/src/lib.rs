//! The kernel/userspace ABI: plain `#[repr(C)]` integers and arrays, nothing else.
//!
//! Every record in the ring buffer is an [`Event<T>`]: one common [`Header`] (kind, task
//! identity, times, cgroup), filled in the kernel by one helper, then the kind's own data.
//! Userspace reads the header first (with zerocopy, behind the `user` feature) and the
//! rest by its kind.
#![cfg_attr(not(test), no_std)]

mod probe;
mod protocol;
pub use probe::Probe;
pub use protocol::*;

/// What a record is: `Header::kind`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// [`ConnectEvent`]: one outbound TCP connect.
    Connect = 1,
    /// [`ExecEvent`]: a process image replaced (execve).
    Exec = 2,
    /// [`TaskEvent`]: a new process (not thread) forked.
    Fork = 3,
    /// [`TaskEvent`]: a process (its whole thread group) died; sent by whichever thread
    /// exited last, so the header's tid may be any thread's.
    Exit = 4,
    /// [`ConnectEvent`] layout: a TCP socket entered LISTEN (CLOSE -> LISTEN), in the
    /// listening task. `saddr`/`sport` are the local end; `daddr`/`dport` are zero.
    Listen = 5,
    /// [`ConnectEvent`] layout: a passive open reached ESTABLISHED (SYN_RECV ->
    /// ESTABLISHED). Runs in softirq: the header's task is whoever was interrupted, so
    /// userspace attributes it through the listen record of `sport`. `daddr`/`dport` are
    /// the remote peer.
    Inbound = 6,
    /// [`ConnectEvent`] layout: an outbound UDP datagram or UDP connect(), from the
    /// cgroup sock_addr hooks, in the sending task; first per (socket, destination).
    Udp = 7,
    /// [`PayloadEvent`]: the first payload of an outbound TCP flow, from the egress hook.
    /// The header is the connect's (remembered at connect), not the sending task's.
    Payload = 8,
}

impl RecordKind {
    /// The kind a header's `kind` field names, if any.
    pub const fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::Connect),
            2 => Some(Self::Exec),
            3 => Some(Self::Fork),
            4 => Some(Self::Exit),
            5 => Some(Self::Listen),
            6 => Some(Self::Inbound),
            7 => Some(Self::Udp),
            8 => Some(Self::Payload),
            _ => None,
        }
    }
}

/// Bytes of the exec'd path kept (`bprm->filename`, NUL terminated).
pub const FILENAME_LEN: usize = 256;
/// Bytes of argv kept (NUL-separated, as in /proc/PID/cmdline); one less is read so the
/// verifier can bound the size with a mask.
pub const ARGS_LEN: usize = 512;
/// Bytes of the mapped executable's own file name (its dentry) kept.
pub const EXE_NAME_LEN: usize = 64;

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

pub const TASK_COMM_LEN: usize = 16;

/// Name of the ring buffer map carrying process lifecycle records (exec, fork, exit): a
/// socket flood (UDP sweeps, accept loops) cannot push out the exec record that
/// attributes a connect.
pub const PROCESSES_MAP: &str = "PROCESSES";
/// Name of the ring buffer map carrying TCP connect records only: a flood of another kind
/// (UDP sweeps, accept loops, exec storms) cannot push a connect out.
pub const CONNECTS_MAP: &str = "CONNECTS";
/// Name of the ring buffer map carrying UDP, listen and inbound records (one ring, so a
/// listen record always comes before the inbound opens it attributes).
pub const SOCKETS_MAP: &str = "SOCKETS";
/// Name of the per-CPU array whose slot [`LOST_RESERVE`] counts failed ring-buffer reserves.
pub const LOSSES_MAP: &str = "LOSSES";
pub const LOST_RESERVE: u32 = 0;
/// UDP datagrams to a port whose filter bit is set (standard and not C2, DNS among
/// them), dropped in the kernel and only counted here.
pub const UDP_STANDARD_DROPPED: u32 = 1;
/// UDP datagrams after the first per (socket, destination), dropped in the kernel.
pub const UDP_REPEAT_DROPPED: u32 = 2;
/// Number of slots in the losses map.
pub const LOSS_SLOTS: u32 = 3;
/// Name of the one-slot `u32` array: 1 when the `inet_sock_set_state` program also serves
/// connects (tp_btf or classic chosen), 0 when it only sees listens and inbound opens.
pub const STATE_CONNECTS_MAP: &str = "STATE_CONNECTS";

/// Name of the per-CPU `u64` array of record counters: per record kind,
/// [`counter_slot`]`(kind, STAT_*)`, then [`FOLDED_SLOT`] and [`FOLD_TABLE_FULL_SLOT`].
pub const COUNTERS_MAP: &str = "COUNTERS";
/// Records of a kind the kernel produced (before the filter and the fold).
pub const STAT_SEEN: u32 = 0;
/// Connects (TCP, UDP) the filter dropped: they could neither score nor feed a beacon.
pub const STAT_FILTERED: u32 = 1;
/// Records written to the ring buffer.
pub const STAT_EMITTED: u32 = 2;
/// Records lost: the ring-buffer reserve failed.
pub const STAT_LOST: u32 = 3;
const STATS_PER_KIND: u32 = 4;
/// Record kinds with counters: every [`RecordKind`] value but `Payload` (counted in
/// `PROTOCOL_COUNTERS`) is below this.
pub const COUNTED_KINDS: u32 = 8;
/// The counter of `stat` for record kind `kind` (a [`RecordKind`] as `u32`).
pub const fn counter_slot(kind: u32, stat: u32) -> u32 {
    kind * STATS_PER_KIND + stat
}
/// TCP connects folded in the kernel (counted, not emitted).
pub const FOLDED_SLOT: u32 = COUNTED_KINDS * STATS_PER_KIND;
/// TCP connects passed up unfolded because the fold table was full.
pub const FOLD_TABLE_FULL_SLOT: u32 = FOLDED_SLOT + 1;
pub const COUNTER_SLOTS: u32 = FOLD_TABLE_FULL_SLOT + 1;

/// Name of the one-slot `u32` array holding the filter generation in force (0 or 1):
/// userspace fills the other generation's maps completely, then flips this, so a connect
/// is never judged by a half-written policy.
pub const FILTER_ACTIVE_MAP: &str = "FILTER_ACTIVE";
/// Name of the two-slot array of [`FilterSettings`], one per generation.
pub const FILTER_SETTINGS_MAP: &str = "FILTER_SETTINGS";
/// Name of the `u64` array of port bits: words `gen * PORT_WORDS ..` are generation
/// `gen`'s 65,536 bits, bit set = the port is standard and not a C2 port (a connect to it
/// can neither score nor feed a beacon).
pub const PORT_BITS_MAP: &str = "PORT_BITS";
pub const PORT_WORDS: u32 = 65536 / 64;
/// Names of the LPM tries of excluded networks, per generation: IPv4 (key data 4 bytes,
/// IPv4-mapped IPv6 destinations are looked up here) and IPv6 (16 bytes).
pub const EXCLUDED_V4_MAPS: [&str; 2] = ["EXCLUDED_V4_0", "EXCLUDED_V4_1"];
pub const EXCLUDED_V6_MAPS: [&str; 2] = ["EXCLUDED_V6_0", "EXCLUDED_V6_1"];
/// Capacity of each excluded-network trie.
pub const EXCLUDED_MAX: u32 = 4096;

/// One filter generation's switches.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FilterSettings {
    /// 1: drop connects the policy says cannot matter; 0: pass everything (`--all`, or
    /// before userspace wrote a policy).
    pub filter: u32,
    /// 1: fold repeats of a key in the kernel.
    pub fold: u32,
    /// The fold period, nanoseconds.
    pub fold_ns: u64,
}

/// Name of the fold hash (NOT an LRU: it never evicts silently) of [`FoldKey`] ->
/// [`FoldValue`].
pub const FOLD_MAP: &str = "FOLD";
pub const FOLD_MAX: u32 = 16384;
/// Only a repeat this soon after its key's previous connect is folded, so every beacon
/// beat (the beacon detector treats closer connects as one beat) reaches userspace with
/// its own timestamp.
pub const FOLD_BURST_NS: u64 = 250_000_000;

/// A process (tgid and start time), a destination and a port.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FoldKey {
    pub tgid: u32,
    pub family: u16,
    pub dport: u16,
    pub start_time_ns: u64,
    /// As in [`Connect::daddr`]: IPv4 in the first 4 bytes, the rest zero.
    pub daddr: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<FoldKey>() == 32);

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FoldValue {
    /// CLOCK_BOOTTIME ns of the connect that opened the current window (was emitted).
    pub window_start_ns: u64,
    /// CLOCK_BOOTTIME ns of the key's latest connect.
    pub last_ns: u64,
    /// Connects folded since the key was created; only ever grows.
    pub folded: u64,
}
/// Name of the read-only global holding [`KernelLayout`].
pub const LAYOUT_GLOBAL: &str = "LAYOUT";
/// Name of the one-slot array holding [`TracepointLayout`]. A map, not a read-only global:
/// the classic tracepoints are the fallback, and their format files can only be read once
/// tracefs is found or mounted, which happens after the object is loaded.
pub const TP_LAYOUT_MAP: &str = "TP_LAYOUT";
/// Name of the read-only `u64` global: wake the reader only once this many bytes are
/// pending (0: wake on every record). Userspace drains on a timer meanwhile.
pub const WAKEUP_GLOBAL: &str = "WAKEUP_BYTES";
/// Name of the read-only `u64` global: force a wakeup when none was sent for this long (ns).
pub const MAX_DELAY_GLOBAL: &str = "MAX_DELAY_NS";

/// What every record starts with: its kind and the task it is about.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(
    feature = "user",
    derive(zerocopy::FromBytes, zerocopy::Immutable, zerocopy::KnownLayout)
)]
pub struct Header {
    /// A [`RecordKind`] as `u32`.
    pub kind: u32,
    /// Process id (thread group id).
    pub tgid: u32,
    /// Thread id (for fork records, the child's, which is its tgid).
    pub tid: u32,
    /// Parent's tgid (`real_parent`), 0 when the layout did not allow reading it.
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    /// CLOCK_BOOTTIME of the event, nanoseconds.
    pub ktime_ns: u64,
    /// The process's start (its leader's `start_boottime`), nanoseconds since boot; 0 when
    /// unknown. With `tgid` this keys a process across pid reuse.
    pub start_time_ns: u64,
    /// The parent's `start_boottime`, so the parent is found by identity, not by pid.
    pub parent_start_time_ns: u64,
    /// cgroup v2 id of the current task (container attribution).
    pub cgroup_id: u64,
    /// `comm` of the current task, NUL padded. Any process can rename it: informational.
    pub comm: [u8; TASK_COMM_LEN],
}

impl Header {
    /// All zero: what the kernel starts a record from before filling it in.
    pub const EMPTY: Self = Self {
        kind: 0,
        tgid: 0,
        tid: 0,
        ppid: 0,
        uid: 0,
        gid: 0,
        ktime_ns: 0,
        start_time_ns: 0,
        parent_start_time_ns: 0,
        cgroup_id: 0,
        comm: [0; TASK_COMM_LEN],
    };
}

pub const HEADER_SIZE: usize = core::mem::size_of::<Header>();
const _: () = assert!(HEADER_SIZE == 72);

/// One record: the common header, then the kind's data (Kunai's `Event<T>`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(
    feature = "user",
    derive(zerocopy::FromBytes, zerocopy::Immutable, zerocopy::KnownLayout)
)]
pub struct Event<T> {
    pub header: Header,
    pub data: T,
}

/// One socket's two ends: an outbound TCP connect attempt (seen in the connecting task's
/// context), and, by [`RecordKind`], a listen, an inbound open or a UDP send.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(
    feature = "user",
    derive(zerocopy::FromBytes, zerocopy::Immutable, zerocopy::KnownLayout)
)]
pub struct Connect {
    /// AF_INET or AF_INET6.
    pub family: u16,
    /// Destination port, host byte order.
    pub dport: u16,
    /// Local port, host byte order (0 when not yet bound).
    pub sport: u16,
    /// A [`Probe`] as `u8`.
    pub probe: u8,
    pub _pad: u8,
    /// Destination address: the first 4 bytes for AF_INET, all 16 for AF_INET6. Network order.
    pub daddr: [u8; 16],
    /// Source address, same encoding as `daddr`.
    pub saddr: [u8; 16],
    /// The connecting task's executable at the time of the connect (`mm->exe_file`'s
    /// inode, and device in the kernel encoding MAJOR<<20|MINOR, as in [`Exec`]), so a
    /// later exec cannot change what the connect is attributed to. 0 when unread:
    /// inbound records (softirq, no task of theirs) and records the filter dropped.
    pub exe_ino: u64,
    pub exe_dev: u32,
    /// The socket's network namespace (`ns.inum`, the inode `/proc/PID/ns/net` shows);
    /// 0 when unknown, and for UDP (the sock_addr hooks see no socket pointer).
    pub netns: u32,
}

pub type ConnectEvent = Event<Connect>;
pub const CONNECT_EVENT_SIZE: usize = core::mem::size_of::<ConnectEvent>();
const _: () = assert!(CONNECT_EVENT_SIZE == 128);

/// Where the kernel program finds the fields it reads, computed by userspace at start-up
/// from the kernel's BTF, so nothing is hard-coded for one kernel build. An offset of [`OFFSET_UNKNOWN`] means "not available: leave the field zero".
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelLayout {
    // struct sock (struct sock_common at its start), for fentry/kprobe on tcp_connect and
    // the tp_btf state hook.
    pub sk_family: u32,
    pub sk_dport: u32,
    pub sk_num: u32,
    pub sk_daddr: u32,
    pub sk_rcv_saddr: u32,
    pub sk_v6_daddr: u32,
    pub sk_v6_rcv_saddr: u32,
    /// `struct sock::sk_protocol` (a `u16` since 5.6), for the tp_btf state hook.
    pub sk_protocol: u32,
    // struct task_struct, for parent and start time.
    pub task_real_parent: u32,
    pub task_tgid: u32,
    pub task_start_boottime: u32,
    pub task_pid: u32,
    pub task_group_leader: u32,
    pub task_mm: u32,
    // struct mm_struct / file / inode / super_block, for exec records.
    pub mm_arg_start: u32,
    pub mm_arg_end: u32,
    pub mm_exe_file: u32,
    pub file_f_inode: u32,
    pub inode_i_ino: u32,
    pub inode_i_nlink: u32,
    pub inode_i_sb: u32,
    pub sb_s_dev: u32,
    pub file_f_path: u32,
    pub path_dentry: u32,
    pub dentry_d_name: u32,
    pub qstr_name: u32,
    /// `struct linux_binprm::filename`, for the tp_btf exec hook.
    pub bprm_filename: u32,
    /// `task_struct::signal` and `signal_struct::live` (threads not yet exited): 0 at
    /// `sched_process_exit` iff the exiting thread was the group's last.
    pub task_signal: u32,
    pub signal_live: u32,
    /// `sock_common::skc_net` (a `possible_net_t`, whose first member is `struct net *`),
    /// `net::ns` and `ns_common::inum`: the socket's namespace inode.
    pub sk_net: u32,
    pub net_ns: u32,
    pub ns_inum: u32,
}

/// Field offsets in the classic tracepoints' records, from their format files under
/// tracefs: read only when the classic tracepoints are the fallback in use.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TracepointLayout {
    // sock:inet_sock_set_state.
    pub oldstate: u32,
    pub newstate: u32,
    pub sport: u32,
    pub dport: u32,
    pub family: u32,
    pub protocol: u32,
    pub saddr: u32,
    pub daddr: u32,
    pub saddr_v6: u32,
    pub daddr_v6: u32,
    /// sched:sched_process_exec's `__data_loc char[] filename` field.
    pub exec_filename: u32,
    /// inet_sock_set_state's `const void *skaddr`: the socket, for its namespace.
    pub skaddr: u32,
}

impl TracepointLayout {
    pub const UNKNOWN: Self = Self {
        oldstate: OFFSET_UNKNOWN,
        newstate: OFFSET_UNKNOWN,
        sport: OFFSET_UNKNOWN,
        dport: OFFSET_UNKNOWN,
        family: OFFSET_UNKNOWN,
        protocol: OFFSET_UNKNOWN,
        saddr: OFFSET_UNKNOWN,
        daddr: OFFSET_UNKNOWN,
        saddr_v6: OFFSET_UNKNOWN,
        daddr_v6: OFFSET_UNKNOWN,
        exec_filename: OFFSET_UNKNOWN,
        skaddr: OFFSET_UNKNOWN,
    };
}

/// Fork (in the parent's context, describing the child) and exit records: the header
/// says it all.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(
    feature = "user",
    derive(zerocopy::FromBytes, zerocopy::Immutable, zerocopy::KnownLayout)
)]
pub struct Task {}

pub type TaskEvent = Event<Task>;
pub const TASK_EVENT_SIZE: usize = core::mem::size_of::<TaskEvent>();
const _: () = assert!(TASK_EVENT_SIZE == 72);

/// A successful execve, read in the new image's context: what ran, from which file, with
/// which arguments, even if the process exits before userspace looks at /proc.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(
    feature = "user",
    derive(zerocopy::FromBytes, zerocopy::Immutable, zerocopy::KnownLayout)
)]
pub struct Exec {
    /// Inode and device (kernel encoding, MAJOR<<20|MINOR) of `mm->exe_file`: the file
    /// really mapped, whatever path was used to reach it.
    pub exe_ino: u64,
    pub exe_dev: u32,
    /// Link count of the executable's inode: 0 for memfd and deleted files.
    pub exe_nlink: u32,
    /// Valid bytes in `filename` (without NUL) and in `args`.
    pub filename_len: u32,
    pub args_len: u32,
    pub filename: [u8; FILENAME_LEN],
    pub args: [u8; ARGS_LEN],
    /// Name of the mapped file's dentry, NUL terminated: the real basename behind any
    /// symlink, and `memfd:NAME` for a memfd.
    pub exe_name: [u8; EXE_NAME_LEN],
}

pub type ExecEvent = Event<Exec>;
pub const EXEC_EVENT_SIZE: usize = core::mem::size_of::<ExecEvent>();
const _: () = assert!(EXEC_EVENT_SIZE == 928);

pub const OFFSET_UNKNOWN: u32 = u32::MAX;

impl KernelLayout {
    /// Everything unknown: the kernel program emits nothing it cannot locate.
    pub const UNKNOWN: Self = Self {
        sk_family: OFFSET_UNKNOWN,
        sk_dport: OFFSET_UNKNOWN,
        sk_num: OFFSET_UNKNOWN,
        sk_daddr: OFFSET_UNKNOWN,
        sk_rcv_saddr: OFFSET_UNKNOWN,
        sk_v6_daddr: OFFSET_UNKNOWN,
        sk_v6_rcv_saddr: OFFSET_UNKNOWN,
        sk_protocol: OFFSET_UNKNOWN,
        task_real_parent: OFFSET_UNKNOWN,
        task_tgid: OFFSET_UNKNOWN,
        task_start_boottime: OFFSET_UNKNOWN,
        task_pid: OFFSET_UNKNOWN,
        task_group_leader: OFFSET_UNKNOWN,
        task_mm: OFFSET_UNKNOWN,
        mm_arg_start: OFFSET_UNKNOWN,
        mm_arg_end: OFFSET_UNKNOWN,
        mm_exe_file: OFFSET_UNKNOWN,
        file_f_inode: OFFSET_UNKNOWN,
        inode_i_ino: OFFSET_UNKNOWN,
        inode_i_nlink: OFFSET_UNKNOWN,
        inode_i_sb: OFFSET_UNKNOWN,
        sb_s_dev: OFFSET_UNKNOWN,
        file_f_path: OFFSET_UNKNOWN,
        path_dentry: OFFSET_UNKNOWN,
        dentry_d_name: OFFSET_UNKNOWN,
        qstr_name: OFFSET_UNKNOWN,
        bprm_filename: OFFSET_UNKNOWN,
        task_signal: OFFSET_UNKNOWN,
        signal_live: OFFSET_UNKNOWN,
        sk_net: OFFSET_UNKNOWN,
        net_ns: OFFSET_UNKNOWN,
        ns_inum: OFFSET_UNKNOWN,
    };
}

/// TCP states as in include/net/tcp_states.h.
pub const TCP_ESTABLISHED: i32 = 1;
pub const TCP_SYN_SENT: i32 = 2;
pub const TCP_SYN_RECV: i32 = 3;
pub const TCP_CLOSE: i32 = 7;
pub const TCP_LISTEN: i32 = 10;
pub const IPPROTO_TCP: u16 = 6;
pub const IPPROTO_UDP: u32 = 17;

#[cfg(feature = "user")]
mod user {
    // SAFETY: both are repr(C) structs of plain integers and byte arrays with no padding
    // holes that could leak uninitialised memory (sizes asserted above and in tests).
    unsafe impl aya::Pod for super::KernelLayout {}
    unsafe impl aya::Pod for super::TracepointLayout {}
    unsafe impl aya::Pod for super::FilterSettings {}
    unsafe impl aya::Pod for super::FoldKey {}
    unsafe impl aya::Pod for super::FoldValue {}
    unsafe impl aya::Pod for super::ProtocolSettings {}
    unsafe impl aya::Pod for super::FlowIdentity {}
}

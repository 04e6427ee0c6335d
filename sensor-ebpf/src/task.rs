//! The current task as records describe it: the one helper that fills every record's
//! header, and the task_struct reads behind it (BTF-derived offsets, probe_read only).

use aya_ebpf::helpers::{
    bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_probe_read_kernel,
    generated::{bpf_get_current_cgroup_id, bpf_ktime_get_boot_ns},
};
use sensor_common::{Header, KernelLayout, OFFSET_UNKNOWN, RecordKind};

/// Fills a record's header: `kind`, the current task's ids, credentials, cgroup and comm,
/// the time, and the process identity (start time, parent) of `task`.
///
/// # Safety
/// `task` is a kernel `task_struct` pointer (or null); it is only read via probe_read.
#[inline(always)]
pub(crate) unsafe fn fill_header(
    h: &mut Header,
    kind: RecordKind,
    task: *const u8,
    l: &KernelLayout,
) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    h.kind = kind as u32;
    h.tgid = (pid_tgid >> 32) as u32;
    h.tid = pid_tgid as u32;
    h.uid = uid_gid as u32;
    h.gid = (uid_gid >> 32) as u32;
    // SAFETY: helpers without arguments; `task` only read through probe_read.
    unsafe {
        h.ktime_ns = bpf_ktime_get_boot_ns();
        h.cgroup_id = bpf_get_current_cgroup_id();
        let lineage = task_lineage(task, l);
        h.start_time_ns = lineage.start_time_ns;
        h.ppid = lineage.ppid;
        h.parent_start_time_ns = lineage.parent_start_time_ns;
    }
    h.comm = bpf_get_current_comm().unwrap_or([0; 16]);
}

/// A task's start time and its parent's identity; zeros where unreadable.
struct Lineage {
    pub start_time_ns: u64,
    pub ppid: u32,
    pub parent_start_time_ns: u64,
}

/// # Safety
/// `task` is a kernel `task_struct` pointer (or null); it is only read via probe_read.
#[inline(always)]
unsafe fn task_lineage(task: *const u8, l: &KernelLayout) -> Lineage {
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

/// `task->mm->exe_file`: the file the task's current image was mapped from; null for a
/// kernel thread or a task past `exit_mm`.
///
/// # Safety
/// `task` is a kernel `task_struct` pointer; it is only read via probe_read.
#[inline(always)]
pub(crate) unsafe fn exe_file(task: *const u8, l: &KernelLayout) -> *const u8 {
    unsafe {
        let mm = read::<*const u8>(task, l.task_mm).unwrap_or(core::ptr::null());
        if mm.is_null() {
            return core::ptr::null();
        }
        read::<*const u8>(mm, l.mm_exe_file).unwrap_or(core::ptr::null())
    }
}

/// A file's identity: inode number, device (kernel encoding, MAJOR<<20|MINOR) and link
/// count (`u32::MAX` when unread); zeros for a null file.
pub(crate) struct FileId {
    pub ino: u64,
    pub dev: u32,
    pub nlink: u32,
}

/// # Safety
/// `file` is a kernel `struct file` pointer (or null); it is only read via probe_read.
#[inline(always)]
pub(crate) unsafe fn file_id(file: *const u8, l: &KernelLayout) -> FileId {
    let mut id = FileId {
        ino: 0,
        dev: 0,
        nlink: u32::MAX,
    };
    if file.is_null() {
        return id;
    }
    unsafe {
        let inode = read::<*const u8>(file, l.file_f_inode).unwrap_or(core::ptr::null());
        if inode.is_null() {
            return id;
        }
        id.ino = read::<u64>(inode, l.inode_i_ino).unwrap_or(0);
        id.nlink = read::<u32>(inode, l.inode_i_nlink).unwrap_or(u32::MAX);
        let sb = read::<*const u8>(inode, l.inode_i_sb).unwrap_or(core::ptr::null());
        if !sb.is_null() {
            id.dev = read::<u32>(sb, l.sb_s_dev).unwrap_or(0);
        }
    }
    id
}

/// The inode number of network namespace `net` (`net->ns.inum`), 0 when unreadable.
///
/// # Safety
/// `net` is a kernel `struct net` pointer (or null); it is only read via probe_read.
#[inline(always)]
pub(crate) unsafe fn net_inum(net: *const u8, l: &KernelLayout) -> u32 {
    if net.is_null() || l.net_ns == OFFSET_UNKNOWN || l.ns_inum == OFFSET_UNKNOWN {
        return 0;
    }
    unsafe { read::<u32>(net, l.net_ns + l.ns_inum).unwrap_or(0) }
}

/// The socket's network namespace inode (`sk->__sk_common.skc_net.net->ns.inum`).
///
/// # Safety
/// `sk` is a kernel `struct sock` pointer (or null); it is only read via probe_read.
#[inline(always)]
pub(crate) unsafe fn sock_netns(sk: *const u8, l: &KernelLayout) -> u32 {
    if sk.is_null() {
        return 0;
    }
    unsafe {
        let net = read::<*const u8>(sk, l.sk_net).unwrap_or(core::ptr::null());
        net_inum(net, l)
    }
}

/// Whether the exiting `task` was its thread group's last live thread
/// (`task->signal->live` is 0: do_exit decremented it before the exit tracepoint). None
/// when the layout does not allow reading it.
///
/// # Safety
/// `task` is a kernel `task_struct` pointer; it is only read via probe_read.
#[inline(always)]
pub(crate) unsafe fn group_dead(task: *const u8, l: &KernelLayout) -> Option<bool> {
    unsafe {
        let signal = read::<*const u8>(task, l.task_signal)?;
        if signal.is_null() {
            return None;
        }
        read::<i32>(signal, l.signal_live).map(|live| live <= 0)
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

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

/// probe_read of a `T` at `base + off`, or None when the offset is unknown or the read faults.
#[inline(always)]
pub(crate) unsafe fn read<T>(base: *const u8, off: u32) -> Option<T> {
    if off == OFFSET_UNKNOWN {
        return None;
    }
    unsafe { bpf_probe_read_kernel(base.add(off as usize) as *const T).ok() }
}

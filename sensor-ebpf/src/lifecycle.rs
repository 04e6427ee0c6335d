//! Process lifecycle: exec, fork and exit records feeding userspace's process table, so a
//! process that connects and exits in a millisecond is still attributed.

use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_kernel_str_bytes,
        generated::{bpf_get_current_task, bpf_probe_read_user},
    },
    macros::{btf_tracepoint, raw_tracepoint, tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext, TracePointContext},
};
use sensor_common::{ARGS_LEN, ExecEvent, KernelLayout, OFFSET_UNKNOWN, RecordKind, TaskEvent};

use crate::{
    maps::{
        LAYOUT, PROCESSES, count_emitted, count_loss, count_seen, process_submit_flags, tp_layout,
    },
    task::{exe_file, file_id, fill_header, group_dead, process_start, read},
};

/// BTF tracepoint: TP_PROTO(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm).
#[btf_tracepoint(function = "sched_process_exec")]
pub fn sched_process_exec_btf(ctx: BtfTracePointContext) -> u32 {
    let l = LAYOUT.load();
    let bprm: *const u8 = ctx.arg(2);
    // SAFETY: the tracepoint's bprm, read only through probe_read.
    let filename = if bprm.is_null() {
        core::ptr::null()
    } else {
        unsafe { read::<*const u8>(bprm, l.bprm_filename) }.unwrap_or(core::ptr::null())
    };
    exec_record(&l, filename);
    0
}

#[tracepoint(category = "sched", name = "sched_process_exec")]
pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
    let l = LAYOUT.load();
    let mut filename = core::ptr::null();
    // __data_loc: low 16 bits offset into the record, high 16 bits length.
    if let Some(t) = tp_layout()
        && t.exec_filename != OFFSET_UNKNOWN
        // SAFETY: offset from this kernel's format file, read through probe_read.
        && let Ok(loc) = unsafe { ctx.read_at::<u32>(t.exec_filename as usize) }
    {
        // SAFETY: pointer arithmetic inside the trace record; only probe_read follows it.
        filename = unsafe { (ctx.as_ptr() as *const u8).add((loc & 0xffff) as usize) };
    }
    exec_record(&l, filename);
    0
}

/// One exec record for the current task; `filename` is the exec'd path in kernel memory
/// (`bprm->filename`) or null.
#[inline(always)]
fn exec_record(l: &KernelLayout, filename: *const u8) {
    count_seen(RecordKind::Exec as u32);
    let Some(mut slot) = PROCESSES.reserve::<ExecEvent>(0) else {
        count_loss(RecordKind::Exec as u32);
        return;
    };
    let ev = slot.as_mut_ptr();
    // SAFETY: `ev` points into the reserved ring-buffer slot, ours until submit; kernel
    // memory is only read through probe_read helpers at BTF-derived offsets.
    unsafe {
        let task = bpf_get_current_task() as *const u8;
        fill_header(&mut (*ev).header, RecordKind::Exec, task, l);
        let d = &mut (*ev).data;
        d.exe_ino = 0;
        d.exe_dev = 0;
        d.exe_nlink = u32::MAX;
        d.filename_len = 0;
        d.args_len = 0;
        d.exe_name[0] = 0;

        if !filename.is_null()
            && let Ok(s) = bpf_probe_read_kernel_str_bytes(filename, &mut d.filename)
        {
            d.filename_len = s.len() as u32;
        }

        let mm = read::<*const u8>(task, l.task_mm).unwrap_or(core::ptr::null());
        if !mm.is_null() {
            let start = read::<u64>(mm, l.mm_arg_start).unwrap_or(0);
            let end = read::<u64>(mm, l.mm_arg_end).unwrap_or(0);
            if start != 0 && end > start {
                // Bounded by the mask so the verifier can prove the write stays in `args`.
                let n = (end - start).min(ARGS_LEN as u64 - 1) & (ARGS_LEN as u64 - 1);
                let dst = d.args.as_mut_ptr();
                if bpf_probe_read_user(dst.cast(), n as u32, start as *const _) == 0 {
                    d.args_len = n as u32;
                }
            }
        }
        let file = exe_file(task, l);
        if !file.is_null() {
            let id = file_id(file, l);
            d.exe_ino = id.ino;
            d.exe_dev = id.dev;
            d.exe_nlink = id.nlink;
            // file->f_path.dentry->d_name.name
            if l.file_f_path != OFFSET_UNKNOWN
                && l.path_dentry != OFFSET_UNKNOWN
                && l.dentry_d_name != OFFSET_UNKNOWN
                && l.qstr_name != OFFSET_UNKNOWN
            {
                let dentry = read::<*const u8>(file, l.file_f_path + l.path_dentry)
                    .unwrap_or(core::ptr::null());
                if !dentry.is_null() {
                    let name = read::<*const u8>(dentry, l.dentry_d_name + l.qstr_name)
                        .unwrap_or(core::ptr::null());
                    if !name.is_null() {
                        let _ = bpf_probe_read_kernel_str_bytes(name, &mut d.exe_name);
                    }
                }
            }
        }
    }
    slot.submit(process_submit_flags());
    count_emitted(RecordKind::Exec as u32);
}

/// TP_PROTO(struct task_struct *parent, struct task_struct *child), BTF-typed.
#[btf_tracepoint(function = "sched_process_fork")]
pub fn sched_process_fork_btf(ctx: BtfTracePointContext) -> u32 {
    fork_record(ctx.arg(0), ctx.arg(1));
    0
}

/// The same tracepoint, raw (before BTF tracepoints, 5.5).
#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn sched_process_fork(ctx: RawTracePointContext) -> i32 {
    fork_record(ctx.arg(0), ctx.arg(1));
    0
}

/// Runs in the parent before the child can run, so the child's record always comes first.
#[inline(always)]
fn fork_record(parent: *const u8, child: *const u8) {
    let l = LAYOUT.load();
    if parent.is_null() || child.is_null() || l.task_tgid == OFFSET_UNKNOWN {
        return;
    }
    // SAFETY: task pointers from the tracepoint, read only through probe_read.
    unsafe {
        let child_tgid = read::<u32>(child, l.task_tgid).unwrap_or(0);
        let child_pid = read::<u32>(child, l.task_pid).unwrap_or(0);
        if child_tgid == 0 || child_pid != child_tgid {
            return; // a new thread, not a new process
        }
        count_seen(RecordKind::Fork as u32);
        let Some(mut slot) = PROCESSES.reserve::<TaskEvent>(0) else {
            count_loss(RecordKind::Fork as u32);
            return;
        };
        let ev = slot.as_mut_ptr();
        let h = &mut (*ev).header;
        fill_header(h, RecordKind::Fork, child, &l);
        // The record describes the child, seen from the forking thread (the current task).
        h.tgid = child_tgid;
        h.tid = child_tgid;
        h.ppid = read::<u32>(parent, l.task_tgid).unwrap_or(0);
        // `parent` is the forking thread: its process is identified by its leader.
        h.parent_start_time_ns = process_start(parent, &l);
        slot.submit(process_submit_flags());
        count_emitted(RecordKind::Fork as u32);
    }
}

/// BTF-typed; runs in the exiting task, like the classic one.
#[btf_tracepoint(function = "sched_process_exit")]
pub fn sched_process_exit_btf(_ctx: BtfTracePointContext) -> u32 {
    exit_record();
    0
}

#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn sched_process_exit(_ctx: TracePointContext) -> u32 {
    exit_record();
    0
}

/// An exit record means the process died: sent by the group's last exiting thread,
/// whichever it is. A leader that leaves with the exit syscall while workers live on
/// ends nothing (its process keeps its identity for their later connects).
#[inline(always)]
fn exit_record() {
    let pid_tgid = bpf_get_current_pid_tgid();
    let l = LAYOUT.load();
    // SAFETY: helper without arguments; the task is only read through probe_read.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    // SAFETY: as above.
    let dead = match unsafe { group_dead(task, &l) } {
        Some(dead) => dead,
        // Without signal->live: the leader's exit stands for the group's, as before.
        None => pid_tgid >> 32 == pid_tgid & 0xffff_ffff,
    };
    if !dead {
        return;
    }
    count_seen(RecordKind::Exit as u32);
    let Some(mut slot) = PROCESSES.reserve::<TaskEvent>(0) else {
        count_loss(RecordKind::Exit as u32);
        return;
    };
    let ev = slot.as_mut_ptr();
    // SAFETY: as in sched_process_exec. The header's start time is the group leader's,
    // whichever thread is exiting.
    unsafe {
        fill_header(&mut (*ev).header, RecordKind::Exit, task, &l);
    }
    slot.submit(process_submit_flags());
    count_emitted(RecordKind::Exit as u32);
}

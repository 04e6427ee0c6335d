//! Empty programs on the connect tracepoints: the benchmark's floor.

use aya_ebpf::{
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};

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

//! Kernel side: capture every outbound TCP connect attempt in the connecting task's context
//! and push it to userspace through one ring buffer. Thin and defensive on purpose: no
//! policy here, every read checked, every failed reserve counted.
//!
//! Three hooks, of which userspace attaches exactly one (the first that loads):
//! `fentry/tcp_connect`, `kprobe/tcp_connect`, and the `sock:inet_sock_set_state`
//! tracepoint filtered to the CLOSE -> SYN_SENT transition. Beside them, exec, fork and
//! exit records (`lifecycle`) feed userspace's process table through the same ring buffer,
//! so a process's exec record always precedes its connects.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod lifecycle;
#[cfg(target_arch = "bpf")]
mod probes;

// Host builds (`cargo build --workspace`) compile this crate as an empty program.
#[cfg(not(target_arch = "bpf"))]
fn main() {}

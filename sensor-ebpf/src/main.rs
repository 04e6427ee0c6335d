//! Kernel side: capture every outbound TCP connect attempt in the connecting task's context,
//! TCP listens and inbound opens, and outbound UDP, and push them to userspace through one
//! ring buffer. Thin and defensive on purpose: no
//! policy here, every read checked, every failed reserve counted.
//!
//! `connect`: four hooks, of which userspace attaches exactly one (the first that loads):
//! `fentry/tcp_connect`, `kprobe/tcp_connect`, and the `inet_sock_set_state` tracepoint
//! (BTF-typed, else classic) filtered to the CLOSE -> SYN_SENT transition. `lifecycle`:
//! exec, fork and exit records feed userspace's process table through the same ring buffer,
//! so a process's exec record always precedes its connects. Every record is a
//! `sensor_common::Event<T>` whose header `task::fill_header` fills; `udp`: cgroup sock_addr hooks for
//! UDP; `protocol`: the first payload of each outbound TCP flow (cgroup_skb egress). `maps` holds what the programs share; `baseline` the benchmark's empty programs
//! (feature `test-hooks` only).
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// BPF's atomic add (`lock ... +=`) is only reachable through asm on this target.
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

#[cfg(all(target_arch = "bpf", feature = "test-hooks"))]
mod baseline;
#[cfg(target_arch = "bpf")]
mod connect;
#[cfg(target_arch = "bpf")]
mod filter;
#[cfg(target_arch = "bpf")]
mod lifecycle;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod protocol;
#[cfg(target_arch = "bpf")]
mod task;
#[cfg(target_arch = "bpf")]
mod udp;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

// Host builds (`cargo build --workspace`) compile this crate as an empty program.
#[cfg(not(target_arch = "bpf"))]
fn main() {}

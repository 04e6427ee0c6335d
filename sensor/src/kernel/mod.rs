//! The kernel side seen from userspace: privileges, BTF and field layouts, loading the
//! embedded eBPF object, attaching hooks, and decoding what the ring buffer delivers.

pub mod argv;
pub mod attach;
pub mod btf;
pub mod filter;
pub mod fold;
pub mod layout;
pub mod load;
pub mod privileges;
pub mod probe;
pub mod protocol;
pub mod records;
pub mod sockets;
pub mod tracefs;

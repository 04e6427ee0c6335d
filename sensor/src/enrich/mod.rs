//! Who made a connection: the process table fed by lifecycle records, procfs as the
//! fallback, executable identity by content, cgroups and containers, user names.

pub mod attribute;
pub mod cgroups;
pub mod container;
pub mod exe;
pub mod hasher;
pub mod host;
pub mod identity;
pub mod kubelet;
pub mod loader;
pub mod mapped;
pub mod packages;
pub mod procfs;
pub mod proctable;
pub mod protocol;
pub mod rootfs;
pub mod users;

use std::sync::Arc;

use crate::{
    enrich::{container::Trust, procfs::ProcessInfo, users::NameSource},
    kernel::records::Connection,
};

/// Where a connection's process attribution came from.
pub type Attribution = Option<&'static str>;

/// One connection with everything enrichment found: what detection decides on and output
/// renders.
#[derive(Debug, Clone)]
pub struct Enriched {
    pub conn: Connection,
    pub proc: ProcessInfo,
    pub user_name: Option<String>,
    /// Where `user_name` came from and whether `proc.container_id` can be believed.
    pub provenance: Provenance,
    pub host_name: String,
    /// Where the attribution came from (kernel-exec, kernel-fork, procfs), None if nowhere.
    pub attribution: Attribution,
    /// Wall-clock time of the connect, Unix nanoseconds.
    pub unix_ns: i128,
    /// What the flow's first bytes speak ([`protocol::inspect`]), where the kernel sent them.
    pub protocol: Option<Arc<protocol::ProtocolFacts>>,
}

impl Enriched {
    /// Heap bytes this connection's description holds (argv in full though shared): what
    /// a cache keeping a copy of it pays. The one estimate every such cache uses.
    pub fn heap_bytes(&self) -> usize {
        parts_heap_bytes(&self.conn, &self.proc, self.user_name.as_deref())
            + self.host_name.len()
            + self.protocol.as_ref().map_or(0, |p| p.heap_bytes())
    }
}

/// [`Enriched::heap_bytes`] of the parts a cache keeps without the whole (listeners).
pub fn parts_heap_bytes(conn: &Connection, proc: &ProcessInfo, user_name: Option<&str>) -> usize {
    conn.comm.len() + proc.heap_bytes() + user_name.map_or(0, str::len)
}

/// What allow rules may believe of a connection's user name and container.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Provenance {
    /// Whose account database gave the user name (None: no name).
    pub user_name: Option<NameSource>,
    /// Whether the container id is the runtime's (None: no container id).
    pub container: Option<Trust>,
}

//! Who made a connection: the process table fed by lifecycle records, procfs as the
//! fallback, executable identity by content, cgroups and containers, user names.

pub mod cgroups;
pub mod container;
pub mod exe;
pub mod host;
pub mod identity;
pub mod kubelet;
pub mod loader;
pub mod packages;
pub mod procfs;
pub mod proctable;
pub mod rootfs;
pub mod users;

use crate::{enrich::procfs::ProcessInfo, kernel::records::Connection};

/// Where a connection's process attribution came from.
pub type Attribution = Option<&'static str>;

/// One connection with everything enrichment found: what detection decides on and output
/// renders.
#[derive(Debug, Clone)]
pub struct Enriched {
    pub conn: Connection,
    pub proc: ProcessInfo,
    pub user_name: Option<String>,
    pub host_name: String,
    /// Where the attribution came from (kernel-exec, kernel-fork, procfs), None if nowhere.
    pub attribution: Attribution,
    /// Wall-clock time of the connect, Unix nanoseconds.
    pub unix_ns: i128,
}

//! Who made a connection: the process table fed by lifecycle records, procfs as the
//! fallback, executable identity by content, cgroups and containers, user names.

pub mod cgroups;
pub mod container;
pub mod identity;
pub mod procfs;
pub mod proctable;
pub mod users;

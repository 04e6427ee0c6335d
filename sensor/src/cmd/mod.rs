//! One module per subcommand.

pub mod args;
pub mod check;
pub mod drain;
pub mod explain;
pub mod notify;
pub mod policy;
pub mod replay;
pub mod run;
pub mod schema;
pub mod stall;
pub mod watch;

//! One module per subcommand.

pub mod args;
pub mod check;
pub mod explain;
pub mod notify;
pub mod policy;
pub mod replay;
pub mod run;
pub mod schema;
pub mod watch;

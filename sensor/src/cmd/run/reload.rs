//! Policy reloads: on SIGHUP, and when the policy file changes under the sensor (a
//! kubelet ConfigMap swap). The new policy goes into the engine and the kernel's filter.

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use anyhow::Result;
use log::warn;

use super::kernel::Kernel;
use crate::{
    cmd::notify::Notifier,
    output::{
        self,
        ecs::{Action, Kind},
        sink::Sink,
        status::PolicyReload,
    },
    pipeline::{self, Pipeline},
};

/// `--config`, and what its content was last seen as.
pub struct PolicyFile {
    path: Option<PathBuf>,
    seen: Option<FileIdentity>,
}

/// What identifies a file's content for the reload watch: a kubelet ConfigMap update swaps
/// a `..data` symlink, so the file reached through the path is another inode.
type FileIdentity = (u64, u64, i64, i64, u64);

fn file_identity(path: &Path) -> Option<FileIdentity> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.dev(), m.ino(), m.mtime(), m.mtime_nsec(), m.len()))
}

impl PolicyFile {
    pub fn new(path: Option<PathBuf>) -> Self {
        let seen = path.as_deref().and_then(file_identity);
        Self { path, seen }
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Whether the file changed since it was last seen (then it is seen as it is now).
    pub fn changed(&mut self) -> bool {
        let before = self.seen;
        self.mark_seen();
        before != self.seen
    }

    /// The file as it is now is the one in force (SIGHUP reloads it).
    pub fn mark_seen(&mut self) {
        self.seen = self.path.as_deref().and_then(file_identity);
    }
}

/// Reloads the policy, pushes it into the kernel's filter, tells systemd, prints the
/// outcome.
pub fn reload(
    config: Option<&Path>,
    pipeline: &mut Pipeline,
    kernel: &mut Kernel,
    out: &mut Sink,
    notifier: &Notifier,
) -> Result<()> {
    notifier.reloading();
    let mut line = pipeline::reload(config, pipeline);
    if line.event.action == Action::PolicyReloaded
        && let Err(e) = kernel.push(pipeline)
    {
        // The engine has the new policy; the kernel filter is off (everything passes).
        // Said loudly, counted as a failure.
        warn!("policy reloaded, but not into the kernel filter: {e:#}");
        line = output::status(
            Kind::State,
            Action::PolicyReloadFailed,
            pipeline.host_name.clone(),
            PolicyReload {
                error: Some(format!("updating the kernel filter: {e:#}")),
                ..Default::default()
            },
        );
    }
    if line.event.action == Action::PolicyReloaded {
        pipeline.counters.policy_reloads += 1;
    } else {
        pipeline.counters.policy_reload_failures += 1;
    }
    notifier.ready("policy reloaded");
    out.status(&line)
}

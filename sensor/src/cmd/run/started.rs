//! The `sensor-started` line: what was loaded and attached, what was passed over and
//! why, the settings in force.

use std::net::SocketAddr;

use serde::Serialize;

use crate::{
    detect::engine::ConfigReport,
    kernel::{load::Loaded, privileges::Dropped},
    output::sink::Output,
    pipeline::Pipeline,
};

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct Started<'a> {
    /// The connect hook in use.
    probe: &'static str,
    tracefs: String,
    /// Connect hooks tried before it, with why each failed.
    unavailable_probes: Vec<Passed<'a>>,
    /// The lifecycle, listen and UDP hooks.
    process_hooks: Vec<ProcessHook<'a>>,
    process_table: Table,
    ring_buffer_bytes: u32,
    engine: ConfigReport,
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics: Option<String>,
    output: String,
    capabilities: &'a Dropped,
    kernel_filter: KernelFilter,
}

/// A hook passed over, and why.
#[derive(Debug, Serialize, schemars::JsonSchema)]
struct Passed<'a> {
    hook: &'static str,
    error: &'a str,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
struct ProcessHook<'a> {
    event: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    hook: Option<&'static str>,
    attached: bool,
    passed_over: Vec<Passed<'a>>,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
struct Table {
    entries: usize,
    fingerprinted_executables: usize,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
struct KernelFilter {
    filtering: bool,
    folding: bool,
    generation: u32,
}

impl<'a> Started<'a> {
    pub fn new(
        loaded: &'a Loaded,
        pipeline: &Pipeline,
        ring_buffer_bytes: u32,
        metrics: Option<SocketAddr>,
        output: Output,
        capabilities: &'a Dropped,
    ) -> Self {
        let unavailable_probes = (loaded.selection.failed.iter())
            .map(|a| Passed {
                hook: a.probe.hook(),
                error: &a.error,
            })
            .collect();
        let process_hooks = (loaded.lifecycle.iter())
            .map(|l| ProcessHook {
                event: l.event,
                hook: l.attached,
                attached: l.attached.is_some(),
                passed_over: (l.passed_over.iter())
                    .map(|(hook, error)| Passed { hook, error })
                    .collect(),
            })
            .collect();
        Self {
            probe: loaded.selection.chosen.hook(),
            tracefs: loaded.tracefs_source(),
            unavailable_probes,
            process_hooks,
            process_table: Table {
                entries: pipeline.table.len(),
                fingerprinted_executables: pipeline.table.identities.known_files,
            },
            ring_buffer_bytes,
            engine: pipeline.engine.config_report(),
            metrics: metrics.map(|a| a.to_string()),
            output: format!("{output:?}").to_lowercase(),
            capabilities,
            kernel_filter: KernelFilter {
                filtering: !pipeline.engine.config().all,
                folding: pipeline.kernel.folding,
                generation: pipeline.kernel.filter_generation,
            },
        }
    }
}

//! BPF programs the kernel holds: what a sensor should hold, what it does, what is left.

use std::time::Duration;

use anyhow::Result;
use serde_json::Value;

use crate::poll_until;

/// How many BPF programs a sensor holds, from its `sensor-started` line: the connect hook,
/// each attached lifecycle and state hook (the state hook is the connect hook itself when
/// that is a tracepoint), and the four UDP programs.
pub fn expected_programs(started: &Value) -> usize {
    let probe = &started["sensor"]["probe"];
    1 + started["sensor"]["process_hooks"]
        .as_array()
        .map(|hooks| {
            hooks
                .iter()
                .filter(|h| h["attached"] == true)
                .map(|h| match h["event"].as_str() {
                    Some("udp") => 4,
                    _ if &h["hook"] == probe => 0,
                    _ => 1,
                })
                .sum::<usize>()
        })
        .unwrap_or(0)
}

/// Ids of the BPF programs process `pid` holds open (from /proc/PID/fdinfo).
pub fn bpf_programs_of(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return Vec::new();
    };
    let mut ids: Vec<u32> = dir
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("prog_id:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Ids of every BPF program loaded in the kernel.
pub fn loaded_program_ids() -> Vec<u32> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|p| p.id())
        .collect()
}

/// Which of `ids` are still loaded after the kernel has had up to 10 s to free them: it
/// frees a program once its last reference is gone, asynchronously (RCU), so a check at
/// the instant the holder exits can see it still.
pub fn still_loaded(ids: &[u32]) -> Result<Vec<u32>> {
    poll_until(
        Duration::from_secs(10),
        || {
            Ok(loaded_program_ids()
                .into_iter()
                .filter(|id| ids.contains(id))
                .collect::<Vec<u32>>())
        },
        Vec::is_empty,
    )
}

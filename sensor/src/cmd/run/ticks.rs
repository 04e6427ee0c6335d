//! The loop's timers: the stats tick (clock, expiry, the kernel's folds and counters,
//! losses, the engine's windows), the metrics tick (a `sensor-stats` line) and the
//! systemd watchdog.

use std::time::Duration;

use anyhow::Result;
use tokio::time::{Instant, Interval, interval, interval_at};

use super::{kernel::Kernel, stall::LoopStall, stats};
use crate::{
    output::{
        self,
        clock::BootClock,
        ecs::{Action, Kind},
        sink::Sink,
    },
    pipeline::Pipeline,
};

pub struct Timers {
    /// `--stats-interval`: [`collect`].
    pub stats: Interval,
    /// `--metrics-interval`: [`stats_line`], the first one interval after start.
    pub metrics: Interval,
    /// systemd's watchdog, when it asks for one.
    pub watchdog: Option<Interval>,
}

impl Timers {
    pub fn new(stats: Duration, metrics: Duration, watchdog: Option<Duration>) -> Self {
        Self {
            stats: interval(stats),
            metrics: interval_at(Instant::now() + metrics, metrics),
            watchdog: watchdog.map(interval),
        }
    }
}

/// Ticks of an optional timer; never, when there is none.
pub async fn tick(timer: &mut Option<Interval>) {
    match timer {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// The stats tick: the boot clock re-synced, exited processes expired, what the kernel
/// folded and counted collected, ring-buffer losses reported, the engine's windows closed.
pub fn collect(pipeline: &mut Pipeline, out: &mut Sink, kernel: &mut Kernel) -> Result<()> {
    pipeline.clock = BootClock::sync();
    pipeline.table.expire(std::time::Instant::now());
    kernel.collect(pipeline, out, false)?;
    kernel.report_losses(pipeline, out)?;
    pipeline.tick(BootClock::now_unix_ns(), out)
}

/// The metrics tick: the kernel's counters read, then a `sensor-stats` line.
pub fn stats_line(
    pipeline: &mut Pipeline,
    out: &mut Sink,
    kernel: &Kernel,
    stall: &LoopStall,
) -> Result<()> {
    kernel.read_counts(pipeline);
    let stats = stats::collect(pipeline, out, kernel.lost(), stall);
    let line = output::status(
        Kind::Metric,
        Action::SensorStats,
        pipeline.host_name.as_str(),
        stats,
    );
    out.status(&line)?;
    out.flush()
}

//! Draining the two ring buffers in the order things happened. TCP connects have a ring of
//! their own (a flood of another kind cannot push them out); the exec, fork and exit
//! records that attribute a connect come through the other. A connect is handled only
//! once every record of the other ring that happened before it has been: a process's exec
//! record is submitted before its connect is made, so it is in the ring by the time the
//! connect is read.

use std::{collections::VecDeque, time::Duration};

use anyhow::Result;
use aya::maps::{MapData, RingBuf};
use log::warn;

use crate::{
    kernel::records::{self, Record},
    output::sink::Sink,
    pipeline::Pipeline,
};

/// Records handled per drain before the loop yields, so timers (expiry, loss reports,
/// engine windows) and signals are served under a flood too.
pub const DRAIN_BATCH: usize = 4096;

/// Longest one drain runs: when records are slow to handle (a cold /proc, a debug build),
/// a SIGTERM still waits at most this long for the loop.
const DRAIN_TIME: Duration = Duration::from_millis(100);

/// Connects read from their ring and not yet handled: at most this many (the rest wait in
/// the kernel ring, which counts its own losses).
const PENDING_MAX: usize = 1024;

/// The connects read ahead of the other ring.
#[derive(Default)]
pub struct Merge {
    pending: VecDeque<(u64, Record)>,
}

/// When a record happened (CLOCK_BOOTTIME ns), to merge the rings.
fn boot_ns(r: &Record) -> u64 {
    match r {
        Record::Connect(c) => c.boot_ns,
        Record::Exec(e) => e.task.boot_ns,
        Record::Fork(t) | Record::Exit(t) => t.boot_ns,
    }
}

impl Merge {
    /// Handles up to [`DRAIN_BATCH`] records for at most [`DRAIN_TIME`], in time order
    /// across both rings, then flushes the output; returns how many, or [`DRAIN_BATCH`]
    /// when time or the batch ran out (more may be waiting).
    pub fn drain(
        &mut self,
        connects: &mut RingBuf<MapData>,
        events: &mut RingBuf<MapData>,
        pipeline: &mut Pipeline,
        out: &mut Sink,
    ) -> Result<usize> {
        let mut budget = Budget::new();
        let more = self.drain_in(connects, events, &mut budget, pipeline, out)?;
        Ok(if more { DRAIN_BATCH } else { budget.found })
    }

    /// [`Merge::drain`] within `budget`; true when more may be waiting.
    fn drain_in(
        &mut self,
        connects: &mut RingBuf<MapData>,
        events: &mut RingBuf<MapData>,
        budget: &mut Budget,
        pipeline: &mut Pipeline,
        out: &mut Sink,
    ) -> Result<bool> {
        // The connects first: what the other ring holds now covers everything before them.
        while self.pending.len() < PENDING_MAX
            && let Some(item) = connects.next()
        {
            let decoded = records::decode(&item);
            drop(item); // the slot back to the kernel at once
            match decoded {
                Ok(r) => self.pending.push_back((boot_ns(&r), r)),
                Err(e) => malformed(pipeline, &e),
            }
        }
        let mut more = false;
        loop {
            if budget.spent() {
                more = true;
                break;
            }
            let Some(item) = events.next() else {
                break;
            };
            budget.found += 1;
            let decoded = records::decode(&item);
            drop(item); // give the slot back to the kernel before slow procfs work
            match decoded {
                Ok(record) => {
                    self.handle_pending(Some(boot_ns(&record)), budget, pipeline, out)?;
                    pipeline.handle(&record, out)?;
                }
                Err(e) => malformed(pipeline, &e),
            }
        }
        if !more {
            // The other ring is empty: nothing happened before the connects left.
            self.handle_pending(None, budget, pipeline, out)?;
        }
        out.flush()?;
        Ok(more || !self.pending.is_empty())
    }

    /// At exit: one last drain, then the connects read ahead, in order or not (the loop is
    /// over), all within one drain's time.
    pub fn finish(
        &mut self,
        connects: &mut RingBuf<MapData>,
        events: &mut RingBuf<MapData>,
        pipeline: &mut Pipeline,
        out: &mut Sink,
    ) -> Result<()> {
        let mut budget = Budget::new();
        self.drain_in(connects, events, &mut budget, pipeline, out)?;
        self.handle_pending(None, &mut budget, pipeline, out)?;
        out.flush()
    }

    /// Handles the pending connects that happened before `before` (all when None), while
    /// the budget lasts.
    fn handle_pending(
        &mut self,
        before: Option<u64>,
        budget: &mut Budget,
        pipeline: &mut Pipeline,
        out: &mut Sink,
    ) -> Result<()> {
        while !budget.spent()
            && let Some((at, _)) = self.pending.front()
            && before.is_none_or(|b| *at <= b)
        {
            if let Some((_, r)) = self.pending.pop_front() {
                pipeline.handle(&r, out)?;
                budget.found += 1;
            }
        }
        Ok(())
    }
}

/// What one drain may still do: [`DRAIN_BATCH`] records within [`DRAIN_TIME`].
struct Budget {
    found: usize,
    deadline: std::time::Instant,
}

impl Budget {
    fn new() -> Self {
        Self {
            found: 0,
            deadline: std::time::Instant::now() + DRAIN_TIME,
        }
    }

    /// The clock is read every 16 records: it stays out of the per-record cost.
    fn spent(&self) -> bool {
        self.found >= DRAIN_BATCH
            || (self.found % 16 == 15 && std::time::Instant::now() >= self.deadline)
    }
}

fn malformed(pipeline: &mut Pipeline, e: &anyhow::Error) {
    pipeline.counters.malformed += 1;
    warn!("dropped a malformed ring buffer record: {e:#}");
}

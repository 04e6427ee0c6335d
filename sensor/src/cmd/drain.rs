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
const PENDING_MAX: usize = 4096;

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
        let mut found = 0;
        let deadline = std::time::Instant::now() + DRAIN_TIME;
        let mut more = false;
        while found < DRAIN_BATCH {
            if found % 64 == 63 && std::time::Instant::now() >= deadline {
                more = true;
                break;
            }
            let Some(item) = events.next() else {
                break;
            };
            found += 1;
            let decoded = records::decode(&item);
            drop(item); // give the slot back to the kernel before slow procfs work
            match decoded {
                Ok(record) => {
                    let at = boot_ns(&record);
                    found += self.handle_pending(Some(at), pipeline, out)?;
                    pipeline.handle(&record, out)?;
                }
                Err(e) => malformed(pipeline, &e),
            }
        }
        more |= found >= DRAIN_BATCH;
        if !more {
            // The other ring is empty: nothing happened before the connects left.
            found += self.handle_pending(None, pipeline, out)?;
        }
        more |= !self.pending.is_empty();
        out.flush()?;
        Ok(if more { DRAIN_BATCH } else { found })
    }

    /// At exit: one last drain (bounded, as every drain), then every connect read ahead,
    /// in order or not: the loop is over.
    pub fn finish(
        &mut self,
        connects: &mut RingBuf<MapData>,
        events: &mut RingBuf<MapData>,
        pipeline: &mut Pipeline,
        out: &mut Sink,
    ) -> Result<()> {
        self.drain(connects, events, pipeline, out)?;
        self.handle_pending(None, pipeline, out)?;
        out.flush()
    }

    /// Handles the pending connects that happened before `before` (all when None).
    fn handle_pending(
        &mut self,
        before: Option<u64>,
        pipeline: &mut Pipeline,
        out: &mut Sink,
    ) -> Result<usize> {
        let mut n = 0;
        while let Some((at, _)) = self.pending.front()
            && before.is_none_or(|b| *at <= b)
        {
            if let Some((_, r)) = self.pending.pop_front() {
                pipeline.handle(&r, out)?;
                n += 1;
            }
        }
        Ok(n)
    }
}

fn malformed(pipeline: &mut Pipeline, e: &anyhow::Error) {
    pipeline.counters.malformed += 1;
    warn!("dropped a malformed ring buffer record: {e:#}");
}

//! Draining the three ring buffers in the order things happened. TCP connects, process
//! lifecycle records (exec, fork, exit) and socket records (UDP, listens, inbound opens)
//! each have a ring of their own, so a flood of one kind cannot push out another: a UDP
//! sweep costs neither a connect nor the exec record that attributes it. A connect or a
//! socket record is handled only once every lifecycle record that happened before it has
//! been: a process's exec record is submitted before its connect is made, so it is in its
//! ring by the time the connect is read. Listens and the inbound opens they attribute
//! share one ring, so they keep their order.

use std::{collections::VecDeque, os::fd::AsRawFd, time::Duration};

use anyhow::{Context, Result};
use aya::maps::{MapData, RingBuf};
use log::warn;
use tokio::{
    io::{Interest, unix::AsyncFd},
    time::Instant,
};

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

/// Records read ahead from the connect or the sockets ring and not yet handled: at most
/// this many per ring (the rest wait in the kernel ring, which counts its own losses).
const PENDING_MAX: usize = 1024;

/// The three rings, registered with tokio.
pub struct Rings {
    connects: AsyncFd<RingBuf<MapData>>,
    processes: AsyncFd<RingBuf<MapData>>,
    sockets: AsyncFd<RingBuf<MapData>>,
}

impl Rings {
    /// `rings`: connects, processes, sockets (as `Loaded::take_rings` returns them).
    pub fn new(rings: [RingBuf<MapData>; 3]) -> Result<Self> {
        let [connects, processes, sockets] = rings;
        Ok(Self {
            connects: watch(connects).context("registering the connect ring with tokio")?,
            processes: watch(processes).context("registering the process ring with tokio")?,
            sockets: watch(sockets).context("registering the sockets ring with tokio")?,
        })
    }

    /// Waits until any ring has records. Its readiness is cleared before the drain that
    /// follows reads it: what arrives meanwhile is read by that drain or wakes us again,
    /// and a drain that stops early says so (the loop comes back at once).
    pub async fn readable(&mut self) -> Result<()> {
        let Self {
            connects,
            processes,
            sockets,
        } = self;
        let mut guard = tokio::select! {
            g = connects.readable_mut() => g,
            g = processes.readable_mut() => g,
            g = sockets.readable_mut() => g,
        }
        .context("waiting on the ring buffers")?;
        guard.clear_ready();
        Ok(())
    }
}

/// Registers an fd-owning aya object (a ring, the kernel log) with tokio's reactor for
/// readability.
pub fn watch<T: AsRawFd>(inner: T) -> std::io::Result<AsyncFd<T>> {
    // SAFETY: aya's RingBuf and EbpfLogger own their map fd; it stays open and unchanged
    // until the object, and with it this AsyncFd, is dropped.
    unsafe { AsyncFd::register_with_interest(inner, Interest::READABLE) }
        .map_err(std::io::Error::from)
}

/// When to drain again with no wakeup from the kernel. With batched wakeups, records
/// submitted without one are picked up by a drain `max_delay` after any drain that found
/// records; idle, no timer runs. A drain cut short by its budget comes back at once.
pub struct Recheck {
    at: Option<Instant>,
    batching: bool,
    max_delay: Duration,
}

impl Recheck {
    pub fn new(batching: bool, max_delay: Duration) -> Self {
        Self {
            at: None,
            batching,
            max_delay,
        }
    }

    /// Resolves when the next drain is due (never, when none is).
    pub fn due(&self) -> impl Future<Output = ()> + use<> {
        let at = self.at;
        async move {
            match at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        }
    }

    /// After a drain the kernel woke us for, which handled `found` records: a timer armed
    /// earlier stays.
    pub fn after_wakeup(&mut self, found: usize) {
        self.at = self.next(found).or(self.at);
    }

    /// After the drain this timer started.
    pub fn after_timer(&mut self, found: usize) {
        self.at = self.next(found);
    }

    fn next(&self, found: usize) -> Option<Instant> {
        if found == DRAIN_BATCH {
            // More may be waiting: come back at once, after the other branches.
            Some(Instant::now())
        } else {
            (self.batching && found > 0).then(|| Instant::now() + self.max_delay)
        }
    }
}

/// Records read ahead of the lifecycle ring, oldest first.
#[derive(Default)]
struct Ahead {
    queue: VecDeque<(u64, Record)>,
}

impl Ahead {
    /// Reads `ring` until it is empty (true) or [`PENDING_MAX`] wait (false).
    fn fill(&mut self, ring: &mut RingBuf<MapData>, pipeline: &mut Pipeline) -> bool {
        while self.queue.len() < PENDING_MAX {
            let Some(item) = ring.next() else {
                return true;
            };
            let decoded = records::decode(&item);
            drop(item); // the slot back to the kernel at once
            match decoded {
                Ok(r) => self.queue.push_back((boot_ns(&r), r)),
                Err(e) => malformed(pipeline, &e),
            }
        }
        false
    }

    fn front(&self) -> Option<u64> {
        self.queue.front().map(|(at, _)| *at)
    }
}

/// The connects and socket records read ahead of the lifecycle ring.
#[derive(Default)]
pub struct Merge {
    connects: Ahead,
    sockets: Ahead,
}

/// When a record happened (CLOCK_BOOTTIME ns), to merge the rings.
fn boot_ns(r: &Record) -> u64 {
    match r {
        Record::Connect(c) => c.boot_ns,
        Record::Exec(e) => e.task.boot_ns,
        Record::Fork(t) | Record::Exit(t) => t.boot_ns,
        Record::Payload(p) => p.conn.boot_ns,
    }
}

impl Merge {
    /// Handles up to [`DRAIN_BATCH`] records for at most [`DRAIN_TIME`], in time order
    /// across the rings, then flushes the output; returns how many, or [`DRAIN_BATCH`]
    /// when time or the batch ran out (more may be waiting).
    pub fn drain(
        &mut self,
        rings: &mut Rings,
        pipeline: &mut Pipeline,
        out: &mut Sink,
    ) -> Result<usize> {
        let mut budget = Budget::new();
        let more = self.drain_in(rings, &mut budget, pipeline, out)?;
        Ok(if more { DRAIN_BATCH } else { budget.found })
    }

    /// [`Merge::drain`] within `budget`; true when more may be waiting.
    fn drain_in(
        &mut self,
        rings: &mut Rings,
        budget: &mut Budget,
        pipeline: &mut Pipeline,
        out: &mut Sink,
    ) -> Result<bool> {
        let more = loop {
            // Read ahead first: what the lifecycle ring holds now covers everything
            // before them.
            let connects_empty = self.connects.fill(rings.connects.get_mut(), pipeline);
            let sockets_empty = self.sockets.fill(rings.sockets.get_mut(), pipeline);
            if self.drain_processes(rings, budget, pipeline, out)? {
                break true;
            }
            // The lifecycle ring is empty: nothing happened before the records left.
            self.handle_ahead(None, budget, pipeline, out)?;
            if budget.spent() {
                break true;
            }
            if connects_empty && sockets_empty {
                break false;
            }
            // A ring was read only up to PENDING_MAX: read on, within the budget.
        };
        out.flush()?;
        Ok(more || self.connects.front().is_some() || self.sockets.front().is_some())
    }

    /// Handles the lifecycle ring, each record after the ones read ahead that happened
    /// before it; true when the budget ran out first.
    fn drain_processes(
        &mut self,
        rings: &mut Rings,
        budget: &mut Budget,
        pipeline: &mut Pipeline,
        out: &mut Sink,
    ) -> Result<bool> {
        loop {
            if budget.spent() {
                return Ok(true);
            }
            let Some(item) = rings.processes.get_mut().next() else {
                return Ok(false);
            };
            budget.found += 1;
            let decoded = records::decode(&item);
            drop(item); // give the slot back to the kernel before slow procfs work
            match decoded {
                Ok(record) => {
                    self.handle_ahead(Some(boot_ns(&record)), budget, pipeline, out)?;
                    pipeline.handle(&record, out)?;
                }
                Err(e) => malformed(pipeline, &e),
            }
        }
    }

    /// At exit: one last drain, then the records read ahead, in order or not (the loop is
    /// over), all within one drain's time.
    pub fn finish(
        &mut self,
        rings: &mut Rings,
        pipeline: &mut Pipeline,
        out: &mut Sink,
    ) -> Result<()> {
        let mut budget = Budget::new();
        self.drain_in(rings, &mut budget, pipeline, out)?;
        self.handle_ahead(None, &mut budget, pipeline, out)?;
        out.flush()
    }

    /// Handles the records read ahead that happened before `before` (all when None),
    /// connects and socket records merged by time, while the budget lasts.
    fn handle_ahead(
        &mut self,
        before: Option<u64>,
        budget: &mut Budget,
        pipeline: &mut Pipeline,
        out: &mut Sink,
    ) -> Result<()> {
        while !budget.spent() {
            let next = match (self.connects.front(), self.sockets.front()) {
                (Some(c), Some(s)) if s < c => (&mut self.sockets, s),
                (Some(c), _) => (&mut self.connects, c),
                (None, Some(s)) => (&mut self.sockets, s),
                (None, None) => break,
            };
            let (ahead, at) = next;
            if before.is_some_and(|b| at > b) {
                break;
            }
            if let Some((_, r)) = ahead.queue.pop_front() {
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
    pipeline.counters.malformed_records += 1;
    warn!("dropped a malformed ring buffer record: {e:#}");
}

//! The bounded queue between the pipeline and the outputs. A writer thread owns stdout and
//! the journal, so a reader that stops reading (a full pipe, a stalled journald) blocks
//! only that thread, never the ring-buffer reader. A full queue refuses the line at once:
//! the caller drops and counts it. A thread rather than a tokio task: write(2) on a
//! blocking pipe cannot be cancelled, and the thread can be left behind at exit.

use std::{
    io::Write,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
        mpsc::{Receiver, SyncSender, TrySendError, sync_channel},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow};

use crate::output::journald::{Entry, Journal};

/// Lines the queue holds at most; with [`MAX_BYTES`], about 8 MiB of lines in the worst case.
pub const MAX_LINES: usize = 8192;
/// Bytes of rendered lines the queue holds at most (their heap, as allocated).
pub const MAX_BYTES: usize = 8 << 20;

/// One rendered line and, when the journal is an output, its journal entry.
pub struct Item {
    pub line: String,
    pub journal: Option<Entry>,
}

#[derive(Default)]
struct Shared {
    /// Lines the writer has handed to its outputs.
    written: AtomicU64,
    /// Entries the journal did not take.
    journal_failed: AtomicU64,
    /// Bytes of lines queued and not yet taken by the writer.
    queued_bytes: AtomicUsize,
    /// Lines queued and not yet taken by the writer.
    queued_lines: AtomicUsize,
    /// Why the writer stopped (stdout closed or failing).
    error: Mutex<Option<String>>,
}

/// What became of a pushed line.
#[derive(Debug, PartialEq, Eq)]
pub enum Push {
    Queued,
    /// The queue is full: the line was not taken.
    Full,
}

pub struct Queue {
    tx: Option<SyncSender<Item>>,
    shared: Arc<Shared>,
    writer: Option<JoinHandle<()>>,
    max_lines: usize,
    max_bytes: usize,
    pushed: u64,
}

impl Queue {
    /// Starts the writer thread, which writes lines to `out` (when given) and entries to
    /// the journal (when `journal`).
    pub fn spawn<W: Write + Send + 'static>(
        out: Option<W>,
        journal: bool,
        max_lines: usize,
        max_bytes: usize,
    ) -> Result<Self> {
        let (tx, rx) = sync_channel(max_lines);
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        let writer = std::thread::Builder::new()
            .name("output".into())
            .spawn(move || write_loop(rx, out, journal.then(Journal::default), &s))
            .context("starting the output writer thread")?;
        Ok(Self {
            tx: Some(tx),
            shared,
            writer: Some(writer),
            max_lines,
            max_bytes,
            pushed: 0,
        })
    }

    /// Queues a line without ever blocking; an error when the writer has stopped.
    pub fn push(&mut self, item: Item) -> Result<Push> {
        // The heap the line holds, not its length: a line rendered into a bigger buffer
        // holds the whole buffer while it waits (the sink shrinks it first).
        let len = item.line.capacity();
        let queued = self.shared.queued_bytes.load(Ordering::Relaxed);
        if queued + len > self.max_bytes && queued > 0 {
            self.check()?;
            return Ok(Push::Full);
        }
        let tx = self.tx.as_ref().context("output queue already closed")?;
        self.shared.queued_bytes.fetch_add(len, Ordering::Relaxed);
        self.shared.queued_lines.fetch_add(1, Ordering::Relaxed);
        match tx.try_send(item) {
            Ok(()) => {
                self.pushed += 1;
                Ok(Push::Queued)
            }
            Err(e) => {
                self.shared.queued_bytes.fetch_sub(len, Ordering::Relaxed);
                self.shared.queued_lines.fetch_sub(1, Ordering::Relaxed);
                match e {
                    TrySendError::Full(_) => Ok(Push::Full),
                    TrySendError::Disconnected(_) => Err(self.failure()),
                }
            }
        }
    }

    /// At most half full: after drops, lines are taken again only from here, so a short
    /// line slipping into a nearly full queue does not end a run of drops.
    pub fn below_half(&self) -> bool {
        self.shared.queued_lines.load(Ordering::Relaxed) <= self.max_lines / 2
            && self.shared.queued_bytes.load(Ordering::Relaxed) <= self.max_bytes / 2
    }

    /// An error if the writer has stopped on a failed write.
    pub fn check(&self) -> Result<()> {
        match self.writer.as_ref() {
            Some(w) if w.is_finished() => Err(self.failure()),
            _ => Ok(()),
        }
    }

    fn failure(&self) -> anyhow::Error {
        let why = self
            .shared
            .error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        anyhow!(why.unwrap_or_else(|| "the output writer stopped".into()))
    }

    /// Lines handed to the outputs so far.
    pub fn written(&self) -> u64 {
        self.shared.written.load(Ordering::Relaxed)
    }

    /// Journal entries the journal did not take.
    pub fn journal_failed(&self) -> u64 {
        self.shared.journal_failed.load(Ordering::Relaxed)
    }

    /// Ends the queue: the writer writes what is queued and flushes, waited for at most
    /// `wait`. A writer blocked on a reader that does not read is left behind (the process
    /// is exiting); returns how many queued lines were not written.
    pub fn close(&mut self, wait: Duration) -> u64 {
        drop(self.tx.take());
        let deadline = Instant::now() + wait;
        if let Some(w) = self.writer.take() {
            while !w.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if w.is_finished() {
                let _ = w.join();
            }
        }
        self.pushed.saturating_sub(self.written())
    }
}

fn write_loop<W: Write>(
    rx: Receiver<Item>,
    mut out: Option<W>,
    mut journal: Option<Journal>,
    shared: &Shared,
) {
    let fail = |e: std::io::Error| {
        *shared.error.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(format!("writing JSON to stdout: {e}"));
    };
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        // Everything queued goes out in one batch, flushed when the queue runs empty.
        while let Some(item) = next {
            shared
                .queued_bytes
                .fetch_sub(item.line.capacity(), Ordering::Relaxed);
            shared.queued_lines.fetch_sub(1, Ordering::Relaxed);
            if let Some(o) = &mut out
                && let Err(e) = o
                    .write_all(item.line.as_bytes())
                    .and_then(|()| o.write_all(b"\n"))
            {
                return fail(e);
            }
            if let (Some(j), Some(entry)) = (&mut journal, &item.journal) {
                j.send_entry(entry);
                shared.journal_failed.store(j.failed, Ordering::Relaxed);
            }
            shared.written.fetch_add(1, Ordering::Relaxed);
            next = rx.try_recv().ok();
        }
        if let Some(o) = &mut out
            && let Err(e) = o.flush()
        {
            return fail(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::{Sender, channel};

    use super::*;

    /// A reader that does not read: every write waits until the test lets it through.
    struct Gate {
        open: Receiver<()>,
        got: Sender<Vec<u8>>,
    }

    impl Write for Gate {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.open.recv().map_err(std::io::Error::other)?;
            self.got.send(buf.to_vec()).map_err(std::io::Error::other)?;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn item(s: &str) -> Item {
        Item {
            line: s.to_string(),
            journal: None,
        }
    }

    #[test]
    fn a_blocked_writer_never_blocks_push_and_close_is_bounded() {
        let (open_tx, open) = channel();
        let (got, _got_rx) = channel();
        let mut q = Queue::spawn(Some(Gate { open, got }), false, 4, MAX_BYTES).unwrap();
        let t = Instant::now();
        let results: Vec<Push> = (0..100)
            .map(|i| q.push(item(&i.to_string())).unwrap())
            .collect();
        assert!(t.elapsed() < Duration::from_secs(1));
        // The writer holds one line (blocked in write), the queue four.
        let queued = results.iter().filter(|r| **r == Push::Queued).count();
        assert!((4..=5).contains(&queued), "{queued} queued");
        let t = Instant::now();
        let unwritten = q.close(Duration::from_millis(100));
        assert!(t.elapsed() < Duration::from_millis(500));
        assert_eq!(unwritten, queued as u64);
        drop(open_tx);
    }

    #[test]
    fn lines_are_written_in_order_and_counted() {
        let mut buf = Vec::new();
        let shared_out = Arc::new(Mutex::new(Vec::new()));
        struct Shared2(Arc<Mutex<Vec<u8>>>);
        impl Write for Shared2 {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut q = Queue::spawn(Some(Shared2(shared_out.clone())), false, 16, MAX_BYTES).unwrap();
        for i in 0..10 {
            // Never full: the writer keeps up or the push waits for nothing.
            while q.push(item(&format!("{{\"n\":{i}}}"))).unwrap() == Push::Full {
                std::thread::sleep(Duration::from_millis(1));
            }
            buf.extend_from_slice(format!("{{\"n\":{i}}}\n").as_bytes());
        }
        assert_eq!(q.close(Duration::from_secs(5)), 0);
        assert_eq!(q.written(), 10);
        assert_eq!(*shared_out.lock().unwrap(), buf);
    }

    #[test]
    fn byte_bound_refuses_lines_beyond_it() {
        let (_open_tx, open) = channel();
        let (got, _got_rx) = channel();
        let mut q = Queue::spawn(Some(Gate { open, got }), false, 1000, 100).unwrap();
        let big = "x".repeat(60);
        let mut full = 0;
        for _ in 0..10 {
            if q.push(item(&big)).unwrap() == Push::Full {
                full += 1;
            }
        }
        // One taken by the blocked writer, one queued, then the bound.
        assert!(full >= 8, "{full} refused");
        q.close(Duration::from_millis(10));
    }

    #[test]
    fn byte_bound_counts_the_heap_a_line_holds() {
        let (_open_tx, open) = channel();
        let (got, _got_rx) = channel();
        let mut q = Queue::spawn(Some(Gate { open, got }), false, 1000, 10_000).unwrap();
        let mut full = 0;
        for _ in 0..10 {
            // A short line left in a 4 KiB render buffer.
            let mut line = String::with_capacity(4096);
            line.push('x');
            if q.push(Item {
                line,
                journal: None,
            })
            .unwrap()
                == Push::Full
            {
                full += 1;
            }
        }
        // One taken by the blocked writer, at most three queued (12 KiB > 10,000).
        assert!(full >= 6, "{full} refused");
        q.close(Duration::from_millis(10));
    }

    #[test]
    fn a_failed_writer_is_an_error() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut q = Queue::spawn(Some(Broken), false, 4, MAX_BYTES).unwrap();
        let _ = q.push(item("a"));
        let deadline = Instant::now() + Duration::from_secs(5);
        let err = loop {
            match q.push(item("b")) {
                Err(e) => break e,
                Ok(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                Ok(_) => panic!("the writer's failure was never reported"),
            }
        };
        assert!(format!("{err:#}").contains("stdout"), "{err:#}");
    }
}

//! Where rendered lines go: stdout, the journal, or both (`--output`). Each line is
//! serialised once; the journal also gets the line's summary, taken from its types.
//! Lines pass through a bounded queue to a writer thread (`queue`): a reader that stops
//! reading never stalls the pipeline. A full queue drops lines, counted; the drop is said
//! on stderr when it starts and in the stream when lines flow again.

use std::{
    io::{BufWriter, Write},
    time::Duration,
};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::output::{
    self,
    ecs::{Action, Kind, StatusLine},
    journald::{Entry, Summary},
    queue::{self, Item, Push, Queue},
};

/// `sensor.*` of an `output-dropped` line.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct OutputDropped {
    pub dropped_lines: u64,
    pub output_dropped: u64,
    pub cause: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// JSON lines on stdout.
    Stdout,
    /// One journal entry per line, over journald's native protocol.
    Journald,
    /// Both.
    Both,
}

impl Output {
    pub fn journald(self) -> bool {
        matches!(self, Output::Journald | Output::Both)
    }
}

pub struct Sink {
    queue: Queue,
    journald: bool,
    /// For the sensor's own `output-dropped` lines.
    host_name: String,
    /// Lines dropped because the queue was full, since start.
    pub dropped: u64,
    /// Lines dropped in the current run of drops, not yet reported in the stream.
    dropping: u64,
}

impl Sink {
    pub fn new(output: Output, host_name: &str) -> Result<Self> {
        Self::with_writer(
            (output != Output::Journald)
                .then(|| BufWriter::with_capacity(64 << 10, std::io::stdout())),
            output.journald(),
            host_name,
            queue::MAX_LINES,
            queue::MAX_BYTES,
        )
    }

    /// A sink writing to `out` instead of stdout (tests).
    pub fn with_writer<W: Write + Send + 'static>(
        out: Option<W>,
        journald: bool,
        host_name: &str,
        max_lines: usize,
        max_bytes: usize,
    ) -> Result<Self> {
        Ok(Self {
            queue: Queue::spawn(out, journald, max_lines, max_bytes)?,
            journald,
            host_name: host_name.to_string(),
            dropped: 0,
            dropping: 0,
        })
    }

    /// Queues one line; `summary` says what it is about, for the journal. Never blocks:
    /// a full queue drops the line and counts it.
    pub fn emit(&mut self, doc: &impl Serialize, summary: &Summary) -> Result<()> {
        let line = serde_json::to_string(doc).context("serialising a line")?;
        self.emit_line(line, summary)
    }

    /// Queues one line already serialised (one JSON object, no newline).
    pub fn emit_line(&mut self, mut line: String, summary: &Summary) -> Result<()> {
        if self.dropping > 0 && !(self.queue.below_half() && self.report_drops()?) {
            self.drop_line();
            return Ok(());
        }
        // Rendered into a buffer sized for the longest line: a waiting line keeps only its
        // own bytes (glibc shrinks in place), so a full queue is its byte bound, not 3x it.
        line.shrink_to_fit();
        let journal = self.journald.then(|| Entry::new(summary, &line));
        if self.queue.push(Item { line, journal })? == Push::Full {
            self.drop_line();
        }
        Ok(())
    }

    fn drop_line(&mut self) {
        if self.dropping == 0 {
            log::warn!(
                "output queue full (stdout or the journal is not keeping up): dropping lines, counted in output_dropped"
            );
        }
        self.dropping += 1;
        self.dropped += 1;
    }

    /// The queue takes lines again: says in the stream how many were dropped. False when
    /// the queue is still full.
    fn report_drops(&mut self) -> Result<bool> {
        let doc = output::status(
            Kind::PipelineError,
            Action::OutputDropped,
            self.host_name.as_str(),
            OutputDropped {
                dropped_lines: self.dropping,
                output_dropped: self.dropped,
                cause: "output queue full: stdout or the journal did not keep up",
            },
        );
        let line = serde_json::to_string(&doc).context("serialising a line")?;
        let journal = self
            .journald
            .then(|| Entry::new(&Summary::status("pipeline_error", "output-dropped"), &line));
        if self.queue.push(Item { line, journal })? == Push::Full {
            return Ok(false);
        }
        log::warn!(
            "output flowing again: {} lines dropped ({} in total)",
            self.dropping,
            self.dropped
        );
        self.dropping = 0;
        Ok(true)
    }

    /// A state, metric or error line of the sensor's own.
    pub fn status<T: Serialize>(&mut self, line: &StatusLine<'_, T>) -> Result<()> {
        let e = &line.event;
        self.emit(line, &Summary::status(e.kind.as_str(), e.action.as_str()))
    }

    /// The writer flushes whenever its queue runs empty; this only reports a writer that
    /// has stopped (stdout closed).
    pub fn flush(&mut self) -> Result<()> {
        self.queue.check()
    }

    /// Lines written to the outputs.
    pub fn emitted(&self) -> u64 {
        self.queue.written()
    }

    /// Entries the journal did not take (journald unreachable), counted, never silent.
    pub fn lost(&self) -> u64 {
        self.queue.journal_failed()
    }

    /// At exit: lets the writer write what is queued, waiting at most `wait` for a reader
    /// that does not read; what stays unwritten is said on stderr.
    pub fn close(&mut self, wait: Duration) {
        let unwritten = self.queue.close(wait);
        if unwritten > 0 {
            log::warn!(
                "stdout not read: {unwritten} lines left unwritten at exit ({} dropped before)",
                self.dropped
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{Arc, Mutex},
        time::Instant,
    };

    use serde_json::{Value, json};

    use super::*;

    /// A pipe whose reader is away until `open` is set.
    #[derive(Clone, Default)]
    struct Pipe {
        open: Arc<Mutex<bool>>,
        got: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Pipe {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            while !*self.open.lock().unwrap() {
                std::thread::sleep(Duration::from_millis(1));
            }
            self.got.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn drops_are_counted_and_said_in_the_stream_when_it_flows_again() {
        let pipe = Pipe::default();
        let mut sink = Sink::with_writer(Some(pipe.clone()), false, "h", 8, 1 << 20).unwrap();
        let t = Instant::now();
        for i in 0..1000 {
            sink.emit(&json!({"n": i}), &Summary::status("event", "x"))
                .unwrap();
        }
        assert!(t.elapsed() < Duration::from_secs(1), "emit blocked");
        assert!(sink.dropped >= 990, "{} dropped", sink.dropped);
        *pipe.open.lock().unwrap() = true;
        // Let the writer drain the queue, then one more line reports the drops first.
        let deadline = Instant::now() + Duration::from_secs(5);
        while sink.emitted() < 1000 - sink.dropped && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        sink.emit(&json!({"n": "after"}), &Summary::status("event", "x"))
            .unwrap();
        sink.close(Duration::from_secs(5));
        let text = String::from_utf8(pipe.got.lock().unwrap().clone()).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let n = lines.len();
        assert_eq!(lines[n - 1]["n"], "after");
        let report = &lines[n - 2];
        assert_eq!(report["event"]["action"], "output-dropped");
        assert_eq!(report["sensor"]["output_dropped"], sink.dropped);
        // The writer may take a line while the loop runs: then drops come in two runs,
        // each reported; together they are every line dropped.
        let reports: Vec<&Value> = lines
            .iter()
            .filter(|l| l["event"]["action"] == "output-dropped")
            .collect();
        let reported: u64 = reports
            .iter()
            .map(|r| r["sensor"]["dropped_lines"].as_u64().unwrap())
            .sum();
        assert_eq!(reported, sink.dropped);
        assert_eq!((n - 1 - reports.len()) as u64 + sink.dropped, 1000);
    }
}

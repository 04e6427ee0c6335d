//! Where rendered lines go: stdout, the journal, or both (`--output`). Each line is
//! serialised once; the journal also gets the line's summary, taken from its types.

use std::io::{BufWriter, StdoutLock, Write};

use anyhow::{Context, Result};
use serde_json::Value;

use crate::output::journald::{Journal, Summary};

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
    stdout: Option<BufWriter<StdoutLock<'static>>>,
    journal: Option<Journal>,
    /// Lines written (to at least one output).
    pub emitted: u64,
}

impl Sink {
    pub fn new(output: Output) -> Self {
        Self {
            // Flushed after each ring-buffer drain; 64 KiB holds ~25 alert lines per write
            // (the default 8 KiB wrote every third line).
            stdout: (output != Output::Journald)
                .then(|| BufWriter::with_capacity(1 << 16, std::io::stdout().lock())),
            journal: output.journald().then(Journal::default),
            emitted: 0,
        }
    }

    /// Writes one line; `summary` says what it is about, for the journal.
    pub fn emit(&mut self, doc: &Value, summary: &Summary) -> Result<()> {
        let line = serde_json::to_string(doc).context("serialising a line")?;
        self.emit_line(&line, summary)
    }

    /// Writes one line already serialised (one JSON object, no newline).
    pub fn emit_line(&mut self, line: &str, summary: &Summary) -> Result<()> {
        if let Some(out) = &mut self.stdout {
            out.write_all(line.as_bytes())
                .and_then(|()| out.write_all(b"\n"))
                .context("writing JSON to stdout")?;
        }
        if let Some(j) = &mut self.journal {
            j.send(summary, line);
        }
        self.emitted += 1;
        Ok(())
    }

    /// A state, metric or error line of the sensor's own.
    pub fn status(&mut self, doc: &Value, kind: &str, action: &str) -> Result<()> {
        self.emit(doc, &Summary::status(kind, action))
    }

    pub fn flush(&mut self) -> Result<()> {
        if let Some(out) = &mut self.stdout {
            out.flush().context("writing to stdout")?;
        }
        Ok(())
    }

    /// Entries the journal did not take (journald unreachable), counted, never silent.
    pub fn lost(&self) -> u64 {
        self.journal.as_ref().map_or(0, |j| j.failed)
    }
}

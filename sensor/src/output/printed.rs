//! What a line prints of a process's strings: secrets redacted, each string bounded, and
//! which patterns fired and which fields were cut.

use std::{collections::HashMap, sync::Arc};

use crate::{
    enrich::{Enriched, proctable::lineage},
    kernel::argv::Argv,
    output::redact::{self, MAX_FIELD},
};

/// What is printed of a process's strings: secrets redacted, each string bounded.
pub struct Printed {
    pub executable: Option<String>,
    pub parent_executable: Option<String>,
    pub args: Option<Vec<String>>,
    pub command_line: Option<String>,
    pub args_count: Option<usize>,
    /// The redaction patterns that fired (`sensor.redacted`).
    pub redacted: Vec<&'static str>,
    /// The fields cut at MAX_FIELD (`sensor.truncated`).
    pub truncated: Vec<&'static str>,
    /// `sensor.process.lineage`: the ancestors' names and its own, oldest first.
    pub lineage: Option<String>,
}

impl Printed {
    pub fn of(e: &Enriched) -> Self {
        let p = &e.proc;
        let mut truncated = Vec::new();
        fn mark(truncated: &mut Vec<&'static str>, field: &'static str) {
            if !truncated.contains(&field) {
                truncated.push(field);
            }
        }
        let cut = |truncated: &mut Vec<&'static str>, field: &'static str, s: &mut String| {
            if redact::bound(s, MAX_FIELD) {
                mark(truncated, field);
            }
        };
        let mut executable = p.executable.clone();
        if let Some(x) = executable.as_mut() {
            cut(&mut truncated, "process.executable", x);
        }
        let mut parent_executable = p.parent_executable.clone();
        if let Some(x) = parent_executable.as_mut() {
            cut(&mut truncated, "process.parent.executable", x);
        }
        let mut redacted = Vec::new();
        let mut args = None;
        let mut command_line = None;
        if let Some(argv) = p.args.as_ref() {
            // The kept start of the argv (see `Argv`): at most a few KiB.
            let mut a = argv.to_vec();
            redacted = redact::redact(&mut a);
            if argv.partial_last()
                && let Some(name) = a.last_mut().and_then(redact::redact_cut)
                && !redacted.contains(&name)
            {
                redacted.push(name);
            }
            let mut line = a.join(" ");
            cut(&mut truncated, "process.command_line", &mut line);
            if argv.is_cut() {
                mark(&mut truncated, "process.command_line");
            }
            // The arguments the printed line shows (each bounded); `args_count` says all.
            let mut start = 0;
            let shown = a
                .iter()
                .take_while(|x| {
                    let starts = start;
                    start += x.len() + 1;
                    starts < line.len() || starts == 0
                })
                .count();
            a.truncate(shown);
            if shown < argv.count() {
                mark(&mut truncated, "process.args");
            }
            for arg in a.iter_mut() {
                cut(&mut truncated, "process.args", arg);
            }
            command_line = Some(line);
            args = Some(a);
        }
        Self {
            executable,
            parent_executable,
            args_count: p.args.as_ref().map(|a| a.count()),
            args,
            command_line,
            redacted,
            truncated,
            lineage: lineage(p),
        }
    }
}

impl Printed {
    /// Heap bytes this holds (for the cache's byte bound).
    fn heap_bytes(&self) -> usize {
        let s = |o: &Option<String>| o.as_ref().map_or(0, String::capacity);
        s(&self.executable)
            + s(&self.parent_executable)
            + s(&self.command_line)
            + s(&self.lineage)
            + self.args.as_ref().map_or(0, |a| {
                a.iter().map(|x| x.capacity() + 24).sum::<usize>() + 24 * a.capacity()
            })
            + 16 * (self.redacted.capacity() + self.truncated.capacity())
    }
}

/// What a cached [`Printed`] was made from: checked on every hit, so an exec (same pid and
/// start time, new image and argv) never prints the old process's strings.
struct Entry {
    executable: Option<String>,
    parent_executable: Option<String>,
    /// Shared with the process table: equal by pointer in the common case.
    args: Option<Argv>,
    ancestors: Vec<String>,
    printed: Arc<Printed>,
    bytes: usize,
}

/// Each process's printed strings per (pid, start time), so a process making many
/// connections is redacted, joined and bounded once, not per line. Bounded in bytes:
/// past [`MAX_BYTES`] it is emptied whole (the evicted entries counted).
#[derive(Default)]
pub struct PrintedCache {
    entries: HashMap<(u32, u64), Entry>,
    bytes: usize,
    /// Entries dropped to stay under the bound.
    pub evicted: u64,
}

/// The cache's bound in bytes (its strings and the entries' own size).
pub const MAX_BYTES: usize = 1 << 20;

impl PrintedCache {
    /// `e`'s printed strings, from the cache when they were made from the same inputs.
    pub fn get(&mut self, e: &Enriched) -> Arc<Printed> {
        let key = (e.conn.tgid, e.conn.start_time_ns);
        let p = &e.proc;
        if let Some(hit) = self.entries.get(&key)
            && hit.executable == p.executable
            && hit.parent_executable == p.parent_executable
            && hit.args == p.args
            && hit.ancestors == p.ancestors
        {
            return hit.printed.clone();
        }
        let printed = Arc::new(Printed::of(e));
        // Without a start time the key does not name one process: not cached.
        if e.conn.start_time_ns == 0 {
            return printed;
        }
        let s = |o: &Option<String>| o.as_ref().map_or(0, String::len);
        let bytes = std::mem::size_of::<Entry>()
            + std::mem::size_of::<Printed>()
            + printed.heap_bytes()
            + s(&p.executable)
            + s(&p.parent_executable)
            + p.ancestors.iter().map(|a| a.len() + 24).sum::<usize>()
            // Kept alive by the entry after the process table lets it go.
            + p.args.as_ref().map_or(0, Argv::heap_bytes);
        if self.bytes + bytes > MAX_BYTES {
            self.evicted += self.entries.len() as u64;
            self.entries.clear();
            self.bytes = 0;
        }
        if let Some(old) = self.entries.insert(
            key,
            Entry {
                executable: p.executable.clone(),
                parent_executable: p.parent_executable.clone(),
                args: p.args.clone(),
                ancestors: p.ancestors.clone(),
                printed: printed.clone(),
                bytes,
            },
        ) {
            self.bytes -= old.bytes;
        }
        self.bytes += bytes;
        printed
    }

    /// Empties it without counting evictions (the bench's uncached row).
    pub fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    pub fn entries(&self) -> usize {
        self.entries.len()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

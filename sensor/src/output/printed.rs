//! What a line prints of a process's strings: secrets redacted, each string bounded, and
//! which patterns fired and which fields were cut.

use crate::{
    enrich::Enriched,
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
        }
    }
}

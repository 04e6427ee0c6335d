//! The view when stdout is not a terminal: one plain line per matching alert.

use std::io::Write;

use anyhow::{Context, Result};

use super::{
    source::{Input, Source},
    state::State,
};

/// One plain line per matching alert, until the source ends.
pub(super) fn plain(source: &Source, state: &mut State) -> Result<()> {
    let mut out = std::io::stdout().lock();
    for input in source.lines.iter() {
        if input == Input::Untrusted {
            eprintln!(
                "t1571-sensor watch: skipped a journal entry journald does not attribute to the sensor ({} so far)",
                state.untrusted + 1
            );
        }
        if let Some(a) = state.take(input)
            && state.filter.shows(&a)
        {
            writeln!(out, "{}", a.plain()).context("writing to stdout")?;
            out.flush().context("writing to stdout")?;
        }
    }
    Ok(())
}

//! `sensor policy show`: the policy in force, as TOML.

use std::{io::Write, path::Path};

use anyhow::{Context, Result};

use crate::detect::policy::Policy;

/// Prints the policy from `config`, or the built-in defaults.
pub fn show(config: Option<&Path>) -> Result<()> {
    let text = Policy::load_or_default(config)?.to_toml()?;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .context("writing the policy to stdout")
}

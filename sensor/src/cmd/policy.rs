//! `sensor policy show` (the policy in force, as TOML) and `sensor policy check FILE`.

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

/// The changes `policy` makes to the built-in defaults, one line each.
pub fn changes(policy: &Policy) -> Vec<String> {
    let d = Policy::default();
    let mut out = Vec::new();
    fn diff<T: Ord + std::fmt::Display + Clone>(
        out: &mut Vec<String>,
        name: &str,
        new: &std::collections::BTreeSet<T>,
        old: &std::collections::BTreeSet<T>,
    ) {
        let join = |v: Vec<&T>| {
            v.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let added: Vec<&T> = new.difference(old).collect();
        let removed: Vec<&T> = old.difference(new).collect();
        if !added.is_empty() {
            out.push(format!("{name}: adds {}", join(added)));
        }
        if !removed.is_empty() {
            out.push(format!("{name}: removes {}", join(removed)));
        }
    }
    diff(&mut out, "c2_ports", &policy.c2_ports, &d.c2_ports);
    diff(
        &mut out,
        "standard_ports",
        &policy.standard_ports,
        &d.standard_ports,
    );
    diff(
        &mut out,
        "high_risk_executables",
        &policy.high_risk_executables,
        &d.high_risk_executables,
    );
    let nets = |p: &Policy| p.excluded_networks.iter().copied().collect();
    diff(&mut out, "excluded_networks", &nets(policy), &nets(&d));
    for rule in &policy.allow {
        out.push(format!("allow rule {:?} added", rule.name));
    }
    out
}

/// `sensor policy check FILE`: validates the file (errors name its line and column) and
/// prints what it changes from the defaults, for use before a reload.
pub fn check(path: &Path) -> Result<()> {
    let policy = Policy::load(path)?;
    let mut out = std::io::stdout().lock();
    let changes = changes(&policy);
    let mut text = format!("{}: valid\n", path.display());
    if changes.is_empty() {
        text.push_str("no changes from the defaults\n");
    }
    for c in changes {
        text.push_str(&format!("  {c}\n"));
    }
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .context("writing to stdout")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_named() {
        assert!(changes(&Policy::default()).is_empty());
        let p = Policy::parse(
            "c2_ports = [4444]\n[extend]\nhigh_risk_executables = [\"gawk\"]\n[[allow]]\nname = \"x\"\nusers = [\"_apt\"]\n",
        )
        .unwrap();
        let c = changes(&p);
        assert!(
            c.iter().any(|l| l.starts_with("c2_ports: removes 444")),
            "{c:?}"
        );
        assert!(
            c.contains(&"high_risk_executables: adds gawk".to_string()),
            "{c:?}"
        );
        assert!(c.contains(&"allow rule \"x\" added".to_string()), "{c:?}");
    }
}

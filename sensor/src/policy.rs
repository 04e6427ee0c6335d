//! The detection policy: the lists the T1571 model scores with. Built-in defaults are the
//! reference model's Linux translation; `--config PATH` replaces them from a TOML file.

use std::{collections::BTreeSet, path::Path};

use anyhow::{Context, Result, bail};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Ports seen with known C2 families (WIRTE, PingPull, Contagious Interview, ...).
pub const DEFAULT_C2_PORTS: &[u16] = &[
    444, 587, 1224, 1337, 2083, 2087, 4443, 4444, 4445, 6666, 6667, 6668, 7777, 8008, 8088, 8888,
    9001, 9090, 31337,
];

/// Ports never called non-standard.
pub const DEFAULT_STANDARD_PORTS: &[u16] = &[80, 443, 8080, 8443, 53, 25, 3000, 5000, 9000];

/// Shells, interpreters and network tools, by executable basename. Versioned names
/// (python3.11, ruby3.1) match their base through [`crate::score`]'s normalisation;
/// the distribution-specific names are listed as installed (`nc.openbsd`).
pub const DEFAULT_HIGH_RISK: &[&str] = &[
    // shells
    "sh",
    "bash",
    "dash",
    "zsh",
    "ksh",
    "fish",
    "busybox",
    // interpreters
    "python",
    "python2",
    "python3",
    "perl",
    "ruby",
    "php",
    "node",
    "lua",
    "pwsh",
    // network tools
    "curl",
    "wget",
    "nc",
    "ncat",
    "netcat",
    "nc.openbsd",
    "nc.traditional",
    "socat",
    "openssl",
    "telnet",
];

/// Private, loopback, link-local and unspecified space, IPv4 and IPv6.
pub const DEFAULT_EXCLUDED: &[&str] = &[
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "0.0.0.0/8",
    "::1/128",
    "::/128",
    "fe80::/10",
    "fc00::/7",
];

/// The policy file's shape. Every key is required-or-defaulted and unknown keys are errors,
/// so a typo cannot silently turn a list off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default = "default_c2_ports")]
    pub c2_ports: BTreeSet<u16>,
    #[serde(default = "default_standard_ports")]
    pub standard_ports: BTreeSet<u16>,
    #[serde(default = "default_high_risk")]
    pub high_risk_executables: BTreeSet<String>,
    #[serde(default = "default_excluded")]
    pub excluded_networks: Vec<IpNet>,
}

fn default_c2_ports() -> BTreeSet<u16> {
    DEFAULT_C2_PORTS.iter().copied().collect()
}
fn default_standard_ports() -> BTreeSet<u16> {
    DEFAULT_STANDARD_PORTS.iter().copied().collect()
}
fn default_high_risk() -> BTreeSet<String> {
    DEFAULT_HIGH_RISK.iter().map(|s| s.to_string()).collect()
}
fn default_excluded() -> Vec<IpNet> {
    DEFAULT_EXCLUDED
        .iter()
        .map(|s| s.parse().expect("built-in network literal"))
        .collect()
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            c2_ports: default_c2_ports(),
            standard_ports: default_standard_ports(),
            high_risk_executables: default_high_risk(),
            excluded_networks: default_excluded(),
        }
    }
}

impl Policy {
    /// Reads and validates a policy file; errors name the path and, from the TOML parser,
    /// the line and column.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read policy file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("invalid policy file {}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Self> {
        let policy: Policy = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        policy.validate()?;
        Ok(policy)
    }

    fn validate(&self) -> Result<()> {
        if self.c2_ports.contains(&0) || self.standard_ports.contains(&0) {
            bail!("port 0 is not a destination port");
        }
        for name in &self.high_risk_executables {
            if name.is_empty() || name.contains('/') {
                bail!("high_risk_executables entry {name:?} must be a bare executable name");
            }
        }
        if let Some(p) = self.c2_ports.intersection(&self.standard_ports).next() {
            bail!("port {p} is in both c2_ports and standard_ports");
        }
        Ok(())
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_reference_lists() {
        let p = Policy::default();
        assert_eq!(p.c2_ports.len(), 19);
        assert_eq!(p.standard_ports.len(), 9);
        assert!(p.high_risk_executables.contains("nc.openbsd"));
        assert_eq!(p.excluded_networks.len(), DEFAULT_EXCLUDED.len());
        p.validate().unwrap();
    }

    #[test]
    fn partial_file_keeps_other_defaults() {
        let p = Policy::parse("c2_ports = [4444]\n").unwrap();
        assert_eq!(p.c2_ports, BTreeSet::from([4444]));
        assert_eq!(p.standard_ports, Policy::default().standard_ports);
    }

    #[test]
    fn round_trips_through_toml() {
        let p = Policy::default();
        assert_eq!(Policy::parse(&p.to_toml()).unwrap(), p);
    }

    #[test]
    fn errors_name_the_line() {
        let err = Policy::parse("c2_ports = [4444]\nstandard_ports = [70000]\n").unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("line 2"), "{msg}");
        let err = Policy::parse("c2_port = [1]\n").unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("unknown field `c2_port`") && msg.contains("line 1"),
            "{msg}"
        );
        let err = Policy::parse("excluded_networks = [\"10.0.0.0/33\"]\n").unwrap_err();
        assert!(format!("{err:#}").contains("line 1"), "{err:#}");
    }

    #[test]
    fn semantic_errors() {
        for (text, want) in [
            ("c2_ports = [0]", "port 0"),
            (
                "high_risk_executables = [\"/bin/sh\"]",
                "bare executable name",
            ),
            ("high_risk_executables = [\"\"]", "bare executable name"),
            ("c2_ports = [443]", "both c2_ports and standard_ports"),
        ] {
            let err = Policy::parse(text).unwrap_err();
            assert!(format!("{err:#}").contains(want), "{text}: {err:#}");
        }
    }

    #[test]
    fn load_names_the_path() {
        let err = Policy::load(Path::new("/nonexistent/policy.toml")).unwrap_err();
        assert!(format!("{err:#}").contains("/nonexistent/policy.toml"));
    }
}

//! The `[scan]` section: when a group's connects become a port or host scan (one
//! `network-scan` alert instead of one line per connect). Default: more than 20 distinct
//! ports or more than 20 distinct hosts within 60 s.

use anyhow::Result;
use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::file::Source;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ScanPolicy {
    /// A scan is more than this many distinct destination ports in one window.
    pub ports: u32,
    /// ... or more than this many distinct destination hosts.
    pub hosts: u32,
    pub window_seconds: u32,
}

pub const DEFAULT_SCAN: ScanPolicy = ScanPolicy {
    ports: 20,
    hosts: 20,
    window_seconds: 60,
};

/// The longest window: a group is held at most this long (memory is still byte-bounded).
const MAX_WINDOW_SECONDS: i64 = 3600;

impl Default for ScanPolicy {
    fn default() -> Self {
        DEFAULT_SCAN
    }
}

impl ScanPolicy {
    pub fn window_ns(&self) -> i128 {
        i128::from(self.window_seconds) * 1_000_000_000
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ScanFile {
    ports: Option<Spanned<i64>>,
    hosts: Option<Spanned<i64>>,
    window_seconds: Option<Spanned<i64>>,
}

/// Validates the section; errors name the setting, its line and column, and the range.
pub(super) fn parse(src: &Source<'_>, f: &ScanFile) -> Result<ScanPolicy> {
    let mut p = DEFAULT_SCAN;
    let field = |v: &Spanned<i64>, name: &str, max: i64| {
        u32::try_from(*v.get_ref())
            .ok()
            .filter(|&n| n >= 1 && i64::from(n) <= max)
            .ok_or_else(|| {
                src.err(
                    v.span(),
                    format!("scan {name} {} is not between 1 and {max}", v.get_ref()),
                )
            })
    };
    if let Some(v) = &f.ports {
        p.ports = field(v, "ports", 65_535)?;
    }
    if let Some(v) = &f.hosts {
        p.hosts = field(v, "hosts", 1_000_000)?;
    }
    if let Some(v) = &f.window_seconds {
        p.window_seconds = field(v, "window_seconds", MAX_WINDOW_SECONDS)?;
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use crate::detect::policy::Policy;

    #[test]
    fn defaults_and_a_valid_section() {
        assert_eq!(Policy::default().scan, super::DEFAULT_SCAN);
        let p = Policy::parse("[scan]\nports = 50\nwindow_seconds = 30\n").unwrap();
        assert_eq!(
            (p.scan.ports, p.scan.hosts, p.scan.window_seconds),
            (50, 20, 30)
        );
    }

    #[rstest]
    #[case(
        "[scan]\nports = 0\n",
        "line 2, column 9: scan ports 0 is not between 1 and 65535"
    )]
    #[case(
        "[scan]\nhosts = -3\n",
        "line 2, column 9: scan hosts -3 is not between 1"
    )]
    #[case(
        "[scan]\nwindow_seconds = 7200\n",
        "scan window_seconds 7200 is not between 1 and 3600"
    )]
    #[case("[scan]\nport = 5\n", "unknown field `port`")]
    fn bad_settings_are_named(#[case] text: &str, #[case] want: &str) {
        let err = format!("{:#}", Policy::parse(text).unwrap_err());
        assert!(err.contains(want), "{err}");
    }
}

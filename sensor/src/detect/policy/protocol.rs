//! The `[protocol]` section: what a flow's first bytes are expected to speak on the
//! standard ports, and the JA4 fingerprints that are known command and control.
//! See docs/protocol.md for the tiers.

use std::collections::BTreeSet;

use anyhow::Result;
use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::file::{SVec, Source};
use crate::enrich::protocol::Protocol;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProtocolPolicy {
    /// Off: first bytes are neither asked of the kernel nor scored.
    pub enabled: bool,
    /// Ports where TLS is expected (HTTPS, DNS over TLS, IMAPS, POP3S, SMTPS).
    pub tls_ports: BTreeSet<u16>,
    pub http_ports: BTreeSet<u16>,
    pub ssh_ports: BTreeSet<u16>,
    /// JA4 client fingerprints of known C2 tooling: a match is High.
    pub ja4_blocklist: BTreeSet<String>,
    /// The tier of a protocol that does not belong on its standard port (2 or 3).
    pub mismatch_risk: u8,
}

pub const DEFAULT_TLS_PORTS: &[u16] = &[443, 8443, 853, 993, 995, 465];
pub const DEFAULT_HTTP_PORTS: &[u16] = &[80, 8080];
pub const DEFAULT_SSH_PORTS: &[u16] = &[22];
pub const DEFAULT_MISMATCH_RISK: u8 = 2;

impl Default for ProtocolPolicy {
    fn default() -> Self {
        Self {
            enabled: true,
            tls_ports: DEFAULT_TLS_PORTS.iter().copied().collect(),
            http_ports: DEFAULT_HTTP_PORTS.iter().copied().collect(),
            ssh_ports: DEFAULT_SSH_PORTS.iter().copied().collect(),
            ja4_blocklist: BTreeSet::new(),
            mismatch_risk: DEFAULT_MISMATCH_RISK,
        }
    }
}

impl ProtocolPolicy {
    /// The protocols expected on `port` (empty: no expectation, a non-standard port).
    pub fn expected(&self, port: u16) -> Vec<Protocol> {
        [
            (Protocol::Tls, &self.tls_ports),
            (Protocol::Http, &self.http_ports),
            (Protocol::Ssh, &self.ssh_ports),
        ]
        .into_iter()
        .filter(|(_, ports)| ports.contains(&port))
        .map(|(p, _)| p)
        .collect()
    }

    /// Every port with an expectation (the kernel checks first bytes on these).
    pub fn expected_ports(&self) -> BTreeSet<u16> {
        let mut all = self.tls_ports.clone();
        all.extend(&self.http_ports);
        all.extend(&self.ssh_ports);
        all
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ProtocolFile {
    enabled: Option<bool>,
    tls_ports: Option<SVec<i64>>,
    http_ports: Option<SVec<i64>>,
    ssh_ports: Option<SVec<i64>>,
    ja4_blocklist: Option<SVec<String>>,
    mismatch_risk: Option<Spanned<i64>>,
}

/// Whether `s` has JA4's shape: `t13d1516h2_8daaf6152771_e5627efa2ab1`.
pub fn is_ja4(s: &str) -> bool {
    let b = s.as_bytes();
    let hex = |r: &[u8]| r.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    let alnum = |c: &u8| c.is_ascii_digit() || c.is_ascii_lowercase();
    b.len() == 36
        && matches!(b[0], b't' | b'q' | b'd')
        && b[1..3].iter().all(alnum)
        && matches!(b[3], b'd' | b'i')
        && b[4..8].iter().all(u8::is_ascii_digit)
        && b[8..10].iter().all(alnum)
        && b[10] == b'_'
        && hex(&b[11..23])
        && b[23] == b'_'
        && hex(&b[24..36])
}

/// Validates the section; errors name the setting, its line and column.
pub(super) fn parse(src: &Source<'_>, f: &ProtocolFile) -> Result<ProtocolPolicy> {
    let mut p = ProtocolPolicy::default();
    if let Some(e) = f.enabled {
        p.enabled = e;
    }
    for (name, list, out) in [
        ("tls_ports", &f.tls_ports, &mut p.tls_ports),
        ("http_ports", &f.http_ports, &mut p.http_ports),
        ("ssh_ports", &f.ssh_ports, &mut p.ssh_ports),
    ] {
        let Some(list) = list else { continue };
        out.clear();
        for port in list.get_ref() {
            let n = u16::try_from(*port.get_ref())
                .ok()
                .filter(|&n| n != 0)
                .ok_or_else(|| {
                    src.err(
                        port.span(),
                        format!("protocol {name} port {} is out of range", port.get_ref()),
                    )
                })?;
            out.insert(n);
        }
    }
    if let Some(list) = &f.ja4_blocklist {
        for fp in list.get_ref() {
            let s = fp.get_ref().trim().to_ascii_lowercase();
            if !is_ja4(&s) {
                return Err(src.err(
                    fp.span(),
                    format!(
                        "protocol ja4_blocklist entry {:?} is not a JA4 fingerprint \
                         (like t13d1516h2_8daaf6152771_e5627efa2ab1)",
                        fp.get_ref()
                    ),
                ));
            }
            p.ja4_blocklist.insert(s);
        }
    }
    if let Some(r) = &f.mismatch_risk {
        p.mismatch_risk = u8::try_from(*r.get_ref())
            .ok()
            .filter(|r| (1..=3).contains(r))
            .ok_or_else(|| {
                src.err(
                    r.span(),
                    format!(
                        "protocol mismatch_risk {} is not 1 (Low), 2 (Medium) or 3 (High)",
                        r.get_ref()
                    ),
                )
            })?;
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;
    use crate::detect::policy::Policy;

    #[test]
    fn defaults_a_valid_section_and_show_round_trip() {
        let d = Policy::default().protocol;
        assert!(d.enabled && d.ja4_blocklist.is_empty());
        assert_eq!(d.expected(443), vec![Protocol::Tls]);
        assert_eq!(d.expected(22), vec![Protocol::Ssh]);
        assert!(d.expected(4444).is_empty());
        assert_eq!(
            d.expected_ports().into_iter().collect::<Vec<_>>(),
            vec![22, 80, 443, 465, 853, 993, 995, 8080, 8443]
        );
        let p = Policy::parse(
            "[protocol]\nenabled = false\nhttp_ports = [80, 8000]\nja4_blocklist = [\" t13d3112h2_e8f1e7e78f70_b26ce05bbdd6\"]\n",
        )
        .unwrap();
        assert!(!p.protocol.enabled);
        assert_eq!(p.protocol.http_ports, BTreeSet::from([80, 8000]));
        assert_eq!(p.protocol.tls_ports, d.tls_ports);
        assert!(
            p.protocol
                .ja4_blocklist
                .contains("t13d3112h2_e8f1e7e78f70_b26ce05bbdd6")
        );
        let shown = p.to_toml().unwrap();
        assert!(shown.contains("[protocol]"), "{shown}");
        assert_eq!(Policy::parse(&shown).unwrap(), p, "{shown}");
    }

    #[rstest]
    #[case(
        "[protocol]\ntls_ports = [0]\n",
        "line 2, column 14: protocol tls_ports port 0 is out of range"
    )]
    #[case(
        "[protocol]\nssh_ports = [70000]\n",
        "protocol ssh_ports port 70000 is out of range"
    )]
    #[case(
        "[protocol]\nja4_blocklist = [\"abc\"]\n",
        "line 2, column 18: protocol ja4_blocklist entry \"abc\" is not a JA4"
    )]
    #[case(
        "[protocol]\nmismatch_risk = 4\n",
        "line 2, column 17: protocol mismatch_risk 4 is not 1"
    )]
    #[case("[protocol]\nja4 = []\n", "unknown field `ja4`")]
    fn bad_settings_are_named(#[case] text: &str, #[case] want: &str) {
        let err = format!("{:#}", Policy::parse(text).unwrap_err());
        assert!(err.contains(want), "{err}");
    }

    #[rstest]
    #[case("t13d1516h2_8daaf6152771_d8a2da3f94cd", true)]
    #[case("q13i0000000_000000000000_000000000000", false)]
    #[case("t13i000000_000000000000_000000000000", true)]
    #[case("t13d1516h2_8daaf6152771_d8a2da3f94c", false)]
    #[case("x13d1516h2_8daaf6152771_d8a2da3f94cd", false)]
    #[case("t13d1516h2-8daaf6152771_d8a2da3f94cd", false)]
    #[case("t13d15x6h2_8daaf6152771_d8a2da3f94cd", false)]
    fn ja4_shape(#[case] s: &str, #[case] ok: bool) {
        assert_eq!(is_ja4(s), ok, "{s}");
    }

    #[test]
    fn every_toml_block_in_the_protocol_doc_parses() {
        let doc = include_str!("../../../../docs/protocol.md");
        let blocks: Vec<&str> = doc
            .split("```toml\n")
            .skip(1)
            .filter_map(|p| p.split("```").next())
            .collect();
        assert_eq!(blocks.len(), 2);
        for block in blocks {
            if let Err(e) = Policy::parse(block) {
                panic!("docs/protocol.md policy block does not parse: {e:#}\n{block}");
            }
        }
        // The documented defaults are the defaults.
        let shown = Policy::parse(
            doc.split("```toml\n")
                .nth(1)
                .unwrap()
                .split("```")
                .next()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(shown.protocol, ProtocolPolicy::default());
    }
}

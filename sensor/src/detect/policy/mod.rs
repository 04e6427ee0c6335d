//! The detection policy: the lists the T1571 model scores with and the allow rules that
//! suppress known false positives. Built-in defaults are the reference model's Linux
//! translation; `--config PATH` replaces (top-level keys) or extends (`[extend]`) the lists
//! and adds `[[allow]]` rules. Every error names the line and column it comes from.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use anyhow::{Context, Result};
use ipnet::IpNet;
use serde::Serialize;

pub mod allow;
mod file;
pub mod glob;
pub mod protocol;
pub mod scan;
pub mod schedule;

pub use allow::{AllowRule, PortRange};
pub use protocol::ProtocolPolicy;
pub use scan::ScanPolicy;
pub use schedule::Schedule;

use crate::detect::{policy::glob::Pattern, subject::Subject};

/// Ports seen with known C2 families (WIRTE, PingPull, Contagious Interview, ...).
pub const DEFAULT_C2_PORTS: &[u16] = &[
    444, 587, 1224, 1337, 2083, 2087, 4443, 4444, 4445, 6666, 6667, 6668, 7777, 8008, 8088, 8888,
    9001, 9090, 31337,
];

/// Ports never called non-standard.
pub const DEFAULT_STANDARD_PORTS: &[u16] = &[80, 443, 8080, 8443, 53, 25, 3000, 5000, 9000];

/// Shells, interpreters and network tools, by executable basename. Versioned names
/// (python3.11, ruby3.1) match their base through [`crate::detect::score`]'s normalisation;
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

/// The effective policy: the four lists after defaults, replacement and `[extend]`, and
/// the allow rules in file order. This is what `sensor policy show` prints, and printing
/// it and parsing the result gives the same policy back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Policy {
    pub c2_ports: BTreeSet<u16>,
    pub standard_ports: BTreeSet<u16>,
    pub high_risk_executables: BTreeSet<String>,
    pub excluded_networks: Vec<IpNet>,
    /// Known services and their own listening ports: listening elsewhere is Medium.
    pub service_ports: BTreeMap<String, BTreeSet<u16>>,
    /// User-writable places where no installed program lives: a binary run from one is
    /// high-risk by location, whatever its name (a static implant in `~/.cache`).
    pub writable_locations: Vec<Pattern>,
    /// The tier of executables no package installed (`[unmanaged]`).
    pub unmanaged: Unmanaged,
    /// When connects become a scan (`[scan]`).
    pub scan: ScanPolicy,
    /// What first bytes are expected on standard ports (`[protocol]`).
    pub protocol: ProtocolPolicy,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<AllowRule>,
}

/// Unmanaged executables: not in the host's package database (dpkg's lists; see
/// `enrich::packages`) and not under a trusted path. One connecting to (or listening
/// on) a known C2 port scores `risk` instead of the C2 port's 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unmanaged {
    /// 1 (no tier of its own) to 3.
    pub risk: u8,
    /// Where software is installed by hand or by other managers: never "unmanaged".
    pub trusted_paths: Vec<Pattern>,
}

/// An unmanaged executable on a known C2 port: Medium.
pub const DEFAULT_UNMANAGED_RISK: u8 = 2;

/// Places software is installed outside the package manager that only root writes on a
/// standard install. Not `/opt` (vendors hand subdirectories to service users) nor
/// `/nix/store` (on multi-user Nix any user adds files with `nix-store --add`): a trusted
/// path is trusted as written, so list only directories no user can write into.
pub const DEFAULT_TRUSTED_PATHS: &[&str] = &["/usr/local/*", "/snap/*"];

impl Default for Unmanaged {
    fn default() -> Self {
        Self {
            risk: DEFAULT_UNMANAGED_RISK,
            trusted_paths: DEFAULT_TRUSTED_PATHS
                .iter()
                .filter_map(|p| Pattern::new(p).ok())
                .collect(),
        }
    }
}

/// Writable locations (shell-style, `*` spans directories). /tmp, /var/tmp, /dev/shm and
/// fileless executables are judged by enrichment already.
pub const DEFAULT_WRITABLE_LOCATIONS: &[&str] = &[
    "/root/.cache/*",
    "/home/*/.cache/*",
    "/root/.config/*",
    "/home/*/.config/*",
    "/root/.local/share/*",
    "/home/*/.local/share/*",
    "/run/user/*",
    "/dev/mqueue/*",
    "/var/crash/*",
];

/// Services and their standard listening ports (the Linux analogue of Atomic test 3:
/// a service moved to a port that is not its own).
pub const DEFAULT_SERVICE_PORTS: &[(&str, &[u16])] = &[
    ("sshd", &[22]),
    ("xrdp", &[3389]),
    ("telnetd", &[23]),
    ("in.telnetd", &[23]),
    ("nginx", &[80, 443]),
    ("httpd", &[80, 443]),
    ("apache2", &[80, 443]),
    ("lighttpd", &[80, 443]),
    ("vsftpd", &[21]),
    ("proftpd", &[21]),
    ("postfix", &[25, 465, 587]),
    ("exim4", &[25, 465, 587]),
    ("named", &[53, 953]),
    ("dnsmasq", &[53]),
    ("mysqld", &[3306, 33060]),
    ("mariadbd", &[3306]),
    ("postgres", &[5432]),
    ("redis-server", &[6379]),
];

impl Default for Policy {
    fn default() -> Self {
        Self {
            c2_ports: DEFAULT_C2_PORTS.iter().copied().collect(),
            standard_ports: DEFAULT_STANDARD_PORTS.iter().copied().collect(),
            high_risk_executables: DEFAULT_HIGH_RISK.iter().map(|s| s.to_string()).collect(),
            excluded_networks: DEFAULT_EXCLUDED
                .iter()
                .filter_map(|s| s.parse().ok())
                .collect(),
            writable_locations: DEFAULT_WRITABLE_LOCATIONS
                .iter()
                .filter_map(|p| Pattern::new(p).ok())
                .collect(),
            service_ports: DEFAULT_SERVICE_PORTS
                .iter()
                .map(|(n, p)| (n.to_string(), p.iter().copied().collect()))
                .collect(),
            unmanaged: Unmanaged::default(),
            scan: ScanPolicy::default(),
            protocol: ProtocolPolicy::default(),
            allow: Vec::new(),
        }
    }
}

impl Policy {
    /// Reads and validates a policy file; every error names the path, line and column.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read policy file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("invalid policy file {}", path.display()))
    }

    /// Parses and validates policy text; every error names the line and column.
    pub fn parse(text: &str) -> Result<Self> {
        file::parse(text)
    }

    /// Ports a connect to can never score nor feed a beacon: standard and not C2 (see
    /// score.rs: tier 1 needs a C2 port, tier 2 and beacons a port not in `standard_ports`).
    /// The kernel filter drops connects to them.
    pub fn kernel_dropped_ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.standard_ports.difference(&self.c2_ports).copied()
    }

    /// The first allow rule (in file order) that matches.
    pub fn allow_rule(&self, s: &Subject) -> Option<&AllowRule> {
        self.allow.iter().find(|r| r.matches(s))
    }

    pub fn to_toml(&self) -> Result<String> {
        toml::to_string_pretty(self).context("writing the policy as TOML")
    }

    /// The file at `path`, or the built-in defaults when there is none.
    pub fn load_or_default(path: Option<&Path>) -> Result<Self> {
        path.map_or_else(|| Ok(Self::default()), Self::load)
    }
}

/// Rules used by the policy tests.
#[cfg(test)]
pub(super) const TEST_RULES: &str = r#"
[extend]
c2_ports = [5555]
high_risk_executables = ["gawk"]
excluded_networks = ["100.64.0.0/10"]

[[allow]]
name = "dev servers"
reason = "local dev servers on 8088/8888"
executables = ["node", "/opt/dev/*"]
destination_ports = [8088, 8888]
destination_networks = ["203.0.113.0/24", "2001:db8::/32"]

[[allow]]
name = "pentest"
users = ["pentester", "1001"]
destination_ports = ["4444", "1337-1338"]
schedule = { days = ["mon", "tue", "wed", "thu", "fri"], hours = "09:00-17:30", utc_offset = "+02:00" }

[[allow]]
name = "k8s agent"
kubernetes_namespaces = ["monitoring"]

[[allow]]
name = "ci hosts"
host_names = ["ci-*"]
parent_executables = ["make"]
container_ids = ["abc*"]
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_dropped_ports_are_standard_and_not_c2() {
        // Built directly: a policy file may not list a port in both (parse refuses it).
        let p = Policy {
            c2_ports: [443, 4444].into(),
            ..Policy::default()
        };
        let dropped: BTreeSet<u16> = p.kernel_dropped_ports().collect();
        for port in 0..=u16::MAX {
            let expect = p.standard_ports.contains(&port) && !p.c2_ports.contains(&port);
            assert_eq!(dropped.contains(&port), expect, "port {port}");
        }
        assert!(dropped.contains(&80) && !dropped.contains(&443) && !dropped.contains(&4444));
    }

    const RULES: &str = TEST_RULES;

    #[test]
    fn defaults_are_the_reference_lists() {
        let p = Policy::default();
        assert_eq!(p.c2_ports.len(), 19);
        assert_eq!(p.standard_ports.len(), 9);
        assert!(p.high_risk_executables.contains("nc.openbsd"));
        assert_eq!(p.excluded_networks.len(), DEFAULT_EXCLUDED.len());
        assert!(p.allow.is_empty());
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
        assert_eq!(Policy::parse(&p.to_toml().unwrap()).unwrap(), p);
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

    #[test]
    fn semantic_errors_name_line_and_column() {
        for (text, want) in [
            ("c2_ports = [1]\n\n   c2_ports = [0]", "line 3"),
            ("standard_ports = [80, 0]", "line 1, column 23: port 0"),
            (
                "excluded_networks = [\"10.0.0.0/8\",\n  \"10.0.0.0/33\"]",
                "line 2, column 3",
            ),
            (
                "[extend]\nhigh_risk_executables = [\"/bin/x\"]",
                "line 2, column 26",
            ),
            (
                "[extend]\nc2_ports = [443]",
                "line 2, column 13: port 443 is in both",
            ),
            (
                "[[allow]]\nname = \"a\"\ndestination_ports = [70000]",
                "line 3, column 22: port 70000 is out of range",
            ),
            (
                "[[allow]]\nname = \"a\"\ndestination_ports = [\"9000-8000\"]",
                "line 3, column 22: port range \"9000-8000\" is reversed",
            ),
            (
                "[[allow]]\nname = \"a\"\ndestination_ports = [0]",
                "line 3, column 22: port 0 is out of range",
            ),
            (
                "[[allow]]\nname = \"a\"\ndestination_networks = [\"203.0.113.0/24x\"]",
                "line 3, column 25",
            ),
            (
                "[[allow]]\nname = \"a\"\nexecutables = [\"x\"]\n[[allow]]\nname = \"a\"\nexecutables = [\"y\"]",
                "line 5, column 8: duplicate allow rule name \"a\"",
            ),
            (
                "[[allow]]\nname = \"a\"\nexecutables = [\"x\"]\n[[allow]]\nname = \"b\"\nexecutables = [\"x\"]",
                "line 5, column 8: allow rule \"b\" has the same conditions as rule \"a\"",
            ),
            ("[[allow]]\nname = \"a\"\n", "has no conditions"),
            (
                "[[allow]]\nname = \"a\"\nschedule = { hours = \"00:00-06:00\" }",
                "line 1, column 1: allow rule \"a\" has only a schedule",
            ),
            (
                "[[allow]]\nname = \"a\"\nusers = []",
                "line 3, column 9: users is empty",
            ),
            (
                "[[allow]]\nname = \"a\"\ndestination_networks = [\"10.1.0.0/16\"]",
                "conflicts with excluded_networks",
            ),
            (
                "[[allow]]\nname = \"a\"\nschedule = { hours = \"09:00-09:00\" }",
                "line 3, column 12: schedule.hours starts and ends",
            ),
            (
                "[[allow]]\nname = \"a\"\nschedule = { days = [\"xyz\"] }",
                "not a day",
            ),
            (
                "[[allow]]\nname = \"a\"\nschedule = { hours = \"25:00-26:00\" }",
                "not a time",
            ),
            (
                "[[allow]]\nname = \" \"\nusers = [\"x\"]",
                "line 2, column 8: allow rule name is empty",
            ),
            ("[[allow]]\nusers = [\"x\"]", "missing field `name`"),
            (
                "[[allow]]\nname = \"a\"\nexecutable = [\"x\"]",
                "unknown field `executable`",
            ),
            ("[extend]\nc2_port = [1]", "unknown field `c2_port`"),
        ] {
            let err = Policy::parse(text).map(|_| ()).unwrap_err();
            let msg = format!("{err:#}");
            assert!(msg.contains(want), "{text:?}: want {want:?}, got: {msg}");
        }
    }

    #[test]
    fn rules_round_trip_through_show() {
        let p = Policy::parse(RULES).unwrap();
        let shown = p.to_toml().unwrap();
        assert!(
            shown.contains("[[allow]]") && shown.contains("1337-1338"),
            "{shown}"
        );
        assert_eq!(Policy::parse(&shown).unwrap(), p, "{shown}");
    }

    #[test]
    fn load_names_path_line_and_column() {
        let dir = std::env::temp_dir().join(format!("policy-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("p.toml");
        std::fs::write(&path, "c2_ports = [4444]\nexcluded_networks = [\"x\"]\n").unwrap();
        let msg = format!("{:#}", Policy::load(&path).unwrap_err());
        std::fs::remove_dir_all(&dir).ok();
        assert!(
            msg.contains(path.to_str().unwrap()) && msg.contains("line 2, column 22"),
            "{msg}"
        );
    }

    #[test]
    fn every_toml_block_in_the_policy_chapter_parses() {
        let readme = include_str!("../../../../docs/policy.md");
        let mut blocks = 0;
        for part in readme.split("```toml\n").skip(1) {
            let block = part.split("```").next().unwrap_or("");
            if let Err(e) = Policy::parse(block) {
                panic!("docs/policy.md: a policy block does not parse: {e:#}\n{block}");
            }
            blocks += 1;
        }
        assert!(blocks >= 2, "{blocks}");
        // The false-positive examples: one rule per class, all distinct.
        let all: String = readme
            .split("```toml\n")
            .skip(1)
            .filter_map(|p| p.split("```").next())
            .filter(|b| b.contains("[[allow]]"))
            .collect();
        assert_eq!(Policy::parse(&all).unwrap().allow.len(), 8);
    }
}

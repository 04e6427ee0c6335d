//! Allow rules: which connections a rule vouches for.

use ipnet::IpNet;
use serde::Serialize;

use crate::{
    detect::{
        policy::{glob::Pattern, schedule::Schedule},
        subject::Subject,
    },
    enrich::{procfs::exe_name, users::NameSource},
    kernel::records::canonical,
};

/// One `[[allow]]` rule: every condition given must hold (AND); within a condition any
/// listed value may match (OR). A condition on a field whose value is unknown for the
/// connection (vanished process, no container) does not hold: unknown never suppresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AllowRule {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The `event.action`s the rule applies to; none given: `network-connect` only, so a
    /// rule written for connects never silences a listener on the same port.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub executables: Vec<Pattern>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub parent_executables: Vec<Pattern>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<Pattern>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub destination_networks: Vec<IpNet>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub destination_ports: Vec<PortRange>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub container_ids: Vec<Pattern>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kubernetes_namespaces: Vec<Pattern>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pod_names: Vec<Pattern>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub host_names: Vec<Pattern>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Schedule>,
}

/// An inclusive port range; a single port is `lo == hi`. Written as `8088` or `"8000-8999"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl PortRange {
    pub fn contains(self, port: u16) -> bool {
        (self.lo..=self.hi).contains(&port)
    }
}

impl Serialize for PortRange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        if self.lo == self.hi {
            s.serialize_u16(self.lo)
        } else {
            s.serialize_str(&format!("{}-{}", self.lo, self.hi))
        }
    }
}

/// Patterns as written.
fn names(patterns: &[Pattern]) -> Vec<String> {
    patterns.iter().map(|p| p.as_str().to_string()).collect()
}

/// An executable pattern with a `/` is matched against the full path, otherwise against
/// the basename; either way against the executable, never `comm`, which any process sets.
fn exe_matches(patterns: &[Pattern], exe: Option<&str>) -> bool {
    let Some(exe) = exe else { return false };
    patterns.iter().any(|p| {
        if p.as_str().contains('/') {
            p.is_match(exe)
        } else {
            p.is_match(exe_name(exe))
        }
    })
}

fn any_glob(patterns: &[Pattern], value: Option<&str>) -> bool {
    value.is_some_and(|v| patterns.iter().any(|p| p.is_match(v)))
}

/// A uid (all digits) is the kernel's, believed wherever the process runs; a name pattern
/// holds only for a name the host's account database gave: a container's passwd, which its
/// root writes, can call any uid `backup`.
fn user_matches(rule: &Pattern, s: &Subject) -> bool {
    match rule.as_str().parse::<u32>() {
        Ok(uid) => s.user_id == Some(uid),
        Err(_) => {
            s.user_name_source == Some(NameSource::Host)
                && s.user_name.as_deref().is_some_and(|n| rule.is_match(n))
        }
    }
}

/// A container, pod or namespace value, only when the container id is the runtime's: a
/// user-delegated cgroup can carry any container's id, and the pod is looked up from it.
fn trusted<'a>(s: &Subject, v: &'a Option<String>) -> Option<&'a str> {
    v.as_deref().filter(|_| s.container_trusted)
}

impl AllowRule {
    pub fn matches(&self, s: &Subject) -> bool {
        let action = s.flow.action();
        let action_ok = if self.actions.is_empty() {
            action == "network-connect"
        } else {
            self.actions.iter().any(|a| a == action)
        };
        action_ok
            && (self.executables.is_empty()
                || exe_matches(&self.executables, s.executable.as_deref()))
            && (self.parent_executables.is_empty()
                || exe_matches(&self.parent_executables, s.parent_executable.as_deref()))
            && (self.users.is_empty() || self.users.iter().any(|u| user_matches(u, s)))
            && (self.destination_networks.is_empty() || {
                let d = canonical(s.dst);
                self.destination_networks.iter().any(|n| n.contains(&d))
            })
            && (self.destination_ports.is_empty()
                || self.destination_ports.iter().any(|r| r.contains(s.port)))
            && (self.container_ids.is_empty()
                || any_glob(&self.container_ids, trusted(s, &s.container_id)))
            && (self.kubernetes_namespaces.is_empty()
                || any_glob(
                    &self.kubernetes_namespaces,
                    trusted(s, &s.kubernetes_namespace),
                ))
            && (self.pod_names.is_empty() || any_glob(&self.pod_names, trusted(s, &s.pod_name)))
            && (self.host_names.is_empty() || any_glob(&self.host_names, s.host_name.as_deref()))
            && self
                .schedule
                .as_ref()
                .is_none_or(|w| s.unix_s().is_some_and(|t| w.contains(t)))
    }

    /// The conditions in words, for `sensor score`'s reason chain.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        let mut list = |key: &str, v: Vec<String>| {
            if !v.is_empty() {
                parts.push(format!("{key} {}", v.join("|")));
            }
        };
        list("action", self.actions.clone());
        list("executable", names(&self.executables));
        list("parent", names(&self.parent_executables));
        list("user", names(&self.users));
        list(
            "network",
            self.destination_networks
                .iter()
                .map(ToString::to_string)
                .collect(),
        );
        list(
            "port",
            self.destination_ports
                .iter()
                .map(|r| {
                    if r.lo == r.hi {
                        r.lo.to_string()
                    } else {
                        format!("{}-{}", r.lo, r.hi)
                    }
                })
                .collect(),
        );
        list("container", names(&self.container_ids));
        list("k8s namespace", names(&self.kubernetes_namespaces));
        list("pod", names(&self.pod_names));
        list("host", names(&self.host_names));
        if let Some(w) = &self.schedule {
            let json = serde_json::to_value(w).unwrap_or_default();
            parts.push(format!("schedule {json}"));
        }
        parts.join(" and ")
    }

    /// Everything but the name and reason: two rules with equal keys match the same set.
    pub(super) fn condition_key(&self) -> AllowRule {
        AllowRule {
            name: String::new(),
            reason: None,
            ..self.clone()
        }
    }
}

impl AllowRule {
    pub(super) fn empty() -> Self {
        AllowRule {
            name: String::new(),
            reason: None,
            actions: vec![],
            executables: vec![],
            parent_executables: vec![],
            users: vec![],
            destination_networks: vec![],
            destination_ports: vec![],
            container_ids: vec![],
            kubernetes_namespaces: vec![],
            pod_names: vec![],
            host_names: vec![],
            schedule: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    use crate::detect::policy::{DEFAULT_EXCLUDED, Policy, TEST_RULES as RULES};

    fn subject(exe: &str, port: u16) -> Subject {
        Subject {
            host_name: Some("h".into()),
            ..Subject::named(Some(exe), exe_name(exe)).to("203.0.113.7".parse().unwrap(), port)
        }
    }

    #[test]
    fn actions_scope_a_rule() {
        use crate::kernel::records::Flow;
        let p = Policy::parse(
            "[[allow]]\nname = \"lab\"\nexecutables = [\"nc\"]\n\
             [[allow]]\nname = \"lab-listen\"\nactions = [\"network-listen\"]\nexecutables = [\"python3\"]\n",
        )
        .unwrap();
        let nc = subject("/usr/bin/nc", 4444);
        assert_eq!(p.allow_rule(&nc).unwrap().name, "lab");
        // Without `actions` a rule is for connects only.
        assert!(p.allow_rule(&nc.clone().as_flow(Flow::Listen)).is_none());
        let py = subject("/usr/bin/python3", 4444).as_flow(Flow::Listen);
        assert_eq!(p.allow_rule(&py).unwrap().name, "lab-listen");
        assert!(p.allow_rule(&py.as_flow(Flow::Connect)).is_none());
        // An unknown action, and a rule with only actions, are refused.
        let e = Policy::parse(
            "[[allow]]\nname = \"x\"\nactions = [\"listen\"]\nexecutables = [\"nc\"]\n",
        )
        .unwrap_err();
        assert!(
            format!("{e:#}").contains("not one of network-connect"),
            "{e:#}"
        );
        let e =
            Policy::parse("[[allow]]\nname = \"x\"\nactions = [\"network-listen\"]\n").unwrap_err();
        assert!(format!("{e:#}").contains("no conditions"), "{e:#}");
    }

    #[test]
    fn extend_adds_to_defaults() {
        let p = Policy::parse(RULES).unwrap();
        assert!(p.c2_ports.contains(&5555) && p.c2_ports.contains(&4444));
        assert!(p.high_risk_executables.contains("gawk") && p.high_risk_executables.contains("nc"));
        assert_eq!(p.excluded_networks.len(), DEFAULT_EXCLUDED.len() + 1);
        // Replace and extend together: the replacement plus the extension.
        let p = Policy::parse("c2_ports = [1]\n[extend]\nc2_ports = [2]\n").unwrap();
        assert_eq!(p.c2_ports, BTreeSet::from([1, 2]));
        assert_eq!(p.allow.len(), 0);
    }

    #[test]
    fn allow_rules_match_every_condition() {
        let p = Policy::parse(RULES).unwrap();
        let hit = |s: &Subject| p.allow_rule(s).map(|r| r.name.clone());
        assert_eq!(
            hit(&subject("/usr/bin/node", 8088)).as_deref(),
            Some("dev servers")
        );
        assert_eq!(
            hit(&subject("/opt/dev/bin/srv", 8888)).as_deref(),
            Some("dev servers")
        );
        assert_eq!(
            hit(&subject("/usr/bin/node", 4444)),
            None,
            "port not in rule"
        );
        assert_eq!(
            hit(&subject("/usr/bin/nodejs", 8088)),
            None,
            "anchored name"
        );
        let mut s = subject("/usr/bin/node", 8088);
        s.dst = "198.51.100.1".parse().unwrap();
        assert_eq!(hit(&s), None, "network not in rule");
        s.dst = "::ffff:203.0.113.9".parse().unwrap();
        assert_eq!(
            hit(&s).as_deref(),
            Some("dev servers"),
            "v4-mapped judged as v4"
        );
        let mut s = subject("/usr/bin/node", 8088);
        s.executable = None;
        assert_eq!(hit(&s), None, "unknown executable never suppresses");

        // Pentest window: Mon-Fri 09:00-17:30 at +02:00.
        // 2026-11-23 is a Monday; 08:00Z = 10:00 local.
        let monday_0800z = 1_795_392_000 + 8 * 3600;
        let mut s = subject("/usr/bin/nc", 4444);
        s.user_name = Some("pentester".into());
        s.user_name_source = Some(NameSource::Host);
        s.ts_ns = i128::from(monday_0800z) * 1_000_000_000;
        assert_eq!(hit(&s).as_deref(), Some("pentest"));
        s.ts_ns = i128::from(monday_0800z + 8 * 3600) * 1_000_000_000; // 18:00 local
        assert_eq!(hit(&s), None, "after hours");
        s.ts_ns = i128::from(monday_0800z - 2 * 86_400) * 1_000_000_000; // Saturday
        assert_eq!(hit(&s), None, "weekend");
        s.ts_ns = i128::MAX; // beyond any calendar: no time known
        assert_eq!(hit(&s), None, "unknown time never suppresses");
        s.ts_ns = i128::from(monday_0800z) * 1_000_000_000;
        s.port = 1338;
        assert_eq!(hit(&s).as_deref(), Some("pentest"), "range");
        s.port = 1339;
        assert_eq!(hit(&s), None);
        let mut s = subject("/usr/bin/nc", 1337);
        s.user_id = Some(1001);
        s.ts_ns = i128::from(monday_0800z) * 1_000_000_000;
        assert_eq!(hit(&s).as_deref(), Some("pentest"), "numeric user is a uid");
        s.user_id = Some(1002);
        assert_eq!(hit(&s), None);

        let mut s = subject("/usr/bin/curl", 9001);
        assert_eq!(hit(&s), None, "namespace unknown: no match");
        s.kubernetes_namespace = Some("monitoring".into());
        s.container_trusted = true;
        assert_eq!(hit(&s).as_deref(), Some("k8s agent"));

        let mut s = subject("/usr/bin/curl", 9001);
        s.host_name = Some("ci-7".into());
        s.parent_executable = Some("/usr/bin/make".into());
        assert_eq!(hit(&s), None, "container unknown");
        s.container_id = Some("abcdef".into());
        s.container_trusted = true;
        assert_eq!(hit(&s).as_deref(), Some("ci hosts"));
        s.host_name = Some("prod-1".into());
        assert_eq!(hit(&s), None);
    }

    /// Who a `users` condition believes: a uid is the kernel's anywhere; a name only from
    /// the host's account database.
    #[rstest::rstest]
    #[case::host_name(&["backup"], Some(34), Some("backup"), Some(NameSource::Host), true)]
    #[case::container_passwd_name(&["backup"], Some(4242), Some("backup"), Some(NameSource::Container), false)]
    #[case::replayed_name_of_unknown_source(&["backup"], Some(34), Some("backup"), None, false)]
    #[case::glob_on_a_host_name(&["back*"], Some(34), Some("backup"), Some(NameSource::Host), true)]
    #[case::uid_in_a_container(&["4242"], Some(4242), Some("backup"), Some(NameSource::Container), true)]
    #[case::uid_with_no_name(&["4242"], Some(4242), None, None, true)]
    #[case::uid_differs(&["34"], Some(4242), Some("backup"), Some(NameSource::Host), false)]
    #[case::name_or_uid(&["backup", "4242"], Some(4242), Some("backup"), Some(NameSource::Container), true)]
    #[case::no_name(&["backup"], Some(34), None, None, false)]
    fn users_condition(
        #[case] users: &[&str],
        #[case] uid: Option<u32>,
        #[case] name: Option<&str>,
        #[case] source: Option<NameSource>,
        #[case] matches: bool,
    ) {
        let mut rule = AllowRule::empty();
        rule.users = users.iter().map(|u| Pattern::new(u).unwrap()).collect();
        let s = Subject {
            user_id: uid,
            user_name: name.map(str::to_string),
            user_name_source: source,
            ..subject("/usr/bin/nc", 4444)
        };
        assert_eq!(rule.matches(&s), matches);
    }

    /// Container, pod and namespace conditions hold only for a trusted container id.
    #[rstest::rstest]
    #[case::trusted_id("container_ids", true, true)]
    #[case::forged_id("container_ids", false, false)]
    #[case::trusted_pod("pod_names", true, true)]
    #[case::pod_of_a_forged_id("pod_names", false, false)]
    #[case::trusted_namespace("kubernetes_namespaces", true, true)]
    #[case::namespace_of_a_forged_id("kubernetes_namespaces", false, false)]
    fn container_conditions_need_a_trusted_id(
        #[case] key: &str,
        #[case] trusted: bool,
        #[case] matches: bool,
    ) {
        let p = Policy::parse(&format!("[[allow]]\nname = \"r\"\n{key} = [\"abc*\"]\n")).unwrap();
        let s = Subject {
            container_id: Some("abcdef".into()),
            pod_name: Some("abc-0".into()),
            kubernetes_namespace: Some("abc".into()),
            container_trusted: trusted,
            ..subject("/usr/bin/nc", 4444)
        };
        assert_eq!(p.allow_rule(&s).is_some(), matches);
    }

    /// Property: for random rules built from a seeded generator, a subject built to satisfy
    /// every condition matches, and changing any one conditioned field breaks the match.
    #[test]
    fn property_each_condition_is_necessary() {
        let mut rng = crate::testrng::Rng::new(7);
        for _ in 0..300 {
            let port = rng.range(1025, 65535) as u16;
            let mut rule = AllowRule::empty();
            rule.name = "r".into();
            let use_exe = rng.chance(0.5);
            let use_user = rng.chance(0.5);
            let use_net = rng.chance(0.5);
            let use_port = rng.chance(0.5) || !(use_exe || use_user || use_net);
            if use_exe {
                rule.executables = vec![Pattern::new(&format!("tool{}", rng.range(0, 9))).unwrap()];
            }
            if use_user {
                rule.users = vec![Pattern::new(&format!("u{}", rng.range(0, 9))).unwrap()];
            }
            if use_net {
                rule.destination_networks = vec!["198.51.100.0/24".parse().unwrap()];
            }
            if use_port {
                rule.destination_ports = vec![PortRange { lo: port, hi: port }];
            }
            let exe = format!(
                "/usr/bin/{}",
                rule.executables.first().map_or("other", |s| s.as_str())
            );
            let user = rule
                .users
                .first()
                .map_or("nobody".to_string(), |u| u.as_str().to_string());
            let good = Subject {
                executable: Some(exe.clone()),
                user_name: Some(user.clone()),
                user_name_source: Some(NameSource::Host),
                dst: "198.51.100.9".parse().unwrap(),
                port,
                ..Subject::named(None, "")
            };
            assert!(rule.matches(&good), "{rule:?}");
            if use_exe {
                let s = Subject {
                    executable: Some("/usr/bin/zzz".into()),
                    ..good.clone()
                };
                assert!(!rule.matches(&s));
            }
            if use_user {
                let s = Subject {
                    user_name: Some("zzz".into()),
                    ..good.clone()
                };
                assert!(!rule.matches(&s));
            }
            if use_net {
                let s = Subject {
                    dst: "192.0.2.1".parse().unwrap(),
                    ..good.clone()
                };
                assert!(!rule.matches(&s));
            }
            if use_port {
                let s = Subject {
                    port: port.wrapping_add(1).max(1),
                    ..good.clone()
                };
                assert!(!rule.matches(&s));
            }
        }
    }
}

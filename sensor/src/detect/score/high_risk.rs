//! The high-risk list: a process is on it by its executable's name (version suffixes
//! dropped), its content (a renamed copy), its location, or its comm when nothing else is
//! known.

use crate::detect::{
    policy::Policy,
    score::{HighRisk, MatchedBy},
    subject::Subject,
};

pub(super) fn high_risk(policy: &Policy, s: &Subject) -> Option<HighRisk> {
    let hit = |entry: String, matched_by| Some(HighRisk { entry, matched_by });
    if let Some(name) = s.exe_name() {
        if let Some(e) = high_risk_entry(policy, name) {
            return hit(e, MatchedBy::Executable);
        }
    } else if let Some(e) = high_risk_entry(policy, s.comm.as_deref().unwrap_or("")) {
        return hit(e, MatchedBy::Comm);
    }
    if let Some(e) = &s.content_match {
        return hit(e.clone(), MatchedBy::Content);
    }
    if let Some(l) = s.location.as_deref() {
        return hit(format!("<{l}>"), MatchedBy::Location);
    }
    let exe = s.executable.as_deref()?;
    policy
        .writable_locations
        .iter()
        .find(|p| p.is_match(exe))
        .and_then(|p| hit(format!("<writable {}>", p.as_str()), MatchedBy::Location))
}

/// The list entry `name` matches: exactly, or after removing a version suffix
/// (`python3.11` -> `python3` -> `python`, `ruby3.1` -> `ruby`). A deleted executable's
/// ` (deleted)` marker is ignored.
pub fn high_risk_entry(policy: &Policy, name: &str) -> Option<String> {
    let name = name.strip_suffix(" (deleted)").unwrap_or(name);
    let list = &policy.high_risk_executables;
    if list.contains(name) {
        return Some(name.to_string());
    }
    // Drop `.N` components from the end: python3.11 -> python3.
    let mut cand = name;
    while let Some((head, tail)) = cand.rsplit_once('.') {
        if tail.is_empty() || !tail.bytes().all(|b| b.is_ascii_digit()) {
            break;
        }
        cand = head;
        if list.contains(cand) {
            return Some(cand.to_string());
        }
    }
    // Then trailing digits: python3 -> python, lua5 -> lua.
    let base = cand.trim_end_matches(|c: char| c.is_ascii_digit());
    if base.len() < cand.len() && !base.is_empty() && list.contains(base) {
        return Some(base.to_string());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::{
        policy::DEFAULT_HIGH_RISK,
        score::{
            score,
            tests::{PUBLIC, s, sc},
        },
    };

    #[test]
    fn writable_locations_make_any_binary_high_risk() {
        assert_eq!(s(Some("/root/.cache/x/updater"), 4444).risk, 3);
        let v = s(Some("/home/alice/.cache/pip/agent"), 9001);
        assert_eq!(v.risk, 3);
        assert_eq!(v.high_risk.unwrap().matched_by, MatchedBy::Location);
        assert_eq!(s(Some("/usr/local/bin/updater"), 4444).risk, 1);
        let p = Policy::parse("writable_locations = [\"/srv/drop/*\"]\n").unwrap();
        let sub = Subject::named(Some("/srv/drop/a"), "a").to(PUBLIC.parse().unwrap(), 5555);
        assert_eq!(score(&p, &sub).risk, 2);
        let sub = Subject::named(Some("/root/.cache/a"), "a").to(PUBLIC.parse().unwrap(), 5555);
        assert_eq!(score(&p, &sub).risk, 0, "the list was replaced");
        assert!(Policy::parse("writable_locations = [\"drop/*\"]\n").is_err());
    }

    #[test]
    fn every_high_risk_name_matches() {
        for &name in DEFAULT_HIGH_RISK {
            let v = s(Some(name), 4444);
            assert_eq!(v.risk, 3, "{name}");
            assert_eq!(v.high_risk.unwrap().entry, name);
        }
    }

    #[test]
    fn versioned_interpreters_normalise() {
        let p = Policy::default();
        for (name, entry) in [
            ("python3.11", Some("python3")),
            ("python3.12", Some("python3")),
            ("python2.7", Some("python2")),
            ("ruby3.1", Some("ruby")),
            ("perl5.36.0", Some("perl")),
            ("php8.2", Some("php")),
            ("lua5.4", Some("lua")),
            ("node18", Some("node")),
            ("bash (deleted)", Some("bash")),
            ("nc.openbsd", Some("nc.openbsd")),
            ("python3-config", None),
            ("php-fpm8.2", None),
            ("notcurl", None),
            ("curly", None),
            ("sshd", None),
            ("3", None),
            ("", None),
        ] {
            assert_eq!(high_risk_entry(&p, name).as_deref(), entry, "{name}");
        }
    }

    #[test]
    fn comm_only_when_executable_unknown() {
        let p = Policy::default();
        let dst = PUBLIC.parse().unwrap();
        // A renamed comm does not make a benign executable high-risk...
        assert_eq!(
            sc(&p, &Subject::named(Some("nginx"), "bash"), dst, 5555).risk,
            0
        );
        // ...nor a high-risk executable benign.
        assert_eq!(
            sc(&p, &Subject::named(Some("curl"), "kworker/0:1"), dst, 5555).risk,
            2
        );
        let v = sc(&p, &Subject::named(None, "curl"), dst, 5555);
        assert_eq!(v.risk, 2);
        assert_eq!(v.high_risk.unwrap().matched_by, MatchedBy::Comm);
    }

    #[test]
    fn content_and_location_make_high_risk() {
        let p = Policy::default();
        let dst = PUBLIC.parse().unwrap();
        let copy = Subject {
            content_match: Some("curl".into()),
            location: None,
            ..Subject::named(Some("update-agent"), "update-agent")
        };
        let v = sc(&p, &copy, dst, 4444);
        assert_eq!(
            (v.risk, v.high_risk.as_ref().unwrap().matched_by),
            (3, MatchedBy::Content)
        );
        assert!(v.reasons()[0].contains("content"));
        let memfd = Subject {
            content_match: None,
            location: Some("memfd".into()),
            ..Subject::named(Some("x"), "x")
        };
        let v = sc(&p, &memfd, dst, 5555);
        assert_eq!(
            (v.risk, v.high_risk.unwrap().matched_by),
            (2, MatchedBy::Location)
        );
        // A listed name wins over the other signals; nothing flagged stays tier 1 at most.
        let both = Subject {
            content_match: Some("wget".into()),
            location: Some("tmp".into()),
            ..Subject::named(Some("curl"), "c")
        };
        assert_eq!(
            sc(&p, &both, dst, 4444).high_risk.unwrap().matched_by,
            MatchedBy::Executable
        );
        assert_eq!(
            sc(&p, &Subject::named(Some("x"), "curl"), dst, 4444).risk,
            1,
            "comm ignored when exe known"
        );
    }
}

//! The unmanaged-executable tier's test: no package installed the executable (as
//! enrichment found, `enrich::packages`) and it lies under none of `[unmanaged]
//! trusted_paths`. Scoring ([`crate::detect::score`]) gives such an executable on a known
//! C2 port `[unmanaged] risk` instead of 1.

use crate::{
    detect::{policy::Policy, subject::Subject},
    enrich::identity::normalize,
};

/// Whether the subject's executable is unmanaged: enrichment found it in no package's
/// file list (a container's files are never judged: unknown) and it lies under none of
/// the policy's trusted paths, its path normalised first so `..` cannot reach one.
pub fn unmanaged(policy: &Policy, s: &Subject) -> bool {
    s.unmanaged == Some(true)
        && s.executable.as_deref().is_some_and(|exe| {
            let exe = normalize(exe.strip_suffix(" (deleted)").unwrap_or(exe));
            !policy
                .unmanaged
                .trusted_paths
                .iter()
                .any(|p| p.is_match(&exe))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject(exe: &str, flag: Option<bool>) -> Subject {
        Subject {
            unmanaged: flag,
            ..Subject::named(Some(exe), "x")
        }
    }

    #[rstest::rstest]
    #[case("/var/lib/x/update-agent", Some(true), true)]
    // Managed, or unknown (a container): not unmanaged.
    #[case("/var/lib/x/update-agent", Some(false), false)]
    #[case("/var/lib/x/update-agent", None, false)]
    // Under a trusted path...
    #[case("/usr/local/bin/git", Some(true), false)]
    #[case("/usr/local/bin/agent (deleted)", Some(true), false)]
    // ...but not where users may write by default.
    #[case("/opt/vendor/agent", Some(true), true)]
    #[case("/nix/store/0abc-py/bin/py", Some(true), true)]
    // ...which no spelling reaches from outside one.
    #[case("/opt/../var/lib/agent", Some(true), true)]
    #[case("/opt/./../usr/bin/x", Some(true), true)]
    fn by_default(#[case] exe: &str, #[case] flag: Option<bool>, #[case] want: bool) {
        assert_eq!(
            unmanaged(&Policy::default(), &subject(exe, flag)),
            want,
            "{exe}"
        );
    }

    #[test]
    fn configurable_with_clear_errors() {
        let p = Policy::parse("[unmanaged]\ntrusted_paths = [\"/srv/agents/*\"]\n").unwrap();
        assert!(!unmanaged(&p, &subject("/srv/agents/a", Some(true))));
        // The defaults went with the replaced list.
        assert!(unmanaged(&p, &subject("/opt/x", Some(true))));
        assert_eq!(
            Policy::parse("[unmanaged]\nrisk = 3\n")
                .unwrap()
                .unmanaged
                .risk,
            3
        );
        for (text, msg) in [
            (
                "[unmanaged]\nrisk = 0\n",
                "line 2, column 8: unmanaged risk 0 is not 1",
            ),
            ("[unmanaged]\nrisk = 4\n", "unmanaged risk 4"),
            (
                "[unmanaged]\ntrusted_paths = [\"opt/*\"]\n",
                "line 2, column 18: unmanaged trusted_paths entry \"opt/*\" must be an absolute",
            ),
            ("[unmanaged]\ntrusted = []\n", "unknown field `trusted`"),
        ] {
            let e = format!("{:#}", Policy::parse(text).unwrap_err());
            assert!(e.contains(msg), "{text:?}: {e}");
        }
        // `policy show` prints it, and what it prints parses back to the same policy.
        let p = Policy::parse("[unmanaged]\nrisk = 3\ntrusted_paths = [\"/srv/*\"]\n").unwrap();
        assert_eq!(Policy::parse(&p.to_toml().unwrap()).unwrap(), p);
    }
}

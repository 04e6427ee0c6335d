//! Shell-style patterns for allow rules: `*` is any run of characters (slashes included,
//! so `/opt/*/bin/agent` spans directories), `?` is one character, everything else is
//! literal. No character classes: a policy pattern should read as what it matches.

/// Whether `text` matches `pattern` in full. Iterative with one backtrack point, so
/// hostile input (long paths, many stars) is linear-ish, never exponential.
pub fn matches(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0usize, 0usize);
    // Position after the last `*` and the text position it is currently matched up to.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi + 1, ti));
                pi += 1;
            }
            Some(&c) if c == '?' || Some(&c) == t.get(ti) => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p.get(pi..)
        .is_some_and(|rest| rest.iter().all(|&c| c == '*'))
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn literal_star_question() {
        for (p, t, want) in [
            ("curl", "curl", true),
            ("curl", "curly", false),
            ("curl", "notcurl", false),
            ("*", "", true),
            ("*", "/usr/bin/x", true),
            ("", "", true),
            ("", "a", false),
            ("python3*", "python3.11", true),
            ("python3*", "python2", false),
            ("/opt/*/bin/agent", "/opt/velociraptor/bin/agent", true),
            ("/opt/*/bin/agent", "/opt/a/b/bin/agent", true),
            ("/opt/*/bin/agent", "/opt/a/bin/agent2", false),
            ("*.staging.example.com", "api.staging.example.com", true),
            ("*.staging.example.com", "staging.example.com", false),
            ("web-??", "web-01", true),
            ("web-??", "web-1", false),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
            ("**a", "bbba", true),
        ] {
            assert_eq!(matches(p, t), want, "{p:?} vs {t:?}");
        }
    }

    #[test]
    fn hostile_input_is_fast_enough_to_finish() {
        let text = "a".repeat(5000);
        assert!(!matches("*a*a*a*a*a*b", &text));
    }
}

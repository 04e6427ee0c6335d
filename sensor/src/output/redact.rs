//! Secrets taken out of command lines before they leave the host, and the bound on each
//! printed string (journald and most SIEMs cap a field; a cut is said, never silent).
//!
//! The patterns are one table, [`PATTERNS`]: extend it with a name, a kind and the flags or
//! regex. Every rule that fired is named in `sensor.redacted` (e.g. `["url-userinfo"]`), and
//! the secret is replaced by `<redacted>`. The command line is printed from the redacted
//! arguments, so both say the same.

use std::sync::LazyLock;

use regex::Regex;

pub const REDACTED: &str = "<redacted>";

/// The longest string printed for a command line, an argument or a path (bytes).
pub const MAX_FIELD: usize = 4096;

/// How a pattern finds its secret.
pub enum Kind {
    /// The argument after one of these flags is the secret (`--password hunter2`). With
    /// `keep_user`, a `user:secret` value keeps its user (`curl -u alice:<redacted>`).
    FlagValue {
        flags: &'static [&'static str],
        keep_user: bool,
    },
    /// `--flag=secret` for these flags.
    FlagEquals(&'static [&'static str]),
    /// A regex inside any argument; group 1 is kept, the rest of the match is the secret.
    Inline(&'static str),
}

pub struct Pattern {
    pub name: &'static str,
    pub kind: Kind,
}

/// Flags whose value is a credential in common tools (curl, wget, mysql, psql wrappers,
/// sshpass, httpie, CLIs with --token / --api-key).
const SECRET_FLAGS: &[&str] = &[
    "--password",
    "--passwd",
    "--pass",
    "--token",
    "--secret",
    "--api-key",
    "--apikey",
    "--access-token",
    "--client-secret",
    "--http-password",
    "--ftp-password",
    "--proxy-password",
];

/// An `Inline` regex must not match an argument without ':' or '=' (`redact` skips those).
pub const PATTERNS: &[Pattern] = &[
    Pattern {
        name: "user-password-flag",
        // curl -u / --user / -U / --proxy-user user:pass
        kind: Kind::FlagValue {
            flags: &["-u", "--user", "-U", "--proxy-user"],
            keep_user: true,
        },
    },
    Pattern {
        name: "secret-flag",
        kind: Kind::FlagValue {
            flags: SECRET_FLAGS,
            keep_user: false,
        },
    },
    Pattern {
        name: "secret-flag",
        kind: Kind::FlagEquals(SECRET_FLAGS),
    },
    Pattern {
        name: "authorization-header",
        // -H 'Authorization: Bearer x', 'Proxy-Authorization: Basic x', anywhere in an argument.
        kind: Kind::Inline(r"(?i)((?:proxy-)?authorization\s*:\s*)\S.*"),
    },
    Pattern {
        name: "url-userinfo",
        // https://user:pass@host: the user stays, the password goes.
        kind: Kind::Inline(r"(?i)([a-z][a-z0-9+.-]*://[^/\s:@]*:)[^/\s@]+@"),
    },
    Pattern {
        name: "password-assignment",
        // password=..., PASSWORD=..., passwd:..., api_key=... inside an argument.
        kind: Kind::Inline(
            r"(?i)((?:^|[^a-z0-9])(?:password|passwd|pwd|secret|token|api[_-]?key)\s*[=:]\s*)[^\s&]+",
        ),
    },
];

static REGEXES: LazyLock<Vec<Option<Regex>>> = LazyLock::new(|| {
    PATTERNS
        .iter()
        .map(|p| match p.kind {
            Kind::Inline(re) => Some(Regex::new(re).expect("the built-in patterns compile")),
            _ => None,
        })
        .collect()
});

/// Redacts `args` in place; returns the names of the patterns that fired (deduplicated,
/// in table order).
pub fn redact(args: &mut [String]) -> Vec<&'static str> {
    let mut fired = Vec::new();
    let mut hit = |name: &'static str| {
        if !fired.contains(&name) {
            fired.push(name);
        }
    };
    for (pattern, re) in PATTERNS.iter().zip(REGEXES.iter()) {
        match (&pattern.kind, re) {
            (Kind::FlagValue { flags, keep_user }, _) => {
                for i in 1..args.len() {
                    if !flags.contains(&args[i - 1].as_str()) || args[i] == REDACTED {
                        continue;
                    }
                    args[i] = match args[i].split_once(':') {
                        Some((user, _)) if *keep_user => format!("{user}:{REDACTED}"),
                        None if *keep_user => continue, // a user without a password
                        _ => REDACTED.to_string(),
                    };
                    hit(pattern.name);
                }
            }
            (Kind::FlagEquals(flags), _) => {
                for a in args.iter_mut() {
                    let Some((flag, value)) = a.split_once('=') else {
                        continue;
                    };
                    if flags.contains(&flag) && value != REDACTED {
                        *a = format!("{flag}={REDACTED}");
                        hit(pattern.name);
                    }
                }
            }
            (Kind::Inline(_), Some(re)) => {
                // Every inline pattern needs a ':' or '=' in the argument: most arguments
                // have neither and skip the regex.
                for a in args.iter_mut().filter(|a| a.contains([':', '='])) {
                    if re.is_match(a) {
                        let replaced = re.replace_all(a, |c: &regex::Captures| {
                            let keep = c.get(1).map_or("", |m| m.as_str());
                            let tail = if c[0].ends_with('@') { "@" } else { "" };
                            format!("{keep}{REDACTED}{tail}")
                        });
                        if replaced != a.as_str() {
                            *a = replaced.into_owned();
                            hit(pattern.name);
                        }
                    }
                }
            }
            (Kind::Inline(_), None) => {}
        }
    }
    fired
}

/// A URL whose password runs to the end of an argument whose end was not kept (the
/// sensor keeps a bounded start of a command line): the `@` that ends the password, which
/// `url-userinfo` needs, is in the part not kept.
static CUT_USERINFO: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)([a-z][a-z0-9+.-]*://[^/\s:@]*:)[^/\s@]+$").expect("the pattern compiles")
});

/// Redacts what a cut argument's end would have shown to be a secret (see
/// [`CUT_USERINFO`]); the pattern's name when it fired.
pub fn redact_cut(arg: &mut String) -> Option<&'static str> {
    let replaced = CUT_USERINFO.replace(arg, |c: &regex::Captures| format!("{}{REDACTED}", &c[1]));
    if replaced == arg.as_str() {
        return None;
    }
    *arg = replaced.into_owned();
    Some("url-userinfo")
}

/// `s` cut to at most `max` bytes on a character boundary; true when it was cut.
pub fn bound(s: &mut String, max: usize) -> bool {
    if s.len() <= max {
        return false;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(line: &[&str]) -> (Vec<String>, Vec<&'static str>) {
        let mut a: Vec<String> = line.iter().map(|s| s.to_string()).collect();
        let fired = redact(&mut a);
        (a, fired)
    }

    #[test]
    fn the_issues_examples_are_redacted() {
        let (a, f) = run(&["curl", "-u", "alice:hunter2", "https://203.0.113.7:8088/"]);
        assert_eq!(a[2], "alice:<redacted>");
        assert_eq!(f, ["user-password-flag"]);
        let (a, f) = run(&["mysql", "--password=hunter2", "-h", "db"]);
        assert_eq!(a[1], "--password=<redacted>");
        assert_eq!(f, ["secret-flag"]);
        let (a, f) = run(&["app", "--token", "abc123"]);
        assert_eq!(a[2], "<redacted>");
        assert_eq!(f, ["secret-flag"]);
        let (a, f) = run(&[
            "curl",
            "-H",
            "Authorization: Bearer eyJhbGciOi.x.y",
            "http://x",
        ]);
        assert_eq!(a[2], "Authorization: <redacted>");
        assert_eq!(f, ["authorization-header"]);
        let (a, f) = run(&["git", "clone", "https://bob:s3cr3t@example.com/r.git"]);
        assert_eq!(a[2], "https://bob:<redacted>@example.com/r.git");
        assert_eq!(f, ["url-userinfo"]);
        let (a, f) = run(&["sh", "-c", "DB_PASSWORD=hunter2 ./run && curl -u a:b x"]);
        assert!(!a[2].contains("hunter2"), "{}", a[2]);
        assert_eq!(f, ["password-assignment"]);
    }

    #[test]
    fn harmless_lines_are_untouched() {
        for line in [
            &["nc", "-z", "203.0.113.7", "4444"][..],
            &["curl", "-u", "alice", "http://x"],
            &["curl", "https://example.com/a:b@c"],
            &["python3", "-c", "print('user')"],
        ] {
            let (a, f) = run(line);
            assert!(f.is_empty(), "{line:?} -> {a:?}");
            assert_eq!(a, line);
        }
    }

    #[test]
    fn bound_cuts_on_a_character_boundary() {
        let mut s = "é".repeat(3000); // 6000 bytes
        assert!(bound(&mut s, MAX_FIELD));
        assert!(s.len() <= MAX_FIELD && s.len() >= MAX_FIELD - 1);
        let mut short = "abc".to_string();
        assert!(!bound(&mut short, MAX_FIELD));
    }
}

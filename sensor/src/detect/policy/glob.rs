//! Shell-style patterns for allow rules: `*` is any run of characters (slashes included,
//! so `/opt/*/bin/agent` spans directories), `?` is one character, everything else is
//! literal. No character classes: a policy pattern should read as what it matches.
//! Compiled once, when the policy loads (globset), so matching allocates nothing.

use globset::{GlobBuilder, GlobMatcher};
use serde::Serialize;

/// One compiled pattern, compared and printed as written.
#[derive(Debug, Clone)]
pub struct Pattern {
    text: String,
    matcher: GlobMatcher,
}

impl Pattern {
    pub fn new(text: &str) -> Result<Self, String> {
        // globset's syntax is richer: escape what is literal here, and fold runs of `*`
        // (a `**` means something else to globset; here it is one `*`).
        let mut glob = String::with_capacity(text.len() + 8);
        let mut star = false;
        for c in text.chars() {
            match c {
                '*' if star => continue,
                '*' | '?' => glob.push(c),
                '[' | ']' | '{' | '}' | '\\' | ',' | '!' | '^' | '-' => {
                    glob.push('\\');
                    glob.push(c);
                }
                _ => glob.push(c),
            }
            star = c == '*';
        }
        let matcher = GlobBuilder::new(&glob)
            .literal_separator(false)
            .backslash_escape(true)
            .build()
            .map_err(|e| format!("pattern {text:?}: {e}"))?
            .compile_matcher();
        Ok(Self {
            text: text.to_string(),
            matcher,
        })
    }

    /// Whether `text` matches in full.
    pub fn is_match(&self, text: &str) -> bool {
        self.matcher.is_match(text)
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for Pattern {}

impl Serialize for Pattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::Pattern;

    fn matches(pattern: &str, text: &str) -> bool {
        Pattern::new(pattern).unwrap().is_match(text)
    }

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

    #[test]
    fn everything_but_star_and_question_is_literal() {
        for (p, t, want) in [
            ("a[bc]d", "a[bc]d", true),
            ("a[bc]d", "abd", false),
            ("{a,b}", "{a,b}", true),
            ("{a,b}", "a", false),
            ("a\\b", "a\\b", true),
            ("!x", "!x", true),
        ] {
            assert_eq!(matches(p, t), want, "{p:?} vs {t:?}");
        }
        assert_eq!(Pattern::new("ci-*").unwrap().as_str(), "ci-*");
    }
}

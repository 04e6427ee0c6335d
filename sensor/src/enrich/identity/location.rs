//! Where an executable lives, judged on its normalised path.

/// `path` normalised lexically, as the kernel would walk it were every component a
/// directory: `//` and `.` dropped, `..` taking one component off (never above `/`). A
/// relative path stays relative. Used before classifying a path by its prefix, so
/// `/usr/../tmp/x` is judged as `/tmp/x`.
pub fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    let body = parts.join("/");
    if path.starts_with('/') {
        format!("/{body}")
    } else {
        body
    }
}

/// Where an executable lives, when that alone makes it suspicious. The path is normalised
/// first, so no `..` or `//` spelling moves it out of a writable location.
pub fn suspicious_location(exe: &str, nlink: Option<u32>) -> Option<&'static str> {
    let deleted = exe.ends_with(" (deleted)");
    let exe = normalize(exe.strip_suffix(" (deleted)").unwrap_or(exe));
    let under = |dir: &str| exe.strip_prefix(dir).is_some_and(|r| r.starts_with('/'));
    if exe.starts_with("/memfd:") {
        Some("memfd")
    } else if under("/dev/fd") || under("/proc/self/fd") || under("/proc/thread-self/fd") {
        Some("fd")
    } else if deleted || nlink == Some(0) {
        Some("deleted")
    } else if under("/dev/shm") {
        Some("dev_shm")
    } else if under("/tmp") || under("/var/tmp") {
        Some("tmp")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[rstest::rstest]
    #[case("/memfd:x (deleted)", None, Some("memfd"))]
    #[case("/dev/fd/3", Some(0), Some("fd"))]
    #[case("/proc/self/fd/3", None, Some("fd"))]
    #[case("/usr/bin/x (deleted)", None, Some("deleted"))]
    #[case("/usr/bin/x", Some(0), Some("deleted"))]
    #[case("/dev/shm/x", Some(1), Some("dev_shm"))]
    #[case("/tmp/x", Some(1), Some("tmp"))]
    #[case("/var/tmp/x", Some(1), Some("tmp"))]
    #[case("/usr/bin/curl", Some(1), None)]
    #[case("/tmpfoo/x", None, None)]
    // No spelling dodges the check.
    #[case("/usr/../tmp/x", Some(1), Some("tmp"))]
    #[case("//tmp/x", Some(1), Some("tmp"))]
    #[case("/tmp/./x", Some(1), Some("tmp"))]
    #[case("/var/tmp/../tmp/x", Some(1), Some("tmp"))]
    #[case("/../../tmp/x", Some(1), Some("tmp"))]
    #[case("/usr/bin/../../dev/shm/.x/y", Some(1), Some("dev_shm"))]
    #[case("/./dev//fd/3", None, Some("fd"))]
    #[case("/tmp/../usr/bin/curl", Some(1), None)]
    fn locations(#[case] exe: &str, #[case] nlink: Option<u32>, #[case] want: Option<&str>) {
        assert_eq!(suspicious_location(exe, nlink), want, "{exe}");
    }

    #[rstest::rstest]
    #[case("/usr/../tmp/x", "/tmp/x")]
    #[case("//tmp/x", "/tmp/x")]
    #[case("/tmp/./x", "/tmp/x")]
    #[case("/var/tmp/../tmp/x", "/var/tmp/x")]
    #[case("/..", "/")]
    #[case("/a/b/", "/a/b")]
    #[case("a/../b", "b")]
    fn normalises_lexically(#[case] path: &str, #[case] want: &str) {
        assert_eq!(normalize(path), want);
    }
}

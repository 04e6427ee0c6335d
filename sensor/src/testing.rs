//! Unit-test helpers.

/// A test that cannot run here says so, and fails under `CI=true`, where everything it
/// needs is set up by the project's own scripts.
pub fn skip(test: &str, why: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test} cannot run under CI: {why}");
    }
    eprintln!("SKIPPED {test}: {why}");
}

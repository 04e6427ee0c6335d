//! `cargo xtask docs`: the book in docs/ (mdBook, pinned, installed when missing) built into
//! target/book, and every internal link of the book and the README checked: relative paths
//! must name a file or directory of the repository, and `#anchors` a heading of the page
//! they point into. mdBook checks none of this itself; mdbook-linkcheck would, but it is an
//! unmaintained plugin that pulls an HTTP stack, so a short checker over pulldown-cmark's
//! events does the job here.

use std::{
    collections::{BTreeSet, HashMap},
    path::{Component, Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use pulldown_cmark::{Event, Parser, Tag, TagEnd};

/// The mdBook release the book is built with (`cargo install --locked`, no default
/// features: no local server, no file watcher, no search index).
pub const MDBOOK_VERSION: &str = "0.5.4";

/// `$CARGO_HOME/bin/mdbook` at the pinned version, installed from crates.io when missing
/// (about 4 minutes on 2 cores).
pub fn ensure_mdbook() -> Result<PathBuf> {
    let bin = crate::toolchain::cargo_home().join("bin/mdbook");
    let want = format!("mdbook v{MDBOOK_VERSION}");
    let have = Command::new(&bin)
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if have.as_deref() != Some(want.as_str()) {
        crate::toolchain::run(
            Command::new("cargo")
                .args([
                    "install",
                    "mdbook",
                    "--locked",
                    "--force",
                    "--no-default-features",
                ])
                .args(["--version", MDBOOK_VERSION])
                .env_remove("RUSTUP_TOOLCHAIN"),
        )?;
    }
    Ok(bin)
}

/// Builds the book into target/book, then checks its links and the README's.
pub fn build(root: &Path) -> Result<()> {
    let mdbook = ensure_mdbook()?;
    crate::toolchain::run(Command::new(&mdbook).arg("build").arg(root.join("docs")))?;
    check_links(root)?;
    eprintln!(
        "xtask docs: {} built, links checked",
        root.join("target/book/index.html").display()
    );
    Ok(())
}

/// A link found in a page: where it is and what it points to.
struct Link {
    file: PathBuf,
    line: usize,
    dest: String,
}

/// What one Markdown file holds: its links and its headings' anchors.
struct Page {
    links: Vec<Link>,
    anchors: BTreeSet<String>,
}

/// The anchor mdBook (and GitHub) give a heading: lower case, spaces to `-`, letters,
/// digits, `-` and `_` kept, everything else dropped; repeats get `-1`, `-2`, ...
fn anchor(text: &str) -> String {
    text.chars()
        .filter_map(|c| {
            if c.is_alphanumeric() || c == '_' || c == '-' {
                Some(c.to_lowercase().collect::<String>())
            } else if c.is_whitespace() {
                Some("-".to_string())
            } else {
                None
            }
        })
        .collect()
}

fn parse(file: &Path, text: &str) -> Page {
    let line_of = |offset: usize| text[..offset].matches('\n').count() + 1;
    let mut links = Vec::new();
    let mut anchors = BTreeSet::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut heading: Option<String> = None;
    for (event, range) in Parser::new(text).into_offset_iter() {
        match event {
            Event::Start(Tag::Link { dest_url, .. } | Tag::Image { dest_url, .. }) => {
                links.push(Link {
                    file: file.to_path_buf(),
                    line: line_of(range.start),
                    dest: dest_url.to_string(),
                })
            }
            Event::Start(Tag::Heading { .. }) => heading = Some(String::new()),
            Event::Text(t) | Event::Code(t) => {
                if let Some(h) = heading.as_mut() {
                    h.push_str(&t);
                }
            }
            Event::End(TagEnd::Heading(_)) => {
                if let Some(h) = heading.take() {
                    let base = anchor(&h);
                    let n = seen.entry(base.clone()).or_insert(0);
                    anchors.insert(if *n == 0 {
                        base.clone()
                    } else {
                        format!("{base}-{n}")
                    });
                    *n += 1;
                }
            }
            _ => {}
        }
    }
    Page { links, anchors }
}

/// `path` with `.` and `..` folded, or None when it climbs above `root`.
fn normalise(root: &Path, path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::CurDir => {}
            c => out.push(c),
        }
    }
    out.starts_with(root).then_some(out)
}

/// Every broken internal link of README.md and docs/, one message each; and every page
/// in docs/ that SUMMARY.md does not list (the book would leave it out).
pub fn broken_links(root: &Path) -> Result<Vec<String>> {
    let docs = root.join("docs");
    let mut files = vec![root.join("README.md")];
    for entry in std::fs::read_dir(&docs).with_context(|| format!("listing {}", docs.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "md") {
            files.push(path);
        }
    }
    files.sort();
    let mut pages = HashMap::new();
    for f in &files {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        pages.insert(f.clone(), parse(f, &text));
    }
    let mut broken = Vec::new();
    let summary = &pages[&docs.join("SUMMARY.md")];
    let listed: BTreeSet<PathBuf> = summary
        .links
        .iter()
        .filter_map(|l| normalise(root, &docs.join(&l.dest)))
        .collect();
    for f in &files {
        if f.parent() == Some(docs.as_path()) && !f.ends_with("SUMMARY.md") && !listed.contains(f) {
            broken.push(format!("{}: not in docs/SUMMARY.md", rel(root, f)));
        }
    }
    for page in pages.values() {
        for link in &page.links {
            if let Some(why) = check(root, &pages, link) {
                broken.push(format!(
                    "{}:{}: {} ({why})",
                    rel(root, &link.file),
                    link.line,
                    link.dest
                ));
            }
        }
    }
    broken.sort();
    Ok(broken)
}

fn rel(root: &Path, f: &Path) -> String {
    f.strip_prefix(root).unwrap_or(f).display().to_string()
}

/// Why `link` is broken, or None.
fn check(root: &Path, pages: &HashMap<PathBuf, Page>, link: &Link) -> Option<String> {
    let dest = link.dest.as_str();
    // URLs with a scheme (https:, mailto:) are external: not ours to check offline.
    if dest
        .split(['/', '#'])
        .next()
        .is_some_and(|first| first.contains(':'))
    {
        return None;
    }
    let (path, fragment) = match dest.split_once('#') {
        Some((p, f)) => (p, Some(f)),
        None => (dest, None),
    };
    let target = if path.is_empty() {
        link.file.clone()
    } else if path.starts_with('/') {
        return Some("absolute path: write it relative to this file".into());
    } else {
        let dir = link.file.parent().unwrap_or(root);
        match normalise(root, &dir.join(path)) {
            Some(t) => t,
            None => return Some("leaves the repository".into()),
        }
    };
    if !target.exists() {
        return Some(format!("no such file: {}", rel(root, &target)));
    }
    let fragment = fragment?;
    match pages.get(&target) {
        Some(page) if page.anchors.contains(fragment) => None,
        Some(_) => Some(format!("no heading #{fragment} in {}", rel(root, &target))),
        None => Some(format!(
            "#{fragment} into {}, which is not a page of the book or the README",
            rel(root, &target)
        )),
    }
}

/// Fails naming every broken link.
pub fn check_links(root: &Path) -> Result<()> {
    let broken = broken_links(root)?;
    if !broken.is_empty() {
        bail!(
            "{} broken link(s) in README.md and docs/:\n  {}",
            broken.len(),
            broken.join("\n  ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchors_are_mdbooks() {
        assert_eq!(
            anchor("The sensor's counters: sensor-stats, sensor-stopped, /metrics"),
            "the-sensors-counters-sensor-stats-sensor-stopped-metrics"
        );
        assert_eq!(
            anchor("On a server: systemd and journald"),
            "on-a-server-systemd-and-journald"
        );
    }

    #[test]
    fn the_book_and_readme_links_hold() {
        let root = crate::workspace_root();
        let broken = broken_links(&root).unwrap();
        assert!(broken.is_empty(), "{broken:#?}");
    }

    /// A scratch repository with a README and a book whose links break in each way.
    #[test]
    fn each_kind_of_broken_link_is_named() {
        let root = crate::workspace_root().join("target/xtask-docs-test");
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("docs")).unwrap();
        std::fs::write(
            root.join("README.md"),
            "# T\n\n## Go\n\n[ok](docs/a.md#second) [ok](#go) [bad](docs/a.md#nope) \
             [bad](docs/missing.md) [bad](../outside.md) [ok](https://example.org/x)\n",
        )
        .unwrap();
        std::fs::write(root.join("docs/SUMMARY.md"), "# Summary\n\n- [A](a.md)\n").unwrap();
        std::fs::write(
            root.join("docs/a.md"),
            "# A\n\n## Second\n\n[ok](../README.md#go) [bad](#first) [bad](/etc/passwd)\n",
        )
        .unwrap();
        std::fs::write(root.join("docs/orphan.md"), "# O\n").unwrap();
        let broken = broken_links(&root).unwrap();
        std::fs::remove_dir_all(&root).unwrap();
        assert_eq!(
            broken,
            [
                "README.md:5: ../outside.md (leaves the repository)",
                "README.md:5: docs/a.md#nope (no heading #nope in docs/a.md)",
                "README.md:5: docs/missing.md (no such file: docs/missing.md)",
                "docs/a.md:5: #first (no heading #first in docs/a.md)",
                "docs/a.md:5: /etc/passwd (absolute path: write it relative to this file)",
                "docs/orphan.md: not in docs/SUMMARY.md",
            ]
        );
    }
}

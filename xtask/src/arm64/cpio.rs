//! The guest's initramfs: a gzipped `newc` cpio archive, written here because the format is
//! forty lines and the host may have no `cpio` (Debian's is a separate package).

use std::{io::Write, path::Path};

use anyhow::{Context, Result};

/// One archive entry: a directory, a file (mode, contents) or a symbolic link.
pub enum Entry<'a> {
    Dir,
    File(u32, &'a [u8]),
    Link(&'a str),
}

pub struct Archive {
    buf: Vec<u8>,
    ino: u32,
}

impl Archive {
    pub fn new() -> Self {
        Self {
            buf: Vec::new(),
            ino: 1,
        }
    }

    pub fn add(&mut self, name: &str, entry: Entry<'_>) {
        let (mode, data): (u32, &[u8]) = match entry {
            Entry::Dir => (0o040755, &[]),
            Entry::File(perm, data) => (0o100000 | perm, data),
            Entry::Link(target) => (0o120777, target.as_bytes()),
        };
        let name = name.trim_start_matches('/');
        let header = format!(
            "070701{:08x}{mode:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            0,
            0,
            name.len() + 1,
            0
        );
        self.ino += 1;
        self.buf.extend_from_slice(header.as_bytes());
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
    }

    /// A directory and its parents, once each.
    pub fn dirs(&mut self, path: &str) {
        let mut at = String::new();
        for part in path.trim_matches('/').split('/') {
            at.push('/');
            at.push_str(part);
            self.add(&at, Entry::Dir);
        }
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    /// Ends the archive and writes it gzipped (the kernel unpacks gzip on every config).
    pub fn write(mut self, out: &Path) -> Result<()> {
        self.add("TRAILER!!!", Entry::Dir);
        let mut gz = std::process::Command::new("gzip")
            .arg("-1")
            .stdin(std::process::Stdio::piped())
            .stdout(
                std::fs::File::create(out)
                    .with_context(|| format!("creating {}", out.display()))?,
            )
            .spawn()
            .context("running gzip")?;
        gz.stdin
            .as_mut()
            .context("gzip stdin")?
            .write_all(&self.buf)?;
        drop(gz.stdin.take());
        anyhow::ensure!(gz.wait()?.success(), "gzip failed");
        Ok(())
    }
}

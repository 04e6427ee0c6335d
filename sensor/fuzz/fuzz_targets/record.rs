#![no_main]
//! Any bytes as a ring-buffer record: decoded or refused with an error, never a panic.

use libfuzzer_sys::fuzz_target;
use sensor::kernel::records;

fuzz_target!(|data: &[u8]| {
    if let Ok(record) = records::decode(data) {
        let _ = format!("{record:?}");
    }
});

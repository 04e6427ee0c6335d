#![no_main]
//! Any bytes as a recording for `sensor replay`: every line is re-scored or reported as
//! malformed, and every line printed is one JSON object.

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use sensor::{
    cmd::replay::replay,
    detect::{
        engine::{Config, Engine},
        policy::Policy,
    },
};

/// Built once: compiling the default policy's patterns per input would be most of the time.
static POLICY: OnceLock<Arc<Policy>> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let policy = POLICY.get_or_init(|| Arc::new(Policy::default())).clone();
    // A fresh engine per input: no state carried from one input to the next.
    let mut engine = Engine::new(policy, Config::default());
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let summary = replay(&mut engine, data, &mut out, &mut err).expect("in-memory replay");
    assert!(summary.lines >= summary.connections + summary.malformed + summary.skipped);
    for line in out.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let v: serde_json::Value = serde_json::from_slice(line).expect("a printed line is JSON");
        assert!(v.is_object());
    }
});

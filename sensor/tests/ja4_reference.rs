//! The sensor's JA4 against an independent implementation: `ja4plus` from PyPI (pinned in
//! deploy/siem/requirements.txt, run by deploy/siem/ja4_reference.py in the venv
//! `cargo xtask test` makes and names in SIEM_PYTHON), over the ClientHellos curl and
//! openssl sent on loopback (sensor/tests/fixtures/protocol, made by its capture.py). The
//! unit tests compare with the values recorded in ja4-reference.json; this re-derives them.

use std::{path::Path, process::Command};

use sensor::enrich::protocol::{Protocol, inspect};

#[test]
fn ja4_matches_the_reference_package() {
    let Some(python) = std::env::var_os("SIEM_PYTHON") else {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("SIEM_PYTHON is not set under CI (cargo xtask test sets it)");
        }
        eprintln!("SKIPPED ja4 reference: SIEM_PYTHON not set (run cargo xtask test)");
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = root.join("sensor/tests/fixtures/protocol");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("tls-") && n.ends_with(".bin"))
        })
        .collect();
    files.sort();
    assert!(files.len() >= 5, "{files:?}");
    let out = Command::new(&python)
        .arg(root.join("deploy/siem/ja4_reference.py"))
        .args(&files)
        .output()
        .expect("starting the reference python");
    assert!(
        out.status.success(),
        "reference failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want: serde_json::Value = serde_json::from_slice(&out.stdout).expect("reference output");
    let recorded: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("ja4-reference.json")).unwrap())
            .unwrap();
    for f in &files {
        let name = f.file_name().unwrap().to_str().unwrap();
        let want = want[f.to_str().unwrap()].as_str().expect(name);
        let facts = inspect(&std::fs::read(f).unwrap());
        assert_eq!(facts.protocol, Protocol::Tls, "{name}");
        let got = facts.tls.and_then(|t| t.ja4);
        assert_eq!(got.as_deref(), Some(want), "{name}: sensor vs ja4plus");
        assert_eq!(
            recorded[name].as_str(),
            Some(want),
            "{name}: recorded value is stale"
        );
    }
}

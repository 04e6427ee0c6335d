//! Identity by content across stages: the host's high-risk binaries, found by detection's
//! list, fingerprinted by enrichment.

use std::{fs::File, os::unix::fs::MetadataExt, path::Path};

use sensor::{
    detect::{policy::Policy, score::high_risk_entry},
    enrich::identity::{Identities, build_id},
};

#[test]
fn copies_match_by_content_and_others_do_not() {
    let mut ids = Identities::scan(|n| high_risk_entry(&Policy::default(), n), Path::new("/"));
    assert!(
        ids.known_files > 0,
        "no high-risk binaries found on this host"
    );
    let dir = std::env::temp_dir().join(format!("identity-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sh = std::fs::canonicalize("/bin/sh").unwrap();
    let copy = dir.join("innocent-name");
    std::fs::copy(&sh, &copy).unwrap();
    let entry = ids
        .content_match(&copy, None)
        .expect("a copy of sh is recognised");
    assert!(high_risk_entry(&Policy::default(), &entry).is_some());
    // Appending bytes changes the hash but not the build-id.
    let mut data = std::fs::read(&copy).unwrap();
    data.extend_from_slice(b"padding");
    let padded = dir.join("padded");
    std::fs::write(&padded, &data).unwrap();
    if build_id(&File::open(&copy).unwrap()).is_some() {
        assert!(ids.content_match(&padded, None).is_some());
    }
    // The test binary itself is nobody's copy; and a second look comes from the cache.
    let me = std::env::current_exe().unwrap();
    assert_eq!(ids.content_match(&me, None), None);
    assert_eq!(ids.content_match(&me, None), None);
    assert!(ids.content_match(Path::new("/nonexistent"), None).is_none());
    // The inode the kernel mapped is required when given: a swapped-in file is refused.
    let ino = std::fs::metadata(&copy).unwrap().ino();
    assert!(ids.content_match(&copy, Some(ino)).is_some());
    assert!(ids.content_match(&copy, Some(ino + 1)).is_none());
    // A FIFO at the path neither blocks nor matches.
    let fifo = dir.join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    assert!(ids.content_match(&fifo, None).is_none());
    let _ = std::fs::remove_dir_all(&dir);
}

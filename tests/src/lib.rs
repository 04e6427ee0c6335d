//! Harness for the real-kernel tests: network namespaces the test creates and deletes,
//! programs started inside them, and the real `sensor` binary whose JSON lines are
//! collected and checked.
//!
//! Network rule: every address lives inside a namespace pair made here, the client side
//! has no default route, and destinations are documentation or private ranges assigned
//! to the server side. A connect to a closed port there is answered with a RST.

use std::{
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context, Result};

mod bpf;
pub mod ecs;
mod journal;
mod kube;
mod mounts;
mod net;
mod process;
mod sensor;
mod sshd;
mod unit_cgroup;
pub mod wait;

pub use bpf::{bpf_programs_of, expected_programs, loaded_program_ids, still_loaded};
pub use ecs::{assert_alert, assert_tcp_alert, counter, is_action};
pub use journal::{JOURNAL_SOCKET, Journald};
pub use kube::{daemonset, k8s_python, kustomize, overlay, yaml_documents};
pub use mounts::{Cgroup2, cgroup2_root, contained, mounted_types, program_dirs, without_mounts};
pub use net::{Net, http_get, metric, metric_counter, public_net};
pub use process::{
    Running, cap_number, capability_sets, collect, kept_capabilities, memory_kib, real_exe,
    status_kib,
};
pub use sensor::{ATTACH_LOCK, Sensor, auto_hook, check_hook, forced_probe, is_connection, replay};
pub use sshd::sshd_config;
pub use unit_cgroup::{UnitCgroup, native_datagram};
pub use wait::{poll_until, wait_for_value, wait_until};

/// A directory for test programs, outside every location the sensor treats as suspicious
/// (`/tmp`, `/var/tmp`, `/dev/shm`), so verdicts do not depend on where the repository is
/// checked out. Removed on drop.
pub struct Scratch {
    pub dir: PathBuf,
}

impl Scratch {
    pub fn new(name: &str) -> Result<Self> {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let dir = PathBuf::from("/var/lib/t1571-sensor-tests")
            .join(format!("{name}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        // Readable by every user whatever the umask: one test runs a program as nobody.
        use std::os::unix::fs::PermissionsExt;
        for d in [dir.parent(), Some(dir.as_path())].into_iter().flatten() {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))
                .with_context(|| format!("chmod {}", d.display()))?;
        }
        Ok(Self { dir })
    }

    /// A copy of the `connector` test program (pass `env!("CARGO_BIN_EXE_connector")`)
    /// here: an ordinary program on no list.
    pub fn connector(&self, built: &str) -> Result<String> {
        let dst = self.dir.join("connector");
        if !dst.exists() {
            std::fs::copy(built, &dst).with_context(|| format!("copying {built}"))?;
        }
        Ok(dst.to_string_lossy().into_owned())
    }

    /// A container's root here, `rootfs/` with an empty `etc/`; returns its path.
    pub fn rootfs(&self) -> Result<PathBuf> {
        let root = self.dir.join("rootfs");
        std::fs::create_dir_all(root.join("etc"))
            .with_context(|| format!("creating {}/etc", root.display()))?;
        Ok(root)
    }
}

/// How many processes a burst test starts: `SENSOR_TEST_BURST` (smaller in emulated VMs),
/// else `default`.
pub fn burst_count(default: usize) -> Result<usize> {
    std::env::var("SENSOR_TEST_BURST").map_or(Ok(default), |v| {
        v.parse::<usize>()
            .ok()
            .filter(|&n| n > 0)
            .with_context(|| format!("SENSOR_TEST_BURST={v:?} is not a positive count"))
    })
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Real-kernel tests need root. Outside CI they skip with a reason; under CI=true they fail.
pub fn root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: real-kernel tests must run as root under CI");
    }
    eprintln!("SKIPPED {test}: needs root to load eBPF programs and create network namespaces");
    false
}

/// The sensor binary: $SENSOR_BIN (set by `cargo xtask test`) or the workspace's debug build.
pub fn sensor_bin() -> PathBuf {
    std::env::var_os("SENSOR_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/t1571-sensor")
        })
}

pub(crate) static NEXT: AtomicU32 = AtomicU32::new(0);

/// The workspace's root directory.
pub fn repo() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests sit in the workspace")
        .to_path_buf()
}

//! Builds the kernel programs (`sensor-ebpf`, target bpfel-unknown-none, nightly) and
//! leaves the object in OUT_DIR for `include_bytes!`, so the `sensor` binary is all that
//! ships. `cargo xtask setup` installs what this needs; `SENSOR_EBPF_OBJECT=path` uses a
//! prebuilt object instead. Kept by hand rather than aya-build: aya-build has no prebuilt
//! override and does not scrub the outer build's toolchain variables, both needed here.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

fn main() {
    let manifest =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest
        .parent()
        .expect("sensor/ sits in the workspace")
        .to_path_buf();
    let out =
        PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("sensor-ebpf.o");
    println!("cargo:rerun-if-env-changed=SENSOR_EBPF_OBJECT");

    if let Some(prebuilt) = env::var_os("SENSOR_EBPF_OBJECT") {
        println!("cargo:rerun-if-changed={}", Path::new(&prebuilt).display());
        std::fs::copy(&prebuilt, &out)
            .unwrap_or_else(|e| panic!("copying SENSOR_EBPF_OBJECT={prebuilt:?}: {e}"));
        return;
    }
    for p in [
        "sensor-ebpf/src",
        "sensor-ebpf/Cargo.toml",
        "sensor-ebpf/common/src",
        "sensor-ebpf/common/Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(p).display());
    }

    // The programs read kprobe arguments from `struct pt_regs`, whose layout is the
    // architecture's: aya-ebpf takes it from AYA_BPF_TARGET_ARCH (else the build host's), so
    // it must be the sensor's own target, not the machine building it.
    let arch = env::var("CARGO_CFG_TARGET_ARCH").expect("cargo sets CARGO_CFG_TARGET_ARCH");
    // A separate target dir: the outer cargo holds the lock on the main one. One per
    // foreign architecture, so building both does not rebuild each time.
    let target_dir = match arch.as_str() {
        "x86_64" => root.join("target").join("bpf"),
        other => root.join("target").join(format!("bpf-{other}")),
    };
    let mut cmd = Command::new("rustup");
    cmd.args([
        "run",
        "nightly",
        "cargo",
        "build",
        "--release",
        "-Z",
        "build-std=core",
    ])
    .args([
        "--target",
        "bpfel-unknown-none",
        "-p",
        "sensor-ebpf",
        "--target-dir",
    ])
    .arg(&target_dir)
    .current_dir(&root)
    .env("AYA_BPF_TARGET_ARCH", &arch);
    // The benchmark's empty programs ship only with the sensor's own test hooks.
    if env::var_os("CARGO_FEATURE_TEST_HOOKS").is_some() {
        cmd.args(["--features", "test-hooks"]);
    }
    // The outer build's compiler settings (clippy's wrapper, host RUSTFLAGS, stable
    // toolchain) must not leak into the nightly BPF build.
    for var in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTUP_TOOLCHAIN",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO",
    ] {
        cmd.env_remove(var);
    }
    let output = cmd.output().unwrap_or_else(|e| {
        panic!(
            "cannot run `rustup` to build the eBPF programs ({e}); run `cargo xtask setup` first"
        )
    });
    if !output.status.success() {
        panic!(
            "building sensor-ebpf failed; `cargo xtask setup` installs nightly rust-src and bpf-linker.\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let built = target_dir.join("bpfel-unknown-none/release/sensor-ebpf");
    std::fs::copy(&built, &out).unwrap_or_else(|e| panic!("copying {}: {e}", built.display()));
}

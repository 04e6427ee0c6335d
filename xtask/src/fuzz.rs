//! `cargo xtask fuzz [--seconds N] [TARGET]`: the libFuzzer targets in sensor/fuzz (cargo
//! fuzz, nightly), each started from its seed corpus kept in the repository
//! (sensor/fuzz/corpus/TARGET). What the fuzzer finds new goes to target/fuzz/corpus, not
//! into the repository; a crash stops the run and names the input that caused it.

use std::{
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

/// The fuzz targets (sensor/fuzz/fuzz_targets): the policy parser, `sensor replay`'s
/// line parser, the ring-buffer record decoder, a flow's first bytes.
pub const TARGETS: &[&str] = &["policy", "replay_line", "record", "first_bytes"];

/// Seconds per target in `cargo xtask test`.
pub const SHORT: u64 = 20;

#[derive(clap::Args)]
pub struct Args {
    /// How long to fuzz each target.
    #[arg(long, default_value_t = 300)]
    pub seconds: u64,
    /// One target (policy, replay_line, record, first_bytes); all when left out.
    pub target: Option<String>,
}

pub fn run(root: &Path, args: &Args) -> Result<()> {
    let targets: Vec<&str> = match args.target.as_deref() {
        None => TARGETS.to_vec(),
        Some(t) if TARGETS.contains(&t) => vec![t],
        Some(t) => bail!(
            "no fuzz target {t:?}; the targets are {}",
            TARGETS.join(", ")
        ),
    };
    crate::toolchain::ensure(false)?;
    if !crate::toolchain::have("c++") {
        bail!("libFuzzer needs a C++ compiler: apt-get install g++ (cargo xtask test installs it)");
    }
    ensure_cargo_fuzz()?;
    for t in targets {
        fuzz(root, t, args.seconds)?;
    }
    Ok(())
}

/// cargo-fuzz from crates.io when it is missing.
fn ensure_cargo_fuzz() -> Result<()> {
    let have = nightly_cargo()
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if have {
        return Ok(());
    }
    let status = Command::new("cargo")
        .args(["install", "cargo-fuzz", "--locked"])
        .status()
        .context("running cargo install cargo-fuzz")?;
    if !status.success() {
        bail!("cargo install cargo-fuzz failed ({status})");
    }
    Ok(())
}

/// `cargo` on nightly, free of the outer (stable) cargo's settings.
fn nightly_cargo() -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo"]);
    for var in [
        "RUSTUP_TOOLCHAIN",
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

fn fuzz(root: &Path, target: &str, seconds: u64) -> Result<()> {
    let fuzz_dir = root.join("sensor/fuzz");
    let seeds = fuzz_dir.join("corpus").join(target);
    // New inputs go to the first corpus directory: kept under target/, seeds read only.
    let found = root.join("target/fuzz/corpus").join(target);
    std::fs::create_dir_all(&found).with_context(|| format!("creating {}", found.display()))?;
    println!(
        "fuzzing {target} for {seconds} s (seeds: {})",
        seeds.display()
    );
    let status = nightly_cargo()
        .current_dir(&fuzz_dir)
        .env("CARGO_TARGET_DIR", root.join("target/fuzz"))
        .args(["fuzz", "run", "--release", target])
        .arg(&found)
        .arg(&seeds)
        .args([
            "--",
            &format!("-max_total_time={seconds}"),
            // A single input taking this long is a hang, reported like a crash.
            "-timeout=10",
            "-rss_limit_mb=2048",
        ])
        .status()
        .context("running cargo fuzz")?;
    if !status.success() {
        bail!(
            "fuzz target {target} failed ({status}): the crashing input is in {}; fix the \
             cause and add the input to {} so it stays tested",
            fuzz_dir.join("artifacts").join(target).display(),
            seeds.display()
        );
    }
    Ok(())
}

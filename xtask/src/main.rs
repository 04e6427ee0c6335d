//! Project tasks: `cargo xtask setup | build | run | test | docs | bench | fuzz | vmtest`.
//!
//! Everything a fresh machine lacks beyond the Rust toolchains is installed here:
//! nightly's rust-src, bpf-linker built against nightly's own LLVM, and the programs the
//! integration tests drive (netcat, curl, python3, iproute2).

mod arm64;
mod bench;
mod deb;
mod docs;
mod fuzz;
mod image;
mod python;
mod siem;
mod toolchain;
mod vmtest;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building the eBPF programs needs (nightly rust-src, bpf-linker).
    Setup {
        /// Rebuild bpf-linker even if one is installed.
        #[arg(long)]
        force: bool,
    },
    /// Build the sensor (release), with its eBPF object embedded. `--target aarch64`: the
    /// static arm64 binary (installs the Rust target, gcc-aarch64-linux-gnu, musl headers).
    Build {
        #[arg(long, value_name = "ARCH")]
        target: Option<String>,
    },
    /// Build and run `sensor run` as root; arguments after `--` go to `sensor run`.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The connect-storm benchmark (as root): throughput against no sensor, an empty
    /// program and bpftrace, the sensor's CPU, memory, loss and alert latency; a table, and
    /// `--json` for comparison between commits.
    Bench(bench::Args),
    /// Regenerate the converted SIEM queries in deploy/siem/ from the Sigma rules (pySigma in
    /// a venv under target/).
    Siem,
    /// Build the static (musl) binary and the FROM scratch container image.
    Image {
        /// Build the binary with the dev profile (faster; what the tests use), tagged
        /// `:test`; without it the release build is tagged with the version.
        #[arg(long)]
        dev: bool,
        /// Also unpack the image's filesystem into this directory.
        #[arg(long, value_name = "DIR")]
        export: Option<PathBuf>,
        /// Also build the arm64 static binary and a manifest list of the amd64 and arm64
        /// images (`localhost/t1571-sensor:VERSION-multiarch`).
        #[arg(long)]
        multiarch: bool,
    },
    /// Build the book (docs/, mdBook, installed when missing) into target/book and check
    /// every internal link of the book and the README.
    Docs,
    /// Build the Debian package (release binary, unit, sample policy, man page) into
    /// target/debian/. `--target aarch64`: the arm64 package, from the static arm64 binary.
    Deb {
        #[arg(long, value_name = "ARCH")]
        target: Option<String>,
    },
    /// Build and run every test: unit tests and the real-kernel integration tests, then
    /// the default kernel matrix (`vmtest --kernel 6.1,6.12`, then `--arch arm64`). With a test name filter
    /// only the host's tests run.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Fuzz the policy parser, the replay line parser and the record decoder (cargo fuzz,
    /// nightly) from the seed corpora in sensor/fuzz/corpus.
    Fuzz(fuzz::Args),
    /// The integration tests on other kernels, each booted once in a VM (virtme-ng, qemu)
    /// with every chosen hook forced in turn; prints a summary table.
    Vmtest(vmtest::Args),
    /// Inside a vmtest VM: run the plan (internal).
    #[command(hide = true)]
    VmGuest { plan: PathBuf },
    /// Inside an arm64 vmtest VM: the per-hook case for each of PROBES (internal).
    #[command(hide = true)]
    Arm64Guest { probes: String },
}

fn main() -> Result<()> {
    let root = workspace_root();
    match Cli::parse().task {
        Task::Setup { force } => toolchain::ensure(force),
        Task::Build { target } => {
            toolchain::ensure(false)?;
            if is_arm64(target.as_deref())? {
                let bin = arm64::build_static(&root, true, false)?;
                println!("{}", bin.display());
                return Ok(());
            }
            cargo(&root, &["build", "--release", "-p", "sensor"])
        }
        Task::Run { args } => {
            toolchain::ensure(false)?;
            cargo(&root, &["build", "--release", "-p", "sensor"])?;
            let bin = root.join("target/release/t1571-sensor");
            // SAFETY: geteuid has no preconditions.
            if unsafe { libc::geteuid() } != 0 {
                bail!(
                    "the sensor loads eBPF programs and must run as root: sudo {} run {}",
                    bin.display(),
                    args.join(" ")
                );
            }
            let status = Command::new(&bin)
                .arg("run")
                .args(&args)
                .status()
                .with_context(|| format!("starting {}", bin.display()))?;
            if !status.success() {
                bail!("sensor exited with {status}");
            }
            Ok(())
        }
        Task::Bench(args) => bench::run(&root, &args),
        Task::Siem => siem::convert(&root),
        Task::Image {
            dev,
            export,
            multiarch,
        } => {
            toolchain::ensure(false)?;
            let bin = image::build_static(&root, !dev)?;
            let reference = image::build_image(&root, &bin, !dev)?;
            if let Some(dir) = export {
                image::export(&reference, &dir)?;
            }
            println!("{reference}");
            if multiarch {
                let arm = arm64::build_static(&root, !dev, false)?;
                let list = arm64::manifest(&root, &[("amd64", &bin), ("arm64", &arm)])?;
                println!("{list}");
            }
            Ok(())
        }
        Task::Docs => docs::build(&root),
        Task::Deb { target } => {
            toolchain::ensure(false)?;
            cargo(&root, &["build", "--release", "-p", "sensor"])?;
            let host = root.join("target/release/t1571-sensor");
            let deb = if is_arm64(target.as_deref())? {
                let arm = arm64::build_static(&root, true, false)?;
                deb::build_arch(&root, &arm, "arm64", &host)?
            } else {
                deb::build(&root, &host)?
            };
            println!("{}", deb.display());
            Ok(())
        }
        Task::Test { args } => {
            toolchain::ensure(false)?;
            toolchain::ensure_test_programs()?;
            let siem_python = siem::ensure_test_tools(&root)?;
            let k8s_python = python::venv(&root, "k8s-venv", "deploy/kubernetes/requirements.txt")?;
            // The book builds and none of its links (nor the README's) is broken.
            docs::build(&root)?;
            // The test hooks (`--test-stall-on-usr1`, `bench-baseline`) are in this build only.
            cargo(
                &root,
                &["build", "-p", "sensor", "--features", "test-hooks"],
            )?;
            if args.is_empty() {
                fuzz::run(
                    &root,
                    &fuzz::Args {
                        seconds: fuzz::SHORT,
                        target: None,
                    },
                )?;
            }
            // The package test installs what users install: built from this very binary.
            let deb = deb::build(&root, &root.join("target/debug/t1571-sensor"))?;
            // The image as shipped (static build, FROM scratch), unpacked for the image test.
            let image_root = root.join("target/image-rootfs");
            let bin = image::build_static(&root, false)?;
            let reference = image::build_image(&root, &bin, false)?;
            image::export(&reference, &image_root)?;
            let mut test = vec![
                "test",
                "--workspace",
                "--exclude",
                "sensor-ebpf",
                "--no-fail-fast",
                // Or this build of the workspace would rebuild target/debug/t1571-sensor without them.
                "--features",
                "sensor/test-hooks",
                "--",
            ];
            test.extend(args.iter().map(String::as_str));
            let host = cargo_env(
                &root,
                &test,
                &[
                    ("SENSOR_BIN", root.join("target/debug/t1571-sensor")),
                    ("SIEM_PYTHON", siem_python),
                    ("SENSOR_DEB", deb),
                    ("K8S_PYTHON", k8s_python),
                    ("SENSOR_IMAGE_ROOT", image_root),
                    ("SENSOR_IMAGE", PathBuf::from(&reference)),
                ],
            );
            if !args.is_empty() {
                return host;
            }
            // The matrix runs even when the host's tests failed: both are reported.
            let matrix = vmtest::vmtest(&root, &vmtest::Args::default_matrix());
            // The arm64 row (docs/arm64.md): a few minutes, run even when x86_64's failed.
            let matrix = match (matrix, arm64::vmtest(&root, &arm64::Args::default_matrix())) {
                (Ok(()), arm) => arm,
                (Err(x), Ok(())) => Err(x),
                (Err(x), Err(a)) => Err(anyhow::anyhow!("{x:#}; and {a:#}")),
            };
            match (host, matrix) {
                (Ok(()), Ok(())) => Ok(()),
                (Err(e), Ok(())) | (Ok(()), Err(e)) => Err(e),
                (Err(h), Err(m)) => bail!("{h:#}; and {m:#}"),
            }
        }
        Task::Fuzz(args) => fuzz::run(&root, &args),
        Task::Vmtest(args) => vmtest::vmtest(&root, &args),
        Task::VmGuest { plan } => vmtest::guest(&plan),
        Task::Arm64Guest { probes } => arm64::guest::guest(&probes),
    }
}

/// Whether `--target` names arm64 (None and x86_64 are this host's build).
fn is_arm64(target: Option<&str>) -> Result<bool> {
    Ok(match target {
        None | Some("x86_64" | "amd64" | "x86_64-unknown-linux-gnu") => false,
        Some("aarch64" | "arm64" | arm64::TARGET) => true,
        Some(other) => bail!("--target {other}: known are x86_64 and aarch64 (arm64)"),
    })
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace")
        .to_path_buf()
}

/// The release sensor with the test hooks (`--test-stall-on-usr1`, `bench-baseline`), as
/// the bench and the VM matrix run it.
fn build_sensor_with_test_hooks(root: &Path) -> Result<()> {
    cargo(
        root,
        &[
            "build",
            "--release",
            "-p",
            "sensor",
            "--features",
            "test-hooks",
        ],
    )
}

fn cargo(root: &Path, args: &[&str]) -> Result<()> {
    cargo_env(root, args, &[])
}

fn cargo_env(root: &Path, args: &[&str], env: &[(&str, PathBuf)]) -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(args).current_dir(root);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let status = cmd
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

//! Programs started through the dynamic loader (`/lib64/ld-linux-x86-64.so.2
//! /usr/bin/python3 ...`): the kernel exec'd the loader, which then mapped the program
//! itself, so `/proc/PID/exe` and the exec record name the loader. The program is taken
//! from the exec's arguments (parsed as glibc's and musl's ld.so parse them) and checked
//! against `/proc/PID/maps`: a mapping with the program's device and inode, the program
//! stat'd inside the process's root with `O_PATH`. No kernel hook on executable mappings
//! exists on the target kernels (kprobes are compiled out and fentry programs are refused,
//! so `security_mmap_file` cannot be watched): the check is done lazily, once, at the
//! process's first connect, when the loader has long mapped the program. A process gone by
//! then keeps the arguments' claim, marked unverified.

use std::{
    io::Read,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

pub use crate::enrich::identity::{LOADER, is_loader_name};
use crate::enrich::{
    identity::{ExeFile, Identities, normalize, suspicious_location},
    procfs::{Procfs, exe_name},
    rootfs,
};
use crate::kernel::argv::Argv;

/// Bound on the `/proc/PID/maps` text read (a large program maps a few hundred lines).
const MAX_MAPS: u64 = 4 << 20;

/// What the loader's arguments say it was asked to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub program: String,
    /// `--argv0`: the name the program is told it has.
    pub argv0: Option<String>,
}

/// The program a loader's argv names: the first argument after the loader's options.
/// glibc: `--argv0 S`, `--library-path P`, `--preload L`, `--audit L`, `--inhibit-rpath
/// L`, `--glibc-hwcaps-prepend L`, `--glibc-hwcaps-mask L` take a value; `--inhibit-cache`
/// does not; `--verify`, `--list`, `--list-tunables`, `--list-diagnostics`, `--help`,
/// `--version` run no program. musl: `--library-path`, `--preload`, `--argv0` take a
/// value, `--list` runs none. An unknown option makes either loader refuse: no claim.
pub fn parse<'a>(args: impl IntoIterator<Item = &'a str>) -> Option<Claim> {
    let mut argv0 = None;
    let mut it = args.into_iter().skip(1);
    while let Some(a) = it.next() {
        match a {
            "--argv0" => argv0 = Some(it.next()?.to_string()),
            "--library-path"
            | "--preload"
            | "--audit"
            | "--inhibit-rpath"
            | "--glibc-hwcaps-prepend"
            | "--glibc-hwcaps-mask" => {
                it.next()?;
            }
            "--inhibit-cache" => {}
            "--" => {
                return it.next().map(|p| Claim {
                    program: p.to_string(),
                    argv0,
                });
            }
            "--verify" | "--list" | "--list-tunables" | "--list-diagnostics" | "--help"
            | "--version" => return None,
            o if o.starts_with("--") => return None,
            p => {
                return Some(Claim {
                    program: p.to_string(),
                    argv0,
                });
            }
        }
    }
    None
}

/// How the claim was checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// `/proc/PID/maps` maps the claimed program's device and inode.
    Maps,
    /// The maps were read and do not map the claimed file (or it cannot be stat'd).
    Mismatch,
    /// The process was gone before the check: the arguments' claim, unverified.
    Gone,
    /// The arguments name no program (cut, or an option neither loader knows).
    Unresolved,
}

impl Check {
    pub fn as_str(self) -> &'static str {
        match self {
            Check::Maps => "maps",
            Check::Mismatch => "mismatch",
            Check::Gone => "process-gone",
            Check::Unresolved => "unresolved",
        }
    }
}

/// A loader-started process as resolved: what the line shows as its executable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub loader: String,
    /// The program's path (symlinks resolved when in the sensor's root), None if unknown.
    pub program: Option<String>,
    pub check: Check,
    /// The high-risk entry the program is a copy of; [`LOADER`] if the program is unknown.
    pub content_match: Option<String>,
    pub location: Option<&'static str>,
}

/// Whether an executable is a dynamic loader: by name, or by content (a renamed copy).
pub fn is_loader(executable: Option<&str>, content_match: Option<&str>) -> bool {
    content_match == Some(LOADER) || executable.map(exe_name).is_some_and(is_loader_name)
}

/// Resolves the program a loader process `tgid` (child of `ppid`) runs. `alive`: /proc
/// still shows this process (same start time), so its maps and root are its own; a
/// process gone keeps the arguments' claim, its path looked up in the parent's root
/// (as the exec'd path is: `exe::resolve_on_disk`), unverified.
pub fn resolve(
    procfs: &Procfs,
    ids: &mut Identities,
    (tgid, ppid): (u32, u32),
    alive: bool,
    loader: &str,
    args: Option<&Argv>,
) -> Run {
    let unresolved = |check| Run {
        loader: loader.to_string(),
        program: None,
        check,
        content_match: Some(LOADER.to_string()),
        location: suspicious_location(loader, None),
    };
    // The exec record's argv is capped: /proc has the whole line while the process lives.
    // Only whole arguments: a cut one names no program.
    let claim = args.and_then(|a| parse(a.complete())).or_else(|| {
        alive
            .then(|| procfs.cmdline(tgid))
            .flatten()
            .and_then(|a| parse(a.complete()))
    });
    let Some(claim) = claim else {
        return unresolved(Check::Unresolved);
    };
    let dir = procfs.exe_link(tgid);
    let mut program = claim.program.clone();
    if !program.starts_with('/') {
        // ld.so opens a relative program from its working directory.
        let Some(cwd) = alive
            .then(|| std::fs::read_link(dir.with_file_name("cwd")).ok())
            .flatten()
        else {
            return Run {
                program: Some(program.clone()),
                location: suspicious_location(&program, None),
                content_match: None,
                ..unresolved(Check::Gone)
            };
        };
        program = format!("{}/{program}", cwd.display());
    }
    let program = normalize(&program);
    let root = procfs.root_of(if alive { tgid } else { ppid });
    let Ok(fd) = rootfs::open_path_in(&root, &program) else {
        return Run {
            location: suspicious_location(&program, None),
            program: Some(program),
            content_match: None,
            ..unresolved(if alive { Check::Mismatch } else { Check::Gone })
        };
    };
    let meta = rootfs::fstat(&fd).ok();
    let mapped = alive
        && meta.as_ref().is_some_and(|m| {
            read_maps(&dir.with_file_name("maps")).is_some_and(|t| maps_file(&t, m.dev(), m.ino()))
        });
    let shown = if rootfs::is_our_root(&root) {
        rootfs::fd_path(&fd).unwrap_or(program)
    } else {
        program
    };
    let nlink = meta
        .as_ref()
        .map(|m| u32::try_from(m.nlink()).unwrap_or(u32::MAX));
    let content_match = ids.content_match_file(&ExeFile::Fd(fd), meta.map(|m| m.ino()));
    Run {
        loader: loader.to_string(),
        location: suspicious_location(&shown, nlink),
        program: Some(shown),
        check: match (alive, mapped) {
            (false, _) => Check::Gone,
            (true, true) => Check::Maps,
            (true, false) => Check::Mismatch,
        },
        // A program that is itself a loader (`ld.so ld.so python3`) stays unknown.
        content_match: content_match.filter(|c| c != LOADER),
    }
}

fn read_maps(path: &Path) -> Option<String> {
    let mut text = String::new();
    std::fs::File::open(PathBuf::from(path))
        .ok()?
        .take(MAX_MAPS)
        .read_to_string(&mut text)
        .ok()?;
    Some(text)
}

/// Whether a `/proc/PID/maps` text has a mapping of the file `dev`:`ino`
/// (`start-end perms offset MAJ:MIN inode path`, the device in hex).
pub fn maps_file(maps: &str, dev: u64, ino: u64) -> bool {
    let want = format!("{:02x}:{:02x}", libc::major(dev), libc::minor(dev));
    maps.lines().any(|l| {
        let mut f = l.split_ascii_whitespace().skip(3);
        f.next() == Some(want.as_str()) && f.next().and_then(|i| i.parse::<u64>().ok()) == Some(ino)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("/lib64/ld-linux-x86-64.so.2 /usr/bin/python3 -c x", Some(("/usr/bin/python3", None)))]
    #[case("ld.so --argv0 innocent /usr/bin/python3 -c x", Some(("/usr/bin/python3", Some("innocent"))))]
    #[case("ld.so --library-path /a:/b --preload libx.so --audit a.so --inhibit-cache ./prog", Some(("./prog", None)))]
    #[case("ld.so --inhibit-rpath L --glibc-hwcaps-prepend x --glibc-hwcaps-mask y /bin/sh", Some(("/bin/sh", None)))]
    #[case("ld.so -- /bin/sh", Some(("/bin/sh", None)))]
    #[case("ld.so --list /bin/sh", None)]
    #[case("ld.so --verify /bin/sh", None)]
    #[case("ld.so --help", None)]
    #[case("ld.so --argv0", None)]
    #[case("ld.so --no-such-option /bin/sh", None)]
    #[case("ld.so", None)]
    fn parses_loader_arguments(#[case] argv: &str, #[case] want: Option<(&str, Option<&str>)>) {
        let got = parse(argv.split(' '));
        assert_eq!(
            got.as_ref()
                .map(|c| (c.program.as_str(), c.argv0.as_deref())),
            want,
            "{argv}"
        );
    }

    #[rstest]
    #[case("ld-linux-x86-64.so.2", true)]
    #[case("ld-linux-aarch64.so.1", true)]
    #[case("ld-2.31.so", true)]
    #[case("ld.so", true)]
    #[case("ld-musl-x86_64.so.1", true)]
    #[case("ld-linux-x86-64.so.2 (deleted)", true)]
    #[case("ld", false)]
    #[case("ldd", false)]
    #[case("ldconfig", false)]
    #[case("python3", false)]
    fn loader_names(#[case] name: &str, #[case] want: bool) {
        assert_eq!(is_loader_name(name), want);
    }

    #[test]
    fn finds_a_mapping_by_device_and_inode() {
        let maps = "55d0c0a00000-55d0c0a2e000 r--p 00000000 fd:01 1234 /usr/bin/python3.11\n\
                    7f00-7f10 r-xp 00000000 08:10 99 /usr/lib/x86_64-linux-gnu/libc.so.6\n\
                    7fff-8000 rw-p 00000000 00:00 0 [stack]\n";
        let dev = libc::makedev(0xfd, 1);
        assert!(maps_file(maps, dev, 1234));
        assert!(!maps_file(maps, dev, 99));
        assert!(maps_file(maps, libc::makedev(8, 16), 99));
        assert!(!maps_file(maps, libc::makedev(0, 0), 1));
    }

    #[test]
    fn a_live_loader_run_is_confirmed_by_its_maps() {
        // This test process maps its own executable: `ld.so <our exe>` claims it.
        let procfs = Procfs::new("/proc");
        let me = std::fs::canonicalize("/proc/self/exe").unwrap();
        let mut ids = Identities::scan(|_| None, Path::new("/nonexistent"));
        let args: Argv = [
            "/lib64/ld-linux-x86-64.so.2".into(),
            me.display().to_string(),
        ]
        .into_iter()
        .collect();
        let run = resolve(
            &procfs,
            &mut ids,
            (std::process::id(), 1),
            true,
            "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
            Some(&args),
        );
        assert_eq!(run.check, Check::Maps, "{run:?}");
        assert_eq!(run.program.as_deref(), me.to_str());
        // A file this process does not map: read, and said not to match.
        let args: Argv = ["ld.so", "/bin/sh"].into_iter().collect();
        let run = resolve(
            &procfs,
            &mut ids,
            (std::process::id(), 1),
            true,
            "ld.so",
            Some(&args),
        );
        assert_eq!(run.check, Check::Mismatch);
        // Gone: the claim, unverified.
        let run = resolve(
            &procfs,
            &mut ids,
            (u32::MAX, u32::MAX),
            false,
            "ld.so",
            Some(&args),
        );
        assert_eq!(
            (run.check, run.program.as_deref()),
            (Check::Gone, Some("/bin/sh"))
        );
        // Gone, its parent alive: the claim looked up in the parent's root, still unverified.
        let me = std::process::id();
        let run = resolve(
            &procfs,
            &mut ids,
            (u32::MAX, me),
            false,
            "ld.so",
            Some(&args),
        );
        let sh = std::fs::canonicalize("/bin/sh").unwrap();
        assert_eq!(
            (run.check, run.program.as_deref()),
            (Check::Gone, sh.to_str())
        );
    }
}

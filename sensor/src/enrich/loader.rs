//! Programs started through the dynamic loader (`/lib64/ld-linux-x86-64.so.2
//! /usr/bin/python3 ...`): the kernel exec'd the loader, which then mapped the program
//! itself, so `/proc/PID/exe` and the exec record name the loader. No kernel hook on
//! executable mappings exists on the target kernels (kprobes are compiled out and fentry
//! programs are refused, so `security_mmap_file` cannot be watched), and the process is
//! the attacker's code from its first instruction: it can chdir, rewrite its cmdline and
//! map any file. So the rule is:
//!
//! 1. The claim is the program the exec record's own arguments name (parsed as glibc's
//!    and musl's ld.so parse them), pinned to a (device, inode) when that record is
//!    handled: a relative name beneath the process's working directory of that moment.
//! 2. It is confirmed at the first connect only if the pinned file is an ELF main program
//!    (`ET_EXEC`, or `ET_DYN` with an interpreter and no `DT_SONAME`: never libc.so.6,
//!    which every process maps) and `/proc/PID/maps` maps it from offset 0 (searched as
//!    a bounded stream).
//! 3. Anything else (a claim from /proc, a file that is no program, no such mapping, a
//!    process gone) keeps the loader as the executable, scored as the high-risk `ld.so`,
//!    the claim shown beside it (`sensor.process.loader_claim`): a failed check can
//!    never lower a verdict.
//!
//! What remains: a process that wins a race between the loader's open and the sensor's
//! handling of the exec record (swapping the named file), and then maps the swapped-in
//! program itself, is described as that program.

use std::os::unix::fs::MetadataExt;

pub use crate::enrich::identity::{LOADER, is_loader_name};
use crate::enrich::{
    identity::{ExeFile, Identities, normalize, suspicious_location},
    procfs::{Procfs, exe_name},
    rootfs,
};
use crate::kernel::argv::Argv;

use crate::enrich::mapped::MAX_MAPS_BYTES as MAX_MAPS;

/// Programs larger than this are not opened to read their ELF header.
const MAX_PROGRAM: u64 = 1 << 30;

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

/// How the claim was checked. Only [`Check::Maps`] lets the line describe the program;
/// every other outcome keeps the loader as the executable (scored as `ld.so`), the claim
/// shown beside it, so a failed or impossible check never lowers a verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// The exec record's own arguments name the program, the file they named when the
    /// record was handled is an ELF main program, and `/proc/PID/maps` maps that device
    /// and inode from offset 0.
    Maps,
    /// Pinned at the exec record, not yet checked (the first connect checks it).
    Pending,
    /// The maps were read and do not map the pinned file from offset 0 (or the bounded
    /// read ended first).
    Mismatch,
    /// The named file is not a main program (a shared library such as libc.so.6, mapped
    /// in every process, or not ELF).
    NotProgram,
    /// The program came from `/proc/PID/cmdline` (the kernel's copy was cut, or the
    /// process was not exec'd while the sensor watched): the process can rewrite that.
    ArgsUnverified,
    /// The process was gone before the check: the arguments' claim, unverified.
    Gone,
    /// The arguments name no program (cut, or an option neither loader knows), or the
    /// named file could not be found (a relative name without the exec-time working
    /// directory, `..` in it, or a link out of that directory).
    Unresolved,
}

impl Check {
    pub fn as_str(self) -> &'static str {
        match self {
            Check::Maps => "maps",
            Check::Pending => "pending",
            Check::Mismatch => "mismatch",
            Check::NotProgram => "not-a-program",
            Check::ArgsUnverified => "args-unverified",
            Check::Gone => "process-gone",
            Check::Unresolved => "unresolved",
        }
    }
}

/// A loader-started process as resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub loader: String,
    /// The claimed program's path (symlinks resolved when in the sensor's root), None if
    /// the arguments name none.
    pub program: Option<String>,
    /// The claimed file's (device, inode) when the exec record was handled.
    pub file: Option<(u64, u64)>,
    pub check: Check,
    /// The high-risk entry the claimed program is a copy of.
    pub content_match: Option<String>,
    pub location: Option<&'static str>,
}

impl Run {
    /// Whether the line may describe the claimed program rather than the loader.
    pub fn confirmed(&self) -> bool {
        self.check == Check::Maps
    }
}

/// Whether an executable is a dynamic loader: by name, or by content (a renamed copy).
pub fn is_loader(executable: Option<&str>, content_match: Option<&str>) -> bool {
    content_match == Some(LOADER) || executable.map(exe_name).is_some_and(is_loader_name)
}

/// Pins the program a loader process `tgid` (child of `ppid`) was asked to run, when its
/// exec record is handled (`at_exec`; false for a process met later, from /proc).
/// `kernel_args`: the exec record's arguments, the only claim that can be confirmed.
/// A relative program is looked up beneath the process's working directory now, never
/// later (the process can chdir). `alive`: /proc still shows this process and this image.
pub fn pin(
    procfs: &Procfs,
    ids: &mut Identities,
    (tgid, ppid): (u32, u32),
    (alive, at_exec): (bool, bool),
    loader: &str,
    kernel_args: Option<&Argv>,
) -> Run {
    let unresolved = |program: Option<String>, check| Run {
        loader: loader.to_string(),
        location: program
            .as_deref()
            .and_then(|p| suspicious_location(p, None)),
        program,
        file: None,
        check,
        content_match: None,
    };
    // The exec record's argv is capped: /proc has the whole line while the process lives,
    // but the process can rewrite it. Only whole arguments: a cut one names no program.
    let (claim, vouched) = match kernel_args.and_then(|a| parse(a.complete())) {
        Some(c) => (c, true),
        None => match alive
            .then(|| procfs.cmdline(tgid))
            .flatten()
            .and_then(|a| parse(a.complete()))
        {
            Some(c) => (c, false),
            None => return unresolved(None, Check::Unresolved),
        },
    };
    let relative = !claim.program.starts_with('/');
    let root = procfs.root_of(if alive { tgid } else { ppid });
    let fd = if relative {
        // ld.so opens a relative program from its working directory: that directory's
        // fd, the walk kept beneath it (no `..`, no absolute link into another root).
        if !alive {
            return unresolved(Some(claim.program), Check::Gone);
        }
        if !at_exec || claim.program.split('/').any(|c| c == "..") {
            return unresolved(Some(claim.program), Check::Unresolved);
        }
        rootfs::open_path_beneath(&procfs.exe_link(tgid).with_file_name("cwd"), &claim.program)
    } else {
        rootfs::open_path_in(&root, &normalize(&claim.program))
    };
    let missing = if alive {
        Check::Unresolved
    } else {
        Check::Gone
    };
    let Ok(fd) = fd else {
        return unresolved(Some(claim.program), missing);
    };
    let Ok(meta) = rootfs::fstat(&fd) else {
        return unresolved(Some(claim.program), missing);
    };
    let shown = if relative || rootfs::is_our_root(&root) {
        rootfs::fd_path(&fd).unwrap_or_else(|| claim.program.clone())
    } else {
        normalize(&claim.program)
    };
    let program = rootfs::reopen_regular(&fd, MAX_PROGRAM)
        .is_ok_and(|(f, _)| crate::enrich::mapped::is_program(&f));
    let nlink = u32::try_from(meta.nlink()).unwrap_or(u32::MAX);
    let content_match = ids.content_match_file(&ExeFile::Fd(fd), Some(meta.ino()));
    Run {
        loader: loader.to_string(),
        location: suspicious_location(&shown, Some(nlink)),
        program: Some(shown),
        file: Some((meta.dev(), meta.ino())),
        check: if !vouched {
            Check::ArgsUnverified
        } else if !program {
            Check::NotProgram
        } else {
            Check::Pending
        },
        // A program that is itself a loader (`ld.so ld.so python3`) stays unknown.
        content_match: content_match.filter(|c| c != LOADER),
    }
}

/// The maps check of a pinned run, once, at the process's first connect: the pinned
/// file mapped from offset 0. `alive`: /proc shows this process (same start time).
pub fn confirm(procfs: &Procfs, run: &Run, tgid: u32, alive: bool) -> Check {
    if run.check != Check::Pending {
        return run.check;
    }
    if !alive {
        return Check::Gone;
    }
    let Some((dev, ino)) = run.file else {
        return Check::Unresolved;
    };
    let maps = procfs.exe_link(tgid).with_file_name("maps");
    match crate::enrich::mapped::maps_file_at_zero(&maps, dev, ino, MAX_MAPS) {
        Some(true) => Check::Maps,
        _ => Check::Mismatch,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;
    use std::path::Path;

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
    fn a_live_loader_run_is_confirmed_by_its_maps() {
        // This test process maps its own executable: `ld.so <our exe>` claims it.
        let procfs = Procfs::new("/proc");
        let me = std::fs::canonicalize("/proc/self/exe").unwrap();
        let mut ids = Identities::scan(|_| None, Path::new("/nonexistent"));
        let pid = std::process::id();
        let pin_confirm = |ids: &mut Identities, args: &Argv, alive: bool, pids: (u32, u32)| {
            let run = pin(&procfs, ids, pids, (alive, true), "ld.so", Some(args));
            let check = confirm(&procfs, &run, pids.0, alive);
            (run, check)
        };
        let args: Argv = [
            "/lib64/ld-linux-x86-64.so.2".into(),
            me.display().to_string(),
        ]
        .into_iter()
        .collect();
        let (run, check) = pin_confirm(&mut ids, &args, true, (pid, 1));
        assert_eq!(run.check, Check::Pending, "{run:?}");
        assert_eq!(check, Check::Maps, "{run:?}");
        assert_eq!(run.program.as_deref(), me.to_str());
        // Relative to the working directory at pin time.
        let dir = me.parent().unwrap();
        let name = me.file_name().unwrap().to_str().unwrap();
        // A relative name: beneath the process's working directory (a child's, here).
        let mut child = std::process::Command::new("/bin/sleep")
            .arg("30")
            .current_dir(dir)
            .spawn()
            .unwrap();
        let cpid = child.id();
        let rel: Argv = ["ld.so".into(), format!("./{name}")].into_iter().collect();
        let run = pin(
            &procfs,
            &mut ids,
            (cpid, pid),
            (true, true),
            "ld.so",
            Some(&rel),
        );
        let want = std::fs::metadata(&me).unwrap();
        assert_eq!(run.file, Some((want.dev(), want.ino())), "{run:?}");
        assert_eq!(run.check, Check::Pending);
        // `..` is never followed; a process met after its exec has no cwd to trust.
        let dir_name = dir.file_name().unwrap().to_str().unwrap();
        let up: Argv = ["ld.so".into(), format!("../{dir_name}/{name}")]
            .into_iter()
            .collect();
        let run = pin(
            &procfs,
            &mut ids,
            (cpid, pid),
            (true, true),
            "ld.so",
            Some(&up),
        );
        assert_eq!(run.check, Check::Unresolved);
        let late = pin(
            &procfs,
            &mut ids,
            (cpid, pid),
            (true, false),
            "ld.so",
            Some(&rel),
        );
        assert_eq!(late.check, Check::Unresolved);
        let _ = child.kill();
        let _ = child.wait();
        // A program this process does not map: read, and said not to match.
        let args: Argv = ["ld.so", "/usr/bin/python3"].into_iter().collect();
        assert_eq!(
            pin_confirm(&mut ids, &args, true, (pid, 1)).1,
            Check::Mismatch
        );
        // libc.so.6 is mapped here, but it is a library.
        let libc = "/lib/x86_64-linux-gnu/libc.so.6";
        if Path::new(libc).exists() {
            let args: Argv = ["ld.so", libc].into_iter().collect();
            assert_eq!(
                pin_confirm(&mut ids, &args, true, (pid, 1)).1,
                Check::NotProgram
            );
        }
        // No kernel arguments: the claim from /proc is shown, never confirmed.
        let run = pin(&procfs, &mut ids, (pid, 1), (true, true), "ld.so", None);
        assert_ne!(confirm(&procfs, &run, pid, true), Check::Maps);
        // Gone: the claim, unverified.
        let (run, check) = pin_confirm(&mut ids, &args, false, (u32::MAX, u32::MAX));
        assert_eq!(check, Check::Gone);
        assert!(!run.confirmed());
        // Gone, its parent alive: the claim looked up in the parent's root, still unverified.
        let args: Argv = ["ld.so", "/bin/sh"].into_iter().collect();
        let (run, check) = pin_confirm(&mut ids, &args, false, (u32::MAX, pid));
        let sh = std::fs::canonicalize("/bin/sh").unwrap();
        assert_eq!((check, run.program.as_deref()), (Check::Gone, sh.to_str()));
    }
}

//! A connect described by the image the kernel saw making it: the table's current image,
//! the one before its last exec, /proc's when its exec record was lost, else none.

use crate::enrich::{
    identity::{ExeFile, suspicious_location},
    procfs::ProcessInfo,
    proctable::{Key, ProcTable},
};

/// How a connect record's executable compares with the process's images in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageMatch {
    /// The entry's current image made the connect.
    Current,
    /// The image before its last exec made it.
    Previous,
    /// Neither, but the live process's /proc exe is that image (its exec record was
    /// lost): described by /proc's exe and command line.
    Procfs,
    /// None of them: the line must not describe any program.
    Mismatch,
    /// Nothing to compare (no inode in the record or the entry, or no entry).
    Unchecked,
}

impl ImageMatch {
    /// `sensor.process.attribution` when the match replaced the table's description.
    pub fn attribution(self) -> Option<&'static str> {
        (self == ImageMatch::Procfs).then_some("procfs-image")
    }
}

/// Whether image `a` (an entry's) is image `b` (a record's): same inode, and same
/// device unless one side's is unknown (0).
pub(super) fn same_image(a: (u64, u64), b: (u64, u64)) -> bool {
    a.1 == b.1 && (a.0 == 0 || b.0 == 0 || a.0 == b.0)
}

impl ProcTable {
    /// Describes a connect's process (`info`, from [`ProcTable::resolve`]) by the image
    /// the kernel saw making it (`image`, from the record): when the process exec'd since,
    /// its previous image; when neither is that image but the live process's /proc exe is
    /// (its exec record was lost: a flood filled the ring), /proc's; else no program at
    /// all, marked.
    pub fn connect_image(
        &mut self,
        tgid: u32,
        start_ns: u64,
        image: Option<(u64, u64)>,
        info: &mut ProcessInfo,
    ) -> ImageMatch {
        let key = if start_ns != 0 {
            self.key(tgid, start_ns)
        } else {
            match self.by_pid.get(&tgid) {
                Some(&start) => Key { tgid, start },
                None => return ImageMatch::Unchecked,
            }
        };
        let (Some(image), Some(e)) = (image, self.entries.get(&key)) else {
            return ImageMatch::Unchecked;
        };
        let Some(current) = e.image else {
            return ImageMatch::Unchecked;
        };
        if same_image(current, image) {
            return ImageMatch::Current;
        }
        if let Some(p) = e.previous.as_deref()
            && p.image.is_some_and(|i| same_image(i, image))
        {
            info.executable = p.executable.as_deref().map(str::to_string);
            info.args = p.args.clone();
            info.content_match = p.content_match.as_deref().map(str::to_string);
            info.location = p.location;
            return ImageMatch::Previous;
        }
        if self.procfs_image(key, image, info) {
            return ImageMatch::Procfs;
        }
        info.executable = None;
        info.args = None;
        info.content_match = None;
        info.location = None;
        info.image_mismatch = true;
        ImageMatch::Mismatch
    }

    /// Describes `info` by /proc when the process `key` still lives and its exe is
    /// `image`, read twice around the path and command line so an exec in between is
    /// not taken for the connecting image. False (`info` untouched) otherwise.
    fn procfs_image(&mut self, key: Key, image: (u64, u64), info: &mut ProcessInfo) -> bool {
        let live = || self.procfs.start_ticks(key.tgid) == Some(key.start);
        let exe_is = |id: Option<(u64, u64)>| id.is_some_and(|i| same_image(i, image));
        if !live() || !exe_is(self.procfs.exe_id(key.tgid)) {
            return false;
        }
        let exe = self.procfs.exe(key.tgid);
        let args = self.procfs.cmdline(key.tgid);
        let link = self.procfs.exe_link(key.tgid);
        let Some(exe) = exe else { return false };
        if !exe_is(self.procfs.exe_id(key.tgid)) || !live() {
            return false;
        }
        // The file the record names (its inode), never whatever the link reaches later.
        let (content_match, identity) = self
            .identities
            .identify(&ExeFile::Path(link), Some(image.1));
        info.location = suspicious_location(&exe, None);
        info.unmanaged = match &info.container_id {
            None => self.packages.is_managed(&exe).map(|m| !m),
            Some(_) => None,
        };
        info.executable = Some(exe);
        info.args = args;
        info.content_match = content_match;
        info.identity = identity.as_str();
        // The table's loader run described the table's image, not this one.
        info.loader = None;
        info.loader_check = None;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrich::proctable::test_support::*;
    use std::{path::Path, time::Duration};

    use crate::enrich::{identity::Identities, procfs::Procfs};

    #[test]
    fn a_connect_is_described_by_the_image_that_made_it() {
        let mut t = table(10);
        let mut py = exec(70, 7 * S, 1, 0, "/usr/bin/python3");
        (py.exe_dev, py.exe_ino) = (8, 100);
        t.on_exec(&py);
        let mut sleep = exec(70, 7 * S, 1, 0, "/usr/bin/sleep");
        (sleep.exe_dev, sleep.exe_ino) = (8, 200);
        t.on_exec(&sleep);
        let image = |t: &mut ProcTable, img| {
            let (mut info, _) = t.resolve(70, 7 * S, 0).unwrap();
            let m = t.connect_image(70, 7 * S, img, &mut info);
            (m, info.executable, info.image_mismatch)
        };
        let python = Some("/usr/bin/python3".to_string());
        let sleep_exe = Some("/usr/bin/sleep".to_string());
        assert_eq!(
            image(&mut t, Some((8, 100))),
            (ImageMatch::Previous, python, false)
        );
        assert_eq!(
            image(&mut t, Some((8, 200))),
            (ImageMatch::Current, sleep_exe.clone(), false)
        );
        assert_eq!(
            image(&mut t, Some((8, 300))),
            (ImageMatch::Mismatch, None, true)
        );
        // Same inode on another device is another file.
        assert_eq!(image(&mut t, Some((9, 100))).0, ImageMatch::Mismatch);
        assert_eq!(
            image(&mut t, None),
            (ImageMatch::Unchecked, sleep_exe, false)
        );
        // A fork runs its parent's current image, not the one before.
        t.on_fork(&task(71, 8 * S, 70, 7 * S));
        let (mut info, _) = t.resolve(71, 8 * S, 0).unwrap();
        assert_eq!(
            t.connect_image(71, 8 * S, Some((8, 100)), &mut info),
            ImageMatch::Mismatch
        );
    }

    #[test]
    fn a_lost_exec_record_is_recovered_from_procs_exe_when_it_is_the_connecting_image() {
        // This test process stands for `nc`: its fork record came (a copy of the parent's
        // image), its exec record was lost, and its connect carries its real image.
        let mut t = ProcTable::new(
            Procfs::new("/proc"),
            Identities::scan(|_| None, Path::new("/nonexistent")),
            10,
            Duration::from_secs(5),
        );
        let pid = std::process::id();
        let start_ns = t.procfs.start_ticks(pid).unwrap() * t.ns_per_tick;
        let real = t.procfs.exe_id(pid).unwrap();
        let own_exe = t.procfs.exe(pid).unwrap();
        let parent = 0x7fff_fff0;
        let mut bash = exec(parent, S, 1, 0, "/usr/bin/bash");
        (bash.exe_dev, bash.exe_ino) = (real.0, real.1 + 1);
        t.on_exec(&bash);
        t.on_fork(&task(pid, start_ns, parent, S));
        let connect = |t: &mut ProcTable, start_ns, img| {
            let (mut info, _) = t.resolve(pid, start_ns, 0).unwrap();
            assert_eq!(info.executable.as_deref(), Some("/usr/bin/bash"));
            let m = t.connect_image(pid, start_ns, Some(img), &mut info);
            (m, info)
        };

        let (m, info) = connect(&mut t, start_ns, real);
        assert_eq!(m, ImageMatch::Procfs);
        assert_eq!(m.attribution(), Some("procfs-image"));
        assert_eq!(info.executable.as_deref(), Some(own_exe.as_str()));
        assert!(!info.image_mismatch);
        let argv0 = std::env::args().next().unwrap();
        let args = info.args.expect("the command line from /proc");
        assert_eq!(args.iter().next().map(|a| a.to_string()), Some(argv0));
        assert_eq!(info.parent_executable.as_deref(), Some("/usr/bin/bash"));

        // /proc's exe is another file than the record's: blanked and flagged as before.
        let (m, info) = connect(&mut t, start_ns, (real.0, real.1 + 2));
        assert_eq!(
            (m, info.executable, info.image_mismatch),
            (ImageMatch::Mismatch, None, true)
        );
        assert_eq!(m.attribution(), None);

        // Another process under a reused pid (another start time) is never read from /proc.
        let later = start_ns + 3 * t.ns_per_tick;
        t.on_fork(&task(pid, later, parent, S));
        let (m, info) = connect(&mut t, later, real);
        assert_eq!(
            (m, info.executable, info.image_mismatch),
            (ImageMatch::Mismatch, None, true)
        );
    }
}

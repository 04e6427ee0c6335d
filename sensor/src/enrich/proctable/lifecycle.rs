//! The table fed by the kernel's lifecycle records (exec, fork, exit) and seeded from
//! /proc: what each process runs, from the kernel's view first and /proc while it lives.

use std::{sync::Arc, time::Instant};

use crate::{
    enrich::{
        exe::resolve_on_disk,
        identity::{ExeFile, IdState, suspicious_location},
        loader,
        proctable::{Entry, Key, ProcTable, Source, image::same_image},
    },
    kernel::records::{Exec, Task},
};

impl ProcTable {
    /// Loads every live process from /proc. Call after the lifecycle hooks are attached, so
    /// no process falls between the seed and the first record.
    pub fn seed(&mut self) {
        for pid in self.procfs.pids() {
            if let Some(start) = self.procfs.start_ticks(pid)
                && !self.entries.contains_key(&Key { tgid: pid, start })
            {
                self.load_from_procfs(Key { tgid: pid, start });
            }
        }
    }

    pub(super) fn load_from_procfs(&mut self, key: Key) -> Option<&Entry> {
        let info = self.procfs.lookup_ticks(key.tgid, Some(key.start), 0)?;
        let parent = info
            .ppid
            .and_then(|p| self.by_pid.get(&p).map(|&start| Key { tgid: p, start }));
        let proc_exe = self.procfs.exe_link(key.tgid);
        let (content_match, identity) = self.identities.identify(&ExeFile::Path(proc_exe), None);
        let entry = Entry {
            parent,
            ppid: info.ppid.unwrap_or(0),
            location: info
                .executable
                .as_deref()
                .and_then(|e| suspicious_location(e, None)),
            executable: info.executable.map(Arc::from),
            args: info.args,
            container_id: info.container_id.map(Arc::from),
            content_match: content_match.map(Arc::from),
            source: Source::Procfs,
            exited: None,
            identity,
            image: self.procfs.exe_id(key.tgid),
            previous: None,
        };
        self.insert(key, entry);
        self.entries.get(&key)
    }

    pub fn on_exec(&mut self, e: &Exec) {
        let key = self.key(e.task.tgid, e.task.start_time_ns);
        let parent = Some(self.key(e.task.ppid, e.task.parent_start_time_ns));
        // /proc describes this exec only while the process lives and still runs the image
        // the kernel mapped: userspace lags, and the process may have exec'd again since.
        let alive = self.procfs.start_ticks(key.tgid) == Some(key.start)
            && (e.exe_ino == 0
                || self
                    .procfs
                    .exe_id(key.tgid)
                    .is_some_and(|id| same_image(id, (e.exe_dev, e.exe_ino))));
        // The executable: /proc's link while it shows this image (symlinks resolved, memfd
        // named), else the exec'd path resolved on disk if it is the inode the kernel mapped.
        let (executable, identity_path) = if alive && let Some(exe) = self.procfs.exe(key.tgid) {
            (Some(exe), Some(self.procfs.exe_link(key.tgid).into()))
        } else {
            let parent_root = self.procfs.root_of(e.task.ppid);
            match resolve_on_disk(&e.filename, e.exe_dev, e.exe_ino, &parent_root) {
                Some((shown, opened)) => (Some(shown), Some(opened)),
                // A memfd has no path: name it as /proc/PID/exe would.
                None if e.exe_nlink == Some(0) && e.exe_name.starts_with("memfd:") => {
                    (Some(format!("/{} (deleted)", e.exe_name)), None)
                }
                None => (Some(e.filename.clone()).filter(|f| !f.is_empty()), None),
            }
        };
        let location = executable
            .as_deref()
            .and_then(|x| suspicious_location(x, e.exe_nlink));
        let (content_match, identity) = identity_path.map_or((None, IdState::Known), |p| {
            self.identities
                .identify(&p, (e.exe_ino != 0).then_some(e.exe_ino))
        });
        // Kernel argv is capped; /proc has the whole line while the process lives.
        let args = if alive
            && e.args
                .as_ref()
                .is_none_or(|a| a.raw_len() >= sensor_common::ARGS_LEN - 1)
        {
            self.procfs.cmdline(key.tgid).or_else(|| e.args.clone())
        } else {
            e.args.clone()
        };
        // /proc while the process lives, else the kernel's cgroup id, else the parent's.
        let container_id = self
            .procfs
            .container_id(key.tgid)
            .or_else(|| self.cgroups.container_id(e.task.cgroup_id))
            .map(Arc::from)
            .or_else(|| {
                parent
                    .and_then(|p| self.entries.get(&p))
                    .and_then(|p| p.container_id.clone())
            });
        // The image it ran until now, kept one deep for a connect made just before.
        let previous = self.entries.get(&key).map(|old| {
            Box::new(Entry {
                previous: None,
                ..old.clone()
            })
        });
        // A loader's program is pinned now, while its working directory is the exec's.
        let run = loader::is_loader(executable.as_deref(), content_match.as_deref()).then(|| {
            loader::pin(
                &self.procfs,
                &mut self.identities,
                (key.tgid, e.task.ppid),
                (alive, true),
                executable.as_deref().unwrap_or_default(),
                e.args.as_ref(),
            )
        });
        self.set_run(key, run.map(Arc::new));
        self.insert(
            key,
            Entry {
                parent,
                ppid: e.task.ppid,
                executable: executable.map(Arc::from),
                args,
                container_id,
                content_match: content_match.map(Arc::from),
                location,
                source: Source::Exec,
                exited: None,
                identity,
                image: (e.exe_ino != 0).then_some((e.exe_dev, e.exe_ino)),
                previous,
            },
        );
    }

    pub fn on_fork(&mut self, t: &Task) {
        let key = self.key(t.tgid, t.start_time_ns);
        let pkey = self.key(t.ppid, t.parent_start_time_ns);
        let parent = match self.entries.get(&pkey) {
            Some(p) => Some(p.clone()),
            None => self.load_from_procfs(pkey).cloned(),
        };
        // A fork of a loader process runs the same program, pinned at the same exec.
        let run = self.loaded.get(&pkey).cloned();
        if run.is_some() {
            self.set_run(key, run);
        }
        let entry = match parent {
            Some(p) => Entry {
                parent: Some(pkey),
                ppid: t.ppid,
                source: Source::Fork,
                exited: None,
                previous: None,
                ..p
            },
            None => Entry {
                parent: Some(pkey),
                ppid: t.ppid,
                executable: None,
                args: None,
                container_id: None,
                content_match: None,
                location: None,
                source: Source::Fork,
                exited: None,
                identity: IdState::Known,
                image: None,
                previous: None,
            },
        };
        self.insert(key, entry);
    }

    pub fn on_exit(&mut self, t: &Task) {
        let key = self.key(t.tgid, t.start_time_ns);
        if let Some(e) = self.entries.get_mut(&key)
            && e.exited.is_none()
        {
            let now = Instant::now();
            e.exited = Some(now);
            self.exit_order.push_back((now, key));
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::enrich::proctable::test_support::*;

    #[test]
    fn memfd_and_tmp_are_flagged() {
        let mut t = table(10);
        let mut e = exec(60, 6 * S, 1, 0, "/dev/fd/3");
        e.exe_nlink = Some(0);
        t.on_exec(&e);
        assert_eq!(t.resolve(60, 6 * S, 0).unwrap().0.location, Some("fd"));
        // With the dentry name from the kernel, a vanished memfd process is named as /proc would.
        e.task.tgid = 62;
        e.exe_name = "memfd:payload".into();
        t.on_exec(&e);
        let (info, _) = t.resolve(62, 6 * S, 0).unwrap();
        assert_eq!(info.executable.as_deref(), Some("/memfd:payload (deleted)"));
        assert_eq!(info.location, Some("memfd"));
        t.on_exec(&exec(61, 6 * S, 1, 0, "/tmp/.x/agent"));
        assert_eq!(t.resolve(61, 6 * S, 0).unwrap().0.location, Some("tmp"));
    }
}

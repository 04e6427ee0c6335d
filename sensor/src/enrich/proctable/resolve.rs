//! Attribution of a connect's process: the table first, /proc second, the loader's
//! program, the identity worker's answer, and the ancestry.

use std::sync::Arc;

use crate::enrich::{
    identity::IdState,
    loader,
    procfs::{self, ProcessInfo},
    proctable::{Key, ProcTable, Source},
};

const ANCESTRY_DEPTH: usize = 8;

impl ProcTable {
    /// Attribution for a connect by `tgid` started at `start_ns` (0 = unknown): the table
    /// first, /proc second. None when neither knows the process.
    pub fn resolve(
        &mut self,
        tgid: u32,
        start_ns: u64,
        kernel_ppid: u32,
    ) -> Option<(ProcessInfo, Source)> {
        let key = if start_ns != 0 {
            self.key(tgid, start_ns)
        } else {
            Key {
                tgid,
                start: *self.by_pid.get(&tgid)?,
            }
        };
        // Unknown, or known only as a blank fork of an unknown parent: /proc may know more.
        let blank = self
            .entries
            .get(&key)
            .is_none_or(|e| e.executable.is_none());
        if blank && self.load_from_procfs(key).is_none() && !self.entries.contains_key(&key) {
            return None;
        }
        self.settle_identity(key);
        let run = self.loader_run(key);
        let e = self.entries.get(&key)?;
        let mut info = ProcessInfo {
            executable: e.executable.as_deref().map(str::to_string),
            args: e.args.clone(),
            ppid: Some(if kernel_ppid != 0 {
                kernel_ppid
            } else {
                e.ppid
            }),
            parent_executable: None,
            container_id: e.container_id.as_deref().map(str::to_string),
            content_match: e.content_match.as_deref().map(str::to_string),
            location: e.location,
            ancestors: Vec::new(),
            // Filled by the pipeline from the container id.
            pod: None,
            container_runtime: None,
            loader: None,
            loader_check: None,
            loader_claim: None,
            unmanaged: None,
            identity: e.identity.as_str(),
            image_mismatch: false,
        };
        if let Some(run) = &run {
            info.loader = Some(run.loader.clone());
            info.loader_check = Some(run.check.as_str());
            if run.confirmed() {
                // The program the loader ran is the process's executable; the loader beside.
                info.executable = run.program.clone();
                info.content_match = run.content_match.clone();
                info.location = run.location;
            } else {
                // Unconfirmed: the loader stays the executable and scores as `ld.so`; the
                // claim is shown beside it, for the analyst, never for scoring or rules.
                info.loader_claim = run.program.clone();
                info.content_match = Some(loader::LOADER.to_string());
            }
        }
        // Only the host's own files are in its package database; a container's are not.
        // Managed means the host's file at that path is the image the kernel ran.
        let image = match run.as_deref() {
            Some(r) if r.confirmed() => r.file,
            _ => e.image,
        };
        info.unmanaged = match (&info.executable, &info.container_id) {
            (Some(exe), None) => self.packages.is_managed_image(exe, image).map(|m| !m),
            _ => None,
        };
        let mut next = e.parent;
        for _ in 0..ANCESTRY_DEPTH {
            let Some(k) = next else { break };
            let Some(p) = self.entries.get(&k) else { break };
            info.ancestors
                .push(p.executable.as_deref().unwrap_or("?").to_string());
            next = p.parent.filter(|pk| *pk != k);
        }
        info.parent_executable = info
            .ancestors
            .first()
            .filter(|x| *x != "?")
            .cloned()
            .or_else(|| {
                // Parent not in the table (e.g. exited before start-up): ask /proc.
                info.ppid.and_then(|p| self.procfs.exe(p))
            });
        Some((info, e.source))
    }

    /// An entry whose file the worker was hashing takes its answer, once there.
    fn settle_identity(&mut self, key: Key) {
        let Some(IdState::Pending(file)) = self.entries.get(&key).map(|e| &e.identity) else {
            return;
        };
        let settled = self.identities.settled(&file.clone());
        let Some(e) = self.entries.get_mut(&key) else {
            return;
        };
        let before = e.bytes();
        match settled {
            Ok(m) => {
                e.content_match = m.map(Arc::from);
                e.identity = IdState::Known;
            }
            Err(state) => e.identity = state,
        }
        let after = e.bytes();
        self.bytes = self.bytes + after - before;
    }

    /// A process the kernel exec'd as a dynamic loader: the program pinned at its exec
    /// record, checked against its maps once, at the first connect (see [`loader`]). A
    /// loader process met only through /proc gets the claim from there, never confirmed.
    fn loader_run(&mut self, key: Key) -> Option<Arc<loader::Run>> {
        let alive = self.procfs.start_ticks(key.tgid) == Some(key.start);
        if let Some(r) = self.loaded.get(&key).cloned() {
            if r.check != loader::Check::Pending {
                return Some(r);
            }
            let check = loader::confirm(&self.procfs, &r, key.tgid, alive);
            let run = Arc::new(loader::Run {
                check,
                ..(*r).clone()
            });
            self.set_run(key, Some(run.clone()));
            return Some(run);
        }
        let e = self.entries.get(&key)?;
        if !loader::is_loader(e.executable.as_deref(), e.content_match.as_deref()) {
            return None;
        }
        let (exe, ppid) = (e.executable.clone()?, e.ppid);
        let run = Arc::new(loader::pin(
            &self.procfs,
            &mut self.identities,
            (key.tgid, ppid),
            (alive, false),
            &exe,
            None,
        ));
        self.set_run(key, Some(run.clone()));
        Some(run)
    }
}

/// Basename chain, nearest ancestor last, for `sshd > bash > python3` at a glance.
pub fn lineage(info: &ProcessInfo) -> Option<String> {
    let me = info.executable.as_deref().map(procfs::exe_name)?;
    let mut names: Vec<&str> = info
        .ancestors
        .iter()
        .rev()
        .map(|a| procfs::exe_name(a))
        .collect();
    names.push(me);
    Some(names.join(" > "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrich::proctable::test_support::*;

    #[test]
    fn fork_inherits_and_ancestry_reads_at_a_glance() {
        let mut t = table(100);
        t.on_exec(&exec(10, S, 1, 0, "/usr/sbin/sshd"));
        t.on_fork(&task(20, 2 * S, 10, S));
        t.on_exec(&exec(20, 2 * S, 10, S, "/usr/bin/bash"));
        t.on_fork(&task(30, 3 * S, 20, 2 * S));
        // The forked child is bash until it execs.
        assert_eq!(
            t.resolve(30, 3 * S, 0).unwrap().0.executable.as_deref(),
            Some("/usr/bin/bash")
        );
        t.on_exec(&exec(30, 3 * S, 20, 2 * S, "/usr/bin/python3.11"));
        let (info, src) = t.resolve(30, 3 * S, 20).unwrap();
        assert_eq!(src, Source::Exec);
        assert_eq!(info.parent_executable.as_deref(), Some("/usr/bin/bash"));
        assert_eq!(info.ancestors, ["/usr/bin/bash", "/usr/sbin/sshd"]);
        assert_eq!(lineage(&info).unwrap(), "sshd > bash > python3.11");
        assert_eq!(info.args.unwrap(), ["/usr/bin/python3.11", "arg"]);
    }
}

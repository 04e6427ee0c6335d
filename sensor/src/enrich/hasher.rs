//! Whole-file SHA-256 off the event loop. A file sized like a known binary must be hashed
//! to be told apart from it, and any user can make one (up to 256 MiB) and exec it again
//! after each touch: hashed on the loop, that stalls every record behind it. Here one
//! worker thread hashes the files the loop hands it, already open (the fd, never a path:
//! the file was type-checked through `O_PATH` before it was opened), with a bounded queue
//! and a byte rate; what does not fit is skipped and said so on the line.

use std::{
    fs::File,
    io::{Read, Seek},
    sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError, sync_channel},
    thread,
    time::{Duration, Instant},
};

use sha2::{Digest, Sha256};

/// Files waiting for the worker at most (the one it hashes not counted).
pub const QUEUE: usize = 4;
/// Bytes hashed per second at most: one core is never taken whole, whatever is exec'd.
pub const BYTES_PER_SEC: u64 = 128 << 20;

struct Job<K> {
    key: K,
    file: File,
    size: u64,
}

/// The worker's answer: the file's key (the caller's), its hash, None if it could not be
/// read whole.
pub type Done<K> = (K, Option<[u8; 32]>);

/// The loop's side of the worker; `K` names a file for the caller.
pub struct Hasher<K> {
    jobs: SyncSender<Job<K>>,
    results: Receiver<Done<K>>,
    /// Files handed over, skipped for a full queue (or a dead worker), and hashed.
    pub queued: u64,
    pub skipped: u64,
    pub hashed: u64,
}

/// Capabilities are per thread and this one starts before the loop drops its own: it
/// only reads files the loop opened, so it keeps none, whatever the sensor was given.
fn drop_all_capabilities() {
    use caps::CapSet;
    let cleared = [
        CapSet::Ambient,
        CapSet::Inheritable,
        CapSet::Effective,
        CapSet::Permitted,
    ]
    .into_iter()
    .try_for_each(|set| caps::clear(None, set));
    // SAFETY: prctl with constant integer arguments, on this thread.
    let nnp = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } == 0;
    if cleared.is_err() || !nnp {
        log::warn!("the hashing thread could not drop its capabilities: {cleared:?}");
    }
}

impl<K: Send + 'static> Hasher<K> {
    /// Starts the worker; None if the thread cannot be spawned.
    pub fn spawn(queue: usize, bytes_per_sec: u64) -> Option<Self> {
        let (jobs, rx) = sync_channel::<Job<K>>(queue);
        let (tx, results) = sync_channel::<Done<K>>(queue + 2);
        thread::Builder::new()
            .name("hasher".into())
            .spawn(move || {
                // The lowest priority: on a busy node the loop's thread runs first.
                // SAFETY: plain syscalls on this thread's own id.
                unsafe {
                    let tid = libc::gettid();
                    libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19);
                }
                drop_all_capabilities();
                for job in rx {
                    let h = sha256_throttled(&job.file, job.size, bytes_per_sec);
                    // The loop gone: nothing to tell.
                    if tx.send((job.key, h)).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| log::warn!("no hashing thread ({e}): files to hash are skipped"))
            .ok()?;
        Some(Self {
            jobs,
            results,
            queued: 0,
            skipped: 0,
            hashed: 0,
        })
    }

    /// Hands `file` (its first `size` bytes) over; false (counted) when the queue is full.
    pub fn submit(&mut self, key: K, file: File, size: u64) -> bool {
        match self.jobs.try_send(Job { key, file, size }) {
            Ok(()) => {
                self.queued += 1;
                true
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.skipped += 1;
                false
            }
        }
    }

    /// The answers ready now, without waiting.
    pub fn ready(&mut self) -> Vec<Done<K>> {
        let mut out = Vec::new();
        loop {
            match self.results.try_recv() {
                Ok(d) => {
                    self.hashed += 1;
                    out.push(d);
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return out,
            }
        }
    }

    /// For `sensor-stats`.
    pub fn report(&self) -> Report {
        Report {
            queued: self.queued,
            skipped_budget: self.skipped,
            hashed: self.hashed,
        }
    }
}

/// The hasher's counters, as `sensor.hashing` reports them.
#[derive(
    Debug,
    Default,
    Clone,
    Copy,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[schemars(rename = "HasherReport")]
pub struct Report {
    pub queued: u64,
    /// Files not hashed for the byte budget.
    pub skipped_budget: u64,
    pub hashed: u64,
}

/// SHA-256 of the first `size` bytes of `f` from its start, at most `rate` bytes a second.
pub fn sha256_throttled(mut f: &File, size: u64, rate: u64) -> Option<[u8; 32]> {
    // A build-id reader may have moved the file position.
    f.rewind().ok()?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut r = f.take(size);
    let start = Instant::now();
    let mut done = 0u64;
    loop {
        let n = r.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        done += n as u64;
        if rate > 0 {
            let due = Duration::from_secs_f64(done as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                thread::sleep(wait);
            }
        }
    }
    Some(hasher.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_off_the_caller_within_its_budget() {
        let path = std::env::temp_dir().join(format!("t1571-hasher-{}", std::process::id()));
        std::fs::write(&path, vec![7u8; 1 << 20]).unwrap();
        let want = sha256_throttled(&File::open(&path).unwrap(), 1 << 20, 0).unwrap();
        // 1 MiB at 4 MiB/s: about 250 ms, the caller never waits.
        let mut h = Hasher::spawn(1, 4 << 20).unwrap();
        let t = Instant::now();
        assert!(h.submit(7u64, File::open(&path).unwrap(), 1 << 20));
        // One in the worker, one queued, then the queue is full: skipped, counted.
        let mut accepted = 1;
        while h.submit(7u64, File::open(&path).unwrap(), 1 << 20) {
            accepted += 1;
            assert!(accepted <= 3);
        }
        assert!(t.elapsed() < Duration::from_millis(100));
        assert_eq!(h.skipped, 1);
        let mut got = Vec::new();
        while got.len() < accepted {
            got.extend(h.ready());
            thread::sleep(Duration::from_millis(10));
        }
        assert!(
            t.elapsed() >= Duration::from_millis(200),
            "{:?}",
            t.elapsed()
        );
        assert!(got.iter().all(|(k, d)| *d == Some(want) && *k == 7));
        let _ = std::fs::remove_file(&path);
    }
}

//! A process's argv as the sensor keeps it: one shared buffer of at most [`KEEP`] bytes,
//! the true number of arguments and whether anything was cut. A process can make its argv
//! megabytes of arguments; the line prints 4 KiB of command line and `args_count`, so
//! more than that is never held, and clones (per connect, per listener) share the buffer.

use std::{fmt, io::Read, sync::Arc};

/// Bytes of argv kept: twice the printed command line (4 KiB), so an argument that
/// redaction shortens still leaves a full line to print.
pub const KEEP: usize = 8 << 10;

/// Bytes of a command line scanned to count its arguments. The kernel allows up to 6 MiB
/// of argv; the scan runs on the event loop, so it stops at 1 MiB (16 times the 64 KiB
/// the sensor read before argv was bounded) and `args_count` counts the arguments in it.
pub const MAX_SCAN: u64 = 1 << 20;

#[derive(PartialEq, Eq)]
struct Inner {
    /// The kept arguments, lossy UTF-8, separated by NUL.
    text: Box<str>,
    /// Arguments in the whole argv (kept or not).
    count: usize,
    /// Bytes of argv the kept part was taken from (as the source laid it out).
    raw_len: usize,
    /// The last kept argument is only the start of one.
    partial_last: bool,
}

/// See the module documentation. Cheap to clone.
#[derive(Clone, PartialEq, Eq)]
pub struct Argv(Arc<Inner>);

impl Argv {
    /// From the whole NUL-separated argv (one trailing NUL ends the last argument), as
    /// the kernel's exec record or a test gives it. None when empty.
    pub fn parse(raw: &[u8]) -> Option<Self> {
        if raw.is_empty() {
            return None;
        }
        let nuls = raw.iter().filter(|&&b| b == 0).count();
        let count = if raw.last() == Some(&0) {
            nuls
        } else {
            nuls + 1
        };
        Some(Self::from_prefix(
            &raw[..raw.len().min(KEEP)],
            raw.len(),
            count,
        ))
    }

    /// From the first bytes of an argv of `raw_len` bytes holding `count` arguments.
    fn from_prefix(prefix: &[u8], raw_len: usize, count: usize) -> Self {
        let whole = prefix.len() >= raw_len;
        // An argument ends at a NUL; the whole argv's last ends at its end too.
        let (body, partial_last) = match prefix.strip_suffix(&[0]) {
            Some(b) => (b, false),
            None => (prefix, !whole),
        };
        let mut text = String::from_utf8_lossy(body).into_owned();
        // Replacement characters may have grown it: cut on a character boundary.
        let mut partial_last = partial_last;
        if text.len() > KEEP {
            let mut end = KEEP;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
            partial_last = !text.ends_with('\0');
            if !partial_last {
                text.pop();
            }
        }
        Self(Arc::new(Inner {
            text: text.into_boxed_str(),
            count,
            raw_len,
            partial_last,
        }))
    }

    /// Reads an argv from `r` (`/proc/PID/cmdline`): [`KEEP`] bytes kept, the rest only
    /// counted, up to [`MAX_SCAN`] bytes. None when it is empty (kernel threads, zombies)
    /// or unreadable.
    pub fn read(r: impl Read) -> Option<Self> {
        let mut r = r.take(MAX_SCAN);
        let mut kept = Vec::with_capacity(1024);
        (&mut r).take(KEEP as u64).read_to_end(&mut kept).ok()?;
        if kept.is_empty() {
            return None;
        }
        let mut nuls = kept.iter().filter(|&&b| b == 0).count();
        let mut last = kept.last().copied();
        let mut raw_len = kept.len();
        // Only counted: a fixed buffer, whatever the size.
        let mut buf = [0u8; 16 << 10];
        loop {
            match r.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    nuls += buf[..n].iter().filter(|&&b| b == 0).count();
                    last = Some(buf[n - 1]);
                    raw_len += n;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                // What was read stands: the process may have gone mid-read.
                Err(_) => break,
            }
        }
        let count = if last == Some(0) { nuls } else { nuls + 1 };
        Some(Self::from_prefix(&kept, raw_len, count))
    }

    /// Arguments in the whole argv.
    pub fn count(&self) -> usize {
        self.0.count
    }

    /// Bytes of the argv as its source gave it (before any was cut off).
    pub fn raw_len(&self) -> usize {
        self.0.raw_len
    }

    /// The kept arguments, the last possibly only a start (see [`Argv::partial_last`]).
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        let t = &self.0.text;
        // An argv of one empty argument keeps "" and yields it.
        t.split('\0').take(self.kept())
    }

    /// The kept arguments that are whole.
    pub fn complete(&self) -> impl Iterator<Item = &str> {
        self.iter()
            .take(self.kept() - usize::from(self.0.partial_last))
    }

    /// Arguments kept (whole or started).
    pub fn kept(&self) -> usize {
        (self.0.text.split('\0').count()).min(self.0.count)
    }

    /// The last kept argument was cut.
    pub fn partial_last(&self) -> bool {
        self.0.partial_last
    }

    /// Not every argument is kept whole.
    pub fn is_cut(&self) -> bool {
        self.0.partial_last || self.kept() < self.0.count
    }

    /// Heap bytes this argv holds (shared by its clones).
    pub fn heap_bytes(&self) -> usize {
        std::mem::size_of::<Inner>() + self.0.text.len()
    }

    pub fn to_vec(&self) -> Vec<String> {
        self.iter().map(str::to_string).collect()
    }

    /// The kept arguments joined by spaces.
    pub fn join(&self) -> String {
        self.0.text.replace('\0', " ")
    }
}

impl fmt::Debug for Argv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Argv")
            .field("args", &self.iter().collect::<Vec<_>>())
            .field("count", &self.0.count)
            .field("partial_last", &self.0.partial_last)
            .finish()
    }
}

/// Tests and replays compare an argv with plain strings.
impl<S: AsRef<str>> PartialEq<[S]> for Argv {
    fn eq(&self, other: &[S]) -> bool {
        !self.is_cut()
            && self.kept() == other.len()
            && self.iter().zip(other).all(|(a, b)| a == b.as_ref())
    }
}

impl<S: AsRef<str>, const N: usize> PartialEq<[S; N]> for Argv {
    fn eq(&self, other: &[S; N]) -> bool {
        *self == other[..]
    }
}

impl<S: AsRef<str>> FromIterator<S> for Argv {
    /// From whole arguments (tests, replayed lines).
    fn from_iter<I: IntoIterator<Item = S>>(it: I) -> Self {
        let mut raw = Vec::new();
        for a in it {
            raw.extend_from_slice(a.as_ref().as_bytes());
            raw.push(0);
        }
        if raw.is_empty() {
            raw.push(0);
        }
        Self::parse(&raw).expect("not empty")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_argv_kept_whole() {
        let a = Argv::parse(b"curl\0-s\0x\xffy\0\0").unwrap();
        assert_eq!(a, ["curl", "-s", "x\u{fffd}y", ""]);
        assert_eq!((a.count(), a.kept(), a.is_cut()), (4, 4, false));
        assert_eq!(a.join(), "curl -s x\u{fffd}y ");
        // Without the trailing NUL (the kernel's copy cut there): the same arguments.
        assert_eq!(Argv::parse(b"a\0b").unwrap(), ["a", "b"]);
        assert_eq!(Argv::parse(b"\0").unwrap(), [""]);
        assert!(Argv::parse(b"").is_none());
    }

    #[test]
    fn huge_argv_keeps_a_bounded_prefix_and_the_true_count() {
        let raw = "x\0".repeat(30_000);
        for a in [
            Argv::parse(raw.as_bytes()).unwrap(),
            Argv::read(raw.as_bytes()).unwrap(),
        ] {
            assert_eq!(a.count(), 30_000);
            assert_eq!(a.kept(), KEEP / 2);
            assert!(a.is_cut() && !a.partial_last());
            assert!(a.heap_bytes() < KEEP + 64);
            assert_eq!(a.raw_len(), 60_000);
        }
        // One long argument: its start is kept, said to be partial.
        let long = format!("prog\0{}\0", "y".repeat(100_000));
        let a = Argv::read(long.as_bytes()).unwrap();
        assert_eq!((a.count(), a.kept()), (2, 2));
        assert!(a.partial_last());
        assert_eq!(a.complete().collect::<Vec<_>>(), ["prog"]);
        assert_eq!(a.iter().nth(1).unwrap().len(), KEEP - 5);
        // Invalid UTF-8 grows when replaced: still bounded.
        let a = Argv::parse(&vec![0xff; 3 * KEEP]).unwrap();
        assert!(a.0.text.len() <= KEEP && a.partial_last() && a.count() == 1);
    }

    #[test]
    fn clones_share_the_buffer() {
        let a: Argv = ["nc", "203.0.113.7", "4444"].into_iter().collect();
        let b = a.clone();
        assert!(Arc::ptr_eq(&a.0, &b.0));
        assert_eq!(b, ["nc", "203.0.113.7", "4444"]);
    }
}

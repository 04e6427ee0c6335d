//! Flood control: identical alerts (same pid, executable, destination, port) within a
//! period are folded. The first is printed at once (no added latency for a new alert);
//! repeats within the period are held and printed as one line at the period's end, the
//! last repeat standing for all of them (`count`, and `first_ns` for the first repeat's
//! time). Every printed alert carries its count, so summing them counts every connection.

use std::{collections::HashMap, net::IpAddr};

/// pid, executable (or comm), destination ip, port.
pub type Key = (Option<u64>, String, IpAddr, u16);

/// An alert leaving flood control: the alert itself (the last of the repeats it stands
/// for), how many connections it stands for, and when the first repeat was seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Folded<T> {
    pub item: T,
    pub state: FoldState,
}

/// `sensor.folded_count`, and for held repeats, the first one's time (`event.start`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FoldState {
    pub count: u64,
    pub first_ns: Option<i128>,
}

struct Entry<T> {
    start_ns: i128,
    held: u64,
    first_held_ns: i128,
    last: Option<T>,
}

pub struct Fold<T> {
    period_ns: i128,
    max_keys: usize,
    entries: HashMap<Key, Entry<T>>,
    last_scan_ns: i128,
    /// Connections that were folded into a later line.
    pub folded: u64,
    /// Alerts printed unfolded because the table was full.
    pub table_full: u64,
}

impl<T> Fold<T> {
    pub fn new(period_ns: i128, max_keys: usize) -> Self {
        Self {
            period_ns,
            max_keys,
            entries: HashMap::new(),
            last_scan_ns: i128::MIN,
            folded: 0,
            table_full: 0,
        }
    }

    /// Offers one alert; returns what to print now (possibly nothing, possibly a folded
    /// line of an earlier period as well).
    pub fn offer(&mut self, key: Key, item: T, ts: i128) -> Vec<Folded<T>> {
        self.offer_n(key, item, ts, 1)
    }

    /// Offers `n` identical alerts at once: repeats the kernel already folded, collected
    /// from its fold table, `item` standing for the last of them (at `ts`). Within the
    /// key's period they join the held repeats; otherwise they are printed now as one
    /// line counting `n`. The counts are only ever added, never re-counted.
    pub fn offer_n(&mut self, key: Key, item: T, ts: i128, n: u64) -> Vec<Folded<T>> {
        let mut out = self.advance(ts);
        if n == 0 {
            return out;
        }
        let now = |item| Folded {
            item,
            state: FoldState {
                count: n,
                first_ns: None,
            },
        };
        if self.period_ns <= 0 {
            out.push(now(item));
            return out;
        }
        if let Some(e) = self.entries.get_mut(&key) {
            if ts < e.start_ns + self.period_ns {
                if e.held == 0 {
                    e.first_held_ns = ts;
                }
                e.held += n;
                self.folded += n;
                e.last = Some(item);
                return out;
            }
            if let Some(line) = self.entries.remove(&key).and_then(finish) {
                out.push(line);
            }
        }
        if self.entries.len() >= self.max_keys {
            self.table_full += 1;
        } else {
            self.entries.insert(
                key,
                Entry {
                    start_ns: ts,
                    held: 0,
                    first_held_ns: ts,
                    last: None,
                },
            );
        }
        self.folded += n - 1;
        out.push(now(item));
        out
    }

    /// Folded lines of every period that has ended by `now_ns`. Scans at most once per
    /// tenth of a period so a replay calling this per line stays linear.
    pub fn advance(&mut self, now_ns: i128) -> Vec<Folded<T>> {
        if now_ns < self.last_scan_ns.saturating_add(self.period_ns / 10) {
            return Vec::new();
        }
        self.last_scan_ns = now_ns;
        let period = self.period_ns;
        let done: Vec<Key> = self
            .entries
            .iter()
            .filter(|(_, e)| now_ns >= e.start_ns + period)
            .map(|(k, _)| k.clone())
            .collect();
        let mut out: Vec<(i128, Folded<T>)> = done
            .into_iter()
            .filter_map(|k| self.entries.remove(&k))
            .filter_map(|e| {
                let t = e.first_held_ns;
                finish(e).map(|v| (t, v))
            })
            .collect();
        out.sort_by_key(|(t, _)| *t);
        out.into_iter().map(|(_, v)| v).collect()
    }

    /// Everything held (at exit or the end of a replay).
    pub fn flush(&mut self) -> Vec<Folded<T>> {
        self.last_scan_ns = i128::MIN;
        self.advance(i128::MAX)
    }
}

/// The held repeats of one period as one line, or nothing if there were none.
fn finish<T>(e: Entry<T>) -> Option<Folded<T>> {
    Some(Folded {
        item: e.last?,
        state: FoldState {
            count: e.held,
            first_ns: Some(e.first_held_ns),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i128 = 1_000_000_000;

    fn key(pid: u64) -> Key {
        (
            Some(pid),
            "/usr/bin/nc".into(),
            [203, 0, 113, 7].into(),
            4444,
        )
    }

    /// An alert is its timestamp here.
    fn doc(i: i128) -> i128 {
        i
    }

    fn count(v: &[Folded<i128>]) -> u64 {
        v.iter().map(|d| d.state.count).sum()
    }

    #[test]
    fn first_now_repeats_folded_at_period_end() {
        let mut f = Fold::new(10 * S, 100);
        let mut out = Vec::new();
        for i in 0..50 {
            out.extend(f.offer(key(1), doc(i * S / 10), i * S / 10));
        }
        assert_eq!(out.len(), 1, "only the first is printed at once");
        assert_eq!(out[0].state.count, 1);
        let later = f.advance(11 * S);
        assert_eq!(later.len(), 1);
        assert_eq!(later[0].state.count, 49);
        // event.start is the first repeat's time, event.end (the line itself) the last's.
        assert_eq!(later[0].state.first_ns, Some(S / 10));
        assert_eq!(later[0].item, 49 * S / 10);
        assert_eq!(f.folded, 49);
    }

    #[test]
    fn different_processes_or_ports_are_not_folded() {
        let mut f = Fold::new(10 * S, 100);
        let mut out = f.offer(key(1), doc(0), 0);
        out.extend(f.offer(key(2), doc(0), 0));
        let mut k = key(1);
        k.3 = 4445;
        out.extend(f.offer(k, doc(0), 0));
        assert_eq!(out.len(), 3);
    }

    #[test]
    fn property_no_connection_goes_uncounted() {
        let mut rng = crate::testrng::Rng::new(11);
        for max_keys in [1, 5, 1000] {
            let mut f = Fold::new(10 * S, max_keys);
            let mut out = Vec::new();
            let mut t = 0;
            let n = 5000;
            for _ in 0..n {
                t += rng.range(0, 2 * S as u64) as i128;
                out.extend(f.offer(key(rng.range(1, 20)), doc(t), t));
            }
            out.extend(f.flush());
            assert_eq!(count(&out), n, "max_keys {max_keys}");
            assert!(f.entries.len() <= max_keys);
        }
    }

    #[test]
    fn kernel_folded_repeats_are_added_once() {
        let mut f = Fold::new(10 * S, 100);
        // The kernel emitted the first, folded 999 repeats, collected twice.
        let mut out = f.offer(key(1), doc(0), 0);
        out.extend(f.offer_n(key(1), doc(S), S, 600));
        out.extend(f.offer_n(key(1), doc(2 * S), 2 * S, 399));
        assert_eq!(out.len(), 1);
        out.extend(f.advance(11 * S));
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].state.count, 999);
        assert_eq!(out[1].item, 2 * S);
        // Collected after the period ended: printed at once, counting all of them.
        out.extend(f.offer_n(key(1), doc(12 * S), 12 * S, 5));
        assert_eq!(out.last().unwrap().state.count, 5);
        out.extend(f.flush());
        assert_eq!(count(&out), 1 + 999 + 5);
        assert_eq!(f.folded, 999 + 4);
    }

    #[test]
    fn zero_period_disables_folding() {
        let mut f = Fold::new(0, 100);
        let out: Vec<_> = (0..5i128)
            .flat_map(|i| f.offer(key(1), doc(i), i))
            .collect();
        assert_eq!(out.len(), 5);
    }
}

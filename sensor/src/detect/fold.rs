//! Flood control: identical alerts (same pid, executable, destination, port) within a
//! period are folded. The first is printed at once (no added latency for a new alert);
//! repeats within the period are held and printed as one line at the period's end, the
//! last repeat standing for all of them (`count`, and `first_ns` for the first repeat's
//! time). Every printed alert carries its count, so summing them counts every connection.
//!
//! Memory is bounded in keys and in bytes: each key costs its executable name and, while
//! repeats are held, the last one in full (a process with long paths and a deep ancestry
//! makes that tens of KiB). Over the byte budget the oldest periods end early: their held
//! repeats are printed then, as the line their period's end would have printed, counted.

use std::{
    collections::{BTreeMap, HashMap},
    mem::size_of,
    net::IpAddr,
    sync::Arc,
};

use serde::Serialize;

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

/// Periods ended early, by reason, and the held lines that printed.
#[derive(
    Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[schemars(rename = "FoldEvictions")]
pub struct Evictions {
    /// Keys whose period ended early to keep the table within its byte budget.
    pub memory_budget: u64,
    /// Lines of held repeats printed early by those evictions (nothing is dropped).
    pub held_lines_printed_early: u64,
}

struct Entry<T> {
    start_ns: i128,
    /// Admission order, with `start_ns` the entry's place in [`Fold::order`].
    seq: u64,
    held: u64,
    first_held_ns: i128,
    /// Boxed: the map's slots stay small whatever `T` is.
    last: Option<Box<T>>,
    /// Estimated bytes: the key and the held item.
    bytes: usize,
}

/// Flood control's table; `T` is weighed by the function given to [`Fold::new`].
pub struct Fold<T> {
    period_ns: i128,
    max_keys: usize,
    max_bytes: usize,
    weigh: fn(&T) -> usize,
    entries: HashMap<Arc<Key>, Entry<T>>,
    /// Keys by (period start, admission): the oldest period is ended first.
    order: BTreeMap<(i128, u64), Arc<Key>>,
    seq: u64,
    bytes: usize,
    last_scan_ns: i128,
    /// Connections that were folded into a later line.
    pub folded: u64,
    /// Alerts printed unfolded because the table was full.
    pub table_full: u64,
    pub evictions: Evictions,
}

/// What a key costs besides its executable name: its slots in both maps (doubled for the
/// maps' spare room) and the shared key's allocation.
fn key_bytes<T>(key: &Key) -> usize {
    key.1.len()
        + 2 * (size_of::<(Arc<Key>, Entry<T>)>() + size_of::<((i128, u64), Arc<Key>)>())
        + size_of::<Key>()
        + 2 * size_of::<usize>()
}

impl<T> Fold<T> {
    /// `weigh` estimates the bytes one held item keeps (itself included: it is boxed).
    pub fn new(period_ns: i128, max_keys: usize, max_bytes: usize, weigh: fn(&T) -> usize) -> Self {
        Self {
            period_ns,
            max_keys,
            max_bytes,
            weigh,
            entries: HashMap::new(),
            order: BTreeMap::new(),
            seq: 0,
            bytes: 0,
            last_scan_ns: i128::MIN,
            folded: 0,
            table_full: 0,
            evictions: Evictions::default(),
        }
    }

    /// Keys held now.
    pub fn keys(&self) -> usize {
        self.entries.len()
    }

    /// Estimated bytes held (keys and held items).
    pub fn bytes(&self) -> usize {
        self.bytes
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
                let weight = (self.weigh)(&item);
                let old = e
                    .last
                    .replace(Box::new(item))
                    .map_or(0, |o| (self.weigh)(&o));
                e.bytes = e.bytes + weight - old;
                self.bytes = self.bytes + weight - old;
                self.fit(&mut out);
                return out;
            }
            if let Some(line) = self.remove(&key).and_then(finish) {
                out.push(line);
            }
        }
        if self.entries.len() >= self.max_keys {
            self.table_full += 1;
        } else {
            self.seq += 1;
            let bytes = key_bytes::<T>(&key);
            let key = Arc::new(key);
            self.order.insert((ts, self.seq), key.clone());
            self.entries.insert(
                key,
                Entry {
                    start_ns: ts,
                    seq: self.seq,
                    held: 0,
                    first_held_ns: ts,
                    last: None,
                    bytes,
                },
            );
            self.bytes += bytes;
        }
        self.folded += n - 1;
        self.fit(&mut out);
        out.push(now(item));
        out
    }

    /// Ends the oldest periods until the table is within its byte budget; their held
    /// repeats go to `out` as the lines the periods' ends would have printed.
    fn fit(&mut self, out: &mut Vec<Folded<T>>) {
        while self.bytes > self.max_bytes
            && let Some((_, key)) = self.order.first_key_value()
        {
            let key = key.clone();
            let Some(e) = self.remove(&key) else {
                break;
            };
            self.evictions.memory_budget += 1;
            if let Some(line) = finish(e) {
                self.evictions.held_lines_printed_early += 1;
                out.push(line);
            }
        }
    }

    fn remove(&mut self, key: &Key) -> Option<Entry<T>> {
        let e = self.entries.remove(key)?;
        self.order.remove(&(e.start_ns, e.seq));
        self.bytes -= e.bytes;
        Some(e)
    }

    /// Folded lines of every period that has ended by `now_ns`. Scans at most once per
    /// tenth of a period so a replay calling this per line stays linear.
    pub fn advance(&mut self, now_ns: i128) -> Vec<Folded<T>> {
        if now_ns < self.last_scan_ns.saturating_add(self.period_ns / 10) {
            return Vec::new();
        }
        self.last_scan_ns = now_ns;
        // Periods started before this one have ended.
        let cutoff = now_ns.saturating_sub(self.period_ns);
        let done: Vec<Arc<Key>> = self
            .order
            .range(..=(cutoff, u64::MAX))
            .map(|(_, k)| k.clone())
            .collect();
        let mut out: Vec<(i128, Folded<T>)> = done
            .into_iter()
            .filter_map(|k| self.remove(&k))
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
        item: *e.last?,
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
        let mut f = Fold::new(10 * S, 100, usize::MAX, |_| 0);
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
        let mut f = Fold::new(10 * S, 100, usize::MAX, |_| 0);
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
            let mut f = Fold::new(10 * S, max_keys, usize::MAX, |_| 0);
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

    /// Held items of `weight` bytes (a 4 KiB-path alert with 8 such ancestors is ~50 KiB)
    /// and 4 KiB executable names: the table stays within `max_bytes`, periods ended early
    /// print their held repeats, and no connection goes uncounted.
    #[rstest::rstest]
    #[case::roomy(usize::MAX, 40, 100)]
    #[case::hostile_items(256 << 10, 50 << 10, 100)]
    #[case::hostile_names(64 << 10, 0, 4000)]
    #[case::budget_below_one_item(1 << 10, 50 << 10, 100)]
    fn byte_budget_holds_and_nothing_is_lost(
        #[case] max_bytes: usize,
        #[case] weight: usize,
        #[case] name_len: usize,
    ) {
        let mut rng = crate::testrng::Rng::new(5);
        let mut f: Fold<(i128, usize)> = Fold::new(10 * S, 4096, max_bytes, |t| t.1);
        let mut out = Vec::new();
        let (mut t, n) = (0, 20_000);
        for _ in 0..n {
            t += rng.range(0, S as u64 / 100) as i128;
            let mut k = key(rng.range(1, 200));
            k.1 = format!("/{}", "x".repeat(name_len));
            out.extend(f.offer(k, (t, weight), t));
            assert!(f.bytes() <= max_bytes, "{} > {max_bytes}", f.bytes());
        }
        out.extend(f.flush());
        assert_eq!(out.iter().map(|d| d.state.count).sum::<u64>(), n);
        assert_eq!((f.bytes(), f.keys()), (0, 0));
        let e = f.evictions;
        assert_eq!(e.memory_budget > 0, max_bytes != usize::MAX, "{e:?}");
        assert_eq!(
            e.held_lines_printed_early > 0,
            max_bytes != usize::MAX,
            "{e:?}"
        );
    }

    #[test]
    fn kernel_folded_repeats_are_added_once() {
        let mut f = Fold::new(10 * S, 100, usize::MAX, |_| 0);
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
        let mut f = Fold::new(0, 100, usize::MAX, |_| 0);
        let out: Vec<_> = (0..5i128)
            .flat_map(|i| f.offer(key(1), doc(i), i))
            .collect();
        assert_eq!(out.len(), 5);
    }
}

//! Flood control: identical alerts (same pid, executable, destination, port) within a
//! period are folded. The first is printed at once (no added latency for a new alert);
//! repeats within the period are held and printed as one line at the period's end, the
//! last repeat carrying `sensor.folded_count` = how many connections it stands for. Every
//! printed alert has `sensor.folded_count`, so summing it counts every connection.

use std::collections::HashMap;

use serde_json::{Value, json};

use crate::output::clock;

/// pid, executable (or comm), destination ip, port.
pub type Key = (Option<u64>, String, String, u16);

struct Entry {
    start_ns: i128,
    held: u64,
    first_held_ns: i128,
    last: Option<Value>,
}

pub struct Fold {
    period_ns: i128,
    max_keys: usize,
    entries: HashMap<Key, Entry>,
    last_scan_ns: i128,
    /// Connections that were folded into a later line.
    pub folded: u64,
    /// Alerts printed unfolded because the table was full.
    pub table_full: u64,
}

impl Fold {
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
    pub fn offer(&mut self, key: Key, mut doc: Value, ts: i128) -> Vec<Value> {
        let mut out = self.advance(ts);
        if self.period_ns <= 0 {
            set_count(&mut doc, 1, None);
            out.push(doc);
            return out;
        }
        if let Some(e) = self.entries.get_mut(&key) {
            if ts < e.start_ns + self.period_ns {
                if e.held == 0 {
                    e.first_held_ns = ts;
                }
                e.held += 1;
                self.folded += 1;
                e.last = Some(doc);
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
        set_count(&mut doc, 1, None);
        out.push(doc);
        out
    }

    /// Folded lines of every period that has ended by `now_ns`. Scans at most once per
    /// tenth of a period so a replay calling this per line stays linear.
    pub fn advance(&mut self, now_ns: i128) -> Vec<Value> {
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
        let mut out: Vec<(i128, Value)> = done
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
    pub fn flush(&mut self) -> Vec<Value> {
        self.last_scan_ns = i128::MIN;
        self.advance(i128::MAX)
    }
}

/// The held repeats of one period as one line, or nothing if there were none.
fn finish(e: Entry) -> Option<Value> {
    let mut doc = e.last?;
    let first = e.first_held_ns;
    set_count(&mut doc, e.held, Some(first));
    Some(doc)
}

fn set_count(doc: &mut Value, n: u64, first_ns: Option<i128>) {
    let ts = doc.get("@timestamp").cloned();
    let Some(obj) = doc.as_object_mut() else {
        return;
    };
    let sensor = obj.entry("sensor").or_insert_with(|| json!({}));
    if let Some(sensor) = sensor.as_object_mut() {
        sensor.insert("folded_count".into(), json!(n));
    }
    // A folded line spans its connections: event.start is the first repeat, event.end
    // (like @timestamp) the last.
    if let (Some(first), Some(event)) = (
        first_ns,
        obj.get_mut("event").and_then(Value::as_object_mut),
    ) {
        event.insert("start".into(), json!(clock::rfc3339(first)));
        if let Some(ts) = ts {
            event.insert("end".into(), ts);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i128 = 1_000_000_000;

    fn key(pid: u64) -> Key {
        (Some(pid), "/usr/bin/nc".into(), "203.0.113.7".into(), 4444)
    }

    fn doc(i: i128) -> Value {
        json!({"@timestamp": clock::rfc3339(i), "event": {"kind": "alert"}, "sensor": {}})
    }

    fn count(v: &[Value]) -> u64 {
        v.iter()
            .map(|d| d["sensor"]["folded_count"].as_u64().unwrap())
            .sum()
    }

    #[test]
    fn first_now_repeats_folded_at_period_end() {
        let mut f = Fold::new(10 * S, 100);
        let mut out = Vec::new();
        for i in 0..50 {
            out.extend(f.offer(key(1), doc(i * S / 10), i * S / 10));
        }
        assert_eq!(out.len(), 1, "only the first is printed at once");
        assert_eq!(out[0]["sensor"]["folded_count"], 1);
        let later = f.advance(11 * S);
        assert_eq!(later.len(), 1);
        assert_eq!(later[0]["sensor"]["folded_count"], 49);
        assert_eq!(later[0]["event"]["start"], clock::rfc3339(S / 10));
        assert_eq!(later[0]["event"]["end"], clock::rfc3339(49 * S / 10));
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
    fn zero_period_disables_folding() {
        let mut f = Fold::new(0, 100);
        let out: Vec<_> = (0..5).flat_map(|i| f.offer(key(1), doc(i), i)).collect();
        assert_eq!(out.len(), 5);
    }
}

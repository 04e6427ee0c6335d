//! The beacon tracker's keys, fair per executable. One executable churning destinations
//! must not push out another's beacon: an executable holds at most its quota of keys
//! (evicting its own), and when the tracker is full, or over its byte budget, the key
//! evicted is one of the executable holding the most keys (ties: the one seen least
//! recently), and of its keys the one with the fewest beats, then least recently seen.
//! A beacon's key gains a beat per interval; a churner's keys have one each.
//!
//! Memory is bounded in keys and in bytes: each key's connection times are at most
//! `WINDOW + 1` (allocated exactly), each executable's name is stored once, and the
//! estimate in [`Table::bytes`] counts both.

use std::{
    cmp::Reverse,
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    mem::size_of,
    net::IpAddr,
    sync::Arc,
};

use serde::Serialize;

/// Connection times kept per key.
pub const TIMES: usize = super::WINDOW + 1;

type OwnerId = u64;
/// (executable, destination, port), the executable interned.
type Slot = (OwnerId, IpAddr, u16);
/// A key's place among its executable's keys: eviction takes the smallest.
type Rank = (usize, u64);

/// Why keys left the tracker, counted.
#[derive(
    Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[schemars(rename = "BeaconEvictions")]
pub struct Evictions {
    /// A new key of an executable already at its quota: one of its own keys.
    pub executable_quota: u64,
    /// A new key in a full tracker: one of the executable holding the most keys.
    pub tracker_full: u64,
    /// A new key over the byte budget (long executable names): as for a full tracker.
    pub memory_budget: u64,
}

impl Evictions {
    pub fn total(&self) -> u64 {
        self.executable_quota + self.tracker_full + self.memory_budget
    }
}

#[derive(Clone, Copy)]
enum Reason {
    Quota,
    Full,
    Bytes,
}

/// One key's history.
pub struct Track {
    /// Sorted connection times (Unix ns), at most [`TIMES`].
    pub times: VecDeque<i128>,
    pub connections: u64,
    pub first_seen_ns: i128,
    pub flagged: bool,
    rank: Rank,
}

struct Owner {
    name: Arc<str>,
    keys: BTreeMap<Rank, (IpAddr, u16)>,
    last_seq: u64,
}

impl Owner {
    fn heavy(&self, id: OwnerId) -> (usize, Reverse<u64>, OwnerId) {
        (self.keys.len(), Reverse(self.last_seq), id)
    }
}

/// What one key costs at most, estimated: its entries in the two maps (doubled for the
/// maps' spare room) and a full times buffer (charged up front, so a key's growth never
/// takes the tracker over its budget).
const fn key_bytes() -> usize {
    2 * (size_of::<Slot>() + size_of::<Track>() + size_of::<Rank>() + size_of::<(IpAddr, u16)>())
        + TIMES * size_of::<i128>()
}

/// What one executable costs beyond its keys: its name, once, and its entries.
fn owner_bytes(name_len: usize) -> usize {
    name_len
        + 2 * (size_of::<Owner>()
            + size_of::<(Arc<str>, OwnerId)>()
            + size_of::<(usize, Reverse<u64>, OwnerId)>())
}

pub struct Table {
    max_keys: usize,
    quota: usize,
    max_bytes: usize,
    ids: HashMap<Arc<str>, OwnerId>,
    owners: HashMap<OwnerId, Owner>,
    /// Executables by (keys held, least recently seen): the last is evicted from first.
    heavy: BTreeSet<(usize, Reverse<u64>, OwnerId)>,
    tracks: HashMap<Slot, Track>,
    next_owner: OwnerId,
    seq: u64,
    bytes: usize,
    pub evictions: Evictions,
}

impl Table {
    pub fn new(max_keys: usize, quota: usize, max_bytes: usize) -> Self {
        Self {
            max_keys: max_keys.max(1),
            quota: quota.clamp(1, max_keys.max(1)),
            max_bytes,
            ids: HashMap::new(),
            owners: HashMap::new(),
            heavy: BTreeSet::new(),
            tracks: HashMap::new(),
            next_owner: 0,
            seq: 0,
            bytes: 0,
            evictions: Evictions::default(),
        }
    }

    pub fn keys(&self) -> usize {
        self.tracks.len()
    }

    /// Estimated bytes held (keys with full windows of times, executable names).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Keys `who` holds now.
    #[cfg(test)]
    pub fn keys_of(&self, who: &str) -> usize {
        self.ids
            .get(who)
            .and_then(|id| self.owners.get(id))
            .map_or(0, |o| o.keys.len())
    }

    /// Whether the key is tracked.
    #[cfg(test)]
    pub fn contains(&self, who: &str, dst: IpAddr, port: u16) -> bool {
        self.ids
            .get(who)
            .is_some_and(|&id| self.tracks.contains_key(&(id, dst, port)))
    }

    /// Records connection time `ts_ns` on the key (making room for it when new) and
    /// returns its track; `None` only when even an empty tracker cannot afford the key.
    pub fn record(&mut self, who: &str, dst: IpAddr, port: u16, ts_ns: i128) -> Option<&mut Track> {
        self.seq += 1;
        let seq = self.seq;
        let id = match self.ids.get(who) {
            Some(&id) if self.tracks.contains_key(&(id, dst, port)) => id,
            _ => self.admit(who, dst, port, ts_ns)?,
        };
        let slot = (id, dst, port);
        let track = self.tracks.get_mut(&slot)?;
        track.connections += 1;
        track.first_seen_ns = track.first_seen_ns.min(ts_ns);
        insert_time(&mut track.times, ts_ns);
        let rank = (track.times.len(), seq);
        let old = std::mem::replace(&mut track.rank, rank);
        let owner = self.owners.get_mut(&id)?;
        self.heavy.remove(&owner.heavy(id));
        owner.keys.remove(&old);
        owner.keys.insert(rank, (dst, port));
        owner.last_seq = seq;
        self.heavy.insert(owner.heavy(id));
        self.tracks.get_mut(&slot)
    }

    /// Makes room for a new key of `who` and inserts it, empty.
    fn admit(&mut self, who: &str, dst: IpAddr, port: u16, ts_ns: i128) -> Option<OwnerId> {
        if let Some(&id) = self.ids.get(who)
            && self
                .owners
                .get(&id)
                .is_some_and(|o| o.keys.len() >= self.quota)
        {
            self.evict_from(id, Reason::Quota);
        }
        while self.tracks.len() >= self.max_keys && self.evict_heaviest(Reason::Full) {}
        let cost = |t: &Self| {
            key_bytes()
                + if t.ids.contains_key(who) {
                    0
                } else {
                    owner_bytes(who.len())
                }
        };
        while self.bytes + cost(self) > self.max_bytes && self.evict_heaviest(Reason::Bytes) {}
        if self.bytes + cost(self) > self.max_bytes {
            return None;
        }
        let id = match self.ids.get(who) {
            Some(&id) => id,
            None => {
                let id = self.next_owner;
                self.next_owner += 1;
                let name: Arc<str> = who.into();
                self.ids.insert(name.clone(), id);
                let owner = Owner {
                    name,
                    keys: BTreeMap::new(),
                    last_seq: self.seq,
                };
                self.heavy.insert(owner.heavy(id));
                self.owners.insert(id, owner);
                self.bytes += owner_bytes(who.len());
                id
            }
        };
        let rank = (0, self.seq);
        let owner = self.owners.get_mut(&id)?;
        self.heavy.remove(&owner.heavy(id));
        owner.keys.insert(rank, (dst, port));
        self.heavy.insert(owner.heavy(id));
        self.tracks.insert(
            (id, dst, port),
            Track {
                times: VecDeque::new(),
                connections: 0,
                first_seen_ns: ts_ns,
                flagged: false,
                rank,
            },
        );
        self.bytes += key_bytes();
        Some(id)
    }

    fn evict_heaviest(&mut self, reason: Reason) -> bool {
        match self.heavy.last() {
            Some(&(_, _, id)) => self.evict_from(id, reason),
            None => false,
        }
    }

    /// Evicts `id`'s key with the fewest beats, least recently seen; an executable left
    /// with no key is forgotten.
    fn evict_from(&mut self, id: OwnerId, reason: Reason) -> bool {
        let Some(owner) = self.owners.get_mut(&id) else {
            return false;
        };
        self.heavy.remove(&owner.heavy(id));
        let Some((_, (dst, port))) = owner.keys.pop_first() else {
            return false;
        };
        if owner.keys.is_empty() {
            let name_len = owner.name.len();
            let name = owner.name.clone();
            self.owners.remove(&id);
            self.ids.remove(&name);
            self.bytes = self.bytes.saturating_sub(owner_bytes(name_len));
        } else {
            self.heavy.insert(owner.heavy(id));
        }
        if self.tracks.remove(&(id, dst, port)).is_some() {
            self.bytes = self.bytes.saturating_sub(key_bytes());
        }
        let counter = match reason {
            Reason::Quota => &mut self.evictions.executable_quota,
            Reason::Full => &mut self.evictions.tracker_full,
            Reason::Bytes => &mut self.evictions.memory_budget,
        };
        *counter += 1;
        true
    }
}

/// Keeps `times` sorted (events from different CPUs can arrive slightly out of order) and
/// at most [`TIMES`] long, its buffer growing to exactly that; a time within
/// [`super::BURST_NS`] of a kept one is the same beat and adds nothing.
fn insert_time(times: &mut VecDeque<i128>, ts_ns: i128) {
    if times.iter().any(|&t| (t - ts_ns).abs() < super::BURST_NS) {
        return;
    }
    let mut pos = times.partition_point(|&t| t < ts_ns);
    if times.len() >= TIMES {
        if pos == 0 {
            return; // older than every kept time: it would be dropped at once
        }
        times.pop_front();
        pos -= 1;
    }
    if times.len() == times.capacity() {
        let grow = times.capacity().max(2).min(TIMES - times.len());
        times.reserve_exact(grow);
    }
    times.insert(pos, ts_ns);
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;

    const S: i128 = 1_000_000_000;

    fn ip(n: u32) -> IpAddr {
        IpAddr::from(n.to_be_bytes())
    }

    /// Bytes recounted from what the table holds, to check the running estimate.
    fn recount(t: &Table) -> usize {
        t.tracks
            .values()
            .map(|k| {
                assert!(k.times.capacity() <= TIMES);
                key_bytes()
            })
            .sum::<usize>()
            + t.owners
                .values()
                .map(|o| owner_bytes(o.name.len()))
                .sum::<usize>()
    }

    #[rstest]
    #[case::quota_1(4, 1)]
    #[case::quota_16(64, 16)]
    #[case::quota_1024(4096, 1024)]
    fn an_executable_over_its_quota_evicts_its_own_keys(
        #[case] max_keys: usize,
        #[case] quota: usize,
    ) {
        let mut t = Table::new(max_keys, quota, usize::MAX);
        t.record("beacon", ip(1), 9001, 0);
        for i in 0..5 * max_keys as u32 {
            t.record("churn", ip(i), 20_000, i128::from(i));
        }
        assert_eq!(t.keys_of("churn"), quota);
        assert!(t.contains("beacon", ip(1), 9001));
        assert_eq!(
            t.evictions,
            Evictions {
                executable_quota: 5 * max_keys as u64 - quota as u64,
                ..Evictions::default()
            }
        );
        // The most recent keys are the ones kept.
        let last = 5 * max_keys as u32 - 1;
        assert!(t.contains("churn", ip(last), 20_000));
        assert_eq!(t.bytes(), recount(&t));
    }

    #[test]
    fn a_full_tracker_evicts_from_the_executable_holding_most() {
        let mut t = Table::new(8, 8, usize::MAX);
        for i in 0..5 {
            t.record("heavy", ip(i), 1, 0);
        }
        for i in 0..3 {
            t.record("light", ip(i), 1, 0);
        }
        // Full (8). A new executable's key evicts heavy's, until heavy and light hold 3 each.
        for (n, who) in ["a", "b"].into_iter().enumerate() {
            t.record(who, ip(0), 1, 0);
            assert_eq!(t.keys_of("heavy"), 4 - n, "{who}");
        }
        assert_eq!(t.keys_of("light"), 3);
        assert_eq!(t.evictions.tracker_full, 2);
        // Heavy and light tie at 3: the one seen least recently gives a key.
        t.record("light", ip(0), 1, 10 * S);
        t.record("c", ip(0), 1, 0);
        assert_eq!((t.keys_of("heavy"), t.keys_of("light")), (2, 3));
        assert_eq!(t.keys(), 8);
    }

    #[rstest]
    // (beats of keys 0, 1, 2 in order of last use) -> the key evicted
    #[case::fewest_beats_first([3, 1, 2], 1)]
    #[case::least_recent_among_equal_beats([2, 2, 2], 0)]
    #[case::a_recent_one_beat_key_before_an_old_beacon([5, 5, 1], 2)]
    fn within_an_executable_fewest_beats_then_least_recent_go_first(
        #[case] beats: [i128; 3],
        #[case] evicted: u32,
    ) {
        let mut t = Table::new(100, 3, usize::MAX);
        for (k, n) in beats.iter().enumerate() {
            for b in 0..*n {
                t.record("p", ip(k as u32), 1, b * S);
            }
        }
        t.record("p", ip(9), 1, 0);
        for k in 0..3u32 {
            assert_eq!(t.contains("p", ip(k), 1), k != evicted, "key {k}");
        }
        assert_eq!(t.evictions.executable_quota, 1);
    }

    #[test]
    fn times_are_bounded_and_allocated_exactly() {
        let mut t = Table::new(10, 10, usize::MAX);
        for b in 0..1000 {
            t.record("p", ip(1), 1, b * S);
        }
        let track = t.record("p", ip(1), 1, 1000 * S).unwrap();
        assert_eq!(track.times.len(), TIMES);
        assert_eq!(track.times.capacity(), TIMES);
        assert_eq!(track.connections, 1001);
        // Older than every kept time: counted, not kept.
        let track = t.record("p", ip(1), 1, 0).unwrap();
        assert_eq!(track.times.front(), Some(&(968 * S)));
        assert_eq!(t.bytes(), recount(&t));
    }

    #[rstest]
    #[case::short_names(10)]
    #[case::long_names(4096)]
    fn bytes_stay_within_the_budget(#[case] name_len: usize) {
        let budget = 64 * 1024;
        let mut t = Table::new(10_000, 10_000, budget);
        for i in 0..2000u32 {
            let who = format!("{:0>width$}", i % 50, width = name_len);
            for b in 0..(i128::from(i) % 40) {
                t.record(&who, ip(i), 1, b * S);
            }
            assert!(t.bytes() <= budget, "{} > {budget}", t.bytes());
            assert_eq!(t.bytes(), recount(&t));
        }
        assert!(t.evictions.memory_budget > 0);
        assert_eq!(t.evictions.tracker_full + t.evictions.executable_quota, 0);
    }

    #[test]
    fn a_key_larger_than_the_budget_is_not_tracked() {
        let mut t = Table::new(10, 10, 100);
        assert!(t.record(&"x".repeat(200), ip(1), 1, 0).is_none());
        assert_eq!((t.keys(), t.bytes()), (0, 0));
    }
}

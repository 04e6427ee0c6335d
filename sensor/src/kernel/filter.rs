//! The kernel's connect filter, fold table and record counters, seen from userspace.
//!
//! The policy's cheap parts go into BPF maps: a port bitmap (bit set: standard and not a
//! C2 port, so a connect there can neither score nor feed a beacon) and LPM tries of
//! excluded networks. Two generations of those maps exist; a push fills the one not in
//! force completely, then flips `FILTER_ACTIVE`, so a connect is judged either by the old
//! policy or by the new one, never by a half-written one. The generation written is the
//! one the kernel stopped reading at the previous push (seconds ago, at least one event
//! loop turn), so no program still reads it.
//!
//! The fold table holds, per (process, destination, port), how many repeats the kernel
//! folded; [`KernelFold::collect`] turns the growth of those counts into deltas userspace
//! adds to its own flood control, and forgets keys idle for two periods.

use std::collections::HashMap;

use anyhow::{Context, Result, bail};
use aya::{
    Ebpf,
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, lpm_trie::Key, lpm_trie::LpmTrie},
};
use ipnet::IpNet;
use sensor_common::{
    COUNTED_KINDS, COUNTERS_MAP, EXCLUDED_MAX, EXCLUDED_V4_MAPS, EXCLUDED_V6_MAPS,
    FILTER_ACTIVE_MAP, FILTER_SETTINGS_MAP, FOLD_MAP, FOLD_TABLE_FULL_SLOT, FOLDED_SLOT,
    FilterSettings, FoldKey, FoldValue, PORT_BITS_MAP, PORT_WORDS, RecordKind, STAT_EMITTED,
    STAT_FILTERED, STAT_LOST, STAT_SEEN, counter_slot,
};

/// What the kernel is told: which connects cannot matter, and whether to fold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterPolicy {
    /// 1024 words, bit `p` set: port `p` is standard and not C2.
    pub port_bits: Vec<u64>,
    pub v4: Vec<(u8, [u8; 4])>,
    pub v6: Vec<(u8, [u8; 16])>,
    pub settings: FilterSettings,
}

impl FilterPolicy {
    /// `dropped_ports`: ports no connect to can score or beacon (the policy's standard
    /// ports that are not C2 ports; detect decides, this layer only encodes).
    /// `excluded`: the policy's excluded networks.
    /// `all`: `--all`, every connect passes and none is folded (every one is printed).
    /// `fold_ns`: `--fold-period` (0: no folding).
    pub fn new(
        dropped_ports: impl IntoIterator<Item = u16>,
        excluded: &[IpNet],
        all: bool,
        fold_ns: u64,
    ) -> Result<Self> {
        let mut port_bits = vec![0u64; PORT_WORDS as usize];
        for p in dropped_ports {
            port_bits[usize::from(p >> 6)] |= 1 << (p & 63);
        }
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for net in excluded {
            match net.trunc() {
                IpNet::V4(n) => v4.push((n.prefix_len(), n.network().octets())),
                IpNet::V6(n) => v6.push((n.prefix_len(), n.network().octets())),
            }
        }
        for (family, n) in [("IPv4", v4.len()), ("IPv6", v6.len())] {
            if n > EXCLUDED_MAX as usize {
                bail!(
                    "{n} excluded {family} networks, more than the kernel filter holds ({EXCLUDED_MAX})"
                );
            }
        }
        Ok(Self {
            port_bits,
            v4,
            v6,
            settings: FilterSettings {
                filter: u32::from(!all),
                fold: u32::from(!all && fold_ns > 0),
                fold_ns,
            },
        })
    }

    /// Everything passes, nothing folds: what the kernel is told when a policy cannot be
    /// expressed in its maps, so it never drops what userspace's policy wants to see.
    pub fn pass_all() -> Self {
        Self {
            port_bits: vec![0u64; PORT_WORDS as usize],
            v4: Vec::new(),
            v6: Vec::new(),
            settings: FilterSettings::default(),
        }
    }

    /// Whether the kernel drops a connect to `port` whatever its destination.
    pub fn port_dropped(&self, port: u16) -> bool {
        self.port_bits[usize::from(port >> 6)] >> (port & 63) & 1 != 0
    }
}

/// The filter maps of both generations, taken from the loaded object.
pub struct KernelFilter {
    active: Array<MapData, u32>,
    settings: Array<MapData, FilterSettings>,
    port_bits: Array<MapData, u64>,
    v4: [LpmTrie<MapData, [u8; 4], u8>; 2],
    v6: [LpmTrie<MapData, [u8; 16], u8>; 2],
    generation: u32,
    /// Generation pushed before: words not in `port_bits` of the new push are cleared.
    written: [Option<Vec<u64>>; 2],
}

fn take(ebpf: &mut Ebpf, name: &str) -> Result<aya::maps::Map> {
    ebpf.take_map(name)
        .with_context(|| format!("map {name} missing from the eBPF object"))
}

impl KernelFilter {
    pub fn take(ebpf: &mut Ebpf) -> Result<Self> {
        let trie4 = |ebpf: &mut Ebpf, n| -> Result<LpmTrie<MapData, [u8; 4], u8>> {
            Ok(LpmTrie::try_from(take(ebpf, n)?)?)
        };
        let trie6 = |ebpf: &mut Ebpf, n| -> Result<LpmTrie<MapData, [u8; 16], u8>> {
            Ok(LpmTrie::try_from(take(ebpf, n)?)?)
        };
        let active: Array<MapData, u32> = Array::try_from(take(ebpf, FILTER_ACTIVE_MAP)?)?;
        let generation = active.get(&0, 0).context("reading FILTER_ACTIVE")? & 1;
        Ok(Self {
            active,
            settings: Array::try_from(take(ebpf, FILTER_SETTINGS_MAP)?)?,
            port_bits: Array::try_from(take(ebpf, PORT_BITS_MAP)?)?,
            v4: [
                trie4(ebpf, EXCLUDED_V4_MAPS[0])?,
                trie4(ebpf, EXCLUDED_V4_MAPS[1])?,
            ],
            v6: [
                trie6(ebpf, EXCLUDED_V6_MAPS[0])?,
                trie6(ebpf, EXCLUDED_V6_MAPS[1])?,
            ],
            generation,
            written: [None, None],
        })
    }

    /// The generation in force.
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// Fills the generation not in force with `p`, then makes it the one in force. On
    /// error the generation in force is untouched.
    pub fn push(&mut self, p: &FilterPolicy) -> Result<()> {
        let g = 1 - self.generation;
        let gi = g as usize;
        let base = g * PORT_WORDS;
        let old = self.written[gi].take();
        for (i, &w) in p.port_bits.iter().enumerate() {
            // Only words that differ from what this generation held (all on the first push).
            if old.as_ref().is_some_and(|o| o[i] == w) {
                continue;
            }
            self.port_bits
                .set(base + i as u32, w, 0)
                .context("writing the port bitmap")?;
        }
        let stale4: Vec<Key<[u8; 4]>> = self.v4[gi].keys().filter_map(Result::ok).collect();
        for k in &stale4 {
            self.v4[gi]
                .remove(k)
                .context("clearing excluded IPv4 networks")?;
        }
        let stale6: Vec<Key<[u8; 16]>> = self.v6[gi].keys().filter_map(Result::ok).collect();
        for k in &stale6 {
            self.v6[gi]
                .remove(k)
                .context("clearing excluded IPv6 networks")?;
        }
        for (len, a) in &p.v4 {
            self.v4[gi]
                .insert(&Key::new(u32::from(*len), *a), 1, 0)
                .context("writing excluded IPv4 networks")?;
        }
        for (len, a) in &p.v6 {
            self.v6[gi]
                .insert(&Key::new(u32::from(*len), *a), 1, 0)
                .context("writing excluded IPv6 networks")?;
        }
        self.settings
            .set(g, p.settings, 0)
            .context("writing the filter settings")?;
        self.written[gi] = Some(p.port_bits.clone());
        // The flip: one word, read once per event by the kernel.
        self.active
            .set(0, g, 0)
            .context("flipping the filter generation")?;
        self.generation = g;
        Ok(())
    }
}

/// The kernel's per-CPU record counters, summed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct KernelCounts {
    /// Per record kind (a `RecordKind` value as index): seen, filtered, emitted, lost.
    pub kinds: [[u64; 4]; COUNTED_KINDS as usize],
    pub folded: u64,
    pub fold_table_full: u64,
}

// `KernelCounts::kinds` holds each kind's counters in slot order: seen, filtered, emitted, lost.
const _: () = assert!(
    STAT_SEEN == 0 && STAT_FILTERED == 1 && STAT_EMITTED == 2 && STAT_LOST == 3,
    "Outcomes order"
);

impl KernelCounts {
    pub fn of(&self, kind: RecordKind) -> [u64; 4] {
        self.kinds[kind as usize]
    }

    /// Per record kind, by name, as `sensor.kernel.records` reports them.
    pub fn records(&self) -> Records {
        let of = |kind| {
            let [seen, filtered, emitted, lost] = self.of(kind);
            Outcomes {
                seen,
                filtered,
                emitted,
                lost,
            }
        };
        Records {
            connect: of(RecordKind::Connect),
            exec: of(RecordKind::Exec),
            fork: of(RecordKind::Fork),
            exit: of(RecordKind::Exit),
            listen: of(RecordKind::Listen),
            inbound: of(RecordKind::Inbound),
            udp: of(RecordKind::Udp),
        }
    }
}

/// What became of one kind's records in the kernel.
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
pub struct Outcomes {
    pub seen: u64,
    pub filtered: u64,
    pub emitted: u64,
    pub lost: u64,
}

/// The kernel's record counters by kind.
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
pub struct Records {
    pub connect: Outcomes,
    pub exec: Outcomes,
    pub fork: Outcomes,
    pub exit: Outcomes,
    pub listen: Outcomes,
    pub inbound: Outcomes,
    pub udp: Outcomes,
}

pub struct CounterReader {
    map: PerCpuArray<MapData, u64>,
}

impl CounterReader {
    pub fn take(ebpf: &mut Ebpf) -> Result<Self> {
        Ok(Self {
            map: PerCpuArray::try_from(take(ebpf, COUNTERS_MAP)?)
                .context("COUNTERS is not a per-CPU array")?,
        })
    }

    fn slot(&self, slot: u32) -> Result<u64> {
        let per_cpu = self.map.get(&slot, 0).context("reading the counters map")?;
        Ok(per_cpu.iter().copied().fold(0u64, u64::saturating_add))
    }

    pub fn read(&self) -> Result<KernelCounts> {
        let mut c = KernelCounts::default();
        for (kind, row) in c.kinds.iter_mut().enumerate() {
            for (stat, v) in row.iter_mut().enumerate() {
                *v = self.slot(counter_slot(kind as u32, stat as u32))?;
            }
        }
        c.folded = self.slot(FOLDED_SLOT)?;
        c.fold_table_full = self.slot(FOLD_TABLE_FULL_SLOT)?;
        Ok(c)
    }
}

/// CLOCK_BOOTTIME now, in the kernel records' nanoseconds.
pub fn boot_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// Growth of one key's folded count since the last collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FoldDelta {
    pub key: FoldKey,
    /// Connects folded since the previous collection.
    pub count: u64,
    /// The key's latest connect (CLOCK_BOOTTIME ns).
    pub last_ns: u64,
}

/// The kernel fold table and what userspace already collected from it.
pub struct KernelFold {
    map: BpfHashMap<MapData, FoldKey, FoldValue>,
    collected: HashMap<FoldKey, u64>,
    /// Folded connects handed to userspace so far.
    pub collected_total: u64,
    /// Idle keys deleted.
    pub deleted: u64,
    pub keys: usize,
}

impl KernelFold {
    pub fn take(ebpf: &mut Ebpf) -> Result<Self> {
        Ok(Self {
            map: BpfHashMap::try_from(take(ebpf, FOLD_MAP)?).context("FOLD is not a hash map")?,
            collected: HashMap::new(),
            collected_total: 0,
            deleted: 0,
            keys: 0,
        })
    }

    /// Every key's growth since the last call, and keys idle for over `2 * period_ns` at
    /// `now_ns` (CLOCK_BOOTTIME) deleted. A key is re-read just before its deletion and
    /// kept if it moved. Residual race: a repeat folded between that re-read and the
    /// delete (microseconds, and only for a key idle two periods that sees two connects
    /// 250 ms apart at most in that instant) is not counted.
    ///
    /// `ready(key, value)` says whether a key's growth may be taken now: userspace waits
    /// until it has handled the key's first (emitted) record, still in the ring buffer
    /// under a backlog, so the repeats are reported with that record's details.
    pub fn collect(
        &mut self,
        now_ns: u64,
        period_ns: u64,
        ready: impl Fn(&FoldKey, &FoldValue) -> bool,
    ) -> Vec<FoldDelta> {
        let entries: Vec<(FoldKey, FoldValue)> = self.map.iter().filter_map(Result::ok).collect();
        self.keys = entries.len();
        let mut out = Vec::new();
        for (key, v) in entries {
            let seen = self.collected.entry(key).or_insert(0);
            if v.folded > *seen && ready(&key, &v) {
                out.push(FoldDelta {
                    key,
                    count: v.folded - *seen,
                    last_ns: v.last_ns,
                });
                self.collected_total += v.folded - *seen;
                *seen = v.folded;
            }
            if now_ns.saturating_sub(v.last_ns) > period_ns.saturating_mul(2)
                && self.collected.get(&key) == Some(&v.folded)
                && self.map.get(&key, 0).is_ok_and(|again| again == v)
                && self.map.remove(&key).is_ok()
            {
                self.collected.remove(&key);
                self.deleted += 1;
                self.keys -= 1;
            }
        }
        // Keys gone from the map (never expected otherwise) are forgotten too.
        if self.collected.len() > self.keys {
            let live: std::collections::HashSet<FoldKey> =
                self.map.keys().filter_map(Result::ok).collect();
            self.collected.retain(|k, _| live.contains(k));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DROPPED: [u16; 3] = [80, 443, 65535];

    #[test]
    fn port_bits_are_the_dropped_ports() {
        let f = FilterPolicy::new(DROPPED, &[], false, 10).unwrap();
        for port in 0..=u16::MAX {
            assert_eq!(f.port_dropped(port), DROPPED.contains(&port), "port {port}");
        }
        assert_eq!(
            f.settings,
            FilterSettings {
                filter: 1,
                fold: 1,
                fold_ns: 10
            }
        );
    }

    #[test]
    fn all_turns_filter_and_fold_off() {
        let f = FilterPolicy::new(DROPPED, &[], true, 10).unwrap();
        assert_eq!((f.settings.filter, f.settings.fold), (0, 0));
        let f = FilterPolicy::new(DROPPED, &[], false, 0).unwrap();
        assert_eq!((f.settings.filter, f.settings.fold), (1, 0));
    }

    #[test]
    fn networks_split_by_family_with_host_bits_cleared() {
        let nets: Vec<IpNet> = vec![
            "10.1.2.3/8".parse().unwrap(),
            "2001:db8:1::5/48".parse().unwrap(),
        ];
        let f = FilterPolicy::new(DROPPED, &nets, false, 0).unwrap();
        assert_eq!(f.v4, vec![(8, [10, 0, 0, 0])]);
        assert_eq!(f.v6.len(), 1);
        assert_eq!(f.v6[0].0, 48);
        assert_eq!(&f.v6[0].1[..6], &[0x20, 0x01, 0x0d, 0xb8, 0, 1]);
        assert!(f.v6[0].1[6..].iter().all(|&b| b == 0));
    }
}

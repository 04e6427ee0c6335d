//! The in-kernel filter and fold for outbound connects (TCP and UDP). Policy stays in
//! userspace: it writes which ports and networks cannot matter into the generation not in
//! force, then flips `FILTER_ACTIVE`; the programs only look bits and prefixes up.
//! Process identity is never judged here: a connect passes unless its destination alone
//! rules it out.

use aya_ebpf::{bindings::BPF_NOEXIST, maps::lpm_trie::Key};
use sensor_common::{
    AF_INET, AF_INET6, ConnectEvent, FOLD_BURST_NS, FOLD_TABLE_FULL_SLOT, FOLDED_SLOT,
    FilterSettings, FoldKey, FoldValue, PORT_WORDS, STAT_FILTERED,
};

use crate::maps::{
    EXCLUDED_V4_0, EXCLUDED_V4_1, EXCLUDED_V6_0, EXCLUDED_V6_1, FILTER_ACTIVE, FILTER_SETTINGS,
    FOLD, PORT_BITS, bump, count_stat,
};

/// The generation in force and its settings, read once per event.
#[inline(always)]
pub(crate) fn active() -> (u32, FilterSettings) {
    let generation = FILTER_ACTIVE.get(0).map_or(0, |g| *g & 1);
    let settings = FILTER_SETTINGS
        .get(generation)
        .copied()
        .unwrap_or(FilterSettings {
            filter: 0,
            fold: 0,
            fold_ns: 0,
        });
    (generation, settings)
}

/// Whether a connect of `kind` to `family`/`daddr`/`dport` is dropped: its port bit is
/// set (standard, not C2) or its destination is in an excluded network. Counted.
#[inline(always)]
pub(crate) fn filtered(
    generation: u32,
    s: &FilterSettings,
    kind: u32,
    family: u16,
    daddr: &[u8; 16],
    dport: u16,
) -> bool {
    let drop = would_filter(generation, s, family, daddr, dport);
    if drop {
        count_stat(kind, STAT_FILTERED);
    }
    drop
}

/// [`filtered`] without counting: what the filter decides for a connect another hook
/// reports.
#[inline(always)]
pub(crate) fn would_filter(
    generation: u32,
    s: &FilterSettings,
    family: u16,
    daddr: &[u8; 16],
    dport: u16,
) -> bool {
    s.filter != 0 && (port_bit(generation, dport) || excluded(generation, family, daddr))
}

#[inline(always)]
pub(crate) fn port_bit(generation: u32, port: u16) -> bool {
    let word = generation * PORT_WORDS + u32::from(port >> 6);
    PORT_BITS
        .get(word)
        .is_some_and(|w| (*w >> (port & 63)) & 1 != 0)
}

#[inline(always)]
pub(crate) fn excluded(generation: u32, family: u16, daddr: &[u8; 16]) -> bool {
    let mapped = family == AF_INET6
        && daddr[..10].iter().all(|&b| b == 0)
        && daddr[10] == 0xff
        && daddr[11] == 0xff;
    if family == AF_INET || mapped {
        let at = if mapped { 12 } else { 0 };
        let key = Key::new(32, [daddr[at], daddr[at + 1], daddr[at + 2], daddr[at + 3]]);
        let trie = if generation == 0 {
            &EXCLUDED_V4_0
        } else {
            &EXCLUDED_V4_1
        };
        trie.get(&key).is_some()
    } else if family == AF_INET6 {
        let key = Key::new(128, *daddr);
        let trie = if generation == 0 {
            &EXCLUDED_V6_0
        } else {
            &EXCLUDED_V6_1
        };
        trie.get(&key).is_some()
    } else {
        false
    }
}

/// Whether this TCP connect is a repeat to fold: same process, destination and port
/// within the fold period, and within [`FOLD_BURST_NS`] of the key's previous connect
/// (so beacon beats still go up). A folded connect only bumps the key's count, which
/// userspace collects. A new key is inserted and passes; when the table is full the
/// connect passes unfolded, counted.
#[inline(always)]
pub(crate) fn folded(s: &FilterSettings, ev: &ConnectEvent) -> bool {
    if s.fold == 0 || s.fold_ns == 0 {
        return false;
    }
    let key = FoldKey {
        tgid: ev.header.tgid,
        family: ev.data.family,
        dport: ev.data.dport,
        start_time_ns: ev.header.start_time_ns,
        daddr: ev.data.daddr,
    };
    let now = ev.header.ktime_ns;
    match FOLD.get_ptr_mut(&key) {
        Some(v) => {
            // SAFETY: a value of our own hash map; other CPUs may write it concurrently,
            // so the count is bumped atomically and the times are best effort.
            unsafe {
                let start = (*v).window_start_ns;
                let last = (*v).last_ns;
                (*v).last_ns = now;
                if now.wrapping_sub(start) < s.fold_ns && now.wrapping_sub(last) < FOLD_BURST_NS {
                    atomic_inc(&raw mut (*v).folded);
                    bump(FOLDED_SLOT);
                    return true;
                }
                if now.wrapping_sub(start) >= s.fold_ns {
                    (*v).window_start_ns = now;
                }
            }
            false
        }
        None => {
            let fresh = FoldValue {
                window_start_ns: now,
                last_ns: now,
                folded: 0,
            };
            // -EEXIST: another CPU inserted the key first; anything else: full.
            if let Err(e) = FOLD.insert(&key, &fresh, u64::from(BPF_NOEXIST))
                && e != -17
            {
                bump(FOLD_TABLE_FULL_SLOT);
            }
            false
        }
    }
}

/// `lock *(u64 *)p += 1`: BPF's atomic add. Several CPUs may fold the same key at once
/// (a threaded flood), and core offers no read-modify-write atomics on this target.
///
/// # Safety
/// `p` points to a `u64` in a map value.
#[inline(always)]
unsafe fn atomic_inc(p: *mut u64) {
    // SAFETY: `p` is a valid, aligned map value pointer (caller).
    unsafe {
        core::arch::asm!(
            "lock *(u64 *)({p} + 0) += {one}",
            p = in(reg) p,
            one = in(reg) 1u64,
            options(nostack),
        );
    }
}

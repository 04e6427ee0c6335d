//! What the kernel filtered, folded and counted, as userspace last read it, and the last
//! connect record of each kernel fold key, kept to stand for the repeats the kernel folds.

use std::collections::HashMap;

use crate::{
    kernel::{
        filter::KernelCounts, fold::fold_key, protocol::KernelProtocolCounts, records::Connection,
    },
    output::metrics::stats,
};
use sensor_common::{FOLD_MAX, FoldKey};

/// What the kernel filtered, folded and counted, as last read, and the connects it
/// folded that userspace has collected.
#[derive(Debug, Default)]
pub struct KernelSide {
    pub counts: KernelCounts,
    /// Folded connects collected from the kernel's fold table and counted in.
    pub fold_collected: u64,
    /// Keys in the kernel's fold table at the last collection, and idle ones deleted.
    pub fold_keys: usize,
    pub fold_keys_deleted: u64,
    /// Reads of the kernel's counters that failed.
    pub read_errors: u64,
    /// Policy pushes into the kernel's filter maps, and the generation in force.
    pub filter_pushes: u64,
    pub filter_generation: u32,
    /// Whether the kernel folds (then the last record of each key is kept as the template
    /// its folded repeats are reported with).
    pub folding: bool,
    /// Per kernel fold key, the last connect record seen.
    pub(super) templates: HashMap<FoldKey, Connection>,
    /// Estimated bytes the templates hold, and records not kept for that budget (their
    /// repeats are then built from the key, counted in `fold_untemplated`).
    template_bytes: usize,
    pub templates_refused: u64,
    /// The kernel time of the latest connect record handled: the ring buffer is read in
    /// order, so a key whose window started well before it has had its first record seen.
    handled_ns: u64,
    /// Collected repeats with no record kept to stand for them (built from the key).
    pub fold_untemplated: u64,
    /// The protocol egress hook's counters as last read, and what userspace did with its
    /// records.
    pub protocol: KernelProtocolCounts,
    pub payloads: super::PayloadCounts,
}

/// Bytes the templates may hold: one per kernel fold key would be up to 2 x 16,384 records.
const MAX_TEMPLATE_BYTES: usize = 2 << 20;

/// How far apart in kernel time two CPUs' records may be committed out of order.
const RING_ORDER_SLACK_NS: u64 = 1_000_000;

/// A template's cost: its slot (doubled for the map's spare room) and its comm.
fn template_bytes(c: &Connection) -> usize {
    2 * std::mem::size_of::<(FoldKey, Connection)>() + c.comm.len()
}

impl KernelSide {
    /// Keeps `conn` as its key's template, within the keys' and the bytes' bounds.
    pub(super) fn keep_template(&mut self, conn: &Connection) {
        self.handled_ns = self.handled_ns.max(conn.boot_ns);
        let k = fold_key(conn);
        let bytes = template_bytes(conn);
        if let Some(old) = self.templates.get_mut(&k) {
            self.template_bytes = self.template_bytes + bytes - template_bytes(old);
            old.clone_from(conn);
        } else if self.templates.len() < 2 * FOLD_MAX as usize
            && self.template_bytes + bytes <= MAX_TEMPLATE_BYTES
        {
            self.templates.insert(k, conn.clone());
            self.template_bytes += bytes;
        } else {
            self.templates_refused += 1;
        }
    }

    /// Forgets the templates of keys idle longer than `keep_ns`.
    pub(super) fn expire_templates(&mut self, now_boot_ns: u64, keep_ns: u64) {
        let bytes = &mut self.template_bytes;
        self.templates.retain(|_, c| {
            let live = now_boot_ns.saturating_sub(c.boot_ns) <= keep_ns;
            if !live {
                *bytes -= template_bytes(c);
            }
            live
        });
    }

    /// Whether the first record of a kernel fold key has been handled: its template is
    /// kept, or a connect emitted after it (by more than [`RING_ORDER_SLACK_NS`], for
    /// records of other CPUs committed out of order) has been handled, so it was lost to
    /// a full ring buffer. Only with no later connect at all is it taken as lost after
    /// `wait_ns`. A lagging event loop (a slow host) then never reports repeats before
    /// the record that names their process.
    pub fn fold_ready(
        &self,
        key: &FoldKey,
        window_start_ns: u64,
        now_ns: u64,
        wait_ns: u64,
    ) -> bool {
        self.templates.contains_key(key)
            || self.handled_ns > window_start_ns.saturating_add(RING_ORDER_SLACK_NS)
            || now_ns.saturating_sub(window_start_ns) > wait_ns
    }

    /// For `sensor-stats` and `sensor-stopped`.
    pub fn report(&self) -> stats::Kernel {
        stats::Kernel {
            records: self.counts.records(),
            folded: self.counts.folded,
            fold_table_full: self.counts.fold_table_full,
            fold_collected: self.fold_collected,
            fold_keys: self.fold_keys,
            fold_keys_deleted: self.fold_keys_deleted,
            fold_untemplated: self.fold_untemplated,
            fold_templates: self.templates.len(),
            fold_template_bytes: self.template_bytes,
            fold_templates_refused: self.templates_refused,
            counter_read_errors: self.read_errors,
            filter_pushes: self.filter_pushes,
            filter_generation: self.filter_generation,
            protocol: stats::Protocol {
                seen: self.protocol.seen,
                expected_in_kernel: self.protocol.expected,
                mismatch: self.protocol.mismatch,
                sent: self.protocol.sent,
                truncated: self.protocol.truncated,
                dropped: self.protocol.lost,
                unexpected_in_kernel: self.protocol.quiet,
                untracked: self.protocol.untracked,
                received: self.payloads.records,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use sensor_common::AF_INET;

    use super::*;
    use crate::kernel::records::tests::{bytes, connect, raw};

    /// A lagging event loop: repeats the kernel folded wait for their key's first record
    /// however long the loop lags, unless a later connect shows that record was lost.
    #[test]
    fn folded_repeats_wait_for_their_first_record() {
        let mut k = KernelSide::default();
        let ev = raw(AF_INET, [0; 16], 4444);
        let mut first = connect(&bytes(&ev));
        first.boot_ns = 1_000_000_000;
        let key = fold_key(&first);
        let wait = 60_000_000_000;
        // Ten seconds later, the loop has read nothing of it yet.
        assert!(!k.fold_ready(&key, first.boot_ns, 11_000_000_000, wait));
        k.keep_template(&first);
        assert!(k.fold_ready(&key, first.boot_ns, 11_000_000_000, wait));
        // Another key whose first record was lost: a connect read after it says so...
        let mut later = connect(&bytes(&raw(AF_INET, [0; 16], 9001)));
        later.boot_ns = 3_000_000_000;
        let lost = FoldKey { dport: 8088, ..key };
        assert!(!k.fold_ready(&lost, 2_000_000_000, 11_000_000_000, wait));
        k.keep_template(&later);
        assert!(k.fold_ready(&lost, 2_000_000_000, 11_000_000_000, wait));
        // ...but not one committed within the slack of it (another CPU's, out of order).
        assert!(!k.fold_ready(&lost, 2_999_500_000, 11_000_000_000, wait));
        // With no connect after it at all, it is taken as lost after the wait.
        assert!(k.fold_ready(&lost, 2_999_500_000, 63_000_000_000, wait));
    }

    /// One record kept per kernel fold key, comm at its longest (16 invalid bytes, 48 in
    /// UTF-8): within the byte budget, refusals counted, and expiry gives the bytes back.
    #[test]
    fn fold_templates_are_bounded_in_bytes() {
        let mut k = KernelSide::default();
        let mut ev = raw(AF_INET, [0; 16], 4444);
        ev.header.comm = [0xff; 16];
        let n = 2 * FOLD_MAX;
        for i in 0..n {
            (ev.header.tgid, ev.data.dport) = (i, (i % 60_000) as u16 + 1025);
            let mut c = connect(&bytes(&ev));
            c.boot_ns = 1_000;
            assert_eq!(c.comm.len(), 48);
            k.keep_template(&c);
            assert!(k.template_bytes <= MAX_TEMPLATE_BYTES);
        }
        assert!(k.templates_refused > 0);
        assert_eq!(k.templates.len() as u64 + k.templates_refused, u64::from(n));
        k.expire_templates(1_000 + 10, 10);
        assert!(!k.templates.is_empty() && k.template_bytes > 0);
        k.expire_templates(1_000 + 11, 10);
        assert_eq!((k.templates.len(), k.template_bytes), (0, 0));
    }
}

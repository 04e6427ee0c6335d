//! First payloads from the egress hook (protocol on the port): attributed like the connect
//! they belong to (pid and start time from the connect's own header), inspected, scored.

use std::sync::Arc;

use anyhow::Result;

use super::Pipeline;
use crate::{
    enrich::{attribute::attribute, protocol::inspect},
    kernel::records::Payload,
    output::sink::Sink,
};

/// What userspace did with the first payloads the kernel sent.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct PayloadCounts {
    /// Records received.
    pub records: u64,
    /// Of them, flows whose connect record the kernel kept (the first bytes were the
    /// reason to send: a mismatch, or TLS for the JA4 list).
    pub unreported_connect: u64,
    /// Records cut at the capture bound.
    pub truncated: u64,
}

impl Pipeline {
    pub(super) fn payload(&mut self, p: &Payload, out: &mut Sink) -> Result<()> {
        self.kernel.payloads.records += 1;
        if !p.reported {
            self.kernel.payloads.unreported_connect += 1;
        }
        if p.truncated {
            self.kernel.payloads.truncated += 1;
        }
        let unix_ns = self.clock.to_unix_ns(p.conn.boot_ns);
        let mut enriched = attribute(
            &mut self.table,
            &mut self.pods,
            &mut self.users,
            &p.conn,
            self.host_name.clone(),
            unix_ns,
        );
        // Parsed here, on the loop: bounded by the kernel's 2 KiB, one record per flow.
        enriched.protocol = Some(Arc::new(inspect(&p.bytes)));
        self.decide(enriched, 1, out)
    }
}

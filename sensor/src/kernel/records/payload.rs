//! The first-payload record of the protocol egress hook: the connect's identity, the flow
//! from the packet, the kernel's class and the first bytes (bounded, length checked).

use anyhow::{Result, anyhow, bail};
use sensor_common::{
    PAYLOAD_MISMATCH, PAYLOAD_REPORTED, PAYLOAD_TRUNCATED, PayloadClass, PayloadEvent,
};
use zerocopy::FromBytes;

use super::{Connection, Flow, addresses, connection};

/// The first bytes a client sent on an outbound TCP flow, with the flow's connect
/// identity (`conn.flow` is `Connect`; addresses and ports from the packet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload {
    pub conn: Connection,
    /// The kernel's classification; userspace parses again.
    pub class: PayloadClass,
    /// The classes the port expects (empty: none).
    pub expected: Vec<PayloadClass>,
    /// The connect record went to userspace too.
    pub reported: bool,
    /// The kernel found the class not among the expected.
    pub mismatch: bool,
    /// Payload bytes in the segment; `bytes` holds the first of them, up to the bound.
    pub payload_len: u32,
    pub truncated: bool,
    pub bytes: Vec<u8>,
}

/// A payload record, its captured length checked against its bounds.
pub(super) fn decode(bytes: &[u8]) -> Result<Payload> {
    // Read in place: the record is 2 KiB, no copy of it on the way.
    let (ev, _) = PayloadEvent::ref_from_prefix(bytes).map_err(|_| {
        anyhow!(
            "record of {} bytes, shorter than a payload record ({})",
            bytes.len(),
            std::mem::size_of::<PayloadEvent>()
        )
    })?;
    let (h, d) = (&ev.header, &ev.data);
    let (dst, src) = addresses(d.family, &d.daddr, &d.saddr)?;
    let Some(class) = PayloadClass::from_u8(d.class) else {
        bail!("unknown payload class {}", d.class);
    };
    let captured = d.captured as usize;
    if captured > d.bytes.len() || captured == 0 || d.captured > d.payload_len {
        bail!(
            "payload record says {} bytes captured of {} (bound {})",
            d.captured,
            d.payload_len,
            d.bytes.len()
        );
    }
    let expected = PayloadClass::ALL
        .into_iter()
        .filter(|c| d.expected & c.bit() != 0)
        .collect();
    Ok(Payload {
        conn: connection(Flow::Connect, h, (dst, src), d.dport, d.sport),
        class,
        expected,
        reported: d.flags & PAYLOAD_REPORTED != 0,
        mismatch: d.flags & PAYLOAD_MISMATCH != 0,
        payload_len: d.payload_len,
        truncated: d.flags & PAYLOAD_TRUNCATED != 0,
        bytes: d.bytes[..captured].to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use sensor_common::{AF_INET, Header, PAYLOAD_CAPTURE, Payload as PayloadData, RecordKind};

    use super::*;
    use crate::kernel::records::{Record, decode as decode_record};

    fn record(captured: u32, payload_len: u32, class: u8, flags: u8) -> Vec<u8> {
        let mut ev = PayloadEvent {
            header: Header::EMPTY,
            data: PayloadData {
                family: AF_INET,
                dport: 443,
                sport: 40000,
                class,
                expected: PayloadClass::Tls.bit(),
                flags,
                _pad: [0; 3],
                payload_len,
                captured,
                _pad2: 0,
                daddr: [0; 16],
                saddr: [0; 16],
                bytes: [0xaa; PAYLOAD_CAPTURE],
            },
        };
        ev.header.kind = RecordKind::Payload as u32;
        ev.header.tgid = 42;
        ev.data.daddr[..4].copy_from_slice(&[203, 0, 113, 7]);
        ev.data.bytes[..8].copy_from_slice(b"SSH-2.0-");
        // SAFETY: a repr(C) record of plain integers, read as bytes.
        unsafe {
            std::slice::from_raw_parts(
                (&raw const ev).cast::<u8>(),
                std::mem::size_of::<PayloadEvent>(),
            )
        }
        .to_vec()
    }

    #[test]
    fn decodes_a_payload_record() {
        let b = record(21, 21, PayloadClass::Ssh as u8, PAYLOAD_MISMATCH);
        let Record::Payload(p) = decode_record(&b).unwrap() else {
            panic!("not a payload record");
        };
        assert_eq!(p.conn.tgid, 42);
        assert_eq!(p.conn.dst.to_string(), "203.0.113.7");
        assert_eq!((p.conn.dport, p.conn.sport), (443, 40000));
        assert_eq!(p.class, PayloadClass::Ssh);
        assert_eq!(p.expected, [PayloadClass::Tls]);
        assert!(p.mismatch && !p.reported && !p.truncated);
        assert_eq!(p.bytes.len(), 21);
        assert!(p.bytes.starts_with(b"SSH-2.0-"));
    }

    #[test]
    fn rejects_bad_payload_records() {
        let ok = record(2048, 5000, 1, PAYLOAD_TRUNCATED);
        assert!(decode_record(&ok).is_ok());
        for (bad, why) in [
            (record(2049, 5000, 1, 0), "captured"),
            (record(0, 10, 1, 0), "captured"),
            (record(20, 10, 1, 0), "captured"),
            (record(10, 10, 9, 0), "class"),
        ] {
            let e = decode_record(&bad).unwrap_err().to_string();
            assert!(e.contains(why), "{e}");
        }
        let e = decode_record(&ok[..200]).unwrap_err().to_string();
        assert!(e.contains("shorter than a payload record"), "{e}");
    }
}

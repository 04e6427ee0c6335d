//! What a flow kind (connect, UDP, listen, inbound) decides of its line, in one table:
//! where its local end and its peer are printed, the transport and its IANA number (and
//! so the Community ID's protocol), the direction and `event.type`. The writers place the
//! ends by it; replay reads them back by it.

use std::borrow::Cow;

use crate::{kernel::records::Flow, output::ecs::Action};

/// IANA protocol numbers (`network.iana_number`, and the Community ID's protocol).
pub const TCP: u8 = 6;
pub const UDP: u8 = 17;

/// Where one end of a flow is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Source,
    Destination,
    Absent,
}

/// What a flow kind decides of its line.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Where the local end is printed.
    pub local: Side,
    /// Where the remote peer is printed.
    pub peer: Side,
    pub transport: &'static str,
    pub iana_number: u8,
    pub direction: Option<&'static str>,
    pub types: &'static [Cow<'static, str>],
}

pub(crate) const CONNECTION_START: &[Cow<'static, str>] =
    &[Cow::Borrowed("connection"), Cow::Borrowed("start")];
const START: &[Cow<'static, str>] = &[Cow::Borrowed("start")];
pub(crate) const NETWORK: &[Cow<'static, str>] = &[Cow::Borrowed("network")];

impl Shape {
    pub fn of(flow: Flow) -> Self {
        let (local, peer, transport, iana_number, direction, types) = match flow {
            Flow::Connect => (
                Side::Source,
                Side::Destination,
                "tcp",
                TCP,
                Some("egress"),
                CONNECTION_START,
            ),
            Flow::Udp => (
                Side::Source,
                Side::Destination,
                "udp",
                UDP,
                Some("egress"),
                CONNECTION_START,
            ),
            // A listening socket has no peer: its own address is the source.
            Flow::Listen => (Side::Source, Side::Absent, "tcp", TCP, None, START),
            // The peer connected in: it is the source, the listener the destination.
            Flow::Inbound => (
                Side::Destination,
                Side::Source,
                "tcp",
                TCP,
                Some("ingress"),
                CONNECTION_START,
            ),
        };
        Self {
            local,
            peer,
            transport,
            iana_number,
            direction,
            types,
        }
    }

    /// The flow a recorded line's action and transport name.
    pub fn flow_of(action: Action, transport: Option<&str>) -> Option<Flow> {
        match (action.flow()?, transport) {
            (Flow::Connect, Some("udp")) => Some(Flow::Udp),
            (flow, _) => Some(flow),
        }
    }
}

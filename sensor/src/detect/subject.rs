//! The one view of a connection that scoring and allow rules decide on. Live it is taken
//! from the enriched connection; a replayed line is read into the typed event and mapped
//! to it by `output::recorded` (output's types are a later stage than this one), through
//! the same choice of ends ([`scored_ends`]).

use std::{
    net::{IpAddr, Ipv4Addr},
    sync::Arc,
};

use crate::{
    enrich::{Enriched, procfs::exe_name, protocol::ProtocolFacts, users::NameSource},
    kernel::records::Flow,
};

/// One connection as far as it is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    pub ts_ns: i128,
    /// Connect (TCP or UDP), listen, or inbound. For a listen `dst`/`port` are the local
    /// end; for an inbound connection `dst` is the remote peer and `port` the local
    /// (listening) port, and the process is the listener's.
    pub flow: Flow,
    pub executable: Option<String>,
    /// `comm` (process.thread.name) or process.name: for scoring only when the executable
    /// is unknown.
    pub comm: Option<String>,
    pub pid: Option<u64>,
    /// The process's start time (boot nanoseconds live, `process.start` replayed): with
    /// `pid`, one process (scans count per process).
    pub process_start: Option<u64>,
    pub parent_executable: Option<String>,
    /// The kernel's uid (`user.id`).
    pub user_id: Option<u32>,
    pub user_name: Option<String>,
    /// Whose account database named the user: only a host-database name satisfies a
    /// `users` name pattern (a container's passwd is its root's to write).
    pub user_name_source: Option<NameSource>,
    pub dst: IpAddr,
    pub port: u16,
    pub host_name: Option<String>,
    pub container_id: Option<String>,
    /// Whether `container_id`, and the pod and namespace found from it, are the
    /// runtime's: only then do container, pod and namespace conditions hold.
    pub container_trusted: bool,
    pub kubernetes_namespace: Option<String>,
    /// The pod's name (`orchestrator.resource.name`).
    pub pod_name: Option<String>,
    /// The high-risk entry the executable is a copy of (`sensor.process.content_match`).
    pub content_match: Option<String>,
    /// A suspicious executable location (`sensor.process.location`).
    pub location: Option<String>,
    /// Not in the host's package database (`sensor.process.unmanaged`); None: unknown.
    pub unmanaged: Option<bool>,
    /// What the flow's first bytes speak, where they were seen.
    pub protocol: Option<Arc<ProtocolFacts>>,
}

/// Parses an RFC 3339 time with an offset (`Z`, `+HH:MM` or `-HH:MM`) to Unix
/// nanoseconds: what the sensor writes, and what other tools write. `None` for anything
/// else, including ISO 8601 forms RFC 3339 does not allow (`+0100`, zone annotations).
pub fn parse_time(s: &str) -> Option<i128> {
    let b = s.as_bytes();
    let offset_ok = match b.last()? {
        b'Z' | b'z' => true,
        _ => b.len() >= 6 && matches!(b[b.len() - 6], b'+' | b'-') && b[b.len() - 3] == b':',
    };
    if !offset_ok {
        return None;
    }
    s.parse::<jiff::Timestamp>().ok().map(|t| t.as_nanosecond())
}

/// Which ends of a flow scoring looks at: (the end whose address, the end whose port).
/// A connect's peer; a listen's own address and port (it has no peer); an inbound
/// connection's peer address and the local (listening) port, which says what the
/// service is. The one choice, for live connections and for recorded lines alike.
pub fn scored_ends<T>(flow: Flow, local: T, peer: T) -> (T, T)
where
    T: Copy,
{
    match flow {
        Flow::Connect | Flow::Udp => (peer, peer),
        Flow::Listen => (local, local),
        Flow::Inbound => (peer, local),
    }
}

impl Subject {
    /// A connection known by executable (or name) and `comm` only, to nowhere yet.
    pub fn named(executable: Option<&str>, comm: &str) -> Self {
        Self {
            ts_ns: 0,
            flow: Flow::Connect,
            executable: executable.map(str::to_string),
            comm: Some(comm.to_string()),
            pid: None,
            process_start: None,
            parent_executable: None,
            user_id: None,
            user_name: None,
            user_name_source: None,
            dst: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port: 0,
            host_name: None,
            container_id: None,
            container_trusted: false,
            kubernetes_namespace: None,
            pod_name: None,
            content_match: None,
            location: None,
            unmanaged: None,
            protocol: None,
        }
    }

    /// The same connection, to `dst` and `port`.
    pub fn to(self, dst: IpAddr, port: u16) -> Self {
        Self { dst, port, ..self }
    }

    /// The same subject as another flow.
    pub fn as_flow(self, flow: Flow) -> Self {
        Self { flow, ..self }
    }

    /// The live path: straight from the enriched connection.
    pub fn from_enriched(e: &Enriched) -> Self {
        let c = &e.conn;
        let (addr, port) = scored_ends(c.flow, (c.src, c.sport), (c.dst, c.dport));
        let (dst, port) = (addr.0, port.1);
        Self {
            ts_ns: e.unix_ns,
            flow: e.conn.flow,
            executable: e.proc.executable.clone(),
            comm: Some(e.conn.comm.clone()),
            pid: Some(u64::from(e.conn.tgid)),
            process_start: Some(e.conn.start_time_ns),
            parent_executable: e.proc.parent_executable.clone(),
            user_id: Some(e.conn.uid),
            user_name: e.user_name.clone(),
            user_name_source: e.provenance.user_name,
            dst,
            port,
            host_name: Some(e.host_name.clone()),
            container_id: e.proc.container_id.clone(),
            container_trusted: e.provenance.container.is_some_and(|t| t.is_trusted()),
            kubernetes_namespace: e.proc.pod.as_ref().map(|p| p.namespace.clone()),
            pod_name: e.proc.pod.as_ref().map(|p| p.name.clone()),
            content_match: e.proc.content_match.clone(),
            location: e.proc.location.map(str::to_string),
            unmanaged: e.proc.unmanaged,
            protocol: e.protocol.clone(),
        }
    }

    /// The executable's basename, when the executable is known.
    pub fn exe_name(&self) -> Option<&str> {
        self.executable.as_deref().map(exe_name)
    }

    /// Whole seconds since the epoch, for allow-rule schedules.
    pub fn unix_s(&self) -> Option<i64> {
        i64::try_from(self.ts_ns.div_euclid(1_000_000_000)).ok()
    }

    /// The executable, else `comm`: what beacons and flood control key on.
    pub fn who(&self) -> String {
        self.executable
            .clone()
            .or_else(|| self.comm.clone())
            .unwrap_or_default()
    }
}

//! The one view of a connection that scoring and allow rules decide on. Live it is taken
//! from the enriched connection; a replayed line is parsed into it.

use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::{
    enrich::{Enriched, procfs::exe_name, users::NameSource},
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

fn text(doc: &Value, pointer: &str) -> Option<String> {
    doc.pointer(pointer)
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// Whether a recorded line is a connection, listen or inbound connection (as opposed to
/// state, rollup or beacon lines).
pub fn is_connection(doc: &Value) -> bool {
    doc.pointer("/event/action")
        .and_then(Value::as_str)
        .and_then(Flow::from_action)
        .is_some()
}

/// The flow of a recorded line: its `event.action`, and `network.transport` for UDP.
fn doc_flow(doc: &Value) -> Flow {
    let flow = doc
        .pointer("/event/action")
        .and_then(Value::as_str)
        .and_then(Flow::from_action)
        .unwrap_or_default();
    let udp = doc.pointer("/network/transport").and_then(Value::as_str) == Some("udp");
    if flow == Flow::Connect && udp {
        Flow::Udp
    } else {
        flow
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
        let (dst, port) = match e.conn.flow {
            Flow::Connect | Flow::Udp => (e.conn.dst, e.conn.dport),
            Flow::Listen => (e.conn.src, e.conn.sport),
            Flow::Inbound => (e.conn.dst, e.conn.sport),
        };
        Self {
            ts_ns: e.unix_ns,
            flow: e.conn.flow,
            executable: e.proc.executable.clone(),
            comm: Some(e.conn.comm.clone()),
            pid: Some(u64::from(e.conn.tgid)),
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
        }
    }

    /// The replay path: a recorded ECS connection line.
    pub fn from_doc(doc: &Value) -> Result<Self> {
        let ts = doc
            .get("@timestamp")
            .and_then(Value::as_str)
            .context("no @timestamp")?;
        let ts_ns = parse_time(ts).with_context(|| format!("bad @timestamp {ts:?}"))?;
        let flow = doc_flow(doc);
        // A listen's subject is its local end (source.*); an inbound connection's port is
        // the local one (source.port), its address the peer (destination.ip).
        let (ip_at, port_at) = match flow {
            Flow::Connect | Flow::Udp => ("/destination/ip", "/destination/port"),
            Flow::Listen => ("/source/ip", "/source/port"),
            Flow::Inbound => ("/destination/ip", "/source/port"),
        };
        let ip = doc
            .pointer(ip_at)
            .and_then(Value::as_str)
            .with_context(|| format!("no {}", &ip_at[1..].replace('/', ".")))?;
        let dst: IpAddr = ip
            .parse()
            .with_context(|| format!("bad {} {ip:?}", &ip_at[1..].replace('/', ".")))?;
        let port = doc
            .pointer(port_at)
            .and_then(Value::as_u64)
            .with_context(|| format!("no {}", &port_at[1..].replace('/', ".")))?;
        let port = u16::try_from(port)
            .with_context(|| format!("bad {} {port}", &port_at[1..].replace('/', ".")))?;
        // user.id is a string in ECS; a number is accepted too.
        let user_id = match doc.pointer("/user/id") {
            Some(Value::String(s)) => s.parse().ok(),
            Some(Value::Number(n)) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
            _ => None,
        };
        let executable = text(doc, "/process/executable");
        let comm = text(doc, "/process/thread/name").or_else(|| text(doc, "/process/name"));
        if executable.is_none() && comm.is_none() {
            bail!("neither process.executable nor process.name");
        }
        Ok(Self {
            ts_ns,
            flow,
            executable,
            comm,
            pid: doc.pointer("/process/pid").and_then(Value::as_u64),
            parent_executable: text(doc, "/process/parent/executable"),
            user_id,
            user_name: text(doc, "/user/name"),
            // A replayed line keeps the trust it was recorded with, never more: a line
            // without these fields (older, or not the sensor's) gets none.
            user_name_source: text(doc, "/sensor/user/name_source")
                .as_deref()
                .and_then(NameSource::parse),
            container_trusted: doc.pointer("/sensor/container/trusted") == Some(&Value::Bool(true)),
            dst,
            port,
            host_name: text(doc, "/host/name"),
            content_match: text(doc, "/sensor/process/content_match"),
            location: text(doc, "/sensor/process/location"),
            unmanaged: doc
                .pointer("/sensor/process/unmanaged")
                .and_then(Value::as_bool),
            container_id: text(doc, "/container/id"),
            kubernetes_namespace: text(doc, "/orchestrator/namespace"),
            pod_name: text(doc, "/orchestrator/resource/name"),
        })
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

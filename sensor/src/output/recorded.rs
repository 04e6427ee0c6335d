//! A replayed line: a recorded connection line read into the typed model (unknown fields
//! kept), the subject scoring decides on read from it, and its line re-rendered from the
//! type with the scoring fields the current policy decided.

use std::{borrow::Cow, net::IpAddr, sync::Arc};

use anyhow::{Context as _, Result, anyhow, bail};
use serde::Deserialize;

use crate::{
    detect::{
        decision::HeapBytes,
        engine::{Engine, Outcome},
        subject::{Subject, parse_time, scored_ends},
    },
    enrich::{
        protocol::{HttpFacts, Protocol, ProtocolFacts, SshFacts, TlsFacts},
        users::NameSource,
    },
    kernel::records::Flow,
    output::{
        Render,
        context::Context,
        ecs::{Action, ConnectionLine, Endpoint},
        flow::{Shape, Side},
    },
};

/// What a recorded line is, read before the whole line is.
pub enum Read {
    /// A connection line (connect, listen, inbound, UDP).
    Connection(Box<Recorded>),
    /// Any other line (state, rollup, beacon, another tool's): not re-scored.
    Other,
}

/// A recorded connection line.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub line: ConnectionLine<'static>,
    pub flow: Flow,
    /// The recorded text's length: what holding the line costs, about.
    bytes: usize,
}

/// Just `event.action`, to tell connection lines from the rest.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(default, borrow)]
    event: Option<HeadEvent<'a>>,
}

#[derive(Deserialize)]
struct HeadEvent<'a> {
    #[serde(default, borrow)]
    action: Option<Cow<'a, str>>,
}

/// Reads one recorded line. Errors say what is wrong and where (`bad destination.port:
/// invalid value: integer 99999, expected u16`).
pub fn read(text: &str) -> Result<Read> {
    let head: Head = serde_json::from_str(text).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => {
            anyhow!("not a JSON object with an event object ({e})")
        }
        _ => anyhow!("not JSON ({e})"),
    })?;
    let action = head.event.and_then(|e| e.action);
    if action
        .as_deref()
        .and_then(Action::parse)
        .and_then(Action::flow)
        .is_none()
    {
        return Ok(Read::Other);
    }
    let de = &mut serde_json::Deserializer::from_str(text);
    let line: ConnectionLine<'static> = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        anyhow!("bad {path}: {}", e.inner())
    })?;
    let transport = line.network.as_ref().and_then(|n| n.transport.as_deref());
    let flow = Shape::flow_of(line.event.action, transport).context("not a connection line")?;
    Ok(Read::Connection(Box::new(Recorded {
        line,
        flow,
        bytes: text.len(),
    })))
}

impl Recorded {
    /// The end a side names on the line.
    fn end(&self, side: Side) -> Option<&Endpoint> {
        match side {
            Side::Source => self.line.source.as_ref(),
            Side::Destination => self.line.destination.as_ref(),
            Side::Absent => None,
        }
    }

    /// The subject scoring decides on, read through the same table the line was written
    /// with ([`Shape`]) and the same choice of end live scoring makes ([`scored_ends`]).
    pub fn subject(&self) -> Result<Subject> {
        let l = &self.line;
        if l.timestamp.is_empty() {
            bail!("no @timestamp");
        }
        let ts_ns = parse_time(&l.timestamp)
            .with_context(|| format!("bad @timestamp {:?}", l.timestamp))?;
        let shape = Shape::of(self.flow);
        let (addr_side, port_side) = scored_ends(self.flow, shape.local, shape.peer);
        let name = |s: Side| match s {
            Side::Source => "source",
            _ => "destination",
        };
        let dst: IpAddr = self
            .end(addr_side)
            .and_then(|e| e.ip)
            .with_context(|| format!("no {}.ip", name(addr_side)))?;
        let port = self
            .end(port_side)
            .and_then(|e| e.port)
            .with_context(|| format!("no {}.port", name(port_side)))?;
        let p = l.process.as_ref();
        let s = &l.sensor.fields;
        let sp = s.process.as_ref();
        let own = |v: Option<&Cow<'_, str>>| v.map(|s| s.to_string());
        let executable = own(p.and_then(|p| p.executable.as_ref()));
        let comm = own(p
            .and_then(|p| p.thread.as_ref().and_then(|t| t.name.as_ref()))
            .or_else(|| p.and_then(|p| p.name.as_ref())));
        if executable.is_none() && comm.is_none() {
            bail!("neither process.executable nor process.name");
        }
        let user = l.user.as_ref();
        let orch = l.orchestrator.as_ref();
        Ok(Subject {
            ts_ns,
            flow: self.flow,
            executable,
            comm,
            pid: p.and_then(|p| p.pid).map(u64::from),
            // The entity id stands for pid and start time (scans count per process).
            process_start: p.and_then(|p| p.entity_id.as_deref()).map(|id| {
                std::hash::BuildHasher::hash_one(
                    &std::hash::BuildHasherDefault::<std::hash::DefaultHasher>::default(),
                    id,
                )
            }),
            parent_executable: own(p
                .and_then(|p| p.parent.as_ref())
                .and_then(|p| p.executable.as_ref())),
            user_id: user
                .and_then(|u| u.id.as_deref())
                .and_then(|id| id.parse().ok()),
            user_name: own(user.and_then(|u| u.name.as_ref())),
            // A replayed line keeps the trust it was recorded with, never more: a line
            // without these fields (older, or not the sensor's) gets none.
            user_name_source: s
                .user
                .as_ref()
                .and_then(|u| u.name_source.as_deref())
                .and_then(NameSource::parse),
            dst,
            port,
            host_name: own(l.host.as_ref().and_then(|h| h.name.as_ref())),
            container_id: own(l.container.as_ref().and_then(|c| c.id.as_ref())),
            container_trusted: s.container.as_ref().and_then(|c| c.trusted) == Some(true),
            kubernetes_namespace: own(orch.and_then(|o| o.namespace.as_ref())),
            pod_name: own(orch
                .and_then(|o| o.resource.as_ref())
                .and_then(|r| r.name.as_ref())),
            content_match: own(sp.and_then(|p| p.content_match.as_ref())),
            location: own(sp.and_then(|p| p.location.as_ref())),
            unmanaged: sp.and_then(|p| p.unmanaged),
            protocol: recorded_facts(l).map(Arc::new),
        })
    }
}

impl Render for Recorded {
    fn flow(&self) -> Flow {
        self.flow
    }

    /// The recorded line as it was; [`crate::output::connection::decide`] rewrites its
    /// scoring fields.
    fn parts<'a>(&'a self, _cx: &'a Context) -> ConnectionLine<'a> {
        self.line.clone()
    }
}

impl HeapBytes for Recorded {
    fn heap_bytes(&self) -> usize {
        // The typed line holds about what its text did.
        self.bytes
    }
}

impl Recorded {
    /// A recorded connection line; any other line is an error.
    pub fn parse(text: &str) -> Result<Self> {
        match read(text)? {
            Read::Connection(r) => Ok(*r),
            Read::Other => bail!("not a connection line (event.action)"),
        }
    }
}

impl Engine<Recorded> {
    /// Re-scores one recorded connection line (replay): read, its subject, decided.
    pub fn connection(&mut self, text: &str) -> Result<Outcome<Recorded>> {
        let r = Recorded::parse(text)?;
        let subject = r.subject()?;
        Ok(self.decide(&subject, move || r))
    }
}

/// The facts a recorded line printed, for replay to score as live did (`network.protocol`
/// and the fields scoring reads; an SSH banner is not scored). None without
/// `network.protocol`.
pub fn recorded_facts(line: &ConnectionLine<'_>) -> Option<ProtocolFacts> {
    let protocol = match line.network.as_ref()?.protocol.as_deref()? {
        "tls" => Protocol::Tls,
        "http" => Protocol::Http,
        "ssh" => Protocol::Ssh,
        _ => Protocol::Other,
    };
    let own = |v: Option<&Cow<'_, str>>| v.map(|s| s.to_string());
    let sp = line.sensor.fields.protocol.as_ref();
    let client = line.tls.as_ref().and_then(|t| t.client.as_ref());
    Some(ProtocolFacts {
        protocol,
        tls: (protocol == Protocol::Tls).then(|| TlsFacts {
            version: own(line.tls.as_ref().and_then(|t| t.version.as_ref())),
            sni: own(client.and_then(|c| c.server_name.as_ref())),
            alpn: sp
                .and_then(|p| p.alpn.as_ref())
                .map(|a| a.iter().map(|x| x.to_string()).collect())
                .unwrap_or_default(),
            ja4: own(client.and_then(|c| c.ja4.as_ref())),
        }),
        http: (protocol == Protocol::Http).then(|| HttpFacts {
            method: line
                .http
                .as_ref()
                .and_then(|h| h.request.as_ref())
                .and_then(|r| r.method.as_deref())
                .unwrap_or_default()
                .to_string(),
            host: own(line.url.as_ref().and_then(|u| u.domain.as_ref())),
            user_agent: own(line.user_agent.as_ref().and_then(|u| u.original.as_ref())),
        }),
        ssh: sp.and_then(|p| p.ssh_banner.as_ref()).map(|b| SshFacts {
            banner: b.to_string(),
        }),
        captured: sp.and_then(|p| p.captured_bytes).unwrap_or(0),
        truncated: sp.and_then(|p| p.truncated).unwrap_or(false),
    })
}

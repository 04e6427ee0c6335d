//! What every line says about who wrote it: `ecs.version`, `agent.*`, `host.*`, a unique
//! `event.id`, and the chosen output format.

use std::{
    cell::RefCell,
    collections::HashMap,
    sync::{
        Arc, LazyLock,
        atomic::{AtomicU64, Ordering},
    },
};

use sha2::{Digest, Sha256};

use std::borrow::Cow;

use crate::{
    enrich::{Enriched, host::HostInfo},
    output::{
        ecs::{Agent, EcsLine, EcsVersion, Host, Os},
        printed::{Printed, PrintedCache},
    },
};

/// The ECS version the lines follow; `sensor/tests/ecs_fields.json` is its field table.
pub const ECS_VERSION: &str = "8.11.0";
pub const AGENT_TYPE: &str = "t1571-sensor";
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// How connection lines are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// ECS JSON (default).
    #[default]
    Ecs,
    /// Sysmon Event ID 3 field names for connections; every other line stays ECS.
    SysmonJson,
}

pub struct Context {
    pub host: HostInfo,
    pub format: Format,
    /// Whether `stamp` adds host fields (not in replay: the lines carry their own).
    stamp_host: bool,
    /// What `stamp` adds, built once: `agent` and the `host` fields.
    agent: Agent<'static>,
    host_fields: Host<'static>,
    /// (pid, start time) -> `process.entity_id`: two SHA-256 per line otherwise.
    entity_ids: RefCell<HashMap<(u32, u64), String>>,
    /// (pid, start time) -> the process's printed strings (redacted, joined, bounded).
    printed: RefCell<PrintedCache>,
}

/// Entity ids remembered at most; the cache is dropped whole past that.
const MAX_ENTITY_IDS: usize = 4096;

/// This run's id: the prefix of every event.id.
static RUN_ID: LazyLock<String> = LazyLock::new(run_id);
static NEXT_EVENT: AtomicU64 = AtomicU64::new(0);

/// A new id, unique per event: this run's random id and a counter.
pub fn next_event_id() -> String {
    let n = NEXT_EVENT.fetch_add(1, Ordering::Relaxed);
    format!("{}-{n:x}", *RUN_ID)
}

impl Context {
    pub fn new(host: HostInfo, format: Format) -> Self {
        // Stable per host and agent type (a hash of host.id), so a SIEM can tell sensors apart.
        let agent_id = host
            .id
            .as_deref()
            .map(|id| hex_prefix(&format!("{AGENT_TYPE}\0{id}"), 16));
        let o = &host.os;
        let own = |s: &Option<String>| s.clone().map(Cow::Owned);
        let host_fields = Host {
            hostname: Some(Cow::Owned(host.hostname.clone())),
            id: own(&host.id),
            name: Some(Cow::Owned(host.hostname.clone())),
            os: Some(Cow::Owned(Os {
                family: own(&o.family),
                full: own(&o.full),
                kernel: own(&o.kernel),
                name: own(&o.name),
                platform: own(&o.platform),
                kind: Some(Cow::Borrowed("linux")),
                version: own(&o.version),
            })),
            extra: Default::default(),
        };
        Self {
            host,
            format,
            stamp_host: true,
            agent: Agent {
                id: agent_id.map(Cow::Owned),
                kind: Cow::Borrowed(AGENT_TYPE),
                version: Cow::Borrowed(AGENT_VERSION),
            },
            host_fields,
            entity_ids: RefCell::new(HashMap::new()),
            printed: RefCell::default(),
        }
    }

    /// For replay: the recorded lines carry their own host; only `host.name` is known here.
    pub fn named(host_name: &str) -> Self {
        let mut cx = Self::new(
            HostInfo {
                hostname: host_name.to_string(),
                ..Default::default()
            },
            Format::Ecs,
        );
        cx.stamp_host = false;
        cx
    }

    pub fn event_id(&self) -> String {
        next_event_id()
    }

    /// `process.entity_id`: stable for one process on one host (pid reuse gives a new one),
    /// the same in every line about it. None when the start time is unknown.
    pub fn entity_id(&self, pid: u32, start_time_ns: u64) -> Option<String> {
        if start_time_ns == 0 {
            return None;
        }
        let mut ids = self.entity_ids.borrow_mut();
        if let Some(id) = ids.get(&(pid, start_time_ns)) {
            return Some(id.clone());
        }
        if ids.len() >= MAX_ENTITY_IDS {
            ids.clear();
        }
        let host = self.host.id.as_deref().unwrap_or(&self.host.hostname);
        let id = hex_prefix(&format!("{host}\0{pid}\0{start_time_ns}"), 32);
        ids.insert((pid, start_time_ns), id.clone());
        Some(id)
    }

    /// What a line prints of `e`'s process strings, made once per process (and exec).
    pub fn printed(&self, e: &Enriched) -> Arc<Printed> {
        self.printed.borrow_mut().get(e)
    }

    /// The printed-strings cache: (entries, bytes, entries evicted so far).
    pub fn printed_cache(&self) -> (usize, usize, u64) {
        let c = self.printed.borrow();
        (c.entries(), c.bytes(), c.evicted)
    }

    /// Empties the printed-strings cache: the bench's uncached row (each line pays
    /// redaction and joining again, as before the cache).
    pub fn clear_printed(&self) {
        self.printed.borrow_mut().clear();
    }

    /// Adds the writer's fields to a line, keeping any it already has (replayed lines
    /// keep their recorded host, agent and event id): `ecs`, `agent`, `host` and a unique
    /// `event.id`.
    pub fn stamp<'a, S>(&'a self, line: &mut EcsLine<'a, S>) {
        line.ecs.get_or_insert(EcsVersion {
            version: Cow::Borrowed(ECS_VERSION),
        });
        line.agent.get_or_insert(Cow::Borrowed(&self.agent));
        if line.event.id.is_none() {
            line.event.id = Some(Cow::Owned(self.event_id()));
        }
        let host = line.host.get_or_insert_with(Host::default);
        if self.stamp_host {
            let h = &self.host_fields;
            let borrow = |v: &'a Option<Cow<'static, str>>| v.as_deref().map(Cow::Borrowed);
            host.name = host.name.take().or_else(|| borrow(&h.name));
            host.hostname = host.hostname.take().or_else(|| borrow(&h.hostname));
            host.id = host.id.take().or_else(|| borrow(&h.id));
            if host.os.is_none() {
                host.os = h.os.as_deref().map(Cow::Borrowed);
            }
        }
    }
}

/// The first `hex_digits` hex digits of SHA-256(`s`).
fn hex_prefix(s: &str, hex_digits: usize) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::digest(s.as_bytes());
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    out.truncate(hex_digits);
    out
}

/// 128 random bits from the kernel (its UUID generator), else time and pid.
fn run_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .ok()
        .map(|s| s.trim().replace('-', ""))
        .filter(|s| s.len() == 32)
        .unwrap_or_else(|| {
            hex_prefix(
                &format!(
                    "{}\0{}",
                    super::clock::BootClock::now_unix_ns(),
                    std::process::id()
                ),
                32,
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_stable_and_per_host() {
        let host = |id: &str| HostInfo {
            hostname: "h".into(),
            id: Some(id.into()),
            ..Default::default()
        };
        let a = Context::new(host("0123456789abcdef0123456789abcdef"), Format::Ecs);
        let b = Context::new(host("fedcba9876543210fedcba9876543210"), Format::Ecs);
        assert_ne!(a.event_id(), a.event_id());
        assert_ne!(a.event_id(), b.event_id());
        assert_eq!(a.entity_id(7, 99), a.entity_id(7, 99));
        assert_ne!(a.entity_id(7, 99), a.entity_id(7, 100), "pid reuse");
        assert_ne!(a.entity_id(7, 99), b.entity_id(7, 99), "another host");
        assert_eq!(a.entity_id(7, 0), None);
        assert_eq!(a.entity_id(7, 99).unwrap().len(), 32);
    }

    #[test]
    fn stamp_adds_and_keeps() {
        use crate::output::ecs::{Action, Event, Kind};
        let cx = Context::new(
            HostInfo {
                hostname: "h".into(),
                id: Some("0123456789abcdef0123456789abcdef".into()),
                ..Default::default()
            },
            Format::Ecs,
        );
        let mut line = EcsLine::new("t".into(), Event::new(Kind::Event, Action::AlertRollup), ());
        line.host = Some(Host {
            name: Some("recorded".into()),
            ..Default::default()
        });
        cx.stamp(&mut line);
        assert_eq!(line.ecs.as_ref().unwrap().version, ECS_VERSION);
        let agent = line.agent.clone().unwrap();
        assert_eq!(agent.kind, AGENT_TYPE);
        assert_eq!(agent.id.as_ref().unwrap().len(), 16);
        let host = line.host.clone().unwrap();
        assert_eq!(host.name.as_deref(), Some("recorded"));
        assert_eq!(host.id.as_deref(), Some("0123456789abcdef0123456789abcdef"));
        assert_eq!(host.os.unwrap().kind.as_deref(), Some("linux"));
        let id = line.event.id.clone();
        assert!(id.is_some());
        cx.stamp(&mut line);
        assert_eq!(line.event.id, id, "kept");
    }
}

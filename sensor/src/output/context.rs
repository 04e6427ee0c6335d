//! What every line says about who wrote it: `ecs.version`, `agent.*`, `host.*`, a unique
//! `event.id`, and the chosen output format.

use std::{
    cell::RefCell,
    collections::HashMap,
    sync::{
        LazyLock,
        atomic::{AtomicU64, Ordering},
    },
};

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::enrich::host::HostInfo;

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
    /// What `stamp` adds, built once (nulls pruned): `ecs`, `agent` and `host`.
    ecs: Value,
    agent: Value,
    host_fields: Map<String, Value>,
    /// The same, serialised once for the lines written directly.
    ecs_json: String,
    agent_json: String,
    host_json: Vec<(String, String)>,
    /// (pid, start time) -> `process.entity_id`: two SHA-256 per line otherwise.
    entity_ids: RefCell<HashMap<(u32, u64), String>>,
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
        let h_os = &host.os;
        let mut host_fields = json!({
            "name": host.hostname,
            "hostname": host.hostname,
            "id": host.id,
            "os": {
                "type": "linux",
                "name": h_os.name,
                "version": h_os.version,
                "platform": h_os.platform,
                "family": h_os.family,
                "full": h_os.full,
                "kernel": h_os.kernel,
            },
        });
        super::prune(&mut host_fields);
        let mut agent = json!({"type": AGENT_TYPE, "version": AGENT_VERSION, "id": agent_id});
        super::prune(&mut agent);
        let host_fields = match host_fields {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        let ecs = json!({"version": ECS_VERSION});
        Self {
            host,
            format,
            stamp_host: true,
            ecs_json: ecs.to_string(),
            agent_json: agent.to_string(),
            host_json: host_fields
                .iter()
                .map(|(k, v)| (k.clone(), v.to_string()))
                .collect(),
            ecs,
            agent,
            host_fields,
            entity_ids: RefCell::new(HashMap::new()),
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

    /// What `stamp` adds: `ecs`, `agent`, and the `host` fields (nulls pruned), and
    /// whether it adds host fields at all.
    pub(crate) fn ecs_json(&self) -> &str {
        &self.ecs_json
    }

    pub(crate) fn agent_json(&self) -> &str {
        &self.agent_json
    }

    /// The host fields in key order, each value serialised.
    pub(crate) fn host_json(&self) -> &[(String, String)] {
        &self.host_json
    }

    pub(crate) fn stamps_host(&self) -> bool {
        self.stamp_host
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

    /// Adds the writer's fields to a rendered ECS line, keeping any it already has (replayed
    /// lines keep their recorded host and event id).
    pub fn stamp(&self, doc: &mut Value) {
        let Some(o) = doc.as_object_mut() else {
            return;
        };
        o.entry("ecs").or_insert_with(|| self.ecs.clone());
        o.entry("agent").or_insert_with(|| self.agent.clone());
        let host = o.entry("host").or_insert_with(|| json!({}));
        if let Some(h) = host.as_object_mut().filter(|_| self.stamp_host) {
            merge_missing(h, &self.host_fields);
        }
        if let Some(e) = o.get_mut("event").and_then(Value::as_object_mut) {
            e.entry("id").or_insert_with(|| json!(self.event_id()));
        }
        super::prune(doc);
    }
}

/// Inserts the keys of `from` that `into` lacks, recursively into objects both have.
fn merge_missing(into: &mut Map<String, Value>, from: &Map<String, Value>) {
    for (k, v) in from {
        match (into.get_mut(k), v) {
            (Some(Value::Object(a)), Value::Object(b)) => merge_missing(a, b),
            (Some(_), _) => {}
            (None, v) => {
                into.insert(k.clone(), v.clone());
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
        let cx = Context::new(
            HostInfo {
                hostname: "h".into(),
                id: Some("0123456789abcdef0123456789abcdef".into()),
                ..Default::default()
            },
            Format::Ecs,
        );
        let mut doc = json!({"event": {"kind": "event"}, "host": {"name": "recorded"}});
        cx.stamp(&mut doc);
        assert_eq!(doc["ecs"]["version"], ECS_VERSION);
        assert_eq!(doc["agent"]["type"], AGENT_TYPE);
        assert_eq!(doc["agent"]["id"].as_str().unwrap().len(), 16);
        assert_eq!(doc["host"]["name"], "recorded");
        assert_eq!(doc["host"]["id"], "0123456789abcdef0123456789abcdef");
        assert_eq!(doc["host"]["os"]["type"], "linux");
        let id = doc["event"]["id"].clone();
        cx.stamp(&mut doc);
        assert_eq!(doc["event"]["id"], id, "kept");
    }
}

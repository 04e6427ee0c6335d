//! bpftool's reading of the BTF, against the sensor's own offsets.

use std::{collections::BTreeMap, path::Path, process::Command};

use anyhow::{Context, Result};
use serde_json::{Value, json};

use super::output;

/// This kernel's offsets as the sensor computes them (`sensor check --layout`), each
/// compared with bpftool's reading of the same BTF:
/// `{"release", "offsets": {..}, "mismatches": [..]}` or `{"error"}`.
pub(super) fn offsets_here(sensor: &Path, out: &Path) -> Value {
    let r = (|| -> Result<Value> {
        let layout: Value =
            serde_json::from_str(&output(Command::new(sensor).args(["check", "--layout"]))?)
                .context("parsing sensor check --layout")?;
        let dump = output(Command::new("bpftool").args([
            "btf",
            "dump",
            "file",
            "/sys/kernel/btf/vmlinux",
            "format",
            "raw",
        ]))?;
        let btf = RawBtf::parse(&dump);
        let mut mismatches = Vec::new();
        let mut compared = serde_json::Map::new();
        for (name, v) in layout["offsets"].as_object().context("no offsets")? {
            let (st, member) = name.split_once('.').context("offset name")?;
            let theirs = btf.member_offset(st, member);
            // start_boottime: kernels before 5.5 name it real_start_time.
            let theirs = theirs.or_else(|| {
                (name == "task_struct.start_boottime")
                    .then(|| btf.member_offset(st, "real_start_time"))
                    .flatten()
            });
            if v.as_u64().map(|x| x as u32) != theirs {
                mismatches.push(json!({"member": name, "sensor": v, "bpftool": theirs}));
            }
            compared.insert(name.clone(), json!({"sensor": v, "bpftool": theirs}));
        }
        let r = json!({
            "release": layout["kernel"],
            "offsets": layout["offsets"],
            "mismatches": mismatches,
        });
        std::fs::write(
            out.join("offsets.json"),
            json!({"release": layout["kernel"], "compared": compared}).to_string(),
        )?;
        Ok(r)
    })();
    r.unwrap_or_else(|e| json!({"error": format!("{e:#}")}))
}

/// `bpftool btf dump ... format raw`, structs and unions with their members: an
/// independent reading of the BTF the sensor parses itself.
struct RawBtf {
    /// id -> (kind, name, members).
    types: BTreeMap<u32, (String, String, Members)>,
}

/// A composite's members: (name, type id, bit offset).
type Members = Vec<(String, u32, u32)>;

impl RawBtf {
    fn parse(dump: &str) -> Self {
        let mut types = BTreeMap::new();
        let mut current: Option<u32> = None;
        for line in dump.lines() {
            if let Some(rest) = line.strip_prefix('[') {
                // [3777] STRUCT 'sock_common' size=136 vlen=25
                current = None;
                let Some((id, rest)) = rest.split_once("] ") else {
                    continue;
                };
                let mut parts = rest.splitn(2, ' ');
                let kind = parts.next().unwrap_or_default();
                if kind != "STRUCT" && kind != "UNION" {
                    continue;
                }
                let name = parts
                    .next()
                    .and_then(|r| r.split('\'').nth(1))
                    .unwrap_or_default();
                if let Ok(id) = id.parse() {
                    types.insert(id, (kind.to_string(), name.to_string(), Vec::new()));
                    current = Some(id);
                }
            } else if let (Some(id), Some(m)) = (current, line.strip_prefix('\t')) {
                // 'skc_family' type_id=19 bits_offset=128
                let name = m.split('\'').nth(1).unwrap_or_default().to_string();
                let field = |key: &str| -> Option<u32> {
                    m.split_whitespace()
                        .find_map(|w| w.strip_prefix(key))
                        .and_then(|v| v.parse().ok())
                };
                if let (Some(t), Some(off), Some(entry)) =
                    (field("type_id="), field("bits_offset="), types.get_mut(&id))
                {
                    entry.2.push((name, t, off));
                }
            }
        }
        Self { types }
    }

    fn member_offset(&self, st: &str, member: &str) -> Option<u32> {
        let (_, (_, _, members)) = self
            .types
            .iter()
            .find(|(_, (k, n, m))| k == "STRUCT" && n == st && !m.is_empty())?;
        self.find(members, member, 0).map(|bits| bits / 8)
    }

    fn find(&self, members: &Members, member: &str, base: u32) -> Option<u32> {
        for (name, ty, off) in members {
            if name == member {
                return Some(base + off);
            }
            if name == "(anon)"
                && let Some((_, _, inner)) = self.types.get(ty)
                && let Some(found) = self.find(inner, member, base + off)
            {
                return Some(found);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAW: &str = "[1] INT 'int' size=4 bits_offset=0 nr_bits=32 encoding=SIGNED
[2] STRUCT '(anon)' size=8 vlen=2
\t'skc_daddr' type_id=1 bits_offset=0
\t'skc_rcv_saddr' type_id=1 bits_offset=32
[3] UNION '(anon)' size=8 vlen=2
\t'skc_addrpair' type_id=1 bits_offset=0
\t'(anon)' type_id=2 bits_offset=0
[4] STRUCT 'sock_common' size=136 vlen=2
\t'(anon)' type_id=3 bits_offset=0
\t'skc_family' type_id=1 bits_offset=128
[5] STRUCT 'sock_common' size=0 vlen=0
";

    #[test]
    fn raw_btf_members_through_anonymous_unions() {
        let b = RawBtf::parse(RAW);
        assert_eq!(b.member_offset("sock_common", "skc_family"), Some(16));
        assert_eq!(b.member_offset("sock_common", "skc_rcv_saddr"), Some(4));
        assert_eq!(b.member_offset("sock_common", "skc_daddr"), Some(0));
        assert_eq!(b.member_offset("sock_common", "nope"), None);
        assert_eq!(b.member_offset("task_struct", "pid"), None);
    }
}

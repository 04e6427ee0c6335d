//! `sensor schema DIR`: the published JSON Schema (draft 2020-12) of every line kind,
//! generated from the types every writer serialises (`output::ecs`), one file per kind.
//! The schemas describe what the sensor writes (serde's serialize side): a field the
//! writer always sets is required. Fields a type does not know are allowed, as replay
//! keeps them. The checked-in copy under `deploy/schema/` is compared with a fresh one
//! by a unit test, so it cannot drift from the types.

use std::path::Path;

use anyhow::{Context, Result, bail};
use schemars::{JsonSchema, Schema, generate::SchemaSettings};
use serde_json::Value;

use crate::{
    cmd::{replay::SummaryFields, run::started::Started},
    output::{
        ecs::{
            BeaconLine, ConnectionLine, RollupLine, SCHEMA_VERSION, ScanLine, StatusLine,
            SysmonLine,
        },
        metrics::stats::Stats,
        sink::OutputDropped,
        status::{EngineFields, EventsLost, PolicyReload},
    },
};

/// How to bring `deploy/schema/` up to date (named by the drift test and `--check`).
pub const REGENERATE: &str = "cargo run -p sensor -- schema deploy/schema";

/// One line kind's schema file.
pub struct Kind {
    pub file: &'static str,
    /// The `event.action` values of its lines (empty: the sysmon view, which has none).
    pub actions: &'static [&'static str],
    description: &'static str,
    schema: fn() -> Schema,
}

fn schema<T: JsonSchema>() -> Schema {
    let mut settings = SchemaSettings::draft2020_12().for_serialize();
    settings.transforms.push(Box::new(no_null));
    settings.into_generator().into_root_schema_for::<T>()
}

/// schemars lets every `Option` be `null`; the sensor never writes one (every `Option` in
/// the line types is `skip_serializing_if = "Option::is_none"`: unknown is absent), so
/// the published schema refuses `null`.
fn no_null(schema: &mut Schema) {
    if let Some(o) = schema.as_object_mut() {
        if let Some(Value::Array(types)) = o.get_mut("type") {
            types.retain(|t| t != "null");
            if let [only] = types.as_slice() {
                let only = only.clone();
                o.insert("type".into(), only);
            }
        }
        if let Some(Value::Array(values)) = o.get_mut("enum") {
            values.retain(|v| !v.is_null());
        }
        if o.get("default").is_some_and(Value::is_null) {
            o.remove("default");
        }
        let null = serde_json::json!({"type": "null"});
        if let Some(Value::Array(any)) = o.get_mut("anyOf")
            && any.contains(&null)
        {
            any.retain(|s| *s != null);
            if let [Value::Object(only)] = any.as_slice() {
                let only = only.clone();
                o.remove("anyOf");
                o.extend(only);
            }
        }
    }
    schemars::transform::transform_subschemas(&mut no_null, schema);
}

/// Every line kind, by file.
pub const KINDS: &[Kind] = &[
    Kind {
        file: "connection.schema.json",
        actions: &["network-connect", "network-listen", "network-accept"],
        description: "A connection line: an outbound TCP connect or UDP send (network-connect), \
            a listening socket (network-listen), an inbound connection (network-accept).",
        schema: schema::<ConnectionLine<'static>>,
    },
    Kind {
        file: "beacon.schema.json",
        actions: &["beacon-detected"],
        description: "A beacon alert: connections to one destination at a regular interval.",
        schema: schema::<BeaconLine<'static>>,
    },
    Kind {
        file: "rollup.schema.json",
        actions: &["alert-rollup"],
        description: "One group's summary of one window of alerts.",
        schema: schema::<RollupLine<'static>>,
    },
    Kind {
        file: "scan.schema.json",
        actions: &["network-scan"],
        description: "A scan alert: one group's connects to many ports or hosts in one window, \
            folded into one line (at the threshold and at window end).",
        schema: schema::<ScanLine<'static>>,
    },
    Kind {
        file: "status-started.schema.json",
        actions: &["sensor-started"],
        description: "The sensor's start: the hooks loaded and passed over, the settings in force.",
        schema: schema::<StatusLine<'static, Started<'static>>>,
    },
    Kind {
        file: "status-stats.schema.json",
        actions: &["sensor-stats", "sensor-stopped"],
        description: "The sensor's counters: every metrics interval (sensor-stats) and at its \
            stop (sensor-stopped, the final totals).",
        schema: schema::<StatusLine<'static, Stats>>,
    },
    Kind {
        file: "status-events-lost.schema.json",
        actions: &["events-lost"],
        description: "Records the kernel could not put in a full ring buffer.",
        schema: schema::<StatusLine<'static, EventsLost>>,
    },
    Kind {
        file: "status-output-dropped.schema.json",
        actions: &["output-dropped"],
        description: "Lines dropped because the output queue was full.",
        schema: schema::<StatusLine<'static, OutputDropped>>,
    },
    Kind {
        file: "status-policy-reload.schema.json",
        actions: &["policy-reloaded", "policy-reload-failed"],
        description: "A SIGHUP's policy reload: the new policy in force, or why the old one stays.",
        schema: schema::<StatusLine<'static, PolicyReload>>,
    },
    Kind {
        file: "status-engine-summary.schema.json",
        actions: &["engine-summary"],
        description: "The engine's periodic or final summary.",
        schema: schema::<StatusLine<'static, EngineFields<'static>>>,
    },
    Kind {
        file: "status-replay-summary.schema.json",
        actions: &["replay-summary"],
        description: "What `t1571-sensor replay` read and re-scored.",
        schema: schema::<StatusLine<'static, SummaryFields<'static>>>,
    },
    Kind {
        file: "sysmon.schema.json",
        actions: &[],
        description: "A connection as `--format sysmon-json` prints it: Sysmon Event ID 3 \
            (NetworkConnect) with Sysmon's field names.",
        schema: schema::<SysmonLine<'static>>,
    },
];

impl Kind {
    /// The file's text: the generated schema with a title and description, pretty-printed.
    pub fn text(&self) -> Result<String> {
        let mut v = (self.schema)().to_value();
        let o = v
            .as_object_mut()
            .context("a generated schema is not an object")?;
        let title = format!(
            "t1571-sensor {} line, sensor.schema_version {SCHEMA_VERSION}",
            self.file.trim_end_matches(".schema.json")
        );
        o.insert("title".into(), Value::String(title));
        let actions = if self.actions.is_empty() {
            String::new()
        } else {
            format!(" event.action: {}.", self.actions.join(", "))
        };
        o.insert(
            "description".into(),
            Value::String(format!("{}{actions}", self.description)),
        );
        Ok(serde_json::to_string_pretty(&v)? + "\n")
    }
}

/// The index: which file describes the lines of which `event.action` (a line without
/// `event` is the sysmon view's).
pub const INDEX: &str = "index.json";

fn index() -> Result<String> {
    let kinds: Vec<Value> = KINDS
        .iter()
        .map(|k| serde_json::json!({"file": k.file, "event.action": k.actions}))
        .collect();
    let v = serde_json::json!({"sensor.schema_version": SCHEMA_VERSION, "kinds": kinds});
    Ok(serde_json::to_string_pretty(&v)? + "\n")
}

/// Every file of the published schema: (name, text).
fn files() -> Result<Vec<(&'static str, String)>> {
    let mut out = vec![(INDEX, index()?)];
    for k in KINDS {
        out.push((k.file, k.text()?));
    }
    Ok(out)
}

/// Writes every kind's schema and the index into `dir`.
pub fn write(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, text) in files()? {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Fails, naming the files and [`REGENERATE`], when `dir` differs from the types.
pub fn check(dir: &Path) -> Result<()> {
    let mut stale = Vec::new();
    for (name, text) in files()? {
        let path = dir.join(name);
        // A missing file is as stale as a changed one.
        if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            stale.push(path.display().to_string());
        }
    }
    // A kind's file left from an older layout describes lines no writer prints.
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".schema.json") && !KINDS.iter().any(|k| k.file == name) {
                stale.push(format!("{} (no kind's: remove it)", e.path().display()));
            }
        }
    }
    if !stale.is_empty() {
        bail!(
            "the published schema differs from the types in {}: regenerate it with `{REGENERATE}`",
            stale.join(", ")
        );
    }
    Ok(())
}

/// `sensor schema DIR` writes; `--check` only compares.
pub fn run(dir: &Path, check_only: bool) -> Result<()> {
    if check_only { check(dir) } else { write(dir) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The drift test: the checked-in schema is what the types generate today.
    #[test]
    fn the_published_schema_is_the_types_schema() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/schema");
        if let Err(e) = check(&dir) {
            panic!("{e:#}");
        }
    }

    #[test]
    fn no_field_may_be_null() {
        for k in KINDS {
            let text = k.text().unwrap();
            assert!(!text.contains("null"), "{}: {text}", k.file);
        }
    }

    #[test]
    fn every_action_has_one_kind() {
        use crate::output::ecs::Action;
        for a in Action::ALL {
            let n = KINDS
                .iter()
                .filter(|k| k.actions.contains(&a.as_str()))
                .count();
            assert_eq!(n, 1, "{a}");
        }
        // The sysmon view has no event.action: the one kind without actions.
        assert_eq!(KINDS.iter().filter(|k| k.actions.is_empty()).count(), 1);
    }

    #[test]
    fn a_changed_type_is_caught_and_the_fix_named() {
        let dir = std::env::temp_dir().join(format!("schema-drift-{}", std::process::id()));
        write(&dir).unwrap();
        check(&dir).unwrap();
        std::fs::write(dir.join("beacon.schema.json"), "{}\n").unwrap();
        let e = check(&dir).unwrap_err().to_string();
        assert!(
            e.contains("beacon.schema.json") && e.contains(REGENERATE),
            "{e}"
        );
        // A file of an older layout is stale too.
        write(&dir).unwrap();
        std::fs::write(dir.join("status.schema.json"), "{}\n").unwrap();
        let e = check(&dir).unwrap_err().to_string();
        std::fs::remove_dir_all(&dir).ok();
        assert!(e.contains("status.schema.json (no kind's"), "{e}");
    }
}

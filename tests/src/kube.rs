//! The Kubernetes manifests as the cluster gets them: `kubectl kustomize` of an overlay,
//! its YAML documents as JSON (PyYAML in the project's venv, K8S_PYTHON).

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

pub fn overlay(name: &str) -> PathBuf {
    crate::repo().join("deploy/kubernetes/overlays").join(name)
}

/// The project's Python (a venv `cargo xtask test` makes, with kubernetes-validate and
/// PyYAML), from K8S_PYTHON; skipped without it, failed under CI.
pub fn k8s_python() -> Option<PathBuf> {
    match std::env::var_os("K8S_PYTHON") {
        Some(p) => Some(PathBuf::from(p)),
        None => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("K8S_PYTHON is not set: run the tests through `cargo xtask test`");
            }
            eprintln!("SKIPPED kubernetes: K8S_PYTHON not set (cargo xtask test sets it)");
            None
        }
    }
}

/// `kubectl kustomize` of overlay `name`.
pub fn kustomize(name: &str) -> Result<String> {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(overlay(name))
        .output()
        .context("running kubectl kustomize")?;
    if !out.status.success() {
        bail!(
            "kubectl kustomize {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The rendered documents as JSON (PyYAML in the project's venv).
pub fn yaml_documents(python: &Path, yaml: &str) -> Result<Vec<Value>> {
    let mut child = Command::new(python)
        .args([
            "-c",
            "import json,sys,yaml; print(json.dumps(list(yaml.safe_load_all(sys.stdin))))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("running python")?;
    std::io::Write::write_all(child.stdin.as_mut().context("stdin")?, yaml.as_bytes())?;
    drop(child.stdin.take());
    let out = child.wait_with_output()?;
    serde_json::from_slice(&out.stdout).context("parsing the documents")
}

/// The DaemonSet among rendered documents.
pub fn daemonset(docs: &[Value]) -> Result<&Value> {
    docs.iter()
        .find(|d| d["kind"] == "DaemonSet")
        .context("no DaemonSet rendered")
}

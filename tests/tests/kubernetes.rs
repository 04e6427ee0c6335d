//! The Kubernetes manifests: every kustomize variant renders, validates against the
//! Kubernetes schemas (kubernetes-validate, which ships them), and asks of the binary only
//! what it accepts; the least-privilege variant's capabilities are enough on this kernel.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result};
use sensor_tests::{
    Sensor, daemonset, k8s_python, kustomize, root_or_skip, sensor_bin, yaml_documents,
};
use serde_json::Value;

const PUBLIC: &str = "198.51.100.9";
const VARIANTS: [&str; 4] = [
    "privileged",
    "least-privilege",
    "journald",
    "servicemonitor",
];

/// kubernetes-validate --strict on `file`: (passed, its output).
fn validate(python: &Path, file: &Path) -> Result<(bool, String)> {
    let out = Command::new(python)
        .args(["-m", "kubernetes_validate", "--strict"])
        .arg(file)
        .output()
        .context("running kubernetes-validate")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success() && !text.contains("ERROR"), text))
}

/// What the policy ConfigMap holds (its configMapGenerator's files).
fn configmap_dir() -> PathBuf {
    sensor_tests::repo().join("deploy/kubernetes/base")
}

/// `sensor ARGS --dry-run` with the container's args, `$(POD_IP)` expanded to `pod_ip`.
fn expand_and_dry_run(name: &str, c: &Value, pod_ip: &str) -> Result<()> {
    let args: Vec<String> = c["args"]
        .as_array()
        .context("args")?
        .iter()
        .filter_map(|a| a.as_str().map(|a| a.replace("$(POD_IP)", pod_ip)))
        // The ConfigMap's mount, where the policy file the kustomization ships lands.
        .map(|a| {
            a.replace(
                "/etc/t1571-sensor/",
                &format!("{}/", configmap_dir().display()),
            )
        })
        .collect();
    assert!(!args.iter().any(|a| a.contains("$(")), "{args:?}");
    let out = Command::new(sensor_bin())
        .args(&args)
        .arg("--dry-run")
        .output()
        .context("running the sensor")?;
    assert!(
        out.status.success(),
        "{name}: sensor {args:?} --dry-run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[test]
fn every_variant_renders_and_validates_against_the_schemas() -> Result<()> {
    let Some(python) = k8s_python() else {
        return Ok(());
    };
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("manifests");
    std::fs::create_dir_all(&dir)?;
    for name in VARIANTS {
        let yaml = kustomize(name)?;
        let file = dir.join(format!("{name}.yaml"));
        std::fs::write(&file, &yaml)?;
        let docs = yaml_documents(&python, &yaml)?;
        // The ServiceMonitor is a CRD: no schema ships for it; it is checked by shape.
        let (crds, core): (Vec<&Value>, Vec<&Value>) = docs
            .iter()
            .partition(|d| d["apiVersion"] == "monitoring.coreos.com/v1");
        for crd in crds {
            assert_eq!(crd["kind"], "ServiceMonitor");
            assert_eq!(crd["spec"]["endpoints"][0]["port"], "metrics");
        }
        let (ok, text) = validate(&python, &file)?;
        assert!(ok, "{name}: {text}");
        // Every document was checked against its schema; only the CRD has none.
        let passed = text
            .lines()
            .filter(|l| l.contains(" passed for resource "))
            .count();
        assert_eq!(passed, core.len(), "{name}: {text}");
        let ds = daemonset(&docs)?;
        let ns = docs
            .iter()
            .find(|d| d["kind"] == "Namespace")
            .context("no Namespace")?;
        assert_eq!(
            ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
            "privileged"
        );
        let spec = &ds["spec"]["template"]["spec"];
        assert_eq!(spec["automountServiceAccountToken"], false);
        assert_eq!(spec["hostPID"], true);
        assert_eq!(spec["priorityClassName"], "system-node-critical");
        assert_eq!(
            ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"],
            1
        );
        let c = &spec["containers"][0];
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/healthz");
        assert!(
            c["env"]
                .as_array()
                .is_some_and(|e| e.iter().any(|v| v["name"] == "NODE_NAME"
                    && v["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName")),
            "{c:#}"
        );
        // Metrics on the pod's own address (the downward API's status.podIP), guarded by
        // a NetworkPolicy that admits only the scraper's pods, on the metrics port only.
        assert!(
            c["env"]
                .as_array()
                .is_some_and(|e| e.iter().any(|v| v["name"] == "POD_IP"
                    && v["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP")),
            "{c:#}"
        );
        assert!(
            c["args"]
                .as_array()
                .is_some_and(|a| a.iter().any(|a| a == "--metrics=$(POD_IP):9464")),
            "{c:#}"
        );
        assert_ne!(
            spec["hostNetwork"], true,
            "metrics would be on the node's network"
        );
        let np = docs
            .iter()
            .find(|d| d["kind"] == "NetworkPolicy")
            .context("no NetworkPolicy")?;
        assert_eq!(
            np["spec"]["podSelector"]["matchLabels"],
            ds["spec"]["selector"]["matchLabels"]
        );
        assert_eq!(np["spec"]["policyTypes"], serde_json::json!(["Ingress"]));
        let rules = np["spec"]["ingress"].as_array().context("ingress")?;
        assert_eq!(rules.len(), 1, "{np:#}");
        assert_eq!(
            rules[0]["ports"],
            serde_json::json!([{"port": "metrics", "protocol": "TCP"}])
        );
        let from = rules[0]["from"].as_array().context("from")?;
        assert_eq!(
            from.len(),
            1,
            "one peer, both selectors in it (AND): {np:#}"
        );
        assert_eq!(
            from[0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
            "monitoring"
        );
        assert_eq!(
            from[0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"],
            "prometheus"
        );
        // The parameters' ConfigMap is kustomize's (local-config), never applied.
        assert!(
            !docs
                .iter()
                .any(|d| d["metadata"]["name"] == "t1571-sensor-scraper"),
            "{name}"
        );
        // What the DaemonSet asks of the binary, the binary accepts (parsed, not run),
        // with $(VAR) expanded as the kubelet does: POD_IP a pod address of each family.
        for pod_ip in ["10.42.0.7", "fd00:42::7"] {
            expand_and_dry_run(name, c, pod_ip)?;
        }
    }
    // The validator rejects what it should: a misspelt field fails strict validation.
    let bad = kustomize("privileged")?.replace("hostPID: true", "hostPIDs: true");
    let file = dir.join("misspelt.yaml");
    std::fs::write(&file, bad)?;
    let (ok, text) = validate(&python, &file)?;
    assert!(!ok, "a misspelt field passed: {text}");
    // The base ships the same sample policy as the Debian package (kustomize cannot
    // reach files outside its directory, so it is a copy).
    let root = sensor_tests::repo();
    assert_eq!(
        std::fs::read_to_string(root.join("deploy/kubernetes/base/policy.toml"))?,
        std::fs::read_to_string(root.join("deploy/systemd/policy.toml"))?,
        "deploy/kubernetes/base/policy.toml drifted from deploy/systemd/policy.toml"
    );
    Ok(())
}

#[test]
fn least_privilege_capabilities_are_enough() -> Result<()> {
    if !root_or_skip("least_privilege") {
        return Ok(());
    }
    let Some(python) = k8s_python() else {
        return Ok(());
    };
    let docs = yaml_documents(&python, &kustomize("least-privilege")?)?;
    let sc = &daemonset(&docs)?["spec"]["template"]["spec"]["containers"][0]["securityContext"];
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["capabilities"]["drop"][0], "ALL");
    let caps: Vec<String> = sc["capabilities"]["add"]
        .as_array()
        .context("capabilities.add")?
        .iter()
        .filter_map(|c| c.as_str().map(|c| format!("CAP_{c}")))
        .collect();
    let net = sensor_tests::public_net(&[PUBLIC])?;
    let caps: Vec<&str> = caps.iter().map(String::as_str).collect();
    let mut sensor = Sensor::start_with_capabilities(&caps, &[])?;
    let pid = net.nc(PUBLIC, 4444)?;
    let v = sensor.connection(pid, 4444)?;
    assert_eq!(v["event"]["risk_score"], 3, "{v:#}");
    Ok(())
}

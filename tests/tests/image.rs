//! The container image as shipped: `cargo xtask test` builds it (static musl binary,
//! `FROM scratch`, tagged `:test`: only a release build carries the version), names it in
//! SENSOR_IMAGE and unpacks its filesystem into SENSOR_IMAGE_ROOT.
//!
//! podman cannot start it here: crun and runc both fail setting RLIMIT_NOFILE (this
//! machine's root lacks CAP_SYS_RESOURCE and podman always asks for rlimits, `--ulimit
//! host` too). So the image runs two ways: its binary from that filesystem with chroot, the
//! host's /proc and /sys mounted in a mount namespace of the test's own; and under runc
//! itself, from an OCI bundle made here of the image's filesystem and the least-privilege
//! DaemonSet's pod and security context (capabilities, no new privileges, read-only root,
//! RuntimeDefault seccomp, host PID), with no rlimits, where it alerts on Atomic test 1.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};
use sensor_tests::{
    Sensor, cap_number, capability_sets, daemonset, k8s_python, kustomize, repo, root_or_skip,
    yaml_documents,
};
use serde_json::{Value, json};

const PUBLIC: &str = "203.0.113.77";
const RUNC_PUBLIC: &str = "203.0.113.78";
/// The containers' default seccomp profile (podman's package, golang-github-containers-common).
const DEFAULT_SECCOMP: &str = "/usr/share/containers/seccomp.json";

fn image_root() -> Option<PathBuf> {
    match std::env::var_os("SENSOR_IMAGE_ROOT") {
        Some(p) => Some(PathBuf::from(p)),
        None => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("SENSOR_IMAGE_ROOT is not set: run the tests through `cargo xtask test`");
            }
            eprintln!(
                "SKIPPED image: SENSOR_IMAGE_ROOT not set (cargo xtask test builds the image)"
            );
            None
        }
    }
}

/// `/t1571-sensor ARGS` inside the image's root, /proc and /sys bind-mounted into it privately.
fn in_image(root: &std::path::Path, args: &[&str]) -> Result<Command> {
    std::fs::create_dir_all(root.join("etc")).context("creating /etc in the image root")?;
    let mut cmd = Command::new("/t1571-sensor");
    cmd.args(args);
    sensor_tests::contained(&mut cmd, root, &["proc", "sys"])?;
    Ok(cmd)
}

#[test]
fn image_binary_runs_checks_and_alerts() -> Result<()> {
    if !root_or_skip("image") {
        return Ok(());
    }
    let Some(root) = image_root() else {
        return Ok(());
    };
    // The image holds the binary and nothing else: no shell, no libc.
    let mut entries: Vec<String> = std::fs::read_dir(&root)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !matches!(n.as_str(), "proc" | "sys" | "etc" | "dev" | "run"))
        .collect();
    entries.sort();
    assert_eq!(entries, ["t1571-sensor"], "unexpected files in the image");
    let file = Command::new("file").arg(root.join("t1571-sensor")).output();
    if let Ok(f) = file {
        let text = String::from_utf8_lossy(&f.stdout);
        assert!(
            text.contains("statically linked") || text.contains("static-pie"),
            "{text}"
        );
    }
    let out = in_image(&root, &["--version"])?.output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("t1571-sensor "));
    let out = in_image(&root, &["check"])?.output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("the sensor can run here"), "{text}");
    // A short run that alerts.
    let net = sensor_tests::public_net(&[PUBLIC])?;
    let cmd = in_image(&root, &["run"])?;
    let mut sensor = Sensor::spawn(cmd)?;
    let pid = net.nc(PUBLIC, 4444)?;
    let v = sensor.connection(pid, 4444)?;
    if v["event"]["risk_score"] != 3 {
        bail!("expected a risk-3 alert from the image's binary: {v:#}");
    }
    Ok(())
}

/// The image `cargo xtask test` built, from SENSOR_IMAGE.
fn image_reference() -> Option<String> {
    match std::env::var("SENSOR_IMAGE") {
        Ok(r) => Some(r),
        Err(_) => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("SENSOR_IMAGE is not set: run the tests through `cargo xtask test`");
            }
            eprintln!("SKIPPED image labels: SENSOR_IMAGE not set (cargo xtask test builds it)");
            None
        }
    }
}

#[test]
fn test_image_is_tagged_test_and_has_only_real_labels() -> Result<()> {
    if !root_or_skip("image_labels") {
        return Ok(());
    }
    let Some(reference) = image_reference() else {
        return Ok(());
    };
    assert!(
        reference.ends_with(":test"),
        "the tests' image must be tagged :test, never the version: {reference}"
    );
    let out = Command::new("podman")
        .args(["image", "inspect", &reference])
        .output()
        .context("running podman image inspect")?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let inspected: Value = serde_json::from_slice(&out.stdout)?;
    let image = &inspected[0];
    let labels = image["Labels"].as_object().context("Labels")?;
    eprintln!(
        "image {reference}: {} bytes, labels {labels:?}",
        image["Size"]
    );
    assert_eq!(labels["org.opencontainers.image.title"], "t1571-sensor");
    // No placeholder: a source label only where one is published with a real address.
    assert!(
        !labels.contains_key("org.opencontainers.image.source"),
        "{labels:?}"
    );
    // The version is a release build's only.
    assert!(
        !labels.contains_key("org.opencontainers.image.version"),
        "{labels:?}"
    );
    if let Some(rev) = labels.get("org.opencontainers.image.revision") {
        let rev = rev.as_str().unwrap_or_default();
        assert!(
            rev.len() == 40 && rev.bytes().all(|b| b.is_ascii_hexdigit()),
            "revision label {rev:?}"
        );
    }
    Ok(())
}

/// The containers' default seccomp profile (moby's format: rules conditional on
/// capabilities and architectures) resolved to an OCI profile for `caps` on this
/// architecture, as a runtime does for `seccompProfile: RuntimeDefault`. Every rule's
/// `minKernel` is older than the kernels the tests run on.
fn runtime_default_seccomp(caps: &[String]) -> Result<Value> {
    let text = std::fs::read_to_string(DEFAULT_SECCOMP).with_context(|| {
        format!("reading {DEFAULT_SECCOMP} (package golang-github-containers-common)")
    })?;
    let profile: Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {DEFAULT_SECCOMP}"))?;
    let (go_arch, scmp_arch) = match std::env::consts::ARCH {
        "x86_64" => ("amd64", "SCMP_ARCH_X86_64"),
        "aarch64" => ("arm64", "SCMP_ARCH_AARCH64"),
        other => bail!("no seccomp architecture for {other}"),
    };
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let arch = profile["archMap"]
        .as_array()
        .context("archMap")?
        .iter()
        .find(|a| a["architecture"] == scmp_arch)
        .with_context(|| format!("no {scmp_arch} in {DEFAULT_SECCOMP}"))?;
    let mut architectures = vec![scmp_arch.to_string()];
    architectures.extend(strings(&arch["subArchitectures"]));
    let mut syscalls = Vec::new();
    for rule in profile["syscalls"].as_array().context("syscalls")? {
        let (inc, exc) = (&rule["includes"], &rule["excludes"]);
        let inc_arches = strings(&inc["arches"]);
        if !inc_arches.is_empty() && !inc_arches.iter().any(|a| a == go_arch) {
            continue;
        }
        if strings(&exc["arches"]).iter().any(|a| a == go_arch) {
            continue;
        }
        if !strings(&inc["caps"]).iter().all(|c| caps.contains(c)) {
            continue;
        }
        if strings(&exc["caps"]).iter().any(|c| caps.contains(c)) {
            continue;
        }
        let mut r = json!({"names": rule["names"], "action": rule["action"]});
        if rule["args"].as_array().is_some_and(|a| !a.is_empty()) {
            r["args"] = rule["args"].clone();
        }
        if !rule["errnoRet"].is_null() {
            r["errnoRet"] = rule["errnoRet"].clone();
        }
        syscalls.push(r);
    }
    Ok(json!({
        "defaultAction": profile["defaultAction"],
        "defaultErrnoRet": profile["defaultErrnoRet"],
        "architectures": architectures,
        "syscalls": syscalls,
    }))
}

/// A runc container, force-deleted on drop (killing `runc run` leaves its process).
struct RuncContainer(String);

impl Drop for RuncContainer {
    fn drop(&mut self) {
        let _ = Command::new("runc")
            .args(["delete", "--force", &self.0])
            .stderr(Stdio::null())
            .status();
    }
}

/// The OCI bundle for the DaemonSet's container `c` of pod spec `pod`: `runc spec`'s
/// defaults with the pod's command, args, env, user, capabilities, privilege escalation,
/// read-only root, seccomp profile, host namespaces and volume mounts, and no rlimits.
fn bundle(dir: &Path, image_root: &Path, pod: &Value, c: &Value) -> Result<()> {
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(rootfs.join("etc"))?;
    std::fs::hard_link(image_root.join("t1571-sensor"), rootfs.join("t1571-sensor"))
        .or_else(|_| {
            std::fs::copy(image_root.join("t1571-sensor"), rootfs.join("t1571-sensor")).map(|_| ())
        })
        .context("the image's binary into the bundle")?;
    let out = Command::new("runc")
        .args(["spec", "--bundle"])
        .arg(dir)
        .output()
        .context("running runc spec")?;
    if !out.status.success() {
        bail!("runc spec: {}", String::from_utf8_lossy(&out.stderr));
    }
    let path = dir.join("config.json");
    let mut spec: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    let sc = &c["securityContext"];

    let pod_ip = "127.0.0.1";
    let mut args: Vec<String> = c["command"]
        .as_array()
        .context("command")?
        .iter()
        .chain(c["args"].as_array().context("args")?)
        .filter_map(|a| a.as_str().map(|a| a.replace("$(POD_IP)", pod_ip)))
        .collect();
    if let Some(p) = sensor_tests::forced_probe() {
        args.extend(["--probe".into(), p]);
    }
    let env: Vec<String> = c["env"]
        .as_array()
        .context("env")?
        .iter()
        .map(|e| {
            let value = match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                Some("spec.nodeName") => "t1571-test-node",
                Some("status.podIP") => pod_ip,
                _ => e["value"].as_str().unwrap_or_default(),
            };
            format!("{}={value}", e["name"].as_str().unwrap_or_default())
        })
        .collect();
    let caps: Vec<String> = sc["capabilities"]["add"]
        .as_array()
        .context("capabilities.add")?
        .iter()
        .filter_map(|c| c.as_str().map(|c| format!("CAP_{c}")))
        .collect();
    let process = &mut spec["process"];
    process["terminal"] = false.into();
    process["args"] = json!(args);
    process["env"] = json!(env);
    process["user"] = json!({"uid": sc["runAsUser"].as_u64().unwrap_or(0), "gid": 0});
    // drop: [ALL] then add: as containerd sets a non-privileged container's sets.
    process["capabilities"] = json!({"bounding": caps, "effective": caps, "permitted": caps});
    process["noNewPrivileges"] = (sc["allowPrivilegeEscalation"] == false).into();
    // The point: no rlimits, which this machine's root may not raise.
    process
        .as_object_mut()
        .context("process")?
        .remove("rlimits");
    spec["root"]["readonly"] = (sc["readOnlyRootFilesystem"] == true).into();

    let linux = &mut spec["linux"];
    if sc["seccompProfile"]["type"] == "RuntimeDefault" {
        linux["seccomp"] = runtime_default_seccomp(&caps)?;
    }
    let host = |ns: &str| match ns {
        "pid" => pod["hostPID"] == true,
        "network" => pod["hostNetwork"] == true,
        "ipc" => pod["hostIPC"] == true,
        _ => false,
    };
    let namespaces: Vec<Value> = linux["namespaces"]
        .as_array()
        .context("namespaces")?
        .iter()
        .filter(|n| !host(n["type"].as_str().unwrap_or_default()))
        .cloned()
        .collect();
    linux["namespaces"] = json!(namespaces);

    // Volumes: hostPath as it is, the policy ConfigMap as the directory of its file.
    let policy = dir.join("policy");
    std::fs::create_dir_all(&policy)?;
    std::fs::copy(
        repo().join("deploy/kubernetes/base/policy.toml"),
        policy.join("policy.toml"),
    )?;
    let volumes = pod["volumes"].as_array().context("volumes")?;
    let mounts = spec["mounts"].as_array_mut().context("mounts")?;
    for m in c["volumeMounts"].as_array().context("volumeMounts")? {
        let v = volumes
            .iter()
            .find(|v| v["name"] == m["name"])
            .with_context(|| format!("no volume {}", m["name"]))?;
        let source = if let Some(p) = v["hostPath"]["path"].as_str() {
            PathBuf::from(p)
        } else if v["configMap"]["name"] == "t1571-sensor-policy" {
            policy.clone()
        } else {
            bail!("a volume the test cannot provide: {v}");
        };
        let mut options = vec!["rbind", "rprivate"];
        if m["readOnly"] == true {
            options.push("ro");
        }
        mounts.push(json!({
            "destination": m["mountPath"],
            "type": "bind",
            "source": source,
            "options": options,
        }));
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&spec)?)?;
    Ok(())
}

fn status_field(pid: u32, field: &str) -> Result<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(|v| v.trim().to_string())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

#[test]
fn image_alerts_under_runc_with_the_daemonsets_security_context() -> Result<()> {
    if !root_or_skip("image_runc") {
        return Ok(());
    }
    let Some(image_root) = image_root() else {
        return Ok(());
    };
    let Some(python) = k8s_python() else {
        return Ok(());
    };
    let docs = yaml_documents(&python, &kustomize("least-privilege")?)?;
    let pod = &daemonset(&docs)?["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(c["securityContext"]["privileged"], false, "{c:#}");
    let scratch = sensor_tests::Scratch::new("image-runc")?;
    let dir = scratch.dir.join("bundle");
    bundle(&dir, &image_root, pod, c)?;

    let net = sensor_tests::public_net(&[RUNC_PUBLIC])?;
    let id = format!("t1571-image-{}", std::process::id());
    let container = RuncContainer(id.clone());
    let mut cmd = Command::new("runc");
    cmd.args(["run", "--bundle"]).arg(&dir).arg(&id);
    let mut sensor = Sensor::spawn(cmd).context("the image under runc")?;

    // It runs as the DaemonSet says: its process, by runc's state.
    let out = Command::new("runc").args(["state", &id]).output()?;
    let state: Value = serde_json::from_slice(&out.stdout).context("runc state")?;
    let pid = state["pid"].as_u64().context("runc state pid")? as u32;
    let mut bounding = 0u64;
    for cap in c["securityContext"]["capabilities"]["add"]
        .as_array()
        .context("capabilities.add")?
    {
        bounding |= 1 << cap_number(&format!("CAP_{}", cap.as_str().unwrap_or_default()))?;
    }
    assert_eq!(capability_sets(pid)?["CapBnd"], bounding, "bounding set");
    assert_eq!(status_field(pid, "NoNewPrivs")?, "1");
    assert_eq!(
        status_field(pid, "Seccomp")?,
        "2",
        "not under a seccomp filter"
    );
    let ns = |p: &str, kind: &str| std::fs::read_link(format!("/proc/{p}/ns/{kind}"));
    assert_eq!(ns(&pid.to_string(), "pid")?, ns("self", "pid")?, "hostPID");
    assert_ne!(
        ns(&pid.to_string(), "net")?,
        ns("self", "net")?,
        "pod network"
    );
    // The image's own binary (the bundle's is a link to it, or a copy).
    use std::os::unix::fs::MetadataExt;
    let exe = std::fs::metadata(format!("/proc/{pid}/exe"))?;
    let ours = std::fs::metadata(dir.join("rootfs/t1571-sensor"))?;
    assert_eq!(
        (exe.dev(), exe.ino()),
        (ours.dev(), ours.ino()),
        "not the image's binary"
    );

    // Atomic test 1 from the test's namespace: nc to 4444 on a documentation address.
    let nc = net.nc(RUNC_PUBLIC, 4444)?;
    let v = sensor.connection(nc, 4444)?;
    assert_eq!(v["event"]["risk_score"], 3, "{v:#}");
    drop(sensor);
    drop(container);
    Ok(())
}

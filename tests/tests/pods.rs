//! Kubernetes attribution on the node, with no API: a real cgroup named as containerd and
//! CRI-O name them (systemd and cgroupfs drivers), a process that joins it and connects,
//! and a kubelet `/var/log/containers` tree under a test host root. Also: a ConfigMap's
//! `..data` symlink swap reloads the policy, and users in a container come from the
//! container's own /etc/passwd.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result};
use sensor_tests::{Net, Scratch, Sensor, cgroup2_root, root_or_skip};

const PUBLIC: &str = "203.0.113.88";
const UID: &str = "0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9";

fn net() -> Result<Net> {
    sensor_tests::public_net(&[PUBLIC])
}

/// A host root for the sensor: the host's passwd, and the kubelet's links for one pod.
fn node_root(scratch: &Scratch, ns: &str, pod: &str, container: &str, id: &str) -> Result<PathBuf> {
    let root = scratch.dir.join("node");
    std::fs::create_dir_all(root.join("etc"))?;
    std::fs::copy("/etc/passwd", root.join("etc/passwd"))?;
    let links = root.join("var/log/containers");
    std::fs::create_dir_all(&links)?;
    let target = format!("/var/log/pods/{ns}_{pod}_{UID}/{container}/0.log");
    std::os::unix::fs::symlink(
        target,
        links.join(format!("{pod}_{ns}_{container}-{id}.log")),
    )?;
    // Other pods' links, and junk, around it.
    std::os::unix::fs::symlink("/nowhere", links.join("garbage.log"))?;
    std::fs::write(links.join("not-a-link.log"), "x")?;
    Ok(root)
}

fn id_for(salt: u128) -> String {
    format!(
        "{:064x}",
        (u128::from(std::process::id()) << 16 | salt) * 0x9e37_79b9_7f4a_7c15
    )
}

/// Joins `cgroup`, connects to 4444 from the test namespace, exits.
fn connect_from(net: &Net, cgroup: &Path) -> Result<u32> {
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec nc -z -w2 {PUBLIC} 4444",
        cgroup.display()
    );
    net.run("sh", &["-c", &script])
}

#[test]
fn pods_are_attributed_from_kubelet_links_for_both_cgroup_drivers() -> Result<()> {
    if !root_or_skip("pods") {
        return Ok(());
    }
    let cg = cgroup2_root()?;
    let scratch = Scratch::new("pods")?;
    let containerd_id = id_for(1);
    let crio_id = id_for(2);
    // containerd with the systemd driver (pod UID with `_` for `-`), CRI-O with cgroupfs.
    let base = cg.join(format!("t1571-kubepods-{}", std::process::id()));
    let containerd = base
        .join(format!(
            "kubepods-burstable-pod{}.slice",
            UID.replace('-', "_")
        ))
        .join(format!("cri-containerd-{containerd_id}.scope"));
    let crio = base
        .join("kubepods/besteffort")
        .join(format!("pod{UID}"))
        .join(format!("crio-{crio_id}.scope"));
    for d in [&containerd, &crio] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let root = node_root(
        &scratch,
        "shop",
        "web-7d9f8c6b5-x2x4z",
        "nginx",
        &containerd_id,
    )?;
    std::os::unix::fs::symlink(
        format!("/var/log/pods/payments_api-0_{UID}/app/0.log"),
        root.join(format!(
            "var/log/containers/api-0_payments_app-{crio_id}.log"
        )),
    )?;
    let policy = scratch.dir.join("policy.toml");
    std::fs::write(
        &policy,
        "[[allow]]\nname = \"payments api\"\nkubernetes_namespaces = [\"payments\"]\npod_names = [\"api-*\"]\ndestination_ports = [4444]\n",
    )?;
    let net = net()?;
    let mut sensor = Sensor::start(&[
        "--all",
        "--host-root",
        root.to_str().context("path")?,
        "--config",
        policy.to_str().context("path")?,
    ])?;
    let pid = connect_from(&net, &containerd)?;
    let v = sensor.connection(pid, 4444);
    let pid2 = connect_from(&net, &crio)?;
    let v2 = sensor.connection(pid2, 4444);
    for d in [&containerd, &crio] {
        let _ = std::fs::remove_dir(d);
    }
    let _ = Command::new("sh")
        .arg("-c")
        .arg("find \"$1\" -depth -type d -exec rmdir {} \\;")
        .arg("sh")
        .arg(&base)
        .status();
    let (v, v2) = (v?, v2?);
    assert_eq!(v["container"]["id"], containerd_id.as_str(), "{v:#}");
    assert_eq!(v["container"]["runtime"], "containerd");
    assert_eq!(v["container"]["name"], "nginx");
    assert_eq!(v["orchestrator"]["type"], "kubernetes");
    assert_eq!(v["orchestrator"]["namespace"], "shop");
    assert_eq!(v["orchestrator"]["resource"]["type"], "pod");
    assert_eq!(v["orchestrator"]["resource"]["name"], "web-7d9f8c6b5-x2x4z");
    assert_eq!(v["orchestrator"]["resource"]["id"], UID);
    assert_eq!(v["event"]["kind"], "alert");
    // CRI-O's pod is allow-listed by namespace and pod name, live.
    assert_eq!(v2["container"]["runtime"], "cri-o", "{v2:#}");
    assert_eq!(v2["orchestrator"]["namespace"], "payments");
    assert_eq!(v2["orchestrator"]["resource"]["name"], "api-0");
    assert_eq!(v2["event"]["kind"], "event", "{v2:#}");
    assert_eq!(v2["sensor"]["allow_rule"], "payments api");
    Ok(())
}

#[test]
fn a_configmap_swap_reloads_the_policy() -> Result<()> {
    if !root_or_skip("configmap") {
        return Ok(());
    }
    // The layout kubelet writes for a ConfigMap volume: policy.toml -> ..data/policy.toml,
    // ..data -> ..<timestamp>, swapped atomically on update.
    let scratch = Scratch::new("configmap")?;
    let dir = scratch.dir.join("policy");
    let v1 = dir.join("..2026_11_25_10_00_00.1");
    std::fs::create_dir_all(&v1)?;
    std::fs::write(v1.join("policy.toml"), "c2_ports = [4444]\n")?;
    std::os::unix::fs::symlink("..2026_11_25_10_00_00.1", dir.join("..data"))?;
    std::os::unix::fs::symlink("..data/policy.toml", dir.join("policy.toml"))?;
    let net = net()?;
    let config = dir.join("policy.toml");
    let mut sensor = Sensor::start(&["--config", config.to_str().context("path")?])?;
    let pid = net.nc(PUBLIC, 9001)?;
    assert_eq!(sensor.connection(pid, 9001)?["event"]["risk_score"], 2);
    let v2 = dir.join("..2026_11_25_10_05_00.2");
    std::fs::create_dir_all(&v2)?;
    std::fs::write(v2.join("policy.toml"), "c2_ports = [4444, 9001]\n")?;
    std::os::unix::fs::symlink("..2026_11_25_10_05_00.2", dir.join("..data_tmp"))?;
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data"))?;
    sensor.policy_reloaded()?;
    let pid = net.nc(PUBLIC, 9001)?;
    let v = sensor.connection(pid, 9001)?;
    assert_eq!(v["event"]["risk_score"], 3, "{v:#}");
    Ok(())
}

#[test]
fn users_in_a_container_come_from_its_own_passwd() -> Result<()> {
    if !root_or_skip("container_users") {
        return Ok(());
    }
    // A container: its own root (the host's programs bind-mounted, its own /etc/passwd)
    // in its own mount namespace. uid 4321 is "appuser" there and nobody on the host.
    let scratch = Scratch::new("container-users")?;
    let root = scratch.rootfs()?;
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nappuser:x:4321:4321::/app:/bin/sh\n",
    )?;
    let net = net()?;
    let mut sensor = Sensor::start(&[])?;
    let mut cmd = net.command("/usr/bin/python3");
    cmd.args([
        "-c",
        &format!(
            "import os,socket,time; os.setgid(4321); os.setuid(4321); s=socket.socket(); \
             s.settimeout(2); s.connect_ex(('{PUBLIC}', 4444)); time.sleep(1)"
        ),
    ]);
    let binds = sensor_tests::program_dirs();
    sensor_tests::contained(&mut cmd, &root, &binds)?;
    let mut child = cmd.spawn().context("starting the contained python3")?;
    let pid = child.id();
    let v = sensor.connection(pid, 4444);
    let _ = child.wait();
    let v = v?;
    assert_eq!(v["user"]["id"], "4321", "{v:#}");
    assert_eq!(v["user"]["name"], "appuser", "{v:#}");
    Ok(())
}

//! Allow rules against an attacker on the node (issue 18, allow-rule bypass): a
//! container's root writes its own /etc/passwd, so a name from it must not satisfy a
//! `users` rule written for a host account; a user given a delegated cgroup subtree can
//! name a cgroup after any container, so its id must not satisfy `container_ids` (nor
//! the pod and namespace found from it). Each attack runs for real, next to the same
//! rule matching the genuine thing, so the test fails if the rule never matched.

use std::{path::Path, process::Command};

use anyhow::{Context, Result, bail};
use sensor_tests::{Cgroup2, Net, Scratch, Sensor, contained, replay, root_or_skip};
use serde_json::Value;

const PUBLIC: &str = "203.0.113.89";
/// A uid no host account has; the container calls it `backup`.
const CONTAINER_UID: u32 = 4242;
/// The unprivileged user a cgroup subtree is delegated to.
const DELEGATE_UID: u32 = 4243;

fn net() -> Result<Net> {
    sensor_tests::public_net(&[PUBLIC])
}

/// One python3 connect to PUBLIC:4444 that waits a second before exiting, so the
/// sensor reads the live process.
const CONNECT: &str = "import socket,time; s=socket.socket(); s.settimeout(2); \
                       s.connect_ex(('203.0.113.89', 4444)); time.sleep(1)";

/// The host's uid for `name`, from its account database.
fn host_uid(name: &str) -> Result<u32> {
    let passwd = std::fs::read_to_string("/etc/passwd")?;
    passwd
        .lines()
        .find_map(|l| {
            let mut f = l.split(':');
            (f.next()? == name).then_some(())?;
            f.nth(1)?.parse().ok()
        })
        .with_context(|| format!("no {name} user in the host's /etc/passwd"))
}

fn policy(scratch: &Scratch, text: &str) -> Result<String> {
    let p = scratch.dir.join("policy.toml");
    std::fs::write(&p, text)?;
    Ok(p.to_str().context("policy path")?.to_string())
}

/// Runs `cmd` to completion and returns the connection line of its pid.
fn line_of(sensor: &mut Sensor, mut cmd: Command) -> Result<Value> {
    let mut child = cmd.spawn().context("starting the connecting process")?;
    let pid = child.id();
    let v = sensor.connection(pid, 4444);
    let status = child.wait()?;
    if !status.success() {
        bail!("the connecting process failed ({status}); its line: {v:?}");
    }
    v
}

/// `lines` through `sensor replay --all --config CONFIG`: the connection lines out, each
/// with its `event.kind` and `sensor.allow_rule`.
fn replayed(config: &str, lines: &[Value]) -> Result<Vec<Value>> {
    let input: String = lines.iter().map(|v| format!("{v}\n")).collect();
    let (out, _) = replay(&["--all", "--config", config, "-"], &input)?;
    Ok(out
        .into_iter()
        .filter(|v| v["event"]["action"] == "network-connect")
        .collect())
}

/// A replayed line keeps the trust it was recorded with: the forged one stays an alert,
/// the genuine one stays allowed, and the genuine one stripped of its provenance
/// (`sensor.<key>`) gains nothing (an alert).
fn replay_keeps_trust(config: &str, forged: &Value, genuine: &Value, key: &str) -> Result<()> {
    let mut stripped = genuine.clone();
    stripped["sensor"]
        .as_object_mut()
        .context("sensor object")?
        .remove(key);
    let out = replayed(config, &[forged.clone(), genuine.clone(), stripped])?;
    let kinds: Vec<&Value> = out.iter().map(|v| &v["event"]["kind"]).collect();
    assert_eq!(kinds, ["alert", "event", "alert"], "{out:#?}");
    assert!(out[0]["sensor"].get("allow_rule").is_none(), "{out:#?}");
    assert!(out[1]["sensor"]["allow_rule"].is_string(), "{out:#?}");
    assert!(out[2]["sensor"].get("allow_rule").is_none(), "{out:#?}");
    Ok(())
}

#[test]
fn a_container_passwd_name_does_not_satisfy_a_users_rule() -> Result<()> {
    if !root_or_skip("container_passwd_name") {
        return Ok(());
    }
    let backup = host_uid("backup")?;
    let scratch = Scratch::new("adversary-users")?;
    // The container's root says uid 4242 is `backup`.
    let root = scratch.rootfs()?;
    std::fs::write(
        root.join("etc/passwd"),
        format!(
            "root:x:0:0:root:/root:/bin/sh\nbackup:x:{CONTAINER_UID}:{CONTAINER_UID}::/:/bin/sh\n"
        ),
    )?;
    let config = policy(
        &scratch,
        "[[allow]]\nname = \"host backups\"\nusers = [\"backup\"]\ndestination_ports = [4444]\n",
    )?;
    let net = net()?;
    let mut sensor = Sensor::start(&["--all", "--config", &config])?;

    let mut cmd = net.command("/usr/bin/setpriv");
    let ids = CONTAINER_UID.to_string();
    cmd.args(["--reuid", &ids, "--regid", &ids, "--clear-groups", "--"])
        .args(["/usr/bin/python3", "-c", CONNECT]);
    let binds = sensor_tests::program_dirs();
    contained(&mut cmd, &root, &binds)?;
    let forged = line_of(&mut sensor, cmd)?;

    // The host's real backup user, same program, same destination.
    let mut cmd = net.command("/usr/bin/setpriv");
    let ids = backup.to_string();
    cmd.args(["--reuid", &ids, "--regid", &ids, "--clear-groups", "--"])
        .args(["/usr/bin/python3", "-c", CONNECT]);
    let genuine = line_of(&mut sensor, cmd)?;

    // What was seen is printed, with where the name came from.
    assert_eq!(
        forged["user"]["id"],
        CONTAINER_UID.to_string(),
        "{forged:#}"
    );
    assert_eq!(forged["user"]["name"], "backup", "{forged:#}");
    assert_eq!(forged["sensor"]["user"]["name_source"], "container");
    assert_eq!(forged["event"]["kind"], "alert", "{forged:#}");
    assert!(forged["sensor"].get("allow_rule").is_none(), "{forged:#}");
    assert_eq!(forged["sensor"]["severity"], "High");

    assert_eq!(genuine["user"]["id"], backup.to_string(), "{genuine:#}");
    assert_eq!(genuine["user"]["name"], "backup");
    assert_eq!(genuine["sensor"]["user"]["name_source"], "host");
    assert_eq!(genuine["event"]["kind"], "event", "{genuine:#}");
    assert_eq!(genuine["sensor"]["allow_rule"], "host backups");
    replay_keeps_trust(&config, &forged, &genuine, "user")
}

/// Removes `dirs` (deepest first) whatever happened; cgroup directories go with rmdir.
struct Cleanup(Vec<std::path::PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for d in &self.0 {
            if d.exists()
                && let Err(e) = std::fs::remove_dir(d)
            {
                eprintln!("could not remove cgroup {}: {e}", d.display());
            }
        }
    }
}

/// A 64-hex container id of this run and case.
fn container_id(salt: u128) -> String {
    format!(
        "{:064x}",
        (u128::from(std::process::id()) << 20 | salt) * 0x9e37_79b9_7f4a_7c15
    )
}

/// Puts the shell in `cgroup` (as root, the way a runtime or systemd does), then as
/// DELEGATE_UID connects to PUBLIC:4444.
fn connect_from(net: &Net, cgroup: &Path) -> Command {
    let ids = DELEGATE_UID.to_string();
    let mut cmd = net.command("/bin/sh");
    cmd.arg("-c")
        .arg(
            "echo $$ > \"$1/cgroup.procs\" && exec setpriv --reuid \"$2\" --regid \"$2\" \
             --clear-groups -- /usr/bin/python3 -c \"$3\"",
        )
        .arg("sh")
        .arg(cgroup)
        .arg(&ids)
        .arg(CONNECT);
    cmd
}

fn delegated_cgroup_cannot_claim_a_container_id(cg: &Cgroup2, case: u128) -> Result<()> {
    let scratch = Scratch::new("adversary-cgroup")?;
    let id = container_id(case);
    let config = policy(
        &scratch,
        &format!(
            "[[allow]]\nname = \"payments container\"\ncontainer_ids = [\"{id}\"]\n\
             destination_ports = [4444]\n"
        ),
    )?;
    // A systemd-like tree: a user's delegated service (owned by the user, as systemd
    // hands `user@UID.service` over), and a root-owned system slice.
    let base = cg
        .root
        .join(format!("t1571-allow-{}-{case}", std::process::id()));
    let user = base.join(format!("user@{DELEGATE_UID}.service"));
    let forged = user.join(format!("docker-{id}.scope"));
    let system = base.join("system.slice");
    let genuine = system.join(format!("docker-{id}.scope"));
    let _cleanup = Cleanup(vec![
        forged.clone(),
        user.clone(),
        genuine.clone(),
        system.clone(),
        base.clone(),
    ]);
    for d in [&user, &system] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    std::os::unix::fs::chown(&user, Some(DELEGATE_UID), Some(DELEGATE_UID))?;
    // The user names a cgroup after the container, in their own subtree, themselves.
    let ids = DELEGATE_UID.to_string();
    let mut mkdir = Command::new("setpriv");
    mkdir
        .args([
            "--reuid",
            &ids,
            "--regid",
            &ids,
            "--clear-groups",
            "--",
            "mkdir",
        ])
        .arg(cg.inside(&forged));
    cg.enter(&mut mkdir)?;
    let made = mkdir.status()?;
    if !made.success() {
        bail!("the delegated user could not mkdir {}", forged.display());
    }
    std::fs::create_dir(&genuine).with_context(|| format!("creating {}", genuine.display()))?;

    let net = net()?;
    let mut sensor = Sensor::start_prepared(&["--all", "--config", &config], |cmd| cg.enter(cmd))?;
    let f = line_of(&mut sensor, connect_from(&net, &forged))?;
    let g = line_of(&mut sensor, connect_from(&net, &genuine))?;

    // The claimed id is printed as seen, marked untrusted, and the rule does not hold.
    assert_eq!(f["container"]["id"], id.as_str(), "{f:#}");
    assert_eq!(f["sensor"]["container"]["trusted"], false, "{f:#}");
    assert_eq!(
        f["sensor"]["container"]["reason"], "delegated-cgroup",
        "{f:#}"
    );
    assert_eq!(f["event"]["kind"], "alert", "{f:#}");
    assert!(f["sensor"].get("allow_rule").is_none(), "{f:#}");
    // The same id where only root could have named it: the rule holds.
    assert_eq!(g["container"]["id"], id.as_str(), "{g:#}");
    assert_eq!(g["sensor"]["container"]["trusted"], true, "{g:#}");
    assert_eq!(g["event"]["kind"], "event", "{g:#}");
    assert_eq!(g["sensor"]["allow_rule"], "payments container");
    replay_keeps_trust(&config, &f, &g, "container")
}

#[test]
fn a_delegated_cgroup_cannot_claim_a_container_id() -> Result<()> {
    if !root_or_skip("delegated_cgroup") {
        return Ok(());
    }
    delegated_cgroup_cannot_claim_a_container_id(&Cgroup2::find_or_mount()?, 1)
}

/// The same where the test mounts the hierarchy itself (what a host without a cgroup2
/// mount gets), in a private mount namespace the sensor runs in.
#[test]
fn a_delegated_cgroup_cannot_claim_a_container_id_on_a_private_mount() -> Result<()> {
    if !root_or_skip("delegated_cgroup_private") {
        return Ok(());
    }
    delegated_cgroup_cannot_claim_a_container_id(&Cgroup2::mount_privately()?, 2)
}

//! The storm's network: a client and a server namespace joined by one veth pair, made and
//! deleted here. Only documentation and private addresses, assigned inside the pair; the
//! client has no default route, and nothing listens on the server, so every connect is
//! answered by a RST from inside the pair.

use std::process::Command;

use anyhow::{Context, Result, bail};

/// The C2-port flood and the benign connects go here.
pub const SERVER: &str = "203.0.113.7";
/// A private destination the default policy excludes (benign traffic).
pub const PRIVATE: &str = "10.213.0.7";
/// Scan targets: 60,000 ports on each, so the keys (destination, port) of a run of a few
/// hundred thousand connects stay distinct and folding cannot help.
pub const SCAN_HOSTS: [&str; 8] = [
    "203.0.113.10",
    "203.0.113.11",
    "203.0.113.12",
    "203.0.113.13",
    "203.0.113.14",
    "203.0.113.15",
    "203.0.113.16",
    "203.0.113.17",
];

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

pub struct Net {
    client: String,
    server: String,
}

/// Deletes the namespaces of earlier runs that were interrupted (their pid is gone).
fn remove_stale() {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let pid = ["t1571-bench-c-", "t1571-bench-s-"]
            .iter()
            .find_map(|p| name.strip_prefix(p))
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid
            && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = ip(&["netns", "del", &name]);
        }
    }
}

impl Net {
    pub fn new() -> Result<Self> {
        remove_stale();
        let tag = std::process::id();
        let net = Self {
            client: format!("t1571-bench-c-{tag}"),
            server: format!("t1571-bench-s-{tag}"),
        };
        ip(&["netns", "add", &net.client])?;
        // From here on, Drop deletes whatever was made if a later step fails.
        ip(&["netns", "add", &net.server])?;
        ip(&[
            "link",
            "add",
            "v0",
            "netns",
            &net.client,
            "type",
            "veth",
            "peer",
            "name",
            "v1",
            "netns",
            &net.server,
        ])?;
        for (ns, dev) in [(&net.client, "v0"), (&net.server, "v1")] {
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        let mut addrs = vec![
            (&net.client, "v0", "203.0.113.1/24".to_string()),
            (&net.client, "v0", "10.213.0.1/24".to_string()),
            (&net.server, "v1", format!("{SERVER}/24")),
            (&net.server, "v1", format!("{PRIVATE}/24")),
        ];
        addrs.extend(
            SCAN_HOSTS
                .iter()
                .map(|h| (&net.server, "v1", format!("{h}/24"))),
        );
        for (ns, dev, cidr) in addrs {
            ip(&["-n", ns, "addr", "add", &cidr, "dev", dev])?;
        }
        Ok(net)
    }

    /// For `storm --netns`.
    pub fn client_path(&self) -> String {
        format!("/run/netns/{}", self.client)
    }

    /// The namespaces' names, for `ip netns exec` (the throughput rows).
    pub fn client_name(&self) -> String {
        self.client.clone()
    }

    pub fn server_name(&self) -> String {
        self.server.clone()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Deleting the namespaces deletes the veth pair with them.
        let _ = ip(&["netns", "del", &self.client]);
        let _ = ip(&["netns", "del", &self.server]);
    }
}

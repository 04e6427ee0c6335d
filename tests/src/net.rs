//! The test-made network: a client and a server namespace joined by a veth pair, the
//! addresses on it, and what runs in them; a real HTTP client for the metrics endpoint.

use std::{
    fs::File,
    os::{fd::AsRawFd, unix::process::CommandExt},
    process::{Command, Stdio},
    sync::atomic::Ordering,
};

use anyhow::{Context, Result, bail};

use crate::NEXT;

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

/// A client namespace and a server namespace joined by one veth pair.
pub struct Net {
    client: String,
    server: String,
    client_fd: File,
    server_fd: File,
}

impl Net {
    pub fn new() -> Result<Self> {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let tag = format!("{}-{n}", std::process::id());
        let client = format!("t1571c-{tag}");
        let server = format!("t1571s-{tag}");
        ip(&["netns", "add", &client])?;
        // From here on, Drop deletes whatever was created if a later step fails.
        let mut net = Self {
            client_fd: File::open("/dev/null")?,
            server_fd: File::open("/dev/null")?,
            client: client.clone(),
            server: server.clone(),
        };
        ip(&["netns", "add", &server])?;
        ip(&[
            "link", "add", "v0", "netns", &client, "type", "veth", "peer", "name", "v1", "netns",
            &server,
        ])?;
        for (ns, dev) in [(&client, "v0"), (&server, "v1")] {
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        net.client_fd =
            File::open(format!("/run/netns/{client}")).context("opening the client netns")?;
        net.server_fd =
            File::open(format!("/run/netns/{server}")).context("opening the server netns")?;
        Ok(net)
    }

    /// The client namespace's handle, for code that joins it itself (benchmarks).
    pub fn client_path(&self) -> String {
        format!("/run/netns/{}", self.client)
    }

    /// Puts `client_ip/prefix` on the client side and `server_ip/prefix` on the server side.
    /// Only the connected route exists: nothing is routed anywhere else.
    pub fn subnet(&self, client_ip: &str, server_ip: &str, prefix: u8) -> Result<()> {
        let v6 = server_ip.contains(':');
        for (ns, dev, addr) in [
            (&self.client, "v0", client_ip),
            (&self.server, "v1", server_ip),
        ] {
            let cidr = format!("{addr}/{prefix}");
            let mut args = vec!["-n", ns.as_str(), "addr", "add", cidr.as_str(), "dev", dev];
            if v6 {
                args.push("nodad");
            }
            ip(&args)?;
        }
        Ok(())
    }

    /// A command that runs in the client namespace: its pid is the program's own (setns
    /// happens between fork and exec, no wrapper process).
    pub fn command(&self, program: &str) -> Command {
        Self::command_in(&self.client_fd, program.as_ref())
    }

    /// [`Net::command`] for a program whose path need not be UTF-8.
    pub fn command_os(&self, program: &std::ffi::OsStr) -> Command {
        Self::command_in(&self.client_fd, program)
    }

    /// The same in the server namespace: listeners the client connects to run here.
    pub fn server_command(&self, program: &str) -> Command {
        Self::command_in(&self.server_fd, program.as_ref())
    }

    fn command_in(ns: &File, program: &std::ffi::OsStr) -> Command {
        let mut cmd = Command::new(program);
        let fd = ns.as_raw_fd();
        // SAFETY: setns is async-signal-safe; the fd stays open while `self` lives.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd
    }

    /// Runs `program args` in the client namespace to completion; returns its pid.
    pub fn run(&self, program: &str, args: &[&str]) -> Result<u32> {
        let mut child = self
            .command(program)
            .args(args)
            .spawn()
            .with_context(|| format!("starting {program}"))?;
        let pid = child.id();
        child.wait()?;
        Ok(pid)
    }

    /// `nc -z` (on the high-risk list) from the client namespace to `dst`:`port`, to
    /// completion; returns its pid.
    pub fn nc(&self, dst: &str, port: u16) -> Result<u32> {
        self.run("nc", &["-z", "-w2", dst, &port.to_string()])
    }

    /// One TCP connect from python3 in the client namespace to `addr`:`port` (IPv6 when
    /// `addr` has a colon), to completion; returns its pid.
    pub fn python_connect(&self, addr: &str, port: u16) -> Result<u32> {
        let family = if addr.contains(':') {
            "AF_INET6"
        } else {
            "AF_INET"
        };
        let code = format!(
            "import socket\ns = socket.socket(socket.{family}, socket.SOCK_STREAM)\ns.settimeout(2)\ns.connect_ex(({addr:?}, {port}))"
        );
        self.run("python3", &["-c", &code])
    }

    /// One IPv4 TCP connect from python3 to `addr`:`port` that then lingers 0.3 s, so
    /// /proc still shows its executable when the sensor looks (allow rules match on the
    /// executable, never comm); returns its pid.
    /// ssh (package-managed, on no list) to `dst`:`port`, non-interactive, to completion;
    /// returns its pid.
    pub fn ssh_connect(&self, dst: &str, port: u16) -> Result<u32> {
        let port = port.to_string();
        self.run(
            "/usr/bin/ssh",
            &[
                "-o",
                "BatchMode=yes",
                "-o",
                "ConnectTimeout=2",
                "-F",
                "/dev/null",
                "-p",
                &port,
                dst,
            ],
        )
    }

    pub fn python_connect_lingering(&self, addr: &str, port: u16) -> Result<u32> {
        let code = format!(
            "import socket, time\ns = socket.socket()\ns.settimeout(2)\ns.connect_ex(({addr:?}, {port}))\ntime.sleep(0.3)"
        );
        self.run("python3", &["-c", &code])
    }
}

/// A test-made network whose server side holds every address of `servers`
/// (documentation ranges, or private ones a test excludes), each on a subnet shared with
/// the client, whose address there is the subnet's first (`.1`, `::1`): a /24 for IPv4, a
/// /64 for IPv6.
pub fn public_net(servers: &[&str]) -> Result<Net> {
    let net = Net::new()?;
    for server in servers {
        let (client, prefix) = match server
            .parse::<std::net::IpAddr>()
            .with_context(|| format!("server address {server:?}"))?
        {
            std::net::IpAddr::V4(a) => {
                let [a, b, c, _] = a.octets();
                (std::net::Ipv4Addr::new(a, b, c, 1).to_string(), 24)
            }
            std::net::IpAddr::V6(a) => {
                let s = a.segments();
                let first = std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 1);
                (first.to_string(), 64)
            }
        };
        if client == *server {
            bail!("server address {server} is the subnet's first, the client's");
        }
        net.subnet(&client, server, prefix)?;
    }
    Ok(net)
}

/// One HTTP GET with a real client (curl), returning (status, body).
pub fn http_get(url: &str) -> Result<(u16, String)> {
    let out = Command::new("curl")
        .args(["-s", "-m", "5", "-w", "\n%{http_code}", url])
        .output()
        .context("running curl")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').context("curl printed no status")?;
    Ok((
        code.trim().parse().context("status code")?,
        body.to_string(),
    ))
}

/// The value of Prometheus sample `name` (no labels) in a `/metrics` body.
pub fn metric(body: &str, name: &str) -> Option<u64> {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// [`metric`] for a counter the sensor always exports: absent is an error naming it, not 0.
pub fn metric_counter(body: &str, name: &str) -> Result<u64> {
    metric(body, name).with_context(|| format!("no sample {name} in /metrics"))
}

impl Drop for Net {
    fn drop(&mut self) {
        // Deleting the namespaces deletes the veth pair with them.
        let _ = ip(&["netns", "del", &self.client]);
        let _ = ip(&["netns", "del", &self.server]);
    }
}

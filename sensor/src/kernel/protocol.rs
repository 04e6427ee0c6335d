//! Protocol on the port, kernel side seen from userspace: the `cgroup_skb/egress` program
//! attached to the cgroup2 root (it always allows), the port expectations and switches
//! pushed into its maps, and its counters read back.
//!
//! Hook: `cgroup_skb/egress` loads and works on 6.18, 6.1 and 6.12 alike and sees every
//! outbound segment with its socket (cookie) and its bytes (`bpf_skb_load_bytes`), before
//! GSO, so a 1.8 KB ClientHello is one skb. The `tcp_sendmsg_locked` BTF tracepoint is
//! missing on 6.1 and gives the user's iovec, not the segment; sockops + sk_msg would
//! switch the socket's operations (docs/protocol-hook.md).
//! The flow's identity is remembered by socket cookie at connect by the tp_btf state hook
//! (the only hook given a BTF-typed socket; attached for listens where fentry or kprobe
//! reports connects), so the feature needs that hook.

use anyhow::{Context, Result, bail};
use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData, PerCpuArray},
    programs::{CgroupSkb, CgroupSkbAttachType},
};
use sensor_common::{
    PROTO_EXPECTED, PROTO_LOST, PROTO_MISMATCH, PROTO_SEEN, PROTO_SENT, PROTO_TRUNCATED,
    PROTO_UNEXPECTED_QUIET, PROTO_UNTRACKED, PROTOCOL_COUNTERS_MAP, PROTOCOL_PORTS_MAP,
    PROTOCOL_PORTS_MAX, PROTOCOL_SETTINGS_MAP, PayloadClass, ProtocolSettings,
};
use serde::Serialize;

use crate::kernel::{
    attach::LifecycleAttach,
    probe::Probe,
    sockets::{cgroup_attach_mode, open_cgroup2_root},
};

/// The hook name users see.
pub const PROTOCOL_HOOK: &str = "cgroup_skb/egress";
const PROGRAM: &str = "protocol_egress";

/// What the kernel is told: which classes each port expects, and whether TLS on an
/// expected port goes up anyway (a JA4 list is in force).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expectations {
    pub enabled: bool,
    pub ja4: bool,
    /// (port, classes expected there).
    pub ports: Vec<(u16, Vec<PayloadClass>)>,
}

/// Attaches the egress program to the cgroup2 root, unless the feature is off or no hook
/// remembers flows (`state_hook`: the hook the state program is attached as; only its
/// tp_btf form can ask a socket for its cookie). Reported with the other hooks.
pub fn attach(ebpf: &mut Ebpf, enabled: bool, state_hook: Option<&str>) -> LifecycleAttach {
    let mut out = LifecycleAttach {
        event: "protocol",
        attached: None,
        passed_over: Vec::new(),
    };
    let r = (|| -> Result<()> {
        if !enabled {
            bail!("off in the policy ([protocol] enabled = false)");
        }
        if state_hook != Some(Probe::TpBtf.hook()) {
            bail!(
                "flows are remembered at connect only by {}, which is not attached here ({})",
                Probe::TpBtf.hook(),
                state_hook.unwrap_or("no state hook")
            );
        }
        let (root, dir) = open_cgroup2_root()?;
        let mode = cgroup_attach_mode();
        let p: &mut CgroupSkb = ebpf
            .program_mut(PROGRAM)
            .with_context(|| format!("program {PROGRAM} missing from the eBPF object"))?
            .try_into()?;
        p.load().context("load")?;
        p.attach(&dir, CgroupSkbAttachType::Egress, mode)
            .with_context(|| format!("attach to {}", root.display()))?;
        log::info!(
            "{PROTOCOL_HOOK} attached to the cgroup2 root {}",
            root.display()
        );
        Ok(())
    })();
    match r {
        Ok(()) => out.attached = Some(PROTOCOL_HOOK),
        Err(e) => out.passed_over.push((PROTOCOL_HOOK, format!("{e:#}"))),
    }
    out
}

/// The feature's maps, owned by the loop.
pub struct ProtocolMaps {
    settings: Array<MapData, ProtocolSettings>,
    ports: HashMap<MapData, u16, u8>,
    counters: PerCpuArray<MapData, u64>,
    /// Whether the egress program is attached (else the switch stays off).
    attached: bool,
}

impl ProtocolMaps {
    pub fn take(ebpf: &mut Ebpf, attached: bool) -> Result<Self> {
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .with_context(|| format!("map {name} missing from the eBPF object"))
        };
        Ok(Self {
            settings: Array::try_from(take(PROTOCOL_SETTINGS_MAP)?)?,
            ports: HashMap::try_from(take(PROTOCOL_PORTS_MAP)?)?,
            counters: PerCpuArray::try_from(take(PROTOCOL_COUNTERS_MAP)?)?,
            attached,
        })
    }

    /// Writes the expectations: the switch off first, the ports replaced, then the switch.
    /// A flow judged meanwhile sees a partial port table (at worst one extra record).
    pub fn push(&mut self, e: &Expectations) -> Result<()> {
        let on = e.enabled && self.attached;
        self.settings
            .set(0, ProtocolSettings::default(), 0)
            .context("writing PROTOCOL_SETTINGS")?;
        if !on {
            return Ok(());
        }
        if e.ports.len() > PROTOCOL_PORTS_MAX as usize {
            bail!(
                "{} ports with a protocol expectation; the kernel table holds {PROTOCOL_PORTS_MAX}",
                e.ports.len()
            );
        }
        let old: Vec<u16> = self.ports.keys().filter_map(Result::ok).collect();
        for k in old {
            let _ = self.ports.remove(&k);
        }
        for (port, classes) in &e.ports {
            let mask = classes.iter().fold(0u8, |m, c| m | c.bit());
            self.ports
                .insert(port, mask, 0)
                .with_context(|| format!("writing port {port} into PROTOCOL_PORTS"))?;
        }
        let s = ProtocolSettings {
            enabled: 1,
            ja4: u32::from(e.ja4),
        };
        self.settings
            .set(0, s, 0)
            .context("writing PROTOCOL_SETTINGS")
    }

    /// The kernel's counters, summed over CPUs.
    pub fn read(&self) -> Result<KernelProtocolCounts> {
        let slot = |s: u32| -> Result<u64> {
            let v = self
                .counters
                .get(&s, 0)
                .context("reading PROTOCOL_COUNTERS")?;
            Ok(v.iter().copied().fold(0u64, u64::saturating_add))
        };
        Ok(KernelProtocolCounts {
            seen: slot(PROTO_SEEN)?,
            expected: slot(PROTO_EXPECTED)?,
            mismatch: slot(PROTO_MISMATCH)?,
            sent: slot(PROTO_SENT)?,
            truncated: slot(PROTO_TRUNCATED)?,
            lost: slot(PROTO_LOST)?,
            quiet: slot(PROTO_UNEXPECTED_QUIET)?,
            untracked: slot(PROTO_UNTRACKED)?,
        })
    }
}

/// The egress hook's counters (`stats.kernel_protocol`, metrics `protocol_*`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct KernelProtocolCounts {
    /// First payloads looked at.
    pub seen: u64,
    /// Expected protocol on its port, connect kept in the kernel: stayed in the kernel.
    pub expected: u64,
    /// A protocol the port does not expect.
    pub mismatch: u64,
    /// Records sent up.
    pub sent: u64,
    /// Records whose payload was cut at the capture bound.
    pub truncated: u64,
    /// Records lost (ring full or copy failed).
    pub lost: u64,
    /// No expectation on the port and the connect kept in the kernel: nothing sent.
    pub quiet: u64,
    /// Connects whose flow could not be remembered.
    pub untracked: u64,
}

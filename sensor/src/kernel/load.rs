//! Loading the embedded eBPF object: this kernel's field layout patched in, the three ring
//! buffers sized, one connect hook attached.

use anyhow::{Context, Result, bail};
use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf},
};
use log::{debug, info, warn};
use sensor_common::{
    CONNECTS_MAP, KernelLayout, LAYOUT_GLOBAL, LOSSES_MAP, LOST_RESERVE, MAX_DELAY_GLOBAL,
    PROCESSES_MAP, SOCKETS_MAP, WAKEUP_GLOBAL,
};

use crate::{
    kernel::attach::{self, LifecycleAttach, Probe, Selection},
    kernel::btf,
    kernel::layout,
    kernel::protocol,
    kernel::sockets,
    kernel::tracefs::{self, Tracefs},
};

/// The kernel program, built by build.rs and embedded so the binary alone is deployable.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sensor-ebpf.o"));

pub struct Options {
    pub ring_buffer_bytes: u32,
    /// Hooks to try, in order.
    pub probes: Vec<Probe>,
    /// aya-log level for kernel-side messages; 0 keeps them off the hot path.
    pub kernel_log_level: u8,
    /// Pending bytes at which the kernel wakes the reader (0: every record).
    pub wakeup_bytes: u64,
    /// With batching: force a wakeup when none was sent for this long.
    pub max_delay: std::time::Duration,
}

/// What the kernel and its metadata offer, found before anything is loaded. Nothing here
/// needs tracefs: the classic tracepoints' formats are read only if they are attached.
pub struct Environment {
    pub layout: KernelLayout,
    pub btf: Option<Btf>,
    pub btf_error: Option<String>,
}

impl Environment {
    pub fn probe() -> Self {
        let mut env = Self::layout_only();
        env.read_btf();
        env
    }

    /// The layout only: [`Environment::read_btf`] later, once the object is loaded, so the
    /// loader's own parse of the kernel BTF (`EbpfLoader::new` always makes one) and ours
    /// are never in memory together.
    pub fn layout_only() -> Self {
        let mut layout = KernelLayout::UNKNOWN;
        let btf_error = std::fs::read("/sys/kernel/btf/vmlinux")
            .context("reading /sys/kernel/btf/vmlinux")
            .and_then(|data| {
                let ours = btf::Btf::parse(&data).context("parsing kernel BTF")?;
                layout::apply_btf(&mut layout, &ours);
                Ok(())
            })
            .err()
            .map(|e| format!("{e:#}"));
        Self {
            layout,
            btf: None,
            btf_error,
        }
    }

    /// aya's parse of the kernel BTF, which the BTF hooks are loaded with.
    pub fn read_btf(&mut self) {
        if self.btf.is_some() || self.btf_error.is_some() {
            return;
        }
        match Btf::from_sys_fs().context("parsing kernel BTF (aya)") {
            Ok(b) => self.btf = Some(b),
            Err(e) => self.btf_error = Some(format!("{e:#}")),
        }
    }
}

pub struct Loaded {
    pub ebpf: Ebpf,
    pub selection: Selection,
    /// Lifecycle hooks attached (exec, fork, exit), and those passed over with why.
    pub lifecycle: Vec<LifecycleAttach>,
    /// Where tracefs was found or mounted, when a classic tracepoint is in use.
    pub tracefs: Option<Tracefs>,
}

impl Loaded {
    /// For logs and `sensor-started`: which tracefs, if any, the hooks in use depend on.
    pub fn tracefs_source(&self) -> String {
        match &self.tracefs {
            Some(t) => t.describe(),
            None => "not needed (no classic tracepoint in use)".into(),
        }
    }
}

pub fn validate_ring_buffer_size(bytes: u32) -> Result<()> {
    // SAFETY: sysconf has no preconditions.
    let page = u32::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    if bytes < page || !bytes.is_power_of_two() {
        bail!("ring buffer size {bytes} must be a power of two of at least the page size ({page})");
    }
    Ok(())
}

/// Creates the maps (ring buffer included) and parses the programs; attaches nothing.
pub fn load_object(opts: &Options, env: &Environment) -> Result<Ebpf> {
    validate_ring_buffer_size(opts.ring_buffer_bytes)?;
    let p = crate::kernel::privileges::privileges();
    if !p.ok {
        bail!(
            "loading eBPF programs needs root, or CAP_BPF and CAP_PERFMON ({}); `sensor check` lists what else is missing",
            p.detail
        );
    }
    raise_memlock();
    // The kernel BTF parsed once when already read (`Environment::probe`); otherwise the
    // loader's own parse, freed with the loader before `read_btf` makes ours.
    let mut loader = EbpfLoader::new();
    if let Some(btf) = env.btf.as_ref() {
        loader.btf(Some(btf));
    }
    loader
        .override_global(LAYOUT_GLOBAL, &env.layout, true)
        .override_global(aya_log::LEVEL, &opts.kernel_log_level, false)
        .override_global(WAKEUP_GLOBAL, &opts.wakeup_bytes, true)
        .override_global(
            MAX_DELAY_GLOBAL,
            &u64::try_from(opts.max_delay.as_nanos()).unwrap_or(u64::MAX),
            true,
        )
        // Each of the three rings gets the size (3x in kernel memory): connects, process
        // lifecycle and sockets each have their own, so a flood of one cannot push out
        // another.
        .map_max_entries(CONNECTS_MAP, opts.ring_buffer_bytes)
        .map_max_entries(PROCESSES_MAP, opts.ring_buffer_bytes)
        .map_max_entries(SOCKETS_MAP, opts.ring_buffer_bytes)
        .load(EBPF_OBJECT)
        .context("loading the eBPF object (maps, ring buffer)")
}

/// `run`'s load: the layout, the object, then the BTF for the hooks (one parse of it in
/// memory at a time), dropped with the heap it used once the hooks are attached.
pub fn load_once(opts: &Options) -> Result<Loaded> {
    let mut env = Environment::layout_only();
    let ebpf = load_object(opts, &env)?;
    env.read_btf();
    let loaded = attach_all(ebpf, opts, &env);
    drop(env);
    trim_heap();
    loaded
}

/// Loads the object and attaches the first hook of `opts.probes` that works.
pub fn load(opts: &Options, env: &Environment) -> Result<Loaded> {
    attach_all(load_object(opts, env)?, opts, env)
}

fn attach_all(mut ebpf: Ebpf, opts: &Options, env: &Environment) -> Result<Loaded> {
    let selection = attach::select(&opts.probes, |p| {
        let r = attach::attach(&mut ebpf, p, &env.layout, env.btf.as_ref());
        if let Err(e) = &r {
            debug!("{}: {e:#}", p.hook());
        }
        r
    })?;
    for a in &selection.failed {
        info!("{} unavailable: {}", a.probe.hook(), a.error);
    }
    info!("attached {}", selection.chosen.hook());
    let mut lifecycle = attach::attach_lifecycle(&mut ebpf, &env.layout, env.btf.as_ref());
    // Listens, inbound opens and UDP: reported with the lifecycle hooks (`process_hooks`).
    lifecycle.push(sockets::attach_state(
        &mut ebpf,
        selection.chosen,
        &env.layout,
        env.btf.as_ref(),
    ));
    lifecycle.push(sockets::attach_udp(&mut ebpf));
    // Protocol on the port: attached whenever it can be; the policy switch is a map.
    let state_hook = lifecycle
        .iter()
        .find(|l| l.event == "listen")
        .and_then(|l| l.attached);
    lifecycle.push(protocol::attach(&mut ebpf, true, state_hook));
    for l in &lifecycle {
        for (hook, e) in &l.passed_over {
            debug!("{hook} unavailable: {e}");
        }
        match l.attached {
            Some(hook) => info!("attached {hook}"),
            None => warn!(
                "no {} hook could be attached ({}); {}",
                l.event,
                l.passed_over
                    .iter()
                    .map(|(h, e)| format!("{h}: {e}"))
                    .collect::<Vec<_>>()
                    .join("; "),
                match l.event {
                    "listen" => "listening sockets and inbound connections go unseen",
                    "udp" => "UDP goes unseen",
                    "protocol" => "the sensor runs without protocol on the port",
                    _ => "short-lived processes may go unattributed",
                }
            ),
        }
    }
    let classic = selection.chosen == Probe::Tracepoint
        || lifecycle.iter().any(LifecycleAttach::uses_tracefs);
    // Already found (or mounted) by the attach, so this only reads the cached answer.
    let tracefs = if classic {
        tracefs::ensure().ok()
    } else {
        None
    };
    let loaded = Loaded {
        ebpf,
        selection,
        lifecycle,
        tracefs,
    };
    info!("tracefs: {}", loaded.tracefs_source());
    Ok(loaded)
}

impl Loaded {
    /// The three rings: TCP connects, process lifecycle, sockets (UDP, listen, inbound).
    pub fn take_rings(&mut self) -> Result<[RingBuf<MapData>; 3]> {
        Ok([
            self.take_ring(CONNECTS_MAP)?,
            self.take_ring(PROCESSES_MAP)?,
            self.take_ring(SOCKETS_MAP)?,
        ])
    }

    fn take_ring(&mut self, name: &str) -> Result<RingBuf<MapData>> {
        let map = self
            .ebpf
            .take_map(name)
            .with_context(|| format!("ring buffer map {name} missing"))?;
        RingBuf::try_from(map).with_context(|| format!("{name} is not a ring buffer"))
    }

    pub fn take_losses(&mut self) -> Result<LossCounter> {
        let map = self
            .ebpf
            .take_map(LOSSES_MAP)
            .context("losses map missing")?;
        Ok(LossCounter {
            map: PerCpuArray::try_from(map).context("LOSSES is not a per-CPU array")?,
        })
    }
}

/// The kernel's per-CPU count of failed ring-buffer reserves.
pub struct LossCounter {
    map: PerCpuArray<MapData, u64>,
}

impl LossCounter {
    /// Records lost: ring-buffer reserves that failed.
    pub fn total(&self) -> Result<u64> {
        self.slot(LOST_RESERVE)
    }

    /// UDP datagrams dropped on purpose in the kernel, counted: (to a standard port,
    /// repeats of a (socket, destination) already reported).
    pub fn udp_dropped(&self) -> Result<(u64, u64)> {
        Ok((
            self.slot(sensor_common::UDP_STANDARD_DROPPED)?,
            self.slot(sensor_common::UDP_REPEAT_DROPPED)?,
        ))
    }

    fn slot(&self, slot: u32) -> Result<u64> {
        let per_cpu = self.map.get(&slot, 0).context("reading the losses map")?;
        Ok(per_cpu.iter().copied().fold(0u64, u64::saturating_add))
    }
}

/// The benchmark baselines: an empty program on the classic connect tracepoint
/// (`btf = false`) or on its BTF form, until a signal.
#[cfg(feature = "test-hooks")]
pub fn baseline(btf: bool) -> Result<()> {
    let env = Environment::probe();
    let opts = Options {
        ring_buffer_bytes: 4096,
        probes: Vec::new(),
        kernel_log_level: 0,
        wakeup_bytes: 0,
        max_delay: std::time::Duration::ZERO,
    };
    let mut ebpf = load_object(&opts, &env)?;
    if btf {
        let kernel_btf = env
            .btf
            .as_ref()
            .with_context(|| format!("kernel BTF unavailable: {:?}", env.btf_error))?;
        let p: &mut aya::programs::BtfTracePoint = ebpf
            .program_mut("baseline_empty_btf")
            .context("program baseline_empty_btf missing from the eBPF object")?
            .try_into()?;
        p.load(layout::TRACEPOINT_NAME, kernel_btf)
            .context("load")?;
        p.attach().context("attach")?;
    } else {
        attach::prepare_classic(&mut ebpf)?;
        let p: &mut aya::programs::TracePoint = ebpf
            .program_mut("baseline_empty")
            .context("program baseline_empty missing from the eBPF object")?
            .try_into()?;
        p.load().context("load")?;
        p.attach(layout::TRACEPOINT_CATEGORY, layout::TRACEPOINT_NAME)
            .context("attach")?;
    }
    // As `run` does: the BTF is needed no more, and the heap it used goes back.
    drop(env);
    trim_heap();
    println!("{{\"event\":{{\"kind\":\"state\",\"action\":\"baseline-started\"}}}}");
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: plain signal-mask calls on a local sigset; the signals are blocked, then
    // waited for synchronously, so no handler runs.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        let mut sig = 0;
        libc::sigwait(&set, &mut sig);
    }
    Ok(())
}

/// Gives the heap the load path freed back to the kernel: parsing BTF and the object
/// leaves megabytes of freed small blocks that glibc keeps (its trim only looks at the top
/// of the heap). Once, after the load; nothing on the event path calls it. musl's
/// allocator has no such call (and returns freed memory by itself).
pub fn trim_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim has no preconditions; 0 keeps no padding.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK.
fn raise_memlock() {
    let rl = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: valid pointer to an rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rl) } != 0 {
        // Newer kernels account BPF memory to the cgroup instead; only old ones care.
        debug!("could not raise RLIMIT_MEMLOCK; loading may fail on kernels before 5.11");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_buffer_sizes() {
        validate_ring_buffer_size(1 << 20).unwrap();
        validate_ring_buffer_size(4096).unwrap();
        assert!(validate_ring_buffer_size(3000).is_err());
        assert!(validate_ring_buffer_size(4097).is_err());
        assert!(validate_ring_buffer_size(0).is_err());
    }
}

//! `sensor run`: kernel -> ring buffer -> enrich -> score -> output, until SIGINT/SIGTERM.
//!
//! [`main`] sets everything up from the command line; [`run`] loads and attaches, then
//! turns the event loop. Each turn is one job of a module of its own: `drain` (the ring
//! buffers, in the order things happened), `ticks` (stats and collection, the metrics
//! line, the watchdog), `reload` (SIGHUP, a changed policy file), `signals`.

mod drain;
mod kernel;
mod reload;
mod signals;
mod stall;
pub mod started;
mod stats;
mod ticks;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use log::info;
use serde::Serialize;

use self::{
    drain::{Merge, Recheck, Rings},
    kernel::{Kernel, LogRelay},
    reload::PolicyFile,
    signals::{Signal, Signals},
    stall::LoopStall,
    started::Started,
    ticks::Timers,
};
pub use crate::cmd::args::{DEFAULT_RING_BUFFER, KernelLog, RunArgs};
use crate::{
    cmd::{args::host_root, notify::Notifier},
    detect::{engine::Engine, policy::Policy, score::high_risk_entry},
    enrich::{
        host::HostInfo, identity, kubelet::Pods, packages::Packages, procfs::Procfs,
        proctable::ProcTable, users::UserNames,
    },
    kernel::load::{self, Loaded},
    output::{
        self,
        clock::BootClock,
        ecs::{Action, Kind},
        metrics::Metrics,
        sink::{Output, Sink},
    },
    pipeline::{self, Counters, Pipeline},
};

/// `sensor run`: everything set up from the command line, then the capture loop.
pub fn main(args: RunArgs) -> Result<()> {
    let policy = Policy::load_or_default(args.config.as_deref())?;
    load::validate_ring_buffer_size(args.ring_buffer_size).context("--ring-buffer-size")?;
    let host_root = host_root(args.host_root)?;
    // The node's name in a pod (NODE_NAME), else the kernel's.
    let host_name = args.host_name.clone().unwrap_or_else(pipeline::host_name);
    if args.dry_run {
        // Everything above parsed and validated; nothing is loaded.
        println!(
            "dry run: command line and policy ({}) are valid; host root {}",
            args.config
                .as_deref()
                .map_or("built-in defaults".into(), |p| p.display().to_string()),
            host_root.display()
        );
        return Ok(());
    }
    let mut identities =
        identity::Identities::scan(|name| high_risk_entry(&policy, name), &host_root);
    // Whole-file hashes of executables are taken off the event loop from here on.
    identities.start_hasher();
    let mut table = ProcTable::new(
        Procfs::new(args.proc_root.clone()),
        identities,
        args.max_processes as usize,
        args.exit_grace,
    );
    // The host's package-managed files, for the unmanaged-executable tier.
    table.packages = Packages::load(&host_root);
    let max_delay = Duration::from_millis(args.max_delay);
    let opts = Options {
        load: load::Options {
            ring_buffer_bytes: args.ring_buffer_size,
            probes: args.probe.order(),
            kernel_log_level: args.kernel_log.level(),
            // Wake the reader per quarter ring; the drain timer handles the rest.
            wakeup_bytes: if args.max_delay == 0 {
                0
            } else {
                u64::from(args.ring_buffer_size / 4)
            },
            max_delay,
        },
        pipeline: Pipeline {
            engine: Engine::new(Arc::new(policy), args.engine.config(args.all)),
            table,
            users: UserNames::new(host_root.join("etc/passwd"), &args.proc_root),
            pods: Pods::new(&host_root),
            host_name: host_name.clone(),
            output: output::Context::new(HostInfo::read(&host_root, host_name), args.format.into()),
            clock: BootClock::sync(),
            counters: Default::default(),
            sockets: Default::default(),
            kernel: Default::default(),
        },
        stats_interval: args.stats_interval,
        max_delay,
        metrics_interval: args.metrics_interval,
        config: args.config,
        output: args.output,
        metrics: args.metrics,
        #[cfg(feature = "test-hooks")]
        test_stall: args.test_stall_on_usr1,
        keep_capabilities: args.keep_capabilities,
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?
        .block_on(run(opts))
}

pub struct Options {
    pub load: load::Options,
    pub pipeline: Pipeline,
    pub stats_interval: Duration,
    /// Longest a record waits in the ring buffer when the kernel batches wakeups.
    pub max_delay: Duration,
    /// How often a `metric` event with the sensor's counters is printed.
    pub metrics_interval: Duration,
    /// Re-read on SIGHUP, and when the file changes (a kubelet ConfigMap swap).
    pub config: Option<PathBuf>,
    pub output: Output,
    /// Where to serve /metrics and /healthz.
    pub metrics: Option<SocketAddr>,
    /// SIGUSR1 stalls the loop (tests).
    #[cfg(feature = "test-hooks")]
    pub test_stall: bool,
    /// Keep every capability after attaching (debugging).
    pub keep_capabilities: bool,
}

/// Loads and attaches, prints `sensor-started`, turns the loop until SIGINT or SIGTERM,
/// then prints `sensor-stopped` and detaches.
pub async fn run(opts: Options) -> Result<()> {
    let (loaded, mut src, mut lp) = start(opts)?;
    let stall = LoopStall::default();
    loop {
        tokio::select! {
            ready = src.rings.readable() => {
                let _turn = stall.turn();
                ready?;
                let found = src.merge.drain(&mut src.rings, &mut lp.pipeline, &mut lp.out)?;
                lp.alive();
                src.recheck.after_wakeup(found);
            }
            relayed = src.kernel_log.relay() => {
                let _turn = stall.turn();
                relayed?;
            }
            // The kernel wakes us only per batch; this bounds how long a record waits.
            () = src.recheck.due() => {
                let _turn = stall.turn();
                let found = src.merge.drain(&mut src.rings, &mut lp.pipeline, &mut lp.out)?;
                lp.alive();
                src.recheck.after_timer(found);
            }
            _ = src.timers.stats.tick() => {
                let _turn = stall.turn();
                lp.tick(&stall)?;
            }
            // From the loop itself: a stalled loop stops feeding the watchdog.
            () = ticks::tick(&mut src.timers.watchdog) => lp.notifier.watchdog(),
            signal = src.signals.recv() => {
                let _turn = stall.turn();
                match signal {
                    Signal::Stop(name) => {
                        info!("{name}: detaching");
                        break;
                    }
                    Signal::Reload => lp.sighup()?,
                    Signal::User1 => src.signals.user1(),
                }
            }
            _ = src.timers.metrics.tick() => {
                let _turn = stall.turn();
                ticks::stats_line(&mut lp.pipeline, &mut lp.out, &lp.kernel, &stall)?;
            }
        }
    }
    lp.stop(&mut src.merge, &mut src.rings, &stall)?;
    // Dropping `loaded` detaches and unloads every program.
    drop(loaded);
    Ok(())
}

/// What the loop waits on.
struct Sources {
    rings: Rings,
    merge: Merge,
    recheck: Recheck,
    kernel_log: LogRelay,
    signals: Signals,
    timers: Timers,
}

/// Loads and attaches the kernel programs, seeds the process table, drops capabilities,
/// starts the output and the metrics server, and prints `sensor-started`.
fn start(opts: Options) -> Result<(Loaded, Sources, Loop)> {
    let Options {
        load,
        mut pipeline,
        stats_interval,
        max_delay,
        metrics_interval,
        config,
        output,
        metrics,
        #[cfg(feature = "test-hooks")]
        test_stall,
        keep_capabilities,
    } = opts;
    let notifier = Notifier::from_env();
    let mut loaded = load::load_once(&load)?;
    let rings = Rings::new(loaded.take_rings()?)?;
    let mut kernel = Kernel::take(&mut loaded)?;
    kernel.push(&mut pipeline)?;
    // Seed after the lifecycle hooks are attached: every process is then either in /proc
    // now or announced by a record later.
    pipeline.table.seed();
    info!(
        "process table seeded with {} processes; {} high-risk executables fingerprinted",
        pipeline.table.len(),
        pipeline.table.identities.known_files
    );
    let kernel_log = LogRelay::start(&mut loaded, load.kernel_log_level)?;
    let signals = Signals::install(
        #[cfg(feature = "test-hooks")]
        test_stall,
    )?;
    // Bound while the sensor still holds its capabilities (a port below 1024).
    let metrics_listener = metrics.map(output::metrics::bind).transpose()?;
    let capabilities = kernel.drop_capabilities(keep_capabilities, &mut pipeline)?;
    let out = Sink::new(output, &pipeline.host_name)?;
    let (metrics, metrics_addr) = match metrics_listener {
        Some(listener) => {
            let m = Arc::new(Metrics::new(loaded.selection.chosen.hook()));
            let bound = output::metrics::serve(listener, m.clone())?;
            info!("metrics and health on http://{bound}/metrics and /healthz");
            (Some(m), Some(bound))
        }
        None => (None, None),
    };
    let timers = Timers::new(
        stats_interval,
        metrics_interval,
        notifier.watchdog_interval(),
    );
    let mut lp = Loop {
        pipeline,
        out,
        kernel,
        policy: PolicyFile::new(config),
        notifier,
        metrics,
    };
    let started = Started::new(
        &loaded,
        &lp.pipeline,
        load.ring_buffer_bytes,
        metrics_addr,
        output,
        &capabilities,
    );
    // /metrics has every field from the start, before the first tick.
    lp.publish(&LoopStall::default())?;
    lp.status(Kind::State, Action::SensorStarted, started)?;
    lp.out.flush()?;
    load::trim_heap();
    let running = format!("running; {}", loaded.selection.chosen.hook());
    lp.notifier.ready(&running);
    info!("{running} (SIGINT or SIGTERM to stop)");
    let src = Sources {
        rings,
        merge: Merge::default(),
        recheck: Recheck::new(load.wakeup_bytes > 0, max_delay),
        kernel_log,
        signals,
        timers,
    };
    Ok((loaded, src, lp))
}

/// What the loop's turns work on.
struct Loop {
    pipeline: Pipeline,
    out: Sink,
    kernel: Kernel,
    policy: PolicyFile,
    notifier: Notifier,
    metrics: Option<Arc<Metrics>>,
}

impl Loop {
    /// A status line of the sensor's own.
    fn status<T: Serialize>(&mut self, kind: Kind, action: Action, sensor: T) -> Result<()> {
        let line = output::status(kind, action, self.pipeline.host_name.as_str(), sensor);
        self.out.status(&line)
    }

    /// The sensor's stats to the metrics endpoint (and a sign of life).
    fn publish(&self, stall: &LoopStall) -> Result<()> {
        match &self.metrics {
            Some(m) => m.publish(&stats::collect(
                &self.pipeline,
                &self.out,
                self.kernel.lost(),
                stall,
            )),
            None => Ok(()),
        }
    }

    /// After a drain: the loop is alive (the stats go out with the next tick).
    fn alive(&self) {
        if let Some(m) = &self.metrics {
            m.alive();
        }
    }

    /// The stats tick, and a reload when the policy file changed under us (a ConfigMap
    /// update), as SIGHUP does.
    fn tick(&mut self, stall: &LoopStall) -> Result<()> {
        ticks::collect(&mut self.pipeline, &mut self.out, &mut self.kernel)?;
        if self.policy.changed() {
            info!("policy file changed: reloading");
            self.reload()?;
        }
        self.out.flush()?;
        self.publish(stall)
    }

    fn sighup(&mut self) -> Result<()> {
        self.policy.mark_seen();
        self.reload()?;
        self.out.flush()
    }

    fn reload(&mut self) -> Result<()> {
        reload::reload(
            self.policy.path(),
            &mut self.pipeline,
            &mut self.kernel,
            &mut self.out,
            &self.notifier,
        )
    }

    /// The last records and folded counts, so the totals of `sensor-stopped` are the
    /// kernel's own; then the output closed.
    fn stop(mut self, merge: &mut Merge, rings: &mut Rings, stall: &LoopStall) -> Result<()> {
        self.notifier.stopping();
        merge.finish(rings, &mut self.pipeline, &mut self.out)?;
        self.kernel
            .collect(&mut self.pipeline, &mut self.out, true)?;
        self.kernel
            .report_losses(&mut self.pipeline, &mut self.out)?;
        self.pipeline
            .finish(BootClock::now_unix_ns(), &mut self.out)?;
        let Counters {
            connections,
            connections_attributed: attributed,
            alerts,
            malformed_records: malformed,
            ..
        } = self.pipeline.counters;
        let lost = self.kernel.lost();
        let stopped = stats::collect(&self.pipeline, &self.out, lost, stall);
        self.status(Kind::State, Action::SensorStopped, stopped)?;
        // Bounded: a stdout nobody reads must not hold the exit (and the detach) back.
        self.out.close(Duration::from_millis(300));
        info!(
            "stopped: {connections} connections ({attributed} attributed), {alerts} alerts, {lost} lost, {malformed} malformed"
        );
        Ok(())
    }
}

//! `sensor run`: kernel -> ring buffer -> enrich -> score -> output, until SIGINT/SIGTERM.

use std::{
    net::SocketAddr,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, Result};
use log::{info, warn};
use serde_json::json;
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
};

pub use crate::cmd::args::{KernelLog, RunArgs};
use crate::{
    cmd::{
        args::host_root,
        drain::{DRAIN_BATCH, Merge, Rings},
        notify::Notifier,
        stall::LoopStall,
    },
    detect::{engine::Engine, policy::Policy, score::high_risk_entry},
    enrich::{
        host::HostInfo, identity, kubelet::Pods, packages::Packages, procfs::Procfs,
        proctable::ProcTable, users::UserNames,
    },
    kernel::{
        filter::{self, CounterReader, FilterPolicy, KernelFilter, KernelFold},
        load::{self, Environment},
        privileges,
    },
    output::{
        self,
        clock::BootClock,
        ecs::{Action, Kind},
        metrics::{Metrics, Snapshot},
        sink::{Output, Sink},
        status::{EventsLost, PolicyReload},
    },
    pipeline::{self, Counters, Pipeline},
};

pub use crate::cmd::args::DEFAULT_RING_BUFFER;

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

/// What identifies a file's content for the reload watch: a kubelet ConfigMap update swaps
/// a `..data` symlink, so the file reached through the path is another inode.
fn file_identity(path: &Path) -> Option<(u64, u64, i64, i64, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.dev(), m.ino(), m.mtime(), m.mtime_nsec(), m.len()))
}

pub async fn run(opts: Options) -> Result<()> {
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
    let env = Environment::probe();
    let mut loaded = load::load(&load, &env)?;
    let mut rings = Rings::new(loaded.take_rings()?)?;
    let mut merge = Merge::default();
    let losses = loaded.take_losses()?;
    // Until the first push the filter maps are zero: everything passes, nothing folds.
    let mut kernel = Kernel {
        filter: KernelFilter::take(&mut loaded.ebpf)?,
        counters: CounterReader::take(&mut loaded.ebpf)?,
        fold: KernelFold::take(&mut loaded.ebpf)?,
    };
    kernel.push(&mut pipeline)?;
    // Seed after the lifecycle hooks are attached: every process is then either in /proc
    // now or announced by a record later.
    pipeline.table.seed();
    info!(
        "process table seeded with {} processes; {} high-risk executables fingerprinted",
        pipeline.table.len(),
        pipeline.table.identities.known_files
    );
    let mut kernel_log = if load.kernel_log_level > 0 {
        let logger =
            aya_log::EbpfLogger::init(&mut loaded.ebpf).context("kernel log ring buffer")?;
        Some(watch(logger).context("registering the kernel log with tokio")?)
    } else {
        None
    };

    let mut sigint = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    let mut tick = tokio::time::interval(stats_interval);
    let batching = load.wakeup_bytes > 0;
    // With batched wakeups, records submitted without one are picked up by a drain
    // max_delay after any drain that found records; idle, no timer runs.
    let mut recheck: Option<tokio::time::Instant> = None;
    let arm =
        |found: usize| (batching && found > 0).then(|| tokio::time::Instant::now() + max_delay);
    let mut metrics_tick = tokio::time::interval_at(
        tokio::time::Instant::now() + metrics_interval,
        metrics_interval,
    );
    let metrics_listener = metrics.map(output::metrics::bind).transpose()?;
    // Capabilities are per thread: dropped while this is the only one, before the output
    // writer and the metrics server start.
    // The map-access probe rewrites the filter generation not in force with the policy in
    // force and flips to it, as a reload does; a refused write leaves the old one in force.
    let probe_policy = filter_policy(&pipeline)?;
    let capabilities = privileges::drop_capabilities(keep_capabilities, || {
        losses.total().is_ok() && kernel.filter.push(&probe_policy).is_ok()
    })
    .context("dropping capabilities")?;
    pipeline.kernel.filter_generation = kernel.filter.generation();
    info!("capabilities kept: {}", capabilities.kept.join(" "));
    let mut out = Sink::new(output, &pipeline.host_name)?;
    let metrics = match metrics_listener {
        Some(listener) => {
            let m = Arc::new(Metrics::new(loaded.selection.chosen.hook()));
            let bound = output::metrics::serve(listener, m.clone())?;
            info!("metrics and health on http://{bound}/metrics and /healthz");
            Some((m, bound))
        }
        None => None,
    };
    let mut watchdog = notifier.watchdog_interval().map(tokio::time::interval);
    let mut usr1 = signal(SignalKind::user_defined1()).context("SIGUSR1 handler")?;
    let mut config_seen = config.as_deref().and_then(file_identity);

    let unavailable: Vec<_> = loaded
        .selection
        .failed
        .iter()
        .map(|a| json!({"hook": a.probe.hook(), "error": a.error}))
        .collect();
    let lifecycle: Vec<_> = loaded
        .lifecycle
        .iter()
        .map(|l| {
            let passed_over: Vec<_> = l
                .passed_over
                .iter()
                .map(|(hook, e)| json!({"hook": hook, "error": e}))
                .collect();
            json!({"event": l.event, "hook": l.attached, "attached": l.attached.is_some(), "passed_over": passed_over})
        })
        .collect();
    let started = json!({
        "probe": loaded.selection.chosen.hook(),
        "tracefs": loaded.tracefs_source(),
        "unavailable_probes": unavailable,
        "process_hooks": lifecycle,
        "process_table": {"entries": pipeline.table.len(), "fingerprinted_executables": pipeline.table.identities.known_files},
        "ring_buffer_bytes": load.ring_buffer_bytes,
        "engine": pipeline.engine.config_report(),
        "metrics": metrics.as_ref().map(|(_, addr)| addr.to_string()),
        "output": format!("{output:?}").to_lowercase(),
        "capabilities": capabilities,
        "kernel_filter": {
            "filtering": !pipeline.engine.config().all,
            "folding": pipeline.kernel.folding,
            "generation": pipeline.kernel.filter_generation,
        },
    });
    out.status(&output::status(
        Kind::State,
        Action::SensorStarted,
        pipeline.host_name.as_str(),
        started,
    ))?;
    out.flush()?;
    let running = format!("running; {}", loaded.selection.chosen.hook());
    notifier.ready(&running);
    info!("{running} (SIGINT or SIGTERM to stop)");
    let stall = LoopStall::default();
    let publish = |pipeline: &Pipeline, out: &Sink, lost: u64| {
        if let Some((m, _)) = &metrics {
            m.publish(&snapshot(pipeline, out, lost));
            m.loop_stall(stall.max());
        }
    };

    let mut lost_reported = 0u64;
    loop {
        tokio::select! {
            ready = rings.readable() => {
                let _turn = stall.turn();
                ready?;
                let found = merge.drain(&mut rings, &mut pipeline, &mut out)?;
                publish(&pipeline, &out, lost_reported);
                recheck = if found == DRAIN_BATCH {
                    // More may be waiting: come back at once, after the other branches.
                    Some(tokio::time::Instant::now())
                } else {
                    arm(found).or(recheck)
                };
            }
            guard = async { match kernel_log.as_mut() {
                Some(fd) => fd.readable_mut().await,
                None => std::future::pending().await,
            } } => {
                let _turn = stall.turn();
                let mut guard = guard.context("waiting on the kernel log")?;
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            // The kernel wakes us only per batch; this bounds how long a record waits.
            _ = async { match recheck {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            } } => {
                let _turn = stall.turn();
                let found = merge.drain(&mut rings, &mut pipeline, &mut out)?;
                publish(&pipeline, &out, lost_reported);
                recheck = if found == DRAIN_BATCH { Some(tokio::time::Instant::now()) } else { arm(found) };
            }
            _ = tick.tick() => {
                let _turn = stall.turn();
                pipeline.clock = BootClock::sync();
                pipeline.table.expire(std::time::Instant::now());
                kernel.collect(&mut pipeline, &mut out, false)?;
                report_losses(&losses, &mut lost_reported, &mut pipeline, &mut out)?;
                pipeline.tick(BootClock::now_unix_ns(), &mut out)?;
                // The policy file changed under us (a ConfigMap update): reload as SIGHUP does.
                let now_seen = config.as_deref().and_then(file_identity);
                if now_seen != config_seen {
                    config_seen = now_seen;
                    info!("policy file changed: reloading");
                    reload(config.as_deref(), &mut pipeline, &mut kernel, &mut out, &notifier)?;
                }
                out.flush()?;
                publish(&pipeline, &out, lost_reported);
            }
            _ = async { match watchdog.as_mut() {
                Some(i) => { i.tick().await; }
                None => std::future::pending().await,
            } } => {
                // From the loop itself: a stalled loop stops feeding the watchdog.
                notifier.watchdog();
            }
            _ = sighup.recv() => {
                let _turn = stall.turn();
                config_seen = config.as_deref().and_then(file_identity);
                reload(config.as_deref(), &mut pipeline, &mut kernel, &mut out, &notifier)?;
                out.flush()?;
            }
            _ = usr1.recv() => {
                let _turn = stall.turn();
                #[cfg(feature = "test-hooks")]
                if test_stall {
                    warn!("SIGUSR1 (test hook): stalling the event loop for 10 s");
                    std::thread::sleep(Duration::from_secs(10));
                }
            }
            _ = metrics_tick.tick() => {
                let _turn = stall.turn();
                kernel.read_counts(&mut pipeline);
                let doc = output::status(Kind::Metric, Action::SensorStats, pipeline.host_name.as_str(), counters_json(&pipeline, &out, lost_reported, &stall));
                out.status(&doc)?;
                out.flush()?;
            }
            _ = sigint.recv() => { info!("SIGINT: detaching"); break; }
            _ = sigterm.recv() => { info!("SIGTERM: detaching"); break; }
        }
    }
    notifier.stopping();
    // The last records and folded counts, so the totals below are the kernel's own.
    merge.finish(&mut rings, &mut pipeline, &mut out)?;
    kernel.collect(&mut pipeline, &mut out, true)?;
    report_losses(&losses, &mut lost_reported, &mut pipeline, &mut out)?;
    pipeline.finish(BootClock::now_unix_ns(), &mut out)?;
    let Counters {
        connections,
        attributed,
        alerts,
        malformed,
        ..
    } = pipeline.counters;
    let stopped = counters_json(&pipeline, &out, lost_reported, &stall);
    out.status(&output::status(
        Kind::State,
        Action::SensorStopped,
        pipeline.host_name.as_str(),
        stopped,
    ))?;
    // Bounded: a stdout nobody reads must not hold the exit (and the detach) back.
    out.close(Duration::from_millis(300));
    info!(
        "stopped: {connections} connections ({attributed} attributed), {alerts} alerts, {lost_reported} lost, {malformed} malformed"
    );
    // Dropping `loaded` detaches and unloads every program.
    drop(loaded);
    Ok(())
}

/// The kernel's filter, counters and fold table, owned by the loop.
struct Kernel {
    filter: KernelFilter,
    counters: CounterReader,
    fold: KernelFold,
}

impl Kernel {
    /// Writes the policy in force into the filter generation not in force, then flips.
    /// A policy the maps cannot hold turns the filter off (everything passes) and is an
    /// error: the kernel never drops what the engine's policy wants to see.
    fn push(&mut self, pipeline: &mut Pipeline) -> Result<()> {
        let pushed = filter_policy(pipeline).and_then(|p| self.filter.push(&p).map(|()| p));
        let p = match pushed {
            Ok(p) => p,
            Err(e) => {
                let open = FilterPolicy::pass_all();
                let _ = self.filter.push(&open);
                pipeline.kernel.folding = false;
                return Err(e.context("kernel filter off: everything passes to userspace"));
            }
        };
        pipeline.kernel.folding = p.settings.fold != 0;
        pipeline.kernel.filter_pushes += 1;
        pipeline.kernel.filter_generation = self.filter.generation();
        Ok(())
    }

    /// Collects what the kernel folded into the engine, and reads the counters.
    /// `last`: at exit, everything is taken, whether its first record was seen or not.
    fn collect(&mut self, pipeline: &mut Pipeline, out: &mut Sink, last: bool) -> Result<()> {
        if pipeline.kernel.folding {
            let period = u64::try_from(pipeline.engine.config().fold_ns.max(0)).unwrap_or(0);
            let now = filter::boot_ns();
            let side = &pipeline.kernel;
            // A key's first record is normally judged by the connects read after it;
            // this bound is for a lost first record with no connect after it.
            let wait = period.max(60_000_000_000);
            let deltas = self.fold.collect(now, period, |k, v| {
                last || side.fold_ready(k, v.window_start_ns, now, wait)
            });
            pipeline.kernel.fold_keys = self.fold.keys;
            pipeline.kernel.fold_keys_deleted = self.fold.deleted;
            pipeline.kernel_folded(&deltas, now, period, out)?;
        }
        self.read_counts(pipeline);
        Ok(())
    }

    fn read_counts(&self, pipeline: &mut Pipeline) {
        match self.counters.read() {
            Ok(c) => pipeline.kernel.counts = c,
            Err(e) => {
                pipeline.kernel.read_errors += 1;
                warn!("{e:#}; read again at the next interval");
            }
        }
    }
}

/// SIGHUP or a changed policy file: reload, push the new policy into the kernel's
/// filter, tell systemd, print the outcome.
fn reload(
    config: Option<&Path>,
    pipeline: &mut Pipeline,
    kernel: &mut Kernel,
    out: &mut Sink,
    notifier: &Notifier,
) -> Result<()> {
    notifier.reloading();
    let mut doc = pipeline::reload(config, pipeline);
    if doc.event.action == Action::PolicyReloaded
        && let Err(e) = kernel.push(pipeline)
    {
        // The engine has the new policy; the kernel filter is off (everything passes).
        // Said loudly, counted as a failure.
        warn!("policy reloaded, but not into the kernel filter: {e:#}");
        doc = output::status(
            Kind::State,
            Action::PolicyReloadFailed,
            pipeline.host_name.clone(),
            PolicyReload {
                error: Some(format!("updating the kernel filter: {e:#}")),
                ..Default::default()
            },
        );
    }
    if doc.event.action == Action::PolicyReloaded {
        pipeline.counters.reloads += 1;
    } else {
        pipeline.counters.reload_failures += 1;
    }
    notifier.ready("policy reloaded");
    out.status(&doc)
}

/// The loop's totals for the metrics endpoint.
fn snapshot(pipeline: &Pipeline, out: &Sink, lost: u64) -> Snapshot {
    let c = pipeline.counters;
    let engine = pipeline.engine.report();
    Snapshot {
        events_seen: c.connections,
        events_filtered: c.connections.saturating_sub(c.printed),
        events_emitted: out.emitted(),
        alerts: c.alerts_by_severity,
        ring_lost: lost,
        output_lost: out.lost(),
        output_dropped: out.dropped,
        process_table_entries: pipeline.table.len() as u64,
        policy_reloads: c.reloads,
        policy_reload_failures: c.reload_failures,
        beacons_detected: engine.beacons_detected,
        beacon_keys: engine.beacon_keys as u64,
        beacon_tracker_bytes: engine.beacon_tracker_bytes as u64,
        beacon_evictions: engine.beacon_keys_evicted_by_reason,
        folded_connections: engine.folded_connections,
        kernel: pipeline.kernel.counts,
    }
}

/// The sensor's counters, for `sensor-stats` metrics and the `sensor-stopped` event.
fn counters_json(
    pipeline: &Pipeline,
    out: &Sink,
    lost: u64,
    stall: &LoopStall,
) -> serde_json::Value {
    let c = pipeline.counters;
    let table = pipeline.table.stats();
    json!({
        "connections": c.connections,
        "connections_attributed": c.attributed,
        "alerts": c.alerts,
        "malformed_records": c.malformed,
        "lost_events_total": lost,
        "output_lost": out.lost(),
        "output_dropped": out.dropped,
        "policy_reloads": c.reloads,
        "policy_reload_failures": c.reload_failures,
        "loss_counter_read_errors": c.loss_read_errors,
        "passwd_read_errors": pipeline.users.host.read_errors,
        "container_passwd_unreadable": pipeline.users.containers.unreadable,
        "container_users": pipeline.users.containers.report(),
        "cgroup_scans_cut": pipeline.table.cgroups.scans_cut,
        "hashing": pipeline.table.identities.hasher.as_ref().map(|h| h.report()),
        "identity_cache": pipeline.table.identities.cache_report(),
        "process_records": {"exec": c.execs, "fork": c.forks, "exit": c.exits},
        "process_table": {"entries": table.entries, "bytes": table.bytes, "max_bytes": table.max_bytes, "evicted": table.evicted, "expired": table.expired},
        "engine": pipeline.engine.report(),
        "sockets": pipeline.sockets.report(),
        "kernel": pipeline.kernel.report(),
        "loop": {"max_stall_ms": stall.max_ms()},
    })
}

/// Registers an fd-owning aya object with tokio's reactor for readability.
fn watch<T: AsRawFd>(inner: T) -> std::io::Result<AsyncFd<T>> {
    // SAFETY: aya's RingBuf and EbpfLogger own their map fd; it stays open and unchanged
    // until the object, and with it this AsyncFd, is dropped.
    unsafe { AsyncFd::register_with_interest(inner, Interest::READABLE) }
        .map_err(std::io::Error::from)
}

/// Emits a `pipeline_error` event whenever the kernel's loss counter has grown.
fn report_losses(
    losses: &load::LossCounter,
    reported: &mut u64,
    pipeline: &mut Pipeline,
    out: &mut Sink,
) -> Result<()> {
    if let Ok(udp) = losses.udp_dropped() {
        pipeline.sockets.kernel_udp_dropped = udp;
    }
    // One failed read of the counter is no reason to stop capturing: counted, reported
    // in the metrics, and read again at the next interval.
    let total = match losses.total() {
        Ok(total) => total,
        Err(e) => {
            pipeline.counters.loss_read_errors += 1;
            warn!("{e:#}; read again at the next interval");
            return Ok(());
        }
    };
    if total > *reported {
        let delta = total - *reported;
        warn!(
            "ring buffer full: {delta} connect events lost ({total} in total); raise --ring-buffer-size"
        );
        let doc = output::status(
            Kind::PipelineError,
            Action::EventsLost,
            pipeline.host_name.as_str(),
            EventsLost {
                lost_events: delta,
                lost_events_total: total,
                cause: "ring buffer full",
            },
        );
        out.status(&doc)?;
        out.flush()?;
        *reported = total;
    }
    Ok(())
}

/// What the kernel filter holds for the engine's policy and settings.
fn filter_policy(pipeline: &Pipeline) -> Result<FilterPolicy> {
    let cfg = pipeline.engine.config();
    let fold_ns = u64::try_from(cfg.fold_ns.max(0)).unwrap_or(u64::MAX);
    let p = pipeline.engine.policy();
    FilterPolicy::new(
        p.kernel_dropped_ports(),
        &p.excluded_networks,
        cfg.all,
        fold_ns,
    )
}

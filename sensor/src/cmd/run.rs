//! `sensor run`: kernel -> ring buffer -> enrich -> score -> output, until SIGINT/SIGTERM.

use std::{
    io::{BufWriter, Write},
    os::fd::AsRawFd,
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, Result};
use aya::maps::{MapData, RingBuf};
use log::{info, warn};
use serde_json::json;
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
};

pub use crate::cmd::args::{KernelLog, RunArgs};
use crate::{
    cmd::args::host_root,
    detect::{engine::Engine, policy::Policy, score::high_risk_entry},
    enrich::{identity, procfs::Procfs, proctable::ProcTable, users::Users},
    kernel::{
        load::{self, Environment},
        records,
    },
    output::{self, clock::BootClock},
    pipeline::{self, Counters, Pipeline},
};

pub use crate::cmd::args::DEFAULT_RING_BUFFER;

/// `sensor run`: everything set up from the command line, then the capture loop.
pub fn main(args: RunArgs) -> Result<()> {
    let policy = Policy::load_or_default(args.config.as_deref())?;
    load::validate_ring_buffer_size(args.ring_buffer_size).context("--ring-buffer-size")?;
    let host_root = host_root(args.host_root)?;
    let identities = identity::Identities::scan(|name| high_risk_entry(&policy, name), &host_root);
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
            table: ProcTable::new(
                Procfs::new(args.proc_root),
                identities,
                args.max_processes as usize,
                args.exit_grace,
            ),
            users: Users::new(host_root.join("etc/passwd")),
            host_name: pipeline::host_name(),
            clock: BootClock::sync(),
            counters: Default::default(),
            sockets: Default::default(),
        },
        stats_interval: args.stats_interval,
        max_delay,
        metrics_interval: args.metrics_interval,
        config: args.config,
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
    /// Re-read on SIGHUP.
    pub config: Option<PathBuf>,
}

pub async fn run(opts: Options) -> Result<()> {
    let Options {
        load,
        mut pipeline,
        stats_interval,
        max_delay,
        metrics_interval,
        config,
    } = opts;
    let env = Environment::probe();
    let mut loaded = load::load(&load, &env)?;
    let mut ring =
        watch(loaded.take_ring_buffer()?).context("registering the ring buffer with tokio")?;
    let losses = loaded.take_losses()?;
    loaded.set_udp_standard_ports(pipeline.engine.policy().standard_ports.iter().copied())?;
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
    let mut out = BufWriter::new(std::io::stdout().lock());

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
    });
    output::write_line(
        &mut out,
        &output::status("state", "sensor-started", &pipeline.host_name, started),
    )?;
    out.flush().context("writing to stdout")?;
    info!(
        "running; {} (SIGINT or SIGTERM to stop)",
        loaded.selection.chosen.hook()
    );

    let mut lost_reported = 0u64;
    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.context("waiting on the ring buffer")?;
                                let found = drain(guard.get_inner_mut(), &mut pipeline, &mut out)?;
                if found == DRAIN_BATCH {
                    // More may be waiting: come back at once, after the other branches.
                    recheck = Some(tokio::time::Instant::now());
                } else {
                    guard.clear_ready();
                    recheck = arm(found).or(recheck);
                }
            }
            guard = async { match kernel_log.as_mut() {
                Some(fd) => fd.readable_mut().await,
                None => std::future::pending().await,
            } } => {
                let mut guard = guard.context("waiting on the kernel log")?;
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            // The kernel wakes us only per batch; this bounds how long a record waits.
            _ = async { match recheck {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            } } => {
                                let found = drain(ring.get_mut(), &mut pipeline, &mut out)?;
                recheck = if found == DRAIN_BATCH { Some(tokio::time::Instant::now()) } else { arm(found) };
            }
            _ = tick.tick() => {
                pipeline.clock = BootClock::sync();
                pipeline.table.expire(std::time::Instant::now());
                report_losses(&losses, &mut lost_reported, &mut pipeline, &mut out)?;
                pipeline.tick(BootClock::now_unix_ns(), &mut out)?;
                out.flush().context("writing to stdout")?;
            }
            _ = sighup.recv() => {
                let doc = pipeline::reload(config.as_deref(), &mut pipeline);
                output::write_line(&mut out, &doc)?;
                out.flush().context("writing to stdout")?;
            }
            _ = metrics_tick.tick() => {
                let doc = output::status("metric", "sensor-stats", &pipeline.host_name, counters_json(&pipeline, lost_reported));
                output::write_line(&mut out, &doc)?;
                out.flush().context("writing to stdout")?;
            }
            _ = sigint.recv() => { info!("SIGINT: detaching"); break; }
            _ = sigterm.recv() => { info!("SIGTERM: detaching"); break; }
        }
    }
    report_losses(&losses, &mut lost_reported, &mut pipeline, &mut out)?;
    pipeline.finish(BootClock::now_unix_ns(), &mut out)?;
    let Counters {
        connections,
        attributed,
        alerts,
        malformed,
        ..
    } = pipeline.counters;
    let stopped = counters_json(&pipeline, lost_reported);
    output::write_line(
        &mut out,
        &output::status("state", "sensor-stopped", &pipeline.host_name, stopped),
    )?;
    out.flush().context("writing to stdout")?;
    info!(
        "stopped: {connections} connections ({attributed} attributed), {alerts} alerts, {lost_reported} lost, {malformed} malformed"
    );
    // Dropping `loaded` detaches and unloads every program.
    drop(loaded);
    Ok(())
}

/// Records handled per drain before the loop yields, so timers (expiry, loss reports,
/// engine windows) and signals are served under a flood too.
const DRAIN_BATCH: usize = 4096;

/// Handles up to [`DRAIN_BATCH`] records, then flushes the output; returns how many.
fn drain(
    rb: &mut RingBuf<MapData>,
    pipeline: &mut Pipeline,
    out: &mut impl Write,
) -> Result<usize> {
    let mut found = 0;
    while found < DRAIN_BATCH
        && let Some(item) = rb.next()
    {
        found += 1;
        let decoded = records::decode(&item);
        drop(item); // give the slot back to the kernel before slow procfs work
        match decoded {
            Ok(record) => pipeline.handle(&record, out)?,
            Err(e) => {
                pipeline.counters.malformed += 1;
                warn!("dropped a malformed ring buffer record: {e:#}");
            }
        }
    }
    out.flush().context("writing to stdout")?;
    Ok(found)
}

/// The sensor's counters, for `sensor-stats` metrics and the `sensor-stopped` event.
fn counters_json(pipeline: &Pipeline, lost: u64) -> serde_json::Value {
    let c = pipeline.counters;
    let table = pipeline.table.stats();
    json!({
        "connections": c.connections,
        "connections_attributed": c.attributed,
        "alerts": c.alerts,
        "malformed_records": c.malformed,
        "lost_events_total": lost,
        "loss_counter_read_errors": c.loss_read_errors,
        "passwd_read_errors": pipeline.users.read_errors,
        "process_records": {"exec": c.execs, "fork": c.forks, "exit": c.exits},
        "process_table": {"entries": table.entries, "evicted": table.evicted, "expired": table.expired},
        "engine": pipeline.engine.report(),
        "sockets": pipeline.sockets.report(),
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
    out: &mut impl Write,
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
            "pipeline_error",
            "events-lost",
            &pipeline.host_name,
            json!({"lost_events": delta, "lost_events_total": total, "cause": "ring buffer full"}),
        );
        output::write_line(out, &doc)?;
        out.flush().context("writing to stdout")?;
        *reported = total;
    }
    Ok(())
}

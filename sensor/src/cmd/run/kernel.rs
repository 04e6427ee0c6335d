//! The loop's side of the kernel: the filter it pushes the policy into, the counters and
//! fold table it reads, the loss counter it reports, and the kernel log it relays.

use anyhow::{Context, Result};
use aya_log::EbpfLogger;
use log::{info, warn};
use tokio::io::unix::AsyncFd;

use super::drain::watch;
use crate::{
    kernel::{
        filter::{self, CounterReader, FilterPolicy, KernelFilter, KernelFold},
        load::{self, Loaded},
        privileges::{self, Dropped},
        protocol::{self, ProtocolMaps},
    },
    output::{
        self,
        ecs::{Action, Kind},
        sink::Sink,
        status::EventsLost,
    },
    pipeline::Pipeline,
};

/// The kernel's filter, counters, fold table and loss counter, owned by the loop.
pub struct Kernel {
    filter: KernelFilter,
    counters: CounterReader,
    fold: KernelFold,
    losses: load::LossCounter,
    protocol: ProtocolMaps,
    /// Ring-buffer losses reported so far (`lost_events_total`).
    lost_reported: u64,
}

impl Kernel {
    /// Takes the maps out of the loaded object. Until the first push the filter maps are
    /// zero: everything passes, nothing folds.
    pub fn take(loaded: &mut Loaded) -> Result<Self> {
        let attached = loaded
            .lifecycle
            .iter()
            .any(|l| l.attached == Some(protocol::PROTOCOL_HOOK));
        Ok(Self {
            protocol: ProtocolMaps::take(&mut loaded.ebpf, attached)?,
            losses: loaded.take_losses()?,
            filter: KernelFilter::take(&mut loaded.ebpf)?,
            counters: CounterReader::take(&mut loaded.ebpf)?,
            fold: KernelFold::take(&mut loaded.ebpf)?,
            lost_reported: 0,
        })
    }

    /// Ring-buffer losses reported so far.
    pub fn lost(&self) -> u64 {
        self.lost_reported
    }

    /// Writes the policy in force into the filter generation not in force, then flips.
    /// A policy the maps cannot hold turns the filter off (everything passes) and is an
    /// error: the kernel never drops what the engine's policy wants to see.
    pub fn push(&mut self, pipeline: &mut Pipeline) -> Result<()> {
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
        self.protocol
            .push(&expectations(pipeline))
            .context("protocol on the port: writing the port expectations")
    }

    /// Drops the capabilities the sensor no longer needs. Capabilities are per thread:
    /// called while this is the only one, before the output writer and the metrics server
    /// start. The map-access probe rewrites the filter generation not in force with the
    /// policy in force and flips to it, as a reload does; a refused write leaves the old
    /// one in force.
    pub fn drop_capabilities(&mut self, keep: bool, pipeline: &mut Pipeline) -> Result<Dropped> {
        let probe_policy = filter_policy(pipeline)?;
        let dropped = privileges::drop_capabilities(keep, || {
            self.losses.total().is_ok() && self.filter.push(&probe_policy).is_ok()
        })
        .context("dropping capabilities")?;
        pipeline.kernel.filter_generation = self.filter.generation();
        info!("capabilities kept: {}", dropped.kept.join(" "));
        Ok(dropped)
    }

    /// Collects what the kernel folded into the engine, and reads the counters.
    /// `last`: at exit, everything is taken, whether its first record was seen or not.
    pub fn collect(&mut self, pipeline: &mut Pipeline, out: &mut Sink, last: bool) -> Result<()> {
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

    pub fn read_counts(&self, pipeline: &mut Pipeline) {
        match self.counters.read() {
            Ok(c) => pipeline.kernel.counts = c,
            Err(e) => {
                pipeline.kernel.read_errors += 1;
                warn!("{e:#}; read again at the next interval");
            }
        }
        match self.protocol.read() {
            Ok(c) => pipeline.kernel.protocol = c,
            Err(e) => {
                pipeline.kernel.read_errors += 1;
                warn!("{e:#}; read again at the next interval");
            }
        }
    }

    /// Emits a `pipeline_error` event whenever the kernel's loss counter has grown.
    pub fn report_losses(&mut self, pipeline: &mut Pipeline, out: &mut Sink) -> Result<()> {
        if let Ok(udp) = self.losses.udp_dropped() {
            pipeline.sockets.kernel_udp_dropped = udp;
        }
        // One failed read of the counter is no reason to stop capturing: counted, reported
        // in the metrics, and read again at the next interval.
        let total = match self.losses.total() {
            Ok(total) => total,
            Err(e) => {
                pipeline.counters.loss_counter_read_errors += 1;
                warn!("{e:#}; read again at the next interval");
                return Ok(());
            }
        };
        if total > self.lost_reported {
            let delta = total - self.lost_reported;
            warn!(
                "ring buffer full: {delta} connect events lost ({total} in total); raise --ring-buffer-size"
            );
            let line = output::status(
                Kind::PipelineError,
                Action::EventsLost,
                pipeline.host_name.as_str(),
                EventsLost {
                    lost_events: delta,
                    lost_events_total: total,
                    cause: "ring buffer full".into(),
                },
            );
            out.status(&line)?;
            out.flush()?;
            self.lost_reported = total;
        }
        Ok(())
    }
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

/// What the egress hook is told for the policy in force.
fn expectations(pipeline: &Pipeline) -> protocol::Expectations {
    use sensor_common::PayloadClass;
    let p = &pipeline.engine.policy().protocol;
    let ports = p
        .expected_ports()
        .into_iter()
        .map(|port| {
            let classes = [
                (PayloadClass::Tls, &p.tls_ports),
                (PayloadClass::Http, &p.http_ports),
                (PayloadClass::Ssh, &p.ssh_ports),
            ]
            .into_iter()
            .filter(|(_, set)| set.contains(&port))
            .map(|(c, _)| c)
            .collect();
            (port, classes)
        })
        .collect();
    protocol::Expectations {
        enabled: p.enabled,
        ja4: !p.ja4_blocklist.is_empty(),
        ports,
    }
}

/// The kernel programs' own log messages (aya-log), relayed to stderr when asked for.
pub struct LogRelay(Option<AsyncFd<EbpfLogger<&'static dyn log::Log>>>);

impl LogRelay {
    /// `level` 0: no relay (the kernel's log statements stay off).
    pub fn start(loaded: &mut Loaded, level: u8) -> Result<Self> {
        if level == 0 {
            return Ok(Self(None));
        }
        let logger = EbpfLogger::init(&mut loaded.ebpf).context("kernel log ring buffer")?;
        let fd = watch(logger).context("registering the kernel log with tokio")?;
        Ok(Self(Some(fd)))
    }

    /// Waits for kernel log messages (forever when there is no relay), then relays them.
    pub async fn relay(&mut self) -> Result<()> {
        let Some(fd) = self.0.as_mut() else {
            return std::future::pending().await;
        };
        let mut guard = fd
            .readable_mut()
            .await
            .context("waiting on the kernel log")?;
        guard.get_inner_mut().flush();
        guard.clear_ready();
        Ok(())
    }
}

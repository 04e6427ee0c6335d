//! The event loop's longest stall: how long one turn of the loop (a drain, a tick, a
//! reload) ran before the loop could wait again. Every other record, timer and signal
//! waited that long; `sensor-stats` says it as `sensor.loop.max_stall_ms`, /metrics as
//! `t1571_sensor_loop_max_stall_ms`.

use std::{
    cell::Cell,
    time::{Duration, Instant},
};

#[derive(Debug, Default)]
pub struct LoopStall {
    max: Cell<Duration>,
}

/// One turn of the loop, measured until dropped.
pub struct Turn<'a> {
    stall: &'a LoopStall,
    start: Instant,
}

impl LoopStall {
    /// Starts measuring a turn: take it first thing in a `select!` branch.
    pub fn turn(&self) -> Turn<'_> {
        Turn {
            stall: self,
            start: Instant::now(),
        }
    }

    /// The longest turn so far.
    pub fn max(&self) -> Duration {
        self.max.get()
    }

    pub fn max_ms(&self) -> u64 {
        u64::try_from(self.max().as_millis()).unwrap_or(u64::MAX)
    }

    fn record(&self, d: Duration) {
        if d > self.max.get() {
            self.max.set(d);
        }
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.stall.record(self.start.elapsed());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_longest_turn() {
        let s = LoopStall::default();
        assert_eq!(s.max_ms(), 0);
        {
            let _t = s.turn();
            std::thread::sleep(Duration::from_millis(30));
        }
        {
            let _t = s.turn();
        }
        assert!(s.max() >= Duration::from_millis(30), "{:?}", s.max());
        assert!(s.max_ms() >= 30);
    }
}
